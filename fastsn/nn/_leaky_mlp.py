"""Recognizes a discriminator that is a plain leaky-ReLU MLP, for :func:`fastsn.gradient_penalty`'s fused path.

Such a D's input gradient and its backward to the weights are one op, :func:`fastsn.ops.mlp_input_gradient`,
which skips the pass of zeros through every layer that autograd's double backward makes. What is recognized, exactly
(anything else takes the generic path, which runs D itself):
    - ``torch.nn.Sequential`` itself (not a subclass, which may override forward), of
      Linear, (activation, Linear)*, and optionally a final ``nn.Flatten`` that keeps (B, 1) or makes (B,);
    - Linear: ``nn.Linear``, a parametrized one (e.g. spectral norm: its weight is read once, as a forward reads it)
      or one with the legacy spectral-norm hook (run once, as a forward runs it), the last with one output;
    - activations: ``nn.LeakyReLU``, ``nn.ReLU``, ``fastsn.nn.LeakyReLU`` and ``fastsn.nn.FusedLeakyReLU`` (its bias
      added to the layer's);
    - no other hooks on any of them, nor global module hooks;
    - x (B, in_features), float32 or float64, a plain tensor, with the parameters of its dtype and device, autocast
      off, and a kernel backend for the op on x's device (on the reference the generic path is the same).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.modules.module as module_globals
import torch.nn.utils.parametrize
from torch.nn.utils.spectral_norm import SpectralNorm as LegacySpectralNorm

from fastsn import _backend
from fastsn.nn.fused_leaky_relu import FusedLeakyReLU
from fastsn.nn.leaky_relu import LeakyReLU

_ACTIVATIONS = (torch.nn.LeakyReLU, torch.nn.ReLU, LeakyReLU, FusedLeakyReLU)
_FLATTENS = ((0, -1), (1, -1), (0, 1), (1, 1))  # (start_dim, end_dim) that keep (B, 1) or make (B,)
_GLOBAL_HOOKS = ("_global_forward_pre_hooks", "_global_forward_hooks", "_global_forward_hooks_always_called",
                 "_global_backward_pre_hooks", "_global_backward_hooks")
_MODULE_HOOKS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")


@dataclass
class LeakyMlp:
    """The arguments of :func:`fastsn.ops.mlp_input_gradient` for one call of D."""
    weights: list[torch.Tensor]
    biases: list[Optional[torch.Tensor]]
    negative_slopes: list[float]
    gains: list[float]


def _spectral_norm_hooks(module: torch.nn.Module) -> Optional[list]:
    """The legacy spectral-norm hooks (``torch.nn.utils.spectral_norm``, ``fastsn.nn.utils.spectral_norm``) that
    are a module's only forward pre-hooks; [] for none; None where any other pre-hook is there."""
    hooks = list(module._forward_pre_hooks.values())
    if getattr(module, "_forward_pre_hooks_with_kwargs", None):
        return None
    if all(isinstance(h, LegacySpectralNorm) and type(h).__call__ is LegacySpectralNorm.__call__ for h in hooks):
        return hooks
    return None


def global_hooks() -> bool:
    """Whether module hooks are registered globally (they would run for every layer of D)."""
    return any(getattr(module_globals, name, None) for name in _GLOBAL_HOOKS)


def has_hooks(module: torch.nn.Module, spectral_norm_allowed: bool = False) -> bool:
    """Whether the module has hooks (with ``spectral_norm_allowed``: other than the legacy spectral norm's)."""
    if spectral_norm_allowed and _spectral_norm_hooks(module) is not None:
        return any(getattr(module, name, None) for name in _MODULE_HOOKS if name != "_forward_pre_hooks")
    return any(getattr(module, name, None) for name in _MODULE_HOOKS)


def _is_linear(module: torch.nn.Module) -> bool:
    # (a parametrized Linear is a subclass that keeps Linear's forward; a lazy one is not yet a Linear)
    return (isinstance(module, torch.nn.Linear) and type(module).forward is torch.nn.Linear.forward
            and not isinstance(module, torch.nn.modules.lazy.LazyModuleMixin))


