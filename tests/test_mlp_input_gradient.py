"""mlp_input_gradient on every backend x device x dtype against autograd of the same network in plain PyTorch: the
input gradient, its gradient to the weights (the second order of the network), the third order, gradcheck and
gradgradcheck in float64, the kernels' extra outputs, zero gradients to x and the biases as torch sends them, odd
shapes, non-contiguous input, NaN, an empty batch, registration (opcheck, torch.compile), bad input; and
fastsn.gradient_penalty's fused path for recognized MLP discriminators against the plain PyTorch penalty."""
from __future__ import annotations

import copy
import importlib
import math

import pytest
import torch

import fastsn
from conftest import TOLERANCES, kernel_pairs
from fastsn import _backend

mig = importlib.import_module("fastsn.ops.mlp_input_gradient")  # the module (the package attribute is the op)
gp_module = importlib.import_module("fastsn.nn.gradient_penalty")

OP = "mlp_input_gradient"
KERNEL_PAIRS = kernel_pairs(OP)
# (batch, layer sizes H_0 .. H_L = 1, slopes, gains, biases present): one layer, the toy 2-D MLP's shape (smaller),
# odd sizes, 1-wide layers, a ReLU (slope 0), a slope above 1, StyleGAN2's gain
CASES = [
    (5, (3, 1), (), (), ()),
    (37, (2, 16, 16, 1), (0.2, 0.2), (1.0, 1.0), (True, True)),
    (3, (7, 5, 130, 1), (0.0, 1.5), (math.sqrt(2), 1.0), (False, True)),
    (1, (1, 1, 3, 1, 1), (0.2, 0.1, 0.3), (1.0, 2.0, 0.5), (True, False, True)),
    (17, (4, 33, 1), (0.2,), (math.sqrt(2),), (True,)),
]
CASE_IDS = ["-".join(map(str, c[1])) for c in CASES]


def _network(case, dtype, device, requires_grad=True):
    batch, sizes, slopes, gains, has_bias = case
    x = torch.randn(batch, sizes[0], dtype=torch.float64).to(dtype).to(device)
    weights = [(torch.randn(sizes[k + 1], sizes[k], dtype=torch.float64) / math.sqrt(sizes[k])).to(dtype).to(device)
               .requires_grad_(requires_grad) for k in range(len(sizes) - 1)]
    biases = [(torch.randn(sizes[k + 1], dtype=torch.float64) * 0.5).to(dtype).to(device).requires_grad_(requires_grad)
              if present else None for k, present in enumerate(has_bias)]
    return x, weights, biases, list(slopes), list(gains)


def _close(actual, expected, dtype, scale=1.0):
    rtol, atol = TOLERANCES[dtype]
    # a chain of products rounds once per layer in float16/bfloat16 on GPUs (cuBLAS stores the product in the dtype)
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol * 8, atol=atol * 8 * scale)


def _scale(t: torch.Tensor) -> float:
    return float(t.detach().double().abs().max()) + 1 if t.numel() else 1.0


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_input_gradient_and_its_backward_match_autograd(backend_device, dtype, case):
    backend, device = backend_device
    x, weights, biases, slopes, gains = _network(case, dtype, device)
    ref_weights = [w.detach().clone().requires_grad_() for w in weights]
    g = mig.mlp_input_gradient(x, weights, biases, slopes, gains, backend=backend)
    g_ref = mig.mlp_input_gradient_ref(x, ref_weights, biases, slopes, gains)
    assert g.shape == x.shape and g.dtype == dtype and g.is_contiguous()
    _close(g, g_ref, dtype, _scale(g_ref))
    upstream = torch.randn_like(g)
    dws = torch.autograd.grad(g, weights, upstream)
    dws_ref = torch.autograd.grad(g_ref, ref_weights, upstream)
    for dw, dw_ref in zip(dws, dws_ref):
        assert dw.shape == dw_ref.shape and dw.dtype == dtype
        _close(dw, dw_ref, dtype, _scale(dw_ref))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_kernels_return_the_chain_of_the_docstring(backend_device, case):
    """input_grad, the deltas and the sign masks of the kernels against the chain written in torch ops, and the
    backward op against its reference (float64)."""
    backend, device = backend_device
    if backend == "ref":
        pytest.skip("the reference has no extra outputs")
    suffix = "_triton" if backend == "triton" else ""
    _backend.resolve(OP, device, backend)
    x, weights, biases, slopes, gains = _network(case, torch.float64, device, requires_grad=False)
    g, deltas, positive = getattr(torch.ops.fastsn, OP + suffix)(x, weights, biases, slopes, gains)
    g_ref, deltas_ref, positive_ref = mig.mlp_input_gradient_parts_ref(x, weights, biases, slopes, gains)
    torch.testing.assert_close(g, g_ref)
    assert len(deltas) == len(positive) == len(weights) - 1
    for d, d_ref, p, p_ref in zip(deltas, deltas_ref, positive, positive_ref):
        torch.testing.assert_close(d, d_ref)
        assert p.dtype == torch.bool and torch.equal(p, p_ref)
    grad = torch.randn_like(x)
    dws = getattr(torch.ops.fastsn, OP + "_backward" + suffix)(grad, weights, deltas, positive, slopes, gains)
    for dw, dw_ref in zip(dws, mig.mlp_input_gradient_backward_ref(grad, weights, deltas, positive, slopes, gains)):
        torch.testing.assert_close(dw, dw_ref)


