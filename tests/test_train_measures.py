"""FID-local, IS-local, EMD, sliced EMD and per-layer spectra on constructed sets with known answers."""
from __future__ import annotations

import math

import pytest
import torch

from fastsn.train import distances, spectra
from fastsn.train.data import grid25_centers, ring8_centers


def _gaussian(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- FID-local -----------------------------------------------------------------------------------------------------

def test_frechet_distance_of_identical_sets_is_zero():
    x = _gaussian(500, 6, 0)
    assert distances.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_a_shifted_set_is_the_squared_shift():
    x = _gaussian(500, 4, 1)
    shift = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    assert distances.frechet_distance(x, x + shift) == pytest.approx(float(shift.square().sum()), rel=1e-9)


def test_frechet_distance_of_known_gaussians():
    # N(0, I) against N(0, 4 I) in D dims: tr(I + 4I - 2 (4I)^1/2) = D (1 + 4 - 4) = D, from exact covariances
    x = _gaussian(20000, 3, 2)
    x = (x - x.mean(0)) @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(x.T))).T  # exactly mean 0, covariance I
    assert distances.frechet_distance(x, 2 * x) == pytest.approx(3.0, rel=1e-9)


def test_frechet_distance_bad_input():
    with pytest.raises(ValueError, match="features per sample"):
        distances.frechet_distance(torch.zeros(5, 2), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="at least 2 samples"):
        distances.frechet_distance(torch.zeros(1, 2), torch.zeros(5, 2))


# --- IS-local ------------------------------------------------------------------------------------------------------

def test_inception_score_extremes():
    k = 8
    confident_uniform = torch.eye(k).repeat(10, 1)  # each class equally often, each sample certain
    assert distances.inception_score(confident_uniform) == pytest.approx(k)
    one_class = torch.zeros(50, k)
    one_class[:, 3] = 1
    assert distances.inception_score(one_class) == pytest.approx(1.0)
    unsure = torch.full((50, k), 1.0 / k)
    assert distances.inception_score(unsure) == pytest.approx(1.0)
    half = torch.eye(k)[torch.arange(40) % 2]  # two classes, equally often
    assert distances.inception_score(half) == pytest.approx(2.0)


def test_mixture_posteriors_score_modes_hit():
    centers, std = ring8_centers(), 0.02
    on_modes = centers.repeat(50, 1)  # 400 points, exactly on the 8 centres
    assert distances.inception_score(distances.mixture_posteriors(on_modes, centers, std)) == pytest.approx(8.0)
    three = centers[:3].repeat(50, 1)
    assert distances.inception_score(distances.mixture_posteriors(three, centers, std)) == pytest.approx(3.0)
    # the ring's centre is as far from every mode (up to the float32 rounding of the centres, amplified by 1/2 std^2)
    posterior = distances.mixture_posteriors(torch.zeros(1, 2), centers, std)
    assert torch.allclose(posterior, torch.full((1, 8), 1 / 8, dtype=torch.float64), atol=1e-3)


def test_stacked_inception_score_is_over_the_thousand_triples():
    eye = torch.eye(10)
    triples = torch.cartesian_prod(torch.arange(10), torch.arange(10), torch.arange(10))  # (1000, 3)
    every = eye[triples]  # (1000, 3, 10): every triple once, certain
    assert distances.stacked_inception_score(every) == pytest.approx(1000.0)
    same_digit = eye[torch.arange(10)].unsqueeze(1).expand(10, 3, 10)  # 000, 111, ..., 999: 10 triples
    assert distances.stacked_inception_score(same_digit) == pytest.approx(10.0)
    with pytest.raises(ValueError, match=r"\(N, 3, K\)"):
        distances.stacked_inception_score(torch.ones(4, 10) / 10)


# --- EMD -----------------------------------------------------------------------------------------------------------

def test_emd_of_identical_and_permuted_sets_is_zero():
    x = _gaussian(200, 2, 3)
    assert distances.emd(x, x) == pytest.approx(0.0, abs=1e-12)
    assert distances.emd(x, x[torch.randperm(200, generator=torch.Generator().manual_seed(0))]) == pytest.approx(
        0.0, abs=1e-12)


def test_emd_of_a_shifted_set_is_the_shift_length():
    # moving every point by d costs |d| each, and no assignment does better (W1 >= |mean difference|)
    x = _gaussian(300, 2, 4)
    d = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert distances.emd(x, x + d) == pytest.approx(5.0, rel=1e-12)


def test_emd_of_two_point_masses_and_a_known_matching():
    a = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    b = torch.tensor([[10.0, 1.0], [0.0, 1.0]])
    assert distances.emd(a, b) == pytest.approx(1.0)  # pairs across, not in order
    with pytest.raises(ValueError, match="same shape"):
        distances.emd(a, b[:1])


