"""Per-layer singular values of a discriminator's weights, by an SVD: the spectral norm sigma_max and the condition
number sigma_max / sigma_min of each Linear and Conv weight, tracked by the collapse monitor over training.

The matrix is the layer's own weight before any spectral normalization (``parametrizations.weight.original`` of the
parametrization API, ``weight_orig`` of the hook API, else ``weight``), viewed as (out, in * kernel) as spectral
normalization views it (dim 0 first; ConvTranspose: dim 1). With spectral norm on, the weight the layer applies is
this matrix over its sigma_max: its own sigma_max is 1 and its condition number the same as this one's.
"""
from __future__ import annotations

import math

import torch

_LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
_TRANSPOSED = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)


def raw_weight(module: torch.nn.Module) -> torch.Tensor:
    """The weight of a Linear/Conv layer before spectral normalization (module docstring)."""
    parametrizations = getattr(module, "parametrizations", None)
    if parametrizations is not None and "weight" in parametrizations:
        return parametrizations.weight.original
    if hasattr(module, "weight_orig"):
        return module.weight_orig
    return module.weight


@torch.no_grad()
def layer_spectra(model: torch.nn.Module) -> dict[str, tuple[float, float]]:
    """sigma_max and sigma_min of every Linear / Conv / ConvTranspose weight of ``model``.

    Args:
        model: any module (DDP-unwrapped).

    Returns:
        {qualified module name: (sigma_max, sigma_min)}, sigma_min being the smallest of the min(out, in * kernel)
        singular values (0 for a rank-deficient matrix: its condition number is infinite); (nan, nan) for a weight
        with a non-finite value (a diverged D; the SVD would fail).
    """
    result = {}
    for name, module in model.named_modules():
        if not isinstance(module, _LAYERS + _TRANSPOSED):
            continue
        weight = raw_weight(module).detach().double().cpu()
        if isinstance(module, _TRANSPOSED):
            weight = weight.transpose(0, 1)
        if not weight.isfinite().all():
            result[name] = (math.nan, math.nan)
            continue
        values = torch.linalg.svdvals(weight.reshape(weight.shape[0], -1))  # descending
        result[name] = (float(values[0]), float(values[-1]))
    return result


def condition_number(spectrum: tuple[float, float]) -> float:
    """sigma_max / sigma_min of a :func:`layer_spectra` entry (inf when sigma_min is 0, nan for (nan, nan))."""
    high, low = spectrum
    if math.isnan(low):
        return math.nan
    return high / low if low > 0 else math.inf
