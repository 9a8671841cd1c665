"""``fastsn.nn.MinibatchStdDev``: the minibatch standard-deviation layer of ProGAN / StyleGAN / StyleGAN2 on the fused
op ``fastsn.ops.minibatch_stddev``."""
from __future__ import annotations

from typing import Optional

import torch

from fastsn.ops._checks import positive_int
from fastsn.ops.minibatch_stddev import minibatch_stddev


class MinibatchStdDev(torch.nn.Module):
    """cat([x, stats], 1): per group of samples, the std over the group averaged over each feature group's channels
    and positions, appended as ``num_channels`` channels (StyleGAN2-ADA's ``MinibatchStdLayer``, no parameters).

    Groups: G = min(group_size, N) samples, sample n in row n % (N / G) (StyleGAN2-ADA's rule); a batch that G does
    not divide raises a RuntimeError naming 'x' (as StyleGAN2-ADA's assertion, with the sizes). Inputs may be
    (N, C, H, W), (N, C) (an MLP discriminator: output (N, C + num_channels)) or (N, C, *spatial).

    Args:
        group_size: samples per group (upper bound: a smaller batch forms one group); None: the whole batch is one
            group (as StyleGAN2-ADA's ``group_size=None``).
        num_channels: statistics appended per sample, each over C / num_channels channels; must divide C.
    """

    def __init__(self, group_size: Optional[int] = 4, num_channels: int = 1) -> None:
        super().__init__()
        if group_size is not None:
            group_size = positive_int(group_size, "MinibatchStdDev()", "group_size", " or None")
        self.group_size = group_size
        self.num_channels = positive_int(num_channels, "MinibatchStdDev()", "num_channels")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (N, C, *spatial). Returns: (N, C + num_channels, *spatial)."""
        group_size = self.group_size if self.group_size is not None else max(x.shape[0], 1) if x.dim() else 1
        return minibatch_stddev(x, group_size, self.num_channels)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"
