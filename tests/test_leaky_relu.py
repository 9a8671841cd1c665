"""fastsn.nn.LeakyReLU and fastsn.convert_leaky_relu: torch.nn.LeakyReLU's drop-in on fastsn's fused activation
(op family bias_leaky_relu): the same outputs, gradients and penalty gradients as torch's, every parameter's
.grad included; torch's own op where the fused one cannot keep torch's semantics."""
from __future__ import annotations

import copy

import pytest
import torch

import fastsn

OP = "bias_leaky_relu"


def _discriminator(device: str, inplace: bool = False) -> torch.nn.Sequential:
    """A small conv D with biases everywhere and nested containers."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, 2, 1), torch.nn.LeakyReLU(0.2, inplace=inplace),
        torch.nn.Sequential(torch.nn.Conv2d(4, 6, 3, 2, 1), torch.nn.LeakyReLU(0.1, inplace=inplace)),
        torch.nn.Flatten(), torch.nn.Linear(6 * 2 * 2, 1)).to(device=device, dtype=torch.float64)


def test_module_is_torch_leaky_relu(backend_device):
    backend, device = backend_device
    ours, theirs = fastsn.nn.LeakyReLU(0.3), torch.nn.LeakyReLU(0.3)
    assert isinstance(ours, torch.nn.LeakyReLU) and repr(ours) == repr(theirs) and not ours.state_dict()
    x = torch.randn(4, 5, 3, device=device, dtype=torch.float64, requires_grad=True)
    with fastsn.use_backend(backend):
        y = ours(x)
        (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.sum(), x)
    y_ref = theirs(x)
    (g_ref,) = torch.autograd.grad(y_ref.square().sum(), x, create_graph=True)
    (gg_ref,) = torch.autograd.grad(g_ref.sum(), x)
    for got, want in ((y, y_ref), (g, g_ref), (gg, gg_ref)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("inplace", [False, True], ids=["outofplace", "inplace"])
@pytest.mark.parametrize("kind", ["wgan-gp", ("r1", "r2")], ids=["wgan-gp", "r1+r2"])
def test_converted_d_gives_torch_penalty_and_every_grad(backend_device, kind, inplace):
    """The penalty and every parameter's .grad (zeros, not None, where torch leaves zeros) match the unconverted
    D; in-place activations become out of place with the same output."""
    backend, device = backend_device
    reference = _discriminator(device, inplace)
    converted = fastsn.convert_leaky_relu(copy.deepcopy(reference))
    assert [type(m) for m in converted.modules()].count(fastsn.nn.LeakyReLU) == 2
    assert not any(type(m) is torch.nn.LeakyReLU for m in converted.modules())
    assert converted.state_dict().keys() == reference.state_dict().keys()
    real = torch.randn(5, 3, 8, 8, device=device, dtype=torch.float64)
    fake = torch.randn(5, 3, 8, 8, device=device, dtype=torch.float64)
    penalties = []
    for model in (reference, converted):
        with fastsn.use_backend(backend):
            penalty = fastsn.gradient_penalty(model, real, fake, kind=kind,
                                              generator=torch.Generator(device).manual_seed(1))
        penalty.backward()
        penalties.append(penalty.detach())
    torch.testing.assert_close(penalties[1], penalties[0])
    for (name, want), got in zip(reference.named_parameters(), converted.parameters()):
        assert (got.grad is None) == (want.grad is None), name
        if want.grad is not None:
            torch.testing.assert_close(got.grad, want.grad, msg=name)


@pytest.mark.parametrize("how", ["grad", "backward-inputs"])
def test_penalty_gradients_by_autograd_grad_and_backward_inputs(backend_device, how):
    """autograd.grad(penalty, parameters) and penalty.backward(inputs=parameters) give torch's gradients (zeros, not
    missing, for the biases under the activations), asking for each parameter alone, all but one, or all:
    autograd.grad() asking only for the first layer's bias used to get None (or its error without allow_unused)
    where torch gives zeros."""
    backend, device = backend_device
    reference = _discriminator(device, False)
    converted = fastsn.convert_leaky_relu(copy.deepcopy(reference))
    real = torch.randn(5, 3, 8, 8, device=device, dtype=torch.float64)
    names = [name for name, _ in reference.named_parameters()]
    every = 2 ** len(names) - 1
    for mask in [1 << i for i in range(len(names))] + [every ^ (1 << i) for i in range(len(names))] + [every]:
        chosen = [name for i, name in enumerate(names) if mask >> i & 1]
        results = []
        for model in (reference, converted):
            model.zero_grad(set_to_none=True)
            params = [dict(model.named_parameters())[name] for name in chosen]
            with fastsn.use_backend(backend):
                penalty = fastsn.gradient_penalty(model, real, kind="r1")
            if how == "grad":
                results.append(torch.autograd.grad(penalty, params, allow_unused=True))  # (the last bias: none)
            else:
                penalty.backward(inputs=params)
                results.append([p.grad for p in params])
        for name, got, want in zip(chosen, *results[::-1]):
            assert (got is None) == (want is None), (chosen, name)
            if want is not None:
                torch.testing.assert_close(got, want, msg=f"{chosen} {name}")


class _ScaleInPlace(torch.nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mul_(2.0)  # (as Dropout(inplace=True) or h += skip after an activation)


def test_output_may_be_changed_in_place(backend_device):
    """As torch's LeakyReLU, fastsn's saves its input, not its output: a D that changes the activation's output in
    place trains, and gives torch's penalty and gradients (fastsn used to raise torch's in-place error)."""
    backend, device = backend_device
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.LeakyReLU(0.2), _ScaleInPlace(),
                                    torch.nn.Linear(6, 6), torch.nn.LeakyReLU(0.2), _ScaleInPlace(),
                                    torch.nn.Linear(6, 1)).to(device=device, dtype=torch.float64)
    converted = fastsn.convert_leaky_relu(copy.deepcopy(reference))
    real = torch.randn(5, 3, device=device, dtype=torch.float64)
    for model in (reference, converted):
        with fastsn.use_backend(backend):
            (model(real).sum() + fastsn.gradient_penalty(model, real, kind="r1")).backward()
    for (name, want), got in zip(reference.named_parameters(), converted.parameters()):
        assert (got.grad is None) == (want.grad is None), name
        torch.testing.assert_close(got.grad, want.grad, msg=name)


def test_convert_root_and_fallbacks():
    root = torch.nn.LeakyReLU(0.2, inplace=True)
    converted = fastsn.convert_leaky_relu(root)
    assert converted is root
    assert type(converted) is fastsn.nn.LeakyReLU and converted.negative_slope == 0.2 and not converted.inplace
    # a negative slope and inplace=True run torch's op, with torch's semantics
    x = torch.randn(6, dtype=torch.float64)
    torch.testing.assert_close(fastsn.nn.LeakyReLU(-0.5)(x), torch.nn.functional.leaky_relu(x, -0.5))
    y = x.clone()
    assert fastsn.nn.LeakyReLU(0.2, inplace=True)(y) is y
    torch.testing.assert_close(y, torch.nn.functional.leaky_relu(x, 0.2))
    subclass = type("MyLeakyReLU", (torch.nn.LeakyReLU,), {})()
    assert fastsn.convert_leaky_relu(torch.nn.Sequential(subclass))[0] is subclass


def test_hooks_below_see_torchs_zeros(backend_device):
    """A penalty's double backward reaches the first layer's bias only through the activation's mask: with a tensor
    hook or a post-accumulate hook on it (gradient clipping, an optimizer stepping inside backward), the zero goes
    down as torch sends it, so the hooks see torch's zero tensor, not None."""
    backend, device = backend_device
    reference = _discriminator(device, False)
    converted = fastsn.convert_leaky_relu(copy.deepcopy(reference))
    real = torch.randn(5, 3, 8, 8, device=device, dtype=torch.float64)
    seen = []
    for model in (reference, converted):
        calls = []
        bias = model[0].bias
        bias.register_hook(lambda g: calls.append(("hook", g)) or torch.clamp(g, -0.01, 0.01))
        bias.register_post_accumulate_grad_hook(lambda p: calls.append(("post", p.grad.clone())))
        with fastsn.use_backend(backend):
            fastsn.gradient_penalty(model, real, kind="r1").backward()
        seen.append(calls)
    assert [name for name, _ in seen[1]] == [name for name, _ in seen[0]] == ["hook", "post"]
    for (_, got), (_, want) in zip(*seen[::-1]):
        torch.testing.assert_close(got, want)


