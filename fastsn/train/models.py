"""Generators and discriminators of the reference trainer, built for one backend.

``backend="fastsn"`` uses fastsn's modules (spectral norm, ``FusedLeakyReLU``, ``MinibatchDiscrimination``,
``MinibatchStdDev``); ``backend="torch"`` uses plain PyTorch modules of the same shapes and parameter names
(``torch.nn.utils.parametrizations.spectral_norm`` and :mod:`fastsn.train.twins`). Built under the same seed, the
two have identical weights and spectral-norm vectors: fastsn's spectral norm draws u and v as torch's does.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

import fastsn
from fastsn.train import twins

BACKENDS = ("fastsn", "torch")
HIDDEN_2D = 128      # MLP width for the 2-D mixtures (--model small)
# --model large, 2-D: the VEEGAN/PacGAN sizes (G: 4 hidden ReLU layers of 400 with batch norm; D: 3 hidden layers
# of 200): the small G leaves ~15% of its samples on bridges between the ring's modes (ring8, --pack 4, 5000 steps:
# 75% within 3 std, while the modes themselves had the data's std)
LARGE_G_2D, LARGE_G_LAYERS_2D, LARGE_D_2D = 400, 4, 200
MODELS = ("small", "large")
Z_DIM_2D = 16
Z_DIM_IMAGE = 64
# minibatch discrimination: B kernels of C dims. Small, because the torch twin's naive broadcast builds (N, N, B, C):
# at N = 256 with 16 x 8 kernels a step took 970 ms on the 2-core VM (fastsn's kernel: 58 ms)
MBD_KERNELS = 8
MBD_KERNEL_DIMS = 4
MBSTD_GROUP = 4


@dataclass
class ModelOptions:
    """What shapes the networks.

    Attributes:
        data: "ring8", "grid25" or "stacked-digits".
        backend: "fastsn" or "torch".
        sn: spectral norm on every Linear/Conv layer of D.
        mbd: minibatch discrimination before D's last layer.
        mbstd: minibatch std-dev before D's last layer (or last conv block).
        n_power_iterations: the spectral norms' power iterations per forward in training.
        mbd_switch: minibatch discrimination built switched off, for ``--strengthen mbd`` to switch on
            (:class:`SwitchableFeatures`; ignored when ``mbd`` is on).
        pack: PacGAN's M: D judges M samples at once, so its input layer takes M times the features of one sample
            (2-D: 2M inputs; images: 3M channels).
        model: "small" (the default networks) or "large" (2-D: the VEEGAN/PacGAN sizes; images: twice the channels).
    """
    data: str
    backend: str
    sn: bool = False
    mbd: bool = False
    mbstd: bool = False
    n_power_iterations: int = 1
    mbd_switch: bool = False
    pack: int = 1
    model: str = "small"

    @classmethod
    def from_config(cls, config, backend: Optional[str] = None) -> "ModelOptions":
        """The options of a :class:`fastsn.train.config.TrainConfig` (with ``backend`` instead of its own)."""
        switch = config.on_collapse == "strengthen" and "mbd" in config.policies and not config.mbd
        return cls(config.data, backend or config.backend, config.sn, config.mbd, config.mbstd,
                   config.n_power_iterations, switch, config.pack, config.model)


class SwitchableFeatures(torch.nn.Module):
    """A layer that appends features (x (N, F) -> cat([x, o]) (N, F + B)), with its appended features multiplied by a
    switch: 0 (off) until :meth:`switch_on`. Off, D sees zeros where o would be and o's parameters get exactly zero
    gradients (Adam leaves them unchanged), yet every parameter takes part in each backward, as DDP requires.

    Args:
        layer: the wrapped layer; in_features: F.
    """

    def __init__(self, layer: torch.nn.Module, in_features: int) -> None:
        super().__init__()
        self.layer, self.in_features = layer, in_features
        # a buffer: saved with the model, and broadcast from rank 0 by DDP
        self.register_buffer("on", torch.zeros(()))

    def switch_on(self) -> None:
        self.on.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (N, F). Returns: (N, F + B)."""
        y = self.layer(x)
        return torch.cat([y[:, :self.in_features], y[:, self.in_features:] * self.on], 1)