def test_backward_formula_is_the_transposed_chain():
    """dW_l = delta_l^T a_l, a_{l+1} = (a_l W_l^T) * m_l, dW_{L-1} = 1^T a_{L-1}, against autograd of g's chain."""
    x, weights, biases, slopes, gains = _network(CASES[2], torch.float64, "cpu")
    _, deltas, positive = mig.mlp_input_gradient_parts_ref(x, [w.detach() for w in weights],
                                                           [None if b is None else b.detach() for b in biases],
                                                           slopes, gains)
    g, _ = mig._backward_chain(x.shape[0], weights, positive, slopes, gains, torch.float64)
    grad = torch.randn_like(g)
    expected = torch.autograd.grad(g, weights, grad)
    got = mig.mlp_input_gradient_backward_ref(grad, [w.detach() for w in weights], deltas, positive, slopes, gains)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_gradcheck_and_gradgradcheck_float64(backend_device):
    backend, device = backend_device
    x, weights, biases, slopes, gains = _network(CASES[3], torch.float64, device)

    def fn(*tensors):
        return mig.mlp_input_gradient(x, list(tensors[:4]), [tensors[4], None, tensors[5]], slopes, gains,
                                      backend=backend)

    inputs = (*weights, biases[0], biases[2])
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_third_order_matches_reference(backend_device):
    """The backward op's own gradient (in its incoming gradient and the weights), and the order after it, equal
    autograd's through the plain network."""
    backend, device = backend_device
    x, weights, biases, slopes, gains = _network(CASES[2], torch.float64, device, requires_grad=False)
    cotangent = torch.randn_like(x)
    results = []
    for use_backend in (backend, "ref"):
        ws = [w.clone().requires_grad_() for w in weights]
        up = cotangent.clone().requires_grad_()
        g = mig.mlp_input_gradient(x, ws, biases, slopes, gains, backend=use_backend)
        dws = torch.autograd.grad(g, ws, up, create_graph=True)
        second = torch.autograd.grad(sum((dw * dw).sum() for dw in dws), [up, *ws], create_graph=True)
        third = torch.autograd.grad(sum(s.square().sum() for s in second), ws)
        results.append((g, *dws, *second, *third))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


def test_x_and_biases_get_zero_gradients_as_with_torch(backend_device):
    """x and the hidden biases move only the masks: zero tensors, as torch's autograd sends (hooks and optimizers see a
    tensor, not None); the last layer's bias is not an argument (torch's gradient leaves it None)."""
    backend, device = backend_device
    x, weights, biases, slopes, gains = _network(CASES[1], torch.float32, device)
    x.requires_grad_()
    g = mig.mlp_input_gradient(x, weights, biases, slopes, gains, backend=backend)
    dx, db0, db1 = torch.autograd.grad(g.square().sum(), [x, *biases])
    for grad, like in ((dx, x), (db0, biases[0]), (db1, biases[1])):
        assert grad is not None and torch.equal(grad, torch.zeros_like(like))


def test_non_contiguous_input_and_weights(backend_device):
    backend, device = backend_device
    x, weights, biases, slopes, gains = _network(CASES[2], torch.float32, device, requires_grad=False)
    x_t = x.t().contiguous().t()
    weights_t = [w.t().contiguous().t().requires_grad_() for w in weights]
    assert not x_t.is_contiguous() and not weights_t[1].is_contiguous()
    g = mig.mlp_input_gradient(x_t, weights_t, biases, slopes, gains, backend=backend)
    ws = [w.clone().requires_grad_() for w in weights]
    g_ref = mig.mlp_input_gradient_ref(x, ws, biases, slopes, gains)
    torch.testing.assert_close(g, g_ref)
    upstream = torch.randn_like(g).t().contiguous().t()
    for a, b in zip(torch.autograd.grad(g, weights_t, upstream), torch.autograd.grad(g_ref, ws, upstream)):
        torch.testing.assert_close(a, b)


