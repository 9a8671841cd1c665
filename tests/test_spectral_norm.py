"""Spectral-norm ops on every backend x device against the pure-PyTorch references: values, in-place updates,
gradients (gradcheck, gradgradcheck in float64), registration (opcheck), odd shapes and bad input."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import TOLERANCES, kernel_pairs
from fastsn import _backend
from fastsn.ops import spectral_norm as sn

OP = "spectral_norm"
# (shape, dim): Linear, 1-wide dims, conv, ConvTranspose (dim 1), a middle dim, a transposed matrix
CASES = [((5, 3), 0), ((1, 7), 0), ((7, 1), 0), ((16, 3, 4, 4), 0), ((3, 16, 4, 4), 1), ((4, 3, 5, 6), 2),
         ((33, 65), 1), ((130, 70), 0)]
CASE_IDS = [f"{'x'.join(map(str, shape))}-dim{dim}" for shape, dim in CASES]


def _vectors(shape, dim, dtype, device):
    h = shape[dim]
    w = math.prod(size for d, size in enumerate(shape) if d != dim)
    u = F.normalize(torch.randn(h, dtype=torch.float64), dim=0).to(dtype).to(device)
    v = F.normalize(torch.randn(w, dtype=torch.float64), dim=0).to(dtype).to(device)
    return u, v


def _close(actual, expected, dtype, scale=1.0):
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.to(torch.float64), expected.to(torch.float64), rtol=rtol * 4,
                               atol=atol * 4 * scale)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("iterations", [0, 1, 3])
@pytest.mark.parametrize("u_first", [True, False], ids=["u_first", "v_first"])
def test_power_iteration_matches_reference(backend_device, dtype, case, iterations, u_first):
    backend, device = backend_device
    shape, dim = case
    weight = torch.randn(shape, dtype=dtype, device=device)
    u, v = _vectors(shape, dim, dtype, device)
    u_ref, v_ref = u.clone(), v.clone()
    u_storage = u.data_ptr()
    sigma, u_copy, v_copy = sn.spectral_norm_power_iteration(weight, u, v, dim, iterations, 1e-12, u_first,
                                                             backend=backend)
    sigma_ref, _, _ = sn.spectral_norm_power_iteration_ref(weight, u_ref, v_ref, dim, iterations, 1e-12, u_first)
    assert sigma.shape == () and sigma.dtype == sn.opmath_dtype(dtype)
    _close(sigma, sigma_ref, dtype, scale=float(sigma_ref.abs()) + 1)
    _close(u, u_ref, dtype)  # updated in place (or left alone when iterations == 0)
    _close(v, v_ref, dtype)
    assert u.data_ptr() == u_storage
    assert torch.equal(u_copy, u) and torch.equal(v_copy, v)
    assert u_copy.data_ptr() != u.data_ptr() and v_copy.data_ptr() != v.data_ptr()


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_normalize_and_backward_match_reference(backend_device, dtype, case):
    backend, device = backend_device
    shape, dim = case
    weight = torch.randn(shape, dtype=dtype, device=device)
    u, v = _vectors(shape, dim, dtype, device)
    sigma, u, v = sn.spectral_norm_power_iteration(weight, u, v, dim, 2, 1e-12, True, backend="ref")
    grad = torch.randn(shape, dtype=dtype, device=device)
    w1 = weight.clone().requires_grad_()
    out = sn.spectral_norm_normalize(w1, u, v, sigma, dim, 1e-12, backend=backend)
    out.backward(grad)
    w2 = weight.clone().requires_grad_()
    out_ref = sn.spectral_norm_normalize_ref(w2, u, v, sigma, dim, 1e-12)
    out_ref.backward(grad)
    assert out.shape == weight.shape and out.dtype == dtype
    _close(out, out_ref, dtype)
    _close(w1.grad, w2.grad, dtype, scale=float(w2.grad.abs().max()) + 1)


# Weights past the CUDA one-CTA path (more than 65,536 elements, or u/v over 40 KB of shared memory), so the
# multi-CTA kernels run (rows of 1024 values or more, as (3, 20000) and (2, 40, 1100) dim 1, with 128 threads per
# row); Triton tiles them over many programs. Triton's interpreter is skipped: too slow here.
# STREAMED: over 16 MiB in float32, so the CPU kernels write W_sn and dW with streaming stores (kStreamBytes in
# csrc/cpu/spectral_norm_cpu.cpp), here into rows of odd length that start off the 16-byte alignment.
STREAMED = ((1031, 4099), 0)
LARGE_CASES = [((300, 257), 0), ((3, 20000), 0), ((20000, 3), 0), ((8, 130, 9, 9), 1), ((2, 40, 1100), 1), STREAMED]


@pytest.mark.parametrize("case", LARGE_CASES, ids=[f"{'x'.join(map(str, s))}-dim{d}" for s, d in LARGE_CASES])
def test_large_weights_match_reference(backend_device, dtype, case):
    backend, device = backend_device
    if backend == "triton" and device == "cpu":
        pytest.skip("Triton's interpreter takes minutes on large weights")
    shape, dim = case
    weight = torch.randn(shape, dtype=dtype, device=device)
    u, v = _vectors(shape, dim, dtype, device)
    u_ref, v_ref = u.clone(), v.clone()
    # (no iterations: sigma from the given u and v; the CUDA large path widens only what its first pass reads)
    for iterations, u_first in ((0, True), (0, False), (2, True), (2, False)):
        sigma, u_copy, v_copy = sn.spectral_norm_power_iteration(weight, u, v, dim, iterations, 1e-12, u_first,
                                                                 backend=backend)
        sigma_ref, u_c, v_c = sn.spectral_norm_power_iteration_ref(weight, u_ref, v_ref, dim, iterations, 1e-12,
                                                                   u_first)
        _close(u_copy, u_c, dtype)
        _close(v_copy, v_c, dtype)
        _close(sigma, sigma_ref, dtype, scale=float(sigma_ref.abs()) + 1)
        _close(u, u_ref, dtype)
        _close(v, v_ref, dtype)
    grad = torch.randn(shape, dtype=dtype, device=device)
    w1, w2 = weight.clone().requires_grad_(), weight.clone().requires_grad_()
    out = sn.spectral_norm_normalize(w1, u_c, v_c, sigma_ref, dim, 1e-12, backend=backend)
    out.backward(grad)
    out_ref = sn.spectral_norm_normalize_ref(w2, u_c, v_c, sigma_ref, dim, 1e-12)
    out_ref.backward(grad)
    _close(out, out_ref, dtype)
    _close(w1.grad, w2.grad, dtype, scale=float(w2.grad.abs().max()) + 1)


def _sn_of(weight, u, v, dim, backend):
    """W -> W_sn with sigma recomputed from the (perturbed) weight, as gradcheck needs."""
    sigma, _, _ = sn.spectral_norm_power_iteration(weight.detach(), u.clone(), v.clone(), dim, 0, 1e-12, True,
                                                   backend=backend)
    return sn.spectral_norm_normalize(weight, u, v, sigma, dim, 1e-12, backend=backend)


@pytest.mark.parametrize("case", [((4, 3), 0), ((3, 4, 2, 2), 1)], ids=["4x3", "3x4x2x2-dim1"])
def test_gradcheck_and_gradgradcheck_float64(backend_device, case):
    backend, device = backend_device
    shape, dim = case
    weight = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    u, v = _vectors(shape, dim, torch.float64, device)
    sn.spectral_norm_power_iteration(weight.detach(), u, v, dim, 5, 1e-12, True, backend="ref")
    assert torch.autograd.gradcheck(lambda w: _sn_of(w, u, v, dim, backend), (weight,))
    assert torch.autograd.gradgradcheck(lambda w: _sn_of(w, u, v, dim, backend), (weight,))


def test_all_zero_weight_gives_zeros_not_nan(backend_device, dtype):
    backend, device = backend_device
    weight = torch.zeros(6, 4, dtype=dtype, device=device, requires_grad=True)
    u, v = _vectors((6, 4), 0, dtype, device)
    sigma, u_copy, v_copy = sn.spectral_norm_power_iteration(weight, u, v, 0, 1, 1e-12, True, backend=backend)
    assert float(sigma) == 0.0 and not u.isnan().any() and not v.isnan().any()
    out = sn.spectral_norm_normalize(weight, u_copy, v_copy, sigma, 0, 1e-12, backend=backend)
    out.backward(torch.ones_like(out))
    assert torch.equal(out, torch.zeros_like(out))
    assert not weight.grad.isnan().any()  # G / eps: 1e12, beyond float16's range, but never NaN


def test_nan_weight_propagates(backend_device):
    backend, device = backend_device
    weight = torch.randn(5, 4, device=device)
    weight[2, 1] = float("nan")
    u, v = _vectors((5, 4), 0, torch.float32, device)
    sigma, u_copy, v_copy = sn.spectral_norm_power_iteration(weight, u, v, 0, 1, 1e-12, True, backend=backend)
    assert sigma.isnan()
    assert sn.spectral_norm_normalize(weight, u_copy, v_copy, sigma, 0, 1e-12, backend=backend).isnan().all()


@pytest.mark.parametrize("shape", [(5, 4), (300, 300)], ids=["small", "large"])  # (CUDA: the one-CTA, large paths)
@pytest.mark.parametrize("u_first", [True, False], ids=["u-first", "v-first"])
def test_nan_weight_gives_the_reference_nan_pattern_in_u_and_v(backend_device, shape, u_first):
    """A NaN in W makes u and v NaN wherever the reference's are: their norm is NaN, and max(NaN, eps) stays NaN
    (CUDA's fmax gave eps, a u NaN in one row only)."""
    backend, device = backend_device
    weight = torch.randn(shape, device=device)
    weight[2, 1] = float("nan")
    u, v = _vectors(shape, 0, torch.float32, device)
    got = sn.spectral_norm_power_iteration(weight, u.clone(), v.clone(), 0, 1, 1e-12, u_first, backend=backend)
    want = sn.spectral_norm_power_iteration(weight, u.clone(), v.clone(), 0, 1, 1e-12, u_first, backend="ref")
    for actual, expected in zip(got, want):
        assert torch.equal(actual.isnan(), expected.isnan())


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 3, 2)], ids=str)
def test_zero_size_weight(backend_device, shape):
    backend, device = backend_device
    weight = torch.randn(shape, device=device)
    u, v = _vectors(shape, 0, torch.float32, device) if 0 not in shape[:1] else (
        torch.empty(0, device=device), torch.randn(math.prod(shape[1:]), device=device))
    sigma, u_copy, v_copy = sn.spectral_norm_power_iteration(weight, u, v, 0, 1, 1e-12, True, backend=backend)
    assert float(sigma) == 0.0
    assert sn.spectral_norm_normalize(weight, u_copy, v_copy, sigma, 0, 1e-12, backend=backend).shape == shape