class _ConditionalD(torch.nn.Module):
    """A conditional D whose class embedding (sparse gradients) sits under the activation."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 4)
        self.embedding = torch.nn.Embedding(10, 4, sparse=True)
        self.activation = torch.nn.LeakyReLU(0.2)
        self.head = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.head(self.activation(self.linear(x) + self.embedding(label)))


def test_sparse_embedding_below_gets_torchs_sparse_zero(backend_device):
    """An nn.Embedding(sparse=True) reached only through the activation's mask ends the pass with torch's sparse
    zero gradient (which torch.optim.SparseAdam takes), not a dense one."""
    backend, device = backend_device
    torch.manual_seed(0)
    reference = _ConditionalD().to(device=device, dtype=torch.float64)
    converted = fastsn.convert_leaky_relu(copy.deepcopy(reference))
    real = torch.randn(5, 3, device=device, dtype=torch.float64)
    label = torch.randint(0, 10, (5,), device=device)
    grads = []
    for model in (reference, converted):
        with fastsn.use_backend(backend):
            fastsn.gradient_penalty(lambda x, m=model: m(x, label), real, kind="r1").backward()
        grads.append(model.embedding.weight.grad)
        torch.optim.SparseAdam([model.embedding.weight]).step()
    assert grads[1].layout == grads[0].layout == torch.sparse_coo
    torch.testing.assert_close(grads[1].to_dense(), grads[0].to_dense())


def test_convert_keeps_shared_activations_hooks_and_mode():
    """One activation under two names (or reused by a forward) is converted everywhere and stays one object, with
    its forward hooks and eval mode (convert used to build new modules: the second name kept torch's, hooks were
    dropped, eval mode lost)."""
    activation = torch.nn.LeakyReLU(0.2)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), activation, torch.nn.Linear(3, 3), activation).eval()
    holder = torch.nn.ModuleDict({"model": model, "alias": activation})
    seen = []
    handle = activation.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    assert fastsn.convert_leaky_relu(holder) is holder
    assert model[1] is model[3] is holder.alias is activation and type(activation) is fastsn.nn.LeakyReLU
    assert not activation.training
    model(torch.randn(4, 2))
    assert seen == [(4, 3), (4, 3)]
    handle.remove()
    model(torch.randn(4, 2))
    assert len(seen) == 2
