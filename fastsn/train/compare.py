"""``--compare``: the same seed with both backends, step by step, to prove fastsn's modules against their
plain-PyTorch twins: the largest deviation of the losses over the steps and of every parameter and buffer (spectral
norm u, v included) at the end, and the ratio of the step times."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from fastsn.train.config import TrainConfig
from fastsn.train.loop import train

# float32 through N Adam steps: rounding differences of two correct implementations (different summation orders)
# grow with the steps; these bounds held with a margin on every configuration of the main table at 100 steps
# (README, "--compare"), and a real bug (a wrong formula, a missed u update) exceeds them by orders of magnitude
LOSS_TOLERANCE = 1e-4       # max |loss_fastsn - loss_torch| / max(1, |loss_torch|) over all steps
PARAM_TOLERANCE = 1e-4      # max |p_fastsn - p_torch| / max(1, max |p_torch|) per tensor, at the end


@dataclass
class Comparison:
    """The outcome of one comparison.

    Attributes:
        loss_deviation: max over steps and losses (D, G, penalty) of the relative difference.
        param_deviation: max over parameters and buffers of the relative difference; worst: the tensor where it is.
        initial_deviation: the same over the initial state (must be 0: both start identical).
        ms_fastsn, ms_torch: training time per step.
    """
    loss_deviation: float
    param_deviation: float
    worst: str
    initial_deviation: float
    ms_fastsn: float
    ms_torch: float

    @property
    def ok(self) -> bool:
        return (self.initial_deviation == 0 and self.loss_deviation <= LOSS_TOLERANCE
                and self.param_deviation <= PARAM_TOLERANCE)


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


def initial_states(config: TrainConfig) -> tuple[dict, dict]:
    """Both backends' initial G and D states (flattened, float64)."""
    from fastsn.train.models import ModelOptions, build_models
    states = []
    for backend in ("fastsn", "torch"):
        G, D = build_models(ModelOptions(config.data, backend, config.sn, config.mbd, config.mbstd), config.seed)
        states.append(_state(G, D))
    return states[0], states[1]


def compare(config: TrainConfig) -> Comparison:
    """Train ``config`` with backend fastsn and with backend torch (same seed and steps) and measure the deviation.

    Returns:
        The :class:`Comparison`.
    """
    initial, _ = _max_relative(*initial_states(config))
    runs = {backend: train(dataclasses.replace(config, backend=backend), evaluate=False)
            for backend in ("fastsn", "torch")}
    loss_dev = 0.0
    for key in ("d_loss", "g_loss", "penalty"):
        for ours, reference in zip(runs["fastsn"].history[key], runs["torch"].history[key]):
            loss_dev = max(loss_dev, abs(ours - reference) / max(1.0, abs(reference)))
    param_dev, worst = _max_relative(_state(runs["fastsn"].G, runs["fastsn"].D), _state(runs["torch"].G,
                                                                                        runs["torch"].D))
    return Comparison(loss_dev, param_dev, worst, initial, runs["fastsn"].ms_per_step, runs["torch"].ms_per_step)
