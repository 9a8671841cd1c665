"""minibatch_l1_similarity on every backend x device against the naive broadcast formula and its reference: values
for N from 1 to 130 (odd sizes), gradients, gradcheck and gradgradcheck in float64, the backward's own gradient,
registration (opcheck), non-contiguous input, bad input, bounded memory at N = 8192; and MinibatchDiscrimination
against torchgan's formula (state_dicts both ways), under a WGAN-GP penalty and under torch.compile."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastsn
from conftest import TOLERANCES, kernel_pairs
from fastsn import _backend

mls = importlib.import_module("fastsn.ops.minibatch_l1_similarity")  # the module (the package attribute is the op)

OP = "minibatch_l1_similarity"
# (N, B, C): one sample, two, odd sizes, a tile boundary and past it (kernels tile j by 32 and 256), C > 16 (the CUDA
# kernel's chunk of dims)
CASES = [(1, 3, 4), (2, 5, 3), (3, 4, 16), (17, 3, 5), (33, 2, 20), (130, 2, 5)]
CASE_IDS = ["x".join(map(str, c)) for c in CASES]
KERNEL_PAIRS = kernel_pairs(OP)


def naive(M: torch.Tensor) -> torch.Tensor:
    """The broadcast form in float64: (N, N, B, C) differences, the self pairs masked."""
    x = M.double()
    e = torch.exp(-(x[:, None] - x[None]).abs().sum(-1))  # (N, N, B)
    return (e * (1 - torch.eye(x.shape[0], dtype=x.dtype, device=x.device))[..., None]).sum(1)


def _close(actual, expected, dtype, scale=1.0):
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol * 4, atol=atol * 4 * scale)


def _sample(shape, dtype, device, spread=0.3):
    # spread 0.3: distances of a few units, so exp(-d) is neither all 1 nor all 0
    return (torch.randn(shape, dtype=torch.float64) * spread).to(dtype).to(device)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forward_and_backward_match_naive_and_reference(backend_device, dtype, case):
    backend, device = backend_device
    M = _sample(case, dtype, device)
    leaf, ref_leaf = M.clone().requires_grad_(), M.clone().requires_grad_()
    o = mls.minibatch_l1_similarity(leaf, backend=backend)
    assert o.shape == case[:2] and o.dtype == dtype
    scale = float(naive(M).abs().max()) + 1
    _close(o, naive(M), dtype, scale)
    o_ref = mls.minibatch_l1_similarity_ref(ref_leaf)
    grad = torch.randn_like(o)
    o.backward(grad)
    o_ref.backward(grad)
    _close(leaf.grad, ref_leaf.grad, dtype, scale=float(ref_leaf.grad.abs().max()) + 1)


def test_backward_is_the_derived_formula():
    """dM[i] = -sum_{j != i} (g_i + g_j) e_ij sign(M_i - M_j), written out as loops, against autograd of naive."""
    M = _sample((6, 2, 3), torch.float64, "cpu").requires_grad_()
    g = torch.randn(6, 2, dtype=torch.float64)
    naive(M).backward(g)
    x = M.detach()
    expected = torch.zeros_like(x)
    for i in range(6):
        for j in range(6):
            if i != j:
                e = torch.exp(-(x[i] - x[j]).abs().sum(-1))  # (B,)
                expected[i] -= ((g[i] + g[j]) * e)[:, None] * torch.sign(x[i] - x[j])
    torch.testing.assert_close(M.grad, expected)
    torch.testing.assert_close(mls.minibatch_l1_similarity_backward_ref(g, x), expected)


def test_one_sample_gives_zeros_and_two_give_their_similarity(backend_device):
    backend, device = backend_device
    assert torch.equal(mls.minibatch_l1_similarity(torch.randn(1, 4, 3, device=device), backend=backend),
                       torch.zeros(1, 4, device=device))
    M = torch.tensor([[[0.0, 1.0]], [[0.5, -1.0]]], device=device)  # |0 - 0.5| + |1 + 1| = 2.5
    out = mls.minibatch_l1_similarity(M, backend=backend)
    torch.testing.assert_close(out, torch.full((2, 1), torch.exp(torch.tensor(-2.5)).item(), device=device))


def test_similarity_down_to_the_smallest_normal_float(backend_device):
    """Distances up to 126 ln 2 = 87.3365 give exp(-d) as a normal float32, to 1 ulp (the CPU kernel's vectorized
    exp gave 0 beyond 87, where exp(-87.3) is still 1.2e-38)."""
    backend, device = backend_device
    distances = torch.linspace(86.5, 87.336, 40)
    M = torch.stack([torch.zeros(40), distances]).view(2, 40, 1).to(device)  # (2 samples, 40 kernels, 1 dim)
    out = mls.minibatch_l1_similarity(M, backend=backend)
    want = torch.exp(-distances.double()).float().expand(2, 40)
    assert want.min() >= torch.finfo(torch.float32).tiny
    torch.testing.assert_close(out.cpu(), want, rtol=2.5e-7, atol=0)


def test_non_contiguous_input(backend_device):
    backend, device = backend_device
    M = _sample((5, 3, 17), torch.float32, device).permute(2, 1, 0)  # (17, 3, 5), not contiguous
    assert not M.is_contiguous()
    leaf = M.clone().requires_grad_()
    out = mls.minibatch_l1_similarity(M, backend=backend)
    torch.testing.assert_close(out, naive(M).float())
    grad = torch.randn(17, 3, device=device).t().contiguous().t()  # non-contiguous upstream gradient too
    dm = getattr(torch.ops.fastsn, OP + "_backward" + ("_triton" if backend == "triton" else ""))(grad, M) \
        if backend != "ref" else mls.minibatch_l1_similarity_backward_ref(grad, M)
    mls.minibatch_l1_similarity_ref(leaf).backward(grad)
    torch.testing.assert_close(dm, leaf.grad)


def test_gradcheck_and_gradgradcheck_float64(backend_device):
    backend, device = backend_device
    M = _sample((5, 2, 3), torch.float64, device, spread=1.0).requires_grad_()

    def fn(m):
        return mls.minibatch_l1_similarity(m, backend=backend)

    assert torch.autograd.gradcheck(fn, (M,))
    assert torch.autograd.gradgradcheck(fn, (M,))


def test_backward_op_gradient_matches_autograd_of_reference(backend_device):
    """The backward op's registered gradient (in grad and M) equals autograd's through the reference formula, and the
    third order runs (the closed form is made of PyTorch ops)."""
    backend, device = backend_device
    M = _sample((7, 3, 4), torch.float64, device)
    g = torch.randn(7, 3, dtype=torch.float64, device=device)
    v = torch.randn(7, 3, 4, dtype=torch.float64, device=device)
    results = []
    for use_backend in (backend, "ref"):
        m, gg = M.clone().requires_grad_(), g.clone().requires_grad_()
        o = mls.minibatch_l1_similarity(m, backend=use_backend)
        (dm,) = torch.autograd.grad(o, m, gg, create_graph=True)
        d_g, d_m = torch.autograd.grad((dm * v).sum(), (gg, m), create_graph=True)
        (third,) = torch.autograd.grad(d_m.square().sum() + d_g.sum(), m)
        results.append((dm, d_g, d_m, third))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend, device", KERNEL_PAIRS, ids=[f"{b}-{d}" for b, d in KERNEL_PAIRS])
def test_opcheck(backend, device):
    """Schemas, fake kernels, autograd registrations and AOT dispatch agree."""
    suffix = "_triton" if backend == "triton" else ""
    _backend.resolve(OP, device, backend)  # imports the Triton kernels when needed
    M = torch.randn(5, 3, 4, device=device, requires_grad=True)
    grad = torch.randn(5, 3, device=device, requires_grad=True)
    torch.library.opcheck(getattr(torch.ops.fastsn, OP + suffix).default, (M,))
    torch.library.opcheck(getattr(torch.ops.fastsn, OP + "_backward" + suffix).default, (grad, M))


BAD_ARGS = [
    (lambda d: torch.ones(3, 4, 5, dtype=torch.int64, device=d), "argument 'M' must be float16"),
    (lambda d: torch.ones(3, 4, device=d), r"argument 'M' must be 3-D \(N, B, C\)"),
    (lambda d: torch.ones(3, 4, 5, 6, device=d), r"argument 'M' must be 3-D \(N, B, C\)"),
]


@pytest.mark.parametrize("bad, message", BAD_ARGS, ids=["dtype", "2d", "4d"])
def test_bad_input_names_the_argument(backend_device, bad, message):
    backend, device = backend_device
    with pytest.raises(RuntimeError, match=message):
        mls.minibatch_l1_similarity(bad(device), backend=backend)


@pytest.mark.parametrize("backend, device", KERNEL_PAIRS, ids=[f"{b}-{d}" for b, d in KERNEL_PAIRS])
def test_kernels_check_their_own_arguments(backend, device):
    """Called directly (no Python checks in front), the kernels refuse bad input with the argument's name."""
    suffix = "_triton" if backend == "triton" else ""
    _backend.resolve(OP, device, backend)
    forward = getattr(torch.ops.fastsn, OP + suffix)
    backward = getattr(torch.ops.fastsn, OP + "_backward" + suffix)
    M = torch.randn(4, 3, 2, device=device)
    with pytest.raises(RuntimeError, match=r"argument 'M' must be 3-D"):
        forward(torch.randn(4, 3, device=device))
    with pytest.raises(RuntimeError, match=r"argument 'grad' must have shape \(4, 3\)"):
        backward(torch.randn(4, 2, device=device), M)
    with pytest.raises(RuntimeError, match="argument 'grad' must have the dtype of 'M'"):
        backward(torch.randn(4, 3, dtype=torch.float64, device=device), M)


