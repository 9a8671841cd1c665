"""The backend switch: precedence, automatic choice, errors, and import without fastsn._C."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import Optional

import pytest
import torch

import fastsn
from fastsn import _backend, _extension
from fastsn.ops.build_info import BACKEND_CODES, build_info


@pytest.fixture
def everything_available(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend every backend can run anywhere, to test the precedence logic alone."""
    monkeypatch.setattr(_backend, "unavailable_reason", lambda name, op, device: None)
    monkeypatch.delenv("FASTSN_BACKEND", raising=False)


def _only(available: set[str]):
    def reason(name: str, op: str, device) -> Optional[str]:
        return None if name in available else f"{name} missing in this simulation"
    return reason


def test_precedence_argument_over_context_over_env_over_auto(everything_available, monkeypatch):
    assert _backend.resolve("build_info", "cpu") == "cpu"  # auto on CPU tensors
    monkeypatch.setenv("FASTSN_BACKEND", "triton")
    assert _backend.resolve("build_info", "cpu") == "triton"
    with fastsn.use_backend("ref"):
        assert _backend.resolve("build_info", "cpu") == "ref"
        assert _backend.resolve("build_info", "cpu", backend="cuda") == "cuda"
        assert _backend.resolve("build_info", "cpu", backend="auto") == "cpu"  # explicit auto ignores context
    assert _backend.resolve("build_info", "cpu") == "triton"


def test_contexts_nest_and_unwind_on_error(everything_available):
    with fastsn.use_backend("cpu"):
        with pytest.raises(KeyError):
            with fastsn.use_backend("ref"):
                assert _backend.resolve("build_info", "cpu") == "ref"
                raise KeyError("boom")
        assert _backend.resolve("build_info", "cpu") == "cpu"
    assert _backend.requested() == ("auto", "default")


def test_context_is_local_to_its_thread(everything_available):
    seen = []
    with fastsn.use_backend("ref"):
        thread = threading.Thread(target=lambda: seen.append(_backend.requested()[0]))
        thread.start()
        thread.join()
    assert seen == ["auto"]


def test_names_are_case_and_space_insensitive(everything_available, monkeypatch):
    monkeypatch.setenv("FASTSN_BACKEND", " Ref ")
    assert _backend.resolve("build_info", "cpu") == "ref"
    assert _backend.resolve("build_info", "cpu", backend="CPU") == "cpu"


@pytest.mark.parametrize("where", ["argument", "context", "env"])
def test_unknown_backend_name_is_rejected(where, monkeypatch):
    x = torch.ones(3)
    if where == "argument":
        with pytest.raises(ValueError, match="argument 'backend' must be one of"):
            build_info(x, backend="gpu")
    elif where == "context":
        with pytest.raises(ValueError, match=r"use_backend\(name\) must be one of"):
            with fastsn.use_backend("gpu"):
                pass
    else:
        monkeypatch.setenv("FASTSN_BACKEND", "gpu")
        with pytest.raises(ValueError, match="FASTSN_BACKEND must be one of"):
            build_info(x)


@pytest.mark.parametrize("device, available, expected", [
    ("cuda", {"cuda", "triton", "cpu", "ref"}, "cuda"),
    ("cuda", {"triton", "cpu", "ref"}, "triton"),
    ("cuda", {"cpu", "ref"}, "ref"),
    ("cpu", {"cuda", "triton", "cpu", "ref"}, "cpu"),
    ("cpu", {"triton", "ref"}, "ref"),  # auto never picks Triton's interpreter
    ("meta", {"cuda", "triton", "cpu", "ref"}, "ref"),
])
def test_auto_order(device, available, expected, monkeypatch):
    monkeypatch.delenv("FASTSN_BACKEND", raising=False)
    monkeypatch.setattr(_backend, "unavailable_reason", _only(available))
    assert _backend.resolve("build_info", device) == expected


def test_requested_but_unavailable_backend_raises_with_source_and_reason(monkeypatch):
    monkeypatch.setattr(_backend, "unavailable_reason", _only({"ref"}))
    monkeypatch.setenv("FASTSN_BACKEND", "cpu")
    with pytest.raises(fastsn.BackendUnavailableError, match=r"'cpu' \(from FASTSN_BACKEND='cpu'\).*cpu missing"):
        _backend.resolve("build_info", "cpu")
    with fastsn.use_backend("triton"), pytest.raises(fastsn.BackendUnavailableError, match=r"use_backend\('triton'\)"):
        _backend.resolve("build_info", "cpu")
    with pytest.raises(fastsn.BackendUnavailableError, match=r"argument backend='cuda'"):
        _backend.resolve("build_info", "cpu", backend="cuda")


