"""``fastsn.nn.MinibatchDiscrimination``: minibatch discrimination (Salimans et al. 2016) on the fused op
``fastsn.ops.minibatch_l1_similarity``, in O(N * B * C) memory."""
from __future__ import annotations

import torch

from fastsn.ops._checks import positive_int
from fastsn.ops.minibatch_l1_similarity import minibatch_l1_similarity


class MinibatchDiscrimination(torch.nn.Module):
    """cat([x, o], 1) with o[i, b] = sum_{j != i} exp(-||M[i, b] - M[j, b]||_1), M = x @ T viewed as (N, B, C).

    The parameter ``T`` (in_features, out_features, kernel_dims), its N(0, 1) initialization and the output are those
    of torchgan's ``MinibatchDiscrimination1d(in_features, out_features, intermediate_features)`` (which sums over
    every j and subtracts the self term, 1), so its state_dicts load both ways (without ``bias``).

    Args:
        in_features: F, the features of the input (N, F).
        out_features: B, the number of similarity kernels (features appended).
        kernel_dims: C, the dims of each kernel.
        mean: divide o by N - 1, the number of other samples (a common variant; torchgan has no such option). A
            batch of one sample has no other sample: o is then 0 (not 0 / 0).
        bias: add a learned per-kernel bias ``bias`` (out_features,), initialized to -1, to o (after ``mean``), as
            in the original paper's code (improved-gan's MinibatchLayer: ``b = Constant(-1.)``).
    """

    def __init__(self, in_features: int, out_features: int, kernel_dims: int = 16, *, mean: bool = False,
                 bias: bool = False) -> None:
        super().__init__()
        in_features, out_features, kernel_dims = (
            positive_int(value, "MinibatchDiscrimination()", name) for name, value in
            (("in_features", in_features), ("out_features", out_features), ("kernel_dims", kernel_dims)))
        self.in_features, self.out_features, self.kernel_dims, self.mean = in_features, out_features, kernel_dims, mean
        self.T = torch.nn.Parameter(torch.empty(in_features, out_features, kernel_dims))
        self.bias = torch.nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """T ~ N(0, 1) (torchgan's initialization); bias = -1 (improved-gan's)."""
        torch.nn.init.normal_(self.T, 0.0, 1.0)
        if self.bias is not None:
            torch.nn.init.constant_(self.bias, -1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (N, in_features). Returns: cat([x, o], 1), (N, in_features + out_features)."""
        # RuntimeError, as torchgan's x.mm(T) raises for a wrong shape or dtype (a TypeError for a non-tensor)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"MinibatchDiscrimination.forward(): argument 'x' must be a tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise RuntimeError(f"MinibatchDiscrimination.forward(): argument 'x' must have shape (N, "
                               f"{self.in_features}) (in_features={self.in_features}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise RuntimeError(f"MinibatchDiscrimination.forward(): argument 'x' must be a floating-point tensor, got "
                               f"{x.dtype}")
        n = x.shape[0]
        # no cast of T: another dtype than x's is an error, as in torch.mm (autocast casts both, as for nn.Linear)
        m = (x @ self.T.view(self.in_features, -1)).view(n, self.out_features, self.kernel_dims)
        o = minibatch_l1_similarity(m)
        if self.mean:
            o = o / max(n - 1, 1)  # N = 1: o is 0 (no other sample)
        if self.bias is not None:
            o = o + self.bias.to(o.dtype)
        return torch.cat([x, o], 1)

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, kernel_dims={self.kernel_dims}, mean={self.mean}, "
                f"bias={self.bias is not None}")
