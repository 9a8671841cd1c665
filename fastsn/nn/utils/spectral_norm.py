"""Drop-in for the older hook API :func:`torch.nn.utils.spectral_norm` / ``remove_spectral_norm``.

Same parameters and buffers (``weight_orig``, ``weight_u``, ``weight_v``), order (v then u), no iterations at
registration, no update in eval, the versioned state_dict metadata and the load pre-hook that converts
checkpoints of the format before version 1. The hook class subclasses torch's ``SpectralNorm`` and the
state-dict hooks are torch's own, so torch's ``remove_spectral_norm`` works on fastsn's hooks and the reverse.
Complex weights, which the kernels do not take, run torch's own computation.
One deliberate difference: where |sigma| < eps (an all-zero weight) eps replaces sigma: 0, where torch gives NaN.
"""
from __future__ import annotations

import operator
import sys
from typing import TypeVar

import torch
import torch.nn.functional as F
import torch.nn.utils.spectral_norm  # noqa: F401  (the module, which torch's function of that name shadows)

from fastsn.nn.utils import _grouped
from fastsn.ops.spectral_norm import spectral_norm_normalize, spectral_norm_power_iteration

_torch_legacy = sys.modules["torch.nn.utils.spectral_norm"]
T_module = TypeVar("T_module", bound=torch.nn.Module)
_CONV_TRANSPOSE = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)


class SpectralNorm(_torch_legacy.SpectralNorm):
    """The forward pre-hook that recomputes ``<name>`` from ``<name>_orig`` with fastsn's fused ops."""

    def compute_weight(self, module: torch.nn.Module, do_power_iteration: bool) -> torch.Tensor:
        precomputed = _grouped.lookup(self, module._parameters.get(self.name + "_orig"),
                                      module._buffers.get(self.name + "_u"), module._buffers.get(self.name + "_v"),
                                      module)
        if precomputed is not None:
            return precomputed
        weight = getattr(module, self.name + "_orig")
        if weight.is_complex():
            return super().compute_weight(module, do_power_iteration)  # the kernels are real: torch's computation
        u = getattr(module, self.name + "_u")
        v = getattr(module, self.name + "_v")
        # A 1-D weight is the (h, 1) matrix of the hook API (the parametrizations API normalizes it exactly).
        matrix = weight.unsqueeze(1) if weight.dim() == 1 else weight
        # as torch's range(): a non-int count raises its TypeError (not the op's schema error), one below 0 runs none
        iterations = max(0, operator.index(self.n_power_iterations)) if do_power_iteration else 0
        sigma, u_copy, v_copy = spectral_norm_power_iteration(matrix, u, v, self.dim, iterations, self.eps, False)
        return spectral_norm_normalize(matrix, u_copy, v_copy, sigma, self.dim, self.eps).view_as(weight)

    @staticmethod
    def apply(module: torch.nn.Module, name: str, n_power_iterations: int, dim: int, eps: float) -> "SpectralNorm":
        """Register the hook on ``module``: what torch's ``SpectralNorm.apply`` does, with fastsn's hook."""
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, _torch_legacy.SpectralNorm) and hook.name == name:
                raise RuntimeError(f"Cannot register two spectral_norm hooks on the same parameter {name}")
        fn = SpectralNorm(name, n_power_iterations, dim, eps)
        weight = module._parameters[name]
        if weight is None:
            raise ValueError(f"`SpectralNorm` cannot be applied as parameter `{name}` is None")
        if isinstance(weight, torch.nn.parameter.UninitializedParameter):
            raise ValueError("The module passed to `SpectralNorm` can't have uninitialized parameters. "
                             "Make sure to run the dummy forward before applying spectral normalization")
        with torch.no_grad():
            h, w = fn.reshape_weight_to_matrix(weight).size()
            # the same random draws, in the same order, as torch
            u = F.normalize(weight.new_empty(h).normal_(0, 1), dim=0, eps=fn.eps)
            v = F.normalize(weight.new_empty(w).normal_(0, 1), dim=0, eps=fn.eps)
        delattr(module, fn.name)
        module.register_parameter(fn.name + "_orig", weight)
        # `name` stays a plain attribute (the hook overwrites it on every forward); its value before the
        # first forward is the unnormalized weight, as in torch
        setattr(module, fn.name, weight.data)
        module.register_buffer(fn.name + "_u", u)
        module.register_buffer(fn.name + "_v", v)
        module.register_forward_pre_hook(fn)
        module._register_state_dict_hook(_torch_legacy.SpectralNormStateDictHook(fn))
        module._register_load_state_dict_pre_hook(_torch_legacy.SpectralNormLoadStateDictPreHook(fn))
        return fn


def spectral_norm(module: T_module, name: str = "weight", n_power_iterations: int = 1, eps: float = 1e-12,
                  dim: int | None = None) -> T_module:
    """Apply spectral normalization to parameter ``name`` of ``module`` with a forward pre-hook (torch's older API).

    Args:
        module: the module holding the parameter.
        name: name of the parameter.
        n_power_iterations: power iterations per forward in training.
        eps: floor of the norms.
        dim: the output dimension; default 1 for ConvTranspose{1,2,3}d, 0 otherwise.

    Returns:
        ``module``, with ``<name>_orig``, ``<name>_u``, ``<name>_v`` and the hook.
    """
    if dim is None:
        dim = 1 if isinstance(module, _CONV_TRANSPOSE) else 0
    SpectralNorm.apply(module, name, n_power_iterations, dim, eps)
    return module


def remove_spectral_norm(module: T_module, name: str = "weight") -> T_module:
    """Remove the spectral normalization of ``name`` (fastsn's or torch's hook), as torch's function does.

    Args:
        module: the module holding the hook.
        name: name of the parameter.

    Returns:
        ``module``, with ``<name>`` a plain parameter holding the last normalized weight.
    """
    return _torch_legacy.remove_spectral_norm(module, name)
