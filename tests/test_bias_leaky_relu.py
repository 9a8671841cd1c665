"""bias_leaky_relu on every backend x device against its pure-PyTorch reference and torch's own formula: values,
gradients of x and bias, second-order gradients (gradcheck, gradgradcheck in float64), registration (opcheck),
odd shapes, bad input, the FusedLeakyReLU module, and a gradient penalty through a discriminator built with it."""
from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

import fastsn
from conftest import TOLERANCES, kernel_pairs
from fastsn import _backend

blr = importlib.import_module("fastsn.ops.bias_leaky_relu")  # the module (fastsn.ops.bias_leaky_relu is the function)

OP = "bias_leaky_relu"
# (x shape, dim, with bias): (N, C), conv (N, C, H, W), the last dim, a middle dim, no bias, 1-wide, empty
CASES = [((7, 5), 1, True), ((3, 4, 5, 6), 1, True), ((2, 3, 9), -1, True), ((2, 3, 4, 5), 2, True),
         ((4, 9), 1, False), ((1, 1, 1, 1), 1, True), ((0, 3, 2), 1, True)]
CASE_IDS = [f"{'x'.join(map(str, s))}-dim{d}{'' if b else '-nobias'}" for s, d, b in CASES]


def _close(actual, expected, dtype, scale=1.0):
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.to(torch.float64), expected.to(torch.float64), rtol=rtol * 4,
                               atol=atol * 4 * scale)


def _inputs(shape, dim, with_bias, dtype, device):
    x = torch.randn(shape, dtype=dtype, device=device)
    bias = torch.randn(shape[dim], dtype=dtype, device=device) if with_bias else None
    return x, bias


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forward_and_backward_match_reference(backend_device, dtype, case):
    backend, device = backend_device
    shape, dim, with_bias = case
    x, bias = _inputs(shape, dim, with_bias, dtype, device)
    leaves = [x.clone().requires_grad_()] + ([bias.clone().requires_grad_()] if with_bias else [])
    refs = [t.detach().clone().requires_grad_() for t in leaves]
    y = blr.bias_leaky_relu(leaves[0], leaves[1] if with_bias else None, 0.2, math.sqrt(2), dim, backend=backend)
    y_ref = blr.bias_leaky_relu_ref(refs[0], refs[1] if with_bias else None, 0.2, math.sqrt(2), dim)
    assert y.shape == x.shape and y.dtype == dtype and y.is_contiguous()
    _close(y, y_ref, dtype)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad)
    for got, want in zip(leaves, refs):
        _close(got.grad, want.grad, dtype, scale=float(want.grad.abs().max()) + 1 if want.grad.numel() else 1)


def test_reference_is_torch_formula():
    x, bias = torch.randn(4, 3, 5, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    expected = F.leaky_relu(x + bias.view(1, 3, 1), 0.1) * 1.7
    torch.testing.assert_close(blr.bias_leaky_relu_ref(x, bias, 0.1, 1.7, 1), expected)


def test_non_contiguous_input(backend_device):
    backend, device = backend_device
    x = torch.randn(6, 5, 4, device=device).transpose(0, 2)  # (4, 5, 6), not contiguous
    bias = torch.randn(10, device=device)[::2]
    torch.testing.assert_close(blr.bias_leaky_relu(x, bias, 0.2, 1.0, 1, backend=backend),
                               blr.bias_leaky_relu_ref(x, bias, 0.2, 1.0, 1))


def test_slope_applies_at_zero_as_torch(backend_device):
    backend, device = backend_device
    x = torch.zeros(2, 3, device=device, requires_grad=True)
    blr.bias_leaky_relu(x, None, 0.25, 2.0, backend=backend).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 0.5))  # gain * slope, as leaky_relu's gradient at 0



@pytest.mark.parametrize("slope", [0.2, 0.0])
def test_signed_zeros_and_specials_as_torch(backend_device, dtype, slope):
    """-0 stays -0, and a zero slope gives -0 for negative inputs, as torch's leaky_relu (the CPU kernel's vector
    max/min gave +0 for both); +-inf and subnormals alike (the sign of a NaN is not compared)."""
    backend, device = backend_device
    specials = [-0.0, 0.0, -1.0, 1.0, float("nan"), -float("inf"), float("inf"), 1e-40, -1e-40]
    x = torch.tensor(specials * 5, device=device).to(dtype)  # 45 elements: vector lanes and a scalar tail
    y = blr.bias_leaky_relu(x, None, slope, 1.0, backend=backend)
    expected = F.leaky_relu(x, slope)
    rtol, atol = TOLERANCES[dtype]  # (Triton's interpreter rounds bfloat16 toward zero and flushes subnormals)
    torch.testing.assert_close(y, expected, rtol=rtol, atol=atol, equal_nan=True)
    assert torch.equal(torch.signbit(y)[~expected.isnan()], torch.signbit(expected)[~expected.isnan()])