def test_non_contiguous_weight_and_buffers(backend_device):
    backend, device = backend_device
    base = torch.randn(9, 12, device=device)
    weight = base.t()  # (12, 9), not contiguous
    u_store, v_store = torch.zeros(24, device=device), torch.zeros(18, device=device)
    u, v = u_store[::2], v_store[::2]  # strided buffers, updated in place
    u.copy_(F.normalize(torch.randn(12, device=device), dim=0))
    v.copy_(F.normalize(torch.randn(9, device=device), dim=0))
    u_ref, v_ref = u.clone(), v.clone()
    sigma, _, _ = sn.spectral_norm_power_iteration(weight, u, v, 0, 2, 1e-12, True, backend=backend)
    sigma_ref, _, _ = sn.spectral_norm_power_iteration_ref(weight.contiguous(), u_ref, v_ref, 0, 2, 1e-12, True)
    _close(sigma, sigma_ref, torch.float32, scale=10)
    _close(u_store[::2], u_ref, torch.float32)
    assert torch.equal(u_store[1::2], torch.zeros(12, device=device))


BAD_ARGS = [
    (lambda d: dict(weight=torch.ones(3, 4, dtype=torch.int64, device=d)), "argument 'weight' must be float16"),
    (lambda d: dict(weight=torch.ones(4, device=d)), "argument 'weight' must have at least 2 dimensions"),
    (lambda d: dict(dim=2), "argument 'dim' must be in"),
    (lambda d: dict(u=torch.ones(4, device=d)), "argument 'u' must have shape"),
    (lambda d: dict(v=torch.ones(3, device=d)), "argument 'v' must have shape"),
    (lambda d: dict(u=torch.ones(3, dtype=torch.float64, device=d)), "must have the dtype of 'weight'"),
    (lambda d: dict(n_power_iterations=-1), "argument 'n_power_iterations' must be >= 0"),
    # a float is refused, not truncated (the kernels' schema: "Expected a value of type 'int'")
    (lambda d: dict(n_power_iterations=2.0), "'n_power_iterations'"),
    (lambda d: dict(dim=1.0), "'dim'"),
    (lambda d: dict(u=torch.ones(1, device=d).expand(3)), "argument 'u' is updated in place and must not be expanded"),
]


