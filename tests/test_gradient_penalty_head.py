"""The gradient-penalty head op (fastsn::gradient_penalty_head) on every backend x device against its reference and
an autograd formula: penalty, d penalty / d grad, the backward, gradcheck/gradgradcheck in float64, opcheck, a zero
row, bad input; and fastsn.gradient_penalty equal on every backend."""
from __future__ import annotations

import importlib

import pytest
import torch
import triton

import fastsn
from conftest import TOLERANCES, kernel_pairs
from fastsn import _backend

head = importlib.import_module("fastsn.ops.gradient_penalty")
OP = "gradient_penalty"
# 1030 > one 1024-wide block of the Triton kernel; 2 x 40000: rows the kernels cut into chunks (CPU: 32768 elements;
# Triton under the interpreter: 4 of 10240; CUDA: as many as the SM count asks)
SHAPES = [(1, 1), (5, 3), (4, 1030), (33, 7), (2, 40000)]


def _autograd_penalty(grad: torch.Tensor, mode: int, weight: float, center: float) -> torch.Tensor:
    """The penalty written with torch ops on float64: per-sample norms, then the mode's phi, then the mean."""
    norms = torch.linalg.vector_norm(grad.double(), dim=1)
    phi = [(norms - center) ** 2, torch.relu(norms - center) ** 2, norms ** 2][mode]
    return weight * phi.mean()


@pytest.mark.parametrize("mode", [0, 1, 2], ids=["two-sided", "one-sided", "squared"])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_penalty_and_gradient_match_autograd(backend_device, dtype, mode, shape):
    backend, device = backend_device
    grad = (torch.randn(shape, dtype=dtype, device=device) * 0.7).requires_grad_()
    penalty = head.gradient_penalty_head(grad, mode, 3.0, 0.9, backend=backend)
    assert penalty.shape == () and penalty.dtype == head.opmath_dtype(dtype)
    reference = grad.detach().double().requires_grad_()
    expected = _autograd_penalty(reference, mode, 3.0, 0.9)
    expected.backward()
    penalty.backward()
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(penalty.double(), expected, rtol=max(rtol, 1e-6) * 4, atol=atol * 4)
    torch.testing.assert_close(grad.grad.double(), reference.grad, rtol=rtol * 4, atol=atol * 4)


def test_kernel_returns_the_reference_gradient(backend_device):
    backend, device = backend_device
    if backend == "ref":
        pytest.skip("the reference is the comparison")
    grad = torch.randn(6, 40, device=device)
    ops = torch.ops.fastsn
    op = ops.gradient_penalty_head_triton if backend == "triton" else ops.gradient_penalty_head
    _backend.resolve(OP, device, backend)
    for mode in (0, 1, 2):
        penalty, d_grad = op(grad, mode, 2.0, 1.0)
        penalty_ref, d_grad_ref = head.gradient_penalty_head_ref(grad, mode, 2.0, 1.0)
        torch.testing.assert_close(penalty, penalty_ref)
        torch.testing.assert_close(d_grad, d_grad_ref)


def test_zero_row_has_zero_gradient_not_nan(backend_device):
    backend, device = backend_device
    grad = torch.zeros(3, 4, device=device, requires_grad=True)
    penalty = head.gradient_penalty_head(grad, 0, 1.0, 1.0, backend=backend)
    penalty.backward()
    assert penalty.item() == pytest.approx(1.0) and torch.equal(grad.grad, torch.zeros_like(grad))


def test_gradcheck_and_gradgradcheck_float64(backend_device):
    backend, device = backend_device
    grad = torch.randn(4, 6, dtype=torch.float64, device=device, requires_grad=True)
    for mode in (0, 1, 2):
        fn = lambda g: head.gradient_penalty_head(g, mode, 1.5, 0.5, backend=backend)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (grad,))
        assert torch.autograd.gradgradcheck(fn, (grad,))


KERNEL_PAIRS = kernel_pairs(OP)


