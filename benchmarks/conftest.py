"""Benchmark scaffolding shared by every op: the providers compared in one run and their availability.

Providers: "torch" (the op's pure-PyTorch reference, eager), "torch.compile" (the same reference under
torch.compile), "fastsn-cpu", "fastsn-cuda", "fastsn-triton". Each case is named
``<op> <device> <size>`` in ``benchmark.group``, so pytest-benchmark lists the providers side by side, and
``extra_info`` holds what a report needs (provider, device name, bytes moved).

Run: ``pytest benchmarks`` (timings), or ``pytest benchmarks --benchmark-disable`` (each case once: a smoke test).
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import pytest
import torch

from fastsn import _backend

PROVIDERS = ("torch", "torch.compile", "fastsn-cpu", "fastsn-cuda", "fastsn-triton")


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
