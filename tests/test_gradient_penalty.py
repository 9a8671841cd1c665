"""fastsn.gradient_penalty and fastsn.nn.GradientPenalty against pure-autograd references that take each sample's
gradient on its own (so a norm over the whole batch, or one interpolation factor for all, cannot pass), through
discriminators with and without spectral norm on every backend, and the errors."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

import fastsn
import fastsn.nn.utils as fnu
from fastsn.nn.gradient_penalty import KINDS, penalty_inputs

OP = "spectral_norm"  # the backends exercised are those of the spectral-norm layers inside D


def mlp(sn=lambda m: m) -> torch.nn.Module:
    return torch.nn.Sequential(sn(torch.nn.Linear(2, 16)), torch.nn.LeakyReLU(0.2), sn(torch.nn.Linear(16, 16)),
                               torch.nn.Tanh(), sn(torch.nn.Linear(16, 1)))


def conv(sn=lambda m: m) -> torch.nn.Module:
    return torch.nn.Sequential(sn(torch.nn.Conv2d(3, 8, 3, 2, 1)), torch.nn.LeakyReLU(0.2),
                               sn(torch.nn.Conv2d(8, 8, 3, 2, 1)), torch.nn.Softplus(), torch.nn.Flatten(),
                               sn(torch.nn.Linear(8 * 2 * 2, 1)), torch.nn.Flatten(0))  # scores (B,)


DISCRIMINATORS = {"mlp": (mlp, (6, 2)), "conv": (conv, (5, 3, 8, 8))}


def reference_penalty(discriminator, x, kind, weight, center, convention="stylegan2"):
    """Each sample's input gradient taken alone (D has no batch interaction), then the penalty of the kind."""
    terms = []
    for i in range(x.shape[0]):
        xi = x[i:i + 1].detach().requires_grad_(True)
        (g,) = torch.autograd.grad(discriminator(xi).sum(), xi, create_graph=True)
        norm = torch.sqrt(g.pow(2).sum())
        if kind in ("r1", "r2"):
            terms.append(norm ** 2 * (weight / 2 if convention == "stylegan2" else weight))
        elif kind == "wgan-lp":
            terms.append(weight * torch.relu(norm - center) ** 2)
        else:
            terms.append(weight * (norm - center) ** 2)
    return torch.stack(terms).mean()


def _data(shape, dtype=torch.float32, device="cpu"):
    return torch.randn(shape, dtype=dtype, device=device), torch.randn(shape, dtype=dtype, device=device) + 0.5


def _param_grads(model):
    """Every parameter's gradient; zeros where the penalty sends none (e.g. the last bias)."""
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def _twins(factory, with_sn: bool, device):
    """D for fastsn and its pure-PyTorch twin with the same parameters (and u, v): torch's spectral norm in the twin.
    With spectral norm both are in eval mode, so u and v stay fixed and the per-sample reference sees D's sigma."""
    torch.manual_seed(0)
    if not with_sn:
        model = factory().double().to(device)
        return model, copy.deepcopy(model)
    model = factory(fastsn.spectral_norm).double().to(device).eval()
    twin = factory(torch.nn.utils.parametrizations.spectral_norm).double().to(device).eval()
    twin.load_state_dict(model.state_dict())
    return model, twin


@pytest.mark.parametrize("with_sn", [False, True], ids=["plain", "sn"])
@pytest.mark.parametrize("name", list(DISCRIMINATORS))
@pytest.mark.parametrize("kind", KINDS)
def test_value_and_parameter_gradients_match_per_sample_reference(backend_device, name, kind, with_sn):
    backend, device = backend_device
    factory, shape = DISCRIMINATORS[name]
    model, twin = _twins(factory, with_sn, device)
    real, fake = _data(shape, torch.float64, device)
    with fastsn.use_backend(backend):  # the penalty ops and D's spectral norms on this backend
        penalty = fastsn.gradient_penalty(model, real, fake, kind=kind, weight=3.0, center=0.7,
                                          generator=torch.Generator(device).manual_seed(7))
        penalty.backward()
    x = penalty_inputs((kind,), real, fake, torch.Generator(device).manual_seed(7))  # the same draws
    expected = reference_penalty(twin, x, kind, 3.0, 0.7)
    expected.backward()
    assert penalty.shape == () and penalty.dtype == torch.float64
    torch.testing.assert_close(penalty, expected)
    for got, want in zip(_param_grads(model), _param_grads(twin)):
        torch.testing.assert_close(got, want)


