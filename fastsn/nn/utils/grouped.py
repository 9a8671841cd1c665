"""``with fastsn.grouped_spectral_norm(model):`` every fastsn spectral norm of a model, refreshed at once."""
from __future__ import annotations

import contextlib
import operator
from typing import Iterator, Optional

import torch
import torch.nn.modules.module as _module_globals
from torch.nn.utils import parametrize

from fastsn.nn.utils import _grouped
from fastsn.nn.utils.parametrizations import _SpectralNorm
from fastsn.nn.utils.spectral_norm import SpectralNorm
from fastsn.ops._eager import tracing
from fastsn.ops.spectral_norm import spectral_norm_grouped_normalize, spectral_norm_grouped_power_iteration


class _Group:
    """The spectral norms of one device and dtype, as the parallel lists the grouped ops take."""

    __slots__ = ("keys", "cache_keys", "shapes", "weights", "us", "vs", "dims", "iterations", "eps", "u_first")

    def __init__(self) -> None:
        self.keys: list[tuple[int, int]] = []  # the lookup key of each parametrization or hook (see _grouped)
        # (id(module), tensor name) of parametrize's cache where torch would cache exactly our forward's result
        # (see _prefillable), else None
        self.cache_keys: list[Optional[tuple[int, str]]] = []
        self.shapes: list[torch.Size] = []  # to hand back (a 1-D weight of the hook API is normalized as (h, 1))
        self.weights: list[torch.Tensor] = []  # >= 2-D: what the kernels normalize
        self.us: list[torch.Tensor] = []
        self.vs: list[torch.Tensor] = []
        self.dims: list[int] = []
        self.iterations: list[int] = []
        self.eps: list[float] = []
        self.u_first: list[bool] = []

    def add(self, key: tuple[int, int], cache_key: Optional[tuple[int, str]], shape: torch.Size,
            weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, dim: int, iterations: int, eps: float,
            u_first: bool) -> None:
        self.keys.append(key)
        self.cache_keys.append(cache_key)
        self.shapes.append(shape)
        self.weights.append(weight)
        self.us.append(u)
        self.vs.append(v)
        self.dims.append(dim)
        self.iterations.append(iterations)
        self.eps.append(eps)
        self.u_first.append(u_first)


_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")


def _global_hooks() -> bool:
    """Whether module hooks are registered globally (the private names read defensively: one gone, assume hooks)."""
    return any(getattr(_module_globals, name, True) for name in _GLOBAL_HOOKS)


def _prefillable(parametrizations: torch.nn.Module, fn: torch.nn.Module) -> bool:
    """Whether ``module.<name>`` would compute exactly the grouped W_sn: torch's ParametrizationList forward calling
    fastsn's own forward (not a subclass's), and calling either module runs its forward alone (torch's
    ``Module._call_impl`` fast path: no hooks; the global ones are checked once per walk). Then that value can go
    straight into parametrize's cache, which saves the two module calls per weight."""
    return (type(parametrizations).forward is parametrize.ParametrizationList.forward
            and type(fn).forward is _SpectralNorm.forward
            and not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                        for m in (parametrizations, fn)))


def _groups(model: torch.nn.Module) -> dict[tuple[torch.device, torch.dtype], _Group]:
    """The spectral norms the grouped ops take, by device and dtype, in ``model.modules()`` order."""
    groups: dict[tuple[torch.device, torch.dtype], _Group] = {}

    def group_of(weight: torch.Tensor) -> _Group:
        key = (weight.device, weight.dtype)
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group()
        return group

    prefill = not _global_hooks()
    # model.modules() without its prefix strings and nested generators (32 -> 22 us over the 45 modules of the
    # SNGAN benchmark's weights, 2-core VM): depth first, children in registration order, each module once
    seen: set[int] = set()
    stack = [model]
    while stack:
        module = stack.pop()
        if module is None or id(module) in seen:
            continue
        seen.add(id(module))
        children = module._modules
        if children:
            stack.extend(reversed(children.values()))
            if "parametrizations" in children:
                for name, parametrizations in children["parametrizations"]._modules.items():
                    fn = parametrizations._modules["0"]
                    weight = parametrizations._parameters.get("original")
                    # only a spectral norm that is the whole parametrization reads `original` directly
                    if (len(parametrizations) == 1 and isinstance(fn, _SpectralNorm) and weight is not None
                            and weight.ndim > 1 and not weight.is_complex()):
                        iterations = operator.index(fn.n_power_iterations) if fn.training else 0  # torch's error
                        cache_key = (id(module), name) if prefill and _prefillable(parametrizations, fn) else None
                        group_of(weight).add((id(fn), 0), cache_key, weight.shape, weight, fn._buffers["_u"],
                                             fn._buffers["_v"], fn.dim, iterations, fn.eps, True)
        if module._forward_pre_hooks:
            for hook in module._forward_pre_hooks.values():
                if not isinstance(hook, SpectralNorm):
                    continue
                weight = module._parameters[hook.name + "_orig"]
                if not weight.is_complex():
                    matrix = weight.unsqueeze(1) if weight.ndim == 1 else weight
                    iterations = operator.index(hook.n_power_iterations) if module.training else 0
                    group_of(weight).add((id(hook), id(module)), None, weight.shape, matrix,
                                         module._buffers[hook.name + "_u"], module._buffers[hook.name + "_v"],
                                         hook.dim, iterations, hook.eps, False)
    return groups


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
    prefill: dict[tuple[int, str], torch.Tensor] = {}
    for group in _groups(model).values():
        sigmas, u_copies, v_copies = spectral_norm_grouped_power_iteration(
            group.weights, group.us, group.vs, group.dims, group.iterations, group.eps, group.u_first)
        normalized = spectral_norm_grouped_normalize(group.weights, u_copies, v_copies, sigmas, group.dims,
                                                     group.eps)
        for key, cache_key, shape, weight in zip(group.keys, group.cache_keys, group.shapes, normalized):
            weight = weight if weight.shape == shape else weight.view(shape)  # (a 1-D hook weight was (h, 1))
            table[key] = weight
            if cache_key is not None:
                prefill[cache_key] = weight
    outer, _grouped._table = _grouped._table, table  # blocks nest: the inner one wins, the outer comes back
    try:
        # the parametrizations the groups leave out (torch's spectral norms, chains, weights held as buffers) are
        # cached as under parametrize.cached(): computed at their first use, once per block
        with parametrize.cached():
            # The outermost cache (cleared when the block ends) gets our weights up front, as their first use
            # would store them. Inside another cached() block it is left alone: that cache outlives this block.
            cache = getattr(parametrize, "_cache", None)  # (private: if torch renames it, no prefill)
            if getattr(parametrize, "_cache_enabled", 0) == 1 and isinstance(cache, dict) and not tracing():
                cache.update(prefill)
            yield model
    finally:
        _grouped._table = outer
