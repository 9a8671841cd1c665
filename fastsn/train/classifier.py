"""The digit classifier that labels stacked-digits samples: a one-hidden-layer perceptron on the 64 pixels (64 ReLU
units, softmax over 10 digits), fitted once (scikit-learn's ``MLPClassifier``, fixed seed) on the digits held out from
the GAN's training pool, and cached on disk as its weights (so later runs need neither scikit-learn's fit nor its
pickles: labelling is two matrix products in torch). Its hidden layer is the penultimate layer that FID-local and
precision/recall read, its softmax what IS-local reads.

Its accuracy is measured on the GAN's training pool, which it never saw (0.98; a logistic regression, the first
version, reached 0.967).
"""
from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass
from typing import Optional

import torch

from fastsn.train.data import DIGITS_SPLIT_SEED, DIGITS_TRAIN, StackedDigits

CACHE_VERSION = 2
HIDDEN = 64
L2_ALPHA = 1e-2  # scikit-learn's alpha; 1e-4 gave the same accuracy
FIT_SEED = 0


def default_cache_dir() -> pathlib.Path:
    """$FASTSN_CACHE, else $XDG_CACHE_HOME/fastsn, else ~/.cache/fastsn."""
    if os.environ.get("FASTSN_CACHE"):
        return pathlib.Path(os.environ["FASTSN_CACHE"])
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "fastsn"


@dataclass
class DigitClassifier:
    """h = relu(x @ hidden_weight.T + hidden_bias), logits = h @ weight.T + bias, on each 8x8 digit flattened to 64
    values in [-1, 1].

    Attributes:
        hidden_weight: (64, 64); hidden_bias: (64,); weight: (10, 64); bias: (10,).
        accuracy: on the GAN's training pool (unseen in the fit).
    """
    hidden_weight: torch.Tensor
    hidden_bias: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    accuracy: float

    def hidden(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images (N, 3, 8, 8). Returns: (N, 3, 64) the penultimate layer, per channel."""
        x = images.detach().float().cpu().reshape(images.shape[0], 3, 64)
        return torch.relu(x @ self.hidden_weight.T + self.hidden_bias)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images (N, 3, 8, 8). Returns: (N, 3, 10) logits per channel."""
        return self.hidden(images) @ self.weight.T + self.bias

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images (N, 3, 8, 8). Returns: (N, 3, 10) the softmax per channel."""
        return self.logits(images).softmax(-1)

    def modes(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images (N, 3, 8, 8). Returns: (N,) int64 modes 100 d0 + 10 d1 + d2."""
        digits = self.logits(images).argmax(-1)  # (N, 3)
        return digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images (N, 3, 8, 8). Returns: (N, 192) the three channels' penultimate layers side by side (the
        features of FID-local and precision/recall)."""
        return self.hidden(images).reshape(images.shape[0], 3 * HIDDEN)


_TENSORS = ("hidden_weight", "hidden_bias", "weight", "bias")


def _fit(data: StackedDigits) -> DigitClassifier:
    try:
        from sklearn.neural_network import MLPClassifier
    except ImportError as e:
        raise ImportError("fitting the digit classifier needs scikit-learn: pip install 'fastsn[train]'") from e
    model = MLPClassifier(hidden_layer_sizes=(HIDDEN,), alpha=L2_ALPHA, max_iter=2000, random_state=FIT_SEED)
    model.fit(data.held_images.reshape(-1, 64).numpy(), data.held_labels.numpy())
    # scikit-learn stores (in, out) matrices
    tensors = [torch.as_tensor(a, dtype=torch.float32) for a in
               (model.coefs_[0].T, model.intercepts_[0], model.coefs_[1].T, model.intercepts_[1])]
    classifier = DigitClassifier(*tensors, accuracy=0.0)
    pool = data.images.reshape(-1, 1, 8, 8).expand(-1, 3, 8, 8)  # each training digit as a stack of three copies
    predicted = classifier.logits(pool)[:, 0].argmax(1)
    classifier.accuracy = float((predicted == data.labels).float().mean())
    return classifier


def load_classifier(data: StackedDigits, cache_dir: Optional[pathlib.Path] = None) -> DigitClassifier:
    """The cached classifier, fitting and caching it on first use.

    Args:
        data: the stacked-digits data set (its held-out and training pools).
        cache_dir: where the weights live (``default_cache_dir()`` when None).

    Returns:
        The classifier.
    """
    cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"digits-mlp-v{CACHE_VERSION}-split{DIGITS_SPLIT_SEED}-{DIGITS_TRAIN}.json"
    if path.exists():
        saved = json.loads(path.read_text())
        return DigitClassifier(*(torch.tensor(saved[k]) for k in _TENSORS), accuracy=saved["accuracy"])
    classifier = _fit(data)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")  # written whole, then renamed: concurrent runs never read half
    saved = {k: getattr(classifier, k).tolist() for k in _TENSORS}
    tmp.write_text(json.dumps(saved | {"accuracy": classifier.accuracy}))
    os.replace(tmp, path)
    return classifier