class _Parts:
    """The backend's layer constructors."""

    def __init__(self, options: ModelOptions) -> None:
        if options.backend not in BACKENDS:
            raise ValueError(f"unknown backend {options.backend!r}: choose one of {', '.join(BACKENDS)}")
        self.options = options
        fast = options.backend == "fastsn"
        spectral_norm = fastsn.spectral_norm if fast else torch.nn.utils.parametrizations.spectral_norm
        self.sn: Callable[[torch.nn.Module], torch.nn.Module] = functools.partial(
            spectral_norm, n_power_iterations=options.n_power_iterations)

    def weight(self, layer: torch.nn.Module) -> torch.nn.Module:
        return self.sn(layer) if self.options.sn else layer

    def act(self, channels: int) -> torch.nn.Module:
        # bias-free layers followed by a bias + leaky ReLU: fastsn fuses the pair (and its double backward)
        if self.options.backend == "fastsn":
            return fastsn.nn.FusedLeakyReLU(channels, 0.2, scale=1.0)
        return twins.BiasLeakyReLU(channels, 0.2, scale=1.0)

    def mbd(self, features: int) -> torch.nn.Module:
        if self.options.backend == "fastsn":
            layer = fastsn.nn.MinibatchDiscrimination(features, MBD_KERNELS, MBD_KERNEL_DIMS, mean=True)
        else:
            layer = twins.NaiveMinibatchDiscrimination(features, MBD_KERNELS, MBD_KERNEL_DIMS, mean=True)
        # mean=True: o in [0, 1] whatever the batch (summed, a collapsed batch gives o = N - 1 = 255 and D's first
        # loss was 39, saturating D at once). N(0, 1) (torchgan's init) makes |M_i - M_j|_1 ~ sqrt(F) C, so every
        # exp(-.) underflows and the layer has no gradient: scale T so that M = x @ T has entries of x's size
        with torch.no_grad():
            layer.T.mul_(1.0 / math.sqrt(features))
        return layer if self.options.mbd else SwitchableFeatures(layer, features)

    @property
    def with_mbd(self) -> bool:
        """A minibatch-discrimination layer in D: on (--mbd), or switched off for --strengthen mbd."""
        return self.options.mbd or self.options.mbd_switch

    def mbstd(self) -> torch.nn.Module:
        if self.options.backend == "fastsn":
            return fastsn.nn.MinibatchStdDev(MBSTD_GROUP, 1)
        return twins.MinibatchStdDevTwin(MBSTD_GROUP, 1)


def _head(parts: _Parts, features: int) -> list[torch.nn.Module]:
    """[mbd] Linear(., 1) on (N, features) features (minibatch discrimination on or switchable)."""
    layers: list[torch.nn.Module] = []
    if parts.with_mbd:
        layers.append(parts.mbd(features))
        features += MBD_KERNELS
    layers.append(parts.weight(torch.nn.Linear(features, 1)))
    return layers


def mlp_generator(model: str = "small") -> torch.nn.Module:
    """z (N, 16) -> x (N, 2). small: three ReLU layers of 128; large: four Linear + batch norm + ReLU layers of 400."""
    if model == "large":
        layers: list[torch.nn.Module] = []
        for fan_in in (Z_DIM_2D,) + (LARGE_G_2D,) * (LARGE_G_LAYERS_2D - 1):
            # no bias before batch norm: its mean subtraction cancels it, so its true gradient is 0 and Adam would
            # turn rounding noise into full steps of a parameter that changes nothing
            layers += [torch.nn.Linear(fan_in, LARGE_G_2D, bias=False), torch.nn.BatchNorm1d(LARGE_G_2D),
                       torch.nn.ReLU()]
        return torch.nn.Sequential(*layers, torch.nn.Linear(LARGE_G_2D, 2))
    h = HIDDEN_2D
    return torch.nn.Sequential(torch.nn.Linear(Z_DIM_2D, h), torch.nn.ReLU(), torch.nn.Linear(h, h), torch.nn.ReLU(),
                               torch.nn.Linear(h, h), torch.nn.ReLU(), torch.nn.Linear(h, 2))


def mlp_discriminator(parts: _Parts) -> torch.nn.Module:
    """x (N, 2M) -> scores (N, 1), M = options.pack: three bias-free Linear + bias/leaky-ReLU layers of 128 (--model
    large: 200), then the head."""
    h = LARGE_D_2D if parts.options.model == "large" else HIDDEN_2D
    layers: list[torch.nn.Module] = []
    for fan_in in (2 * parts.options.pack, h, h):
        layers += [parts.weight(torch.nn.Linear(fan_in, h, bias=False)), parts.act(h)]
    if parts.options.mbstd:
        layers.append(parts.mbstd())
        h += 1
    return torch.nn.Sequential(*layers, *_head(parts, h))