@pytest.mark.parametrize("backend, device", KERNEL_PAIRS, ids=[f"{b}-{d}" for b, d in KERNEL_PAIRS])
def test_opcheck(backend, device):
    _backend.resolve(OP, device, backend)
    ops = torch.ops.fastsn
    op = ops.gradient_penalty_head_triton if backend == "triton" else ops.gradient_penalty_head
    torch.library.opcheck(op.default, (torch.randn(3, 5, device=device, requires_grad=True), 0, 2.0, 1.0))


@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("backend, device", KERNEL_PAIRS, ids=[f"{b}-{d}" for b, d in KERNEL_PAIRS])
def test_registered_autograd_matches_eager_function(backend, device, mode):
    """Eager calls take fastsn's autograd.Function; torch.compile, opcheck and direct torch.ops calls the registered
    autograd. Both give the same penalty and gradients, to second order."""
    ops = torch.ops.fastsn
    op = ops.gradient_penalty_head_triton if backend == "triton" else ops.gradient_penalty_head
    grad = torch.randn(4, 6, dtype=torch.float64, device=device, requires_grad=True)
    weights = torch.randn(4, 6, dtype=torch.float64, device=device)
    results = []
    for registered in (True, False):
        penalty = op(grad, mode, 2.0, 0.5)[0] if registered else head.gradient_penalty_head(grad, mode, 2.0, 0.5,
                                                                                            backend=backend)
        (first,) = torch.autograd.grad(penalty, grad, create_graph=True)
        (second,) = torch.autograd.grad((first * weights).sum(), grad)
        results.append([t.detach() for t in (penalty, first, second)])
    for registered, eager in zip(*results):
        torch.testing.assert_close(registered, eager)


@pytest.mark.parametrize("mode", [0, 1])
def test_nan_row_propagates_to_value_and_its_gradient(backend_device, mode):
    """A NaN gradient row gives a NaN penalty (Triton's one-sided mode used to clamp it to 0) and a NaN gradient
    on the whole row, as autograd through the norm; other rows are untouched."""
    backend, device = backend_device
    grad = torch.tensor([[float("nan"), 1.0], [1.0, 2.0]], device=device, requires_grad=True)
    penalty = head.gradient_penalty_head(grad, mode, 1.0, 1.0, backend=backend)
    penalty.backward()
    reference = grad.detach().clone().requires_grad_(True)
    _autograd_penalty(reference, mode, 1.0, 1.0).backward()
    assert torch.isnan(penalty)
    assert torch.isnan(grad.grad[0]).all()
    torch.testing.assert_close(grad.grad[1], reference.grad[1].float())


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_rows_cut_into_chunks_keep_their_own_norms(backend_device, mode):
    """Long rows, which the kernels cut into chunks (see SHAPES), in float64: a zero row keeps a zero gradient, a NaN
    in the last chunk of a row makes that whole row NaN and no other, the rest equals the reference."""
    backend, device = backend_device
    grad = torch.randn(4, 40000, dtype=torch.float64, device=device) * 0.01
    grad[1] = 0
    grad[2, -1] = float("nan")
    penalty, d_grad = head.gradient_penalty_head_ref(grad, mode, 2.0, 1.0)
    with_grad = grad.clone().requires_grad_(True)
    got = head.gradient_penalty_head(with_grad, mode, 2.0, 1.0, backend=backend)
    got.backward()
    assert torch.isnan(got) and torch.isnan(penalty)
    assert torch.isnan(with_grad.grad[2]).all() == (mode != 2)  # squared: the row's gradient is 2 g, NaN only there
    assert torch.equal(with_grad.grad[1], torch.zeros_like(grad[1]))
    rows = [0, 3]
    torch.testing.assert_close(with_grad.grad[rows], d_grad[rows], rtol=1e-12, atol=0)
    finite = grad[rows].clone().requires_grad_(True)
    torch.testing.assert_close(head.gradient_penalty_head(finite, mode, 2.0, 1.0, backend=backend),
                               head.gradient_penalty_head_ref(grad[rows], mode, 2.0, 1.0)[0], rtol=1e-12, atol=0)


