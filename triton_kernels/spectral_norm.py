"""Triton kernels of ``fastsn::spectral_norm_power_iteration_triton``, ``fastsn::spectral_norm_normalize_triton``
and ``fastsn::spectral_norm_normalize_backward_triton`` (semantics and references: fastsn/ops/spectral_norm.py).

Matrix view. The weight W (contiguous) is read in place as the matrix M (h, w) of torch's spectral norm:
viewed as (O, H, I) around ``dim``, M[i, o*I + k] = W[o, i, k], at flat offset o*H*I + i*I + k. Nothing is
permuted or copied. The kernels take a matrix B, M or M^T, as two offset functions, one per axis
(``_View``): B[i, j] sits at row_off(i) + col_off(j), each either idx * stride or, for the axis that runs over
(o, k), (idx // I) * H*I + idx % I ("div"). For M:
    O == 1 (dim=0, the usual case):  row_off = i*w, col_off = j       (each row contiguous: vector loads)
    I == 1 (dim = last):             row_off = i,   col_off = j*H     (each column contiguous: tall tiles)
    otherwise (e.g. ConvTranspose):  row_off = i*I, col_off = div(j)  (runs of I)
and M^T swaps the two functions.

Power iteration (accumulating in float32, float64 for float64 weights; v is kept in that precision in a
workspace between iterations; N(x) = x / max(||x||, eps)). Both orders are "rows first" on some B:
    u first (parametrizations API): u = N(M v), v = N(M^T u)           -> B = M,   (u_B, v_B) = (u, v)
    v first (legacy hook API):      v = N(M^T u), u = N(M v)           -> B = M^T, (u_B, v_B) = (v, u)
so that every iteration is ONE pass over W, ``_sn_pass_kernel`` (grid: cdiv(h_B, BLOCK_H) programs, about
256..511 for large matrices), then a one-program ``_sn_finalize_kernel``:
    pass (FUSED), each program owning BLOCK_H rows of B:
        loop over the column chunks (BLOCK_W):  s_i = B_i . x for its rows        x: (w_B,) = v_B, s: (h_B,)
        loop over the same chunks in reverse order (the rows were just read: L1/L2 hits):
            r += B_rows^T s_rows  (a (BLOCK_W,) partial per chunk, relaxed vector atomics)   r: (w_B,)
        ssq += ||s_rows||^2 (one atomic per program)
      -> s = B v and r = B^T B v with W read once from DRAM (when the working set of the resident
         programs, about BLOCK_H * w_B * itemsize each, stays in L2; beyond that part of the second loop
         comes from DRAM again).
    finalize: ds = max(||s||, eps); u = s / ds; t = r / ds (= B^T u); v = t / max(||t||, eps) (workspace);
        zeroes r and ssq for the next iteration. After the last iteration it writes u, v in place (weight
        dtype), their copies, and sigma = ||t||^2 / max(||t||, eps), which is u . (B v_new) = (B^T u) . v_new:
        no extra pass.
    n_power_iterations == 0: one BILINEAR pass (first loop only): sigma += sum_i u_i (B v)_i (atomics into
        the zeroed sigma); the copies of u and v are written on the way.
Launches: one memset of the workspace (2 w_B + h_B + 1 accumulators), then 2 per iteration (n == 0: memset
of sigma + 1). The atomics make the float sums order-nondeterministic at the last bits.

Normalize: ``_sn_normalize_kernel``, elementwise W / sigma (flat, BLOCK elements per program); where
|sigma| < eps, eps replaces sigma (and takes no gradient: c = 0 below).
Normalize backward, dW = (G - c u_i v_j) / sigma with c = <G, W> / sigma:
    ``_sn_dot_partials_kernel``: at most NUM_PARTIALS programs, grid-stride over the flat G and W, each writes
        its partial sum of G * W (no atomics, no memset: deterministic);
    ``_sn_normalize_backward_kernel``: 2-D tiles (BLOCK_H, BLOCK_W) of B (M, or M^T when I == 1, so that the
        columns are the fast axis), 1-D grid over the tiles; each program sums the partials (<= NUM_PARTIALS
        values, from L2) and writes its tile of dW. Two passes over G, one over W.
Offsets into W are int64 everywhere; matrix sides must stay below 2^31 - 2^16; all loads are masked.

Grouped ops (every spectral norm of a model, one dtype and device): the same algorithms, with each launch covering
the programs of up to MAX_GROUP weights, which read their addresses, geometry and workspace offsets from an int64
table (one host-to-device copy per op). The power iteration: one launch widening x (and copying the vectors of
weights with no iteration), then per block configuration (pass_config) one BILINEAR or FUSED pass launch, and one
finalize launch per iteration for all weights; the normalize: one elementwise launch; its backward: one launch of
partial sums of <G, W> (up to NUM_PARTIALS per weight) and one elementwise launch computing dW from the flat index
(i = (f // I) % H, j = (f // (H I)) I + f % I). The SNGAN discriminator's 11 weights take 8 launches for a refresh
(forward and backward), the BigGAN-128-like 23 weights 12, where weight by weight they took 55 and 115.
"""
from __future__ import annotations

import functools
import math
import struct
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from fastsn.ops.spectral_norm import (check_grouped_normalize_args, check_grouped_power_iteration_args,
                                      check_normalize_args, check_normalize_backward_grad, check_power_iteration_args,
                                      normalize_layout, opmath_dtype, split_grouped_vectors)
from fastsn.triton_kernels._common import acc_tl, cdiv, div_rn, next_pow2, on_device, sqrt_rn, wide_offsets

OP = "fastsn::spectral_norm"

# _sn_pass_kernel modes
PASS_FUSED = 0
PASS_BILINEAR = 1

FINALIZE_BLOCK = 4096
FINALIZE_WARPS = 8
NORMALIZE_BLOCK = 4096
NORMALIZE_WARPS = 8
DOT_BLOCK = 4096
DOT_WARPS = 8
NUM_PARTIALS = 256  # most programs of the <G, W> reduction (and the constexpr block that sums their partials)
_SEG = 64  # workspace segments start at multiples of 64 accumulators (aligned loads)


# ---------------------------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------------------------

@triton.jit
def _clamp_min(x, lo):
    # max(x, lo) that propagates NaN (as torch's clamp_min in F.normalize): NaN < lo is false, so NaN stays
    return tl.where(x < lo, lo, x)


@triton.jit
def _axis_offsets(idx, stride, I, HI, DIV: tl.constexpr):
    # int64 offset part of one axis of B: idx * stride, or (idx // I) * H*I + idx % I for the (o, k) axis
    if DIV:
        o = idx // I
        return o.to(tl.int64) * HI + (idx - o * I).to(tl.int64)
    else:
        return idx.to(tl.int64) * stride


@triton.jit
def _fused_tail(w_ptr, s, rows, rmask, row_off, s_ptr, r_ptr, ssq_ptr, w, col_stride, I, HI, COL_DIV: tl.constexpr,
                ACC: tl.constexpr, BLOCK_W: tl.constexpr):
    # the FUSED pass after s = B x for a program's rows: keep s (h,) and ||s||^2, and r (w,) += B^T s over the same
    # columns in reverse order (the hottest in cache first), with relaxed atomics
    tl.store(s_ptr + rows, s, mask=rmask)
    tl.atomic_add(ssq_ptr, tl.sum(s * s, axis=0), sem="relaxed")
    n_chunks = tl.cdiv(w, BLOCK_W)
    for c in range(0, n_chunks):
        cols = (n_chunks - 1 - c) * BLOCK_W + tl.arange(0, BLOCK_W)
        cmask = cols < w
        offs = row_off[:, None] + _axis_offsets(cols, col_stride, I, HI, COL_DIV)[None, :]
        tile = tl.load(w_ptr + offs, mask=rmask[:, None] & cmask[None, :], other=0.0).to(ACC)
        tl.atomic_add(r_ptr + cols, tl.sum(tile * s[:, None], axis=0), mask=cmask, sem="relaxed")


