"""``--compare``: the same seed with both backends, step by step, to prove fastsn's modules against their
plain-PyTorch twins: the largest deviation of the losses over the steps and of every parameter and buffer (spectral
norm u, v included) at the end, and the ratio of the step times."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from fastsn.train.config import TrainConfig
from fastsn.train.loop import train

# The proof runs in float64 (the default of --compare): there the two backends differ only by float64 rounding, and
# after 100 steps of every configuration of the main table the largest relative deviation measured was ~1e-13
# (README, "--compare"), so 1e-9 leaves a wide margin while any wrong formula, draw or missed u/v update gives 1e-3
# or more. In float32 no such bound exists: rounding differences of ~1e-7 grow chaotically through the GAN's
# dynamics and Adam's normalization of near-zero gradients (1e-3 after 100 steps); --dtype float32 reports them
# without a verdict.
TOLERANCE = {"float64": 1e-9}
LOSS_TOLERANCE = PARAM_TOLERANCE = TOLERANCE["float64"]  # max |a - b| / max(1, |b|): per loss and step; per tensor
INITIAL_TOLERANCE = 1e-5


@dataclass
class Comparison:
    """The outcome of one comparison.

    Attributes:
        loss_deviation: max over steps and losses (D, G, penalty) of the relative difference.
        param_deviation: max over parameters and buffers of the relative difference; worst: the tensor where it is.
        initial_deviation: the same between the two backends' seeded initial states (weights equal, u and v
            from 15 registration power iterations in each backend's arithmetic).
        ms_fastsn, ms_torch: training time per step.
    """
    loss_deviation: float
    param_deviation: float
    worst: str
    initial_deviation: float
    ms_fastsn: float
    ms_torch: float
    dtype: str = "float64"

    @property
    def tolerance(self) -> Optional[float]:
        """The bound for this dtype, None where there is none (float32)."""
        return TOLERANCE.get(self.dtype)

    @property
    def ok(self) -> Optional[bool]:
        """Within tolerance (None: no verdict in float32)."""
        if self.tolerance is None:
            return None
        return (self.initial_deviation <= INITIAL_TOLERANCE and self.loss_deviation <= self.tolerance
                and self.param_deviation <= self.tolerance)


def _state(G: torch.nn.Module, D: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = {f"G.{k}": v.detach().cpu().double() for k, v in G.state_dict().items() if v.is_floating_point()}
    state.update({f"D.{k}": v.detach().cpu().double() for k, v in D.state_dict().items() if v.is_floating_point()})
    return state


def _max_relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, str]:
    if a.keys() != b.keys():
        raise RuntimeError(f"the backends' state_dicts differ in keys: {sorted(set(a) ^ set(b))}")
    worst, where = 0.0, ""
    for key, reference in b.items():
        deviation = float((a[key] - reference).abs().max()) / max(1.0, float(reference.abs().max()))
        if deviation > worst:
            worst, where = deviation, key
    return worst, where


def initial_models(config: TrainConfig) -> dict[str, tuple[torch.nn.Module, torch.nn.Module]]:
    """{backend: (G, D)} as each backend initializes them from the seed."""
    from fastsn.train.models import ModelOptions, build_models
    return {backend: build_models(ModelOptions(config.data, backend, config.sn, config.mbd, config.mbstd, config.pack,
                                               config.model), config.seed) for backend in ("fastsn", "torch")}


def compare(config: TrainConfig) -> Comparison:
    """Train ``config`` with backend fastsn and with backend torch (same seed, steps and initial state; ``config.dtype``
    decides the precision) and measure the deviation.

    Returns:
        The :class:`Comparison`.
    """
    models = initial_models(config)
    initial, _ = _max_relative(_state(*models["fastsn"]), _state(*models["torch"]))
    start = (models["fastsn"][0].state_dict(), models["fastsn"][1].state_dict())
    runs = {backend: train(dataclasses.replace(config, backend=backend), evaluate=False, initial=start)
            for backend in ("fastsn", "torch")}
    loss_dev = 0.0
    for key in ("d_loss", "g_loss", "penalty"):
        for ours, reference in zip(runs["fastsn"].history[key], runs["torch"].history[key]):
            loss_dev = max(loss_dev, abs(ours - reference) / max(1.0, abs(reference)))
    param_dev, worst = _max_relative(_state(runs["fastsn"].G, runs["fastsn"].D), _state(runs["torch"].G,
                                                                                        runs["torch"].D))
    return Comparison(loss_dev, param_dev, worst, initial, runs["fastsn"].ms_per_step, runs["torch"].ms_per_step,
                      config.dtype)