def test_nan_input_takes_the_negative_slope_as_torch(backend_device):
    """A NaN pre-activation is not > 0: torch's leaky_relu gradient takes the slope there, so g stays finite where
    only x is NaN; a NaN weight makes g NaN."""
    backend, device = backend_device
    x, weights, biases, slopes, gains = _network(CASES[1], torch.float32, device, requires_grad=False)
    x[3, 0] = float("nan")
    g = mig.mlp_input_gradient(x, weights, biases, slopes, gains, backend=backend)
    torch.testing.assert_close(g, mig.mlp_input_gradient_ref(x, weights, biases, slopes, gains))
    assert torch.isfinite(g).all()
    weights[1][0, 0] = float("nan")
    g = mig.mlp_input_gradient(x, weights, biases, slopes, gains, backend=backend)
    torch.testing.assert_close(g, mig.mlp_input_gradient_ref(x, weights, biases, slopes, gains), equal_nan=True)
    assert torch.isnan(g).any()


def test_empty_batch(backend_device):
    backend, device = backend_device
    x, weights, biases, slopes, gains = _network((0, *CASES[1][1:]), torch.float32, device)
    g = mig.mlp_input_gradient(x, weights, biases, slopes, gains, backend=backend)
    assert g.shape == (0, 2)
    dws = torch.autograd.grad(g.sum(), weights)
    assert all(torch.equal(dw, torch.zeros_like(w)) for dw, w in zip(dws, weights))


@pytest.mark.parametrize("backend, device", KERNEL_PAIRS, ids=[f"{b}-{d}" for b, d in KERNEL_PAIRS])
def test_opcheck(backend, device):
    """Schemas, fake kernels, autograd registrations and AOT dispatch agree."""
    suffix = "_triton" if backend == "triton" else ""
    _backend.resolve(OP, device, backend)
    x, weights, biases, slopes, gains = _network(CASES[1], torch.float32, device)
    torch.library.opcheck(getattr(torch.ops.fastsn, OP + suffix).default, (x, weights, biases, slopes, gains))
    with torch.no_grad():
        _, deltas, positive = getattr(torch.ops.fastsn, OP + suffix)(x, weights, biases, slopes, gains)
    grad = torch.randn_like(x).requires_grad_()
    torch.library.opcheck(getattr(torch.ops.fastsn, OP + "_backward" + suffix).default,
                          (grad, weights, deltas, positive, slopes, gains))