@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("shape, dim", [((3, 4, 5), 1), ((4,), 0), ((4,), -1)], ids=["3d", "1d", "1d-negdim"])
def test_gradcheck_and_gradgradcheck_float64(backend_device, with_bias, shape, dim):
    backend, device = backend_device
    x = torch.randn(*shape, dtype=torch.float64, device=device)
    x = torch.where(x.abs() < 0.05, x + 0.1, x).requires_grad_()  # away from the kink: finite differences
    bias = torch.zeros(4, dtype=torch.float64, device=device, requires_grad=True) if with_bias else None
    inputs = (x, bias) if with_bias else (x,)

    def fn(*args):
        return blr.bias_leaky_relu(args[0], args[1] if with_bias else None, 0.2, 1.3, dim, backend=backend)

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_third_order_runs_the_backward_op(backend_device):
    """The backward's backward is the backward op itself: grads of grads of grads stay the mask times the input."""
    backend, device = backend_device
    x = torch.randn(5, 3, device=device, requires_grad=True)
    y = blr.bias_leaky_relu(x, None, 0.2, 2.0, backend=backend)
    (g1,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    v = torch.randn_like(g1, requires_grad=True)
    (g2,) = torch.autograd.grad((g1 * v).sum(), v, create_graph=True)
    torch.testing.assert_close(g2, torch.where(x > 0, 2.0, 0.4).detach())


KERNEL_PAIRS = kernel_pairs(OP)


@pytest.mark.parametrize("backend, device", KERNEL_PAIRS, ids=[f"{b}-{d}" for b, d in KERNEL_PAIRS])
def test_registered_autograd_matches_eager_function(backend, device):
    """Eager calls of bias_leaky_relu take fastsn's autograd.Functions; torch.compile, opcheck and direct torch.ops
    calls the registered autograd. Both give the same gradients of x and bias, to third order."""
    op = getattr(torch.ops.fastsn, "bias_leaky_relu" + ("_triton" if backend == "triton" else ""))
    x = torch.randn(4, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)
    weights = torch.randn(4, 3, 2, dtype=torch.float64, device=device)
    results = []
    for registered in (True, False):
        y = op(x, bias, 1, 0.2, 1.5) if registered else blr.bias_leaky_relu(x, bias, 0.2, 1.5, backend=backend)
        gx, gb = torch.autograd.grad((y * y * weights).sum(), (x, bias), create_graph=True)
        (gx2,) = torch.autograd.grad((gx * gx).sum() + gb.sum(), x, create_graph=True)
        (gx3,) = torch.autograd.grad(gx2.sum(), x)
        results.append([t.detach() for t in (y, gx, gb, gx2, gx3)])
    for registered, eager in zip(*results):
        torch.testing.assert_close(registered, eager)


class _Probe(torch.autograd.Function):
    """Identity that records the gradient it receives (None when absent: grads are not materialized)."""
    seen: list = []

    @staticmethod
    def forward(ctx, x):
        ctx.set_materialize_grads(False)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        _Probe.seen.append(grad)
        return grad


@pytest.mark.parametrize("registered", [False, True], ids=["eager", "registered"])
@pytest.mark.parametrize("backend, device", KERNEL_PAIRS, ids=[f"{b}-{d}" for b, d in KERNEL_PAIRS])
def test_penalty_second_backward_sends_nothing_below_the_activation(backend, device, registered):
    """The second backward of a gradient penalty reaches the activation's forward node only through its saved
    output, which gets no gradient: nothing (not zeros, which would run every layer below) flows to its input."""
    op = getattr(torch.ops.fastsn, "bias_leaky_relu" + ("_triton" if backend == "triton" else ""))

    def activation(pre, bias):
        return op(pre, bias, 1, 0.2, 1.0) if registered else blr.bias_leaky_relu(pre, bias, 0.2, 1.0, backend=backend)

    weight = torch.randn(3, 4, dtype=torch.float64, device=device, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)
    x = torch.randn(5, 4, dtype=torch.float64, device=device, requires_grad=True)
    pre = _Probe.apply(x @ weight.t())
    y = activation(pre, bias)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    _Probe.seen.clear()
    g.square().sum().backward()
    assert _Probe.seen in ([], [None])
    mask = torch.where(x.detach() @ weight.detach().t() + bias.detach() > 0, 1.0, 0.2).double()
    torch.testing.assert_close(weight.grad, 2 * mask.t() @ (mask @ weight.detach()))  # d/dW sum((mask W)^2)
    torch.testing.assert_close(bias.grad, torch.zeros_like(bias))  # defined, as torch leaves it
    torch.testing.assert_close(x.grad, torch.zeros_like(x))  # a leaf below: zeros, as torch leaves it
    # backward(inputs=...) accumulates into those leaves only
    for leaf in (weight, bias, x):
        leaf.grad = None
    pre = x @ weight.t()
    y = activation(pre, bias)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    g.square().sum().backward(inputs=[weight])
    torch.testing.assert_close(weight.grad, 2 * mask.t() @ (mask @ weight.detach()))
    assert bias.grad is None and x.grad is None
    weight.grad = None
    (g,) = torch.autograd.grad(activation(x @ weight.t(), bias).sum(), x, create_graph=True)
    g.square().sum().backward(inputs=[weight, bias, x])  # all three, as torch: bias and x get zeros
    torch.testing.assert_close(weight.grad, 2 * mask.t() @ (mask @ weight.detach()))
    torch.testing.assert_close(bias.grad, torch.zeros_like(bias))
    torch.testing.assert_close(x.grad, torch.zeros_like(x))
    # autograd.grad accumulates into no leaf: nothing is filled in
    for leaf in (weight, bias, x):
        leaf.grad = None
    pre = x @ weight.t()
    y = activation(pre, bias)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (weight_grad,) = torch.autograd.grad(g.square().sum(), weight)
    torch.testing.assert_close(weight_grad, 2 * mask.t() @ (mask @ weight.detach()))
    assert weight.grad is None and bias.grad is None and x.grad is None


class _NoGradient(torch.autograd.Function):
    """Sums its input, and sends it no gradient (None)."""

    @staticmethod
    def forward(ctx, x):
        return x.sum()

    @staticmethod
    def backward(ctx, grad):
        return None


@pytest.mark.parametrize("backend, device", KERNEL_PAIRS, ids=[f"{b}-{d}" for b, d in KERNEL_PAIRS])
def test_no_gradient_fills_nothing_below(backend, device):
    """Only a penalty's pruned zero is filled in below: when y simply gets no gradient, the leaves below stay
    without one, as with torch's leaky_relu. A y made elsewhere may reach the backward op too."""
    weight = torch.randn(3, 4, device=device, requires_grad=True)
    other = torch.randn(2, device=device, requires_grad=True)
    for activation in (lambda t: blr.bias_leaky_relu(t, None, 0.2, backend=backend), lambda t: F.leaky_relu(t, 0.2)):
        weight.grad = None
        y = activation(torch.randn(5, 4, device=device) @ weight.t())
        (_NoGradient.apply(y) + other.sum()).backward()
        assert weight.grad is None
    op = getattr(torch.ops.fastsn, "bias_leaky_relu_backward" + ("_triton" if backend == "triton" else ""))
    y = torch.randn(5, device=device, requires_grad=True) * 2  # y's node is torch's MulBackward0
    grad = torch.randn(5, device=device, requires_grad=True)
    (second,) = torch.autograd.grad(blr._backward_call(grad, y, 0.2, 1.0, "_triton" if backend == "triton" else "")
                                    .sum(), grad)
    torch.testing.assert_close(second, op(torch.ones_like(grad), y.detach(), 0.2, 1.0))


@pytest.mark.parametrize("backend, device", KERNEL_PAIRS, ids=[f"{b}-{d}" for b, d in KERNEL_PAIRS])
def test_opcheck(backend, device):
    """Schemas, fake kernels, autograd registrations and AOT dispatch agree."""
    suffix = "_triton" if backend == "triton" else ""
    _backend.resolve(OP, device, backend)  # imports the Triton kernels when needed
    x = torch.randn(3, 4, 5, device=device, requires_grad=True)
    bias = torch.randn(4, device=device, requires_grad=True)
    ops = torch.ops.fastsn
    torch.library.opcheck(getattr(ops, "bias_leaky_relu" + suffix).default, (x, bias, 1, 0.2, 1.4))
    torch.library.opcheck(getattr(ops, "bias_leaky_relu" + suffix).default, (x, None, 1, 0.2, 1.4))
    y = getattr(ops, "bias_leaky_relu" + suffix)(x.detach(), bias.detach(), 1, 0.2, 1.4)
    torch.library.opcheck(getattr(ops, "bias_leaky_relu_backward" + suffix).default,
                          (torch.randn(3, 4, 5, device=device, requires_grad=True), y, 0.2, 1.4))


@pytest.mark.parametrize("backend, device", KERNEL_PAIRS, ids=[f"{b}-{d}" for b, d in KERNEL_PAIRS])
def test_opcheck_channels_last(backend, device):
    """The fake kernels give the layouts the kernels give (channels-last kept, or contiguous)."""
    suffix = "_triton" if backend == "triton" else ""
    _backend.resolve(OP, device, backend)
    ops = torch.ops.fastsn
    for shape, layout in (((2, 3, 4, 5), torch.channels_last), ((2, 3, 2, 2, 3), torch.channels_last_3d)):
        x = torch.randn(shape, device=device).to(memory_format=layout).requires_grad_()
        bias = torch.randn(3, device=device, requires_grad=True)
        other_dim = torch.randn(shape[2], device=device)
        for args in ((x, bias, 1, 0.2, 1.4), (x, None, 1, 0.2, 1.4), (x, other_dim, 2, 0.2, 1.0)):
            torch.library.opcheck(getattr(ops, "bias_leaky_relu" + suffix).default, args)
        y = getattr(ops, "bias_leaky_relu" + suffix)(x.detach(), None, 1, 0.2, 1.4)
        for grad in (torch.randn_like(y).requires_grad_(), torch.randn(shape, device=device, requires_grad=True)):
            torch.library.opcheck(getattr(ops, "bias_leaky_relu_backward" + suffix).default, (grad, y, 0.2, 1.4))


@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("layout", ["channels_last", "channels_last_3d"])
def test_channels_last_stays_channels_last(backend_device, with_bias, layout):
    """As torch's elementwise ops: a channels-last x gives a channels-last y (without a bias, or with one along
    dim 1) and gradients of every order equal torch's formula (the kernels used to return contiguous tensors)."""
    backend, device = backend_device
    shape, memory_format = ((2, 3, 4, 5), torch.channels_last) if layout == "channels_last" else \
        ((2, 3, 2, 3, 4), torch.channels_last_3d)
    x = torch.randn(shape, dtype=torch.float64, device=device).to(memory_format=memory_format).requires_grad_()
    bias = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True) if with_bias else None
    ours = blr.bias_leaky_relu(x, bias, 0.2, 1.4, backend=backend)
    theirs = F.leaky_relu(x if bias is None else x + bias.view(1, 3, *([1] * (x.dim() - 2))), 0.2) * 1.4
    assert ours.is_contiguous(memory_format=memory_format) and theirs.is_contiguous(memory_format=memory_format)
    weights = torch.randn_like(theirs)
    grads = []
    for y in (ours, theirs):
        (gx,) = torch.autograd.grad((y * y * weights).sum(), x, create_graph=True)
        (gx2,) = torch.autograd.grad((gx * gx).sum(), x)
        grads.append((y, gx, gx2))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want)