@pytest.mark.parametrize("bad, message", BAD_ARGS, ids=[m.split("'")[1] + str(i) for i, (_, m) in enumerate(BAD_ARGS)])
def test_bad_input_names_the_argument(backend_device, bad, message):
    backend, device = backend_device
    args = dict(weight=torch.randn(3, 4, device=device), u=torch.ones(3, device=device), v=torch.ones(4, device=device),
                dim=0, n_power_iterations=1, eps=1e-12)
    args.update(bad(device))
    with pytest.raises(RuntimeError, match=message):
        sn.spectral_norm_power_iteration(args["weight"], args["u"], args["v"], args["dim"], args["n_power_iterations"],
                                         args["eps"], True, backend=backend)


KERNEL_PAIRS = kernel_pairs(OP)


NORMALIZE_BAD_ARGS = [
    (lambda d: dict(weight=torch.ones(3, 4, dtype=torch.int32, device=d)), "argument 'weight' must be float16"),
    (lambda d: dict(weight=torch.ones(4, device=d)), "argument 'weight' must have at least 2 dimensions"),
    (lambda d: dict(dim=2), "argument 'dim' must be in"),
    (lambda d: dict(dim=1.0), "'dim'"),
    (lambda d: dict(u=torch.ones(3, dtype=torch.float64, device=d)), "must have the dtype of 'weight'"),
    (lambda d: dict(sigma=torch.ones(2, device=d)), "argument 'sigma' must hold one value"),
    (lambda d: dict(sigma=torch.ones((), dtype=torch.int64, device=d)), "argument 'sigma' must be float16"),
    # a meta tensor among real ones routes the call to the fake kernel, which used to return uninitialized memory
    (lambda d: dict(sigma=torch.ones((), device="meta")), "argument 'sigma' must be on the device of 'weight'"),
    (lambda d: dict(u=torch.ones(3, device="meta")), "must be on the device of 'weight'"),
]


@pytest.mark.parametrize("bad, message", NORMALIZE_BAD_ARGS,
                         ids=[m.split("'")[1] + str(i) for i, (_, m) in enumerate(NORMALIZE_BAD_ARGS)])
def test_normalize_bad_input_names_the_argument(backend_device, bad, message):
    """Every backend (the reference too) checks the normalize and its backward alike."""
    backend, device = backend_device
    args = dict(weight=torch.randn(3, 4, device=device), u=torch.ones(3, device=device) / 3 ** 0.5,
                v=torch.ones(4, device=device) / 2, sigma=torch.tensor(1.5, device=device), dim=0)
    args.update(bad(device))
    with pytest.raises(RuntimeError, match=message):
        sn.spectral_norm_normalize(args["weight"], args["u"], args["v"], args["sigma"], args["dim"], backend=backend)
    if args["weight"].is_floating_point():
        suffix = "_triton" if backend == "triton" else ""
        op = sn.spectral_norm_normalize_backward_ref if backend == "ref" else getattr(
            torch.ops.fastsn, "spectral_norm_normalize_backward" + suffix)
        with pytest.raises(RuntimeError, match=message):
            op(torch.ones_like(args["weight"]), args["weight"], args["u"], args["v"], args["sigma"], args["dim"], 1e-12)


