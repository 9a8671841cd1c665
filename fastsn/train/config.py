"""The settings of one training run, their defaults and their checks (shared by the CLI and the config file)."""
from __future__ import annotations

import dataclasses
import math
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
# --lr-schedule: the factor on both learning rates at step s of S (see schedule_factor)
LR_SCHEDULES = ("constant", "decay", "linear", "cosine")
# --on-collapse strengthen: what a collapse event changes (see fastsn.train.monitor)
POLICIES = ("penalty", "mbd", "lr-d")
# Adam learning rates (G, D): the default, and the --ttur preset (two time-scale update rule, Heusel et al. 2017, with
# the 1e-4 / 4e-4 pair of SAGAN and BigGAN: D learns 4x faster than G)
DEFAULT_LR = (1e-3, 1e-3)
TTUR_LR = (1e-4, 4e-4)
DEFAULT_GP_WEIGHT = {"none": 0.0, "wgan-gp": 10.0, "wgan-lp": 10.0, "dragan": 10.0, "r1": 1.0, "r2": 1.0}


@dataclass
class TrainConfig:
    """One run. Field names are the CLI options with '_' for '-' (and the keys of a --config file).

    Attributes:
        data, sn, gp, gp_weight, mbd, mbstd, loss, n_critic, lr_g, lr_d, lr_decay, steps, batch_size, device, seed,
        backend, on_collapse, unroll, ttur, lr_schedule, n_power_iterations, strengthen, pack, ema, model: as the CLI
        options of the same names (lr_g, lr_d: None for the default, or --ttur's preset; strengthen: comma-separated
        policies).
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
    lr_g: Optional[float] = None
    lr_d: Optional[float] = None
    lr_decay: bool = False
    lr_schedule: str = "constant"
    ttur: bool = False
    unroll: int = 0
    n_power_iterations: int = 1
    strengthen: str = "penalty"
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
    def learning_rates(self) -> tuple[float, float]:
        """(G's, D's) Adam learning rate: --lr-g / --lr-d where given, else the --ttur preset or the default."""
        preset = TTUR_LR if self.ttur else DEFAULT_LR
        return (preset[0] if self.lr_g is None else float(self.lr_g),
                preset[1] if self.lr_d is None else float(self.lr_d))

    @property
    def schedule(self) -> str:
        """The learning-rate schedule: --lr-schedule, or "decay" for --lr-decay."""
        return "decay" if self.lr_decay else self.lr_schedule

    @property
    def policies(self) -> list[str]:
        """The --strengthen policies in order (the i-th collapse event applies the i-th; the last repeats)."""
        return [p.strip() for p in self.strengthen.split(",")]

    @property
    def check_every(self) -> int:
        return self.monitor_every or max(1, self.steps // 20)

    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the option for a bad value; return self."""
        choices = {"dtype": DTYPES, "data": DATASETS, "gp": PENALTIES, "loss": LOSSES, "backend": BACKENDS,
                   "on_collapse": ACTIONS, "lr_schedule": LR_SCHEDULES, "model": MODELS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name.replace('_', '-')}: invalid value {getattr(self, name)!r} "
                                 f"(choose from {', '.join(allowed)})")
        if not isinstance(self.strengthen, str) or any(p not in POLICIES for p in self.policies):
            raise ValueError(f"--strengthen: invalid value {self.strengthen!r} (one or more of {', '.join(POLICIES)}, "
                             f"comma-separated)")
        if self.lr_decay and self.lr_schedule not in ("constant", "decay"):
            raise ValueError(f"--lr-decay: is --lr-schedule decay; it contradicts --lr-schedule {self.lr_schedule}")
        for name, low in (("n_critic", 1), ("steps", 1), ("batch_size", 2), ("monitor_every", 0), ("unroll", 0),
                          ("n_power_iterations", 1), ("pack", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"--{name.replace('_', '-')}: must be an integer >= {low}, got {value!r}")
        for name in ("lr_g", "lr_d"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or not 0 < value < math.inf):
                raise ValueError(f"--{name.replace('_', '-')}: must be a finite positive number, got {value!r}")
        if self.gp_weight is not None and (not _is_number(self.gp_weight) or not 0 <= self.gp_weight < math.inf):
            raise ValueError(f"--gp-weight: must be a finite number >= 0, got {self.gp_weight!r}")
        if not _is_number(self.ema) or not 0 <= self.ema < 1:
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
        """The fields, with the learning rates and the schedule as used."""
        settings = dataclasses.asdict(self)
        settings["lr_g"], settings["lr_d"] = self.learning_rates
        settings["lr_schedule"] = self.schedule
        return settings


def _is_number(value: object) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def schedule_factor(schedule: str, step: int, steps: int) -> float:
    """The factor on the base learning rates for the update of step ``step`` (0-based) of ``steps``.

    constant: 1. decay: 1 for the first half, then linearly to 0 (G's last steps settle onto the modes).
    linear: 1 - step / steps. cosine: (1 + cos(pi step / steps)) / 2.
    """
    t = step / steps
    if schedule == "constant":
        return 1.0
    if schedule == "decay":
        return min(1.0, 2.0 * (1.0 - t))
    if schedule == "linear":
        return 1.0 - t
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"--lr-schedule: invalid value {schedule!r} (choose from {', '.join(LR_SCHEDULES)})")


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
