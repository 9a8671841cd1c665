"""D's scores for :func:`fastsn.gradient_penalty`'s generic path, with torch's activations computed by fastsn's op.

torch's ``leaky_relu``/``relu`` backward is differentiated, in a penalty's double backward, into a zero gradient for
its input, which autograd then sends down through every layer below (a conv backward of zeros per layer);
``fastsn.ops.bias_leaky_relu`` sends nothing. Where D is a plain ``torch.nn.Sequential`` of torch's own layers, the
penalty runs the layers itself and computes those activations by that op: the same values, and the same gradients
(the zeros the op does not send are filled in where torch's would reach a parameter, as after
``fastsn.convert_leaky_relu``; the cases where that differs, a tensor hook or a custom ``autograd.Function`` below,
cannot occur in such a D). What is recognized, exactly (anything else runs ``D(x)``):
    - ``torch.nn.Sequential`` itself (not a subclass, which may override forward), nested ones alike;
    - every module in it one of torch's layers in ``_LAYERS`` (its class's own forward; a parametrized one only with
      torch's or fastsn's spectral norm or torch's weight norm) or ``fastsn.nn.LeakyReLU``/``FusedLeakyReLU``;
    - no module hooks on any of them (but the legacy spectral norm's pre-hook), nor global module hooks;
    - activations computed here: ``nn.LeakyReLU`` with a finite slope >= 0 (``fastsn.nn.LeakyReLU`` alike) and
      ``nn.ReLU``; an in-place one (``inplace=True``) only where its input is a tensor nothing else holds, the
      output of a conv or linear layer or of an activation computed here (elsewhere it runs as D has it: torch then
      overwrites what, e.g., Tanh saved for its backward, and so refuses the backward as ``D(x)`` would);
    - x a plain float tensor on the CPU or a GPU with a kernel backend for the op (on the reference, torch's own
      activations are as fast).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.utils.parametrizations as torch_parametrizations
from torch import nn

from fastsn import _backend
from fastsn.nn._leaky_mlp import global_hooks, has_hooks
from fastsn.nn.fused_leaky_relu import FusedLeakyReLU
from fastsn.nn.leaky_relu import LeakyReLU
from fastsn.nn.utils.parametrizations import _SpectralNorm
from fastsn.ops.bias_leaky_relu import bias_leaky_relu

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_FRESH_OUTPUT = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                 nn.ConvTranspose3d)
# torch layers whose forward calls only torch ops: nothing in them sees the zeros fastsn's activations do not send
_LAYERS = _FRESH_OUTPUT + (
    nn.LeakyReLU, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.GELU, nn.ELU, nn.Softplus, nn.Hardtanh,
    nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.LayerNorm, nn.GroupNorm,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_PARAMETRIZATIONS = (torch_parametrizations._SpectralNorm, torch_parametrizations._WeightNorm, _SpectralNorm)


def _torch_layer(module: nn.Module) -> bool:
    """One of _LAYERS with its class's own forward (a parametrized layer is a subclass that keeps it), parametrized
    only by spectral or weight norm, without hooks but the legacy spectral norm's; or fastsn's activations."""
    if type(module) in (LeakyReLU, FusedLeakyReLU):
        return not has_hooks(module)
    cls = next((c for c in _LAYERS if isinstance(module, c)), None)
    if cls is None or type(module).forward is not cls.forward or has_hooks(module, spectral_norm_allowed=True):
        return False
    parametrizations = module._modules.get("parametrizations")
    if parametrizations is None:
        return len(module._modules) == 0
    return all(type(fn) in _PARAMETRIZATIONS and not has_hooks(fn) and not has_hooks(plist)
               for plist in parametrizations._modules.values() for fn in plist._modules.values())


def _recognized(sequential: nn.Module) -> bool:
    if type(sequential) is not nn.Sequential or has_hooks(sequential):
        return False
    return all(_recognized(m) if type(m) is nn.Sequential else _torch_layer(m) for m in sequential._modules.values())


def _slope(module: nn.Module) -> Optional[float]:
    """The negative slope of an activation computed here, else None."""
    if type(module) is nn.ReLU:
        return 0.0
    if type(module) in (nn.LeakyReLU, LeakyReLU):
        slope = module.negative_slope
        if isinstance(slope, (int, float)) and math.isfinite(slope) and slope >= 0:
            return float(slope)
    return None


def _run(sequential: nn.Sequential, x: object, fresh: bool) -> tuple[object, bool]:
    """``sequential(x)`` with the activations on fastsn's op. ``fresh``: nothing else holds x. Returns the output
    and whether nothing else holds it."""
    for module in sequential._modules.values():
        if type(module) is nn.Sequential:
            x, fresh = _run(module, x, fresh)
            continue
        slope = _slope(module)
        if slope is not None and (fresh or not module.inplace) and type(x) is torch.Tensor and x.dtype in _DTYPES:
            x, fresh = bias_leaky_relu(x, None, slope, 1.0), True
        else:
            x, fresh = module(x), isinstance(module, _FRESH_OUTPUT)
    return x, fresh


def sequential_scores(discriminator: object, x: torch.Tensor) -> Optional[object]:
    """``discriminator(x)`` computed with fastsn's activations where D is recognized (see the module docstring);
    None, having run nothing, where it is not."""
    if type(x) is not torch.Tensor or x.layout != torch.strided or x.device.type not in ("cpu", "cuda"):
        return None
    if global_hooks() or not _recognized(discriminator):
        return None
    try:
        if _backend.resolve("bias_leaky_relu", x.device) == "ref":
            return None
    except _backend.BackendUnavailableError:  # (a backend forced where it cannot run: torch's activations can)
        return None
    return _run(discriminator, x, False)[0]
