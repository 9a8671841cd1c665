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

    __slots__ = ("keys", "owners", "cache_keys", "prefillable", "sources", "weights", "us", "vs", "dims",
                 "iterations", "eps", "u_first")

    def __init__(self) -> None:
        self.keys: list[tuple[int, int]] = []  # the lookup key of each parametrization or hook (see _grouped)
        # parametrizations: the dicts holding their tensors (ParametrizationList._parameters, the parametrization's
        # _buffers), parametrize's cache key (id(module), tensor name), and whether torch would cache exactly our
        # forward's result there (see _prefillable); hooks: None, None, False
        self.owners: list[Optional[tuple[dict, dict]]] = []
        self.cache_keys: list[Optional[tuple[int, str]]] = []
        self.prefillable: list[bool] = []
        self.sources: list[torch.Tensor] = []  # the parameters as the layers hold them (shapes to hand back)
        self.weights: list[torch.Tensor] = []  # >= 2-D: what the kernels normalize
        self.us: list[torch.Tensor] = []
        self.vs: list[torch.Tensor] = []
        self.dims: list[int] = []
        self.iterations: list[int] = []
        self.eps: list[float] = []
        self.u_first: list[bool] = []

    def add(self, key: tuple[int, int], owner: Optional[tuple[dict, dict]], cache_key: Optional[tuple[int, str]],
            prefillable: bool, source: torch.Tensor, weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
            dim: int, iterations: int, eps: float, u_first: bool) -> None:
        self.keys.append(key)
        self.owners.append(owner)
        self.cache_keys.append(cache_key)
        self.prefillable.append(prefillable)
        self.sources.append(source)
        self.weights.append(weight)
        self.us.append(u)
        self.vs.append(v)
        self.dims.append(dim)
        self.iterations.append(iterations)
        self.eps.append(eps)
        self.u_first.append(u_first)

    def select(self, keep: list[bool]) -> "_Group":
        """The group of the entries where ``keep`` is True."""
        group = _Group()
        for name in self.__slots__:
            setattr(group, name, [item for item, kept in zip(getattr(self, name), keep) if kept])
        return group