def test_device_mismatch_reasons():
    assert "take CUDA tensors" in _backend.unavailable_reason("cuda", "build_info", "cpu")
    assert "take CPU tensors" in _backend.unavailable_reason("cpu", "build_info", "cuda")
    assert _backend.unavailable_reason("ref", "build_info", "meta") is None


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET=1" in _backend.unavailable_reason("triton", "build_info", "cpu")
    with pytest.raises(fastsn.BackendUnavailableError, match="TRITON_INTERPRET=1"):
        build_info(torch.ones(3), backend="triton")


def test_cuda_backend_without_cuda_kernels_says_how_to_build(monkeypatch):
    monkeypatch.setattr(_extension, "has_kernel", lambda op, key: key == "CPU")
    monkeypatch.setattr(_extension, "cuda_compiled", lambda: False)
    monkeypatch.setattr(_extension, "_C", object())
    reason = _backend.unavailable_reason("cuda", "build_info", torch.device("cuda"))
    assert "without CUDA kernels" in reason and "FORCE_CUDA=1" in reason


def test_stale_build_without_the_op_says_rebuild(monkeypatch):
    monkeypatch.setattr(_extension, "has_kernel", lambda op, key: False)
    monkeypatch.setattr(_extension, "_C", object())
    assert "built from older sources" in _backend.unavailable_reason("cpu", "not_an_op", "cpu")


@pytest.mark.skipif(not _extension.loaded(), reason="needs fastsn._C")
def test_end_to_end_precedence_reaches_the_kernels(monkeypatch):
    x = torch.ones(5)
    monkeypatch.setenv("FASTSN_BACKEND", "ref")
    assert build_info(x)[0].item() == BACKEND_CODES["ref"]
    with fastsn.use_backend("cpu"):
        assert build_info(x)[0].item() == BACKEND_CODES["cpu"]
        assert build_info(x, backend="ref")[0].item() == BACKEND_CODES["ref"]
    monkeypatch.delenv("FASTSN_BACKEND")
    assert build_info(x)[0].item() == BACKEND_CODES["cpu"]


@pytest.mark.skipif(not _extension.loaded(), reason="needs fastsn._C")
def test_named_kernel_backend_under_torch_func_grad_and_jvp_raises(monkeypatch):
    """torch.func's grad and jvp cannot differentiate the compiled kernels: a kernel backend asked for by name
    raises there (before, jvp gave a zero tangent); vmap alone runs them; auto takes the reference."""
    monkeypatch.delenv("FASTSN_BACKEND", raising=False)
    x, tangent = torch.randn(4, 5), torch.randn(4, 5)
    reference = fastsn.ops.bias_leaky_relu_ref(x)
    with fastsn.use_backend("cpu"):
        with pytest.raises(fastsn.BackendUnavailableError, match="torch.func's grad and jvp"):
            torch.func.grad(lambda x: fastsn.ops.bias_leaky_relu(x).sum())(x)
        with pytest.raises(fastsn.BackendUnavailableError, match="torch.func's grad and jvp"):
            torch.func.jvp(fastsn.ops.bias_leaky_relu, (x,), (tangent,))
        torch.testing.assert_close(torch.vmap(fastsn.ops.bias_leaky_relu)(x), reference)
    _, auto_tangent = torch.func.jvp(fastsn.ops.bias_leaky_relu, (x,), (tangent,))
    torch.testing.assert_close(auto_tangent, torch.func.jvp(fastsn.ops.bias_leaky_relu_ref, (x,), (tangent,))[1])


def _forward_ad_cases() -> dict:
    """name: (function of one tensor through an op family, its input)."""
    torch.manual_seed(0)
    linear = fastsn.spectral_norm(torch.nn.Linear(5, 4)).double()
    activation = fastsn.nn.FusedLeakyReLU(4).double()
    eps = torch.rand(3, dtype=torch.float64)
    fake = torch.randn(3, 4, dtype=torch.float64)
    return {
        "bias_leaky_relu": (lambda x: fastsn.convert_leaky_relu(torch.nn.LeakyReLU(0.2))(x), (3, 4)),
        "fused_leaky_relu": (activation, (3, 4)),
        "spectral_norm": (linear, (3, 5)),
        "interpolate": (lambda x: fastsn.ops.interpolate(x, fake, eps), (3, 4)),
        "gradient_penalty_head": (lambda x: fastsn.ops.gradient_penalty_head(x, fastsn.ops.MODES["wgan-gp"], 10.0),
                                  (3, 4)),
        "minibatch_stddev": (lambda x: fastsn.ops.minibatch_stddev(x, 2), (4, 3, 2, 2)),
        "minibatch_l1_similarity": (fastsn.ops.minibatch_l1_similarity, (3, 2, 4)),
    }


