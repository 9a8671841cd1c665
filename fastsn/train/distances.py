"""Distances between generated and real sample sets, and an Inception-style score, on local features.

None of these is the Inception network's FID or IS: no weights are downloaded, so the features are local and the
names say so.

    FID-local   |mu_r - mu_f|^2 + tr(S_r + S_f - 2 (S_r^1/2 S_f S_r^1/2)^1/2), the Frechet distance of Gaussians fitted
                to real and generated features (Heusel et al. 2017's formula): on 2-D data the coordinates, on stacked
                digits the digit classifier's penultimate layer (3 x 64 values)
    IS-local    exp(E_x KL(p(y|x) || p(y))), p(y) = E_x p(y|x) (Salimans et al. 2016's formula): on 2-D data p(y|x) is
                the posterior over the mixture's modes (the Bayes classifier of the true mixture, from the
                coordinates), on stacked digits the product of the classifier's three softmaxes (1000 classes).
                Between 1 (every sample alike, or every sample ambiguous) and the number of classes
    EMD         the earth mover's (Wasserstein-1) distance between two equal-size point sets with uniform weights:
                the mean Euclidean distance of the optimal one-to-one assignment (exact, by scipy's
                ``linear_sum_assignment``; O(n^3), so on 1000 points of each set for 2-D data)
    sliced EMD  for images: the mean over unit directions theta of the 1-D Wasserstein-1 distance of the projected
                sets (1-D optimal transport pairs the sorted values); for a shift d of a whole set it is
                E|<d, theta>|, theta uniform on the sphere. 1024 seeded random directions (the estimate's relative
                spread on a shift is 0.76 / sqrt(1024) = 2.4%; the same directions for every run and for the real
                floor); in 2-D 1024 evenly spaced angles (the circle's integral to ~1e-6)
"""
from __future__ import annotations

import math

import torch

SLICED_DIRECTIONS = 1024
SLICED_SEED = 2024


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID-local: the Frechet distance of Gaussians fitted to two feature sets.

    Args:
        real: (n, D) features; fake: (m, D) features (n, m >= 2).

    Returns:
        |mu_r - mu_f|^2 + tr(S_r) + tr(S_f) - 2 tr((S_r^1/2 S_f S_r^1/2)^1/2), in float64, clamped at 0; NaN when a
        value is not finite (a diverged G: its Gaussian is undefined).
    """
    real, fake = real.detach().double().cpu().flatten(1), fake.detach().double().cpu().flatten(1)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"frechet_distance: real has {real.shape[1]} features per sample, fake {fake.shape[1]}")
    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise ValueError("frechet_distance: need at least 2 samples in each set")
    if not (real.isfinite().all() and fake.isfinite().all()):
        return math.nan  # eigh fails on such a covariance
    mu_r, mu_f = real.mean(0), fake.mean(0)
    s_r, s_f = torch.cov(real.T).reshape(real.shape[1], -1), torch.cov(fake.T).reshape(fake.shape[1], -1)  # (D, D)
    root_r = _psd_sqrt(s_r)
    # tr((S_r S_f)^1/2) = sum of the square roots of the eigenvalues of the symmetric S_r^1/2 S_f S_r^1/2
    middle = root_r @ s_f @ root_r
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    value = (mu_r - mu_f).square().sum() + s_r.trace() + s_f.trace() - 2 * cross
    return max(float(value), 0.0)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """The square root of a symmetric positive semi-definite (D, D) matrix (negative rounding clamped to 0)."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def inception_score(probabilities: torch.Tensor) -> float:
    """IS-local from per-sample class probabilities.

    Args:
        probabilities: (N, K) rows summing to 1.

    Returns:
        exp(mean_x KL(p(y|x) || p(y))) = exp(H(p(y)) - mean_x H(p(y|x))), in [1, K]; NaN when a probability is
        NaN (a diverged G's sample).
    """
    p = probabilities.detach().double().cpu()
    if p.isnan().any():
        return math.nan  # the entropies' 0 log 0 = 0 rule would count a NaN as 0
    marginal = p.mean(0)
    return math.exp(float(_entropy_rows(marginal[None])[0]) - float(_entropy_rows(p).mean()))