def test_normalize_backward_refuses_a_grad_on_another_device(backend_device):
    """A CPU grad with CUDA tensors routes to the CUDA kernel, which read it by pointer (an illegal access); a meta
    grad routes CPU tensors to the fake kernel. Both are refused, naming 'grad'."""
    backend, device = backend_device
    weight, u, v = torch.randn(3, 4, device=device), torch.ones(3, device=device), torch.ones(4, device=device)
    grad = torch.ones(3, 4, device="cpu" if weight.is_cuda else "meta")
    op = sn.spectral_norm_normalize_backward_ref if backend == "ref" else getattr(
        torch.ops.fastsn, "spectral_norm_normalize_backward" + ("_triton" if backend == "triton" else ""))
    with pytest.raises(RuntimeError, match="argument 'grad' must be on the device of 'weight'"):
        op(grad, weight, u, v, torch.tensor(1.5, device=device), 0, 1e-12)


def test_normalize_with_subnormal_sigma_divides(backend_device):
    """|sigma| below 1 / FLT_MAX (reachable with eps = 0): 1 / sigma overflows, W / sigma does not; the CPU
    kernels multiplied by the reciprocal and gave inf and NaN."""
    backend, device = backend_device
    weight = torch.tensor([[1e-40, 0.0, 2e-40], [3e-40, 4e-40, 0.0]], device=device, requires_grad=True)
    u, v = torch.tensor([0.6, 0.8], device=device), torch.tensor([0.0, 1.0, 0.0], device=device)
    sigma, _, _ = sn.spectral_norm_power_iteration_ref(weight.detach(), u.clone(), v.clone(), 0, 0, 0.0)
    assert 0 < sigma.item() < 1e-38
    out = sn.spectral_norm_normalize(weight, u, v, sigma, 0, 0.0, backend=backend)
    expected = sn.spectral_norm_normalize_ref(weight, u, v, sigma, 0, 0.0)
    torch.testing.assert_close(out, expected)
    assert torch.isfinite(out).all()
    if backend == "ref":
        return  # autograd through W / sigma(W) squares sigma, which underflows: NaN, as with torch's spectral norm
    grad = torch.tensor([[1e-40, 0.0, 0.0], [0.0, 1e-40, 0.0]], device=device)
    (ours,) = torch.autograd.grad(out, weight, grad)
    torch.testing.assert_close(ours, sn.spectral_norm_normalize_backward_ref(grad, weight, u, v, sigma, 0, 0.0))
    assert torch.isfinite(ours).all()


@pytest.mark.parametrize("backend, device", KERNEL_PAIRS, ids=[f"{b}-{d}" for b, d in KERNEL_PAIRS])
def test_opcheck(backend, device):
    """Schema (the in-place u, v), fake kernels, autograd registration and AOT dispatch agree."""
    suffix = "_triton" if backend == "triton" else ""
    _backend.resolve(OP, device, backend)  # imports the Triton kernels when needed
    weight = torch.randn(6, 2, 2, device=device, requires_grad=True)
    u, v = _vectors((6, 2, 2), 1, torch.float32, device)
    ops = torch.ops.fastsn
    torch.library.opcheck(getattr(ops, "spectral_norm_power_iteration" + suffix).default,
                          (weight.detach(), u, v, 1, 2, 1e-12, True))
    sigma, u, v = getattr(ops, "spectral_norm_power_iteration" + suffix)(weight.detach(), u, v, 1, 1, 1e-12, True)
    torch.library.opcheck(getattr(ops, "spectral_norm_normalize" + suffix).default, (weight, u, v, sigma, 1, 1e-12))
    torch.library.opcheck(getattr(ops, "spectral_norm_normalize_backward" + suffix).default,
                          (torch.randn(6, 2, 2, device=device), weight.detach(), u, v, sigma, 1, 1e-12))
    # W / sigma keeps a dense weight's strides (channels last) and makes any other contiguous: fake kernels alike
    base = torch.randn(4, 3, 2, 6, device=device)
    u4, v4 = _vectors((4, 3, 2, 3), 0, torch.float32, device)
    for layout in (base[..., :3].contiguous(memory_format=torch.channels_last), base[..., ::2]):
        torch.library.opcheck(getattr(ops, "spectral_norm_normalize" + suffix).default,
                              (layout.requires_grad_(), u4, v4, sigma, 0, 1e-12))


GROUP = [((5, 3), 0), ((3, 16, 2, 2), 1), ((7, 1), 0), ((40, 30), 0)]


# the same with two weights past the CUDA one-CTA path in the middle, so one call mixes both paths
GROUP_WITH_LARGE = GROUP[:2] + [((300, 257), 0), ((3, 20000), 0)]
# over 16 MiB in all: the CPU kernels stream every output of the group, the small ones too
GROUP_STREAMED = GROUP[:2] + [STREAMED, GROUP[3]]


def _group(dtype, device, group=GROUP):
    weights = [torch.randn(shape, dtype=dtype, device=device) for shape, _ in group]
    vectors = [_vectors(shape, dim, dtype, device) for shape, dim in group]
    return weights, [u for u, _ in vectors], [v for _, v in vectors], [dim for _, dim in group]


