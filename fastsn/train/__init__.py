"""fastsn's reference GAN trainer (``fastsn-train``): trains small GANs on built-in data with fastsn's modules or
their plain-PyTorch twins, measures mode collapse, and proves the backends equal (``--compare``).

Layout, one job per file: ``data`` (built-in data sets), ``models`` and ``twins`` (networks per backend),
``losses``, ``penalties``, ``config`` (settings and checks), ``loop`` (training), ``monitor`` (collapse monitor),
``metrics``, ``classifier`` and ``evaluate`` (mode-collapse metrics), ``compare`` (backend parity), ``suites`` (the
main and efficacy jobs), ``report`` (JSON, pictures, tables, progress) and ``cli``.
"""
from fastsn.train.config import TrainConfig
from fastsn.train.loop import RunResult, train

__all__ = ["RunResult", "TrainConfig", "train"]
