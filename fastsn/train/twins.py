"""Plain-PyTorch twins of fastsn's modules, for ``--backend torch``: the same parameter names, shapes and defaults,
so state_dicts load both ways and ``--compare`` can start both backends from identical weights. Each is the
textbook formula, written for clarity rather than speed (that is what fastsn's kernels are measured against)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

STDDEV_EPS = 1e-8  # StyleGAN's epsilon inside the square root of the group variance


class BiasLeakyReLU(torch.nn.Module):
    """leaky_relu(x + bias, negative_slope) * scale, bias along dim 1: the twin of ``fastsn.nn.FusedLeakyReLU``.

    Args:
        channels: C, the size of dim 1 of the input (N, C, ...).
        negative_slope: the slope where x + bias <= 0.
        scale: the gain after the activation.
    """

    def __init__(self, channels: int, negative_slope: float = 0.2, *, scale: float = 1.0) -> None:
        super().__init__()
        self.negative_slope, self.scale = negative_slope, scale
        self.bias = torch.nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (N, C, ...). Returns: x's shape."""
        bias = self.bias.view((1, -1) + (1,) * (x.dim() - 2))
        return F.leaky_relu(x + bias, self.negative_slope) * self.scale


class NaiveMinibatchDiscrimination(torch.nn.Module):
    """Minibatch discrimination (Salimans et al. 2016) by the N x N broadcast: the twin of
    ``fastsn.nn.MinibatchDiscrimination``.

    o[i, b] = sum_{j != i} exp(-sum_c |M[i, b, c] - M[j, b, c]|), M = x @ T viewed as (N, B, C); output cat([x, o], 1).

    Args:
        in_features: F; out_features: B, the kernels; kernel_dims: C.
        mean: divide o by N - 1.
    """

    def __init__(self, in_features: int, out_features: int, kernel_dims: int = 16, *, mean: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features, self.kernel_dims, self.mean = in_features, out_features, kernel_dims, mean
        self.T = torch.nn.Parameter(torch.empty(in_features, out_features, kernel_dims))
        torch.nn.init.normal_(self.T, 0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (N, F). Returns: (N, F + B)."""
        n = x.shape[0]
        m = (x @ self.T.view(self.in_features, -1)).view(n, self.out_features, self.kernel_dims)  # (N, B, C)
        l1 = (m.unsqueeze(0) - m.unsqueeze(1)).abs().sum(-1)  # (N, N, B): the whole pairwise tensor
        o = torch.exp(-l1).sum(1) - 1.0  # (N, B): the j = i term is exp(0) = 1
        if self.mean:
            o = o / max(n - 1, 1)
        return torch.cat([x, o], 1)


class MinibatchStdDevTwin(torch.nn.Module):
    """The minibatch standard-deviation layer of ProGAN/StyleGAN2: the twin of ``fastsn.nn.MinibatchStdDev``.

    Groups of G = min(group_size, N) samples, sample n in row n % (N / G); per group, the std over the group of each
    feature, averaged over each of ``num_channels`` channel groups and the positions, appended as channels.

    Args:
        group_size: samples per group (at most); num_channels: statistics appended (must divide C).
    """

    def __init__(self, group_size: int = 4, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (N, C, *spatial). Returns: (N, C + num_channels, *spatial)."""
        n, c = x.shape[:2]
        spatial = tuple(x.shape[2:])
        g = min(self.group_size, n)
        if n % g:
            raise RuntimeError(f"MinibatchStdDevTwin: argument 'x' has a batch of {n}, not divisible by the group "
                               f"size {g}")
        f = self.num_channels
        y = x.reshape(g, n // g, f, c // f, -1)  # (G, M, F, C/F, S): group index first, so n = g * M + m
        y = (y - y.mean(0)).square().mean(0)  # (M, F, C/F, S): variance over the group
        y = (y + STDDEV_EPS).sqrt().mean(dim=(2, 3))  # (M, F)
        y = y.repeat(g, 1).reshape((n, f) + (1,) * len(spatial)).expand((n, f) + spatial)
        return torch.cat([x, y], 1)
