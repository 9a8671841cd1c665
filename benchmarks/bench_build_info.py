"""fastsn::build_info (the probe op: a non-finite count over x) against torch eager and torch.compile.

It reads x once and writes 64 bytes, so it measures launch overhead at small sizes and memory bandwidth
at large ones: the floor for every fastsn kernel that reads a tensor once.
"""
from __future__ import annotations

import pytest
import torch

from conftest import device_name, interpreted, provider_unavailable, synchronized
from fastsn.ops.build_info import build_info, build_info_ref

SIZES = {"cpu": [1 << 12, 1 << 20], "cuda": [1 << 12, 1 << 24]}


@pytest.mark.parametrize("size_index", [0, 1], ids=["small", "large"])
def test_build_info(benchmark, provider, device, size_index):
    reason = provider_unavailable(provider, "build_info", device)
    if reason:
        pytest.skip(reason)
    n = SIZES[device][size_index]
    if interpreted(provider, device) and size_index > 0:
        pytest.skip("Triton's interpreter is only smoke-tested, at the small size")
    x = torch.randn(n, device=device)
    if provider == "torch":
        fn = build_info_ref
    elif provider == "torch.compile":
        fn = torch.compile(build_info_ref, fullgraph=True)
    else:
        backend = provider.removeprefix("fastsn-")
        fn = lambda t: build_info(t, backend=backend)  # noqa: E731
    run = synchronized(lambda: fn(x), device)
    run()  # warm-up: compiles torch.compile and Triton kernels outside the timing
    benchmark.group = f"build_info {device} n={n}"
    benchmark.extra_info.update(provider=provider, device=device_name(device), numel=n,
                                bytes=x.numel() * x.element_size(), interpreted=interpreted(provider, device))
    out = benchmark(run)
    assert out[3].item() == n  # every provider visited every element
