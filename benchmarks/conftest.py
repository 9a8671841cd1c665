"""Benchmark scaffolding shared by every op: the providers compared in one run and their availability.

Providers: "torch" (the op's pure-PyTorch reference, eager), "torch.compile" (the same reference under
torch.compile), "fastsn-cpu", "fastsn-cuda", "fastsn-triton". Each case is named
``<op> <device> <size>`` in ``benchmark.group``, so pytest-benchmark lists the providers side by side, and
``extra_info`` holds what a report needs (provider, device name, bytes moved).

Run: ``pytest benchmarks`` (timings), or ``pytest benchmarks --benchmark-disable`` (each case once: a smoke test).

Heap: glibc's malloc serves blocks above a threshold (128 KiB at first, then adapting) with mmap and returns them
on free, so a weight-sized tensor allocated per call is faulted in page by page; which calls pay that depends on
what ran before, and on the 2-core VM it moved a provider's median by 2x between runs of the same code (800 faults
per SNGAN refresh for one provider, none for the next). The benchmarks therefore fix both thresholds at 1 GiB
(``mallopt``), for every provider alike; ``FASTSN_BENCH_MALLOC=default`` keeps glibc's behaviour. The choice is
recorded in the JSON's ``machine_info["malloc"]``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Callable, Optional

import pytest
import torch

from fastsn import _backend

PROVIDERS = ("torch", "torch.compile", "fastsn-cpu", "fastsn-cuda", "fastsn-triton")


def _fix_heap_thresholds() -> str:
    """Set glibc's mmap and trim thresholds to 1 GiB unless FASTSN_BENCH_MALLOC=default; says what was done."""
    if os.environ.get("FASTSN_BENCH_MALLOC", "") == "default":
        return "glibc defaults (FASTSN_BENCH_MALLOC=default)"
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    if libc is None or not hasattr(libc, "mallopt"):
        return "allocator defaults (no glibc mallopt)"
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    if libc.mallopt(m_mmap_threshold, 1 << 30) != 1 or libc.mallopt(m_trim_threshold, 1 << 30) != 1:
        return "allocator defaults (mallopt refused)"
    return "glibc mmap and trim thresholds 1 GiB (mallopt)"


HEAP = _fix_heap_thresholds()


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info["malloc"] = HEAP


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def provider_unavailable(provider: str, op: str, device: str) -> Optional[str]:
    """Why ``provider`` cannot be measured for ``op`` on ``device``; None if it can (PyTorch formulations, whatever
    a benchmark module names them, always can)."""
    if not provider.startswith("fastsn-"):
        return None
    return _backend.unavailable_reason(provider.removeprefix("fastsn-"), op, device)


def interpreted(provider: str, device: str) -> bool:
    """Triton on CPU tensors runs in Triton's interpreter: correct, but its timings mean nothing."""
    return provider == "fastsn-triton" and device == "cpu"


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu ({os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)"


def synchronized(fn: Callable[[], object], device: str) -> Callable[[], object]:
    """``fn`` followed by a device synchronize, so that wall time covers the GPU work."""
    if device != "cuda":
        return fn

    def run() -> object:
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "provider" in metafunc.fixturenames:
        # a benchmark module may name its own providers (e.g. torch's two spectral-norm APIs)
        metafunc.parametrize("provider", getattr(metafunc.module, "PROVIDERS", PROVIDERS))
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", devices())


def _case_key(item: pytest.Item) -> tuple:
    """What a benchmark measures apart from its provider: the test and its other parameters."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    if "provider" not in params:
        return (item.nodeid,)
    return (str(item.path), item.originalname, tuple(sorted((k, str(v)) for k, v in params.items() if k != "provider")))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the providers of one case back to back (collection puts every case of one provider first): on a VM
    whose speed drifts by 20% over a minute, providers timed minutes apart compared the drift, not the code."""
    first = {}
    for index, item in enumerate(items):
        first.setdefault(_case_key(item), index)
    items.sort(key=lambda item: first[_case_key(item)])  # stable: the providers keep their order within a case
