"""fastsn's two spectral-norm APIs against torch's, on every backend x device: the behaviours torch's own tests
assert (test_nn.py test_spectral_norm*, test_parametrization.py test_new_spectral_norm*), parity over training
steps on many layer kinds, checkpoints both ways, errors, pickling, deepcopy, torch.compile, conversion."""
from __future__ import annotations

import contextlib
import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

import fastsn
import fastsn.nn.utils as fnu
from fastsn import _backend
from conftest import TOLERANCES

OP = "spectral_norm"
APIS = ["parametrizations", "hook"]
TORCH_SN = {"parametrizations": torch.nn.utils.parametrizations.spectral_norm, "hook": torch.nn.utils.spectral_norm}
FASTSN_SN = {"parametrizations": fnu.parametrizations.spectral_norm, "hook": fnu.spectral_norm}


class Vector(torch.nn.Module):
    """A module with a 1-D weight: y = weight * x."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x


# (name, module factory, input factory)
LAYERS = [
    ("linear", lambda: torch.nn.Linear(7, 5), lambda: torch.randn(3, 7)),
    ("linear-1x1", lambda: torch.nn.Linear(1, 1), lambda: torch.randn(4, 1)),
    ("linear-wide", lambda: torch.nn.Linear(33, 1), lambda: torch.randn(2, 33)),
    ("conv1d", lambda: torch.nn.Conv1d(3, 4, 3), lambda: torch.randn(2, 3, 9)),
    ("conv2d", lambda: torch.nn.Conv2d(3, 6, (3, 2)), lambda: torch.randn(2, 3, 7, 6)),
    ("conv3d", lambda: torch.nn.Conv3d(2, 3, 2), lambda: torch.randn(1, 2, 4, 4, 3)),
    ("convtranspose2d", lambda: torch.nn.ConvTranspose2d(3, 5, 3), lambda: torch.randn(2, 3, 4, 4)),
    ("embedding", lambda: torch.nn.Embedding(11, 6), lambda: torch.randint(0, 11, (5,))),
    ("vector", lambda: Vector(6), lambda: torch.randn(6)),
]


def _twins(api: str, factory, seed: int = 0, **kwargs):
    """The same layer with torch's and with fastsn's spectral norm, initialized identically."""
    torch.manual_seed(seed)
    reference = factory()
    ours = copy.deepcopy(reference)
    torch.manual_seed(seed + 1)
    TORCH_SN[api](reference, **kwargs)
    torch.manual_seed(seed + 1)
    FASTSN_SN[api](ours, **kwargs)
    return reference, ours


def _buffers(module):
    return {k: v for k, v in module.state_dict().items() if k.endswith(("_u", "_v"))}


def _assert_close(a, b, dtype=torch.float32, scale=1.0):
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(a, b, rtol=max(rtol, 1e-4), atol=max(atol, 1e-5) * scale)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("layer", LAYERS, ids=[name for name, _, _ in LAYERS])
@pytest.mark.parametrize("iterations", [1, 3])
def test_training_steps_match_torch(backend_device, api, layer, iterations):
    backend, device = backend_device
    _, factory, inputs = layer  # "vector" with the hook API: a 1-D weight seen as an (h, 1) matrix
    reference, ours = _twins(api, factory, n_power_iterations=iterations)
    reference, ours = reference.to(device), ours.to(device)
    opt_ref = torch.optim.SGD(reference.parameters(), lr=0.1)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1)
    with fastsn.use_backend(backend):
        for _ in range(3):
            x = inputs().to(device)
            y_ref, y = reference(x), ours(x)
            _assert_close(y, y_ref)
            for key, value in _buffers(reference).items():
                _assert_close(_buffers(ours)[key], value)
            y_ref.square().sum().backward()
            y.square().sum().backward()
            for (pname, p_ref), p in zip(reference.named_parameters(), ours.parameters()):
                _assert_close(p.grad, p_ref.grad, scale=float(p_ref.grad.abs().max()) + 1)
            opt_ref.step(), opt_ours.step(), opt_ref.zero_grad(), opt_ours.zero_grad()
        reference.eval(), ours.eval()
        before = _buffers(ours)
        x = inputs().to(device)
        _assert_close(ours(x), reference(x))
        for key, value in _buffers(ours).items():
            assert torch.equal(value, before[key])  # no update in eval


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("grouped", [False, True], ids=["layer", "grouped"])
def test_channels_last_weight_keeps_its_layout_as_torch(backend_device, api, grouped):
    """W / sigma of a channels-last conv weight (model.to(memory_format=torch.channels_last)) has torch's strides,
    values and gradients; layer by layer and under grouped_spectral_norm."""
    backend, device = backend_device
    reference, ours = _twins(api, lambda: torch.nn.Conv2d(6, 8, 3))
    reference = reference.to(device, memory_format=torch.channels_last)
    ours = ours.to(device, memory_format=torch.channels_last)
    x = torch.randn(2, 6, 7, 7, device=device).to(memory_format=torch.channels_last)
    with fastsn.use_backend(backend), (fastsn.grouped_spectral_norm(ours) if grouped else contextlib.nullcontext()):
        weight, y = ours.weight, ours(x)
    # (each access is a training-mode forward, one power iteration, except in a block that caches it)
    with parametrize.cached() if grouped else contextlib.nullcontext():
        weight_ref, y_ref = reference.weight, reference(x)
    assert weight.stride() == weight_ref.stride()
    _assert_close(weight, weight_ref)
    _assert_close(y, y_ref)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    for p, p_ref in zip(ours.parameters(), reference.parameters()):
        _assert_close(p.grad, p_ref.grad, scale=float(p_ref.grad.abs().max()) + 1)


@pytest.mark.parametrize("api", APIS)
def test_state_dict_keys_and_checkpoints_both_ways(backend_device, api):
    backend, device = backend_device
    reference, ours = _twins(api, lambda: torch.nn.Conv2d(3, 4, 3))
    reference, ours = reference.to(device), ours.to(device)
    assert list(ours.state_dict().keys()) == list(reference.state_dict().keys())
    x = torch.randn(2, 3, 6, 6, device=device)
    with fastsn.use_backend(backend):
        reference(x), ours(x)  # one training step each
        fresh_ours = FASTSN_SN[api](torch.nn.Conv2d(3, 4, 3)).to(device)
        fresh_ref = TORCH_SN[api](torch.nn.Conv2d(3, 4, 3)).to(device)
        fresh_ours.load_state_dict(reference.state_dict())  # torch checkpoint -> fastsn
        fresh_ref.load_state_dict(ours.state_dict())  # fastsn checkpoint -> torch
        for module in (reference, ours, fresh_ours, fresh_ref):
            module.eval()
        _assert_close(fresh_ours(x), reference(x))
        _assert_close(fresh_ref(x), ours(x))
    if api == "hook":
        assert ours.state_dict()._metadata[""]["spectral_norm"] == {"weight.version": 1}


def test_hook_api_loads_checkpoints_older_than_version_1(backend_device):
    """A state dict without weight_v, with the normalized weight, and no version: v is solved on load."""
    backend, device = backend_device
    reference, ours = _twins("hook", lambda: torch.nn.Linear(5, 7))
    reference, ours = reference.to(device), ours.to(device)
    with fastsn.use_backend(backend):
        x = torch.randn(3, 5, device=device)
        reference(x)
        reference.eval()
        old = reference.state_dict()
        old["weight"] = reference.weight.detach().clone()
        del old["weight_v"]
        del old._metadata[""]["spectral_norm"]
        ours.load_state_dict(old)
        ours.eval()
        expected = torch.nn.utils.spectral_norm(torch.nn.Linear(5, 7)).to(device)
        expected.load_state_dict(old)
        expected.eval()
        _assert_close(ours.weight_v, expected.weight_v)
        _assert_close(ours(x), expected(x))


@pytest.mark.parametrize("api", APIS)
def test_dim_defaults(api):
    """ConvTranspose uses dim 1, everything else dim 0 (torch's test_spectral_norm_dim)."""
    for module, dim in [(torch.nn.ConvTranspose2d(3, 4, (5, 6)), 1), (torch.nn.Conv2d(3, 4, 5), 0)]:
        FASTSN_SN[api](module)
        weight = module.parametrizations.weight.original if api == "parametrizations" else module.weight_orig
        u = module.parametrizations.weight[0]._u if api == "parametrizations" else module.weight_u
        assert u.shape == (weight.shape[dim],)


def test_parametrization_forward_is_the_power_iteration_formula(backend_device):
    """torch's test_new_spectral_norm_forward: one step computed by hand gives the same weight and u, v."""
    backend, device = backend_device
    module = fnu.parametrizations.spectral_norm(torch.nn.Linear(5, 7)).to(device)
    sn = module.parametrizations.weight[0]
    u, v = sn._u.clone(), sn._v.clone()
    weight = module.parametrizations.weight.original.detach()
    with fastsn.use_backend(backend):
        out = module.weight
    u = F.normalize(weight @ v, dim=0, eps=1e-12)
    v = F.normalize(weight.t() @ u, dim=0, eps=1e-12)
    _assert_close(sn._u, u)
    _assert_close(sn._v, v)
    _assert_close(out, weight / torch.dot(u, weight @ v))


def test_hook_forward_is_the_power_iteration_formula(backend_device):
    """torch's test_spectral_norm_forward: v then u, then weight / (u . W v)."""
    backend, device = backend_device
    module = fnu.spectral_norm(torch.nn.Linear(5, 7)).to(device)
    u, v = module.weight_u.clone(), module.weight_v.clone()
    weight = module.weight_orig.detach()
    with fastsn.use_backend(backend):
        module(torch.randn(2, 5, device=device))
    v = F.normalize(weight.t() @ u, dim=0, eps=1e-12)
    u = F.normalize(weight @ v, dim=0, eps=1e-12)
    _assert_close(module.weight_u, u)
    _assert_close(module.weight, weight / torch.dot(u, weight @ v))


def test_converges_to_the_largest_singular_value(backend_device):
    """torch's test_new_spectral_norm_value: a weight with known singular values ends up divided by the largest."""
    backend, device = backend_device
    q1, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    weight = q1[:, :4] @ torch.diag(torch.tensor([5.0, 2.0, 1.0, 0.5], dtype=torch.float64)) @ q2.t()
    module = torch.nn.Linear(4, 6, bias=False).double()
    with torch.no_grad():
        module.weight.copy_(weight)
    fnu.parametrizations.spectral_norm(module)
    module.to(device)
    with fastsn.use_backend(backend):
        for _ in range(20):
            normalized = module.weight
    torch.testing.assert_close(normalized.cpu(), weight / 5.0, rtol=1e-6, atol=1e-8)
    assert abs(float(fastsn.spectral_norms(module)[""]) - 5.0) < 1e-8


@pytest.mark.parametrize("api", APIS)
def test_two_forwards_then_one_backward(backend_device, api):
    """D(real) - D(fake) then backward: the in-place u, v updates must not break the first graph."""
    backend, device = backend_device
    reference, ours = _twins(api, lambda: torch.nn.Linear(6, 1))
    reference, ours = reference.to(device), ours.to(device)
    real, fake = torch.randn(4, 6, device=device), torch.randn(4, 6, device=device)
    with fastsn.use_backend(backend):
        (ours(real).mean() - ours(fake).mean()).backward()
        (reference(real).mean() - reference(fake).mean()).backward()
    for p, p_ref in zip(ours.parameters(), reference.parameters()):
        _assert_close(p.grad, p_ref.grad)


@pytest.mark.parametrize("api", APIS)
def test_pickle_and_deepcopy(backend_device, api):
    """The hook API pickles (torch's test_spectral_norm_pickle); parametrized modules refuse to, as in torch."""
    backend, device = backend_device
    module = FASTSN_SN[api](torch.nn.Linear(5, 3)).to(device).eval()
    copied = copy.deepcopy(module)  # before a forward: the hook API's computed weight is no graph leaf after it
    x = torch.randn(2, 5, device=device)
    with fastsn.use_backend(backend):
        expected = module(x)
        torch.testing.assert_close(copied(x), expected)
        if api == "parametrizations":
            with pytest.raises(RuntimeError, match="only supported through state_dict"):
                pickle.dumps(module)
            return
        clone = pickle.loads(pickle.dumps(module))
        assert isinstance(clone, torch.nn.Linear)
        torch.testing.assert_close(clone(x), expected)
        buffer = io.BytesIO()
        torch.save(module, buffer)
        buffer.seek(0)
        torch.testing.assert_close(torch.load(buffer, weights_only=False)(x), expected)


@pytest.mark.parametrize("api", APIS)
def test_jit_trace_saves_and_loads(backend_device, api):
    """torch.jit.trace records the registered ops (not the eager autograd.Function, a Python call that
    torch.jit.save cannot export), so a traced model with fastsn's spectral norm and activation saves and loads, in
    grad mode as torch's does; the loaded model gives the same output."""
    backend, device = backend_device
    torch.manual_seed(0)
    model = torch.nn.Sequential(FASTSN_SN[api](torch.nn.Linear(5, 4)), fastsn.nn.FusedLeakyReLU(4),
                                fastsn.nn.LeakyReLU(0.2), FASTSN_SN[api](torch.nn.Linear(4, 1))).to(device).eval()
    x = torch.randn(3, 5, device=device)
    with fastsn.use_backend(backend):
        expected = model(x)
        traced = torch.jit.trace(model, (x,), check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    with fastsn.use_backend(backend):
        torch.testing.assert_close(torch.jit.load(buffer)(x), expected)


@pytest.mark.parametrize("grouped", [False, True], ids=["layer", "grouped"])
def test_power_iteration_bumps_the_version_of_u_and_v(backend_device, grouped):
    """As torch's in-place updates: a graph that saved u (here a user's own sigma) refuses to backward after a
    training forward updated it, instead of a gradient from the new u (the kernels bumped no version counter)."""
    backend, device = backend_device
    torch.manual_seed(0)
    model = torch.nn.Sequential(FASTSN_SN["parametrizations"](torch.nn.Linear(5, 4))).to(device)
    function, weight = model[0].parametrizations.weight[0], model[0].parametrizations.weight.original
    sigma = torch.dot(function._u, weight @ function._v)
    before = function._u._version, function._v._version
    with fastsn.use_backend(backend):
        if grouped:
            with fastsn.grouped_spectral_norm(model):
                model(torch.randn(3, 5, device=device))
        else:
            model(torch.randn(3, 5, device=device))
    assert function._u._version > before[0] and function._v._version > before[1]
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        sigma.backward()


def _raised(call):
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the point is to compare whatever is raised
        return type(exc), str(exc)
    return None


ERROR_CASES = [
    ("n_power_iterations=0", lambda sn: sn(torch.nn.Linear(3, 4), n_power_iterations=0)),
    ("n_power_iterations=-1", lambda sn: sn(torch.nn.Linear(3, 4), n_power_iterations=-1)),
    ("missing name", lambda sn: sn(torch.nn.Linear(3, 4), name="nope")),
    ("dim out of range", lambda sn: sn(torch.nn.Linear(3, 4), dim=2)),
    ("dim too negative", lambda sn: sn(torch.nn.Linear(3, 4), dim=-3)),
    ("uninitialized", lambda sn: sn(torch.nn.LazyLinear(4))),
    ("twice", lambda sn: sn(sn(torch.nn.Linear(3, 4)))),
    ("fractional iterations", lambda sn: sn(torch.nn.Linear(3, 4), n_power_iterations=1.5)(torch.randn(2, 3))),
]


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("case", ERROR_CASES, ids=[name for name, _ in ERROR_CASES])
def test_errors_match_torch(api, case):
    _, call = case
    expected = _raised(lambda: call(TORCH_SN[api]))
    assert _raised(lambda: call(FASTSN_SN[api])) == expected


def test_hook_errors_across_libraries():
    module = fnu.spectral_norm(torch.nn.Linear(3, 4))
    with pytest.raises(RuntimeError, match="Cannot register two spectral_norm hooks"):
        torch.nn.utils.spectral_norm(module)  # torch sees fastsn's hook too
    with pytest.raises(ValueError, match="spectral_norm of 'weight' not found"):
        fnu.remove_spectral_norm(torch.nn.Linear(3, 4))


@pytest.mark.parametrize("remove", [fnu.remove_spectral_norm, torch.nn.utils.remove_spectral_norm],
                         ids=["fastsn", "torch"])
def test_remove_hook(backend_device, remove):
    backend, device = backend_device
    module = fnu.spectral_norm(torch.nn.Linear(5, 7)).to(device)
    with fastsn.use_backend(backend):
        module(torch.randn(2, 5, device=device))
        module.eval()
        module(torch.randn(1, 5, device=device))
        normalized = module.weight.detach().clone()
        remove(module)
    assert isinstance(module.weight, torch.nn.Parameter) and not hasattr(module, "weight_orig")
    assert not hasattr(module, "weight_u") and not module._forward_pre_hooks
    _assert_close(module.weight, normalized)


def test_remove_parametrization(backend_device):
    backend, device = backend_device
    module = fnu.parametrizations.spectral_norm(torch.nn.Linear(5, 7)).to(device).eval()
    with fastsn.use_backend(backend):
        normalized = module.weight.detach().clone()
        parametrize.remove_parametrizations(module, "weight")
    assert not parametrize.is_parametrized(module)
    _assert_close(module.weight, normalized)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("eps", [0.0, -1.0])
def test_any_eps_as_torch(backend_device, api, eps):
    """torch takes any eps (the floor max(norm, eps) of F.normalize; eps <= 0 is no floor): so does fastsn."""
    backend, device = backend_device
    reference, ours = _twins(api, lambda: torch.nn.Linear(5, 3), eps=eps)
    reference, ours = reference.to(device), ours.to(device)
    x = torch.randn(2, 5, device=device)
    for _ in range(2):
        with fastsn.use_backend(backend):
            got = ours(x)
        _assert_close(got, reference(x))


def test_zero_weight_gives_zero_not_nan(backend_device):
    """The one deliberate difference from torch, which returns NaN here."""
    backend, device = backend_device
    for api in APIS:
        module = FASTSN_SN[api](torch.nn.Linear(3, 4)).to(device)
        with torch.no_grad():
            (module.parametrizations.weight.original if api == "parametrizations" else module.weight_orig).zero_()
        with fastsn.use_backend(backend):
            y = module(torch.randn(2, 3, device=device))
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("transform", ["jacrev", "vmap", "jvp", "grad", "grad-of-parameters"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_torch_func_transforms_match_torch(api, transform, training):
    """torch.func transforms run through fastsn layers as through torch's, in training mode too, where the power
    iteration writes u and v in place (under them, auto takes the reference: they cannot run the autograd of ops
    defined in C++)."""
    reference, ours = _twins(api, lambda: torch.nn.Linear(4, 3).double())
    x = torch.randn(2, 4, dtype=torch.float64)
    batch = torch.randn(5, 2, 4, dtype=torch.float64)
    results = []
    for module in (reference, ours):
        module.train(training)
        if transform == "jacrev":
            results.append(torch.func.jacrev(module)(x))
        elif transform == "vmap":
            results.append(torch.vmap(module)(batch))
        elif transform == "jvp":
            results.append(torch.func.jvp(module, (x,), (torch.ones_like(x),))[1])
        elif transform == "grad":
            results.append(torch.func.grad(lambda x: module(x).square().sum())(x))
        else:
            params = dict(module.named_parameters())
            grads = torch.func.grad(lambda p: torch.func.functional_call(module, p, (x,)).square().sum())(params)
            results.append(grads[sorted(grads)[0]])
        results.append(dict(module.named_buffers()))
    torch.testing.assert_close(results[2], results[0])
    torch.testing.assert_close(results[3], results[1])


@pytest.mark.parametrize("api", APIS)
@pytest.mark.filterwarnings("ignore:Complex modules")
def test_complex_weights_as_torch(api):
    """Complex weights (which the kernels do not take) give torch's outputs, gradients and u, v; in a grouped
    block too; spectral_norms reports torch's complex sigma."""
    reference, ours = _twins(api, lambda: torch.nn.Linear(5, 3).to(torch.complex128))
    x = torch.randn(2, 5, dtype=torch.complex128)
    for step in range(3):
        with fastsn.grouped_spectral_norm(ours) if step == 2 else parametrize.cached():
            y = ours(x)
        y_ref = reference(x)
        y.abs().sum().backward(), y_ref.abs().sum().backward()
        torch.testing.assert_close(y, y_ref)
    for p, p_ref in zip(ours.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad)
    for key, value in _buffers(reference).items():
        torch.testing.assert_close(_buffers(ours)[key], value)
    weight = ours.parametrizations.weight.original if api == "parametrizations" else ours.weight_orig
    u, v = _buffers(ours).values()
    expected = (torch.vdot if api == "parametrizations" else torch.dot)(u, weight.detach() @ v)
    torch.testing.assert_close(fastsn.spectral_norms(ours)[""], expected)


def _discriminator():
    return torch.nn.Sequential(
        torch.nn.utils.parametrizations.spectral_norm(torch.nn.Conv2d(3, 8, 3)), torch.nn.LeakyReLU(0.2),
        torch.nn.utils.spectral_norm(torch.nn.Conv2d(8, 4, 3, stride=2)), torch.nn.LeakyReLU(0.2),
        torch.nn.Flatten(), torch.nn.utils.parametrizations.spectral_norm(torch.nn.Linear(4 * 3 * 3, 1)))


def test_convert_spectral_norm_matches_the_unconverted_model(backend_device):
    backend, device = backend_device
    torch.manual_seed(0)
    reference = _discriminator().to(device)
    ours = fastsn.convert_spectral_norm(copy.deepcopy(reference))
    assert ours.state_dict().keys() == reference.state_dict().keys()
    assert isinstance(ours[0].parametrizations.weight[0], fnu.parametrizations._SpectralNorm)
    hook = ours[2]._forward_pre_hooks[next(iter(ours[2]._forward_pre_hooks))]
    assert isinstance(hook, fnu.spectral_norm.__globals__["SpectralNorm"])
    opt_ref = torch.optim.SGD(reference.parameters(), lr=0.05)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.05)
    with fastsn.use_backend(backend):
        for _ in range(3):
            x = torch.randn(4, 3, 9, 9, device=device)
            y_ref, y = reference(x), ours(x)
            _assert_close(y, y_ref)
            y_ref.sum().backward(), y.sum().backward()
            for p, p_ref in zip(ours.parameters(), reference.parameters()):
                _assert_close(p.grad, p_ref.grad)
            opt_ref.step(), opt_ours.step(), opt_ref.zero_grad(), opt_ours.zero_grad()
    for key, value in reference.state_dict().items():
        _assert_close(ours.state_dict()[key], value)


def test_convert_spectral_norm_keeps_the_objects_and_their_hooks():
    """Conversion changes the class of torch's parametrization and hook objects in place: a forward hook on the
    parametrization and attributes set on either still work, and the hook API's state_dict hooks (which hold the
    hook object) keep saving and loading."""
    torch.manual_seed(0)
    model = _discriminator()
    function = model[0].parametrizations.weight[0]
    hook = next(iter(model[2]._forward_pre_hooks.values()))
    function.note = hook.note = "kept"
    calls = []
    function.register_forward_hook(lambda module, args, out: calls.append(out.shape))
    saved = copy.deepcopy(model.state_dict())
    fastsn.convert_spectral_norm(model)
    assert model[0].parametrizations.weight[0] is function and type(function) is fnu.parametrizations._SpectralNorm
    assert type(hook).__module__ == "fastsn.nn.utils.spectral_norm" and function.note == hook.note == "kept"
    model(torch.randn(2, 3, 9, 9))
    assert calls == [model[0].parametrizations.weight.original.shape]
    model.load_state_dict(saved)
    assert model.state_dict()["2.weight_u"].equal(saved["2.weight_u"])
    assert model.state_dict()._metadata["2"]["spectral_norm"] == {"weight.version": 1}


def test_spectral_norms_reads_every_layer_without_updating(backend_device):
    backend, device = backend_device
    model = _discriminator().to(device)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with fastsn.use_backend(backend):
        sigmas = fastsn.spectral_norms(model)
    assert sorted(sigmas) == ["0", "2", "5"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    weight = model[0].parametrizations.weight.original.detach().flatten(1)
    sn = model[0].parametrizations.weight[0]
    _assert_close(sigmas["0"], torch.dot(sn._u, weight @ sn._v))


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("grouped", [False, True], ids=["layer", "grouped"])
def test_negative_iterations_set_later_run_none_as_torch(backend_device, api, grouped):
    """Registration refuses n_power_iterations <= 0; set to a negative count afterwards, torch's range() runs no
    iteration, and so does fastsn (it raised)."""
    backend, device = backend_device
    reference, ours = _twins(api, lambda: torch.nn.Linear(6, 3))
    reference, ours = reference.to(device), ours.to(device)
    x = torch.randn(2, 6, device=device)
    for module in (reference, ours):
        fn = module.parametrizations.weight[0] if api == "parametrizations" else next(
            iter(module._forward_pre_hooks.values()))
        fn.n_power_iterations = -1
    with fastsn.use_backend(backend), (fastsn.grouped_spectral_norm(ours) if grouped else contextlib.nullcontext()):
        y = ours(x)
    _assert_close(y, reference(x))
    for key, value in _buffers(reference).items():
        _assert_close(_buffers(ours)[key], value)


@pytest.mark.parametrize("sn", [TORCH_SN["parametrizations"], FASTSN_SN["parametrizations"]], ids=["torch", "fastsn"])
def test_spectral_norms_of_chained_spectral_norms(backend_device, sn):
    """Two spectral norms chained on one weight (the parametrizations API takes that): each reported under its own
    key, the second from the first's output computed without a power iteration (u and v unchanged)."""
    backend, device = backend_device
    torch.manual_seed(0)
    model = sn(sn(torch.nn.Linear(5, 4))).to(device)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with fastsn.use_backend(backend):
        sigmas = fastsn.spectral_norms(model)
    assert sorted(sigmas) == ["", "1"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    first, second = model.parametrizations.weight
    with torch.no_grad():
        first.eval()
        normalized = first(model.parametrizations.weight.original)
    _assert_close(sigmas["1"], torch.dot(second._u, normalized @ second._v))


@pytest.mark.parametrize("api", APIS)
def test_torch_compile_fullgraph(backend_device, api):
    backend, device = backend_device
    reference, ours = _twins(api, lambda: torch.nn.Linear(6, 3))
    reference, ours = reference.to(device), ours.to(device)
    compiled = torch.compile(ours, backend="aot_eager", fullgraph=True)
    with fastsn.use_backend(backend):
        for _ in range(2):
            x = torch.randn(4, 6, device=device)
            y, y_ref = compiled(x), reference(x)
            _assert_close(y, y_ref)
            for key, value in _buffers(reference).items():
                _assert_close(_buffers(ours)[key], value)  # the in-place updates survive compilation
            y.sum().backward(), y_ref.sum().backward()
            for p, p_ref in zip(ours.parameters(), reference.parameters()):
                _assert_close(p.grad, p_ref.grad)


def _fastsn_discriminator():
    return torch.nn.Sequential(
        fnu.parametrizations.spectral_norm(torch.nn.Conv2d(3, 8, 3)), torch.nn.LeakyReLU(0.2),
        fnu.spectral_norm(torch.nn.ConvTranspose2d(8, 4, 3, stride=2)), torch.nn.LeakyReLU(0.2),
        torch.nn.Flatten(), fnu.spectral_norm(Vector(4 * 15 * 15), n_power_iterations=2),
        fnu.parametrizations.spectral_norm(torch.nn.Linear(4 * 15 * 15, 1)))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_grouped_matches_layer_by_layer_under_cached(backend_device, mode):
    """Same outputs, u/v updates (once per block) and gradients as parametrize.cached() layer by layer, with
    two forwards (D(real), D(fake)) in each block."""
    backend, device = backend_device
    torch.manual_seed(0)
    reference = _fastsn_discriminator().to(device)
    ours = copy.deepcopy(reference)
    if mode == "eval":
        reference.eval(), ours.eval()
    with fastsn.use_backend(backend):
        for _ in range(2):
            real, fake = torch.randn(2, 3, 9, 9, device=device), torch.randn(2, 3, 9, 9, device=device)
            with parametrize.cached():
                # the hook API has no cache: give its layers the grouped block's single update by hand
                y_ref = reference(real)
                hooks_off = [m for m in reference.modules() if m._forward_pre_hooks]
                saved = [m.training for m in hooks_off]
                for m in hooks_off:
                    m.training = False
                loss_ref = y_ref.mean() - reference(fake).mean()
                for m, flag in zip(hooks_off, saved):
                    m.training = flag
            with fastsn.grouped_spectral_norm(ours):
                y = ours(real)
                loss = y.mean() - ours(fake).mean()
            _assert_close(y, y_ref)
            loss_ref.backward(), loss.backward()
            for p, p_ref in zip(ours.parameters(), reference.parameters()):
                _assert_close(p.grad, p_ref.grad, scale=float(p_ref.grad.abs().max()) + 1)
            for b, b_ref in zip(ours.buffers(), reference.buffers()):
                _assert_close(b, b_ref)


def test_grouped_leaves_unused_weights_without_gradient(backend_device):
    """A spectral-norm weight not used in the block gets no gradient (.grad None, as layer by layer), so an
    optimizer does not step it; the used ones get theirs."""
    backend, device = backend_device
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"used": fnu.parametrizations.spectral_norm(torch.nn.Linear(4, 3)),
                                 "unused": fnu.parametrizations.spectral_norm(torch.nn.Linear(4, 3)),
                                 "unused_hook": fnu.spectral_norm(torch.nn.Linear(4, 3))}).to(device)
    reference = copy.deepcopy(model)
    x = torch.randn(2, 4, device=device)
    with fastsn.use_backend(backend):
        with fastsn.grouped_spectral_norm(model):
            model["used"](x).sum().backward()
        with parametrize.cached():
            reference["used"](x).sum().backward()
    assert model["unused"].parametrizations.weight.original.grad is None
    assert model["unused_hook"].weight_orig.grad is None
    _assert_close(model["used"].parametrizations.weight.original.grad,
                  reference["used"].parametrizations.weight.original.grad)


def test_grouped_leaves_torch_spectral_norms_alone(backend_device):
    backend, device = backend_device
    model = torch.nn.Sequential(torch.nn.utils.parametrizations.spectral_norm(torch.nn.Linear(4, 4)),
                                fnu.parametrizations.spectral_norm(torch.nn.Linear(4, 2))).to(device)
    with fastsn.use_backend(backend), fastsn.grouped_spectral_norm(model) as inside:
        assert inside is model
        y = model(torch.randn(3, 4, device=device))
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


class _Double(torch.nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * 2.0


@pytest.mark.parametrize("case", ["torch", "chained", "buffer"])
def test_grouped_caches_what_it_leaves_out_as_cached_does(backend_device, case):
    """Spectral norms the grouped ops leave out (torch's, one chained after another parametrization, one on a
    buffer) are computed once per block, as under parametrize.cached(): two forwards see one power iteration."""
    backend, device = backend_device
    outputs = []
    for grouped in (False, True):
        torch.manual_seed(0)
        layer = torch.nn.Linear(6, 5)
        if case == "chained":
            parametrize.register_parametrization(layer, "weight", _Double())
        if case == "buffer":
            weight = layer.weight.detach().clone()
            del layer.weight
            layer.register_buffer("weight", weight)
        (TORCH_SN if case == "torch" else FASTSN_SN)["parametrizations"](layer)
        function = layer.parametrizations.weight[-1]
        with torch.no_grad():  # far from converged (registration ran 15 iterations), so that each one shows
            function._u.copy_(F.normalize(torch.randn(5), dim=0))
            function._v.copy_(F.normalize(torch.randn(6), dim=0))
        layer.to(device)
        x = torch.randn(3, 6, device=device)
        with fastsn.use_backend(backend), (fastsn.grouped_spectral_norm(layer) if grouped else parametrize.cached()):
            outputs.append((layer(x), layer(x), layer.parametrizations.weight[-1]._u.clone()))
    for got, want in zip(*outputs[::-1]):
        _assert_close(got, want)


def test_grouped_weights_skip_the_module_calls(backend_device, monkeypatch):
    """Inside the block, ``module.weight`` is the grouped W_sn straight from parametrize's cache: the
    parametrization's forward is not called again (two module calls per weight saved)."""
    backend, device = backend_device
    model = torch.nn.Sequential(fnu.parametrizations.spectral_norm(torch.nn.Linear(4, 3)),
                                fnu.parametrizations.spectral_norm(torch.nn.Linear(3, 2))).to(device)
    calls = []
    forward = fnu.parametrizations._SpectralNorm.forward
    monkeypatch.setattr(fnu.parametrizations._SpectralNorm, "forward",
                        lambda self, weight: calls.append(self) or forward(self, weight))
    with fastsn.use_backend(backend), fastsn.grouped_spectral_norm(model):
        y = model(torch.randn(5, 4, device=device))
        weights = [model[0].weight, model[1].weight]
    assert calls == []
    y.sum().backward()
    assert all(w.grad_fn is not None for w in weights) and all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("case", ["forward hook", "global hook", "subclass"])
def test_grouped_still_calls_what_would_observe_the_forward(backend_device, case):
    """A hook on the parametrization (its own or a global one) and a subclass that overrides forward run inside
    the block, as under parametrize.cached(): the cache is not filled up front for them."""
    backend, device = backend_device

    class Scaled(fnu.parametrizations._SpectralNorm):
        def forward(self, weight):
            return super().forward(weight) * 2

    torch.manual_seed(0)
    layer = fnu.parametrizations.spectral_norm(torch.nn.Linear(4, 3)).to(device)
    container = layer.parametrizations.weight
    seen = []
    handle = contextlib.nullcontext()
    if case == "forward hook":
        container.register_forward_hook(lambda module, args, out: seen.append(out) or out * 3)
    elif case == "global hook":
        handle = torch.nn.modules.module.register_module_forward_hook(
            lambda module, args, out: seen.append(out) if isinstance(module, parametrize.ParametrizationList) else None)
    else:
        function = container[0]
        function.__class__ = Scaled
    reference = copy.deepcopy(layer)
    with fastsn.use_backend(backend):
        try:
            with fastsn.grouped_spectral_norm(layer):
                got = layer.weight
            with parametrize.cached():
                want = reference.weight
        finally:
            if case == "global hook":
                handle.remove()
    _assert_close(got, want)
    assert len(seen) == (2 if "hook" in case else 0)  # once in each block


def _unconverged_pair(api: str, device: str) -> torch.nn.Sequential:
    """Two fastsn spectral-norm Linear layers whose u and v are far from converged (registration ran 15
    iterations), so that every extra power iteration shows."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(FASTSN_SN[api](torch.nn.Linear(4, 3)), FASTSN_SN[api](torch.nn.Linear(3, 2)))
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(F.normalize(torch.randn_like(buffer), dim=0))
    return model.to(device)


@pytest.mark.parametrize("outer", ["cached", "grouped"])
def test_grouped_nests_as_cached_does(backend_device, outer):
    """Nested in parametrize.cached() or another grouped block, a grouped block reuses the weights computed there
    and puts its own in the enclosing cache: as nested cached() blocks, one power iteration per outermost block."""
    backend, device = backend_device
    ours = _unconverged_pair("parametrizations", device)
    reference = copy.deepcopy(ours)
    x = torch.randn(5, 4, device=device)
    results = []
    for model, blocks in ((reference, (parametrize.cached, parametrize.cached)),
                          (ours, (parametrize.cached if outer == "cached" else fastsn.grouped_spectral_norm,
                                  fastsn.grouped_spectral_norm))):
        outer_block, inner_block = (block(model) if block is fastsn.grouped_spectral_norm else block()
                                    for block in blocks)
        with fastsn.use_backend(backend), outer_block:
            first = model[0](x)  # used before the inner block (by an outer cached(): computed and cached now)
            with inner_block:
                whole = model(x)
            last = model[1](first)  # after it: the weight cached there
            (first.sum() + whole.sum() + last.sum()).backward()
        results.append([first, whole, last, *_buffers(model).values(), *(p.grad for p in model.parameters())])
    for got, want in zip(*results[::-1]):
        _assert_close(got, want)


def test_grouped_inside_grouped_iterates_once(backend_device):
    """Hook-API layers (which parametrize.cached() never caches) are iterated once per outermost grouped block,
    inside an inner block too, also the layers the inner block does not cover."""
    backend, device = backend_device
    ours = _unconverged_pair("hook", device)
    reference = copy.deepcopy(ours)
    x = torch.randn(5, 4, device=device)
    with fastsn.use_backend(backend):
        with fastsn.grouped_spectral_norm(reference):
            want = [reference(x), reference[1](reference[0](x))]
        with fastsn.grouped_spectral_norm(ours):
            first = ours(x)
            with fastsn.grouped_spectral_norm(ours[1]):
                second = ours[1](ours[0](x))
    for got, expected in zip([first, second, *_buffers(ours).values()], [*want, *_buffers(reference).values()]):
        _assert_close(got, expected)


@pytest.mark.parametrize("api", APIS)
def test_functional_call_inside_grouped_uses_the_tensors_passed(backend_device, api):
    """torch.func.functional_call with other parameters and buffers, inside the block: computed from those (their
    u and v updated, their weight given the gradient), as without the block; the block's own weights stay."""
    backend, device = backend_device
    model = _unconverged_pair(api, device)
    reference = copy.deepcopy(model)
    x = torch.randn(5, 4, device=device)
    passed, passed_reference = ({name: tensor.detach().clone().mul_(-1 if tensor.ndim > 1 else 1).requires_grad_(
        tensor.requires_grad) for name, tensor in {**dict(m.named_parameters()), **dict(m.named_buffers())}.items()}
        for m in (model, reference))
    with fastsn.use_backend(backend):
        with fastsn.grouped_spectral_norm(model):
            own = model(x)
            got = torch.func.functional_call(model, passed, (x,))
            own_again = model(x)
        want = torch.func.functional_call(reference, passed_reference, (x,))
    got.sum().backward()
    want.sum().backward()
    _assert_close(own_again, own)
    _assert_close(got, want)
    for name, tensor in passed.items():
        _assert_close(tensor.grad if tensor.requires_grad else tensor,
                      passed_reference[name].grad if tensor.requires_grad else passed_reference[name])
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("api", APIS)
def test_under_autocast(backend_device, api):
    """Under autocast the spectral norm still runs on the float32 weight; the layer then casts as usual."""
    backend, device = backend_device
    reference, ours = _twins(api, lambda: torch.nn.Linear(16, 8))
    reference, ours = reference.to(device), ours.to(device)
    x = torch.randn(4, 16, device=device)
    with fastsn.use_backend(backend), torch.autocast(device, dtype=torch.bfloat16):
        y, y_ref = ours(x), reference(x)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=2e-2, atol=2e-2)
    for key, value in _buffers(reference).items():
        torch.testing.assert_close(_buffers(ours)[key], value, rtol=1e-2, atol=1e-2)


def test_built_on_cpu_inside_a_backend_that_cannot_take_cpu_tensors():
    """Models are built on the CPU and moved later: inside use_backend("cuda"), registration (15 iterations and
    torch's first evaluation) falls back to the automatic choice; a forward on the CPU still honours the request."""
    with fastsn.use_backend("cuda"):
        module = fnu.parametrizations.spectral_norm(torch.nn.Linear(4, 3))
        reference = torch.nn.utils.parametrizations.spectral_norm(torch.nn.Linear(4, 3))
        if _backend.unavailable_reason("cuda", "spectral_norm", "cpu") is None:
            pytest.skip("the CUDA backend takes CPU tensors here")  # never, today
        with pytest.raises(fastsn.BackendUnavailableError, match="backend 'cuda'"):
            module(torch.randn(2, 4))
    assert module.parametrizations.weight.original.shape == reference.parametrizations.weight.original.shape
