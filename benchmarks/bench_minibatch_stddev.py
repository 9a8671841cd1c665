"""minibatch_stddev (StyleGAN2's minibatch standard-deviation layer, cat([x, stats], 1)) against its plain PyTorch
form (the reference, eager and under torch.compile): forward, and forward + backward (dx).

Cases: a StyleGAN2 discriminator's last block, x (N, C, 4, 4) with C = 512, group size 4, one statistic, N = 32 on
a CPU and 256 on a GPU; a wide early map (N, 128, 32, 32). Bytes: read x, write the output (forward); the backward
adds reading x twice and grad, and writing dx.
"""
from __future__ import annotations

import pytest
import torch

from conftest import device_name, interpreted, provider_unavailable, synchronized
from fastsn.ops.minibatch_stddev import minibatch_stddev, minibatch_stddev_ref

SHAPES = {"cpu": [(32, 512, 4, 4), (16, 128, 32, 32)], "cuda": [(256, 512, 4, 4), (64, 128, 32, 32)]}


def _fn(provider: str):
    if provider == "torch":
        return minibatch_stddev_ref
    if provider == "torch.compile":
        return torch.compile(minibatch_stddev_ref)
    backend = provider.removeprefix("fastsn-")
    return lambda x, g, f: minibatch_stddev(x, g, f, backend=backend)  # noqa: E731


@pytest.mark.parametrize("order", ["forward", "forward+backward"])
@pytest.mark.parametrize("case", [0, 1], ids=["last-block", "early-map"])
def test_minibatch_stddev(benchmark, provider, device, case, order):
    reason = provider_unavailable(provider, "minibatch_stddev", device)
    if reason:
        pytest.skip(reason)
    shape = SHAPES[device][case] if not interpreted(provider, device) else (4, 8, 2, 2)
    x = torch.randn(shape, device=device, requires_grad=order != "forward")
    fn = _fn(provider)

    def run() -> torch.Tensor:
        if order == "forward":
            with torch.no_grad():
                return fn(x, 4, 1)
        out = fn(x, 4, 1)
        (dx,) = torch.autograd.grad(out, x, torch.ones_like(out))
        return dx

    timed = synchronized(run, device)
    timed()
    n, c, h, w = shape
    passes = 2 if order == "forward" else 6  # x, out; + x twice, grad, dx
    benchmark.group = f"minibatch_stddev {order} {device} {'x'.join(map(str, shape))}"
    benchmark.extra_info.update(provider=provider, device=device_name(device),
                                bytes=passes * n * c * h * w * x.element_size())
    assert torch.isfinite(benchmark(timed)).all()
