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
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from fastsn.ops.spectral_norm import (check_grouped_normalize_args, check_grouped_power_iteration_args,
                                      check_normalize_args, check_normalize_backward_grad, check_power_iteration_args,
                                      normalize_layout, opmath_dtype, split_grouped_vectors)
from fastsn.triton_kernels._common import acc_tl, div_rn, on_device, sqrt_rn

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
    else:  # FUSED: keep s, ||s||^2, and r += B^T s over the same columns in reverse (hottest first)
        tl.store(s_ptr + rows, s, mask=rmask)
        tl.atomic_add(scal_ptr, tl.sum(s * s, axis=0), sem="relaxed")
        n_chunks = tl.cdiv(w, BLOCK_W)
        for c in range(0, n_chunks):
            cols = (n_chunks - 1 - c) * BLOCK_W + tl.arange(0, BLOCK_W)
            cmask = cols < w
            offs = row_off[:, None] + _axis_offsets(cols, col_stride, I, HI, COL_DIV)[None, :]
            tile = tl.load(w_ptr + offs, mask=rmask[:, None] & cmask[None, :], other=0.0).to(ACC)
            part = tl.sum(tile * s[:, None], axis=0)  # (BLOCK_W,)
            tl.atomic_add(r_ptr + cols, part, mask=cmask, sem="relaxed")