_LARGE_SCRIPT = """
import resource, sys, torch
import fastsn
torch.manual_seed(0)
M = torch.randn(8192, 100, 5) * 0.3
o = fastsn.ops.minibatch_l1_similarity(M, backend="cpu")
rows = [0, 1, 4095, 8191]
torch.save({"M": M, "rows": o[rows]}, sys.argv[1])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.skipif(_backend.unavailable_reason("cpu", OP, "cpu") is not None, reason="needs the C++ CPU kernels")
def test_large_batch_runs_in_bounded_memory_on_cpu(tmp_path):
    """N = 8192, B = 100, C = 5: the (N, N, B) distances alone would be 27 GB (the naive (N, N, B, C) 134 GB); the
    kernel runs in a fresh process whose peak resident memory stays under 2 GiB, and its rows match a direct sum."""
    out = tmp_path / "rows.pt"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", _LARGE_SCRIPT, str(out)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    peak_kib = int(run.stdout.split()[-1])
    assert peak_kib < 2 * 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
    saved = torch.load(out)
    M = saved["M"].double()
    for k, i in enumerate([0, 1, 4095, 8191]):
        e = torch.exp(-(M[i] - M).abs().sum(-1))  # (N, B): row i against every sample
        expected = e.sum(0) - e[i]
        torch.testing.assert_close(saved["rows"][k].double(), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# fastsn.nn.MinibatchDiscrimination
# ---------------------------------------------------------------------------------------------------------------

class TorchganFormula(torch.nn.Module):
    """torchgan's MinibatchDiscrimination1d as its formula (written from it here): T (in, out, intermediate); the
    (N, out, intermediate, N) broadcast of M against its transpose, exp of minus the L1 norms summed over every
    sample, minus 1 for the self term, divided by N - 1 when ``mean``."""

    def __init__(self, in_features: int, out_features: int, intermediate_features: int = 16, mean: bool = False):
        super().__init__()
        self.mean = mean
        self.T = torch.nn.Parameter(torch.randn(in_features, out_features, intermediate_features))

    def forward(self, x):
        n = x.shape[0]
        m = (x @ self.T.view(self.T.shape[0], -1)).view(n, self.T.shape[1], self.T.shape[2]).unsqueeze(3)
        norms = (m - m.permute(3, 1, 2, 0)).abs().sum(2)  # (N, out, N)
        o = torch.exp(-norms).sum(2) - 1
        if self.mean:
            o = o / (n - 1)
        return torch.cat([x, o], 1)


@pytest.mark.parametrize("mean", [False, True], ids=["sum", "mean"])
def test_module_matches_torchgan_and_loads_its_state_dict(backend_device, mean):
    backend, device = backend_device
    theirs = TorchganFormula(6, 5, 3, mean=mean).to(device)
    ours = fastsn.nn.MinibatchDiscrimination(6, 5, 3, mean=mean).to(device)
    assert list(ours.state_dict()) == ["T"] and ours.T.shape == (6, 5, 3)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(9, 6, device=device) * 0.1
    with fastsn.use_backend(backend):
        out = ours(x)
    assert out.shape == (9, 11)
    torch.testing.assert_close(out, theirs(x), rtol=1e-5, atol=1e-5)
    theirs.load_state_dict(ours.state_dict())  # and back


def test_module_init_bias_and_single_sample(backend_device):
    backend, device = backend_device
    torch.manual_seed(0)
    module = fastsn.nn.MinibatchDiscrimination(40, 30, 20, mean=True, bias=True).to(device)
    # improved-gan's MinibatchLayer starts its bias at -1
    assert list(module.state_dict()) == ["T", "bias"]
    assert torch.equal(module.bias, torch.full((30,), -1.0, device=device))
    T = module.T.detach()
    assert abs(float(T.mean())) < 0.05 and abs(float(T.std()) - 1) < 0.05  # N(0, 1)
    with torch.no_grad():
        module.bias.uniform_(-1, 1)
    x = torch.randn(5, 40, device=device) * 0.02
    with fastsn.use_backend(backend):
        out = module(x)
        single = module(x[:1])
    m = (x @ module.T.view(40, -1)).view(5, 30, 20)
    expected = naive(m).float() / 4 + module.bias
    torch.testing.assert_close(out[:, 40:], expected, rtol=1e-4, atol=1e-5)
    # one sample: no other sample, o = 0 (documented), then the bias
    torch.testing.assert_close(single, torch.cat([x[:1], module.bias[None]], 1))


def test_module_rejects_a_wrong_feature_count(backend_device):
    """RuntimeError, as torchgan's x.mm(T) raises for a wrong shape or dtype; T is not cast to x's dtype."""
    backend, device = backend_device
    module = fastsn.nn.MinibatchDiscrimination(6, 4).to(device)
    with pytest.raises(RuntimeError, match=r"argument 'x' must have shape \(N, 6\)"):
        module(torch.randn(3, 7, device=device))
    with pytest.raises(RuntimeError, match=r"argument 'x' must have shape \(N, 6\)"):
        module(torch.randn(3, 6, 1, device=device))
    with pytest.raises(ValueError, match="argument 'kernel_dims' must be a positive int"):
        fastsn.nn.MinibatchDiscrimination(6, 4, 0)
    with pytest.raises(RuntimeError, match="argument 'x' must be a floating-point tensor"):
        module(torch.ones(3, 6, dtype=torch.long, device=device))
    with pytest.raises(RuntimeError, match="same dtype"):
        module(torch.randn(3, 6, dtype=torch.float64, device=device))


@pytest.mark.parametrize("size", [np.int64(5), torch.tensor(5)], ids=["numpy", "tensor"])
def test_module_takes_integer_sizes_as_torch_modules_do(size):
    module = fastsn.nn.MinibatchDiscrimination(size, size, size)
    assert (module.in_features, module.out_features, module.kernel_dims) == (5, 5, 5)
    assert type(module.in_features) is int and module.T.shape == (5, 5, 5)
    for bad in (True, 5.0, "5"):
        with pytest.raises(ValueError, match="argument 'in_features' must be a positive int"):
            fastsn.nn.MinibatchDiscrimination(bad, 5)


def _discriminator(layer: torch.nn.Module, device: str) -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.LeakyReLU(0.2), layer, torch.nn.Linear(6 + 4, 1)).to(
        device)


def test_wgan_gp_through_minibatch_discrimination_matches_torchgan_formula(backend_device):
    """The double backward of a WGAN-GP penalty through D runs the backward op's own gradient: D's parameter
    gradients equal those through the plain broadcast formula."""
    backend, device = backend_device
    torch.manual_seed(0)
    theirs = _discriminator(TorchganFormula(6, 4, 3), device)
    ours = _discriminator(fastsn.nn.MinibatchDiscrimination(6, 4, 3), device)
    ours.load_state_dict(theirs.state_dict())
    real, fake = torch.randn(7, 8, device=device), torch.randn(7, 8, device=device)
    with fastsn.use_backend(backend):
        penalty = fastsn.gradient_penalty(ours, real, fake, kind="wgan-gp",
                                          generator=torch.Generator(device).manual_seed(0))
        penalty.backward()
    expected = fastsn.gradient_penalty(theirs, real, fake, kind="wgan-gp",
                                       generator=torch.Generator(device).manual_seed(0))
    expected.backward()
    torch.testing.assert_close(penalty, expected, rtol=1e-4, atol=1e-5)
    for (name, got), want in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_torch_compile_forward_backward(backend_device, compiler):
    backend, device = backend_device
    if compiler == "inductor" and backend != "cpu":
        pytest.skip("one inductor compile (cpu) is enough; aot_eager covers every backend")
    D = _discriminator(fastsn.nn.MinibatchDiscrimination(6, 4, 3), device)
    x = torch.randn(5, 8, device=device)

    def step(inp):
        return D(inp).sum()

    compiled = torch.compile(step, backend=compiler, fullgraph=True)
    with fastsn.use_backend(backend):  # read once, while tracing
        loss = compiled(x)
        expected = step(x)
    grads = torch.autograd.grad(loss, list(D.parameters()))
    want = torch.autograd.grad(expected, list(D.parameters()))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    for got, exp in zip(grads, want):
        torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-5)
