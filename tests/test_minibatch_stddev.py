"""minibatch_stddev on every backend x device against StyleGAN2's formula and its reference: values and gradients
for group and channel layouts (G = min(group_size, N), odd sizes, 2-D and 3-D inputs), gradcheck and gradgradcheck in
float64, the backward's own gradient, registration (opcheck), non-contiguous input, bad input; and MinibatchStdDev
under a gradient penalty and torch.compile."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import fastsn
from conftest import TOLERANCES, kernel_pairs
from fastsn import _backend

msd = importlib.import_module("fastsn.ops.minibatch_stddev")

OP = "minibatch_stddev"
KERNEL_PAIRS = kernel_pairs(OP)
# (x shape, group_size, num_channels): StyleGAN2's default, two statistics, a group larger than the batch, one
# sample, many statistics of 1x1 maps, an MLP's (N, C), a 1-D signal (N, C, L), a position count past one chunk
CASES = [((8, 4, 3, 3), 4, 1), ((6, 6, 2, 5), 3, 2), ((3, 4, 4, 4), 4, 1), ((1, 2, 3, 3), 4, 1),
         ((16, 8, 1, 1), 2, 4), ((10, 6), 5, 3), ((4, 3, 7), 2, 1), ((4, 2, 20, 20), 2, 1)]
CASE_IDS = [f"{'x'.join(map(str, s))}-g{g}-f{f}" for s, g, f in CASES]


def stylegan2_formula(x: torch.Tensor, group_size: int, num_channels: int) -> torch.Tensor:
    """StyleGAN2-ADA's minibatch std layer, written from its formula, for (N, C, H, W) in float64."""
    n, c, h, w = x.shape
    g = min(group_size, n)
    y = x.double().reshape(g, -1, num_channels, c // num_channels, h, w)
    y = y - y.mean(0)
    y = (y.square().mean(0) + 1e-8).sqrt()  # (M, F, C / F, H, W)
    y = y.mean(dim=[2, 3, 4]).reshape(-1, num_channels, 1, 1).repeat(g, 1, h, w)  # (N, F, H, W): row n % M
    return torch.cat([x.double(), y], 1)


def _close(actual, expected, dtype, scale=1.0):
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol * 4, atol=atol * 4 * scale)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forward_and_backward_match_reference(backend_device, dtype, case):
    backend, device = backend_device
    shape, group_size, num_channels = case
    x = torch.randn(shape, dtype=torch.float64).to(dtype).to(device)
    leaf, ref_leaf = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = msd.minibatch_stddev(leaf, group_size, num_channels, backend=backend)
    out_ref = msd.minibatch_stddev_ref(ref_leaf, group_size, num_channels)
    want_shape = (shape[0], shape[1] + num_channels) + shape[2:]
    assert out.shape == want_shape and out.dtype == dtype and out.is_contiguous()
    _close(out, out_ref, dtype, scale=4)
    grad = torch.randn_like(out)
    out.backward(grad)
    out_ref.backward(grad)
    _close(leaf.grad, ref_leaf.grad, dtype, scale=float(ref_leaf.grad.abs().max()) + 1)


@pytest.mark.parametrize("case", [c for c in CASES if len(c[0]) == 4], ids=lambda c: "x".join(map(str, c[0])))
def test_reference_is_stylegan2_formula(case):
    shape, group_size, num_channels = case
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(msd.minibatch_stddev_ref(x, group_size, num_channels),
                               stylegan2_formula(x, group_size, num_channels))


def test_two_dimensional_input_is_the_one_by_one_map():
    x = torch.randn(6, 4, dtype=torch.float64)
    expected = stylegan2_formula(x[..., None, None], 3, 2)[..., 0, 0]
    torch.testing.assert_close(msd.minibatch_stddev_ref(x, 3, 2), expected)


def test_non_contiguous_input(backend_device):
    backend, device = backend_device
    x = torch.randn(5, 3, 6, 4, device=device).permute(3, 1, 2, 0)  # (4, 3, 6, 5), not contiguous
    torch.testing.assert_close(msd.minibatch_stddev(x, 2, 1, backend=backend), msd.minibatch_stddev_ref(x, 2, 1))