BAD_ARGS = [
    (lambda d: dict(x=torch.ones(3, 4, dtype=torch.int64, device=d)), "argument 'x' must be float16"),
    (lambda d: dict(bias=torch.ones(5, device=d)), r"argument 'bias' must have shape \(4,\)"),
    (lambda d: dict(bias=torch.ones(4, dtype=torch.float64, device=d)), "must have the dtype of 'x'"),
    (lambda d: dict(dim=2), "argument 'dim' must be in"),
    (lambda d: dict(gain=0.0), "argument 'gain' must be positive"),
    # a negative slope makes y > 0 where x + bias < 0: the mask read from y would give wrong gradients
    (lambda d: dict(negative_slope=-0.1), "argument 'negative_slope' must be non-negative"),
]


@pytest.mark.parametrize("bad, message", BAD_ARGS, ids=[m.split("'")[1] + str(i) for i, (_, m) in enumerate(BAD_ARGS)])
def test_bad_input_names_the_argument(backend_device, bad, message):
    backend, device = backend_device
    args = dict(x=torch.randn(3, 4, device=device), bias=torch.zeros(4, device=device), dim=1, gain=1.0,
                negative_slope=0.2)
    args.update(bad(device))
    with pytest.raises(RuntimeError, match=message):
        blr.bias_leaky_relu(args["x"], args["bias"], args["negative_slope"], args["gain"], args["dim"], backend=backend)


