"""Mode-collapse metrics.

2-D mixtures (VEEGAN, Srivastava et al. 2017; PacGAN, Lin et al. 2018), over N generated samples (2500 in the
report), for M modes with centres c_k and standard deviation s:
    nearest(x)       = argmin_k |x - c_k|
    high quality     |x - c_nearest(x)| <= 3 s
    modes covered    the number of modes that are nearest to at least one high-quality sample
    % high quality   100 * (high-quality samples) / N
    reverse KL       KL(p || u) = sum_k p_k log(p_k M), p the histogram over modes of the high-quality samples
                     (normalized to sum 1), u uniform over the M modes; 0 log 0 = 0. With no high-quality sample
                     p is undefined: it is scored log M, the KL of all mass on one mode (a full collapse).
Stacked digits: each sample's mode is the classifier's label triple (one of 1000); modes covered and KL(p || u)
over every sample (26,000 in the report; no quality filter: the classifier labels every sample), beside the same
figures for as many real samples (the floor that finite sampling and classifier errors leave).

Precision, recall, density, coverage (Naeem et al. 2020, k = 5) on features (the 2-D coordinates, or the digit
classifier's penultimate layer, 3 x 64 values), real R_1..R_n, fake F_1..F_m, r(R_i) the distance from R_i to its
k-th nearest other real, r(F_j) likewise among fakes; the balls are open (strict <, as the paper and its authors'
code), so a fake set equal to the real one scores 1 on all four:
    precision = 1/m sum_j [exists i: |F_j - R_i| < r(R_i)]
    recall    = 1/n sum_i [exists j: |R_i - F_j| < r(F_j)]
    density   = 1/(k m) sum_j #{i: |F_j - R_i| < r(R_i)}
    coverage  = 1/n sum_i [exists j: |R_i - F_j| < r(R_i)]
"""
from __future__ import annotations

import math
from typing import Optional

import torch

PRDC_K = 5


def reverse_kl_to_uniform(counts: torch.Tensor) -> float:
    """KL(p || uniform) of a histogram.

    Args:
        counts: (M,) non-negative counts over M modes.

    Returns:
        sum_k p_k log(p_k M) with p = counts / sum(counts), 0 log 0 = 0; log M for an empty histogram.
    """
    m = counts.numel()
    total = float(counts.sum())
    if total <= 0:
        return math.log(m)
    p = counts.double() / total
    nonzero = p[p > 0]
    return float((nonzero * (nonzero * m).log()).sum())


def nearest_modes(samples: torch.Tensor, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The nearest centre of each sample and the distance to it.

    Args:
        samples: (N, 2); centers: (M, 2).

    Returns:
        (indices (N,) int64, distances (N,)).
    """
    distances = torch.cdist(samples.double(), centers.double())  # (N, M)
    best, index = distances.min(1)
    return index, best


def mixture_metrics(samples: torch.Tensor, centers: torch.Tensor, std: float) -> dict[str, float]:
    """Modes covered, % high quality and reverse KL of 2-D samples against a Gaussian mixture (module docstring).

    Args:
        samples: (N, 2) generated points; centers: (M, 2); std: the mixture's standard deviation s.

    Returns:
        {"modes": covered modes, "n_modes": M, "high_quality": percent, "reverse_kl": KL(p || u)}.
    """
    index, distance = nearest_modes(samples.detach().cpu(), centers)
    good = distance <= 3 * std
    counts = torch.bincount(index[good], minlength=centers.shape[0])
    return {"modes": int((counts > 0).sum()), "n_modes": int(centers.shape[0]),
            "high_quality": 100.0 * float(good.double().mean()), "reverse_kl": reverse_kl_to_uniform(counts)}


def mode_histogram_metrics(modes: torch.Tensor, n_modes: int) -> dict[str, float]:
    """Modes covered and KL(p || u) of labelled samples (stacked digits: no quality filter).

    Args:
        modes: (N,) int64 mode of each sample, in [0, n_modes).

    Returns:
        {"modes": covered, "n_modes": n_modes, "reverse_kl": KL(p || u)}.
    """
    counts = torch.bincount(modes.cpu(), minlength=n_modes)
    return {"modes": int((counts > 0).sum()), "n_modes": n_modes, "reverse_kl": reverse_kl_to_uniform(counts)}


def _exact_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) Euclidean distances between the rows of a (N, D) and b (M, D), each from its own differences: the
    matrix-product shortcut of cdist leaves ~1e-6 on a diagonal of 192-D features and breaks ties at a ball's edge."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def _kth_neighbour_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) distance from each row of x (N, D) to its k-th nearest other row."""
    d = _exact_distances(x, x)  # (N, N); the diagonal 0 is each point itself: the k-th other is the (k+1)-th smallest
    return d.topk(k + 1, dim=1, largest=False).values[:, k]


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = PRDC_K) -> dict[str, float]:
    """Precision, recall, density and coverage of Naeem et al. (2020) (module docstring).

    Args:
        real: (n, D) real features; fake: (m, D) generated features; k: the neighbourhood size.

    Returns:
        {"precision", "recall", "density", "coverage"}, each a float (density may exceed 1).
    """
    real, fake = real.detach().double().cpu(), fake.detach().double().cpu()
    r_real = _kth_neighbour_radius(real, k)  # (n,)
    r_fake = _kth_neighbour_radius(fake, k)  # (m,)
    d = _exact_distances(real, fake)  # (n, m)
    inside_real = d < r_real[:, None]  # [i, j]: F_j within R_i's ball
    return {"precision": float(inside_real.any(0).double().mean()),
            "recall": float((d < r_fake[None, :]).any(1).double().mean()),
            "density": float(inside_real.sum(0).double().mean() / k),
            "coverage": float(inside_real.any(1).double().mean())}


def pairwise_distance_ratio(fake: torch.Tensor, real: torch.Tensor) -> float:
    """Mean pairwise distance of generated samples over that of real samples: near 1 when G is as diverse as the
    data, near 0 when it collapses.

    Args:
        fake, real: (N, ...) samples, flattened per sample.

    Returns:
        A float.
    """
    def mean_distance(x: torch.Tensor) -> float:
        x = x.detach().reshape(x.shape[0], -1).double().cpu()
        n = x.shape[0]
        return float(torch.pdist(x).sum() * 2 / (n * (n - 1))) if n > 1 else 0.0

    denominator = mean_distance(real)
    return mean_distance(fake) / denominator if denominator > 0 else float("nan")


def summarize(values: list[float]) -> Optional[tuple[float, float]]:
    """(mean, sample std) of a list, std 0 for one value; None for an empty list."""
    if not values:
        return None
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0