@pytest.mark.skipif(not _extension.loaded(), reason="needs fastsn._C")
@pytest.mark.parametrize("grad_mode", [True, False], ids=["grad", "no_grad"])
def test_forward_mode_ad_takes_the_reference(monkeypatch, grad_mode):
    """Inside torch.autograd.forward_ad.dual_level() auto takes the reference, whose forward derivatives are
    torch's (the kernels' calls dropped the tangent, or raised without a jvp); a kernel backend asked for by name
    raises."""
    monkeypatch.delenv("FASTSN_BACKEND", raising=False)
    fwad = torch.autograd.forward_ad
    for name, (function, shape) in _forward_ad_cases().items():
        x = torch.randn(shape, dtype=torch.float64)
        tangent = torch.randn(shape, dtype=torch.float64)
        tangents = []
        for backend in ("auto", "ref"):
            with fastsn.use_backend(backend), torch.set_grad_enabled(grad_mode), fwad.dual_level():
                tangents.append(fwad.unpack_dual(function(fwad.make_dual(x, tangent))).tangent)
        assert tangents[0] is not None, name
        torch.testing.assert_close(tangents[0], tangents[1], msg=name)
        with fastsn.use_backend("cpu"), torch.set_grad_enabled(grad_mode), fwad.dual_level():
            with pytest.raises(fastsn.BackendUnavailableError, match="forward-mode AD"):
                function(fwad.make_dual(x, tangent))


@pytest.mark.skipif(not _extension.loaded(), reason="needs fastsn._C")
def test_named_kernel_backend_under_vmap_with_parameters_that_require_grad(monkeypatch):
    """vmap over inputs through layers whose parameters require grad (a spectral-normalized Linear, FusedLeakyReLU)
    runs the kernels through the ops' registered autograd, then backward works (the eager autograd.Functions have no
    vmap rule: this raised before)."""
    monkeypatch.delenv("FASTSN_BACKEND", raising=False)
    torch.manual_seed(0)
    model = torch.nn.Sequential(fastsn.spectral_norm(torch.nn.Linear(5, 4)), fastsn.nn.FusedLeakyReLU(4),
                                fastsn.spectral_norm(torch.nn.Linear(4, 1))).eval()
    x = torch.randn(6, 2, 5)  # vmap over dim 0: samples of (2, 5), FusedLeakyReLU's channels at dim 1
    expected = torch.stack([model(sample) for sample in x])
    expected.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with fastsn.use_backend("cpu"):
        got = torch.vmap(model)(x)
        got.sum().backward()
    torch.testing.assert_close(got, expected)
    for p, want in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, want)


def test_available_backends_lists_ref_everywhere():
    assert fastsn.available_backends("build_info", "cpu")[-1] == "ref"
    assert fastsn.available_backends("build_info", "meta") == ["ref"]


def test_required_backends():
    """FASTSN_TEST_REQUIRE=cpu,cuda-build,triton,cuda: fail unless each is here (CI sets it)."""
    required = [r.strip() for r in os.environ.get("FASTSN_TEST_REQUIRE", "").split(",") if r.strip()]
    if not required:
        pytest.skip("FASTSN_TEST_REQUIRE is not set")
    have = {
        "cpu": _backend.unavailable_reason("cpu", "build_info", "cpu"),
        "cuda-build": None if _extension.cuda_compiled() else "fastsn._C has no CUDA kernels",
        "triton": _backend.unavailable_reason("triton", "build_info", "cuda" if torch.cuda.is_available() else "cpu"),
        "cuda": _backend.unavailable_reason("cuda", "build_info", "cuda"),
    }
    missing = {r: have.get(r, "unknown requirement") for r in required if have.get(r, "unknown") is not None}
    assert not missing, f"required backends missing: {missing}"


_NO_EXTENSION = """
import sys, warnings
sys.modules["fastsn._C"] = None  # makes `from fastsn import _C` raise ImportError
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import fastsn
    import fastsn.ops, fastsn._extension, fastsn._backend  # a second import must not warn again
import torch
from fastsn.ops.build_info import build_info
ours = [w for w in caught if "fastsn._C" in str(w.message)]
print("WARNINGS", len(ours))
print("MESSAGE", str(ours[0].message).replace(chr(10), " | "))
print("AUTO", build_info(torch.ones(4))[0].item())
try:
    build_info(torch.ones(4), backend="cpu")
except fastsn.BackendUnavailableError as exc:
    print("CPU-ERROR", exc)
"""


@pytest.mark.parametrize("verbose", ["0", "1"])
def test_import_without_extension_warns_once_and_falls_back(verbose):
    env = dict(os.environ, FASTSN_VERBOSE=verbose)
    env.pop("FASTSN_BACKEND", None)
    out = subprocess.run([sys.executable, "-c", _NO_EXTENSION], capture_output=True, text=True, env=env,
                         check=True).stdout
    assert "WARNINGS 1" in out
    assert "AUTO 0" in out  # the reference ran
    assert "CPU-ERROR fastsn.build_info: backend 'cpu'" in out and "not loaded" in out
    assert ("Traceback" in out) == (verbose == "1")
