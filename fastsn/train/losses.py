"""The adversarial losses: D's and G's loss from D's scores on real and generated samples.

    bce          D: mean(softplus(-r)) + mean(softplus(f));  G: mean(softplus(-f)) (the non-saturating loss)
    hinge        D: mean(relu(1 - r)) + mean(relu(1 + f));   G: -mean(f)
    wasserstein  D: mean(f) - mean(r);                        G: -mean(f)
    lsgan        D: (mean((r - 1)^2) + mean(f^2)) / 2;        G: mean((f - 1)^2) / 2
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("bce", "hinge", "wasserstein", "lsgan")


def d_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """D's loss.

    Args:
        kind: one of :data:`LOSSES`.
        real, fake: D's scores (N, 1) on real and generated samples.

    Returns:
        A scalar.
    """
    if kind == "bce":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    if kind == "wasserstein":
        return fake.mean() - real.mean()
    if kind == "lsgan":
        return 0.5 * ((real - 1.0).square().mean() + fake.square().mean())
    raise ValueError(f"unknown loss {kind!r}: choose one of {', '.join(LOSSES)}")


def g_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """G's loss from D's scores (N, 1) on generated samples; a scalar."""
    if kind == "bce":
        return F.softplus(-fake).mean()
    if kind in ("hinge", "wasserstein"):
        return -fake.mean()
    if kind == "lsgan":
        return 0.5 * (fake - 1.0).square().mean()
    raise ValueError(f"unknown loss {kind!r}: choose one of {', '.join(LOSSES)}")
