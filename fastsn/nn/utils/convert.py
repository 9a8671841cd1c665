"""Whole-model spectral-norm tools: convert torch's spectral norms to fastsn's, and read every layer's sigma."""
from __future__ import annotations

from typing import Iterator, Union

import torch
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm as _TorchParametrization

from fastsn.nn.utils.parametrizations import _SpectralNorm
from fastsn.nn.utils.spectral_norm import SpectralNorm, _torch_legacy
from fastsn.ops.spectral_norm import spectral_norm_power_iteration, weight_to_matrix

SpectralNormFn = Union[_TorchParametrization, _torch_legacy.SpectralNorm]


def convert_spectral_norm(model: torch.nn.Module) -> torch.nn.Module:
    """Make, in place, every PyTorch spectral norm in ``model`` (either API) fastsn's equivalent.

    Each parametrization or hook object changes class (fastsn's subclass of torch's, with the same state), so it
    keeps its buffers, parameters, hooks and attributes and everything that refers to it (the state_dict hooks of
    the hook API): state_dict keys and values are unchanged, and outputs, gradients and u/v trajectories then match
    the unconverted model to float tolerance.

    Args:
        model: any module; fastsn's own spectral norms and other parametrizations are left alone.

    Returns:
        ``model``.
    """
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for parametrizations in module.parametrizations.values():
                for fn in parametrizations:
                    if type(fn) is _TorchParametrization:
                        fn.__class__ = _SpectralNorm
        for hook in module._forward_pre_hooks.values():
            if type(hook) is _torch_legacy.SpectralNorm:
                hook.__class__ = SpectralNorm
    return model


def _spectral_norm_layers(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module, str, SpectralNormFn]]:
    """(qualified module name, module, parameter name, parametrization or hook) of every spectral norm."""
    for module_name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for tensor_name, parametrizations in module.parametrizations.items():
                for fn in parametrizations:
                    if isinstance(fn, _TorchParametrization):
                        yield module_name, module, tensor_name, fn
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, _torch_legacy.SpectralNorm):
                yield module_name, module, hook.name, hook


def _input_of(parametrizations: parametrize.ParametrizationList, position: int) -> torch.Tensor:
    """The tensor the parametrization at ``position`` of the chain receives: ``original`` through the ones before
    it, spectral norms among them evaluated as in eval mode (no power iteration, no update of their u and v)."""
    weight = parametrizations.original
    for earlier in list(parametrizations)[:position]:
        training = earlier.training
        if isinstance(earlier, _TorchParametrization):
            earlier.training = False
        try:
            weight = earlier(weight)
        finally:
            earlier.training = training
    return weight


@torch.no_grad()
def spectral_norms(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{qualified module name: current sigma} of every spectral norm in ``model`` (fastsn's or torch's).

    sigma = u . (M v) from the current weight and the current u and v: no power iteration, no buffer update.
    Keys are module names ("" for the model itself), with ".<parameter>" appended when the parameter is not
    "weight", and ".<position>" for a second spectral norm chained on one parameter (its position among the
    parametrizations). 1-D weights under the parametrizations API report their 2-norm (what they are divided by).

    Args:
        model: any module.

    Returns:
        0-d tensors in float32 (float64 for float64 weights; complex for complex weights), on the weights'
        devices.
    """
    sigmas = {}
    for module_name, module, tensor_name, fn in _spectral_norm_layers(model):
        key = module_name if tensor_name == "weight" else f"{module_name}.{tensor_name}".lstrip(".")
        if isinstance(fn, _TorchParametrization):
            parametrizations = module.parametrizations[tensor_name]
            position = list(parametrizations).index(fn)
            if key in sigmas:
                key = f"{key}.{position}".lstrip(".")
            weight = _input_of(parametrizations, position)
            if weight.ndim == 1:
                sigmas[key] = weight.norm().clamp_min(fn.eps).to(torch.float64 if weight.dtype == torch.float64
                                                                  else torch.float32)
                continue
            u, v, dim, u_first = fn._u, fn._v, fn.dim, True
        else:
            weight = getattr(module, fn.name + "_orig")
            u, v, dim, u_first = getattr(module, fn.name + "_u"), getattr(module, fn.name + "_v"), fn.dim, False
            weight = weight.unsqueeze(1) if weight.ndim == 1 else weight
        if weight.is_complex():  # as torch computes it (vdot in the parametrizations API, dot in the hook API)
            matrix = weight_to_matrix(weight.detach(), dim)
            sigmas[key] = (torch.vdot if u_first else torch.dot)(u, torch.mv(matrix, v))
            continue
        sigmas[key] = spectral_norm_power_iteration(weight, u, v, dim, 0, fn.eps, u_first)[0]
    return sigmas