def conv_generator(model: str = "small") -> torch.nn.Module:
    """z (N, 64) -> x (N, 3, 8, 8) in [-1, 1]: DCGAN-style, 2x2 -> 4x4 -> 8x8 with batch norm; channels 128, 64, 32
    (--model large: 256, 128, 64). The transposed convolutions have no bias: the batch norm after each cancels a
    per-channel bias (true gradient 0, which Adam would turn into full steps of rounding noise)."""
    w = 2 if model == "large" else 1
    return torch.nn.Sequential(
        torch.nn.Linear(Z_DIM_IMAGE, 128 * w * 2 * 2), torch.nn.Unflatten(1, (128 * w, 2, 2)),
        torch.nn.BatchNorm2d(128 * w), torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(128 * w, 64 * w, 4, 2, 1, bias=False), torch.nn.BatchNorm2d(64 * w),  # 4 x 4
        torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(64 * w, 32 * w, 4, 2, 1, bias=False), torch.nn.BatchNorm2d(32 * w),  # 8 x 8
        torch.nn.ReLU(),
        torch.nn.Conv2d(32 * w, 3, 3, 1, 1), torch.nn.Tanh())


def conv_discriminator(parts: _Parts) -> torch.nn.Module:
    """x (N, 3M, 8, 8) -> scores (N, 1), M = options.pack: 8x8 -> 4x4 -> 2x2 bias-free convolutions + bias/leaky
    ReLU to 32, 64, 128 channels (--model large: 64, 128, 256), then the head on the flattened 2x2 map (minibatch
    std-dev as an extra channel of it)."""
    w = 2 if parts.options.model == "large" else 1
    layers: list[torch.nn.Module] = []
    for c_in, c_out, k, s in ((3 * parts.options.pack, 32 * w, 3, 1), (32 * w, 64 * w, 4, 2), (64 * w, 128 * w, 4, 2)):
        layers += [parts.weight(torch.nn.Conv2d(c_in, c_out, k, s, 1, bias=False)), parts.act(c_out)]
    channels = 128 * w
    if parts.options.mbstd:
        layers.append(parts.mbstd())
        channels += 1
    layers.append(torch.nn.Flatten())
    return torch.nn.Sequential(*layers, *_head(parts, channels * 2 * 2))


def pack_samples(x: torch.Tensor, m: int) -> torch.Tensor:
    """PacGAN's packing (Lin et al. 2018): M consecutive samples concatenated along the feature or channel dimension,
    so that D judges them jointly and a G that repeats itself is easy to tell from real data.

    Args:
        x: (N, C, ...) samples, N divisible by m (2-D data: (N, 2); images: (N, 3, H, W)).
        m: samples per packed sample; 1 returns x unchanged.

    Returns:
        (N / m, m * C, ...): packed sample i holds samples i*m, ..., i*m + m - 1 in that order (a view when x is
        contiguous).

    Raises:
        ValueError: N not divisible by m.
    """
    if m == 1:
        return x
    n = x.shape[0]
    if n % m:
        raise ValueError(f"--pack: a batch of {n} samples does not split into packs of {m}")
    # row-major reshape: the m samples of a pack are adjacent rows, so their features land side by side
    return x.reshape((n // m, m * x.shape[1]) + tuple(x.shape[2:]))


def z_dim(data: str) -> int:
    """The latent size of the generator for ``data``."""
    return Z_DIM_IMAGE if data == "stacked-digits" else Z_DIM_2D


def build_models(options: ModelOptions, seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """G and D, initialized from ``seed`` (the same numbers for both backends).

    Returns:
        (G, D) on the CPU, in training mode.
    """
    parts = _Parts(options)
    torch.manual_seed(seed)
    if options.model not in MODELS:
        raise ValueError(f"--model: invalid value {options.model!r} (choose from {', '.join(MODELS)})")
    if options.data == "stacked-digits":
        return conv_generator(options.model), conv_discriminator(parts)
    return mlp_generator(options.model), mlp_discriminator(parts)