@pytest.mark.parametrize("group", [GROUP, GROUP_WITH_LARGE, GROUP_STREAMED], ids=["small", "with-large", "streamed"])
def test_grouped_ops_match_one_by_one(backend_device, dtype, group):
    backend, device = backend_device
    if backend == "triton" and device == "cpu" and group is not GROUP:
        pytest.skip("Triton's interpreter takes 20-40 s a case on large weights (its grouped launches: the "
                    "many_weights tests)")
    weights, us, vs, dims = _group(dtype, device, group)
    us_ref, vs_ref = [u.clone() for u in us], [v.clone() for v in vs]
    iterations, eps, u_first = [1, 0, 3, 2], [1e-12] * 4, [True, False, True, False]
    sigmas, u_copies, v_copies = sn.spectral_norm_grouped_power_iteration(weights, us, vs, dims, iterations, eps,
                                                                          u_first, backend=backend)
    assert sigmas.shape == (4,) and u_copies.shape == (sum(u.numel() for u in us),)
    assert v_copies.shape == (sum(v.numel() for v in vs),)
    grads = [torch.randn_like(w) for w in weights]
    leaves = [w.clone().requires_grad_() for w in weights]
    outs = sn.spectral_norm_grouped_normalize(leaves, u_copies, v_copies, sigmas, dims, eps, backend=backend)
    torch.autograd.backward(outs, grads)
    u_split, v_split, _ = sn.split_grouped_vectors(weights, u_copies, v_copies, sigmas, dims)
    for k, (weight, dim) in enumerate(zip(weights, dims)):
        sigma_ref, u_c, v_c = sn.spectral_norm_power_iteration_ref(weight, us_ref[k], vs_ref[k], dim, iterations[k],
                                                                   1e-12, u_first[k])
        _close(sigmas[k], sigma_ref, dtype, scale=float(sigma_ref.abs()) + 1)
        _close(us[k], us_ref[k], dtype)
        _close(vs[k], vs_ref[k], dtype)
        assert torch.equal(u_split[k], us[k]) and torch.equal(v_split[k], vs[k])
        leaf = weight.clone().requires_grad_()
        out_ref = sn.spectral_norm_normalize_ref(leaf, u_c, v_c, sigma_ref, dim)
        out_ref.backward(grads[k])
        _close(outs[k], out_ref, dtype)
        _close(leaves[k].grad, leaf.grad, dtype, scale=float(leaf.grad.abs().max()) + 1)


# 20 weights past the one-CTA path: the CUDA kernels batch up to 16 large weights sharing the order and the
# iteration count per launch, so this makes a full batch and a split one (narrow and wide rows, outer > 1 mixed in
# each), and batches of other orders and counts
MANY_LARGE = [((270, 260), 0), ((3, 25000), 0), ((2, 40, 1100), 1), ((8, 130, 9, 9), 1)] * 5
MANY_LARGE_SETTINGS = [(1, True)] * 17 + [(1, False), (2, False), (0, True)]  # (iterations, u_first)


def test_grouped_large_weights_in_batches_match_one_by_one(backend_device):
    backend, device = backend_device
    if backend == "triton" and device == "cpu":
        pytest.skip("Triton's interpreter takes 40 s on these weights (its grouped launches: many_weights tests)")
    weights, us, vs, dims = _group(torch.float32, device, MANY_LARGE)
    us_ref, vs_ref = [u.clone() for u in us], [v.clone() for v in vs]
    iterations, u_first = [n for n, _ in MANY_LARGE_SETTINGS], [first for _, first in MANY_LARGE_SETTINGS]
    sigmas, u_copies, v_copies = sn.spectral_norm_grouped_power_iteration(
        weights, us, vs, dims, iterations, [1e-12] * len(weights), u_first, backend=backend)
    u_split, v_split, _ = sn.split_grouped_vectors(weights, u_copies, v_copies, sigmas, dims)
    for k, (weight, dim) in enumerate(zip(weights, dims)):
        sigma_ref, u_c, v_c = sn.spectral_norm_power_iteration_ref(weight, us_ref[k], vs_ref[k], dim, iterations[k],
                                                                   1e-12, u_first[k])
        _close(sigmas[k], sigma_ref, torch.float32, scale=float(sigma_ref.abs()) + 1)
        _close(us[k], us_ref[k], torch.float32)
        _close(vs[k], vs_ref[k], torch.float32)
        _close(u_split[k], u_c, torch.float32)
        _close(v_split[k], v_c, torch.float32)


# more weights than one Triton grouped launch takes (MAX_GROUP, 64), with an empty weight, a channels-last and a
# sliced (non-dense) one, 1-wide dims and every dim position
MANY_SMALL = [((3 + k % 5, 2 + k % 3), 0) for k in range(60)] + [
    ((2, 0, 3), 0), ((4, 3, 2, 2), 0), ((3, 4, 2, 5), 2), ((5, 1), 0), ((1, 6), 0), ((2, 3, 1, 1), 1),
    ((6, 4, 3), 2), ((7, 2), 1)]


def _interpreter_dtype_skip(backend: str, device: str, dtype: torch.dtype) -> None:
    """Triton's interpreter takes about 7 s a grouped power iteration of MANY_SMALL: there, float32 and bfloat16 only
    (the grouped kernels treat every dtype alike; the single-weight tests and GROUP cover all four)."""
    if backend == "triton" and device == "cpu" and dtype in (torch.float64, torch.float16):
        pytest.skip("Triton's interpreter: float32 and bfloat16 cover the grouped launches")