def test_interpolation_factor_is_drawn_per_sample():
    real, fake = _data((64, 3, 2, 2))
    x = penalty_inputs(("wgan-gp",), real, fake, torch.Generator().manual_seed(0))
    e = ((x - fake) / (real - fake)).flatten(1)  # (B, 12): one factor per sample, the same over its elements
    torch.testing.assert_close(e, e[:, :1].expand_as(e), rtol=1e-4, atol=1e-5)
    assert (e >= 0).all() and (e < 1).all() and e[:, 0].std() > 0.1


def test_dragan_perturbs_each_sample_within_half_a_std():
    real = torch.randn(32, 5)
    x = penalty_inputs(("dragan",), real, None, torch.Generator().manual_seed(0))
    delta = x - real
    assert (delta >= 0).all() and (delta < 0.5 * real.std()).all() and delta.abs().sum() > 0


def test_generator_makes_runs_reproducible():
    model = mlp()
    real, fake = _data((8, 2))
    a = fastsn.gradient_penalty(model, real, fake, generator=torch.Generator().manual_seed(3))
    b = fastsn.gradient_penalty(model, real, fake, generator=torch.Generator().manual_seed(3))
    c = fastsn.gradient_penalty(model, real, fake, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_r1_r2_batched_equals_two_passes():
    torch.manual_seed(0)
    model = conv().double()
    twin = copy.deepcopy(model)
    real, fake = _data((4, 3, 8, 8), torch.float64)
    both = fastsn.gradient_penalty(model, real, fake, kind=("r1", "r2"), weight=2.0)
    both.backward()
    separate = (fastsn.gradient_penalty(twin, real, fake, kind="r1", weight=2.0)
                + fastsn.gradient_penalty(twin, real, fake, kind="r2", weight=2.0))
    separate.backward()
    torch.testing.assert_close(both, separate)
    for got, want in zip(_param_grads(model), _param_grads(twin)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("layer", ["batchnorm", "minibatch_stddev", "minibatch_discrimination"])
def test_r1_r2_batched_warns_where_d_mixes_samples(layer):
    """One batch over cat([real, fake]) is r1 + r2 only for a D that treats samples independently: a layer known
    to mix them is named in a warning; BatchNorm in eval (running statistics) and plain layers give none."""
    torch.manual_seed(0)
    mixing = {"batchnorm": torch.nn.BatchNorm1d(4), "minibatch_stddev": fastsn.nn.MinibatchStdDev(2),
              "minibatch_discrimination": fastsn.nn.MinibatchDiscrimination(4, 1, 2)}[layer]
    width = 5 if layer != "batchnorm" else 4
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), mixing, torch.nn.Linear(width, 1))
    real, fake = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.warns(UserWarning, match=rf"its layer '1' \({type(mixing).__name__}\) mixes the samples"):
        fastsn.gradient_penalty(model, real, fake, kind=("r1", "r2"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastsn.gradient_penalty(model, real, fake, kind="r1")
        if layer == "batchnorm":
            fastsn.gradient_penalty(model.eval(), real, fake, kind=("r1", "r2"))


def test_r1_conventions():
    model = mlp()
    real, _ = _data((8, 2))
    stylegan2 = fastsn.gradient_penalty(model, real, kind="r1", weight=10.0)
    mescheder = fastsn.gradient_penalty(model, real, kind="r1", weight=10.0, convention="mescheder")
    torch.testing.assert_close(mescheder, 2 * stylegan2)


def test_fake_is_detached_no_gradient_reaches_the_generator():
    model = mlp()
    real, fake = _data((8, 2))
    fake.requires_grad_(True)
    fastsn.gradient_penalty(model, real, fake).backward()
    assert fake.grad is None


def test_grad_scaler_follows_the_amp_recipe():
    torch.manual_seed(0)
    model = mlp()
    twin = copy.deepcopy(model)
    real, fake = _data((8, 2))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    penalty = fastsn.gradient_penalty(model, real, fake, scaler=scaler, generator=torch.Generator().manual_seed(1))
    scaler.scale(penalty).backward()
    plain = fastsn.gradient_penalty(twin, real, fake, generator=torch.Generator().manual_seed(1))
    plain.backward()
    torch.testing.assert_close(penalty, plain, rtol=1e-5, atol=1e-6)  # unscaled before the norm
    for got, want in zip(_param_grads(model), _param_grads(twin)):
        torch.testing.assert_close(got / scaler.get_scale(), want, rtol=1e-4, atol=1e-6)


def test_double_backward_through_fastsn_spectral_norm_matches_torch(backend_device):
    """D built with fastsn spectral norms: the penalty and its parameter gradients equal those of the same D with
    torch's spectral norm (u, v updated identically by the one forward)."""
    backend, device = backend_device
    for name, (factory, shape) in DISCRIMINATORS.items():
        torch.manual_seed(1)
        ours = factory(fnu.parametrizations.spectral_norm)
        torch.manual_seed(1)
        reference = factory(torch.nn.utils.parametrizations.spectral_norm)
        reference.load_state_dict(ours.state_dict())
        ours, reference = ours.to(device), reference.to(device)
        real, fake = _data(shape, device=device)
        with fastsn.use_backend(backend):
            penalty = fastsn.gradient_penalty(ours, real, fake, generator=_gen(device, 5))
            penalty.backward()
        expected = fastsn.gradient_penalty(reference, real, fake, generator=_gen(device, 5))
        expected.backward()
        torch.testing.assert_close(penalty, expected, rtol=1e-4, atol=1e-5, msg=name)
        for got, want in zip(_param_grads(ours), _param_grads(reference)):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)


def _gen(device, seed):
    return torch.Generator(device=device).manual_seed(seed)


def test_half_precision_norms_accumulate_in_float32():
    model = mlp().to(torch.bfloat16)
    real, fake = _data((8, 2), torch.bfloat16)
    penalty = fastsn.gradient_penalty(model, real, fake, kind="r1")
    assert penalty.dtype == torch.float32 and torch.isfinite(penalty)


def test_lazy_regularization_applies_every_kth_call_scaled_by_k():
    model = mlp()
    real, fake = _data((8, 2))
    module = fastsn.nn.GradientPenalty("r1", weight=4.0, every=3)
    values = [module(model, real, fake) for _ in range(7)]
    full = fastsn.gradient_penalty(model, real, kind="r1", weight=4.0)
    for call, value in enumerate(values):
        if call % 3 == 0:
            torch.testing.assert_close(value, 3 * full)
            assert value.requires_grad
        else:
            assert value.item() == 0 and not value.requires_grad
    resumed = fastsn.nn.GradientPenalty("r1", weight=4.0, every=3)
    resumed.load_state_dict(module.state_dict())
    assert resumed.calls == 7 and resumed(model, real).item() == 0  # call 7: 7 % 3 != 0


@pytest.mark.parametrize("call, message", [
    (lambda d, r, f: fastsn.gradient_penalty(d, r, None), "needs argument 'fake'"),
    (lambda d, r, f: fastsn.gradient_penalty(d, None, f, kind="r1"), "needs argument 'real'"),
    (lambda d, r, f: fastsn.gradient_penalty(d, r, f[:, :1]), "same shape"),
    (lambda d, r, f: fastsn.gradient_penalty(d, r, f, kind="wgan"), "argument 'kind'"),
    (lambda d, r, f: fastsn.gradient_penalty(d, r, f, kind=("r1", "wgan-gp")), "combines only"),
    (lambda d, r, f: fastsn.gradient_penalty(d, r, f, kind="r1", convention="x"), "argument 'convention'"),
    (lambda d, r, f: fastsn.gradient_penalty(torch.nn.Linear(2, 2), r, f), r"one score per sample, shape \(8,\)"),
    (lambda d, r, f: fastsn.gradient_penalty(lambda x: x.sum(), r, f), "one score per sample"),
    (lambda d, r, f: fastsn.gradient_penalty(_Constant(), r, f), "does not depend on its input"),
    (lambda d, r, f: fastsn.gradient_penalty(d, r.long(), f), "floating-point"),
    (lambda d, r, f: fastsn.gradient_penalty(d, r[:0], f[:0]), "at least one sample"),
    (lambda d, r, f: fastsn.nn.GradientPenalty(every=0), "argument 'every'"),
    (lambda d, r, f: fastsn.gradient_penalty(lambda x: torch.zeros(x.shape[0]), r, f), "does not depend on its input"),
    (lambda d, r, f: fastsn.gradient_penalty(d, r.double(), f), "same dtype"),
    (lambda d, r, f: fastsn.gradient_penalty(d, r.double(), f, kind=("r1", "r2")), "same dtype"),
    (lambda d, r, f: fastsn.nn.GradientPenalty("r1", every=2)(d, None, None), "needs argument 'real' or 'fake'"),
    (lambda d, r, f: fastsn.nn.FusedLeakyReLU(4, True), "a bool"),
], ids=["no-fake", "no-real", "shapes", "kind", "combination", "convention", "scores-shape", "scalar-score",
        "no-path", "integer", "empty", "every", "no-graph", "dtypes", "dtypes-r1r2", "module-no-input",
        "fused-bool-slope"])
def test_bad_input_gets_a_clear_error(call, message):
    real, fake = _data((8, 2))
    with pytest.raises((ValueError, TypeError), match=message):
        call(mlp(), real, fake)


def test_grad_mode_off_gets_a_clear_error_before_d_runs():
    """Raised before D's forward, which may update buffers (a power iteration, batch statistics); a lazy
    GradientPenalty does not count the failed call."""
    real, fake = _data((8, 2))
    model = mlp()
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    module = fastsn.nn.GradientPenalty("r1")
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="needs grad mode"):
            fastsn.gradient_penalty(model, real, fake)
        with pytest.raises(RuntimeError, match="needs grad mode"):
            module(model, real)
    assert not calls and module.calls == 0