def test_gradcheck_and_gradgradcheck_float64(backend_device):
    backend, device = backend_device
    x = torch.randn(4, 2, 1, 2, dtype=torch.float64, device=device, requires_grad=True)  # small: the interpreter

    def fn(inp):
        return msd.minibatch_stddev(inp, 2, 2, backend=backend)

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_backward_op_gradient_matches_autograd_of_reference(backend_device):
    backend, device = backend_device
    x = torch.randn(6, 4, 3, 3, dtype=torch.float64, device=device)
    g = torch.randn(6, 6, 3, 3, dtype=torch.float64, device=device)
    u = torch.randn(6, 4, 3, 3, dtype=torch.float64, device=device)
    results = []
    for use_backend in (backend, "ref"):
        xx, gg = x.clone().requires_grad_(), g.clone().requires_grad_()
        out = msd.minibatch_stddev(xx, 3, 2, backend=use_backend)
        (dx,) = torch.autograd.grad(out, xx, gg, create_graph=True)
        d_g, d_x = torch.autograd.grad((dx * u).sum(), (gg, xx), create_graph=True)
        (third,) = torch.autograd.grad(d_x.square().sum() + d_g.square().sum(), xx)
        results.append((dx, d_g, d_x, third))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend, device", KERNEL_PAIRS, ids=[f"{b}-{d}" for b, d in KERNEL_PAIRS])
def test_opcheck(backend, device):
    suffix = "_triton" if backend == "triton" else ""
    _backend.resolve(OP, device, backend)
    x = torch.randn(4, 4, 3, 3, device=device, requires_grad=True)
    grad = torch.randn(4, 6, 3, 3, device=device, requires_grad=True)
    torch.library.opcheck(getattr(torch.ops.fastsn, OP + suffix).default, (x, 2, 2))
    torch.library.opcheck(getattr(torch.ops.fastsn, OP + "_backward" + suffix).default, (grad, x, 2, 2))


BAD_ARGS = [
    (lambda d: (torch.randn(6, 4, 2, 2, device=d), 4, 1), "argument 'x' has batch size 6, which the group size"),
    (lambda d: (torch.randn(4, 5, 2, 2, device=d), 2, 2), r"argument 'num_channels' \(2\) must divide"),
    (lambda d: (torch.randn(4, device=d), 2, 1), "argument 'x' must be \\(N, C, ...\\)"),
    (lambda d: (torch.ones(4, 2, 2, 2, dtype=torch.int32, device=d), 2, 1), "argument 'x' must be float16"),
    (lambda d: (torch.randn(4, 2, 2, 2, device=d), 0, 1), "argument 'group_size' must be at least 1"),
    (lambda d: (torch.randn(4, 2, 2, 2, device=d), 2, 0), "argument 'num_channels' must be at least 1"),
    (lambda d: (torch.randn(4, 2, 0, 2, device=d), 2, 1), "argument 'x' must have at least one channel and position"),
]


@pytest.mark.parametrize("bad, message", BAD_ARGS, ids=[f"bad{i}" for i in range(len(BAD_ARGS))])
def test_bad_input_names_the_argument(backend_device, bad, message):
    backend, device = backend_device
    with pytest.raises(RuntimeError, match=message):
        msd.minibatch_stddev(*bad(device), backend=backend)


@pytest.mark.parametrize("group_size, num_channels", [(1.5, 1), (2.0, 1), (True, 1), (2, 1.0)], ids=str)
def test_non_int_sizes_are_a_type_error(backend_device, group_size, num_channels):
    """A float is not truncated by the kernels' int arguments; every backend refuses it alike."""
    backend, device = backend_device
    with pytest.raises(TypeError, match="must be an int"):
        msd.minibatch_stddev(torch.randn(4, 2, device=device), group_size, num_channels, backend=backend)


def test_integer_like_sizes_as_the_module_takes_them(backend_device):
    """numpy integers and integer 0-d tensors are sizes, as MinibatchStdDev (and StyleGAN2-ADA's layer) take them."""
    backend, device = backend_device
    x = torch.randn(4, 2, 3, device=device)
    want = msd.minibatch_stddev(x, 2, 1, backend=backend)
    for group_size in (np.int64(2), torch.tensor(2)):
        torch.testing.assert_close(msd.minibatch_stddev(x, group_size, np.int32(1), backend=backend), want)


