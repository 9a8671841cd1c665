"""Spectral normalization: fastsn against torch's parametrization (eager and torch.compile) and torch's hook API.

Cases, each forward + backward in training mode (one power iteration, u and v updated in place), gradients
cleared before each as ``optimizer.zero_grad()`` does (set to None), so no provider pays an accumulation pass:
    layer-*: the spectral norm of one weight alone (W -> W_sn, then W_sn.backward(G)); fastsn layer by layer.
    refresh-*: every spectral-norm weight of a discriminator recomputed once, forward and backward: torch under
        ``parametrize.cached()`` (the hook API: layer by layer), fastsn under ``fastsn.grouped_spectral_norm``.
    step-sngan: one training step of the SNGAN ResNet discriminator (CIFAR-10, 32x32): forward, hinge loss,
        backward, Adam step.
Discriminator weight sets: SNGAN ResNet D for CIFAR-10 (ch=128, 11 weights) and a BigGAN-128-like D (ch=96 on a
GPU; ch=32 on a CPU, where the full one takes seconds per refresh; 21 weights, with the class embedding).
"""
from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch.nn.utils import parametrize

import fastsn
import fastsn.nn.utils as fnu
from conftest import device_name, interpreted, provider_unavailable, synchronized

PROVIDERS = ("torch", "torch-hook", "torch.compile", "fastsn-cpu", "fastsn-cuda", "fastsn-triton")
_TORCH_SN = {"torch": torch.nn.utils.parametrizations.spectral_norm,
             "torch.compile": torch.nn.utils.parametrizations.spectral_norm, "torch-hook": torch.nn.utils.spectral_norm}

# Passes over a float32 weight that forward + backward cannot avoid: read W, write W_sn, read G, write dW (the power
# iteration's read of W, and u and v, come on top). extra_info["bytes"] = MIN_PASSES * 4 * numel: the floor that
# benchmarks/report.py --ceilings divides by the measured copy bandwidth.
MIN_PASSES = 4

LAYERS = {  # name: weight shape
    "linear-128x1": (1, 128),
    "conv-64x3x4x4": (64, 3, 4, 4),
    "conv-512x512x3x3": (512, 512, 3, 3),
    "conv-1024x1024x3x3": (1024, 1024, 3, 3),
    "linear-4096x4096": (4096, 4096),
}


def sngan_weights(ch: int = 128) -> list[tuple[int, ...]]:
    """Weight shapes of the SNGAN ResNet discriminator for CIFAR-10 (Miyato et al. 2018)."""
    block = [(ch, ch, 3, 3), (ch, ch, 3, 3)]
    return [(ch, 3, 3, 3), (ch, ch, 3, 3), (ch, 3, 1, 1)] + block + [(ch, ch, 1, 1)] + block + block + [(1, ch)]