def test_discriminator_may_be_a_function():
    """Any callable D (a conditional D with its labels bound, a D behind augmentation), for every kind."""
    model = mlp()
    real, fake = _data((8, 2))
    for kind in ("wgan-gp", "r1", ("r1", "r2")):
        got = fastsn.gradient_penalty(lambda x: model(x), real, fake, kind=kind, generator=_gen("cpu", 0))
        torch.testing.assert_close(got, fastsn.gradient_penalty(model, real, fake, kind=kind,
                                                                generator=_gen("cpu", 0)))


def test_tensor_weight_gets_its_gradient(backend_device):
    """A weight given as a tensor (learned, or scheduled on the device) keeps its gradient on every backend: the
    kernels take the weight as a float, so the head runs with 1 and the tensor multiplies."""
    backend, device = backend_device
    model = mlp().to(device)
    real, fake = _data((8, 2))
    real, fake = real.to(device), fake.to(device)
    for kind, convention in (("wgan-gp", "stylegan2"), ("r1", "stylegan2"), ("r1", "mescheder")):
        weight = torch.tensor(3.0, device=device, requires_grad=True)
        with fastsn.use_backend(backend):
            penalty = fastsn.gradient_penalty(model, real, fake, kind=kind, weight=weight, convention=convention,
                                              generator=_gen(device, 0))
            unit = fastsn.gradient_penalty(model, real, fake, kind=kind, weight=1.0, convention=convention,
                                           generator=_gen(device, 0))
        (d_weight,) = torch.autograd.grad(penalty, weight)
        torch.testing.assert_close(penalty, 3 * unit.detach())
        torch.testing.assert_close(d_weight, unit.detach())


