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
    """Replace, in place, every PyTorch spectral norm in ``model`` (either API) with fastsn's equivalent.

    The parametrizations keep their buffers (the same tensors) and the hooks their parameters, so state_dict
    keys and values are unchanged, and outputs, gradients and u/v trajectories then match the unconverted
    model to float tolerance.

    Args:
        model: any module; fastsn's own spectral norms and other parametrizations are left alone.

    Returns:
        ``model``.
    """
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for parametrizations in module.parametrizations.values():
                for index, fn in enumerate(parametrizations):
                    if type(fn) is _TorchParametrization:
                        parametrizations[index] = _SpectralNorm.from_torch(fn)
        for key, hook in list(module._forward_pre_hooks.items()):
            if type(hook) is _torch_legacy.SpectralNorm:
                new = SpectralNorm(hook.name, hook.n_power_iterations, hook.dim, hook.eps)
                module._forward_pre_hooks[key] = new
                # torch's state-dict hooks hold the hook object; point them at the new one
                for state_hook in [*module._state_dict_hooks.values(), *module._load_state_dict_pre_hooks.values()]:
                    inner = getattr(state_hook, "hook", state_hook)  # load pre-hooks come wrapped
                    if getattr(inner, "fn", None) is hook:
                        inner.fn = new
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


@torch.no_grad()
def spectral_norms(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{qualified module name: current sigma} of every spectral norm in ``model`` (fastsn's or torch's).

    sigma = u . (M v) from the current weight and the current u and v: no power iteration, no buffer update.
    Keys are module names ("" for the model itself), with ".<parameter>" appended when the parameter is not
    "weight". 1-D weights under the parametrizations API report their 2-norm (what they are divided by).

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
            weight = parametrizations.original
            for earlier in list(parametrizations)[: list(parametrizations).index(fn)]:
                weight = earlier(weight)  # the spectral norm's input, when other parametrizations come first
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