@pytest.mark.parametrize("backend, device", KERNEL_PAIRS, ids=[f"{b}-{d}" for b, d in KERNEL_PAIRS])
def test_kernels_check_their_own_arguments(backend, device):
    """Called directly (no Python checks in front), the kernels refuse bad input with the argument's name."""
    suffix = "_triton" if backend == "triton" else ""
    _backend.resolve(OP, device, backend)
    op = getattr(torch.ops.fastsn, "bias_leaky_relu" + suffix)
    with pytest.raises(RuntimeError, match="argument 'bias' must have shape"):
        op(torch.randn(3, 4, device=device), torch.zeros(5, device=device), 1, 0.2, 1.0)
    with pytest.raises(RuntimeError, match="argument 'gain' must be positive"):
        getattr(torch.ops.fastsn, "bias_leaky_relu_backward" + suffix)(
            torch.randn(3, device=device), torch.randn(3, device=device), 0.2, -1.0)
    with pytest.raises(RuntimeError, match="argument 'negative_slope' must be non-negative"):
        op(torch.randn(3, 4, device=device), None, 1, -0.2, 1.0)
    with pytest.raises(RuntimeError, match="argument 'negative_slope' must be non-negative"):
        getattr(torch.ops.fastsn, "bias_leaky_relu_backward" + suffix)(
            torch.randn(3, device=device), torch.randn(3, device=device), -0.2, 1.0)