def test_grouped_power_iteration_many_weights_and_settings(backend_device, dtype):
    """More weights than one Triton grouped launch takes, iteration counts 0 to 3 and both orders mixed, strided u
    and v, non-contiguous weights: each weight as its single-weight reference."""
    backend, device = backend_device
    _interpreter_dtype_skip(backend, device, dtype)
    weights, us, vs, dims = _group(dtype, device, MANY_SMALL)
    weights[61] = weights[61].contiguous(memory_format=torch.channels_last)
    weights[62] = torch.randn(3, 4, 2, 10, dtype=dtype, device=device)[..., ::2]
    weights[60] = torch.randn(weights[60].numel() + 1, dtype=dtype, device=device)[1:].view(weights[60].shape)
    us[5] = torch.cat([us[5][:, None], torch.zeros_like(us[5])[:, None]], 1)[:, 0]  # stride 2
    vs[6] = torch.cat([vs[6][:, None], torch.zeros_like(vs[6])[:, None]], 1)[:, 0]
    iterations = [(0, 1, 2, 3, 1)[k % 5] for k in range(len(weights))]
    u_first = [k % 3 != 1 for k in range(len(weights))]
    eps = [1e-12] * len(weights)
    us_ref, vs_ref = [u.clone() for u in us], [v.clone() for v in vs]
    sigmas, u_copies, v_copies = sn.spectral_norm_grouped_power_iteration(weights, us, vs, dims, iterations, eps,
                                                                          u_first, backend=backend)
    u_split, v_split, _ = sn.split_grouped_vectors(weights, u_copies, v_copies, sigmas, dims)
    for k, weight in enumerate(weights):
        sigma_ref, _, _ = sn.spectral_norm_power_iteration_ref(weight, us_ref[k], vs_ref[k], dims[k], iterations[k],
                                                               eps[k], u_first[k])
        _close(sigmas[k], sigma_ref, dtype, scale=float(sigma_ref.abs()) + 1)
        _close(us[k], us_ref[k], dtype)
        _close(vs[k], vs_ref[k], dtype)
        assert torch.equal(u_split[k], us[k]) and torch.equal(v_split[k], vs[k])


def test_grouped_normalize_many_weights_layouts_and_grad_dtypes(backend_device, dtype):
    backend, device = backend_device
    weights, us, vs, dims = _group(dtype, device, MANY_SMALL)
    weights[61] = weights[61].contiguous(memory_format=torch.channels_last)
    weights[62] = torch.randn(3, 4, 2, 10, dtype=dtype, device=device)[..., ::2]  # strided: W / sigma contiguous
    # not 16-byte aligned (the Triton launches then take no alignment hint)
    weights[60] = torch.randn(weights[60].numel() + 1, dtype=dtype, device=device)[1:].view(weights[60].shape)
    eps = [1e-12] * len(weights)
    eps[3] = 1e3  # sigma below eps: eps replaces it and takes no gradient
    sigmas = torch.stack([sn.spectral_norm_power_iteration_ref(w, u, v, d, 0)[0]  # u . (M v): what W / sigma means
                          for w, u, v, d in zip(weights, us, vs, dims)])
    u_flat, v_flat = torch.cat(us), torch.cat(vs)
    leaves = [w.clone().requires_grad_() for w in weights]
    outs = sn.spectral_norm_grouped_normalize(leaves, u_flat, v_flat, sigmas, dims, eps, backend=backend)
    # G of another dtype for some weights (the kernels widen mixed G dtypes, exactly)
    grads = [torch.randn(w.shape, dtype=torch.float64 if k % 7 == 0 else dtype, device=device)
             for k, w in enumerate(weights)]
    torch.autograd.backward(outs, [g.to(dtype) for g in grads])
    direct = getattr(torch.ops.fastsn, "spectral_norm_grouped_normalize_backward"
                     + ("_triton" if backend == "triton" else ""))
    with torch.no_grad():
        mixed = direct(grads, weights, u_flat, v_flat, sigmas, dims, eps) if backend != "ref" else None
    u_split, v_split, sigma_split = sn.split_grouped_vectors(weights, u_flat, v_flat, sigmas, dims)
    for k, weight in enumerate(weights):
        leaf = weight.clone().requires_grad_()
        out_ref = sn.spectral_norm_normalize_ref(leaf, u_split[k], v_split[k], sigma_split[k], dims[k], eps[k])
        out_ref.backward(grads[k].to(dtype))
        _close(outs[k], out_ref, dtype)
        assert outs[k].stride() == out_ref.stride()
        _close(leaves[k].grad, leaf.grad, dtype, scale=float(leaf.grad.abs().amax() if leaf.grad.numel() else 0) + 1)
        if mixed is not None:
            expected = sn.spectral_norm_normalize_backward_ref(grads[k], weight, u_split[k], v_split[k],
                                                               sigma_split[k], dims[k], eps[k])
            _close(mixed[k], expected, dtype, scale=float(expected.abs().amax() if expected.numel() else 0) + 1)


