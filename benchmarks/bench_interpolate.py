"""interpolate (the WGAN-GP points x = eps real + (1 - eps) fake, eps per sample) against the usual PyTorch code
(``alpha = torch.rand(B, 1, 1, 1)`` then the broadcast formula), eager and torch.compile.

Case: draw + forward + the backward to real and fake, on a DCGAN batch (B, 3, 64, 64): B = 256 on a GPU, 64 on a
CPU. The bytes recorded are the fewest that pass must move: read real and fake, write x, read dx, write two grads
(six passes over a batch).
"""
from __future__ import annotations

import pytest
import torch

from conftest import device_name, interpreted, provider_unavailable, synchronized
from fastsn.ops.interpolate import interpolate

SHAPES = {"cpu": (64, 3, 64, 64), "cuda": (256, 3, 64, 64)}


def _torch_interpolate(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    return alpha * real + (1 - alpha) * fake


def _fn(provider: str):
    if provider == "torch":
        return _torch_interpolate
    if provider == "torch.compile":
        return torch.compile(_torch_interpolate)
    backend = provider.removeprefix("fastsn-")
    return lambda real, fake: interpolate(real, fake, backend=backend)  # noqa: E731


def test_interpolate(benchmark, provider, device):
    reason = provider_unavailable(provider, "interpolate", device)
    if reason:
        pytest.skip(reason)
    shape = SHAPES[device] if not interpreted(provider, device) else (2, 3, 8, 8)
    real = torch.randn(shape, device=device, requires_grad=True)
    fake = torch.randn(shape, device=device, requires_grad=True)
    grad = torch.randn(shape, device=device)
    fn = _fn(provider)

    def run() -> torch.Tensor:
        grad_real, grad_fake = torch.autograd.grad(fn(real, fake), (real, fake), grad)
        return grad_fake

    timed = synchronized(run, device)
    timed()  # warm-up: compiles torch.compile graphs and Triton kernels outside the timing
    benchmark.group = f"interpolate {device} {'x'.join(map(str, shape))}"
    benchmark.extra_info.update(provider=provider, device=device_name(device), bytes=6 * real.numel() * 4)
    assert torch.isfinite(benchmark(timed)).all()