def test_sliced_emd_identical_zero_and_shift_known():
    x = _gaussian(400, 5, 5)
    assert distances.sliced_emd(x, x) == pytest.approx(0.0, abs=1e-12)
    # a shift d: every direction theta moves the projections by <d, theta> rigidly, so the 1-D distance is |<d, theta>|
    d = torch.tensor([1.0, -2.0, 0.0, 0.5, 3.0], dtype=torch.float64)
    theta = torch.randn(5, distances.SLICED_DIRECTIONS, generator=torch.Generator().manual_seed(distances.SLICED_SEED),
                        dtype=torch.float64)
    expected = float((d @ (theta / theta.norm(dim=0))).abs().mean())
    assert distances.sliced_emd(x, x + d) == pytest.approx(expected, rel=1e-12)
    # over the sphere, E|<d, theta>| = |d| Gamma(D/2) / (sqrt(pi) Gamma((D+1)/2)): 0.375 |d| for D = 5
    mean_abs_cos = math.gamma(2.5) / (math.sqrt(math.pi) * math.gamma(3.0))
    assert expected == pytest.approx(float(d.norm()) * mean_abs_cos, rel=0.1)


@pytest.mark.parametrize("dim", [1, 2, 192])
def test_sliced_emd_of_a_shift_is_near_its_expectation(dim):
    x = _gaussian(300, dim, 7)
    d = torch.randn(dim, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    # E|<d, theta>| over the unit sphere: |d| Gamma(D/2) / (sqrt(pi) Gamma((D+1)/2)); 2 |d| / pi in 2-D
    mean_abs_cos = math.exp(math.lgamma(dim / 2) - math.lgamma((dim + 1) / 2)) / math.sqrt(math.pi)
    tolerance = {1: 1e-12, 2: 1e-5, 192: 0.05}[dim]  # exact; the angles' quadrature; 1024 draws (2.4% spread)
    assert distances.sliced_emd(x, x + d) == pytest.approx(float(d.norm()) * mean_abs_cos, rel=tolerance)


def test_sliced_emd_images_flatten():
    a = torch.zeros(10, 3, 8, 8)
    assert distances.sliced_emd(a, a + 0.1) > 0
    with pytest.raises(ValueError, match="same shape"):
        distances.sliced_emd(a, torch.zeros(9, 3, 8, 8))


# --- spectra -------------------------------------------------------------------------------------------------------

def test_layer_spectra_known_weights_and_spectral_norm_original():
    import fastsn

    torch.manual_seed(0)
    linear = torch.nn.Linear(3, 4, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[3.0, 0, 0], [0, 2.0, 0], [0, 0, 0.5], [0, 0, 0]]))
    conv = fastsn.spectral_norm(torch.nn.Conv2d(2, 5, 3))
    hook = torch.nn.utils.spectral_norm(torch.nn.Linear(6, 2))
    transposed = torch.nn.ConvTranspose2d(4, 3, 2)
    model = torch.nn.Sequential(linear, conv, hook, transposed, torch.nn.ReLU())
    s = spectra.layer_spectra(model)
    assert set(s) == {"0", "1", "2", "3"}
    assert s["0"] == pytest.approx((3.0, 0.5))
    assert spectra.condition_number(s["0"]) == pytest.approx(6.0)
    # the weight before normalization, as (out, in * kernel)
    raw = conv.parametrizations.weight.original.detach().double().reshape(5, -1)
    assert s["1"][0] == pytest.approx(float(torch.linalg.matrix_norm(raw, 2)))
    assert s["2"][0] == pytest.approx(float(torch.linalg.matrix_norm(hook.weight_orig.detach().double(), 2)))
    flat = transposed.weight.detach().double().transpose(0, 1).reshape(3, -1)  # dim 1 is ConvTranspose's output
    assert s["3"] == pytest.approx(tuple(float(v) for v in torch.linalg.svdvals(flat)[[0, -1]]))


def test_condition_number_of_a_singular_matrix_is_infinite():
    assert spectra.condition_number((2.0, 0.0)) == math.inf


def test_grid_centers_distance_floor():
    # EMD between two independent draws of the grid is small but not zero: the finite-sample floor reported beside
    g = torch.Generator().manual_seed(0)
    centers = grid25_centers()
    a = centers[torch.randint(25, (400,), generator=g)] + 0.05 * torch.randn(400, 2, generator=g)
    b = centers[torch.randint(25, (400,), generator=g)] + 0.05 * torch.randn(400, 2, generator=g)
    assert 0 < distances.emd(a, b) < 1.0


def test_a_diverged_discriminator_has_nan_spectra():
    linear = torch.nn.Linear(3, 2)
    with torch.no_grad():
        linear.weight[0, 1] = math.nan
    s = spectra.layer_spectra(torch.nn.Sequential(linear, torch.nn.Linear(2, 1)))
    assert all(math.isnan(v) for v in s["0"]) and all(math.isfinite(v) for v in s["1"])
    assert math.isnan(spectra.condition_number(s["0"]))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_distances_of_a_set_with_a_non_finite_sample_are_nan(bad):
    real = _gaussian(50, 2, 1)
    fake = real.flip(0).clone()
    fake[3, 1] = bad
    assert math.isnan(distances.frechet_distance(real, fake))
    assert math.isnan(distances.emd(real, fake))
    assert math.isnan(distances.sliced_emd(real, fake))
    assert math.isnan(distances.inception_score(distances.mixture_posteriors(fake, ring8_centers(), 0.05)))
    nan_digits = torch.full((4, 3, 10), 0.1, dtype=torch.float64)
    nan_digits[2, 0, 0] = math.nan
    assert math.isnan(distances.stacked_inception_score(nan_digits))
