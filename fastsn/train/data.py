"""Built-in data sets of the reference trainer, generated on the fly (no download): ``ring8``, ``grid25``
(Gaussian mixtures in 2-D, the VEEGAN/PacGAN benchmarks) and ``stacked-digits`` (three 8x8 digits of scikit-learn's
bundled ``load_digits`` stacked as channels: 10^3 = 1000 modes, the small sibling of stacked MNIST).

Every draw takes a ``torch.Generator``, so a run is determined by its seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

DATASETS = ("ring8", "grid25", "stacked-digits")

# load_digits holds 1797 images with values 0..16; a fixed permutation splits them once and for all: the first
# DIGITS_TRAIN images are the GAN's training pool, the rest are held out to fit the evaluation classifier.
DIGITS_SPLIT_SEED = 0
DIGITS_TRAIN = 900


def ring8_centers() -> torch.Tensor:
    """The 8 centres (2 cos(2 pi k / 8), 2 sin(2 pi k / 8)), k = 0..7: eight distinct points. (``linspace(0, 2 pi,
    8)``, as in some published code, repeats the first angle as the last, leaving 7 distinct modes.)

    Returns:
        (8, 2) float32.
    """
    angles = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
    return (2.0 * torch.stack([angles.cos(), angles.sin()], 1)).float()


def grid25_centers() -> torch.Tensor:
    """The 25 centres (-4 + 2i, -4 + 2j), i, j = 0..4.

    Returns:
        (25, 2) float32, row i * 5 + j.
    """
    coords = -4.0 + 2.0 * torch.arange(5, dtype=torch.float32)
    return torch.cartesian_prod(coords, coords)


@dataclass
class GaussianMixture:
    """An equal-weight mixture of isotropic Gaussians in 2-D.

    Attributes:
        name: "ring8" or "grid25".
        centers: (M, 2) mode centres.
        std: the standard deviation of every component.
    """
    name: str
    centers: torch.Tensor
    std: float

    @property
    def n_modes(self) -> int:
        return self.centers.shape[0]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (2,)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Draw n points: a uniform mode, then its Gaussian.

        Args:
            n: number of points.
            generator: a CPU ``torch.Generator`` (draws happen on the CPU so every device sees the same numbers).

        Returns:
            (n, 2) float32 on the CPU.
        """
        modes = torch.randint(self.n_modes, (n,), generator=generator)
        return self.centers[modes] + self.std * torch.randn(n, 2, generator=generator)


def _digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """load_digits split by a fixed permutation.

    Returns:
        (train images (900, 8, 8), train labels (900,), held-out images (897, 8, 8), held-out labels (897,)); images
        float32 scaled from 0..16 to [-1, 1], labels int64.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # scikit-learn is in the optional extra "train"
        raise ImportError("the stacked-digits data needs scikit-learn: pip install 'fastsn[train]'") from e
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32) / 8.0 - 1.0  # (1797, 8, 8) in [-1, 1]
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    train, held = order[:DIGITS_TRAIN], order[DIGITS_TRAIN:]
    return images[train], labels[train], images[held], labels[held]


class StackedDigits:
    """Three independent digits from the training pool stacked as the channels of one (3, 8, 8) image; its mode is
    the label triple, 100 d0 + 10 d1 + d2, one of 1000."""

    name = "stacked-digits"
    n_modes = 1000
    sample_shape = (3, 8, 8)

    def __init__(self) -> None:
        self.images, self.labels, self.held_images, self.held_labels = _digits_split()

    def sample_with_modes(self, n: int, generator: Optional[torch.Generator] = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw n stacked images with their modes.

        Returns:
            images (n, 3, 8, 8) float32 in [-1, 1] and modes (n,) int64 in [0, 1000), on the CPU.
        """
        picks = torch.randint(len(self.labels), (n, 3), generator=generator)  # (n, 3) indices into the pool
        digits = self.labels[picks]
        return self.images[picks], digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2]

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Draw n stacked images, (n, 3, 8, 8) float32 in [-1, 1] on the CPU."""
        return self.sample_with_modes(n, generator)[0]


Dataset = GaussianMixture | StackedDigits


def make_dataset(name: str) -> Dataset:
    """The data set called ``name``, one of :data:`DATASETS`.

    Raises:
        ValueError: an unknown name.
    """
    if name == "ring8":
        return GaussianMixture("ring8", ring8_centers(), 0.02)
    if name == "grid25":
        return GaussianMixture("grid25", grid25_centers(), 0.05)
    if name == "stacked-digits":
        return StackedDigits()
    raise ValueError(f"unknown data set {name!r}: choose one of {', '.join(DATASETS)}")
