"""fastsn.train.metrics on constructed sample sets: every mode, one mode, off-mode noise, and PRDC's extremes."""
from __future__ import annotations

import math

import pytest
import torch

from fastsn.train import metrics
from fastsn.train.data import grid25_centers, ring8_centers

STD = 0.02


def _around(centers: torch.Tensor, per_mode: list[int], std: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    parts = [centers[k] + std * torch.randn(n, 2, generator=g) for k, n in enumerate(per_mode) if n]
    return torch.cat(parts)


def test_every_mode_equally_is_full_coverage_and_zero_kl():
    centers = ring8_centers()
    samples = centers.repeat_interleave(300, 0)  # exactly on the centres, 300 each
    m = metrics.mixture_metrics(samples, centers, STD)
    assert m == {"modes": 8, "n_modes": 8, "high_quality": 100.0, "reverse_kl": pytest.approx(0.0, abs=1e-12)}


def test_one_mode_is_one_covered_and_kl_log_m():
    centers = ring8_centers()
    m = metrics.mixture_metrics(_around(centers, [2500] + [0] * 7, STD / 10), centers, STD)
    assert m["modes"] == 1 and m["high_quality"] == 100.0
    assert m["reverse_kl"] == pytest.approx(math.log(8))


def test_off_mode_noise_is_not_high_quality():
    centers = ring8_centers()
    noise = torch.zeros(2500, 2) + torch.tensor([0.5, 0.5])  # between the modes, 1.5 from the nearest
    m = metrics.mixture_metrics(noise, centers, STD)
    assert m["modes"] == 0 and m["high_quality"] == 0.0
    assert m["reverse_kl"] == pytest.approx(math.log(8))  # no high-quality sample: scored as a full collapse


def test_three_std_is_the_quality_boundary_and_only_quality_samples_count():
    centers = grid25_centers()
    inside = centers + torch.tensor([0.149, 0.0])   # 2.98 std of 0.05
    outside = centers + torch.tensor([0.151, 0.0])  # 3.02 std: counted nowhere
    m = metrics.mixture_metrics(torch.cat([inside[:5], outside]), centers, 0.05)
    assert m["modes"] == 5
    assert m["high_quality"] == pytest.approx(100 * 5 / 30)
    assert m["reverse_kl"] == pytest.approx(math.log(25 / 5))  # uniform over 5 of 25 modes


def test_reverse_kl_of_a_known_histogram():
    counts = torch.tensor([3, 1, 0, 0])
    p = torch.tensor([0.75, 0.25])
    assert metrics.reverse_kl_to_uniform(counts) == pytest.approx(float((p * (p * 4).log()).sum()))
    assert metrics.reverse_kl_to_uniform(torch.zeros(4)) == pytest.approx(math.log(4))


def test_mode_histogram_metrics():
    modes = torch.tensor([0, 0, 1, 999])
    m = metrics.mode_histogram_metrics(modes, 1000)
    assert m["modes"] == 3
    p = torch.tensor([0.5, 0.25, 0.25])
    assert m["reverse_kl"] == pytest.approx(float((p * (p * 1000).log()).sum()))


def test_prdc_identical_sets_and_disjoint_sets():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(500, 2, generator=g)
    same = metrics.prdc(real, real.clone())
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    # open balls (Naeem et al.): R_i's holds itself and its k - 1 nearest others, so each real counts k fakes
    assert same["density"] == 1.0
    far = metrics.prdc(real, real + 100.0)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_identical_sets_of_wide_features_score_one():
    # the digit classifier's 192 features: the balls' edges need distances without cdist's matrix-product rounding
    features = torch.randn(300, 192, generator=torch.Generator().manual_seed(1))
    assert metrics.prdc(features, features.clone()) == {"precision": 1.0, "recall": 1.0, "density": 1.0,
                                                       "coverage": 1.0}


def test_prdc_collapse_keeps_precision_loses_recall_and_coverage():
    centers = ring8_centers()
    real = _around(centers, [250] * 8, STD)
    one_mode = _around(centers, [2000] + [0] * 7, STD, seed=1)
    m = metrics.prdc(real, one_mode)
    assert m["precision"] > 0.9
    assert m["coverage"] < 0.2 and m["recall"] < 0.2


def test_pairwise_distance_ratio():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(400, 2, generator=g)
    assert metrics.pairwise_distance_ratio(real * 0.5, real) == pytest.approx(0.5)
    assert metrics.pairwise_distance_ratio(torch.zeros(10, 2), real) == 0.0
