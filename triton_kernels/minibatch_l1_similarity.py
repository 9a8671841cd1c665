"""Triton kernels of ``fastsn::minibatch_l1_similarity_triton`` and its backward. A program owns BLOCK_I rows i of
one kernel b and walks j in tiles of BLOCK_J, accumulating the (BLOCK_I, BLOCK_J) distances one dim c at a time, in
float32 for float16/bfloat16 and float64 for float64: O(N * B * C) memory, never the (N, N, B) distances. The
backward keeps its rows of dM for BLOCK_C dims at a time in registers across the j loop."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastsn.ops.minibatch_l1_similarity import (check_minibatch_l1_similarity_args,
                                                check_minibatch_l1_similarity_backward_args)
from fastsn.triton_kernels._common import acc_tl, cdiv, on_device

BLOCK_I = 32
BLOCK_J = 32
BACKWARD_BLOCK_J = 16  # the backward holds a (BLOCK_I, BACKWARD_BLOCK_J, BLOCK_C) sign tile: 32 values a thread
BLOCK_C = 8
WARPS = 4


@triton.jit
def _tile_distances(m_ptr, base, rows, row_ok, cols, col_ok, c, s0, s2, ACC: tl.constexpr, BLOCK_I: tl.constexpr,
                    BLOCK_J: tl.constexpr):
    # (BLOCK_I, BLOCK_J): sum_c |M[i, b, c] - M[j, b, c]|; base = b * s1
    dist = tl.zeros((BLOCK_I, BLOCK_J), ACC)
    for k in range(0, c):
        xi = tl.load(m_ptr + base + rows * s0 + k * s2, mask=row_ok, other=0).to(ACC)
        xj = tl.load(m_ptr + base + cols * s0 + k * s2, mask=col_ok, other=0).to(ACC)
        dist += tl.abs(xi[:, None] - xj[None, :])
    return dist


@triton.jit
def _l1_similarity_kernel(m_ptr, o_ptr, n, b, c, s0, s1, s2, ACC: tl.constexpr, BLOCK_I: tl.constexpr,
                          BLOCK_J: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_I + tl.arange(0, BLOCK_I)
    kb = tl.program_id(1).to(tl.int64)  # (BLOCK_I,)
    row_ok = rows < n
    base = kb * s1
    acc = tl.zeros((BLOCK_I,), ACC)
    for j0 in range(0, n, BLOCK_J):
        cols = j0 + tl.arange(0, BLOCK_J).to(tl.int64)  # (BLOCK_J,)
        col_ok = cols < n
        dist = _tile_distances(m_ptr, base, rows, row_ok, cols, col_ok, c, s0, s2, ACC, BLOCK_I, BLOCK_J)
        keep = col_ok[None, :] & (rows[:, None] != cols[None, :])  # no self pair, nothing past N
        acc += tl.sum(tl.where(keep, tl.exp(-dist), 0.0), axis=1)
    tl.store(o_ptr + rows * b + kb, acc.to(o_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _l1_similarity_backward_kernel(g_ptr, g0, g1, m_ptr, dm_ptr, n, b, c, s0, s1, s2, ACC: tl.constexpr,
                                   BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr):
    # dm: (N, B, C) contiguous. Per chunk of BLOCK_C dims, the program's (BLOCK_I, BLOCK_C) rows of dM stay in
    # registers over the whole j loop and are stored once: no read-modify-write of memory across iterations. C past
    # BLOCK_C costs one more pass over j (the distances are recomputed) per chunk.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_I + tl.arange(0, BLOCK_I)
    kb = tl.program_id(1).to(tl.int64)
    row_ok = rows < n
    base = kb * s1
    gi = tl.load(g_ptr + rows * g0 + kb * g1, mask=row_ok, other=0).to(ACC)
    for a0 in range(0, c, BLOCK_C):
        dims = a0 + tl.arange(0, BLOCK_C)  # (BLOCK_C,)
        dim_ok = dims < c
        xi = tl.load(m_ptr + base + rows[:, None] * s0 + dims[None, :] * s2, mask=row_ok[:, None] & dim_ok[None, :],
                     other=0).to(ACC)  # (BLOCK_I, BLOCK_C)
        acc = tl.zeros((BLOCK_I, BLOCK_C), ACC)
        for j0 in range(0, n, BLOCK_J):
            cols = j0 + tl.arange(0, BLOCK_J).to(tl.int64)
            col_ok = cols < n
            dist = _tile_distances(m_ptr, base, rows, row_ok, cols, col_ok, c, s0, s2, ACC, BLOCK_I, BLOCK_J)
            gj = tl.load(g_ptr + cols * g0 + kb * g1, mask=col_ok, other=0).to(ACC)
            keep = col_ok[None, :] & (rows[:, None] != cols[None, :])
            w = tl.where(keep, (gi[:, None] + gj[None, :]) * tl.exp(-dist), 0.0)  # (g_i + g_j) e_ij
            xj = tl.load(m_ptr + base + cols[:, None] * s0 + dims[None, :] * s2,
                         mask=col_ok[:, None] & dim_ok[None, :], other=0).to(ACC)  # (BLOCK_J, BLOCK_C)
            diff = xi[:, None, :] - xj[None, :, :]  # (BLOCK_I, BLOCK_J, BLOCK_C)
            sign = (diff > 0).to(ACC) - (diff < 0).to(ACC)
            acc -= tl.sum(w[:, :, None] * sign, axis=1)
        tl.store(dm_ptr + (rows[:, None] * b + kb) * c + dims[None, :], acc.to(dm_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & dim_ok[None, :])


def _grid(n: int, b: int) -> tuple[int, int]:
    # row blocks on axis 0 (up to 2^31 - 1 programs), kernels on axis 1 (at most 65535: checked by the launchers)
    return (cdiv(n, BLOCK_I), b)


def _check_kernels(b: int, op: str) -> None:
    if b > 65535:
        raise RuntimeError(f"{op}(): the Triton kernels take at most 65535 kernels B (a grid axis each), got {b}")


def minibatch_l1_similarity_triton(M: torch.Tensor) -> torch.Tensor:
    """Triton implementation of :func:`fastsn.ops.minibatch_l1_similarity.minibatch_l1_similarity`: o (N, B)."""
    check_minibatch_l1_similarity_args(M, op="fastsn::minibatch_l1_similarity_triton")
    n, b, c = M.shape
    _check_kernels(b, "fastsn::minibatch_l1_similarity_triton")
    o = torch.empty((n, b), dtype=M.dtype, device=M.device)
    if o.numel() == 0:
        return o
    with on_device(M):
        _l1_similarity_kernel[_grid(n, b)](M, o, n, b, c, *M.stride(), acc_tl(M.dtype), BLOCK_I, BLOCK_J,
                                           num_warps=WARPS)
    return o


def minibatch_l1_similarity_backward_triton(grad: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """Triton implementation of the backward: dM (N, B, C), contiguous."""
    check_minibatch_l1_similarity_backward_args(grad, M, op="fastsn::minibatch_l1_similarity_backward_triton")
    n, b, c = M.shape
    _check_kernels(b, "fastsn::minibatch_l1_similarity_backward_triton")
    dm = torch.empty((n, b, c), dtype=M.dtype, device=M.device)
    if dm.numel() == 0:
        return dm
    with on_device(M):
        _l1_similarity_backward_kernel[_grid(n, b)](grad, *grad.stride(), M, dm, n, b, c, *M.stride(),
                                                    acc_tl(M.dtype), BLOCK_I, BACKWARD_BLOCK_J, BLOCK_C,
                                                    num_warps=WARPS)
    return dm


torch.library.register_kernel("fastsn::minibatch_l1_similarity_triton", ("cuda", "cpu"))(
    minibatch_l1_similarity_triton)
torch.library.register_kernel("fastsn::minibatch_l1_similarity_backward_triton", ("cuda", "cpu"))(
    minibatch_l1_similarity_backward_triton)
