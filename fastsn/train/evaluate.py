"""Evaluation of a generator on its data set: the monitor's quick measures and the report's final metrics
(definitions in :mod:`fastsn.train.metrics` and :mod:`fastsn.train.distances`). Draws use their own generators, so
evaluating never changes the training's random streams.

Beside each distance or score of G's samples, the same measure of a second, independent real sample (``real_*``):
the value a perfect generator would get at this sample size (finite samples leave FID-local and EMD above 0)."""
from __future__ import annotations

import pathlib
from typing import Optional

import torch

from fastsn.train import distances, metrics
from fastsn.train.data import Dataset, GaussianMixture

EVAL_SAMPLES_2D = 2500          # VEEGAN / PacGAN
EVAL_SAMPLES_DIGITS = 26000     # PacGAN's stacked-MNIST count
PRDC_SAMPLES = 2500
EMD_SAMPLES_2D = 1000           # the exact assignment is O(n^3): ~1 s at 1000 points, 7-18 s at 2500
SLICED_EMD_SAMPLES = 2500
# the real_* floors by (data set, classifier accuracy): a second real sample measured like G's
_FLOORS: dict[tuple, dict[str, float]] = {}
MONITOR_SAMPLES = 500
EVAL_SEED = 12345


@torch.no_grad()
def sample_generator(G: torch.nn.Module, n: int, z_dim: int, seed: int, device: torch.device,
                     chunk: int = 4096) -> torch.Tensor:
    """n samples of G in eval mode (batch norm on running statistics), from latents drawn with ``seed``.

    Returns:
        (n, ...) float32 on the CPU.
    """
    dtype = next(G.parameters()).dtype
    z = torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed)).to(dtype)
    was_training = G.training
    G.eval()
    try:
        return torch.cat([G(z[i:i + chunk].to(device)).float().cpu() for i in range(0, n, chunk)])
    finally:
        G.train(was_training)


def _finite_rows(samples: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the samples (N, ...) whose values are all finite."""
    return samples.flatten(1).isfinite().all(1)


class Evaluator:
    """Measures G on one data set.

    Args:
        data: the data set; cache_dir: where the digit classifier is cached (stacked digits only).
    """

    def __init__(self, data: Dataset, cache_dir: Optional[pathlib.Path] = None) -> None:
        self.data = data
        self.classifier = None
        if not isinstance(data, GaussianMixture):
            from fastsn.train.classifier import load_classifier
            self.classifier = load_classifier(data, cache_dir)
        self.monitor_real = data.sample(MONITOR_SAMPLES, torch.Generator().manual_seed(EVAL_SEED + 1))

    def modes_hit(self, samples: torch.Tensor) -> int:
        """Modes hit by samples: 2-D, nearest to a high-quality sample; digits, classified into (a sample with a
        non-finite value hits none: the classifier would label it anyway)."""
        if self.classifier is None:
            return metrics.mixture_metrics(samples, self.data.centers, self.data.std)["modes"]
        return int(torch.unique(self.classifier.modes(samples[_finite_rows(samples)])).numel())

    def monitor(self, G: torch.nn.Module, z_dim: int, step: int, device: torch.device) -> tuple[int, float]:
        """(modes hit, fake/real mean pairwise-distance ratio) on 500 samples."""
        fake = sample_generator(G, MONITOR_SAMPLES, z_dim, EVAL_SEED + 2 + step, device)
        return self.modes_hit(fake), metrics.pairwise_distance_ratio(fake, self.monitor_real)

    def final(self, G: torch.nn.Module, z_dim: int, device: torch.device) -> tuple[dict, torch.Tensor]:
        """The report's metrics.

        Returns:
            (metrics dict, the samples drawn: (2500, 2) or (26000, 3, 8, 8)). The dict's "non_finite_samples"
            counts G's samples with a NaN or infinite value (a diverged G): they hit no mode and lie in no
            precision/recall ball, and the distances of a set holding one are NaN.
        """
        real_gen = torch.Generator().manual_seed(EVAL_SEED + 3)
        if self.classifier is None:
            fake = sample_generator(G, EVAL_SAMPLES_2D, z_dim, EVAL_SEED, device)
            real = self.data.sample(EVAL_SAMPLES_2D, real_gen)
            result = metrics.mixture_metrics(fake, self.data.centers, self.data.std)
            result.update(metrics.prdc(real, fake))
        else:
            fake = sample_generator(G, EVAL_SAMPLES_DIGITS, z_dim, EVAL_SEED, device)
            real, _ = self.data.sample_with_modes(EVAL_SAMPLES_DIGITS, real_gen)
            result = metrics.mode_histogram_metrics(self.classifier.modes(fake[_finite_rows(fake)]),
                                                    self.data.n_modes)
            floor = metrics.mode_histogram_metrics(self.classifier.modes(real), self.data.n_modes)
            result.update({"real_modes": floor["modes"], "real_reverse_kl": floor["reverse_kl"],
                           "classifier_accuracy": self.classifier.accuracy})
            result.update(metrics.prdc(self.classifier.features(real[:PRDC_SAMPLES]),
                                       self.classifier.features(fake[:PRDC_SAMPLES])))
        result.update(self._distances(real, fake))
        result["non_finite_samples"] = int((~_finite_rows(fake)).sum())
        key = (self.data.name, self.classifier.accuracy if self.classifier else None)
        if key not in _FLOORS:  # the same for every run on this data: computed once per process
            other = self.data.sample(real.shape[0], torch.Generator().manual_seed(EVAL_SEED + 4))
            _FLOORS[key] = {f"real_{k}": v for k, v in self._distances(real, other).items()}
        result.update(_FLOORS[key])
        return result, fake

    def _distances(self, real: torch.Tensor, x: torch.Tensor) -> dict[str, float]:
        """FID-local, IS-local and EMD (2-D) or sliced EMD (images) of samples x against the real samples."""
        if self.classifier is None:
            return {"fid_local": distances.frechet_distance(real, x),
                    "is_local": distances.inception_score(distances.mixture_posteriors(x, self.data.centers,
                                                                                       self.data.std)),
                    "emd": distances.emd(real[:EMD_SAMPLES_2D], x[:EMD_SAMPLES_2D])}
        return {"fid_local": distances.frechet_distance(self.classifier.features(real), self.classifier.features(x)),
                "is_local": distances.stacked_inception_score(self.classifier.probabilities(x)),
                "sliced_emd": distances.sliced_emd(real[:SLICED_EMD_SAMPLES], x[:SLICED_EMD_SAMPLES])}
