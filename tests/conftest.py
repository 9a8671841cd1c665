"""Test scaffolding shared by every op: which backend x device pairs exist here, dtypes and their
tolerances, and seeded randomness.

A pair exists when fastsn's own switch says the backend can run on that device: cuda only with a GPU and
compiled kernels, triton on a GPU or on CPU tensors under TRITON_INTERPRET=1, cpu with fastsn._C, ref
always. ``FASTSN_TEST_REQUIRE`` (e.g. "cpu,cuda-build,triton") turns a missing backend into a failure
(tests/test_backend.py::test_required_backends), so a broken build cannot pass as "reference only".
``FASTSN_CUDA_EMULATION=1`` replaces the CPU kernels with the CUDA ones compiled for the CPU (tests/cuda_emulation).
"""
from __future__ import annotations

import os
import random

import pytest
import torch

from fastsn import _backend

if os.environ.get("FASTSN_CUDA_EMULATION") == "1":  # the cpu backend runs the CUDA code (tests/test_cuda_emulation.py)
    from cuda_emulation.build import load as _load_cuda_emulation

    _load_cuda_emulation()

# Parity checks compare float32 results at float32 tolerances: no TF32 in cuDNN convolutions or cuBLAS matmuls
# (cuDNN's default on Ampere and later rounds operands to 10 mantissa bits, far past TOLERANCES[float32]).
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

KERNEL_BACKENDS = ("cuda", "triton", "cpu", "ref")
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
TOLERANCES = {  # (rtol, atol) for a kernel against its reference at the same dtype
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1.6e-2, 1e-2),
}


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backend_device_pairs(op: str = "build_info") -> list[tuple[str, str]]:
    """Every (backend, device) pair that can run ``op`` in this process."""
    return [(b, d) for d in devices() for b in KERNEL_BACKENDS if _backend.unavailable_reason(b, op, d) is None]


def kernel_pairs(op: str) -> list[tuple[str, str]]:
    """The pairs of :func:`backend_device_pairs` that run fastsn's kernels (every backend but ref)."""
    return [(b, d) for b, d in backend_device_pairs(op) if b != "ref"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend_device" in metafunc.fixturenames:
        # a test module names its op family in OP (its kernels decide which backends exist)
        pairs = backend_device_pairs(getattr(metafunc.module, "OP", "build_info"))
        metafunc.parametrize("backend_device", pairs, ids=[f"{b}-{d}" for b, d in pairs])
    if "dtype" in metafunc.fixturenames:
        metafunc.parametrize("dtype", DTYPES, ids=[str(d).replace("torch.", "") for d in DTYPES])


@pytest.fixture(autouse=True)
def seeded() -> None:
    """Every test starts from the same random state."""
    random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def one_torch_thread():
    """torch on one CPU thread for the test, as the trainer's CLI runs (its small models lose time to thread
    synchronization on a shared CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    """torch.testing.assert_close with the tolerance of ``dtype`` (default: actual's dtype)."""
    rtol, atol = TOLERANCES.get(dtype or actual.dtype, (0.0, 0.0))
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)