def test_triton_grouped_launches_do_not_grow_with_the_weights(monkeypatch):
    """A grouped refresh on Triton launches per block configuration, not per weight: 3 or 30 weights of one
    configuration take the same launches (widen, pass, finalize; normalize; partial sums, backward)."""
    if ("triton", "cpu") not in KERNEL_PAIRS:
        pytest.skip("needs Triton's interpreter (TRITON_INTERPRET=1)")
    from triton.runtime.interpreter import InterpretedFunction
    launched = []
    run = InterpretedFunction.run
    monkeypatch.setattr(InterpretedFunction, "run", lambda self, *a, **k: (launched.append(self.fn.__name__),
                                                                           run(self, *a, **k))[1])
    counts = []
    for n in (3, 30):
        weights, us, vs, dims = _group(torch.float32, "cpu", [((4, 3), 0)] * n)
        leaves = [w.requires_grad_() for w in weights]
        launched.clear()
        sigmas, u_flat, v_flat = sn.spectral_norm_grouped_power_iteration(weights, us, vs, dims, [1] * n, [1e-12] * n,
                                                                          [True] * n, backend="triton")
        outs = sn.spectral_norm_grouped_normalize(leaves, u_flat, v_flat, sigmas, dims, [1e-12] * n, backend="triton")
        torch.autograd.backward(outs, [torch.ones_like(w) for w in weights])
        counts.append(sorted(launched))
    assert counts[0] == counts[1] and len(counts[0]) == 6, counts


def test_triton_grouped_ops_under_cuda_graph_capture_run_weight_by_weight(monkeypatch):
    """Under CUDA graph capture the Triton grouped ops launch weight by weight (their tables come from host memory,
    which a graph replay would read again): the same results as the grouped launches. (Capture is simulated: the
    interpreter runs CPU tensors.)"""
    if ("triton", "cpu") not in KERNEL_PAIRS:
        pytest.skip("needs Triton's interpreter (TRITON_INTERPRET=1)")
    from fastsn.triton_kernels import spectral_norm as sn_triton
    results = []
    for capturing in (False, True):
        monkeypatch.setattr(sn_triton, "_capturing", lambda device: capturing)
        torch.manual_seed(0)
        weights, us, vs, dims = _group(torch.float32, "cpu")
        args = (weights, us, vs, dims, [1, 0, 2, 1], [1e-12] * 4, [True, False, True, False])
        sigmas, u_flat, v_flat = sn_triton.spectral_norm_grouped_power_iteration_triton(*args)
        outs = sn_triton.spectral_norm_grouped_normalize_triton(weights, u_flat, v_flat, sigmas, dims, [1e-12] * 4)
        grads = sn_triton.spectral_norm_grouped_normalize_backward_triton(
            [torch.ones_like(w) for w in weights], weights, u_flat, v_flat, sigmas, dims, [1e-12] * 4)
        results.append([sigmas, u_flat, v_flat, *us, *vs, *outs, *grads])
    for grouped, weight_by_weight in zip(*results):
        torch.testing.assert_close(grouped, weight_by_weight)


def test_grouped_gradgradcheck_float64(backend_device):
    backend, device = backend_device
    # (small: each gradcheck evaluation is a grouped op, about 20 ms of Triton's interpreter; dim 1 of the second
    # weight has dims on both sides)
    shapes, dims = [(3, 2), (2, 3, 2, 1)], [0, 1]
    weights = [torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True) for shape in shapes]
    vectors = [_vectors(shape, dim, torch.float64, device) for shape, dim in zip(shapes, dims)]
    us, vs = [u for u, _ in vectors], [v for _, v in vectors]

    def normalized(*ws):
        sigmas, u_flat, v_flat = sn.spectral_norm_grouped_power_iteration(
            [w.detach() for w in ws], [u.clone() for u in us], [v.clone() for v in vs], dims, [0, 0], [1e-12] * 2,
            [True, True], backend=backend)
        return tuple(sn.spectral_norm_grouped_normalize(list(ws), u_flat, v_flat, sigmas, dims, [1e-12] * 2,
                                                        backend=backend))

    assert torch.autograd.gradcheck(normalized, tuple(weights))
    assert torch.autograd.gradgradcheck(normalized, tuple(weights))


def test_registered_autograd_matches_eager_function(backend_device):
    """Eager calls of the functional ops take fastsn's autograd.Functions; torch.compile, opcheck and direct
    torch.ops calls take the ops' registered autograd. Both must give the same first and second-order gradients."""
    backend, device = backend_device
    if backend == "ref":
        pytest.skip("the reference is plain autograd, no op")
    suffix = "_triton" if backend == "triton" else ""
    normalize = getattr(torch.ops.fastsn, "spectral_norm_normalize" + suffix)
    grouped = getattr(torch.ops.fastsn, "spectral_norm_grouped_normalize" + suffix)
    shapes, dims = [(4, 3), (3, 4, 2, 2)], [0, 1]
    weights = [torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True) for shape in shapes]
    vectors = [_vectors(shape, dim, torch.float64, device) for shape, dim in zip(shapes, dims)]
    sigmas = [sn.spectral_norm_power_iteration(w.detach(), u.clone(), v.clone(), d, 0, 1e-12, True, backend=backend)[0]
              for w, (u, v), d in zip(weights, vectors, dims)]
    u_flat, v_flat = torch.cat([u for u, _ in vectors]), torch.cat([v for _, v in vectors])
    sigma_flat = torch.stack(sigmas)

    def single(op_path: bool):
        def f(w):
            u, v = vectors[1]
            if op_path:
                return normalize(w, u, v, sigmas[1], dims[1], 1e-12)
            return sn.spectral_norm_normalize(w, u, v, sigmas[1], dims[1], 1e-12, backend=backend)
        return f

    def group(op_path: bool):
        def f(*ws):
            if op_path:
                return tuple(grouped(list(ws), u_flat, v_flat, sigma_flat, dims, [1e-12] * 2))
            return tuple(sn.spectral_norm_grouped_normalize(list(ws), u_flat, v_flat, sigma_flat, dims, [1e-12] * 2,
                                                            backend=backend))
        return f

    for make, inputs in ((single, (weights[1],)), (group, tuple(weights))):
        outs = {}
        for op_path in (True, False):
            out = make(op_path)(*inputs)
            out = out if isinstance(out, tuple) else (out,)
            grads = torch.autograd.grad(sum((o * o).sum() for o in out), inputs, create_graph=True)
            second = torch.autograd.grad(sum(g.sum() for g in grads), inputs)
            outs[op_path] = [t.detach() for t in (*out, *grads, *second)]
        for a, b in zip(outs[True], outs[False]):
            torch.testing.assert_close(a, b)


