"""``fastsn.ops.minibatch_stddev``: the minibatch standard-deviation layer of ProGAN / StyleGAN / StyleGAN2.

x (N, C, *spatial) is split into groups of G = min(group_size, N) samples, sample n being row m = n % M of group
n // M (M = N / G; StyleGAN2-ADA's rule: N must then be a multiple of G, else a clear error), and its C channels into
F = num_channels feature groups of C / F. For each row m and feature group f, the statistic is the standard deviation
over the G samples (population variance, std = sqrt(var + 1e-8)) averaged over the K = (C / F) * prod(spatial)
positions of f; sample n gets the F statistics of its row as F extra channels, broadcast over space:
out = cat([x, stats], 1) of shape (N, C + F, *spatial). Any number of spatial dims, none included: (N, C) gives
(N, C + F), the form an MLP discriminator wants.

The backward is the op ``minibatch_stddev_backward(grad, x)``: with Gamma[m, f] the sum of grad's channel C + f over
the group's samples and positions, d = x - mean and std per position,

    dx = grad[:, :C] + Gamma[m, f] * d / (K * G * std).

Its own gradient (the second order of a gradient penalty) is the closed form of :func:`_backward_backward` in
PyTorch ops (differentiable again by autograd): for the incoming u (x's shape), Psi[m, f] = sum u * d / (K G std)
is the gradient of grad's channel C + f (broadcast back), u that of grad[:, :C], and that of x is
Gamma / (K G) * ((u - mean_g u) / std - (sum_g u d) * d / (G std^3)).
"""
from __future__ import annotations

import operator
from typing import NamedTuple, Optional

import torch

from fastsn import _backend, _extension
from fastsn.ops._checks import check_floating, check_tensor, opmath_dtype

OP = "fastsn::minibatch_stddev"
EPS = 1e-8


class StddevShape(NamedTuple):
    """The layout of common/minibatch_stddev.h: N, C, S (positions per channel), G, M = N / G, F, K = C / F * S."""
    n: int
    c: int
    s: int
    groups: int
    m: int
    f: int
    k: int