def biggan_weights(ch: int) -> list[tuple[int, ...]]:
    """Weight shapes of a BigGAN-128-like discriminator: six residual blocks, attention at 64x64, projection."""
    widths = [3, ch, 2 * ch, 4 * ch, 8 * ch, 16 * ch, 16 * ch]
    shapes = []
    for k, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
        shapes += [(cout, cin, 3, 3), (cout, cout, 3, 3)] + ([(cout, cin, 1, 1)] if cin != cout else [])
        if k == 0:  # self-attention: theta, phi, g, o
            shapes += [(ch // 8, ch, 1, 1), (ch // 8, ch, 1, 1), (ch // 2, ch, 1, 1), (ch, ch // 2, 1, 1)]
    return shapes + [(1, 16 * ch), (1000, 16 * ch)]


class Weight(torch.nn.Module):
    """Holds one weight, so that either spectral-norm API can be registered on it."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(shape) / shape[0] ** 0.5)


def _normalized_model(shapes, provider: str, device: str) -> torch.nn.ModuleList:
    model = torch.nn.ModuleList(Weight(shape) for shape in shapes)
    apply = _TORCH_SN.get(provider, fnu.parametrizations.spectral_norm)
    for module in model:
        apply(module)
    return model.to(device)


def _refresh(model: torch.nn.ModuleList, provider: str, grouped: bool = True) -> Callable[[], torch.Tensor]:
    """One forward + backward of every spectral-norm weight of the model (fastsn: grouped, or layer by layer)."""
    grads = [torch.randn(m.weight_orig.shape if provider == "torch-hook" else m.parametrizations.weight.original.shape,
                         device=next(model.parameters()).device) for m in model]

    def weights() -> list[torch.Tensor]:
        if provider == "torch-hook":
            for module in model:
                hook = next(iter(module._forward_pre_hooks.values()))
                hook(module, None)
            return [module.weight for module in model]
        return [module.weight for module in model]

    if provider == "torch.compile":
        weights = torch.compile(weights)
    params = list(model.parameters())

    def run() -> torch.Tensor:
        for param in params:
            param.grad = None
        if provider.startswith("fastsn"):
            with fastsn.use_backend(provider.removeprefix("fastsn-")), \
                    (fastsn.grouped_spectral_norm(model) if grouped else parametrize.cached()):
                normalized = weights()
                torch.autograd.backward(normalized, grads)
        else:
            with parametrize.cached():
                normalized = weights()
                torch.autograd.backward(normalized, grads)
        return normalized[0]

    return run


def _skip_reason(provider: str, device: str, large: bool) -> str | None:
    if provider not in ("torch-hook",):
        reason = provider_unavailable(provider, "spectral_norm", device)
        if reason:
            return reason
    if interpreted(provider, device) and large:
        return "Triton's interpreter is only smoke-tested, on the smallest case"
    return None


def _measure(benchmark, provider: str, device: str, group: str, run: Callable[[], torch.Tensor], **info) -> None:
    timed = synchronized(run, device)
    timed()  # warm-up: compiles torch.compile graphs and Triton kernels outside the timing
    benchmark.group = group
    benchmark.extra_info.update(provider=provider, device=device_name(device), **info)
    assert torch.isfinite(benchmark(timed)).all()


@pytest.mark.parametrize("layer", list(LAYERS))
def test_layer(benchmark, provider, device, layer):
    shape = LAYERS[layer]
    reason = _skip_reason(provider, device, large=layer != "linear-128x1")
    if reason:
        pytest.skip(reason)
    model = _normalized_model([shape], provider, device)
    _measure(benchmark, provider, device, f"spectral_norm {layer} {device}", _refresh(model, provider, grouped=False),
             numel=torch.Size(shape).numel(), bytes=MIN_PASSES * 4 * torch.Size(shape).numel())


@pytest.mark.parametrize("model_name", ["sngan", "biggan128"])
def test_refresh(benchmark, provider, device, model_name):
    reason = _skip_reason(provider, device, large=True)
    if reason:
        pytest.skip(reason)
    shapes = sngan_weights() if model_name == "sngan" else biggan_weights(96 if device == "cuda" else 32)
    model = _normalized_model(shapes, provider, device)
    numel = sum(torch.Size(s).numel() for s in shapes)
    _measure(benchmark, provider, device, f"spectral_norm refresh-{model_name} {device}", _refresh(model, provider),
             weights=len(shapes), numel=numel, bytes=MIN_PASSES * 4 * numel)


class _Block(torch.nn.Module):
    """SNGAN discriminator residual block (ReLU, 3x3 convs, optional 2x2 average-pool downsampling)."""

    def __init__(self, cin: int, cout: int, downsample: bool, first: bool, sn) -> None:
        super().__init__()
        self.first, self.downsample = first, downsample
        self.c1, self.c2 = sn(torch.nn.Conv2d(cin, cout, 3, padding=1)), sn(torch.nn.Conv2d(cout, cout, 3, padding=1))
        self.shortcut = sn(torch.nn.Conv2d(cin, cout, 1)) if (cin != cout or downsample) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else torch.relu(x)
        h = self.c2(torch.relu(self.c1(h)))
        s = x
        if self.downsample:
            h = torch.nn.functional.avg_pool2d(h, 2)
        if self.shortcut is not None:
            s = self.shortcut(torch.nn.functional.avg_pool2d(s, 2) if self.first else s)
            if self.downsample and not self.first:
                s = torch.nn.functional.avg_pool2d(s, 2)
        return h + s


def sngan_discriminator(sn, ch: int = 128) -> torch.nn.Module:
    """The SNGAN ResNet discriminator for CIFAR-10, with spectral norm ``sn`` on every layer."""
    return torch.nn.Sequential(
        _Block(3, ch, True, True, sn), _Block(ch, ch, True, False, sn), _Block(ch, ch, False, False, sn),
        _Block(ch, ch, False, False, sn), torch.nn.ReLU(), _SumPool(), sn(torch.nn.Linear(ch, 1)))


class _SumPool(torch.nn.Module):
    """Global sum pooling, as in SNGAN: (N, C, H, W) -> (N, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=(2, 3))


def test_step_sngan(benchmark, provider, device):
    reason = _skip_reason(provider, device, large=True)
    if reason:
        pytest.skip(reason)
    sn = _TORCH_SN.get(provider, fnu.parametrizations.spectral_norm)
    torch.manual_seed(0)
    model = sngan_discriminator(sn).to(device)
    forward = torch.compile(model) if provider == "torch.compile" else model
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.0, 0.9))
    batch = 64 if device == "cuda" else 8
    real, fake = torch.randn(batch, 3, 32, 32, device=device), torch.randn(batch, 3, 32, 32, device=device)

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        if provider.startswith("fastsn"):
            with fastsn.use_backend(provider.removeprefix("fastsn-")), fastsn.grouped_spectral_norm(model):
                loss = torch.relu(1 - forward(real)).mean() + torch.relu(1 + forward(fake)).mean()
                loss.backward()
        else:
            with parametrize.cached():
                loss = torch.relu(1 - forward(real)).mean() + torch.relu(1 + forward(fake)).mean()
                loss.backward()
        optimizer.step()
        return loss.detach()

    _measure(benchmark, provider, device, f"spectral_norm step-sngan {device}", step, batch=batch)
