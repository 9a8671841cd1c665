"""Triton kernels of ``fastsn::minibatch_stddev_triton`` and its backward, in float32 for float16/bfloat16 and
float64 for float64 (layout: fastsn/ops/minibatch_stddev.py). Forward: one program per statistic (m, f) reduces the
group std over its K positions, BLOCK at a time; one elementwise pass writes cat([x, stats], 1). Backward: one
program per statistic sums its upstream gradient (Gamma); one elementwise pass over the (M, F, K) positions
recomputes mean and std over the G samples and writes their dx."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastsn.ops._checks import opmath_dtype
from fastsn.ops.minibatch_stddev import EPS, check_minibatch_stddev_args, check_minibatch_stddev_backward_args
from fastsn.triton_kernels._common import acc_tl, cdiv, check_loop_size, div_rn, on_device, scalars, sqrt_rn

BLOCK = 1024
WARPS = 4


# Offsets are int64: the group's samples lie `step` = M * C * S apart, which the host passes (an int64 argument
# where it needs one), and each loop adds it to a running int64 offset (g * step in int32 wraps past 2^31).
@triton.jit
def _group_moments(x_ptr, offs, mask, step, groups, eps, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # offs (BLOCK,) int64: the positions in sample m of the group; sample g * M + m is step * g further
    total = tl.zeros((BLOCK,), ACC)
    o = offs
    for g in range(0, groups):
        total += tl.load(x_ptr + o, mask=mask, other=0).to(ACC)
        o += step
    mean = total / groups
    sq = tl.zeros((BLOCK,), ACC)
    o = offs
    for g in range(0, groups):
        d = tl.load(x_ptr + o, mask=mask, other=0).to(ACC) - mean
        sq += d * d
        o += step
    return mean, div_rn(1.0, sqrt_rn(sq / groups + eps))  # (IEEE on a GPU, as the other backends)


@triton.jit
def _stddev_stats_kernel(x_ptr, stat_ptr, params_ptr, c, s, groups, f_count, k, step, ACC: tl.constexpr,
                         BLOCK: tl.constexpr):
    # params: (eps,) in ACC; program mf = m * F + f
    mf = tl.program_id(0).to(tl.int64)
    m, f = mf // f_count, mf % f_count
    eps = tl.load(params_ptr)
    acc = tl.zeros((BLOCK,), ACC)
    for p0 in range(0, k, BLOCK):
        p = p0 + tl.arange(0, BLOCK).to(tl.int64)
        mask = p < k
        mean, inv_std = _group_moments(x_ptr, m * c * s + f * k + p, mask, step, groups, eps, ACC, BLOCK)
        acc += tl.where(mask, div_rn(1.0, inv_std), 0.0)
    tl.store(stat_ptr + mf, tl.sum(acc, axis=0) / k)


@triton.jit
def _stddev_concat_kernel(x_ptr, stat_ptr, out_ptr, total, c, s, m_rows, f_count, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) over out (N, C + F, S)
    mask = idx < total
    row = (c + f_count) * s
    n, r = idx // row, idx % row
    ch = r // s
    from_x = ch < c
    xv = tl.load(x_ptr + n * c * s + r, mask=mask & from_x, other=0)
    sv = tl.load(stat_ptr + (n % m_rows) * f_count + (ch - c), mask=mask & (ch >= c), other=0)
    tl.store(out_ptr + idx, tl.where(from_x, xv, sv.to(out_ptr.dtype.element_ty)), mask=mask)


@triton.jit
def _stddev_gamma_kernel(grad_ptr, gamma_ptr, c, s, groups, m_rows, f_count, group_positions, kg,
                         ACC: tl.constexpr, BLOCK: tl.constexpr):
    # gamma[m, f] = sum of grad's channel C + f over the group's samples and positions (group_positions = G S of
    # them), / kg (= K G; both products from the host, in int64 where needed)
    mf = tl.program_id(0).to(tl.int64)
    m, f = mf // f_count, mf % f_count
    acc = tl.zeros((BLOCK,), ACC)
    for e0 in range(0, group_positions, BLOCK):
        e = e0 + tl.arange(0, BLOCK).to(tl.int64)
        g, q = e // s, e % s
        ptr = grad_ptr + ((g * m_rows + m) * (c + f_count) + c + f) * s + q
        acc += tl.load(ptr, mask=e < group_positions, other=0).to(ACC)
    tl.store(gamma_ptr + mf, tl.sum(acc, axis=0) / kg)


@triton.jit
def _stddev_backward_kernel(grad_ptr, x_ptr, gamma_ptr, dx_ptr, params_ptr, total, c, s, groups, f_count, k, step,
                            gstep, ACC: tl.constexpr, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) over the (M, F, K) positions
    mask = idx < total
    p, mf = idx % k, idx // k
    m, f = mf // f_count, mf % f_count
    offs = m * c * s + f * k + p
    mean, inv_std = _group_moments(x_ptr, offs, mask, step, groups, tl.load(params_ptr), ACC, BLOCK)
    scale = tl.load(gamma_ptr + mf, mask=mask, other=0) * inv_std  # d stat / d x_g = (x_g - mean) / (K G std)
    goffs = m * (c + f_count) * s + f * k + p
    for g in range(0, groups):
        xv = tl.load(x_ptr + offs, mask=mask, other=0).to(ACC)
        gv = tl.load(grad_ptr + goffs, mask=mask, other=0).to(ACC)
        tl.store(dx_ptr + offs, (gv + scale * (xv - mean)).to(dx_ptr.dtype.element_ty), mask=mask)
        offs += step
        goffs += gstep


def minibatch_stddev_triton(x: torch.Tensor, group_size: int, num_channels: int) -> torch.Tensor:
    """Triton implementation of :func:`fastsn.ops.minibatch_stddev.minibatch_stddev`: (N, C + F, *spatial)."""
    op = "fastsn::minibatch_stddev_triton"
    sh = check_minibatch_stddev_args(x, group_size, num_channels, op=op)
    check_loop_size(sh.k, op, "statistics over K = C / F * spatial positions")
    xc = x.contiguous()
    out = torch.empty((sh.n, sh.c + sh.f) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
    stat = torch.empty(sh.m * sh.f, dtype=opmath_dtype(x.dtype), device=x.device)
    acc = acc_tl(x.dtype)
    with on_device(xc):
        _stddev_stats_kernel[(sh.m * sh.f,)](xc, stat, scalars(xc, EPS), sh.c, sh.s, sh.groups, sh.f, sh.k,
                                              sh.m * sh.c * sh.s, acc, BLOCK, num_warps=WARPS)
        _stddev_concat_kernel[(cdiv(out.numel(), BLOCK),)](xc, stat, out, out.numel(), sh.c, sh.s, sh.m, sh.f,
                                                                  BLOCK, num_warps=WARPS)
    return out


def minibatch_stddev_backward_triton(grad: torch.Tensor, x: torch.Tensor, group_size: int,
                                     num_channels: int) -> torch.Tensor:
    """Triton implementation of the backward: dx, x's shape, contiguous."""
    op = "fastsn::minibatch_stddev_backward_triton"
    sh = check_minibatch_stddev_backward_args(grad, x, group_size, num_channels, op=op)
    check_loop_size(sh.groups * sh.s, op, "groups times spatial positions")
    xc, gc = x.contiguous(), grad.contiguous()
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    gamma = torch.empty(sh.m * sh.f, dtype=opmath_dtype(x.dtype), device=x.device)
    total = sh.m * sh.f * sh.k
    acc = acc_tl(x.dtype)
    with on_device(xc):
        _stddev_gamma_kernel[(sh.m * sh.f,)](gc, gamma, sh.c, sh.s, sh.groups, sh.m, sh.f, sh.groups * sh.s,
                                              sh.k * sh.groups, acc, BLOCK, num_warps=WARPS)
        _stddev_backward_kernel[(cdiv(total, BLOCK),)](gc, xc, gamma, dx, scalars(xc, EPS), total, sh.c, sh.s,
                                                              sh.groups, sh.f, sh.k, sh.m * sh.c * sh.s,
                                                              sh.m * (sh.c + sh.f) * sh.s, acc, BLOCK,
                                                              num_warps=WARPS)
    return dx


torch.library.register_kernel("fastsn::minibatch_stddev_triton", ("cuda", "cpu"))(minibatch_stddev_triton)
torch.library.register_kernel("fastsn::minibatch_stddev_backward_triton", ("cuda", "cpu"))(
    minibatch_stddev_backward_triton)