@pytest.mark.parametrize("backend, device", KERNEL_PAIRS, ids=[f"{b}-{d}" for b, d in KERNEL_PAIRS])
def test_kernels_check_their_own_arguments(backend, device):
    suffix = "_triton" if backend == "triton" else ""
    _backend.resolve(OP, device, backend)
    forward = getattr(torch.ops.fastsn, OP + suffix)
    backward = getattr(torch.ops.fastsn, OP + "_backward" + suffix)
    with pytest.raises(RuntimeError, match="argument 'x' has batch size 6"):
        forward(torch.randn(6, 4, 2, 2, device=device), 4, 1)
    with pytest.raises(RuntimeError, match=r"argument 'grad' must have shape \[4, 5, 2, 2\]"):
        backward(torch.randn(4, 4, 2, 2, device=device), torch.randn(4, 4, 2, 2, device=device), 2, 1)


def test_module_is_stylegan2_layer_and_checks_its_arguments(backend_device):
    backend, device = backend_device
    layer = fastsn.nn.MinibatchStdDev()
    assert (layer.group_size, layer.num_channels) == (4, 1) and not list(layer.state_dict())
    x = torch.randn(8, 6, 4, 4, device=device)
    with fastsn.use_backend(backend):
        torch.testing.assert_close(layer(x), stylegan2_formula(x, 4, 1).float())
        torch.testing.assert_close(fastsn.nn.MinibatchStdDev(2, 3)(x), stylegan2_formula(x, 2, 3).float())
        with pytest.raises(RuntimeError, match="argument 'x' has batch size 6"):
            layer(x[:6])
    with pytest.raises(ValueError, match="argument 'group_size' must be a positive int"):
        fastsn.nn.MinibatchStdDev(0)
    for bad in (True, 2.0):
        with pytest.raises(ValueError, match="argument 'num_channels' must be a positive int"):
            fastsn.nn.MinibatchStdDev(4, bad)
    # integer sizes of other types, as StyleGAN2-ADA takes them (torch.as_tensor)
    assert fastsn.nn.MinibatchStdDev(torch.tensor(4), np.int64(1)).group_size == 4
    # group_size=None: the whole batch is one group (StyleGAN2-ADA)
    with fastsn.use_backend(backend):
        torch.testing.assert_close(fastsn.nn.MinibatchStdDev(None)(x[:6]), stylegan2_formula(x[:6], 6, 1).float())


class PlainStdDev(torch.nn.Module):
    def forward(self, x):
        return stylegan2_formula(x, 4, 1).to(x.dtype)


def _discriminator(layer: torch.nn.Module, device: str) -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, 1, 1), torch.nn.LeakyReLU(0.2), layer, torch.nn.Flatten(),
                               torch.nn.Linear(5 * 6 * 6, 1)).to(device)


def test_gradient_penalty_through_minibatch_stddev_matches_formula(backend_device):
    backend, device = backend_device
    ours, theirs = _discriminator(fastsn.nn.MinibatchStdDev(), device), _discriminator(PlainStdDev(), device)
    real, fake = torch.randn(8, 3, 6, 6, device=device), torch.randn(8, 3, 6, 6, device=device)
    with fastsn.use_backend(backend):
        penalty = fastsn.gradient_penalty(ours, real, fake, generator=torch.Generator(device).manual_seed(0))
        penalty.backward()
    expected = fastsn.gradient_penalty(theirs, real, fake, generator=torch.Generator(device).manual_seed(0))
    expected.backward()
    torch.testing.assert_close(penalty, expected, rtol=1e-4, atol=1e-5)
    for got, want in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_torch_compile_forward_backward(backend_device, compiler):
    backend, device = backend_device
    if compiler == "inductor" and backend != "cpu":
        pytest.skip("one inductor compile (cpu) is enough; aot_eager covers every backend")
    D = _discriminator(fastsn.nn.MinibatchStdDev(), device)
    x = torch.randn(8, 3, 6, 6, device=device)
    compiled = torch.compile(lambda inp: D(inp).sum(), backend=compiler, fullgraph=True)
    with fastsn.use_backend(backend):
        loss = compiled(x)
        expected = D(x).sum()
    grads = torch.autograd.grad(loss, list(D.parameters()))
    want = torch.autograd.grad(expected, list(D.parameters()))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    for got, exp in zip(grads, want):
        torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-5)