@triton.jit
def _finalize(r_ptr, vacc_ptr, s_ptr, scal_ptr, h, w, eps_a, last, u_ptr, u_stride, ucopy_ptr, v_ptr, v_stride,
              vcopy_ptr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # after a FUSED pass: ds = max(||s||, eps); t = r / ds (= B^T u); v = t / max(||t||, eps) into vacc; r and
    # ||s||^2 zeroed for the next pass; where ``last`` (a constexpr or a runtime flag), u = s / ds and v written in
    # place and into their copies. Returns sigma = ||t||^2 / max(||t||, eps) = u . (B v) = (B^T u) . v.
    idx = tl.arange(0, BLOCK)
    ds = _clamp_min(sqrt_rn(tl.load(scal_ptr)), eps_a)
    tsq_vec = tl.zeros((BLOCK,), ACC)
    for start in range(0, w, BLOCK):
        cols = start + idx
        t = div_rn(tl.load(r_ptr + cols, mask=cols < w, other=0.0), ds)
        tsq_vec += t * t
    tsq = tl.sum(tsq_vec, axis=0)
    dt = _clamp_min(sqrt_rn(tsq), eps_a)
    for start in range(0, w, BLOCK):
        cols = start + idx
        cmask = cols < w
        vn = div_rn(div_rn(tl.load(r_ptr + cols, mask=cmask, other=0.0), ds), dt)
        tl.store(vacc_ptr + cols, vn, mask=cmask)
        tl.store(r_ptr + cols, tl.zeros((BLOCK,), ACC), mask=cmask)
        if last:
            tl.store(v_ptr + cols.to(tl.int64) * v_stride, vn.to(v_ptr.dtype.element_ty), mask=cmask)
            tl.store(vcopy_ptr + cols, vn.to(vcopy_ptr.dtype.element_ty), mask=cmask)
    tl.store(scal_ptr, tl.zeros((), ACC))
    if last:
        for start in range(0, h, BLOCK):
            rows = start + idx
            rmask = rows < h
            un = div_rn(tl.load(s_ptr + rows, mask=rmask, other=0.0), ds)
            tl.store(u_ptr + rows.to(tl.int64) * u_stride, un.to(u_ptr.dtype.element_ty), mask=rmask)
            tl.store(ucopy_ptr + rows, un.to(ucopy_ptr.dtype.element_ty), mask=rmask)
    return div_rn(tsq, dt)


@triton.jit
def _sn_pass_kernel(w_ptr, x_ptr, x_stride, y_ptr, y_stride, s_ptr, r_ptr, scal_ptr, xcopy_ptr, ycopy_ptr,
                    h, w, row_stride, col_stride, I, HI,
                    MODE: tl.constexpr, ROW_DIV: tl.constexpr, COL_DIV: tl.constexpr, ACC: tl.constexpr,
                    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    # w_ptr: B (h, w) through its offset functions; x: (w,) column-side vector; y: (h,) row-side vector;
    # s: (h,) acc; r: (w,) acc accumulator; scal: () acc accumulator; copies: (w,), (h,) weight dtype.
    pid = tl.program_id(0)
    rows = pid * BLOCK_H + tl.arange(0, BLOCK_H)  # (BLOCK_H,)
    rmask = rows < h
    row_off = _axis_offsets(rows, row_stride, I, HI, ROW_DIV)  # (BLOCK_H,) int64
    # s = B x for this program's rows
    acc = tl.zeros((BLOCK_H, BLOCK_W), ACC)
    for start in range(0, w, BLOCK_W):
        cols = start + tl.arange(0, BLOCK_W)  # (BLOCK_W,)
        cmask = cols < w
        x = tl.load(x_ptr + cols.to(tl.int64) * x_stride, mask=cmask, other=0.0).to(ACC)
        if MODE == 1:
            if pid == 0:
                tl.store(xcopy_ptr + cols, x.to(xcopy_ptr.dtype.element_ty), mask=cmask)
        offs = row_off[:, None] + _axis_offsets(cols, col_stride, I, HI, COL_DIV)[None, :]  # (BLOCK_H, BLOCK_W)
        tile = tl.load(w_ptr + offs, mask=rmask[:, None] & cmask[None, :], other=0.0).to(ACC)
        acc += tile * x[None, :]
    s = tl.sum(acc, axis=1)  # (BLOCK_H,), 0 on masked rows
    if MODE == 1:  # BILINEAR: sigma += y . s
        y = tl.load(y_ptr + rows.to(tl.int64) * y_stride, mask=rmask, other=0.0).to(ACC)
        tl.store(ycopy_ptr + rows, y.to(ycopy_ptr.dtype.element_ty), mask=rmask)
        tl.atomic_add(scal_ptr, tl.sum(y * s, axis=0), sem="relaxed")
    else:  # FUSED
        _fused_tail(w_ptr, s, rows, rmask, row_off, s_ptr, r_ptr, scal_ptr, w, col_stride, I, HI, COL_DIV, ACC,
                    BLOCK_W)


@triton.jit
def _sn_finalize_kernel(r_ptr, vacc_ptr, s_ptr, scal_ptr, sigma_ptr, u_ptr, u_stride, v_ptr, v_stride,
                        ucopy_ptr, vcopy_ptr, h, w, eps: tl.float64,
                        LAST: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # one program, after a FUSED pass. r: (w,) acc (zeroed on exit); vacc: (w,) acc; s: (h,) acc; scal: () acc
    # (zeroed on exit); u: (h,) and v: (w,) weight dtype, written in place when LAST, with contiguous copies.
    eps_a = tl.cast(eps, ACC)  # (the interpreter passes eps as a Python float)
    sigma = _finalize(r_ptr, vacc_ptr, s_ptr, scal_ptr, h, w, eps_a, LAST, u_ptr, u_stride, ucopy_ptr, v_ptr, v_stride,
                      vcopy_ptr, ACC, BLOCK)
    if LAST:
        tl.store(sigma_ptr, sigma)


@triton.jit
def _sn_normalize_kernel(w_ptr, sigma_ptr, out_ptr, n, eps: tl.float64, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # w, out: (n,) contiguous; sigma: () any float dtype, replaced by eps where |sigma| < eps
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    eps_a = tl.cast(eps, ACC)  # (the interpreter passes eps as a Python float)
    sigma = tl.load(sigma_ptr).to(ACC)
    sigma = tl.where(tl.abs(sigma) < eps_a, eps_a, sigma)  # NaN stays NaN
    x = tl.load(w_ptr + offs, mask=mask, other=0.0).to(ACC)
    tl.store(out_ptr + offs, div_rn(x, sigma).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sn_dot_partials_kernel(g_ptr, w_ptr, part_ptr, n, n_blocks, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # g, w: (n,) contiguous; part: (num_programs,) acc, part[pid] = sum of g * w over the pid's blocks;
    # n_blocks = cdiv(n, BLOCK) from the host (in int32 here, n + BLOCK - 1 wraps for n near 2^31)
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    acc = tl.zeros((BLOCK,), ACC)
    n_iter = tl.cdiv(n_blocks - pid, nprog)
    for it in range(0, n_iter):
        offs = (it * nprog + pid).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC)
        x = tl.load(w_ptr + offs, mask=mask, other=0.0).to(ACC)
        acc += g * x
    tl.store(part_ptr + pid, tl.sum(acc, axis=0))


@triton.jit
def _sn_normalize_backward_kernel(g_ptr, u_ptr, u_stride, v_ptr, v_stride, sigma_ptr, part_ptr, n_parts, out_ptr,
                                  h, w, row_stride, col_stride, I, HI, n_wtiles, eps: tl.float64,
                                  ROW_DIV: tl.constexpr, COL_DIV: tl.constexpr, ACC: tl.constexpr,
                                  NP: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    # g, out: B (h, w) through its offset functions (contiguous storage); u: (h,); v: (w,); part: (n_parts,)
    pid = tl.program_id(0)
    pid_h = pid // n_wtiles
    pid_w = pid - pid_h * n_wtiles
    pidx = tl.arange(0, NP)
    dot = tl.sum(tl.load(part_ptr + pidx, mask=pidx < n_parts, other=0.0), axis=0)  # <G, W>
    eps_a = tl.cast(eps, ACC)  # (the interpreter passes eps as a Python float)
    sigma = tl.load(sigma_ptr).to(ACC)
    clamped = tl.abs(sigma) < eps_a  # eps replaces sigma, which then takes no gradient (c = 0)
    sigma = tl.where(clamped, eps_a, sigma)
    c = tl.where(clamped, 0.0, div_rn(dot, sigma))  # <G, W_sn>
    rows = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = pid_w * BLOCK_W + tl.arange(0, BLOCK_W)
    rmask = rows < h
    cmask = cols < w
    u = tl.load(u_ptr + rows.to(tl.int64) * u_stride, mask=rmask, other=0.0).to(ACC)
    v = tl.load(v_ptr + cols.to(tl.int64) * v_stride, mask=cmask, other=0.0).to(ACC)
    offs = (_axis_offsets(rows, row_stride, I, HI, ROW_DIV)[:, None]
            + _axis_offsets(cols, col_stride, I, HI, COL_DIV)[None, :])
    mask = rmask[:, None] & cmask[None, :]
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC)
    uv = u[:, None] * v[None, :]
    dw = div_rn(g - c * uv, sigma)
    tl.store(out_ptr + offs, dw.to(out_ptr.dtype.element_ty), mask=mask)


# Grouped launches: one launch covers the programs of many weights (the weights of one device and dtype), each
# described by a row of an int64 table (addresses, sizes, offsets into the flat u, v, sigmas; the _F_* fields);
# the table starts with the cumulative first program of each weight (MAXG entries, a power of 2 >= the weights of
# the launch), from which each program finds its weight.
_F_W = tl.constexpr(0)        # address of the weight's storage (W, contiguous or in its dense layout)
_F_OUT = tl.constexpr(1)      # address of the output (W / sigma, or dW)
_F_G = tl.constexpr(2)        # address of G (backward)
_F_N = tl.constexpr(3)        # numel
_F_EPS = tl.constexpr(4)      # eps, the bits of a float64
_F_H = tl.constexpr(5)        # H = d_dim
_F_I = tl.constexpr(6)        # I = product of the sizes after dim
_F_U = tl.constexpr(7)        # offset of the weight's u in the flat us
_F_V = tl.constexpr(8)        # offset of its v in the flat vs
_F_SIGMA = tl.constexpr(9)    # index of its sigma in sigmas
_F_PARTS = tl.constexpr(10)   # first of its partial sums (backward)
_F_NPARTS = tl.constexpr(11)  # number of its partial sums
_NF = tl.constexpr(12)


@triton.jit
def _grouped_task(starts_ptr, n_tasks, MAXG: tl.constexpr):
    """(k, program index within weight k) of this program, from the cumulative first programs ``starts``."""
    pid = tl.program_id(0)
    idx = tl.arange(0, MAXG)
    starts = tl.load(starts_ptr + idx, mask=idx < n_tasks, other=0)
    k = tl.sum(((starts <= pid) & (idx < n_tasks)).to(tl.int32), axis=0) - 1  # weights of no program: skipped
    return k, pid - tl.load(starts_ptr + k)


@triton.jit
def _grouped_ptr(row, field, like, ALIGNED: tl.constexpr):
    """The address in ``row``'s ``field`` as a pointer of ``like``'s type; ALIGNED: every address of the launch is
    16-byte aligned (the host checked), which lets the compiler vectorize the accesses as it does for arguments."""
    ptr = tl.load(row + field).to(like.dtype, bitcast=True)
    if ALIGNED:
        ptr = tl.multiple_of(ptr, 16)
    return ptr


@triton.jit
def _grouped_eps(row, ACC: tl.constexpr):
    return tl.load(row + _F_EPS).to(tl.float64, bitcast=True).to(ACC)


@triton.jit
def _sn_grouped_normalize_kernel(table_ptr, n_tasks, sigmas_ptr, w_like, ACC: tl.constexpr, MAXG: tl.constexpr,
                                 ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    # per weight (a table row): out = W / sigma, elementwise over its storage; w_like: a pointer of the dtype
    k, block = _grouped_task(table_ptr, n_tasks, MAXG)
    row = table_ptr + 2 * MAXG + k * _NF
    w_ptr = _grouped_ptr(row, _F_W, w_like, ALIGNED)
    out_ptr = _grouped_ptr(row, _F_OUT, w_like, ALIGNED)
    offs = block * BLOCK + tl.arange(0, BLOCK)  # int64 (block is)
    mask = offs < tl.load(row + _F_N)
    eps_a = _grouped_eps(row, ACC)
    sigma = tl.load(sigmas_ptr + tl.load(row + _F_SIGMA)).to(ACC)
    sigma = tl.where(tl.abs(sigma) < eps_a, eps_a, sigma)  # NaN stays NaN
    x = tl.load(w_ptr + offs, mask=mask, other=0.0).to(ACC)
    tl.store(out_ptr + offs, div_rn(x, sigma).to(w_like.dtype.element_ty), mask=mask)


@triton.jit
def _sn_grouped_dot_partials_kernel(table_ptr, n_tasks, part_ptr, w_like, g_like, ACC: tl.constexpr,
                                    MAXG: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    # per weight: its n_parts programs (found from the second starts vector) each write the sum of G * W over
    # their blocks, grid-stride: part[first + p]
    k, p = _grouped_task(table_ptr + MAXG, n_tasks, MAXG)
    row = table_ptr + 2 * MAXG + k * _NF
    w_ptr = _grouped_ptr(row, _F_W, w_like, ALIGNED)
    g_ptr = _grouped_ptr(row, _F_G, g_like, ALIGNED)
    n = tl.load(row + _F_N)
    n_parts = tl.load(row + _F_NPARTS)
    acc = tl.zeros((BLOCK,), ACC)
    for it in range(0, tl.cdiv(tl.cdiv(n, BLOCK) - p, n_parts)):
        offs = (it * n_parts + p) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        acc += tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC) * tl.load(w_ptr + offs, mask=mask,
                                                                             other=0.0).to(ACC)
    tl.store(part_ptr + tl.load(row + _F_PARTS) + p, tl.sum(acc, axis=0))


@triton.jit
def _sn_grouped_normalize_backward_kernel(table_ptr, n_tasks, us_ptr, vs_ptr, sigmas_ptr, part_ptr, w_like, g_like,
                                          ACC: tl.constexpr, MAXG: tl.constexpr, NP: tl.constexpr,
                                          WIDE: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    # per weight: dW = (G - c u_i v_j) / sigma over the flat contiguous G and dW, c = <G, W> / sigma from its
    # partial sums; flat f of W (O, H, I) is M[i, j] with i = (f // I) % H, j = (f // (H I)) I + f % I
    k, block = _grouped_task(table_ptr, n_tasks, MAXG)
    row = table_ptr + 2 * MAXG + k * _NF
    g_ptr = _grouped_ptr(row, _F_G, g_like, ALIGNED)
    out_ptr = _grouped_ptr(row, _F_OUT, w_like, ALIGNED)
    n_parts = tl.load(row + _F_NPARTS)
    pidx = tl.arange(0, NP)
    dot = tl.sum(tl.load(part_ptr + tl.load(row + _F_PARTS) + pidx, mask=pidx < n_parts, other=0.0), axis=0)
    eps_a = _grouped_eps(row, ACC)
    sigma = tl.load(sigmas_ptr + tl.load(row + _F_SIGMA)).to(ACC)
    clamped = tl.abs(sigma) < eps_a  # eps replaces sigma, which then takes no gradient (c = 0)
    sigma = tl.where(clamped, eps_a, sigma)
    c = tl.where(clamped, 0.0, div_rn(dot, sigma))  # <G, W_sn>
    if WIDE:  # (int32 division where every weight has fewer than 2^31 elements: see wide_offsets)
        f = block * BLOCK + tl.arange(0, BLOCK)
        height, inner = tl.load(row + _F_H), tl.load(row + _F_I)
    else:
        f = block.to(tl.int32) * BLOCK + tl.arange(0, BLOCK)
        height, inner = tl.load(row + _F_H).to(tl.int32), tl.load(row + _F_I).to(tl.int32)
    mask = f < tl.load(row + _F_N)
    q = f // inner
    o = q // height
    u = tl.load(us_ptr + tl.load(row + _F_U) + (q - o * height), mask=mask, other=0.0).to(ACC)
    v = tl.load(vs_ptr + tl.load(row + _F_V) + (o * inner + f - q * inner), mask=mask, other=0.0).to(ACC)
    g = tl.load(g_ptr + f, mask=mask, other=0.0).to(ACC)
    dw = div_rn(g - c * (u * v), sigma)
    tl.store(out_ptr + f, dw.to(w_like.dtype.element_ty), mask=mask)


# The grouped power iteration: a table of one row per weight (the _P_* fields: B's geometry, the workspace
# offsets of its accumulators, its u, v and their copies), and per launch a segment [iteration, 0, starts (MAXG),
# members (MAXG)]: the launch's weights (row indices) and the cumulative first program of each.
_P_W = tl.constexpr(0)         # address of W (contiguous)
_P_H = tl.constexpr(1)         # rows of B
_P_WB = tl.constexpr(2)        # columns of B
_P_RS = tl.constexpr(3)        # row_stride, col_stride, I, H*I: B's offset functions (see _View)
_P_CS = tl.constexpr(4)
_P_I = tl.constexpr(5)
_P_HI = tl.constexpr(6)
_P_X = tl.constexpr(7)         # workspace offset of x (w_B,): the widened column vector, then v_acc
_P_R = tl.constexpr(8)         # workspace offset of r (w_B,), zero between passes
_P_S = tl.constexpr(9)         # workspace offset of s (h_B,); BILINEAR: the widened row vector
_P_SSQ = tl.constexpr(10)      # workspace offset of ||s||^2, zero between passes
_P_EPS = tl.constexpr(11)      # eps, the bits of a float64
_P_LAST = tl.constexpr(12)     # n_power_iterations - 1: the iteration that writes u, v, sigma (-1: BILINEAR)
_P_ROW = tl.constexpr(13)      # address and stride of the row-side vector (u, or v where B = M^T), in place
_P_ROW_STRIDE = tl.constexpr(14)
_P_COL = tl.constexpr(15)      # the column-side vector
_P_COL_STRIDE = tl.constexpr(16)
_P_ROW_COPY = tl.constexpr(17)  # address of the row-side vector's copy (in the flat u or v copies)
_P_COL_COPY = tl.constexpr(18)
_P_SIGMA = tl.constexpr(19)    # index into sigmas
_NPF = tl.constexpr(20)


@triton.jit
def _grouped_member(launch_ptr, MAXG: tl.constexpr):
    """(table row index, program index within that weight) of this program in a launch segment."""
    j, block = _grouped_task(launch_ptr + 2, tl.load(launch_ptr + 1), MAXG)
    return tl.load(launch_ptr + 2 + MAXG + j), block


@triton.jit
def _sn_grouped_widen_kernel(rows_ptr, launch_ptr, ws_ptr, w_like, ACC: tl.constexpr, MAXG: tl.constexpr,
                             BLOCK: tl.constexpr):
    # x = the column-side vector in the accumulation dtype; BILINEAR weights: also s = the row-side vector, and
    # both copies (nothing updates the vectors)
    k, block = _grouped_member(launch_ptr, MAXG)
    row = rows_ptr + k * _NPF
    idx = block * BLOCK + tl.arange(0, BLOCK)  # int64
    bilinear = tl.load(row + _P_LAST) < 0
    col_ptr = tl.load(row + _P_COL).to(w_like.dtype, bitcast=True)
    cmask = idx < tl.load(row + _P_WB)
    x = tl.load(col_ptr + idx * tl.load(row + _P_COL_STRIDE), mask=cmask, other=0.0)
    tl.store(ws_ptr + tl.load(row + _P_X) + idx, x.to(ACC), mask=cmask)
    if bilinear:
        tl.store(tl.load(row + _P_COL_COPY).to(w_like.dtype, bitcast=True) + idx, x, mask=cmask)
        row_ptr = tl.load(row + _P_ROW).to(w_like.dtype, bitcast=True)
        rmask = idx < tl.load(row + _P_H)
        y = tl.load(row_ptr + idx * tl.load(row + _P_ROW_STRIDE), mask=rmask, other=0.0)
        tl.store(ws_ptr + tl.load(row + _P_S) + idx, y.to(ACC), mask=rmask)
        tl.store(tl.load(row + _P_ROW_COPY).to(w_like.dtype, bitcast=True) + idx, y, mask=rmask)


@triton.jit
def _sn_grouped_pass_kernel(rows_ptr, launch_ptr, ws_ptr, sigmas_ptr, w_like, MODE: tl.constexpr,
                            ROW_DIV: tl.constexpr, COL_DIV: tl.constexpr, ACC: tl.constexpr, MAXG: tl.constexpr,
                            BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    # _sn_pass_kernel for the launch's weights (one block configuration): x, s, r and ||s||^2 in the workspace;
    # BILINEAR: sigmas[k] += y . (B x) with y the widened row vector (in s)
    k, block = _grouped_member(launch_ptr, MAXG)
    row = rows_ptr + k * _NPF
    w_ptr = tl.load(row + _P_W).to(w_like.dtype, bitcast=True)
    h = tl.load(row + _P_H).to(tl.int32)
    w = tl.load(row + _P_WB).to(tl.int32)
    row_stride, col_stride = tl.load(row + _P_RS), tl.load(row + _P_CS)
    inner, slab = tl.load(row + _P_I).to(tl.int32), tl.load(row + _P_HI)
    x_ptr = ws_ptr + tl.load(row + _P_X)
    s_ptr = ws_ptr + tl.load(row + _P_S)
    rows = block.to(tl.int32) * BLOCK_H + tl.arange(0, BLOCK_H)  # (BLOCK_H,)
    rmask = rows < h
    row_off = _axis_offsets(rows, row_stride, inner, slab, ROW_DIV)  # (BLOCK_H,) int64
    acc = tl.zeros((BLOCK_H, BLOCK_W), ACC)
    for start in range(0, w, BLOCK_W):  # s = B x for this program's rows
        cols = start + tl.arange(0, BLOCK_W)
        cmask = cols < w
        x = tl.load(x_ptr + cols, mask=cmask, other=0.0)
        offs = row_off[:, None] + _axis_offsets(cols, col_stride, inner, slab, COL_DIV)[None, :]
        tile = tl.load(w_ptr + offs, mask=rmask[:, None] & cmask[None, :], other=0.0).to(ACC)
        acc += tile * x[None, :]
    s = tl.sum(acc, axis=1)  # (BLOCK_H,), 0 on masked rows
    if MODE == 1:  # BILINEAR
        y = tl.load(s_ptr + rows, mask=rmask, other=0.0)
        tl.atomic_add(sigmas_ptr + tl.load(row + _P_SIGMA), tl.sum(y * s, axis=0), sem="relaxed")
    else:  # FUSED
        _fused_tail(w_ptr, s, rows, rmask, row_off, s_ptr, ws_ptr + tl.load(row + _P_R), ws_ptr + tl.load(row + _P_SSQ),
                    w, col_stride, inner, slab, COL_DIV, ACC, BLOCK_W)


@triton.jit
def _sn_grouped_finalize_kernel(rows_ptr, launch_ptr, ws_ptr, sigmas_ptr, w_like, ACC: tl.constexpr,
                                MAXG: tl.constexpr, BLOCK: tl.constexpr):
    # _sn_finalize_kernel, one program per weight of the launch; the last iteration of each weight (its _P_LAST)
    # writes its u, v in place, their copies and its sigma
    k = tl.load(launch_ptr + 2 + MAXG + tl.program_id(0))
    row = rows_ptr + k * _NPF
    h = tl.load(row + _P_H).to(tl.int32)
    w = tl.load(row + _P_WB).to(tl.int32)
    last = tl.load(row + _P_LAST) == tl.load(launch_ptr)
    eps_a = tl.load(row + _P_EPS).to(tl.float64, bitcast=True).to(ACC)
    u_ptr = tl.load(row + _P_ROW).to(w_like.dtype, bitcast=True)
    ucopy_ptr = tl.load(row + _P_ROW_COPY).to(w_like.dtype, bitcast=True)
    v_ptr = tl.load(row + _P_COL).to(w_like.dtype, bitcast=True)
    vcopy_ptr = tl.load(row + _P_COL_COPY).to(w_like.dtype, bitcast=True)
    sigma = _finalize(ws_ptr + tl.load(row + _P_R), ws_ptr + tl.load(row + _P_X), ws_ptr + tl.load(row + _P_S),
                      ws_ptr + tl.load(row + _P_SSQ), h, w, eps_a, last, u_ptr, tl.load(row + _P_ROW_STRIDE),
                      ucopy_ptr, v_ptr, tl.load(row + _P_COL_STRIDE), vcopy_ptr, ACC, BLOCK)
    if last:
        tl.store(sigmas_ptr + tl.load(row + _P_SIGMA), sigma)


# ---------------------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------------------

class _View(NamedTuple):
    """A matrix B (M or M^T) read in place from the contiguous weight: B[i, j] at row_off(i) + col_off(j)."""
    h: int            # rows of B
    w: int            # columns of B
    row_stride: int   # row_off(i) = i * row_stride (unless row_div)
    col_stride: int   # col_off(j) = j * col_stride (unless col_div)
    inner: int        # I, for the div axis: (idx // I) * slab + idx % I
    slab: int         # H * I
    row_div: bool
    col_div: bool
    transposed: bool  # B = M^T: the roles of u and v are swapped

    def t(self) -> "_View":
        return _View(self.w, self.h, self.col_stride, self.row_stride, self.inner, self.slab, self.col_div,
                     self.row_div, not self.transposed)

    @property
    def fast_rows(self) -> bool:  # consecutive rows are adjacent in memory (each column contiguous): tall tiles
        return not self.row_div and self.row_stride == 1 and self.col_stride != 1


def _matrix_view(weight: torch.Tensor, dim: int) -> _View:
    """The view of M (h, w) = (H, O*I) on the contiguous weight."""
    shape = weight.shape
    outer, height, inner = math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1:])
    if outer == 1:  # M[i, j] at i*I + j: row-major
        return _View(height, inner, inner, 1, 1, 0, False, False, False)
    if inner == 1:  # M[i, o] at o*H + i: column-major
        return _View(height, outer, 1, height, 1, 0, False, False, False)
    return _View(height, outer * inner, inner, 0, inner, height * inner, False, True, False)


def _prev_pow2(x: int) -> int:
    return 1 << (max(1, int(x)).bit_length() - 1)


def _tile_elems(dtype: torch.dtype) -> int:
    return 2048 if dtype == torch.float64 else 4096  # 16 KiB (fp32/fp64) in flight per tile load


def _warps(tile: int) -> int:
    return max(1, min(8, tile // 512))


def _width(w: int, cap: int) -> int:
    """A power of 4 from 64 covering w, or cap (a power of 2 >= 64) if that is narrower: few distinct widths,
    so few compiled variants."""
    block_w = 64
    while block_w < w and block_w * 4 <= cap:
        block_w *= 4
    return cap if block_w < w and block_w < cap else block_w


def pass_config(view: _View, dtype: torch.dtype) -> tuple[int, int, int]:
    """(BLOCK_H, BLOCK_W, num_warps) of _sn_pass_kernel on B = view.

    Columns the fast axis: BLOCK_H (rows per program) makes cdiv(h, BLOCK_H) about 256..511 programs once
    h >= 256 (2..4 per SM of an H100; more programs would multiply the atomics on r, programs x w), and the
    tile BLOCK_H x BLOCK_W holds at most _tile_elems elements. Rows the fast axis: tall tiles of 32 (64 for
    very tall B) contiguous rows."""
    tile = _tile_elems(dtype)
    if view.fast_rows:
        block_h = 64 if view.h >= 64 * 256 and tile >= 4096 else 32
    else:
        block_h = min(tile // 64, _prev_pow2(max(1, view.h // 256)))
    block_w = _width(view.w, tile // block_h)
    return block_h, block_w, _warps(block_h * block_w)


def backward_config(w: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(BLOCK_H, BLOCK_W, num_warps) of _sn_normalize_backward_kernel: a tile of _tile_elems elements,
    BLOCK_W in 64, 256, 1024."""
    tile = _tile_elems(dtype)
    block_w = _width(w, 1024)
    return tile // block_w, block_w, _warps(tile)




_MAX_SIDE = 2**31 - 2**16  # rows and columns are int32 in the kernels (offsets are int64)


def _check_sides(view: _View, op: str) -> None:
    if max(view.h, view.w) > _MAX_SIDE:
        raise RuntimeError(f"{op}(): the Triton kernels take weights whose matrix view has fewer than 2^31 - 2^16 "
                           f"rows and columns, got ({view.h}, {view.w})")


# ---------------------------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------------------------

def spectral_norm_power_iteration_triton(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, dim: int,
                                         n_power_iterations: int, eps: float, u_first: bool
                                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton implementation of :func:`fastsn.ops.spectral_norm.spectral_norm_power_iteration`.

    Args:
        weight: (d_0, ..., d_{n-1}), n >= 2, float16/bfloat16/float32/float64, CUDA (or CPU under
            TRITON_INTERPRET=1); seen as M (h, w), h = d_dim.
        u: (h,), v: (w,): weight's dtype and device, any stride; updated in place when n_power_iterations > 0.
        dim, n_power_iterations, eps, u_first: as the reference.

    Returns:
        sigma () in float32 (float64 for float64 weights); u_copy (h,), v_copy (w,): contiguous copies.
    """
    check_power_iteration_args(weight, u, v, dim, n_power_iterations, eps)
    n_iter = int(n_power_iterations)
    acc = opmath_dtype(weight.dtype)
    dev = weight.device
    # zeroed where the kernels accumulate into it (n == 0) or do not run (empty weight)
    sigma = (torch.zeros if n_iter == 0 or weight.numel() == 0 else torch.empty)((), dtype=acc, device=dev)
    u_copy = torch.empty(u.shape, dtype=u.dtype, device=dev)
    v_copy = torch.empty(v.shape, dtype=v.dtype, device=dev)
    if weight.numel() == 0:  # h == 0 or w == 0: M v = 0 and M^T u = 0, so u = N(0) = 0, v = 0; sigma = 0
        if n_iter > 0:
            u.zero_()
            v.zero_()
        u_copy.copy_(u)
        v_copy.copy_(v)
        return sigma, u_copy, v_copy

    wc = weight.detach().contiguous()
    view = _matrix_view(wc, dim)
    _check_sides(view, OP + "_power_iteration")
    if n_iter > 0 and not u_first:  # v = N(M^T u), u = N(M v): rows first on B = M^T, with (u, v) swapped
        view = view.t()
    elif n_iter == 0 and view.fast_rows:  # sigma = u . (M v) = v . (M^T u): columns the fast axis
        view = view.t()
    row_vec, col_vec, row_copy, col_copy = (v, u, v_copy, u_copy) if view.transposed else (u, v, u_copy, v_copy)
    h, w = view.h, view.w
    block_h, block_w, warps = pass_config(view, wc.dtype)
    grid = (cdiv(h, block_h),)
    acc_kind = acc_tl(wc.dtype)
    geometry = (h, w, view.row_stride, view.col_stride, view.inner, view.slab)
    layout = (view.row_div, view.col_div)

    with on_device(wc):
        if n_iter == 0:  # sigma = u . (M v) (sigma is zeroed), copies on the way
            _sn_pass_kernel[grid](wc, col_vec, col_vec.stride(0), row_vec, row_vec.stride(0), sigma, sigma, sigma,
                                  col_copy, row_copy, *geometry, PASS_BILINEAR, *layout, acc_kind, block_h, block_w,
                                  num_warps=warps)
            return sigma, u_copy, v_copy

        # workspace: r (w,) | v_acc (w,) | s (h,) | ssq (1), each segment 64-aligned; r and ssq start at 0
        wp, hp = cdiv(w, _SEG) * _SEG, cdiv(h, _SEG) * _SEG
        ws = torch.zeros(2 * wp + hp + _SEG, dtype=acc, device=dev)
        r, v_acc, s, ssq = ws[:w], ws[wp:wp + w], ws[2 * wp:2 * wp + h], ws[2 * wp + hp:2 * wp + hp + 1]
        for it in range(n_iter):
            x = col_vec if it == 0 else v_acc  # (w,): the input v, then the workspace's
            _sn_pass_kernel[grid](wc, x, x.stride(0), row_vec, row_vec.stride(0), s, r, ssq, col_copy, row_copy,
                                  *geometry, PASS_FUSED, *layout, acc_kind, block_h, block_w, num_warps=warps)
            _sn_finalize_kernel[(1,)](r, v_acc, s, ssq, sigma, row_vec, row_vec.stride(0), col_vec,
                                      col_vec.stride(0), row_copy, col_copy, h, w, float(eps), it == n_iter - 1,
                                      acc_kind, FINALIZE_BLOCK, num_warps=FINALIZE_WARPS)
    return sigma, u_copy, v_copy


def spectral_norm_normalize_triton(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor,
                                   dim: int, eps: float) -> torch.Tensor:
    """Triton implementation of the forward of :func:`fastsn.ops.spectral_norm.spectral_norm_normalize`.

    Args:
        weight: (d_0, ..., d_{n-1}), n >= 2, CUDA (or CPU under TRITON_INTERPRET=1).
        u: (h,), v: (w,): unused here (kept for the backward); checked.
        sigma: () (one value, any float dtype).
        dim: the output dimension of weight.
        eps: where |sigma| < eps, eps replaces sigma.

    Returns:
        weight / sigma, weight's shape and dtype, in torch's layout (see normalize_layout; computed in float32 /
        float64).
    """
    check_normalize_args(weight, u, v, sigma, dim, OP + "_normalize")
    return _normalize(weight, sigma, eps)


def _normalize(weight: torch.Tensor, sigma: torch.Tensor, eps: float) -> torch.Tensor:
    """spectral_norm_normalize_triton with its arguments already checked."""
    wc, out = normalize_layout(weight)  # (torch's layout: elementwise over storage)
    n = wc.numel()
    if n == 0:
        return out
    with on_device(wc):
        _sn_normalize_kernel[(cdiv(n, NORMALIZE_BLOCK),)](wc, sigma, out, n, float(eps), acc_tl(wc.dtype),
                                                                 NORMALIZE_BLOCK, num_warps=NORMALIZE_WARPS)
    return out


def spectral_norm_normalize_backward_triton(grad: torch.Tensor, weight: torch.Tensor, u: torch.Tensor,
                                            v: torch.Tensor, sigma: torch.Tensor, dim: int, eps: float
                                            ) -> torch.Tensor:
    """Triton implementation of the fused backward of ``spectral_norm_normalize``:
    dW = (G - c u v^T) / sigma with c = <G, W> / sigma, laid out like W; where |sigma| < eps,
    dW = G / eps (c = 0).

    Args:
        grad: G, weight's shape, any float dtype; weight, u, v, sigma, dim, eps: as the forward.

    Returns:
        dW, contiguous, weight's shape and dtype.
    """
    op = OP + "_normalize_backward"
    check_normalize_args(weight, u, v, sigma, dim, op)
    check_normalize_backward_grad(grad, weight, op)
    return _normalize_backward(grad, weight, u, v, sigma, dim, eps, op)


def _normalize_backward(grad: torch.Tensor, weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                        sigma: torch.Tensor, dim: int, eps: float, op: str) -> torch.Tensor:
    """spectral_norm_normalize_backward_triton with its arguments already checked."""
    wc, gc = weight.contiguous(), grad.contiguous()
    out = torch.empty_like(wc, memory_format=torch.contiguous_format)
    n = wc.numel()
    if n == 0:
        return out
    acc = opmath_dtype(wc.dtype)
    acc_kind = acc_tl(wc.dtype)
    n_parts = min(cdiv(n, DOT_BLOCK), NUM_PARTIALS)
    partials = torch.empty(n_parts, dtype=acc, device=wc.device)
    view = _matrix_view(wc, dim)
    _check_sides(view, op)
    if view.fast_rows:  # I == 1: B = M^T is row-major
        view = view.t()
    row_vec, col_vec = (v, u) if view.transposed else (u, v)
    block_h, block_w, warps = backward_config(view.w, wc.dtype)
    n_wtiles = cdiv(view.w, block_w)
    with on_device(wc):
        _sn_dot_partials_kernel[(n_parts,)](gc, wc, partials, n, cdiv(n, DOT_BLOCK), acc_kind, DOT_BLOCK,
                                            num_warps=DOT_WARPS)
        _sn_normalize_backward_kernel[(cdiv(view.h, block_h) * n_wtiles,)](
            gc, row_vec, row_vec.stride(0), col_vec, col_vec.stride(0), sigma, partials, n_parts, out,
            view.h, view.w, view.row_stride, view.col_stride, view.inner, view.slab, n_wtiles, float(eps),
            view.row_div, view.col_div, acc_kind, NUM_PARTIALS, block_h, block_w, num_warps=warps)
    return out


# Grouped ops (every spectral norm of a model), one launch for many weights.
MAX_GROUP = 64  # weights per grouped launch: each program scans that many starts to find its weight
WIDEN_BLOCK = 1024
# elements per program of the grouped normalize and its backward: 8 per thread keeps the index math of the backward
# within about 100 registers (16 per thread took 214 with int64 indices: one CTA of 8 warps per SM)
GROUPED_BLOCK = 1024
GROUPED_WARPS = 4


def spectral_norm_grouped_power_iteration_triton(weights, us, vs, dims, n_power_iterations, eps, u_first):
    """Triton implementation of the grouped power iteration: flat (sigmas (n,), u copies, v copies).

    Launches, for all weights together (MAX_GROUP weights a launch): one memset of the workspace and sigmas, one
    widening x (and, where n_power_iterations == 0, the copies), one BILINEAR pass per block configuration, then
    per iteration one FUSED pass per block configuration and one finalize."""
    check_grouped_power_iteration_args(weights, us, vs, dims, n_power_iterations, eps, u_first)
    if _capturing(weights[0].device):
        results = [spectral_norm_power_iteration_triton(*args)
                   for args in zip(weights, us, vs, dims, n_power_iterations, eps, u_first)]
        return (torch.stack([r[0] for r in results]), torch.cat([r[1] for r in results]),
                torch.cat([r[2] for r in results]))
    for args in zip(weights, us, vs, dims, n_power_iterations, eps):
        check_power_iteration_args(*args)
    first = weights[0]
    dtype, device = first.dtype, first.device
    u_offs, v_offs, h_total, w_total = _vector_offsets(weights, dims)
    u_copies = torch.empty(h_total, dtype=dtype, device=device)
    v_copies = torch.empty(w_total, dtype=dtype, device=device)
    sigmas = torch.zeros(len(weights), dtype=opmath_dtype(dtype), device=device)
    keep: list[torch.Tensor] = []  # the contiguous weights the table points to, alive until the launches
    rows: list[list[int]] = []
    configs: dict[tuple, list[int]] = {}  # (BILINEAR, pass_config, ROW_DIV, COL_DIV) -> row indices
    ws_size = 0
    item = first.element_size()
    for k, (weight, u, v, dim, n_iter, e, first_u) in enumerate(zip(weights, us, vs, dims, n_power_iterations, eps,
                                                                    u_first)):
        n_iter = int(n_iter)
        if weight.numel() == 0:  # M v = 0 and M^T u = 0: u = N(0) = 0, v = 0; sigma = 0
            if n_iter > 0:
                u.zero_()
                v.zero_()
            u_copies[u_offs[k]:u_offs[k] + u.numel()].copy_(u)
            v_copies[v_offs[k]:v_offs[k] + v.numel()].copy_(v)
            continue
        wc = weight.detach().contiguous()
        keep.append(wc)
        view = _matrix_view(wc, dim)
        _check_sides(view, OP + "_grouped_power_iteration")
        if (n_iter > 0 and not first_u) or (n_iter == 0 and view.fast_rows):  # as the single-weight launcher
            view = view.t()
        u_copy, v_copy = u_copies.data_ptr() + u_offs[k] * item, v_copies.data_ptr() + v_offs[k] * item
        (row_vec, row_copy), (col_vec, col_copy) = ((v, v_copy), (u, u_copy)) if view.transposed else \
            ((u, u_copy), (v, v_copy))
        configs.setdefault((n_iter == 0, *pass_config(view, dtype), view.row_div, view.col_div), []).append(len(rows))
        rows.append([wc.data_ptr(), view.h, view.w, view.row_stride, view.col_stride, view.inner, view.slab,
                     ws_size, ws_size + view.w, ws_size + 2 * view.w, ws_size + 2 * view.w + view.h, _f64_bits(e),
                     n_iter - 1, row_vec.data_ptr(), row_vec.stride(0), col_vec.data_ptr(), col_vec.stride(0),
                     row_copy, col_copy, k])
        ws_size += 2 * view.w + view.h + 1  # x, r (w_B each), s (h_B), ||s||^2
    if rows:
        ws = torch.zeros(ws_size, dtype=sigmas.dtype, device=device)
        table, plan = _power_iteration_plan(rows, configs, max(int(n) for n in n_power_iterations))
        table = _device_table(table, device)
        acc_kind = acc_tl(dtype)
        with on_device(first):
            for kernel, offset, grid, maxg, meta in plan:
                kernel[(grid,)](table, table[offset:], ws, *([] if kernel is _sn_grouped_widen_kernel else [sigmas]),
                                keep[0], ACC=acc_kind, MAXG=maxg, **meta)
    return sigmas, u_copies, v_copies


def _power_iteration_plan(rows: list[list[int]], configs: dict[tuple, list[int]], iterations: int
                          ) -> tuple[list[int], list[tuple]]:
    """The table (the rows, then a segment per launch: [iteration, count, starts (MAXG), members (MAXG)]) and the
    launches (kernel, segment offset, grid, MAXG, other arguments) of the grouped power iteration."""
    table = [value for row in rows for value in row]
    plan = []
    last, heights, widths = ([row[field.value] for row in rows] for field in (_P_LAST, _P_H, _P_WB))

    def add(kernel, iteration: int, members: list[int], programs: list[int], **meta) -> None:
        for begin in range(0, len(members), MAX_GROUP):
            chunk, counts = members[begin:begin + MAX_GROUP], programs[begin:begin + MAX_GROUP]
            if not sum(counts):
                continue
            maxg = next_pow2(len(chunk))
            starts = [sum(counts[:j]) for j in range(len(chunk))]
            plan.append((kernel, len(table), sum(counts), maxg, meta))
            padding = [0] * (maxg - len(chunk))
            table.extend([iteration, len(chunk)] + starts + padding + chunk + padding)
            table.extend([0] * (len(table) % 2))  # 16-byte aligned segments

    everyone = list(range(len(rows)))
    add(_sn_grouped_widen_kernel, 0, everyone,
        [cdiv(max(widths[j], heights[j] if last[j] < 0 else 0), WIDEN_BLOCK) for j in everyone], BLOCK=WIDEN_BLOCK,
        num_warps=4)
    for it in range(-1, iterations):  # -1: the BILINEAR passes (no iteration)
        for (_, block_h, block_w, warps, row_div, col_div), members in configs.items():
            members = [j for j in members if (last[j] < 0 if it < 0 else last[j] >= it)]
            add(_sn_grouped_pass_kernel, max(it, 0), members, [cdiv(heights[j], block_h) for j in members],
                MODE=PASS_BILINEAR if it < 0 else PASS_FUSED, ROW_DIV=row_div, COL_DIV=col_div, BLOCK_H=block_h,
                BLOCK_W=block_w, num_warps=warps)
        if it >= 0:
            members = [j for j in everyone if last[j] >= it]
            add(_sn_grouped_finalize_kernel, it, members, [1] * len(members), BLOCK=FINALIZE_BLOCK,
                num_warps=FINALIZE_WARPS)
    return table, plan


def _capturing(device: torch.device) -> bool:
    """Whether a CUDA graph is being captured on the current stream. The grouped launches read a table copied from
    host memory, which a graph would copy again at each replay from a buffer long reused; so under capture the
    grouped ops run the single-weight launches, weight by weight (arguments only)."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _aligned(rows: list[list[int]]) -> bool:
    """Whether every address in the rows (_F_W, _F_OUT, _F_G; 0 where unused) is 16-byte aligned."""
    return all(row[field] % 16 == 0 for row in rows for field in (0, 1, 2))


@functools.lru_cache(maxsize=64)
def _f64_bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def _device_table(values: list[int], device: torch.device) -> torch.Tensor:
    """An int64 table on ``device``: one host-to-device copy, asynchronous from pinned memory on a GPU."""
    if device.type == "cuda":
        return torch.tensor(values, dtype=torch.int64, pin_memory=True).to(device, non_blocking=True)
    return torch.tensor(values, dtype=torch.int64, device=device)


def _grouped_table(rows: list[list[int]], programs: list[int], parts: list[int], device: torch.device
                   ) -> tuple[torch.Tensor, int]:
    """The table of one grouped launch: the cumulative first program of each weight (elementwise programs, then
    partial sums), padded to MAXG entries each, then the rows of _NF fields. Returns (table, MAXG)."""
    maxg = next_pow2(len(rows))
    values = []
    for counts in (programs, parts):
        total = 0
        for count in counts:
            values.append(total)
            total += count
        values += [0] * (maxg - len(counts))
    for row in rows:
        values += row
    return _device_table(values, device), maxg


def _weight_row(weight: torch.Tensor, out: torch.Tensor, grad: Optional[torch.Tensor], dim: int, eps: float,
                u_off: int, v_off: int, sigma_index: int, parts_first: int, n_parts: int) -> list[int]:
    shape = weight.shape
    return [weight.data_ptr(), out.data_ptr(), 0 if grad is None else grad.data_ptr(), weight.numel(),
            _f64_bits(eps), shape[dim], math.prod(shape[dim + 1:]), u_off, v_off, sigma_index, parts_first, n_parts]


def _vector_offsets(weights: list[torch.Tensor], dims: list[int]) -> tuple[list[int], list[int], int, int]:
    """Where each weight's u and v start in the flat us and vs, and the lengths of those."""
    u_offs, v_offs, h_total, w_total = [], [], 0, 0
    for weight, dim in zip(weights, dims):
        u_offs.append(h_total)
        v_offs.append(w_total)
        h_total += weight.shape[dim]
        w_total += math.prod([size for d, size in enumerate(weight.shape) if d != dim])
    return u_offs, v_offs, h_total, w_total


def spectral_norm_grouped_normalize_triton(weights, us, vs, sigmas, dims, eps):
    """Triton implementation of the grouped normalize: W / sigma for every weight, one launch per MAX_GROUP."""
    check_grouped_normalize_args(weights, us, vs, sigmas, dims, eps)
    if weights and _capturing(weights[0].device):
        return [_normalize(weight, sigma, e) for weight, sigma, e in zip(weights, sigmas.unbind(0), eps)]
    layouts = [normalize_layout(weight) for weight in weights]  # (input, output) per weight, torch's layout
    for begin in range(0, len(weights), MAX_GROUP):
        members = range(begin, min(len(weights), begin + MAX_GROUP))
        programs = [cdiv(layouts[k][0].numel(), GROUPED_BLOCK) for k in members]
        if not sum(programs):
            continue
        rows = [_weight_row(layouts[k][0], layouts[k][1], None, dims[k], eps[k], 0, 0, k, 0, 0) for k in members]
        table, maxg = _grouped_table(rows, programs, [], weights[0].device)
        with on_device(weights[0]):
            _sn_grouped_normalize_kernel[(sum(programs),)](table, len(rows), sigmas, layouts[begin][0],
                                                           acc_tl(weights[0].dtype), maxg, _aligned(rows),
                                                           GROUPED_BLOCK, num_warps=GROUPED_WARPS)
    return [out for _, out in layouts]


def spectral_norm_grouped_normalize_backward_triton(grads, weights, us, vs, sigmas, dims, eps):
    """Triton implementation of the grouped normalize backward: per MAX_GROUP weights, one launch of partial sums
    of <G, W> and one of dW = (G - c u v^T) / sigma."""
    check_grouped_normalize_args(weights, us, vs, sigmas, dims, eps, OP + "_grouped_normalize_backward", grads)
    if not weights:
        return []
    if _capturing(weights[0].device):
        u, v, sigma = split_grouped_vectors(weights, us, vs, sigmas, dims)
        op = OP + "_grouped_normalize_backward"
        return [_normalize_backward(*args, op) for args in zip(grads, weights, u, v, sigma, dims, eps)]
    dtype, device = weights[0].dtype, weights[0].device
    # one G dtype per launch (the pointers are typed by it): mixed ones are widened, exactly
    g_dtype = functools.reduce(torch.promote_types, [g.dtype for g in grads])
    wcs = [w.contiguous() for w in weights]
    gcs = [g.to(g_dtype).contiguous() for g in grads]
    outs = [torch.empty_like(w, memory_format=torch.contiguous_format) for w in wcs]
    u_offs, v_offs, _, _ = _vector_offsets(weights, dims)
    n_parts = [min(cdiv(w.numel(), DOT_BLOCK), NUM_PARTIALS) for w in wcs]
    partials = torch.empty(max(1, sum(n_parts)), dtype=opmath_dtype(dtype), device=device)
    acc_kind = acc_tl(dtype)
    parts_first = 0
    for begin in range(0, len(weights), MAX_GROUP):
        members = range(begin, min(len(weights), begin + MAX_GROUP))
        programs = [cdiv(wcs[k].numel(), GROUPED_BLOCK) for k in members]
        rows = []
        for k in members:
            rows.append(_weight_row(wcs[k], outs[k], gcs[k], dims[k], eps[k], u_offs[k], v_offs[k], k, parts_first,
                                    n_parts[k]))
            parts_first += n_parts[k]
        if not sum(programs):
            continue
        for k in members:
            _check_sides(_matrix_view(wcs[k], dims[k]), OP + "_grouped_normalize_backward")
        table, maxg = _grouped_table(rows, programs, n_parts[begin:members.stop], device)
        wide = any(wide_offsets(wcs[k].numel(), GROUPED_BLOCK) for k in members)
        aligned = _aligned(rows)
        with on_device(wcs[0]):
            _sn_grouped_dot_partials_kernel[(sum(n_parts[begin:members.stop]),)](
                table, len(rows), partials, wcs[begin], gcs[begin], acc_kind, maxg, aligned, DOT_BLOCK,
                num_warps=DOT_WARPS)
            _sn_grouped_normalize_backward_kernel[(sum(programs),)](
                table, len(rows), us, vs, sigmas, partials, wcs[begin], gcs[begin], acc_kind, maxg, NUM_PARTIALS,
                wide, aligned, GROUPED_BLOCK, num_warps=GROUPED_WARPS)
    return outs


for _kernel in (spectral_norm_power_iteration_triton, spectral_norm_normalize_triton,
                spectral_norm_normalize_backward_triton, spectral_norm_grouped_power_iteration_triton,
                spectral_norm_grouped_normalize_triton, spectral_norm_grouped_normalize_backward_triton):
    torch.library.register_kernel(f"fastsn::{_kernel.__name__}", ("cuda", "cpu"))(_kernel)