@pytest.mark.parametrize("backend, device", KERNEL_PAIRS, ids=[f"{b}-{d}" for b, d in KERNEL_PAIRS])
def test_registered_autograd_matches_eager(backend, device):
    """The registered op's autograd (what torch.compile records) gives the eager path's gradients, to second order."""
    suffix = "_triton" if backend == "triton" else ""
    _backend.resolve(OP, device, backend)
    x, weights, biases, slopes, gains = _network(CASES[2], torch.float64, device)
    g_eager = mig.mlp_input_gradient(x, weights, biases, slopes, gains, backend=backend)
    g_op = getattr(torch.ops.fastsn, OP + suffix)(x, weights, biases, slopes, gains)[0]
    torch.testing.assert_close(g_op, g_eager)
    results = []
    for g in (g_eager, g_op):
        dws = torch.autograd.grad(g.square().sum(), weights, create_graph=True)
        results.append((*dws, *torch.autograd.grad(sum(dw.sum() for dw in dws), weights)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_torch_compile_matches_eager():
    x, weights, biases, slopes, gains = _network(CASES[1], torch.float32, "cpu")

    def loss(x, w0, w1, w2, b0, b1):
        g = mig.mlp_input_gradient(x, [w0, w1, w2], [b0, b1], slopes, gains)
        return (g.norm(dim=1) - 1).square().mean()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    eager_value = loss(x, *weights, *biases)
    eager_grads = torch.autograd.grad(eager_value, weights)
    value = compiled(x, *weights, *biases)
    torch.testing.assert_close(value, eager_value)
    for a, b in zip(torch.autograd.grad(value, weights), eager_grads):
        torch.testing.assert_close(a, b)


BAD_ARGS = [
    (lambda x, ws, bs: (x.long(), ws, bs), "argument 'x' must be float16"),
    (lambda x, ws, bs: (x[None], ws, bs), r"argument 'x' must be 2-D"),
    (lambda x, ws, bs: (x, [], []), "argument 'weights' must hold at least one layer"),
    (lambda x, ws, bs: (x, [ws[0][:, :1], *ws[1:]], bs), r"argument 'weights\[0\]' must have 2 input features"),
    (lambda x, ws, bs: (x, [ws[0], ws[1][:, :3], ws[2]], bs), r"argument 'weights\[1\]' must have 16 input features"),
    (lambda x, ws, bs: (x, [ws[0], ws[1], ws[1]], bs), r"argument 'weights\[2\]' must have 1 output feature"),
    (lambda x, ws, bs: (x, [ws[0], ws[1].double(), ws[2]], bs), r"argument 'weights\[1\]' must have the dtype of 'x'"),
    (lambda x, ws, bs: (x, [ws[0], ws[1][0], ws[2]], bs), r"argument 'weights\[1\]' must be 2-D"),
    (lambda x, ws, bs: (x, ws, bs[:1]), "argument 'biases' must hold one entry"),
    (lambda x, ws, bs: (x, ws, [bs[0][:3], bs[1]]), r"argument 'biases\[0\]' must have shape \(16,\)"),
    (lambda x, ws, bs: (x, ws, [bs[0], bs[1].double()]), r"argument 'biases\[1\]' must have the dtype of 'x'"),
]
BAD_IDS = ["x-dtype", "x-3d", "no-layers", "w0-in", "w1-in", "last-out", "w-dtype", "w-1d", "biases-len", "bias-shape",
           "bias-dtype"]


@pytest.mark.parametrize("bad, message", BAD_ARGS, ids=BAD_IDS)
def test_bad_input_names_the_argument(backend_device, bad, message):
    backend, device = backend_device
    x, weights, biases, slopes, gains = _network(CASES[1], torch.float32, device, requires_grad=False)
    x, weights, biases = bad(x, weights, biases)
    with pytest.raises(RuntimeError, match=message):
        mig.mlp_input_gradient(x, weights, biases, slopes, gains, backend=backend)


@pytest.mark.parametrize("backend, device", KERNEL_PAIRS, ids=[f"{b}-{d}" for b, d in KERNEL_PAIRS])
@pytest.mark.parametrize("bad, message", BAD_ARGS, ids=BAD_IDS)
def test_kernels_check_their_own_arguments(backend, device, bad, message):
    """Called directly (no Python checks in front), the kernels refuse bad input with the argument's name."""
    suffix = "_triton" if backend == "triton" else ""
    _backend.resolve(OP, device, backend)
    x, weights, biases, slopes, gains = _network(CASES[1], torch.float32, device, requires_grad=False)
    x, weights, biases = bad(x, weights, biases)
    with pytest.raises(RuntimeError, match=message):
        getattr(torch.ops.fastsn, OP + suffix)(x, weights, biases, slopes, gains)


@pytest.mark.parametrize("backend, device", KERNEL_PAIRS, ids=[f"{b}-{d}" for b, d in KERNEL_PAIRS])
def test_kernels_check_slopes_gains_and_backward_arguments(backend, device):
    suffix = "_triton" if backend == "triton" else ""
    _backend.resolve(OP, device, backend)
    forward = getattr(torch.ops.fastsn, OP + suffix)
    backward = getattr(torch.ops.fastsn, OP + "_backward" + suffix)
    x, weights, biases, slopes, gains = _network(CASES[1], torch.float32, device, requires_grad=False)
    with pytest.raises(RuntimeError, match="argument 'negative_slopes' must hold one slope per hidden layer"):
        forward(x, weights, biases, slopes[:1], gains)
    with pytest.raises(RuntimeError, match="argument 'gains' must hold one gain per hidden layer"):
        forward(x, weights, biases, slopes, gains + [1.0])
    _, deltas, positive = forward(x, weights, biases, slopes, gains)
    with pytest.raises(RuntimeError, match="arguments 'deltas' and 'positive' must hold one tensor per hidden layer"):
        backward(x, weights, deltas[:1], positive, slopes, gains)
    with pytest.raises(RuntimeError, match=r"argument 'deltas\[1\]' must have shape"):
        backward(x, weights, [deltas[0], deltas[1][:3]], positive, slopes, gains)
    with pytest.raises(RuntimeError, match=r"argument 'positive\[0\]' must be bool"):
        backward(x, weights, deltas, [positive[0].float(), positive[1]], slopes, gains)
    with pytest.raises(RuntimeError, match=r"argument 'grad' must be 2-D"):
        backward(x[0], weights, deltas, positive, slopes, gains)


# ---------------------------------------------------------------------------------------------------------------
# fastsn.gradient_penalty's fused path
# ---------------------------------------------------------------------------------------------------------------

def _plain_penalty(discriminator, x, kind):
    """The plain PyTorch penalty at given points x (per-sample norms), StyleGAN2's r1 convention."""
    x = x.detach().requires_grad_()
    (grad,) = torch.autograd.grad(discriminator(x).sum(), x, create_graph=True)
    norm = grad.flatten(1).norm(dim=1)
    if kind in ("r1", "r2"):
        return 10.0 / 2 * norm.square().mean()
    gap = (norm - 1).clamp(min=0) if kind == "wgan-lp" else norm - 1
    return 10.0 * gap.square().mean()


def _mlp(activation, sizes=(2, 16, 16, 1), bias=True, flatten=False):
    layers = []
    for k in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[k], sizes[k + 1], bias=bias))
        if k < len(sizes) - 2:
            layers.append(activation(sizes[k + 1]))
    return torch.nn.Sequential(*layers, *([torch.nn.Flatten(0)] if flatten else []))


