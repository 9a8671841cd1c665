"""interpolate on every backend x device against its pure-PyTorch reference and the usual WGAN-GP formula: values,
gradients of real, fake and eps, gradients of every order (gradcheck, gradgradcheck in float64, the backward's
backward), the per-sample draw and its generator, registration (opcheck), odd shapes and bad input."""
from __future__ import annotations

import importlib

import pytest
import torch

from conftest import TOLERANCES, kernel_pairs
from fastsn import _backend

ip = importlib.import_module("fastsn.ops.interpolate")

OP = "interpolate"
# (B, ...) shapes: images, vectors, one feature, one sample, odd sizes, an empty batch, a 1-D batch of scalars
SHAPES = [(4, 3, 5, 5), (7, 2), (5, 1), (1, 9), (3, 5, 7), (0, 4), (6,)]
SHAPE_IDS = ["x".join(map(str, s)) for s in SHAPES]


def _close(actual, expected, dtype):
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.to(torch.float64), expected.to(torch.float64), rtol=rtol * 4, atol=atol * 4)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_forward_and_backward_match_reference(backend_device, dtype, shape):
    backend, device = backend_device
    real, fake = torch.randn(shape, dtype=dtype, device=device), torch.randn(shape, dtype=dtype, device=device)
    eps = torch.rand(shape[0], device=device, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    leaves = [t.clone().requires_grad_() for t in (real, fake, eps)]
    refs = [t.clone().requires_grad_() for t in (real, fake, eps)]
    out = ip.interpolate(*leaves, backend=backend)
    expected = ip.interpolate_ref(*refs)
    assert out.shape == real.shape and out.dtype == dtype and out.is_contiguous()
    _close(out, expected, dtype)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    for got, want in zip(leaves[:2], refs[:2]):
        _close(got.grad, want.grad, dtype)
    scale = float(refs[2].grad.abs().max()) + 1 if refs[2].grad.numel() else 1.0
    torch.testing.assert_close(leaves[2].grad, refs[2].grad, rtol=TOLERANCES[dtype][0] * 8,
                               atol=TOLERANCES[dtype][1] * 8 * scale)


def test_reference_is_the_wgan_gp_formula():
    real, fake = torch.randn(4, 3, 2, 2, dtype=torch.float64), torch.randn(4, 3, 2, 2, dtype=torch.float64)
    alpha = torch.rand(4, 1, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(ip.interpolate_ref(real, fake, alpha.view(4)), alpha * real + (1 - alpha) * fake)


def test_draw_is_per_sample_and_follows_the_generator(backend_device):
    """eps drawn inside: one factor per sample, the numbers torch.rand(B, generator=g) gives, so a seeded run
    reproduces the usual alpha = torch.rand(B, 1, 1, 1) code exactly."""
    backend, device = backend_device
    real, fake = torch.randn(16, 3, 4, 4, device=device), torch.randn(16, 3, 4, 4, device=device)
    out = ip.interpolate(real, fake, generator=torch.Generator(device).manual_seed(7), backend=backend)
    alpha = torch.rand(16, 1, 1, 1, generator=torch.Generator(device).manual_seed(7), device=device)
    torch.testing.assert_close(out, alpha * real + (1 - alpha) * fake)
    # per sample, not one factor for the batch: between ones and zeros each sample is its own constant eps_i
    ones = ip.interpolate(torch.ones_like(real), torch.zeros_like(fake),
                          generator=torch.Generator(device).manual_seed(7), backend=backend).flatten(1)
    torch.testing.assert_close(ones, alpha.view(16, 1).expand_as(ones))
    assert ones[:, 0].unique().numel() == 16
    again = ip.interpolate(real, fake, generator=torch.Generator(device).manual_seed(7), backend=backend)
    assert torch.equal(out, again)


def test_non_contiguous_input(backend_device):
    backend, device = backend_device
    real = torch.randn(5, 4, 6, device=device).transpose(1, 2)      # (5, 6, 4), not contiguous
    fake = torch.randn(6, 5, 4, device=device).transpose(0, 1)      # (5, 6, 4), batch not outermost in memory
    eps = torch.rand(10, device=device)[::2]
    torch.testing.assert_close(ip.interpolate(real, fake, eps, backend=backend), ip.interpolate_ref(real, fake, eps))


def test_half_inputs_take_float32_eps_and_compute_in_float32(backend_device):
    backend, device = backend_device
    real, fake = torch.randn(3, 8, dtype=torch.float16, device=device), torch.zeros(3, 8, dtype=torch.float16,
                                                                                     device=device)
    eps = torch.tensor([1 / 3, 0.5, 1e-4], device=device)  # not representable in float16
    expected = (eps.view(3, 1) * real.float()).half()
    torch.testing.assert_close(ip.interpolate(real, fake, eps, backend=backend), expected, rtol=0, atol=0)


def test_gradcheck_and_gradgradcheck_float64(backend_device):
    backend, device = backend_device
    inputs = (torch.randn(3, 2, 4, dtype=torch.float64, device=device, requires_grad=True),
              torch.randn(3, 2, 4, dtype=torch.float64, device=device, requires_grad=True),
              torch.rand(3, dtype=torch.float64, device=device, requires_grad=True))

    def fn(real, fake, eps):
        return ip.interpolate(real, fake, eps, backend=backend)

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_backward_of_the_backward_is_interpolate(backend_device):
    """Third order: d/dgrad of <(eps g, (1 - eps) g), (a, b)> is eps a + (1 - eps) b."""
    backend, device = backend_device
    real, fake = (torch.randn(4, 3, device=device, requires_grad=True) for _ in range(2))
    eps = torch.rand(4, device=device)
    out = ip.interpolate(real, fake, eps, backend=backend)
    g = torch.randn(4, 3, device=device, requires_grad=True)
    grad_real, grad_fake = torch.autograd.grad(out, (real, fake), g, create_graph=True)
    a, b = torch.randn(4, 3, device=device), torch.randn(4, 3, device=device)
    (d_g,) = torch.autograd.grad((grad_real * a).sum() + (grad_fake * b).sum(), g)
    torch.testing.assert_close(d_g, eps.view(4, 1) * a + (1 - eps.view(4, 1)) * b)


KERNEL_PAIRS = kernel_pairs(OP)


@pytest.mark.parametrize("backend, device", KERNEL_PAIRS, ids=[f"{b}-{d}" for b, d in KERNEL_PAIRS])
def test_opcheck(backend, device):
    """Schemas, fake kernels, autograd registrations and AOT dispatch agree."""
    suffix = "_triton" if backend == "triton" else ""
    _backend.resolve(OP, device, backend)  # imports the Triton kernels when needed
    real, fake = (torch.randn(3, 2, 5, device=device, requires_grad=True) for _ in range(2))
    eps = torch.rand(3, device=device, requires_grad=True)
    ops = torch.ops.fastsn
    torch.library.opcheck(getattr(ops, "interpolate" + suffix).default, (real, fake, eps))
    torch.library.opcheck(getattr(ops, "interpolate" + suffix).default, (real, fake, eps.detach()))
    torch.library.opcheck(getattr(ops, "interpolate_backward" + suffix).default,
                          (torch.randn(3, 2, 5, device=device, requires_grad=True), eps))


def test_compiles_with_its_backward(backend_device):
    backend, device = backend_device
    real, fake = (torch.randn(4, 6, device=device, requires_grad=True) for _ in range(2))
    eps = torch.rand(4, device=device)

    def step(real, fake):
        return (ip.interpolate(real, fake, eps, backend=backend) ** 2).sum()

    compiled = torch.compile(step, fullgraph=backend != "ref", backend="aot_eager")
    got = torch.autograd.grad(compiled(real, fake), (real, fake))
    want = torch.autograd.grad(step(real, fake), (real, fake))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


BAD_ARGS = [
    (lambda d: dict(real=torch.ones(3, 4, dtype=torch.int64, device=d)), "argument 'real' must be float16"),
    (lambda d: dict(fake=torch.ones(3, 5, device=d)), r"argument 'fake' must have the shape of 'real'"),
    (lambda d: dict(fake=torch.ones(3, 4, dtype=torch.float64, device=d)), "argument 'fake' must have the dtype"),
    (lambda d: dict(real=torch.tensor(1.0, device=d), fake=torch.tensor(2.0, device=d)),
     "argument 'real' must have a batch dimension"),
    (lambda d: dict(eps=torch.rand(4, device=d)), r"argument 'eps' must have shape \(3,\)"),
    (lambda d: dict(eps=torch.rand(3, 1, device=d)), r"argument 'eps' must have shape \(3,\)"),
    (lambda d: dict(eps=torch.ones(3, dtype=torch.int64, device=d)), "argument 'eps' must be float16"),
]


@pytest.mark.parametrize("bad, message", BAD_ARGS, ids=[m.split("'")[1] + str(i) for i, (_, m) in enumerate(BAD_ARGS)])
def test_bad_input_names_the_argument(backend_device, bad, message):
    backend, device = backend_device
    args = dict(real=torch.randn(3, 4, device=device), fake=torch.randn(3, 4, device=device),
                eps=torch.rand(3, device=device))
    args.update(bad(device))
    with pytest.raises(RuntimeError, match=message):
        ip.interpolate(args["real"], args["fake"], args["eps"], backend=backend)


@pytest.mark.parametrize("arg", ["fake", "eps"])
def test_non_tensor_argument_is_a_type_error_naming_it(backend_device, arg):
    backend, device = backend_device
    args = dict(real=torch.randn(3, 4, device=device), fake=torch.randn(3, 4, device=device),
                eps=torch.rand(3, device=device))
    args[arg] = 0.5
    with pytest.raises(TypeError, match=f"argument '{arg}' must be a Tensor"):
        ip.interpolate(args["real"], args["fake"], args["eps"], backend=backend)


@pytest.mark.parametrize("backend, device", KERNEL_PAIRS, ids=[f"{b}-{d}" for b, d in KERNEL_PAIRS])
def test_kernels_check_their_own_arguments(backend, device):
    """Called directly (no Python checks in front), the kernels refuse bad input with the argument's name."""
    suffix = "_triton" if backend == "triton" else ""
    _backend.resolve(OP, device, backend)
    ops = torch.ops.fastsn
    with pytest.raises(RuntimeError, match="argument 'fake' must have the shape of 'real'"):
        getattr(ops, "interpolate" + suffix)(torch.randn(3, 4, device=device), torch.randn(4, 3, device=device),
                                             torch.rand(3, device=device))
    with pytest.raises(RuntimeError, match=r"argument 'eps' must have shape \(2,\)"):
        getattr(ops, "interpolate_backward" + suffix)(torch.randn(2, 4, device=device), torch.rand(3, device=device))


@pytest.mark.parametrize("wide", [False, True], ids=["int32-offsets", "int64-offsets"])
def test_triton_offsets_of_either_width(monkeypatch, wide):
    """The Triton elementwise kernels take int32 offsets below 2^31 elements and int64 ones above (forced here on
    small tensors): both give the reference, for interpolate, its backward and bias_leaky_relu with a bias."""
    if "triton" not in _backend.available_backends("interpolate", "cpu"):
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")
    common = importlib.import_module("fastsn.triton_kernels._common")
    assert not common.wide_offsets(2**31 - 1024, 1024) and common.wide_offsets(2**31 - 1023, 1024)
    modules = [importlib.import_module(f"fastsn.triton_kernels.{name}") for name in ("interpolate", "bias_leaky_relu")]
    for module in modules:
        monkeypatch.setattr(module, "wide_offsets", lambda n, block: wide)
    real, fake, eps = torch.randn(3, 700), torch.randn(3, 700), torch.rand(3)
    torch.testing.assert_close(modules[0].interpolate_triton(real, fake, eps), ip.interpolate_ref(real, fake, eps))
    grad_real, grad_fake = modules[0].interpolate_backward_triton(real, eps)
    torch.testing.assert_close(grad_real, eps[:, None] * real)
    torch.testing.assert_close(grad_fake, (1 - eps[:, None]) * real)
    x, bias = torch.randn(2, 5, 300), torch.randn(5)
    blr = importlib.import_module("fastsn.ops.bias_leaky_relu")
    torch.testing.assert_close(modules[1].bias_leaky_relu_triton(x, bias, 1, 0.2, 1.5),
                               blr.bias_leaky_relu_ref(x, bias, 0.2, 1.5, 1))