def stacked_inception_score(probabilities: torch.Tensor) -> float:
    """IS-local of stacked digits: the class of a sample is its triple of digits, p(y|x) the product of the three
    channels' softmaxes (channels classified independently), K = 10^3 classes.

    Args:
        probabilities: (N, 3, 10) per-channel probabilities.

    Returns:
        exp(H(p(y)) - mean_x H(p(y|x))), in [1, 1000]; H(p(y|x)) of a product is the sum of the channels' entropies.
        NaN when a probability is NaN.
    """
    p = probabilities.detach().double().cpu()
    if p.dim() != 3 or p.shape[1] != 3:
        raise ValueError(f"stacked_inception_score: probabilities must be (N, 3, K), got {tuple(p.shape)}")
    if p.isnan().any():
        return math.nan
    marginal = torch.einsum("ni,nj,nk->ijk", p[:, 0], p[:, 1], p[:, 2]) / p.shape[0]  # (K, K, K): p(y)
    conditional = _entropy_rows(p.flatten(0, 1)).view(p.shape[0], 3).sum(1)  # (N,)
    return math.exp(float(_entropy_rows(marginal.reshape(1, -1))[0]) - float(conditional.mean()))


def _entropy_rows(p: torch.Tensor) -> torch.Tensor:
    """(N,) entropies of the rows of p (N, K), 0 log 0 = 0."""
    return -torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p)).sum(1)


def mixture_posteriors(samples: torch.Tensor, centers: torch.Tensor, std: float) -> torch.Tensor:
    """p(mode | x) of an equal-weight isotropic Gaussian mixture: softmax_k(-|x - c_k|^2 / (2 std^2)).

    Args:
        samples: (N, 2); centers: (M, 2); std: the components' standard deviation.

    Returns:
        (N, M) float64 rows summing to 1.
    """
    d2 = torch.cdist(samples.detach().double().cpu(), centers.double(),
                     compute_mode="donot_use_mm_for_euclid_dist").square()  # (N, M)
    return torch.softmax(-d2 / (2 * std * std), dim=1)


def emd(a: torch.Tensor, b: torch.Tensor) -> float:
    """The exact earth mover's distance of two equal-size point sets (uniform weights, Euclidean ground distance).

    Args:
        a, b: (n, D) points each.

    Returns:
        min over one-to-one assignments s of mean_i |a_i - b_s(i)|; NaN when a coordinate is not finite.
    """
    from scipy.optimize import linear_sum_assignment

    a, b = a.detach().double().cpu().flatten(1), b.detach().double().cpu().flatten(1)
    if a.shape != b.shape:
        raise ValueError(f"emd: the two sets must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if not (a.isfinite().all() and b.isfinite().all()):
        return math.nan  # linear_sum_assignment refuses such costs
    cost = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").numpy()  # (n, n), exact differences
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


def _unit_directions(dim: int, count: int, seed: int) -> torch.Tensor:
    """(dim, count) float64 unit columns: in 1-D the one direction, in 2-D angles pi (k + 1/2) / count (|<d, theta>|
    is the same for theta and -theta, so the half circle covers the circle), else seeded normal draws normalized."""
    if dim == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    if dim == 2:
        angle = (torch.arange(count, dtype=torch.float64) + 0.5) * (math.pi / count)
        return torch.stack([angle.cos(), angle.sin()])
    theta = torch.randn(dim, count, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return theta / theta.norm(dim=0, keepdim=True)


def sliced_emd(a: torch.Tensor, b: torch.Tensor, directions: int = SLICED_DIRECTIONS,
               seed: int = SLICED_SEED) -> float:
    """The sliced earth mover's distance of two equal-size sets of any dimension.

    Args:
        a, b: (n, ...) samples, flattened per sample to D values; directions: how many unit vectors (seeded random
            ones above 2-D, evenly spaced angles in 2-D).

    Returns:
        mean over directions theta of mean_i |sort(a theta)_i - sort(b theta)_i|; NaN when a value is not finite
        (as the other distances).
    """
    a, b = a.detach().double().cpu().flatten(1), b.detach().double().cpu().flatten(1)
    if a.shape != b.shape:
        raise ValueError(f"sliced_emd: the two sets must have the same shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if not (a.isfinite().all() and b.isfinite().all()):
        return math.nan
    theta = _unit_directions(a.shape[1], directions, seed)  # (D, L)
    pa, pb = (a @ theta).sort(0).values, (b @ theta).sort(0).values  # (n, L)
    return float((pa - pb).abs().mean())
