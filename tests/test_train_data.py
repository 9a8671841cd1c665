"""fastsn.train.data: the mixtures' geometry and every data set's determinism given its generator."""
from __future__ import annotations

import math

import pytest
import torch

from fastsn.train.data import make_dataset, grid25_centers, ring8_centers


def test_ring8_has_eight_distinct_modes_at_radius_two():
    c = ring8_centers().double()
    assert c.shape == (8, 2)
    torch.testing.assert_close(c.norm(dim=1), torch.full((8,), 2.0, dtype=torch.float64))
    angles = torch.atan2(c[:, 1], c[:, 0]) % (2 * math.pi)
    torch.testing.assert_close(angles, 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8, atol=1e-6, rtol=0)
    assert torch.pdist(c).min() > 1.5  # no two on one point (the linspace(0, 2 pi, 8) bug)


def test_grid25():
    c = grid25_centers()
    assert c.shape == (25, 2)
    assert sorted(set(c[:, 0].tolist())) == [-4.0, -2.0, 0.0, 2.0, 4.0]
    assert len({tuple(p) for p in c.tolist()}) == 25


@pytest.mark.parametrize("name", ["ring8", "grid25", "stacked-digits"])
def test_same_seed_same_samples(name):
    data = make_dataset(name)
    a = data.sample(64, torch.Generator().manual_seed(3))
    b = data.sample(64, torch.Generator().manual_seed(3))
    c = data.sample(64, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (64,) + tuple(data.sample_shape) and a.dtype == torch.float32


@pytest.mark.parametrize("name,std", [("ring8", 0.02), ("grid25", 0.05)])
def test_mixture_spread_is_its_std(name, std):
    data = make_dataset(name)
    x = data.sample(20000, torch.Generator().manual_seed(0))
    offsets = x - data.centers[torch.cdist(x, data.centers).argmin(1)]
    assert offsets.std().item() == pytest.approx(std, rel=0.03)


def test_stacked_digits_modes_are_the_label_triples():
    data = make_dataset("stacked-digits")
    assert data.n_modes == 1000 and data.images.min() >= -1 and data.images.max() <= 1
    images, modes = data.sample_with_modes(2000, torch.Generator().manual_seed(0))
    assert images.shape == (2000, 3, 8, 8)
    assert 0 <= int(modes.min()) and int(modes.max()) < 1000
    assert torch.unique(modes).numel() > 800  # 2000 uniform draws over 1000 modes
    # the training pool and the held-out pool (the classifier's) are disjoint parts of load_digits
    assert len(data.labels) + len(data.held_labels) == 1797