def _activation(module: torch.nn.Module) -> Optional[tuple[float, float]]:
    """(negative_slope, gain) of a recognized activation, else None."""
    if type(module) in (torch.nn.LeakyReLU, LeakyReLU):
        return float(module.negative_slope), 1.0
    if type(module) is torch.nn.ReLU:
        return 0.0, 1.0
    if type(module) is FusedLeakyReLU:
        return float(module.negative_slope), float(module.scale)
    return None


def _structure(discriminator: object) -> Optional[list[torch.nn.Module]]:
    """D's layers if it has the recognized structure (no tensors read yet), else None."""
    if type(discriminator) is not torch.nn.Sequential or has_hooks(discriminator):
        return None
    if global_hooks():
        return None
    layers = list(discriminator)
    if layers and type(layers[-1]) is torch.nn.Flatten and (layers[-1].start_dim, layers[-1].end_dim) in _FLATTENS:
        layers = layers[:-1]
    if len(layers) % 2 != 1 or any(has_hooks(m, spectral_norm_allowed=k % 2 == 0) for k, m in enumerate(layers)):
        return None
    if not all(_is_linear(m) for m in layers[0::2]) or any(_activation(m) is None for m in layers[1::2]):
        return None
    if layers[-1].out_features != 1:
        return None
    return layers


def _stored(module: torch.nn.Module, name: str) -> Optional[torch.Tensor]:
    """The tensor behind ``module.<name>`` without running a parametrization: the parameter, or a parametrization's
    original; None where there is none, or where a parametrization keeps several originals."""
    if torch.nn.utils.parametrize.is_parametrized(module, name):
        return getattr(module.parametrizations[name], "original", None)
    for hook in _spectral_norm_hooks(module) or []:
        if hook.name == name:  # (the legacy hook computes module.<name> from <name>_orig before each forward)
            return module._parameters.get(name + "_orig")
    return module._parameters.get(name)


def _plain_like(t: Optional[torch.Tensor], x: torch.Tensor, required: bool) -> bool:
    if t is None:
        return not required
    return type(t) in (torch.Tensor, torch.nn.Parameter) and t.dtype == x.dtype and t.device == x.device


def leaky_mlp(discriminator: object, x: torch.Tensor) -> Optional[LeakyMlp]:
    """The fused op's arguments for ``discriminator`` at ``x`` if D is recognized (see the module docstring), reading
    each parameter once in the order of D's forward (a parametrization runs as in a forward); else None, having read
    nothing."""
    if type(x) is not torch.Tensor or x.dim() != 2 or x.dtype not in (torch.float32, torch.float64):
        return None
    if x.device.type not in ("cpu", "cuda") or torch.is_autocast_enabled(x.device.type):
        return None
    layers = _structure(discriminator)
    if layers is None or layers[0].in_features != x.shape[1]:
        return None
    stored = [(_stored(m, "weight"), True) for m in layers[0::2]] + [(_stored(m, "bias"), False) for m in layers]
    if not all(_plain_like(t, x, required) for t, required in stored):
        return None
    if _backend.resolve("mlp_input_gradient", x.device) == "ref":
        return None
    spec = LeakyMlp([], [], [], [])
    for k, layer in enumerate(layers):
        if k % 2 == 0:
            for hook in _spectral_norm_hooks(layer):  # what a forward runs first: the weight and a power iteration
                hook(layer, (x,))
            spec.weights.append(layer.weight)
            spec.biases.append(layer.bias)
        else:
            slope, gain = _activation(layer)
            spec.negative_slopes.append(slope)
            spec.gains.append(gain)
            if type(layer) is FusedLeakyReLU and layer.bias is not None:
                bias = spec.biases[-1]
                spec.biases[-1] = layer.bias if bias is None else bias + layer.bias
    spec.biases.pop()  # the last layer's: it does not change the input gradient (read above, as a forward reads it)
    return spec