def check_minibatch_stddev_args(x: torch.Tensor, group_size: int, num_channels: int, op: str = OP) -> StddevShape:
    """The checks of the C++ kernels (same messages); returns the layout."""
    check_tensor(x, op, "x")
    check_floating(x, op, "x")
    if x.dim() < 2:
        raise RuntimeError(f"{op}(): argument 'x' must be (N, C, ...) with at least 2 dimensions, got shape "
                           f"{tuple(x.shape)}")
    for name, value in (("group_size", group_size), ("num_channels", num_channels)):
        if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):  # a float: the schema would truncate
            raise TypeError(f"{op}(): argument '{name}' must be an int, got {type(value).__name__}")
    if group_size < 1:
        raise RuntimeError(f"{op}(): argument 'group_size' must be at least 1, got {group_size}")
    if num_channels < 1:
        raise RuntimeError(f"{op}(): argument 'num_channels' must be at least 1, got {num_channels}")
    n, c = x.shape[0], x.shape[1]
    if n < 1:
        raise RuntimeError(f"{op}(): argument 'x' must hold at least one sample, got shape {tuple(x.shape)}")
    if c % num_channels != 0:
        raise RuntimeError(f"{op}(): argument 'num_channels' ({num_channels}) must divide the channels of 'x' ({c})")
    groups = min(group_size, n)
    if n % groups != 0:
        raise RuntimeError(f"{op}(): argument 'x' has batch size {n}, which the group size min(group_size, N) = "
                           f"{groups} does not divide")
    s = 1
    for size in x.shape[2:]:
        s *= size
    if c * s == 0:
        raise RuntimeError(f"{op}(): argument 'x' must have at least one channel and position, got shape "
                           f"{tuple(x.shape)}")
    return StddevShape(n, c, s, groups, n // groups, num_channels, c // num_channels * s)


def check_minibatch_stddev_backward_args(grad: torch.Tensor, x: torch.Tensor, group_size: int, num_channels: int,
                                         op: str = OP + "_backward") -> StddevShape:
    """The checks of the C++ backward kernels, with the same messages."""
    sh = check_minibatch_stddev_args(x, group_size, num_channels, op)
    check_tensor(grad, op, "grad")
    check_floating(grad, op, "grad")
    want = (sh.n, sh.c + sh.f) + tuple(x.shape[2:])
    if tuple(grad.shape) != want:
        raise RuntimeError(f"{op}(): argument 'grad' must have shape {list(want)} (x with C + num_channels channels), "
                           f"got {tuple(grad.shape)}")
    if grad.dtype != x.dtype:
        raise RuntimeError(f"{op}(): argument 'grad' must have the dtype of 'x' ({x.dtype}), got {grad.dtype}")
    if grad.device != x.device:
        raise RuntimeError(f"{op}(): argument 'grad' must be on the device of 'x' ({x.device})")
    return sh


def _moments(x: torch.Tensor, sh: StddevShape) -> tuple[torch.Tensor, torch.Tensor]:
    """d = x - mean over the group and 1 / std, as (G, M, F, K) and (1, M, F, K) in opmath."""
    xv = x.to(opmath_dtype(x.dtype)).reshape(sh.groups, sh.m, sh.f, sh.k)
    d = xv - xv.mean(0, keepdim=True)
    return d, torch.rsqrt(d.square().mean(0, keepdim=True) + EPS)


def minibatch_stddev_ref(x: torch.Tensor, group_size: int = 4, num_channels: int = 1) -> torch.Tensor:
    """Pure-PyTorch reference of :func:`minibatch_stddev` (differentiable to any order by autograd).

    Args:
        x: (N, C, *spatial); group_size, num_channels: as :func:`minibatch_stddev`.

    Returns:
        cat([x, stats], 1), (N, C + num_channels, *spatial), x's dtype (statistics in float32 for float16/bfloat16).
    """
    sh = check_minibatch_stddev_args(x, group_size, num_channels)
    d, _ = _moments(x, sh)
    std = (d.square().mean(0) + EPS).sqrt()  # (M, F, K)
    stat = std.mean(-1).repeat(sh.groups, 1)  # (N, F): sample n takes row n % M
    stat = stat.to(x.dtype).reshape((sh.n, sh.f) + (1,) * (x.dim() - 2)).expand((sh.n, sh.f) + tuple(x.shape[2:]))
    return torch.cat([x, stat], 1)


def _gamma(grad: torch.Tensor, sh: StddevShape) -> torch.Tensor:
    """Gamma / (K G): the upstream gradient of each statistic (1, M, F, 1), scaled, in opmath."""
    g = grad[:, sh.c:].to(opmath_dtype(grad.dtype)).reshape(sh.groups, sh.m, sh.f, sh.s)
    return g.sum(dim=(0, 3), keepdim=True) / (sh.k * sh.groups)


def minibatch_stddev_backward_ref(grad: torch.Tensor, x: torch.Tensor, group_size: int = 4,
                                  num_channels: int = 1) -> torch.Tensor:
    """Pure-PyTorch reference of the backward op: dx (x's shape) from grad (N, C + num_channels, *spatial)."""
    sh = check_minibatch_stddev_backward_args(grad, x, group_size, num_channels)
    d, inv_std = _moments(x, sh)
    passthrough = grad[:, :sh.c].to(d.dtype).reshape(d.shape)
    return (passthrough + _gamma(grad, sh) * d * inv_std).reshape(x.shape).to(x.dtype)


def _backward_backward(u: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, group_size: int,
                       num_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient of <u, minibatch_stddev_backward(grad, x)> in grad and x, as PyTorch ops (module docstring)."""
    sh = check_minibatch_stddev_args(x, group_size, num_channels)
    d, inv_std = _moments(x, sh)
    a = u.to(d.dtype).reshape(d.shape)  # (G, M, F, K)
    psi = (a * d * inv_std).sum(dim=(0, 3), keepdim=True) / (sh.k * sh.groups)  # (1, M, F, 1)
    d_stats = psi.expand(sh.groups, sh.m, sh.f, sh.s).reshape((sh.n, sh.f) + tuple(x.shape[2:]))
    d_grad = torch.cat([a.reshape(x.shape), d_stats], 1).to(grad.dtype)
    ad = (a * d).sum(0, keepdim=True)
    dx = _gamma(grad, sh) * ((a - a.mean(0, keepdim=True)) * inv_std - ad * d * inv_std.pow(3) / sh.groups)
    return d_grad, dx.reshape(x.shape).to(x.dtype)


def _kernel(name: str, backend: str):
    return getattr(torch.ops.fastsn, f"{name}_triton" if backend == "triton" else name)


def _index(value: object) -> object:
    """An integer-like size (numpy integer, integer 0-d tensor) as an int; anything else as it is, for the checks
    to refuse (a bool, a float)."""
    if isinstance(value, (bool, int, torch.SymInt)):
        return value
    try:
        return operator.index(value)
    except TypeError:
        return value


def minibatch_stddev(x: torch.Tensor, group_size: int = 4, num_channels: int = 1, *,
                     backend: Optional[str] = None) -> torch.Tensor:
    """cat([x, minibatch std statistics], 1), fused (StyleGAN2-ADA's layer; module docstring for the formula).

    Args:
        x: (N, C, *spatial) (e.g. (N, C, H, W), or (N, C)), float16/bfloat16/float32/float64, any strides.
        group_size: samples per group; G = min(group_size, N), which must divide N.
        num_channels: F, statistics per sample (feature groups); must divide C.
        backend: as :func:`fastsn.ops.build_info`.

    Returns:
        (N, C + F, *spatial) in x's dtype, contiguous; differentiable in x to any order.
    """
    # numpy integers and integer 0-d tensors are sizes too (as for the module, and StyleGAN2-ADA's layer)
    group_size, num_channels = (_index(group_size), _index(num_channels))
    check_minibatch_stddev_args(x, group_size, num_channels)
    name = _backend.resolve("minibatch_stddev", x.device, backend)
    if name == "ref":
        return minibatch_stddev_ref(x, group_size, num_channels)
    return _kernel("minibatch_stddev", name)(x, int(group_size), int(num_channels))


# ---------------------------------------------------------------------------------------------------------------
# fake kernels and autograd (the schemas come with fastsn._C)
# ---------------------------------------------------------------------------------------------------------------

def _forward_fake(x, group_size, num_channels):
    sh = check_minibatch_stddev_args(x, group_size, num_channels)
    return x.new_empty((sh.n, sh.c + sh.f) + tuple(x.shape[2:]))


def _backward_fake(grad, x, group_size, num_channels):
    check_minibatch_stddev_backward_args(grad, x, group_size, num_channels)
    return x.new_empty(x.shape)


def _forward_setup_context(ctx, inputs, output):
    x, group_size, num_channels = inputs
    ctx.save_for_backward(x)
    ctx.group_size, ctx.num_channels = group_size, num_channels


def _make_forward_backward(backward_op: str):
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return getattr(torch.ops.fastsn, backward_op)(grad, x, ctx.group_size, ctx.num_channels), None, None
    return backward


def _backward_setup_context(ctx, inputs, output):
    grad, x, group_size, num_channels = inputs
    ctx.save_for_backward(grad, x)
    ctx.group_size, ctx.num_channels = group_size, num_channels


def _backward_backward_autograd(ctx, u):
    grad, x = ctx.saved_tensors
    d_grad, dx = _backward_backward(u, grad, x, ctx.group_size, ctx.num_channels)
    return d_grad, dx, None, None


for _suffix in ("", "_triton"):
    if _extension.op_defined("minibatch_stddev" + _suffix):
        torch.library.register_fake("fastsn::minibatch_stddev" + _suffix)(_forward_fake)
        torch.library.register_fake("fastsn::minibatch_stddev_backward" + _suffix)(_backward_fake)
        torch.library.register_autograd("fastsn::minibatch_stddev" + _suffix,
                                        _make_forward_backward("minibatch_stddev_backward" + _suffix),
                                        setup_context=_forward_setup_context)
        torch.library.register_autograd("fastsn::minibatch_stddev_backward" + _suffix,
                                        _backward_backward_autograd, setup_context=_backward_setup_context)