@triton.jit
def _sn_finalize_kernel(r_ptr, vacc_ptr, s_ptr, scal_ptr, sigma_ptr, u_ptr, u_stride, v_ptr, v_stride,
                        ucopy_ptr, vcopy_ptr, h, w, eps: tl.float64,
                        LAST: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # one program, after a FUSED pass. r: (w,) acc (zeroed on exit); vacc: (w,) acc; s: (h,) acc; scal: () acc
    # (zeroed on exit); u: (h,) and v: (w,) weight dtype, written in place when LAST, with contiguous copies.
    eps_a = tl.cast(eps, ACC)  # (the interpreter passes eps as a Python float)
    idx = tl.arange(0, BLOCK)
    ssq = tl.load(scal_ptr)
    ds = _clamp_min(sqrt_rn(ssq), eps_a)  # max(||s||, eps)
    tsq_vec = tl.zeros((BLOCK,), ACC)
    for start in range(0, w, BLOCK):  # t = r / ds (= B^T u)
        cols = start + idx
        t = div_rn(tl.load(r_ptr + cols, mask=cols < w, other=0.0), ds)
        tsq_vec += t * t
    tsq = tl.sum(tsq_vec, axis=0)
    dt = _clamp_min(sqrt_rn(tsq), eps_a)  # max(||t||, eps)
    for start in range(0, w, BLOCK):  # v = t / dt
        cols = start + idx
        cmask = cols < w
        vn = div_rn(div_rn(tl.load(r_ptr + cols, mask=cmask, other=0.0), ds), dt)
        tl.store(vacc_ptr + cols, vn, mask=cmask)
        tl.store(r_ptr + cols, tl.zeros((BLOCK,), ACC), mask=cmask)
        if LAST:
            tl.store(v_ptr + cols.to(tl.int64) * v_stride, vn.to(v_ptr.dtype.element_ty), mask=cmask)
            tl.store(vcopy_ptr + cols, vn.to(vcopy_ptr.dtype.element_ty), mask=cmask)
    tl.store(scal_ptr, tl.zeros((), ACC))
    if LAST:
        for start in range(0, h, BLOCK):  # u = s / ds
            rows = start + idx
            rmask = rows < h
            un = div_rn(tl.load(s_ptr + rows, mask=rmask, other=0.0), ds)
            tl.store(u_ptr + rows.to(tl.int64) * u_stride, un.to(u_ptr.dtype.element_ty), mask=rmask)
            tl.store(ucopy_ptr + rows, un.to(ucopy_ptr.dtype.element_ty), mask=rmask)
        tl.store(sigma_ptr, div_rn(tsq, dt))  # u . (B v) = (B^T u) . v = ||t||^2 / max(||t||, eps)


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


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


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
    grid = (triton.cdiv(h, block_h),)
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
        wp, hp = triton.cdiv(w, _SEG) * _SEG, triton.cdiv(h, _SEG) * _SEG
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
        _sn_normalize_kernel[(triton.cdiv(n, NORMALIZE_BLOCK),)](wc, sigma, out, n, float(eps), acc_tl(wc.dtype),
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
    n_parts = min(triton.cdiv(n, DOT_BLOCK), NUM_PARTIALS)
    partials = torch.empty(n_parts, dtype=acc, device=wc.device)
    view = _matrix_view(wc, dim)
    _check_sides(view, op)
    if view.fast_rows:  # I == 1: B = M^T is row-major
        view = view.t()
    row_vec, col_vec = (v, u) if view.transposed else (u, v)
    block_h, block_w, warps = backward_config(view.w, wc.dtype)
    n_wtiles = triton.cdiv(view.w, block_w)
    with on_device(wc):
        _sn_dot_partials_kernel[(n_parts,)](gc, wc, partials, n, triton.cdiv(n, DOT_BLOCK), acc_kind, DOT_BLOCK,
                                            num_warps=DOT_WARPS)
        _sn_normalize_backward_kernel[(triton.cdiv(view.h, block_h) * n_wtiles,)](
            gc, row_vec, row_vec.stride(0), col_vec, col_vec.stride(0), sigma, partials, n_parts, out,
            view.h, view.w, view.row_stride, view.col_stride, view.inner, view.slab, n_wtiles, float(eps),
            view.row_div, view.col_div, acc_kind, NUM_PARTIALS, block_h, block_w, num_warps=warps)
    return out


# Grouped ops (every spectral norm of a model): the single-weight launchers, weight by weight. Unlike the C++ CUDA
# kernels, which refresh up to 24 small weights in one launch, this costs the single-weight launches per weight.
def spectral_norm_grouped_power_iteration_triton(weights, us, vs, dims, n_power_iterations, eps, u_first):
    """Triton implementation of the grouped power iteration: flat (sigmas (n,), u copies, v copies)."""
    check_grouped_power_iteration_args(weights, us, vs, dims, n_power_iterations, eps, u_first)
    results = [spectral_norm_power_iteration_triton(*args)
               for args in zip(weights, us, vs, dims, n_power_iterations, eps, u_first)]
    return (torch.stack([r[0] for r in results]), torch.cat([r[1] for r in results]),
            torch.cat([r[2] for r in results]))


def spectral_norm_grouped_normalize_triton(weights, us, vs, sigmas, dims, eps):
    """Triton implementation of the grouped normalize: one W / sigma per weight."""
    check_grouped_normalize_args(weights, us, vs, sigmas, dims, eps)
    u, v, sigma = split_grouped_vectors(weights, us, vs, sigmas, dims)
    return [_normalize(weight, s, e) for weight, s, e in zip(weights, sigma, eps)]


def spectral_norm_grouped_normalize_backward_triton(grads, weights, us, vs, sigmas, dims, eps):
    """Triton implementation of the grouped normalize backward: one fused backward per weight."""
    check_grouped_normalize_args(weights, us, vs, sigmas, dims, eps, OP + "_grouped_normalize_backward", grads)
    u, v, sigma = split_grouped_vectors(weights, us, vs, sigmas, dims)
    op = OP + "_grouped_normalize_backward"
    return [_normalize_backward(*args, op) for args in zip(grads, weights, u, v, sigma, dims, eps)]


for _kernel in (spectral_norm_power_iteration_triton, spectral_norm_normalize_triton,
                spectral_norm_normalize_backward_triton, spectral_norm_grouped_power_iteration_triton,
                spectral_norm_grouped_normalize_triton, spectral_norm_grouped_normalize_backward_triton):
    torch.library.register_kernel(f"fastsn::{_kernel.__name__}", ("cuda", "cpu"))(_kernel)
