"""Triton kernels of ``fastsn::gradient_penalty_head_triton``. With enough samples to fill the GPU, one program per
sample (a row of grad, (B, N)) sums its squares over BLOCK-wide chunks, computes phi and writes its row of
d penalty / d grad in a second pass (the row is still in L2). With few long rows (R1 on a few large images), each
row is cut into chunks, one program each: one kernel writes the chunks' sums of squares, a second one sums its row's
(in chunk order) and writes its chunk of d penalty / d grad. The mean of phi over the batch is one torch sum in the
accumulation dtype. Every order is fixed by the shape and the GPU's SM count (deterministic)."""
from __future__ import annotations


import torch
import triton
import triton.language as tl

from fastsn.ops.gradient_penalty import check_gradient_penalty_head_args, opmath_dtype
from fastsn.triton_kernels._common import (acc_tl, cdiv, check_loop_size, div_rn, next_pow2, on_device, program_target,
                                          scalars, sqrt_rn)

BLOCK = 1024
WARPS = 4
MIN_CHUNK = 4 * BLOCK  # elements a program of the split path reads at least
MAX_CHUNKS = 1024  # chunks per row at most (the second kernel loads its row's partial sums as one vector)


@triton.jit
def _penalty_terms(s, center, MODE: tl.constexpr, ACC: tl.constexpr):
    """phi(n) and k = phi'(n) / n of one sample from its sum of squares s (k = 0 at n = 0; a NaN n gives NaN)."""
    if MODE == 2:
        phi = s
        k = tl.full((), 2.0, ACC)
    else:
        n = sqrt_rn(s)  # (IEEE: the approximate root flushes a subnormal sum to 0, and the row's gradient with it)
        gap = n - center
        if MODE == 1:
            gap = tl.where(gap < 0.0, 0.0, gap)  # not maximum: NaN stays NaN
        phi = gap * gap
        k = tl.where(n == 0, 0.0, div_rn(2.0 * gap, tl.where(n == 0, 1.0, n)))
    return phi, k


@triton.jit
def _sum_squares(ptr, length, ACC: tl.constexpr, BLOCK: tl.constexpr):
    sumsq = tl.zeros((BLOCK,), ACC)
    for start in range(0, length, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        g = tl.load(ptr + cols, mask=cols < length, other=0).to(ACC)
        sumsq += g * g
    return tl.sum(sumsq, axis=0)


@triton.jit
def _scale_run(ptr, out_ptr, length, factor, ACC: tl.constexpr, BLOCK: tl.constexpr):
    for start in range(0, length, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < length
        g = tl.load(ptr + cols, mask=mask, other=0).to(ACC)
        tl.store(out_ptr + cols, (factor * g).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _penalty_rows_kernel(grad_ptr, d_grad_ptr, phi_ptr, params_ptr, features, MODE: tl.constexpr, ACC: tl.constexpr,
                         BLOCK: tl.constexpr):
    # grid (B,): program i handles row i. params: (center, weight / B) in ACC, read from memory (exact float64 under
    # the interpreter too)
    row = tl.program_id(0).to(tl.int64) * features
    center, scale = tl.load(params_ptr), tl.load(params_ptr + 1)
    phi, k = _penalty_terms(_sum_squares(grad_ptr + row, features, ACC, BLOCK), center, MODE, ACC)
    _scale_run(grad_ptr + row, d_grad_ptr + row, features, (scale * k).to(ACC), ACC, BLOCK)
    tl.store(phi_ptr + tl.program_id(0), phi.to(ACC))


@triton.jit
def _chunk_sums_kernel(grad_ptr, partial_ptr, features, chunk, chunks, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # grid (B, chunks): partial[i, c] = the sum of squares of elements [c * chunk, (c + 1) * chunk) of row i
    i, c = tl.program_id(0).to(tl.int64), tl.program_id(1)
    begin = i * features + c * chunk
    tl.store(partial_ptr + i * chunks + c, _sum_squares(grad_ptr + begin, tl.minimum(chunk, features - c * chunk),
                                                        ACC, BLOCK))


@triton.jit
def _chunk_scale_kernel(grad_ptr, d_grad_ptr, partial_ptr, phi_ptr, params_ptr, features, chunk, chunks,
                        MODE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr, CHUNKS_P2: tl.constexpr):
    # grid (B, chunks): every program of row i sums the row's partial sums alike, then writes its chunk
    i, c = tl.program_id(0).to(tl.int64), tl.program_id(1)
    center, scale = tl.load(params_ptr), tl.load(params_ptr + 1)
    q = tl.arange(0, CHUNKS_P2)
    s = tl.sum(tl.load(partial_ptr + i * chunks + q, mask=q < chunks, other=0), axis=0)
    phi, k = _penalty_terms(s, center, MODE, ACC)
    begin = i * features + c * chunk
    _scale_run(grad_ptr + begin, d_grad_ptr + begin, tl.minimum(chunk, features - c * chunk), (scale * k).to(ACC),
               ACC, BLOCK)
    if c == 0:
        tl.store(phi_ptr + i, phi.to(ACC))


def row_chunks(batch: int, features: int, target: int) -> int:
    """The elements per program for rows of ``features``: the whole row while ``batch`` rows fill ``target``
    programs or the row is short, else about target / batch chunks per row (a multiple of BLOCK, MIN_CHUNK at least,
    MAX_CHUNKS chunks at most)."""
    chunks = min(cdiv(target, batch), features // MIN_CHUNK, MAX_CHUNKS)
    if chunks <= 1:
        return features
    return cdiv(cdiv(features, chunks), BLOCK) * BLOCK


def gradient_penalty_head_triton(grad: torch.Tensor, mode: int, weight: float, center: float
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton implementation of the head: (penalty (), d penalty / d grad (B, N) contiguous)."""
    op = "fastsn::gradient_penalty_head_triton"
    check_gradient_penalty_head_args(grad, mode, op=op)
    g = grad.contiguous()
    batch, features = g.shape
    check_loop_size(features, op, "rows of grad (features)")
    acc = opmath_dtype(g.dtype)
    d_grad = torch.empty_like(g, memory_format=torch.contiguous_format)
    phi = torch.empty(batch, dtype=acc, device=g.device)
    scale = weight / batch
    params = scalars(g, float(center), scale)
    chunk = row_chunks(batch, features, program_target(g))
    with on_device(g):
        if chunk >= features:
            _penalty_rows_kernel[(batch,)](g, d_grad, phi, params, features, int(mode), acc_tl(g.dtype), BLOCK,
                                           num_warps=WARPS)
        else:
            chunks = cdiv(features, chunk)
            partial = torch.empty(batch, chunks, dtype=acc, device=g.device)
            _chunk_sums_kernel[(batch, chunks)](g, partial, features, chunk, chunks, acc_tl(g.dtype), BLOCK,
                                                num_warps=WARPS)
            _chunk_scale_kernel[(batch, chunks)](g, d_grad, partial, phi, params, features, chunk, chunks, int(mode),
                                                 acc_tl(g.dtype), BLOCK, next_pow2(chunks),
                                                 num_warps=WARPS)
    return phi.sum() * scale, d_grad  # phi in acc: the sum and the product stay in float32 (float64)


torch.library.register_kernel("fastsn::gradient_penalty_head_triton", ("cuda", "cpu"))(gradient_penalty_head_triton)