ACTIVATIONS = {
    "leaky_relu": lambda c: torch.nn.LeakyReLU(0.2),
    "relu": lambda c: torch.nn.ReLU(),
    "fastsn_leaky_relu": lambda c: fastsn.nn.LeakyReLU(0.1),
    "fused_leaky_relu": lambda c: fastsn.nn.FusedLeakyReLU(c),
}


@pytest.fixture
def fused_calls(monkeypatch):
    """How many times gradient_penalty took the fused op."""
    calls = []
    original = gp_module.mlp_input_gradient

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(gp_module, "mlp_input_gradient", counting)
    return calls


def _penalty_parity(discriminator, kind, calls, fused_expected, dtype=torch.float32):
    torch.manual_seed(1)
    real, fake = torch.randn(24, 2, dtype=dtype), torch.randn(24, 2, dtype=dtype)
    plain = [p for p in discriminator.parameters()]
    torch.manual_seed(2)
    penalty = fastsn.gradient_penalty(discriminator, real, fake, kind=kind)
    assert len(calls) == (1 if fused_expected else 0)
    fastsn_grads = torch.autograd.grad(penalty, plain, allow_unused=True)
    # the same points: interpolates drawn from the same seed
    torch.manual_seed(2)
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    x = gp_module.penalty_inputs(kinds, real, fake)
    if len(kinds) > 1:
        expected = _plain_penalty(discriminator, x[:24], "r1") + _plain_penalty(discriminator, x[24:], "r2")
    else:
        expected = _plain_penalty(discriminator, x, kind)
    expected_grads = torch.autograd.grad(expected, plain, allow_unused=True)
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(penalty, expected, rtol=rtol * 10, atol=atol * 10)
    for got, want in zip(fastsn_grads, expected_grads):
        assert (got is None) == (want is None)
        if want is not None:
            torch.testing.assert_close(got, want, rtol=rtol * 10, atol=atol * 10)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("kind", ["wgan-gp", "wgan-lp", "r1", "r2", "dragan", ("r1", "r2")],
                         ids=["wgan-gp", "wgan-lp", "r1", "r2", "dragan", "r1+r2"])
def test_penalty_takes_the_fused_op_for_an_mlp(activation, kind, fused_calls):
    torch.manual_seed(0)
    _penalty_parity(_mlp(ACTIVATIONS[activation]), kind, fused_calls, fused_expected=True)


@pytest.mark.parametrize("variant", ["no-bias", "flatten", "one-layer", "float64", "torch-sn", "fastsn-sn",
                                     "torch-legacy-sn", "fastsn-legacy-sn"])