def test_triton_chunking_rule():
    """Whole rows while the batch fills the GPU (or rows are short), else about target / batch chunks of at least
    MIN_CHUNK elements, a multiple of BLOCK (the interpreter's target is 8 programs)."""
    rows = importlib.import_module("fastsn.triton_kernels.gradient_penalty")
    assert rows.row_chunks(2, 40000, 8) == 10240  # 4 chunks
    assert rows.row_chunks(8, 40000, 8) == 40000  # the batch fills the target
    assert rows.row_chunks(1, 4095, 8) == 4095  # shorter than MIN_CHUNK
    assert rows.row_chunks(4, 3 * 1024 * 1024, 528) == 24576  # R1 at 1024^2 on an H100: 128 chunks per row
    assert rows.row_chunks(1, 2**30, 528) == 2033664  # 528 chunks
    assert rows.row_chunks(1, 2**31 - 2**17, 100000) // rows.MIN_CHUNK >= 1 and \
        triton.cdiv(2**31 - 2**17, rows.row_chunks(1, 2**31 - 2**17, 100000)) <= rows.MAX_CHUNKS


@pytest.mark.parametrize("mode", [1.5, 1.0, "r1", None], ids=str)
def test_mode_must_be_an_int(backend_device, mode):
    """A float mode is refused, not truncated by the kernels' int argument."""
    backend, device = backend_device
    with pytest.raises(RuntimeError, match="argument 'mode' must be 0, 1 or 2"):
        head.gradient_penalty_head(torch.ones(2, 2, device=device), mode, 1.0, 1.0, backend=backend)


@pytest.mark.parametrize("backend, device", KERNEL_PAIRS, ids=[f"{b}-{d}" for b, d in KERNEL_PAIRS])
def test_kernels_check_their_arguments(backend, device):
    _backend.resolve(OP, device, backend)
    ops = torch.ops.fastsn
    op = ops.gradient_penalty_head_triton if backend == "triton" else ops.gradient_penalty_head
    with pytest.raises(RuntimeError, match="argument 'grad' must be 2-D"):
        op(torch.randn(3, device=device), 0, 1.0, 1.0)
    with pytest.raises(RuntimeError, match="argument 'mode' must be 0, 1 or 2"):
        op(torch.randn(3, 2, device=device), 3, 1.0, 1.0)
    with pytest.raises(RuntimeError, match="at least one sample"):
        op(torch.randn(0, 2, device=device), 0, 1.0, 1.0)
    with pytest.raises(RuntimeError, match="argument 'grad' must be float16"):
        op(torch.ones(3, 2, dtype=torch.int64, device=device), 0, 1.0, 1.0)


def test_gradient_penalty_is_the_same_on_every_backend(backend_device):
    backend, device = backend_device
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).to(device)
    real, fake = torch.randn(6, 3, device=device), torch.randn(6, 3, device=device)
    for kind in ("wgan-gp", "wgan-lp", "r1", ("r1", "r2"), "dragan"):
        model.zero_grad()
        with fastsn.use_backend(backend):
            penalty = fastsn.gradient_penalty(model, real, fake, kind=kind,
                                              generator=torch.Generator(device).manual_seed(1))
            penalty.backward()
        got = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad()
        with fastsn.use_backend("ref"):
            expected = fastsn.gradient_penalty(model, real, fake, kind=kind,
                                               generator=torch.Generator(device).manual_seed(1))
            expected.backward()
        want = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        torch.testing.assert_close(penalty, expected, msg=str(kind))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=str(kind))


def test_public_names():
    """The head op is reachable where the README names it, beside the other functional ops."""
    grad = torch.randn(4, 3, dtype=torch.float64)
    mode = fastsn.ops.MODES["wgan-gp"]
    torch.testing.assert_close(fastsn.ops.gradient_penalty_head(grad, mode, 10.0, 1.0),
                               fastsn.ops.gradient_penalty_head_ref(grad, mode, 10.0, 1.0)[0])
