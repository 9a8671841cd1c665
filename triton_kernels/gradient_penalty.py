"""Triton kernel of ``fastsn::gradient_penalty_head_triton``: one program per sample (a row of grad, (B, N)) sums
its squares over BLOCK-wide chunks, computes phi and writes its row of d penalty / d grad in a second pass (the row
is still in L2); the mean of phi over the batch is one torch sum in the accumulation dtype (deterministic)."""
from __future__ import annotations


import torch
import triton
import triton.language as tl

from fastsn.ops.gradient_penalty import check_gradient_penalty_head_args, opmath_dtype
from fastsn.triton_kernels._common import acc_tl, check_loop_size, div_rn, on_device, scalars, sqrt_rn

BLOCK = 1024
WARPS = 4


@triton.jit
def _penalty_rows_kernel(grad_ptr, d_grad_ptr, phi_ptr, params_ptr, features, MODE: tl.constexpr, ACC: tl.constexpr,
                         BLOCK: tl.constexpr):
    # params: (center, weight / B) in ACC, read from memory (exact float64 under the interpreter too)
    row = tl.program_id(0).to(tl.int64) * features
    center, scale = tl.load(params_ptr), tl.load(params_ptr + 1)
    sumsq = tl.zeros((BLOCK,), ACC)
    for start in range(0, features, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        g = tl.load(grad_ptr + row + cols, mask=cols < features, other=0).to(ACC)
        sumsq += g * g
    s = tl.sum(sumsq, axis=0)
    if MODE == 2:
        phi = s
        k = tl.full((), 2.0, ACC)
    else:
        n = sqrt_rn(s)  # (IEEE: the approximate root flushes a subnormal sum to 0, and the row's gradient with it)
        gap = n - center
        if MODE == 1:
            gap = tl.where(gap < 0.0, 0.0, gap)  # not maximum: NaN stays NaN
        phi = gap * gap
        k = tl.where(n == 0, 0.0, div_rn(2.0 * gap, tl.where(n == 0, 1.0, n)))  # a NaN norm gives NaN
    factor = (scale * k).to(ACC)
    for start in range(0, features, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < features
        g = tl.load(grad_ptr + row + cols, mask=mask, other=0).to(ACC)
        tl.store(d_grad_ptr + row + cols, (factor * g).to(d_grad_ptr.dtype.element_ty), mask=mask)
    tl.store(phi_ptr + tl.program_id(0), phi.to(ACC))



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
    with on_device(g):
        _penalty_rows_kernel[(batch,)](g, d_grad, phi, scalars(g, float(center), scale), features, int(mode),
                                       acc_tl(g.dtype), BLOCK, num_warps=WARPS)
    return phi.sum() * scale, d_grad  # phi in acc: the sum and the product stay in float32 (float64)


torch.library.register_kernel("fastsn::gradient_penalty_head_triton", ("cuda", "cpu"))(gradient_penalty_head_triton)
