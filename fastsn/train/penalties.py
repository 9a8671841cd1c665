"""Gradient penalties of the trainer: ``fastsn.gradient_penalty`` for ``--backend fastsn``, and for ``--backend
torch`` the same penalties written as plain autograd code with per-sample norms (the formulas and random draws of
fastsn's documented conventions, so seeded runs of both backends see the same numbers).

    wgan-gp  w * mean((|g_i| - 1)^2)         at x_i = e_i real_i + (1 - e_i) fake_i, e = torch.rand(B)
                                             (float32, float64 for float64 samples)
    wgan-lp  w * mean(max(0, |g_i| - 1)^2)   at the same points
    r1, r2   w / 2 * mean(|g_i|^2)           at real (r1) or fake (r2) (StyleGAN2's gamma / 2)
    dragan   w * mean((|g_i| - 1)^2)         at x_i = real_i + e_i * 0.5 std(real) n_i, n = torch.rand(real.shape),
                                             std with the N divisor
"""
from __future__ import annotations

from typing import Optional

import torch

import fastsn

PENALTIES = ("none", "wgan-gp", "wgan-lp", "r1", "r2", "dragan")


def _points(kind: str, real: torch.Tensor, fake: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Where the penalty differentiates D: (B, ...), detached, drawn in the order fastsn draws them."""
    real, fake = real.detach(), fake.detach()
    if kind == "r1":
        return real
    if kind == "r2":
        return fake
    shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    eps_dtype = torch.float64 if real.dtype == torch.float64 else torch.float32  # fastsn draws in this dtype
    if kind == "dragan":
        noise = torch.rand(real.shape, generator=generator, device=real.device, dtype=real.dtype)
        perturbed = real + 0.5 * real.std(correction=0) * noise  # the N divisor, as DRAGAN's numpy code
        eps = torch.rand(real.shape[0], generator=generator, device=real.device, dtype=eps_dtype).view(shape)
        return eps * perturbed + (1 - eps) * real
    eps = torch.rand(real.shape[0], generator=generator, device=real.device, dtype=eps_dtype).view(shape)
    return eps * real + (1 - eps) * fake


def torch_gradient_penalty(discriminator: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor, kind: str,
                           weight: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The penalty by plain autograd: per-sample gradient norms over every non-batch dimension.

    Args:
        discriminator: (B, ...) -> (B, 1) scores.
        real, fake: (B, ...) samples.
        kind: one of :data:`PENALTIES` except "none"; weight: the coefficient.
        generator: draws the interpolation factors and noise.

    Returns:
        A scalar with its graph (through D's parameters).
    """
    x = _points(kind, real, fake, generator).requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(x).sum(), x, create_graph=True)
    norms = grad.reshape(grad.shape[0], -1).norm(dim=1)  # (B,): one norm per sample
    if kind in ("r1", "r2"):
        return weight / 2 * norms.square().mean()
    if kind == "wgan-lp":
        return weight * (norms - 1.0).clamp_min(0.0).square().mean()
    return weight * (norms - 1.0).square().mean()


def gradient_penalty(backend: str, discriminator: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor, kind: str,
                     weight: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The penalty of ``kind`` by ``backend``'s implementation (fastsn's fused ops, or plain autograd).

    Returns:
        A scalar with its graph.
    """
    if backend == "fastsn":
        return fastsn.gradient_penalty(discriminator, real, fake, kind=kind, weight=weight, generator=generator)
    return torch_gradient_penalty(discriminator, real, fake, kind, weight, generator)
