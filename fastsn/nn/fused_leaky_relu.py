"""``fastsn.nn.FusedLeakyReLU``: bias + leaky ReLU + gain as one fused op (``fastsn.ops.bias_leaky_relu``)."""
from __future__ import annotations

import math

import torch

from fastsn.ops.bias_leaky_relu import bias_leaky_relu


class FusedLeakyReLU(torch.nn.Module):
    """y = leaky_relu(x + bias, negative_slope) * scale, bias along dim 1 (channels), with fused first- and
    second-order gradients.

    The same parameter (``bias``, zeros, shape (channels,)), defaults and output as the StyleGAN2 ``FusedLeakyReLU``
    of rosinality/stylegan2-pytorch, so its state_dict loads.

    Args:
        channels: C, the size of dim 1 of the input (N, C, ...).
        negative_slope: the slope where x + bias <= 0; non-negative.
        bias: whether to learn a per-channel bias.
        scale: the gain after the activation (sqrt(2) keeps the second moment of a leaky ReLU near 1).
    """

    def __init__(self, channels: int, negative_slope: float = 0.2, *, bias: bool = True,
                 scale: float = math.sqrt(2)) -> None:
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"FusedLeakyReLU(): argument 'channels' must be a positive int, got {channels!r}")
        if isinstance(negative_slope, bool):  # rosinality's FusedLeakyReLU(channel, bias, ...): bias comes second
            raise TypeError("FusedLeakyReLU(): argument 'negative_slope' must be a number, got a bool (the bias "
                            "switch is the keyword argument 'bias')")
        if not negative_slope >= 0:
            raise ValueError(f"FusedLeakyReLU(): argument 'negative_slope' must be non-negative (the gradient reads "
                             f"the mask from the output), got {negative_slope!r}")
        if not scale > 0:
            raise ValueError(f"FusedLeakyReLU(): argument 'scale' must be positive, got {scale!r}")
        self.channels, self.negative_slope, self.scale = channels, negative_slope, scale
        self.bias = torch.nn.Parameter(torch.zeros(channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (N, C, ...). Returns: y, x's shape."""
        bias = self.bias.to(x.dtype) if self.bias is not None and self.bias.dtype != x.dtype else self.bias
        return bias_leaky_relu(x, bias, self.negative_slope, self.scale, dim=1)

    def extra_repr(self) -> str:
        return (f"{self.channels}, negative_slope={self.negative_slope}, scale={self.scale:g}, "
                f"bias={self.bias is not None}")