def test_dragan_std_divides_by_n():
    """DRAGAN's numpy code: std with the N divisor, so one element gives 0 (no perturbation), not torch.std's NaN."""
    real = torch.randn(4, 3)
    x = penalty_inputs(("dragan",), real, None, torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(real.shape, generator=generator)
    eps = torch.rand(4, generator=generator).view(4, 1)
    torch.testing.assert_close(x, real + eps * 0.5 * real.std(correction=0) * noise)
    one = torch.randn(1, 1)
    assert torch.equal(penalty_inputs(("dragan",), one, None), one)
    assert torch.isfinite(fastsn.gradient_penalty(torch.nn.Linear(1, 1), one, kind="dragan"))


class _Constant(torch.nn.Module):
    """Scores that ignore the input."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0]) * 1.0


# ---------------------------------------------------------------------------------------------------------------
# a plain nn.Sequential D: its activations on fastsn's op (fastsn/nn/_sequential_scores.py)
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture
def swapped(monkeypatch):
    """The slopes of the activations that gradient_penalty computed on fastsn's op."""
    from fastsn.nn import _sequential_scores
    slopes = []
    original = _sequential_scores.bias_leaky_relu

    def counting(x, bias, negative_slope, gain):
        slopes.append(negative_slope)
        return original(x, bias, negative_slope, gain)

    monkeypatch.setattr(_sequential_scores, "bias_leaky_relu", counting)
    return slopes


def _conv_d(inplace: bool = True) -> torch.nn.Sequential:
    """A DCGAN-like D: in-place activations after convs, one nested block, ReLU and LeakyReLU, a final Linear."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, 2, 1), torch.nn.LeakyReLU(0.2, inplace=inplace),
        torch.nn.Sequential(torch.nn.Conv2d(6, 6, 3, 1, 1), torch.nn.ReLU(inplace=inplace)),
        fastsn.spectral_norm(torch.nn.Conv2d(6, 4, 3, 2, 1)), torch.nn.LeakyReLU(0.1),
        torch.nn.Flatten(), torch.nn.Linear(4 * 2 * 2, 1))


@pytest.mark.parametrize("kind", ["wgan-gp", "r1", ("r1", "r2")], ids=["wgan-gp", "r1", "r1+r2"])
@pytest.mark.parametrize("inplace", [True, False], ids=["inplace", "out-of-place"])
def test_sequential_d_activations_on_fastsn_op_match_torch(backend_device, kind, inplace, swapped):
    backend, device = backend_device
    torch.manual_seed(0)
    model = _conv_d(inplace).double().to(device).eval()
    twin = copy.deepcopy(model)
    real, fake = _data((5, 3, 8, 8), torch.float64, device)
    with fastsn.use_backend(backend):
        penalty = fastsn.gradient_penalty(model, real, fake, kind=kind, weight=3.0, center=0.7,
                                          generator=torch.Generator(device).manual_seed(7))
        penalty.backward()
    kinds = kind if isinstance(kind, tuple) else (kind,)
    x = penalty_inputs(kinds, real, fake, torch.Generator(device).manual_seed(7))
    with fastsn.use_backend(backend):  # (the twin's spectral norm on the same backend)
        if len(kinds) == 1:
            expected = reference_penalty(twin, x, kind, 3.0, 0.7)
        else:
            expected = reference_penalty(twin, x[:5], "r1", 3.0, 0.7) + reference_penalty(twin, x[5:], "r2", 3.0, 0.7)
        expected.backward()
    torch.testing.assert_close(penalty, expected)
    for got, want in zip(model.parameters(), twin.parameters()):  # (None where torch leaves None)
        assert (got.grad is None) == (want.grad is None)
    for got, want in zip(_param_grads(model), _param_grads(twin)):
        torch.testing.assert_close(got, want)
    assert swapped == ([0.2, 0.0, 0.1] if backend != "ref" else [])  # (the reference keeps torch's activations)


def test_sequential_d_keeps_torch_activations_where_a_swap_could_be_observed(swapped):
    real, fake = _data((4, 3, 8, 8), torch.float64)
    # a forward hook that keeps a layer's output before an in-place activation: torch overwrites what it kept
    model = _conv_d().double()
    kept = []
    model[0].register_forward_hook(lambda module, args, out: kept.append((out, out.detach().clone())))
    fastsn.gradient_penalty(model, real, fake).backward()
    torch.testing.assert_close(kept[0][0].detach(), torch.nn.functional.leaky_relu(kept[0][1], 0.2))
    # hooks on an activation or on the Sequential (they run, as in D(x)), global hooks, a Sequential subclass, a
    # module of the user's (its forward might hook the tensors the activations' zeros would reach): D(x) as it is
    calls = []
    for make in (lambda m: m[1].register_forward_hook(lambda *a: calls.append("act")),
                 lambda m: m.register_forward_pre_hook(lambda *a: calls.append("seq"))):
        model = _conv_d().double()
        make(model)
        fastsn.gradient_penalty(model, real, fake).backward()
    assert calls == ["act", "seq"]
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        fastsn.gradient_penalty(_conv_d().double(), real, fake).backward()
    finally:
        handle.remove()

    class Subclass(torch.nn.Sequential):
        pass

    class Scale(torch.nn.Module):
        def forward(self, x):
            return 2 * x

    fastsn.gradient_penalty(Subclass(*_conv_d().double()), real, fake).backward()
    fastsn.gradient_penalty(torch.nn.Sequential(*_conv_d().double()[:2], Scale(), *_conv_d().double()[2:]), real,
                            fake).backward()
    assert swapped == []
    # a negative slope: torch's activation there
    negative = _conv_d().double().eval()  # (eval: the reference's forwards then see the same sigma)
    negative[1] = torch.nn.LeakyReLU(-0.3)
    twin = copy.deepcopy(negative)
    x = penalty_inputs(("wgan-gp",), real, fake, torch.Generator().manual_seed(3))
    penalty = fastsn.gradient_penalty(negative, real, fake, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(penalty, reference_penalty(twin, x, "wgan-gp", 10.0, 1.0))
    assert swapped == [0.0, 0.1]
    # an in-place activation on a tensor another layer holds (Tanh saves its output): torch's, and torch's error
    after_tanh = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, 2, 1), torch.nn.Tanh(), torch.nn.ReLU(inplace=True),
                                     torch.nn.Flatten(), torch.nn.Linear(64, 1)).double()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        fastsn.gradient_penalty(after_tanh, real, fake)


def test_sequential_d_in_place_activation_on_the_input_errors_as_torch():
    """An in-place activation first in D overwrites the penalty's input, a leaf that requires grad: torch refuses
    it, and so does the penalty (the activation is not swapped where its input is not D's own)."""
    model = torch.nn.Sequential(torch.nn.ReLU(inplace=True), torch.nn.Flatten(), torch.nn.Linear(12, 1))
    real = torch.randn(3, 12)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        fastsn.gradient_penalty(model, real, kind="r1")
