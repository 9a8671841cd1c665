"""minibatch discrimination's similarity, o[i, b] = sum_{j != i} exp(-||M[i, b] - M[j, b]||_1), against its PyTorch
formulations: the naive broadcast of torchgan's MinibatchDiscrimination1d ("torch": (N, N, B, C) differences), the
same under torch.compile, and a torch.cdist(p=1) form ("torch-cdist": (B, N, N) distances).

Cases: N in {64, 256, 1024, 4096}, (B, C) in {(100, 5), (32, 16)}, forward and forward + backward (dM). A
PyTorch form whose largest intermediate would pass 1 GiB is skipped (the naive form at N = 1024 and (100, 5) would hold
2 GiB per (N, N, B, C) tensor, and 34 GiB at 4096; this 2-core VM has 24 GiB); fastsn needs O(N * B * C). On CPU,
N = 4096 is skipped (each fastsn call takes seconds, which the smoke run of CI cannot spare) unless
FASTSN_BENCH_LARGE=1. The Triton interpreter (CPU tensors) runs one tiny case: its timings mean nothing.
"""
from __future__ import annotations

import os

import pytest
import torch

from conftest import device_name, interpreted, provider_unavailable, synchronized
from fastsn.ops.minibatch_l1_similarity import minibatch_l1_similarity

PROVIDERS = ("torch", "torch-cdist", "torch.compile", "fastsn-cpu", "fastsn-cuda", "fastsn-triton")
SIZES = [64, 256, 1024, 4096]
KERNELS = [(100, 5), (32, 16)]
LIMIT_BYTES = 1 << 30


def naive(M: torch.Tensor) -> torch.Tensor:
    """torchgan's form: every pair's differences at once, (N, N, B, C); the self term exp(0) = 1 subtracted."""
    return torch.exp(-(M[:, None] - M[None]).abs().sum(-1)).sum(1) - 1


def cdist_form(M: torch.Tensor) -> torch.Tensor:
    """The (B, N, N) L1 distances of torch.cdist, per kernel."""
    x = M.transpose(0, 1)  # (B, N, C)
    return (torch.exp(-torch.cdist(x, x, p=1)).sum(-1) - 1).transpose(0, 1)


def _largest_intermediate(provider: str, n: int, b: int, c: int) -> int:
    if provider in ("torch", "torch.compile"):
        return n * n * b * c * 4
    if provider == "torch-cdist":
        return n * n * b * 4
    return n * b * c * 4


def _fn(provider: str):
    if provider == "torch":
        return naive
    if provider == "torch-cdist":
        return cdist_form
    if provider == "torch.compile":
        return torch.compile(naive)
    backend = provider.removeprefix("fastsn-")
    return lambda M: minibatch_l1_similarity(M, backend=backend)  # noqa: E731


@pytest.mark.parametrize("order", ["forward", "forward+backward"])
@pytest.mark.parametrize("kernels", KERNELS, ids=[f"B{b}-C{c}" for b, c in KERNELS])
@pytest.mark.parametrize("n", SIZES, ids=[f"N{n}" for n in SIZES])
def test_minibatch_discrimination(benchmark, provider, device, n, kernels, order):
    reason = provider_unavailable(provider, "minibatch_l1_similarity", device)
    if reason:
        pytest.skip(reason)
    b, c = kernels
    if interpreted(provider, device):
        if (n, kernels, order) != (SIZES[0], KERNELS[0], "forward+backward"):
            pytest.skip("the Triton interpreter runs one tiny case (its timings mean nothing)")
        n, b, c = 8, 2, 3
    need = _largest_intermediate(provider, n, b, c)
    if need > LIMIT_BYTES:
        pytest.skip(f"{provider}: the form would hold {need / 2**30:.1f} GiB in one intermediate when eager "
                    "(limit 1 GiB)")
    if device == "cpu" and n >= 4096 and os.environ.get("FASTSN_BENCH_LARGE", "0") in ("", "0"):
        pytest.skip("N = 4096 on CPU takes seconds per call: set FASTSN_BENCH_LARGE=1 to run it")
    M = (torch.randn(n, b, c, device=device) * 0.3).requires_grad_(order != "forward")
    fn = _fn(provider)

    def run() -> torch.Tensor:
        if order == "forward":
            with torch.no_grad():
                return fn(M)
        (dm,) = torch.autograd.grad(fn(M), M, torch.ones(n, b, device=device))
        return dm

    timed = synchronized(run, device)
    timed()  # warm-up: compiles torch.compile graphs and Triton kernels outside the timing
    benchmark.group = f"minibatch_discrimination {order} {device} N={n} B={b} C={c}"
    benchmark.extra_info.update(provider=provider, device=device_name(device), pairs=n * n * b, bytes=None)
    assert torch.isfinite(benchmark(timed)).all()
