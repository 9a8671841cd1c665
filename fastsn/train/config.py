"""The settings of one training run, their defaults and their checks (shared by the CLI and the config file)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from fastsn.train.data import DATASETS
from fastsn.train.losses import LOSSES
from fastsn.train.models import BACKENDS, MODELS
from fastsn.train.monitor import ACTIONS
from fastsn.train.penalties import PENALTIES

# the penalty weight when --gp-weight is not given: WGAN-GP's lambda = 10; for R1/R2 StyleGAN2's gamma = 1 (at
# our 2-D scale, 10 flattens D around the data)
DTYPES = ("float32", "float64")
DEFAULT_GP_WEIGHT = {"none": 0.0, "wgan-gp": 10.0, "wgan-lp": 10.0, "dragan": 10.0, "r1": 1.0, "r2": 1.0}


@dataclass
class TrainConfig:
    """One run. Field names are the CLI options with '_' for '-' (and the keys of a --config file).

    Attributes:
        data, sn, gp, gp_weight, mbd, mbstd, loss, n_critic, lr_g, lr_d, lr_decay, steps, batch_size, device, seed, backend,
        on_collapse, pack, ema, model: as the CLI options of the same names.
        monitor_every: steps between collapse-monitor checks (0: steps // 20, at least 1).
        dtype: "float32" or "float64" (weights, data and latents).
        cache_dir: where the digit classifier is cached (None: the default cache).
    """
    data: str = "ring8"
    sn: bool = False
    gp: str = "none"
    gp_weight: Optional[float] = None
    mbd: bool = False
    mbstd: bool = False
    loss: str = "bce"
    n_critic: int = 1
    lr_g: float = 1e-3
    lr_d: float = 1e-3
    lr_decay: bool = False
    steps: int = 2000
    batch_size: int = 256
    device: str = "cpu"
    seed: int = 0
    backend: str = "fastsn"
    on_collapse: str = "warn"
    monitor_every: int = 0
    dtype: str = "float32"
    cache_dir: Optional[str] = None
    pack: int = 1
    ema: float = 0.0
    model: str = "small"

    @property
    def penalty_weight(self) -> float:
        """--gp-weight, or the penalty's default weight."""
        return DEFAULT_GP_WEIGHT[self.gp] if self.gp_weight is None else float(self.gp_weight)

    @property
    def check_every(self) -> int:
        return self.monitor_every or max(1, self.steps // 20)

    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the option for a bad value; return self."""
        choices = {"dtype": DTYPES, "data": DATASETS, "gp": PENALTIES, "loss": LOSSES, "backend": BACKENDS, "on_collapse": ACTIONS,
                   "model": MODELS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name.replace('_', '-')}: invalid value {getattr(self, name)!r} "
                                 f"(choose from {', '.join(allowed)})")
        for name, low in (("n_critic", 1), ("steps", 1), ("batch_size", 2), ("monitor_every", 0), ("pack", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"--{name.replace('_', '-')}: must be an integer >= {low}, got {value!r}")
        for name in ("lr_g", "lr_d"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"--{name.replace('_', '-')}: must be a positive number, got {value!r}")
        if self.gp_weight is not None and (isinstance(self.gp_weight, bool) or
                                           not isinstance(self.gp_weight, (int, float)) or not self.gp_weight >= 0):
            raise ValueError(f"--gp-weight: must be a number >= 0, got {self.gp_weight!r}")
        if isinstance(self.ema, bool) or not isinstance(self.ema, (int, float)) or not 0 <= self.ema < 1:
            raise ValueError(f"--ema: must be a number in [0, 1), got {self.ema!r}")
        if self.batch_size % self.pack:
            raise ValueError(f"--batch-size: {self.batch_size} is not divisible by --pack {self.pack} (D judges packs "
                             f"of {self.pack} samples)")
        d_batch = self.batch_size // self.pack  # what D sees: packed samples
        if self.mbstd and d_batch % 4 and d_batch > 4:
            raise ValueError(f"--batch-size: --mbstd groups samples by 4, so the batch (divided by --pack) must be "
                             f"a multiple of 4, got {self.batch_size}" + (f" / {self.pack}" if self.pack > 1 else ""))
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"--seed: must be an integer >= 0, got {self.seed!r}")
        import torch

        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"--device: {self.device!r} is not a device ({e})") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device: {self.device!r} asked for, but torch sees no CUDA device")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
