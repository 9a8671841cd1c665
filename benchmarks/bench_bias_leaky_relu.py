"""bias_leaky_relu (bias + leaky ReLU + gain) against its PyTorch formulation, eager and torch.compile.

Cases: forward + backward (x and bias) of a discriminator activation, and the second-order pass a gradient penalty
makes (the input gradient with its graph, then its gradient with respect to the upstream gradient), on (N, C, H, W)
= (64, 128, 32, 32) on a GPU and (16, 64, 32, 32) on a CPU.
The bytes recorded are the fewest that forward + backward must move: read x, write y, read dy, read y, write dx
(five passes over the activation).
"""
from __future__ import annotations

import math

import pytest
import torch

from conftest import device_name, interpreted, provider_unavailable, synchronized
from fastsn.ops.bias_leaky_relu import bias_leaky_relu, bias_leaky_relu_ref

SHAPES = {"cpu": (16, 64, 32, 32), "cuda": (64, 128, 32, 32)}


def _fn(provider: str):
    if provider == "torch":
        return bias_leaky_relu_ref
    if provider == "torch.compile":
        return torch.compile(bias_leaky_relu_ref)
    backend = provider.removeprefix("fastsn-")
    return lambda x, b, s, g, d: bias_leaky_relu(x, b, s, g, d, backend=backend)  # noqa: E731


@pytest.mark.parametrize("order", ["first", "second"])
def test_bias_leaky_relu(benchmark, provider, device, order):
    reason = provider_unavailable(provider, "bias_leaky_relu", device)
    if reason:
        pytest.skip(reason)
    if provider == "torch.compile" and order == "second":
        pytest.skip("a torch.compile'd function's backward cannot be differentiated again (create_graph)")
    shape = SHAPES[device] if not interpreted(provider, device) else (2, 4, 8, 8)
    x = torch.randn(shape, device=device, requires_grad=True)
    bias = torch.randn(shape[1], device=device, requires_grad=True)
    grad = torch.randn(shape, device=device, requires_grad=True)  # stands for the upstream gradient of D's layers
    fn = _fn(provider)

    def run() -> torch.Tensor:
        y = fn(x, bias, 0.2, math.sqrt(2), 1)
        if order == "first":
            dx, db = torch.autograd.grad(y, (x, bias), grad)
            return db
        # a gradient penalty: the input gradient with its graph, then its backward through the backward op
        (dx,) = torch.autograd.grad(y, x, grad, create_graph=True)
        (dgrad,) = torch.autograd.grad(dx.square().sum(), grad)
        return dgrad

    timed = synchronized(run, device)
    timed()  # warm-up: compiles torch.compile graphs and Triton kernels outside the timing
    benchmark.group = f"bias_leaky_relu {order}-order {device} {'x'.join(map(str, shape))}"
    benchmark.extra_info.update(provider=provider, device=device_name(device),
                                bytes=5 * x.numel() * x.element_size() if order == "first" else None)
    assert torch.isfinite(benchmark(timed)).all()
