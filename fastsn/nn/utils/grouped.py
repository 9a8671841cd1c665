"""``with fastsn.grouped_spectral_norm(model):`` every fastsn spectral norm of a model, refreshed at once."""
from __future__ import annotations

import contextlib
import operator
from dataclasses import dataclass
from typing import Iterator

import torch

from fastsn.nn.utils import _grouped
from fastsn.nn.utils.parametrizations import _SpectralNorm
from fastsn.nn.utils.spectral_norm import SpectralNorm
from fastsn.ops.spectral_norm import spectral_norm_grouped_normalize, spectral_norm_grouped_power_iteration


@dataclass
class _Entry:
    key: tuple[int, int]  # the lookup key of the parametrization or hook (see _grouped)
    weight: torch.Tensor  # >= 2-D: what the kernels normalize
    shape: torch.Size     # the shape to hand back (a 1-D weight of the hook API is normalized as (h, 1))
    u: torch.Tensor
    v: torch.Tensor
    dim: int
    iterations: int
    eps: float
    u_first: bool


def _entries(model: torch.nn.Module) -> list[_Entry]:
    entries = []
    for module in model.modules():
        if "parametrizations" in module._modules:
            for parametrizations in module._modules["parametrizations"]._modules.values():
                fn = parametrizations._modules["0"]
                weight = parametrizations._parameters.get("original")
                # only a spectral norm that is the whole parametrization reads `original` directly
                if (len(parametrizations) == 1 and isinstance(fn, _SpectralNorm) and weight is not None
                        and weight.ndim > 1 and not weight.is_complex()):
                    iterations = operator.index(fn.n_power_iterations) if fn.training else 0  # torch's TypeError
                    entries.append(_Entry((id(fn), 0), weight, weight.shape, fn._buffers["_u"], fn._buffers["_v"],
                                          fn.dim, iterations, fn.eps, True))
        for hook in module._forward_pre_hooks.values():
            if not isinstance(hook, SpectralNorm):
                continue
            weight = module._parameters[hook.name + "_orig"]
            if not weight.is_complex():
                matrix = weight.unsqueeze(1) if weight.ndim == 1 else weight
                iterations = operator.index(hook.n_power_iterations) if module.training else 0
                entries.append(_Entry((id(hook), id(module)), matrix, weight.shape, module._buffers[hook.name + "_u"],
                                      module._buffers[hook.name + "_v"], hook.dim, iterations, hook.eps, False))
    return entries


@contextlib.contextmanager
def grouped_spectral_norm(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Compute every fastsn spectral-norm weight of ``model`` once, with the grouped kernels, for the block.

    On entry, the power iterations of all spectral norms run as one grouped op (one CUDA launch for all small
    weights; one C++ call on CPU), then all normalizations as another; inside the block, forwards reuse those
    weights, as under ``torch.nn.utils.parametrize.cached()``: each u and v is updated once per block (in training
    mode), however many forwards the block runs, and gradients flow to every weight through one fused backward.
    Weights of another device or dtype form their own group. torch's own spectral norms, spectral norms chained
    with other parametrizations or registered on a buffer, and complex weights are computed layer by layer, and
    cached as under ``parametrize.cached()`` (the block runs inside it) where they are parametrizations.

    Unlike ``parametrize.cached()``, which computes each weight at its first use, the block computes them all on
    entry: in the grad mode and train/eval mode of that moment (enter it after ``model.train()``/``eval()``, with
    grad enabled for a training step), and the u, v of layers the block then leaves unused are updated too (their
    weights get no gradient).

    Args:
        model: a module holding fastsn spectral norms (either API).

    Yields:
        ``model``.
    """
    table: dict[tuple[int, int], torch.Tensor] = {}
    groups: dict[tuple[torch.device, torch.dtype], list[_Entry]] = {}
    for entry in _entries(model):
        groups.setdefault((entry.weight.device, entry.weight.dtype), []).append(entry)
    for group in groups.values():
        weights = [e.weight for e in group]
        dims, eps = [e.dim for e in group], [e.eps for e in group]
        sigmas, u_copies, v_copies = spectral_norm_grouped_power_iteration(
            weights, [e.u for e in group], [e.v for e in group], dims, [e.iterations for e in group], eps,
            [e.u_first for e in group])
        normalized = spectral_norm_grouped_normalize(weights, u_copies, v_copies, sigmas, dims, eps)
        for entry, weight in zip(group, normalized):  # (a 1-D hook weight was normalized as (h, 1))
            table[entry.key] = weight if weight.shape == entry.shape else weight.view(entry.shape)
    outer, _grouped._table = _grouped._table, table  # blocks nest: the inner one wins, the outer comes back
    try:
        # the parametrizations the groups leave out (torch's spectral norms, chains, weights held as buffers) are
        # cached as under parametrize.cached(): computed at their first use, once per block
        with torch.nn.utils.parametrize.cached():
            yield model
    finally:
        _grouped._table = outer
