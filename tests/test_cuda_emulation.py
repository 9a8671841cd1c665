"""The CUDA kernels of csrc/cuda compiled for the CPU (tests/cuda_emulation) and run through their op's own tests,
in processes of their own where they replace the CPU kernels: what checks their logic (indexing, the algorithm,
every thread reaching each barrier) on machines without a GPU. Not their speed, nor anything of the hardware.

Skipped where a GPU runs the real kernels, and with FASTSN_TEST_CUDA_EMULATION=0 (CI's second pass over the
tests, against the CPU-only wheel: the emulated kernels come from the source tree either way).
"""
from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys

import pytest
import torch

from cuda_emulation.build import OPS, ROOT

# the test files of each emulated op; their "cpu-cpu" cases run the emulated kernels
OP_TESTS = {
    "spectral_norm": ["tests/test_spectral_norm.py", "tests/test_nn_spectral_norm.py"],
    "bias_leaky_relu": ["tests/test_bias_leaky_relu.py", "tests/test_leaky_relu.py"],
    "gradient_penalty": ["tests/test_gradient_penalty_head.py", "tests/test_gradient_penalty.py"],
    "interpolate": ["tests/test_interpolate.py"],
    "minibatch_l1_similarity": ["tests/test_minibatch_l1_similarity.py"],
    "minibatch_stddev": ["tests/test_minibatch_stddev.py"],
    "mlp_input_gradient": ["tests/test_mlp_input_gradient.py"],
}


def _run_op_tests(op: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, FASTSN_CUDA_EMULATION="1", FASTSN_TEST_REQUIRE="cpu")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "cpu-cpu",
                           *OP_TESTS[op]], cwd=ROOT, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def op_runs():
    """Every op's run, started at once, as many at a time as there are cores (each is mostly one thread; the
    first to load builds the library, the others wait on cpp_extension's lock in the build directory)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(len(OPS), os.cpu_count() or 1))) as pool:
        futures = {op: pool.submit(_run_op_tests, op) for op in OPS}
        yield futures


@pytest.mark.skipif(torch.cuda.is_available(), reason="the real CUDA kernels run on this machine")
@pytest.mark.skipif(os.environ.get("FASTSN_TEST_CUDA_EMULATION") == "0", reason="FASTSN_TEST_CUDA_EMULATION=0")
@pytest.mark.skipif(sys.platform != "linux", reason="the emulation's fibers are written for Linux")
@pytest.mark.parametrize("op", OPS)
def test_cuda_kernels_pass_their_op_tests_on_the_cpu(op_runs, op):
    result = op_runs[op].result()
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout.splitlines()[-1], result.stdout[-2000:]


def test_every_emulated_op_has_its_tests():
    assert set(OPS) == set(OP_TESTS)
