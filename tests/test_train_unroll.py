"""Unrolled GAN (``--unroll K``): K = 0 is the plain G step; G's gradient through K differentiable Adam steps of D
matches finite differences (gradcheck, float64); D's own state is untouched; both backends agree."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.func import functional_call

from fastsn.train import losses
from fastsn.train.compare import compare
from fastsn.train.config import TrainConfig
from fastsn.train.models import ModelOptions, build_models
from fastsn.train.unroll import unrolled_generator_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 6


def _setup(backend: str, sn: bool, dtype=torch.float64, seed: int = 0):
    """G, D (ring8 MLPs) and D's Adam after one real step, so its moments are not zero."""
    G, D = build_models(ModelOptions("ring8", backend, sn=sn), seed)
    G, D = G.to(dtype), D.to(dtype)
    opt = torch.optim.Adam(D.parameters(), lr=1e-2, betas=(0.5, 0.9))
    g = torch.Generator().manual_seed(seed + 1)
    real, z = torch.randn(N, 2, generator=g, dtype=dtype), torch.randn(N, 16, generator=g, dtype=dtype)
    losses.d_loss("bce", D(real), D(G(z).detach())).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return G, D, opt


def _batches(dtype, seed: int = 7):
    """(generate-latents, real-batch) callables drawing the same numbers on every call sequence."""
    g = torch.Generator().manual_seed(seed)
    return (lambda: torch.randn(N, 16, generator=g, dtype=dtype)), (lambda: torch.randn(N, 2, generator=g, dtype=dtype))


@pytest.mark.parametrize("backend", ["fastsn", "torch"])
@pytest.mark.parametrize("sn", [False, True])
def test_zero_steps_is_the_plain_generator_step(backend, sn):
    G, D, opt = _setup(backend, sn)
    z = torch.randn(N, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    loss = unrolled_generator_loss(D, opt, lambda: G(z), None, "bce", 0)
    unrolled = torch.autograd.grad(loss, list(G.parameters()))
    G2, D2, _ = _setup(backend, sn)
    plain_loss = losses.g_loss("bce", D2(G2(z)))  # D in training mode: one power iteration, as the copy did
    plain = torch.autograd.grad(plain_loss, list(G2.parameters()))
    assert loss.item() == pytest.approx(plain_loss.item(), rel=1e-12)
    for a, b in zip(unrolled, plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["fastsn", "torch"])
@pytest.mark.parametrize("sn", [False, True])
def test_gradient_through_the_unrolled_steps_matches_finite_differences(backend, sn):
    G, D, opt = _setup(backend, sn)
    if sn:
        # in training each forward's power iteration moves u and v with the unrolled weights, without gradient (as in
        # torch): finite differences would see that, autograd by design not. In eval u and v stay fixed, and the
        # normalization's first and second derivatives are what is checked
        D.eval()
    names = [n for n, _ in G.named_parameters()]
    # a small G input layer only: gradcheck perturbs each entry
    wanted = names[-2:]  # G's last Linear (2 x 128 weight, 2 bias)
    fixed = {n: p.detach() for n, p in G.named_parameters() if n not in wanted}

    def loss_of(*free: torch.Tensor) -> torch.Tensor:
        params = dict(fixed, **dict(zip(wanted, free)))
        latents, real = _batches(torch.float64)
        return unrolled_generator_loss(D, opt, lambda: functional_call(G, params, (latents(),)), real, "bce", 2)

    inputs = tuple(dict(G.named_parameters())[n].detach().clone().requires_grad_(True) for n in wanted)
    assert torch.autograd.gradcheck(loss_of, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_discriminator_state_is_untouched_and_gets_no_gradient():
    G, D, opt = _setup("fastsn", True)
    before = {k: v.clone() for k, v in D.state_dict().items()}
    moments = {id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()}
               for p in D.parameters()}
    latents, real = _batches(torch.float64)
    unrolled_generator_loss(D, opt, lambda: G(latents()), real, "bce", 3).backward()
    for k, v in D.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights and spectral-norm u, v
    for p in D.parameters():
        assert p.grad is None
        for k, v in opt.state[p].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(moments[id(p)][k]))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())


def test_unrolling_changes_the_generator_gradient():
    grads = {}
    for k in (0, 3):
        G, D, opt = _setup("torch", False)
        latents, real = _batches(torch.float64)
        unrolled_generator_loss(D, opt, lambda: G(latents()), real, "bce", k).backward()
        grads[k] = torch.cat([p.grad.flatten() for p in G.parameters()])
    assert not torch.allclose(grads[0], grads[3], rtol=1e-3)


def test_both_backends_agree_when_unrolled():
    # fastsn's spectral norm and fused leaky ReLU differentiated twice through the unrolled Adam steps, against torch's
    config = TrainConfig(sn=True, unroll=2, steps=4, batch_size=16, dtype="float64")
    result = compare(config)
    assert result.ok, dataclasses.asdict(result)


def test_negative_unroll_is_refused():
    G, D, opt = _setup("torch", False)
    with pytest.raises(ValueError, match="--unroll: must be an integer >= 0"):
        unrolled_generator_loss(D, opt, lambda: G(torch.zeros(2, 16, dtype=torch.float64)), None, "bce", -1)
    with pytest.raises(ValueError, match="--unroll: must be an integer >= 0"):
        TrainConfig(unroll=-1).validate()
