"""The digit classifier that labels stacked-digits samples: a multinomial logistic regression on the 64 pixels,
fitted once (scikit-learn) on the digits held out from the GAN's training pool, and cached on disk as its weights
(so later runs need neither scikit-learn's fit nor its pickles: labelling is one matrix product in torch).

Its accuracy is measured on the GAN's training pool, which it never saw.
"""
from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass
from typing import Optional

import torch

from fastsn.train.data import DIGITS_SPLIT_SEED, DIGITS_TRAIN, StackedDigits

CACHE_VERSION = 1
REGULARIZATION_C = 1.0


def default_cache_dir() -> pathlib.Path:
    """$FASTSN_CACHE, else $XDG_CACHE_HOME/fastsn, else ~/.cache/fastsn."""
    if os.environ.get("FASTSN_CACHE"):
        return pathlib.Path(os.environ["FASTSN_CACHE"])
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "fastsn"


@dataclass
class DigitClassifier:
    """logits = x @ weight.T + bias on 8x8 digits flattened to 64 values in [-1, 1].

    Attributes:
        weight: (10, 64); bias: (10,); accuracy: on the GAN's training pool (unseen in the fit).
    """
    weight: torch.Tensor
    bias: torch.Tensor
    accuracy: float

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images (N, 3, 8, 8). Returns: (N, 3, 10) logits per channel."""
        x = images.detach().float().cpu().reshape(images.shape[0], 3, 64)
        return x @ self.weight.T + self.bias

    def modes(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images (N, 3, 8, 8). Returns: (N,) int64 modes 100 d0 + 10 d1 + d2."""
        digits = self.logits(images).argmax(-1)  # (N, 3)
        return digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images (N, 3, 8, 8). Returns: (N, 30) the concatenated logits, for precision/recall."""
        return self.logits(images).reshape(images.shape[0], 30)


def _fit(data: StackedDigits) -> DigitClassifier:
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError as e:
        raise ImportError("fitting the digit classifier needs scikit-learn: pip install 'fastsn[train]'") from e
    model = LogisticRegression(C=REGULARIZATION_C, max_iter=2000)
    model.fit(data.held_images.reshape(-1, 64).numpy(), data.held_labels.numpy())
    weight = torch.as_tensor(model.coef_, dtype=torch.float32)
    bias = torch.as_tensor(model.intercept_, dtype=torch.float32)
    predicted = (data.images.reshape(-1, 64) @ weight.T + bias).argmax(1)
    return DigitClassifier(weight, bias, float((predicted == data.labels).float().mean()))


def load_classifier(data: StackedDigits, cache_dir: Optional[pathlib.Path] = None) -> DigitClassifier:
    """The cached classifier, fitting and caching it on first use.

    Args:
        data: the stacked-digits data set (its held-out and training pools).
        cache_dir: where the weights live (``default_cache_dir()`` when None).

    Returns:
        The classifier.
    """
    cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"digits-logreg-v{CACHE_VERSION}-split{DIGITS_SPLIT_SEED}-{DIGITS_TRAIN}.json"
    if path.exists():
        saved = json.loads(path.read_text())
        return DigitClassifier(torch.tensor(saved["weight"]), torch.tensor(saved["bias"]), saved["accuracy"])
    classifier = _fit(data)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")  # written whole, then renamed: concurrent runs never read half
    tmp.write_text(json.dumps({"weight": classifier.weight.tolist(), "bias": classifier.bias.tolist(),
                               "accuracy": classifier.accuracy}))
    os.replace(tmp, path)
    return classifier