class _CheckedCache(dict):
    """parametrize's cache, holding weights put in up front: each is handed out only while its parametrization still
    reads the tensors it was computed from. torch's getter asks ``_cache.get(key)`` and, on None, computes the weight
    and stores it; so inside the block a ``functional_call`` with other parameters computes afresh, as its first use
    under ``parametrize.cached()`` would, and that result is not stored: the layer's own weight stays."""

    def __init__(self, entries: dict) -> None:
        super().__init__(entries)
        # key -> (W_sn, the ParametrizationList's _parameters, the parametrization's _buffers, original, u, v)
        self.sources: dict[tuple[int, str], tuple] = {}

    def put(self, prefill: list[tuple]) -> None:
        """Store W_sn under each key of ``prefill`` (tuples (key, W_sn, _parameters, _buffers, original, u, v))."""
        sources = self.sources
        for item in prefill:
            dict.__setitem__(self, item[0], item[1])
            sources[item[0]] = item[1:]

    def __setitem__(self, key, value) -> None:
        if key not in self.sources:  # (torch's getter stores only what get() did not return)
            dict.__setitem__(self, key, value)

    def get(self, key, default=None):
        value = dict.get(self, key, default)
        source = self.sources.get(key)
        # (inline, not _grouped.valid: every module.weight in the block comes here)
        if source is not None and value is source[0] and (source[1].get("original") is not source[3]
                                                          or source[2].get("_u") is not source[4]
                                                          or source[2].get("_v") is not source[5]):
            return default
        return value


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
                        iterations = max(0, operator.index(fn.n_power_iterations)) if fn.training else 0
                        buffers = fn._buffers
                        group_of(weight).add((id(fn), 0), (parametrizations._parameters, buffers), (id(module), name),
                                             prefill and _prefillable(parametrizations, fn), weight, weight,
                                             buffers["_u"], buffers["_v"], fn.dim, iterations, fn.eps, True)
        if module._forward_pre_hooks:
            for hook in module._forward_pre_hooks.values():
                if not isinstance(hook, SpectralNorm):
                    continue
                weight = module._parameters[hook.name + "_orig"]
                if not weight.is_complex():
                    matrix = weight.unsqueeze(1) if weight.ndim == 1 else weight
                    iterations = max(0, operator.index(hook.n_power_iterations)) if module.training else 0
                    group_of(weight).add((id(hook), id(module)), None, None, False, weight, matrix,
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

    Blocks nest as ``parametrize.cached()`` blocks do: inside another grouped block, or inside
    ``parametrize.cached()``, a weight already computed there is reused (u and v are updated once per outermost
    block), and the weights computed here go into the enclosing cache. A layer that no longer reads the tensors its
    weight was computed from (``torch.func.functional_call`` with other parameters or buffers) is computed afresh.

    Args:
        model: a module holding fastsn spectral norms (either API).

    Yields:
        ``model``.
    """
    outer = _grouped._table
    outer_cache = getattr(parametrize, "_cache", None) if getattr(parametrize, "_cache_enabled", 0) else None
    # an outer grouped block's weights stay (the layers of the outer model this block does not cover)
    table: dict[tuple[int, int], _grouped.Entry] = dict(outer) if outer else {}
    prefill: list[tuple] = []  # for _CheckedCache.put
    for group in _groups(model).values():
        if outer is not None or outer_cache:
            group = _left_to_compute(group, table, outer_cache)
        if not group.keys:
            continue
        sigmas, u_copies, v_copies = spectral_norm_grouped_power_iteration(
            group.weights, group.us, group.vs, group.dims, group.iterations, group.eps, group.u_first)
        normalized = spectral_norm_grouped_normalize(group.weights, u_copies, v_copies, sigmas, group.dims,
                                                     group.eps)
        for key, owner, cache_key, prefillable, source, u, v, weight in zip(
                group.keys, group.owners, group.cache_keys, group.prefillable, group.sources, group.us, group.vs,
                normalized):
            if weight.shape != source.shape:  # a 1-D hook weight, normalized as (h, 1)
                weight = weight.view(source.shape)
            table[key] = (weight, source, u, v)
            if prefillable:
                prefill.append((cache_key, weight, *owner, source, u, v))
    _grouped._table = table  # (the outer table comes back at the end)
    try:
        # the parametrizations the groups leave out (torch's spectral norms, chains, weights held as buffers) are
        # cached as under parametrize.cached(): computed at their first use, once per (outermost) block
        with parametrize.cached():
            # parametrize's cache gets our weights up front, as their first use would store them (the outer one
            # where blocks nest: the weights then last as long as torch's would)
            cache = getattr(parametrize, "_cache", None)  # (private: if torch renames it, no prefill)
            if prefill and isinstance(cache, dict) and not tracing():
                if not isinstance(cache, _CheckedCache):
                    cache = parametrize._cache = _CheckedCache(cache)
                cache.put(prefill)
            yield model
    finally:
        _grouped._table = outer


def _left_to_compute(group: _Group, table: dict[tuple[int, int], _grouped.Entry], outer_cache: Optional[dict]
                     ) -> _Group:
    """The entries of ``group`` that an enclosing block has not computed yet: inside another grouped block, a weight
    in its ``table``; inside ``parametrize.cached()``, a weight torch has cached (that is what ``module.weight``
    returns). So u and v are updated once per outermost block, as with nested ``parametrize.cached()`` blocks."""
    keep = []
    for key, cache_key, source, u, v in zip(group.keys, group.cache_keys, group.sources, group.us, group.vs):
        entry = table.get(key)
        computed = entry is not None and _grouped.valid(entry, source, u, v)
        cached = outer_cache and cache_key is not None and outer_cache.get(cache_key) is not None
        keep.append(not (computed or cached))
    return group.select(keep)