def test_grouped_bad_input_names_the_argument(backend_device):
    backend, device = backend_device
    weights, us, vs, dims = _group(torch.float32, device)
    with pytest.raises(RuntimeError, match="argument 'dims' must hold one entry per weight"):
        sn.spectral_norm_grouped_power_iteration(weights, us, vs, dims[:2], [1] * 4, [1e-12] * 4, [True] * 4,
                                                 backend=backend)
    sigmas, u_flat, v_flat = sn.spectral_norm_grouped_power_iteration(weights, us, vs, dims, [1] * 4, [1e-12] * 4,
                                                                      [True] * 4, backend=backend)
    with pytest.raises(RuntimeError, match="'us' and 'vs' must hold|'sigmas' must hold|argument 'eps' must hold"):
        sn.spectral_norm_grouped_normalize(weights, u_flat[1:], v_flat, sigmas, dims, [1e-12] * 4, backend=backend)
    # every backend checks alike (each case once differed between the reference, C++ and Triton)
    eps = [1e-12] * 4
    for bad, message in [
        (dict(sigmas=sigmas[0]), "must be 1-D"),
        (dict(sigmas=sigmas[None]), "must be 1-D"),
        (dict(dims=[0, 0, 0, 5]), "weight 3 must have at least 2 dimensions and 'dims' within them"),
        (dict(us=u_flat.double()), "must have the dtype of the weights"),
    ]:
        args = dict(weights=weights, us=u_flat, vs=v_flat, sigmas=sigmas, dims=dims, eps=eps) | bad
        with pytest.raises(RuntimeError, match=message):
            sn.spectral_norm_grouped_normalize(**args, backend=backend)
    with pytest.raises(RuntimeError, match="argument 'weights' must share one device and dtype"):
        sn.spectral_norm_grouped_power_iteration([weights[0], weights[1].double()], us[:2], [vs[0], vs[1].double()],
                                                 dims[:2], [1] * 2, eps[:2], [True] * 2, backend=backend)
    with pytest.raises(RuntimeError, match="argument 'weights' must not be empty"):
        sn.spectral_norm_grouped_power_iteration([], [], [], [], [], [], [], backend=backend)
    empty = torch.zeros(0, device=device)
    assert sn.spectral_norm_grouped_normalize([], empty, empty, empty, [], [], backend=backend) == []


@pytest.mark.parametrize("backend, device", KERNEL_PAIRS, ids=[f"{b}-{d}" for b, d in KERNEL_PAIRS])
def test_grouped_opcheck(backend, device):
    suffix = "_triton" if backend == "triton" else ""
    _backend.resolve(OP, device, backend)
    weights, us, vs, dims = _group(torch.float32, device)
    weights[1] = weights[1].contiguous(memory_format=torch.channels_last)  # (W / sigma keeps its strides)
    ops = torch.ops.fastsn
    args = (weights, us, vs, dims, [1, 0, 2, 1], [1e-12] * 4, [True, False, True, True])
    torch.library.opcheck(getattr(ops, "spectral_norm_grouped_power_iteration" + suffix).default, args)
    sigmas, u_flat, v_flat = getattr(ops, "spectral_norm_grouped_power_iteration" + suffix)(*args)
    leaves = [w.clone().requires_grad_() for w in weights]
    torch.library.opcheck(getattr(ops, "spectral_norm_grouped_normalize" + suffix).default,
                          (leaves, u_flat, v_flat, sigmas, dims, [1e-12] * 4))
    torch.library.opcheck(getattr(ops, "spectral_norm_grouped_normalize_backward" + suffix).default,
                          ([torch.randn_like(w) for w in weights], weights, u_flat, v_flat, sigmas, dims, [1e-12] * 4))


def test_functional_spectral_norm_is_power_iteration_then_normalize(backend_device):
    backend, device = backend_device
    weight = torch.randn(6, 5, device=device, requires_grad=True)
    u, v = _vectors((6, 5), 0, torch.float32, device)
    u_ref, v_ref = u.clone(), v.clone()
    normalized, sigma = sn.spectral_norm(weight, u, v, 0, 2, 1e-12, True, backend=backend)
    sigma_ref, u_c, v_c = sn.spectral_norm_power_iteration_ref(weight, u_ref, v_ref, 0, 2, 1e-12, True)
    _close(sigma, sigma_ref, torch.float32, scale=10)
    _close(normalized, sn.spectral_norm_normalize_ref(weight, u_c, v_c, sigma_ref, 0), torch.float32)
    _close(u, u_ref, torch.float32)
