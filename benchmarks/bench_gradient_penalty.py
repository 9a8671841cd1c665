"""Gradient penalties: the whole penalty step (D forward on the penalty's inputs, first-order input gradient,
penalty, backward to D's parameters), fastsn.gradient_penalty against the plain PyTorch formulation.

Providers: "torch" (the textbook code: per-sample interpolation, ``autograd.grad(create_graph=True)``, per-sample
norms; R1 + R2 as two passes); "fastsn" (``fastsn.gradient_penalty`` on the same discriminator: the fused
interpolation and penalty-head ops; R1 + R2 as one batched pass over cat([real, fake])); "fastsn-fused-d" (the same,
with D's bias + LeakyReLU pairs replaced by ``fastsn.nn.FusedLeakyReLU``: the same function and parameters, the bias
moved from the layer into the activation); "fastsn-converted-d" (the same D after ``fastsn.convert_leaky_relu``: its
``nn.LeakyReLU`` layers become ``fastsn.nn.LeakyReLU``, biases left where they are). The fused activations' double
backward sends nothing down to the layers below, where torch's sends zeros through a backward of every layer.
Discriminators: the 2-D toy MLP (batch 512) and the DCGAN 64x64 discriminator (batch 64, and 256 on a GPU);
torch.compile is not a provider (it cannot trace the double backward).
"""
from __future__ import annotations

import copy

import pytest
import torch

import fastsn
from conftest import device_name, synchronized

PROVIDERS = ("torch", "fastsn", "fastsn-fused-d", "fastsn-converted-d")


def toy_mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(2, 128), torch.nn.LeakyReLU(0.2), torch.nn.Linear(128, 128),
                               torch.nn.LeakyReLU(0.2), torch.nn.Linear(128, 1))


def dcgan64(ch: int = 64) -> torch.nn.Module:
    """The DCGAN discriminator for 64x64 images, without BatchNorm (a gradient penalty needs per-sample scores)."""
    layers, cin = [], 3
    for cout in (ch, 2 * ch, 4 * ch, 8 * ch):
        layers += [torch.nn.Conv2d(cin, cout, 4, 2, 1), torch.nn.LeakyReLU(0.2)]
        cin = cout
    return torch.nn.Sequential(*layers, torch.nn.Conv2d(cin, 1, 4, 1, 0), torch.nn.Flatten(0))


def fuse_activations(model: torch.nn.Sequential) -> torch.nn.Sequential:
    """A copy of ``model`` where each (Linear or Conv2d with bias, LeakyReLU) pair becomes (the layer without
    bias, FusedLeakyReLU holding that bias, gain 1): the same function of the same parameter values."""
    layers = list(model)
    fused = []
    for i, layer in enumerate(layers):
        if isinstance(layer, torch.nn.LeakyReLU) and fused and getattr(fused[-1], "bias", None) is not None:
            previous = fused[-1]
            activation = fastsn.nn.FusedLeakyReLU(previous.out_channels if isinstance(previous, torch.nn.Conv2d)
                                                  else previous.out_features, layer.negative_slope, scale=1.0)
            with torch.no_grad():
                activation.bias.copy_(previous.bias)
            previous.bias = None
            fused.append(activation)
        else:
            fused.append(copy.deepcopy(layer))
    return torch.nn.Sequential(*fused)


CASES = {  # name: (factory, sample shape, batch per device)
    "mlp-2d": (toy_mlp, (2,), {"cpu": 512, "cuda": 512}),
    "dcgan64": (dcgan64, (3, 64, 64), {"cpu": 64, "cuda": 64}),
    "dcgan64-b256": (dcgan64, (3, 64, 64), {"cuda": 256}),
}


def torch_penalty(discriminator, real, fake, kind):
    """The plain PyTorch formulation users write (per sample, as it should be)."""
    if kind == "r1+r2":
        return torch_penalty(discriminator, real, fake, "r1") + torch_penalty(discriminator, real, fake, "r2")
    if kind in ("r1", "r2"):
        x = (real if kind == "r1" else fake).detach().requires_grad_(True)
    else:
        alpha = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device)
        x = (alpha * real + (1 - alpha) * fake).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(x).sum(), x, create_graph=True)
    norm = grad.flatten(1).norm(2, dim=1)
    return 10.0 / 2 * norm.square().mean() if kind in ("r1", "r2") else 10.0 * (norm - 1).square().mean()


def provider_model(model: torch.nn.Module, provider: str) -> torch.nn.Module:
    """The discriminator a provider runs: ``model`` itself, or a changed copy (fused or converted activations)."""
    if provider == "fastsn-fused-d":
        return fuse_activations(model)
    if provider == "fastsn-converted-d":
        return fastsn.convert_leaky_relu(copy.deepcopy(model))
    return model


def penalty_step(model: torch.nn.Module, provider: str, real: torch.Tensor, fake: torch.Tensor, kind: str
                 ) -> torch.Tensor:
    """One whole penalty step of ``provider`` (kind "wgan-gp" or "r1+r2"): zero D's grads, penalty, backward.

    Returns:
        The penalty, detached (a scalar).
    """
    model.zero_grad(set_to_none=True)
    if provider == "torch":
        penalty = torch_penalty(model, real, fake, kind)
    else:
        penalty = fastsn.gradient_penalty(model, real, fake, kind=("r1", "r2") if kind == "r1+r2" else kind)
    penalty.backward()
    return penalty.detach()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kind", ["wgan-gp", "r1+r2"])
def test_penalty_step(benchmark, provider, device, case, kind):
    factory, sample, batches = CASES[case]
    if device not in batches:
        pytest.skip(f"{case} runs on {sorted(batches)} only")
    torch.manual_seed(0)
    model = provider_model(factory().to(device), provider)
    batch = batches[device]
    real, fake = torch.randn(batch, *sample, device=device), torch.randn(batch, *sample, device=device)

    def step() -> torch.Tensor:
        return penalty_step(model, provider, real, fake, kind)

    timed = synchronized(step, device)
    timed()  # warm-up
    if device == "cuda":  # the GPU target: peak memory no higher than the plain formulation's
        torch.cuda.reset_peak_memory_stats()
        timed()
        benchmark.extra_info["peak_bytes"] = torch.cuda.max_memory_allocated()
    benchmark.group = f"gradient_penalty {kind} {case} {device} b={batch}"
    benchmark.extra_info.update(provider=provider, device=device_name(device), batch=batch)
    assert torch.isfinite(benchmark(timed))
