"""Drop-in for :func:`torch.nn.utils.parametrizations.spectral_norm`, on fastsn's fused kernels.

Same signature, defaults, errors, buffers (``_u``, ``_v``) and state_dict keys
(``parametrizations.weight.original``, ``parametrizations.weight.0._u``, ``..._v``) as torch's; the
parametrization subclasses torch's ``_SpectralNorm``, so code that checks for it still finds it, and torch
checkpoints load unchanged. Each forward in training runs one fused power-iteration op (u then v, in place)
and one normalize op; in eval, sigma from the current u and v, no update. Complex weights, which the kernels do
not take, run torch's own computation. The one deliberate difference: where |sigma| < eps (an all-zero weight) eps
replaces sigma, so the result is 0 where torch gives NaN.
"""
from __future__ import annotations

import contextlib
import operator
from typing import ContextManager, Optional

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm as _TorchSpectralNorm

from fastsn import _backend
from fastsn._backend import BackendUnavailableError
from fastsn.nn.utils import _grouped
from fastsn.ops.spectral_norm import spectral_norm_normalize, spectral_norm_power_iteration

_CONV_TRANSPOSE = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)


def _registration_backend(device: torch.device) -> ContextManager[None]:
    """The backend of registration (15 iterations, then torch's one forward): the one requested when it can run
    on ``device``, else the automatic choice. Models are often built on the CPU inside
    ``fastsn.use_backend("cuda")`` and moved to the GPU afterwards; building them must not fail for that."""
    try:
        _backend.resolve("spectral_norm", device)
        return contextlib.nullcontext()
    except BackendUnavailableError:
        return _backend.use_backend("auto")


class _SpectralNorm(_TorchSpectralNorm):
    """fastsn's spectral-norm parametrization; state and semantics as torch's ``_SpectralNorm``.

    Args:
        weight: the tensor to normalize, any shape (1-D: normalized exactly, no power iteration).
        n_power_iterations: power iterations per forward in training (> 0).
        dim: the output dimension of weight.
        eps: floor of the norms.
    """

    def __init__(self, weight: torch.Tensor, n_power_iterations: int = 1, dim: int = 0, eps: float = 1e-12) -> None:
        torch.nn.Module.__init__(self)  # not torch's __init__: its 15 warm-up iterations run here on fastsn's op
        ndim = weight.ndim
        if dim >= ndim or dim < -ndim:
            raise IndexError("Dimension out of range (expected to be in range of "
                             f"[-{ndim}, {ndim - 1}] but got {dim})")
        if n_power_iterations <= 0:
            raise ValueError("Expected n_power_iterations to be positive, but "
                             f"got n_power_iterations={n_power_iterations}")
        self.dim = dim if dim >= 0 else dim + ndim
        self.eps = eps
        if ndim > 1:
            self.n_power_iterations = n_power_iterations
            weight_mat = self._reshape_weight_to_matrix(weight)
            h, w = weight_mat.size()
            # the same random draws, in the same order, as torch: a seeded run gets the same u and v
            u = weight_mat.new_empty(h).normal_(0, 1)
            v = weight_mat.new_empty(w).normal_(0, 1)
            self.register_buffer("_u", F.normalize(u, dim=0, eps=self.eps))
            self.register_buffer("_v", F.normalize(v, dim=0, eps=self.eps))
            with torch.no_grad():
                if weight.is_complex():  # the kernels are real: torch's own iterations
                    self._power_method(weight_mat, 15)
                else:
                    spectral_norm_power_iteration(weight.detach(), self._u, self._v, self.dim, 15, self.eps, True)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.ndim == 1:
            return F.normalize(weight, dim=0, eps=self.eps)  # exact; as torch
        if weight.is_complex():
            return super().forward(weight)  # the kernels are real: torch's own computation
        buffers = self._buffers
        precomputed = _grouped.lookup(self, weight, buffers.get("_u"), buffers.get("_v"))
        if precomputed is not None:
            return precomputed
        # as torch's range(): a non-int count raises its TypeError (not the op's schema error), one below 0 runs none
        iterations = max(0, operator.index(self.n_power_iterations)) if self.training else 0
        sigma, u, v = spectral_norm_power_iteration(weight, self._u, self._v, self.dim, iterations, self.eps, True)
        return spectral_norm_normalize(weight, u, v, sigma, self.dim, self.eps)


def spectral_norm(module: torch.nn.Module, name: str = "weight", n_power_iterations: int = 1, eps: float = 1e-12,
                  dim: Optional[int] = None) -> torch.nn.Module:
    """Apply spectral normalization to parameter ``name`` of ``module``, as torch's parametrizations API.

    Args:
        module: the module holding the parameter.
        name: name of the parameter (or buffer).
        n_power_iterations: power iterations per forward in training.
        eps: floor of the norms.
        dim: the output dimension; default 1 for ConvTranspose{1,2,3}d, 0 otherwise.

    Returns:
        ``module``, with ``parametrizations.<name>`` holding fastsn's parametrization.
    """
    weight = getattr(module, name, None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"Module '{module}' has no parameter or buffer with name '{name}'")
    if dim is None:
        dim = 1 if isinstance(module, _CONV_TRANSPOSE) else 0
    with _registration_backend(weight.device):
        parametrize.register_parametrization(module, name, _SpectralNorm(weight, n_power_iterations, dim, eps))
    return module