def test_module_matches_stylegan2_formula_and_state_dict(backend_device):
    backend, device = backend_device
    module = fastsn.nn.FusedLeakyReLU(4).to(device)
    assert list(module.state_dict()) == ["bias"] and module.scale == math.sqrt(2)
    with torch.no_grad():
        module.bias.copy_(torch.randn(4))
    x = torch.randn(2, 4, 3, 3, device=device)
    expected = F.leaky_relu(x + module.bias.view(1, 4, 1, 1), 0.2) * math.sqrt(2)
    with fastsn.use_backend(backend):
        torch.testing.assert_close(module(x), expected)
        no_bias = fastsn.nn.FusedLeakyReLU(4, bias=False).to(device)
        torch.testing.assert_close(no_bias(x), F.leaky_relu(x, 0.2) * math.sqrt(2))
    with pytest.raises(ValueError, match="argument 'channels'"):
        fastsn.nn.FusedLeakyReLU(0)


def test_gradient_penalty_through_fused_leaky_relu_matches_plain_ops(backend_device):
    """The double backward of a gradient penalty through FusedLeakyReLU equals the one through F.leaky_relu."""
    backend, device = backend_device

    def discriminator(act):
        torch.manual_seed(0)
        # the conv's bias under the activation gets zeros from the penalty, as with torch (None would differ)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, 1, 1), act(), torch.nn.Flatten(),
                                   torch.nn.Linear(4 * 6 * 6, 1)).to(device)

    class PlainLeakyReLU(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = torch.nn.Parameter(torch.zeros(4))

        def forward(self, x):
            return F.leaky_relu(x + self.bias.view(1, -1, 1, 1), 0.2) * math.sqrt(2)

    ours, reference = discriminator(lambda: fastsn.nn.FusedLeakyReLU(4)), discriminator(PlainLeakyReLU)
    with torch.no_grad():
        ours[1].bias.uniform_(-0.5, 0.5)
        reference[1].bias.copy_(ours[1].bias)
    real, fake = torch.randn(5, 3, 6, 6, device=device), torch.randn(5, 3, 6, 6, device=device)
    with fastsn.use_backend(backend):
        penalty = fastsn.gradient_penalty(ours, real, fake, generator=torch.Generator(device).manual_seed(0))
        penalty.backward()
    expected = fastsn.gradient_penalty(reference, real, fake, generator=torch.Generator(device).manual_seed(0))
    expected.backward()
    torch.testing.assert_close(penalty, expected, rtol=1e-4, atol=1e-5)
    for got, want in zip(ours.parameters(), reference.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-5)


def test_torch_func_transforms_take_the_reference():
    """jacrev, vmap and hessian-vector products of torch.func run through the op (auto takes the reference there:
    the transforms cannot run the autograd of ops defined in C++)."""
    x = torch.randn(3, 4, dtype=torch.float64)
    bias = torch.randn(4, dtype=torch.float64)

    def ours(t):
        return blr.bias_leaky_relu(t, bias, 0.2, 1.5).square().sum()

    def reference(t):
        return blr.bias_leaky_relu_ref(t, bias, 0.2, 1.5).square().sum()

    torch.testing.assert_close(torch.func.jacrev(ours)(x), torch.func.jacrev(reference)(x))
    rows = x[:, None]
    torch.testing.assert_close(torch.vmap(torch.func.grad(ours))(rows), torch.vmap(torch.func.grad(reference))(rows))
    torch.testing.assert_close(torch.func.hessian(ours)(x), torch.func.hessian(reference)(x))