def test_penalty_fused_variants(variant, fused_calls):
    torch.manual_seed(0)
    dtype = torch.float64 if variant == "float64" else torch.float32
    d = _mlp(ACTIVATIONS["fused_leaky_relu"], bias=variant != "no-bias", flatten=variant == "flatten")
    if variant == "one-layer":
        d = torch.nn.Sequential(torch.nn.Linear(2, 1))
    if variant.endswith("-sn"):
        sn = {"torch-sn": torch.nn.utils.parametrizations.spectral_norm, "fastsn-sn": fastsn.spectral_norm,
              "torch-legacy-sn": torch.nn.utils.spectral_norm,
              "fastsn-legacy-sn": fastsn.nn.utils.spectral_norm}[variant]
        d = _mlp(ACTIVATIONS["leaky_relu"])
        for k in (0, 2, 4):
            sn(d[k])
        d.eval()  # (no power iteration: both penalties below see the same weights)
    _penalty_parity(d.to(dtype), "wgan-gp", fused_calls, fused_expected=True, dtype=dtype)


@pytest.mark.parametrize("api", ["parametrization", "legacy-hook"])
def test_penalty_reads_a_spectral_norm_weight_once_as_a_forward(api, fused_calls):
    """A spectral-norm Linear in training mode: one power iteration per penalty, as D's forward makes."""
    torch.manual_seed(0)
    d = _mlp(ACTIVATIONS["leaky_relu"])
    (fastsn.spectral_norm if api == "parametrization" else fastsn.nn.utils.spectral_norm)(d[2])
    twin = copy.deepcopy(d)
    u = (lambda m: m.parametrizations.weight[0]._u) if api == "parametrization" else (lambda m: m.weight_u)
    before = u(d[2]).clone()
    real, fake = torch.randn(8, 2), torch.randn(8, 2)
    fastsn.gradient_penalty(d, real, fake)
    twin(real)
    assert len(fused_calls) == 1
    assert not torch.equal(u(d[2]), before)
    torch.testing.assert_close(u(d[2]), u(twin[2]))


def _with_hook(d):
    d[2].register_forward_hook(lambda module, args, out: None)
    return d


def _with_pre_hook(layer):
    layer.register_forward_pre_hook(lambda module, args: None)
    return layer


class _SequentialSubclass(torch.nn.Sequential):
    pass


GENERIC = {  # discriminators (and inputs) that must take the generic path
    "forward-hook": lambda: (_with_hook(_mlp(ACTIVATIONS["leaky_relu"])), torch.float32),
    "subclass": lambda: (_SequentialSubclass(*_mlp(ACTIVATIONS["leaky_relu"])), torch.float32),
    "dropout": lambda: (torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Dropout(0.0), torch.nn.LeakyReLU(),
                                            torch.nn.Linear(8, 1)), torch.float32),
    "tanh": lambda: (torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)),
                     torch.float32),
    "legacy-sn-and-a-hook": lambda: (torch.nn.Sequential(_with_pre_hook(torch.nn.utils.spectral_norm(
        torch.nn.Linear(2, 8))), torch.nn.LeakyReLU(0.2), torch.nn.Linear(8, 1)).eval(), torch.float32),
    "float16": lambda: (_mlp(ACTIVATIONS["leaky_relu"]).half(), torch.float16),
}


@pytest.mark.parametrize("case", list(GENERIC))
def test_penalty_generic_path_for_anything_else(case, fused_calls):
    torch.manual_seed(0)
    d, dtype = GENERIC[case]()
    if dtype == torch.float16:  # the plain penalty in float16 on the CPU: compare the function, not the path
        fastsn.gradient_penalty(d, torch.randn(8, 2, dtype=dtype), torch.randn(8, 2, dtype=dtype))
        assert not fused_calls
        return
    _penalty_parity(d, "wgan-gp", fused_calls, fused_expected=False)


def test_penalty_generic_path_under_autocast_and_global_hooks(fused_calls):
    d = _mlp(ACTIVATIONS["leaky_relu"])
    real, fake = torch.randn(8, 2), torch.randn(8, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fastsn.gradient_penalty(d, real, fake)
    handle = torch.nn.modules.module.register_module_forward_hook(lambda module, args, out: None)
    try:
        fastsn.gradient_penalty(d, real, fake)
    finally:
        handle.remove()
    assert not fused_calls
    fastsn.gradient_penalty(d, real, fake)
    assert len(fused_calls) == 1


def test_penalty_errors_unchanged_for_mlps():
    """What the generic path refuses, the recognizer leaves to it: a D with two outputs, an input of the wrong width."""
    d = _mlp(ACTIVATIONS["leaky_relu"], sizes=(2, 8, 2))
    with pytest.raises(ValueError, match="one score per sample"):
        fastsn.gradient_penalty(d, torch.randn(4, 2), torch.randn(4, 2))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        fastsn.gradient_penalty(_mlp(ACTIVATIONS["leaky_relu"]), torch.randn(4, 3), torch.randn(4, 3))
