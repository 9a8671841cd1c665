"""Triton kernels of ``fastsn::interpolate_triton`` and its backward: each program handles BLOCK consecutive elements
of the (B, F) layout (the sample of flat index k is k // F, whose factor eps it loads), in float32 for
float16/bfloat16 and float64 for float64."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastsn.ops.interpolate import check_interpolate_args, check_interpolate_backward_args, opmath_dtype
from fastsn.triton_kernels._common import acc_tl, block_offsets, cdiv, on_device, wide_offsets

BLOCK = 1024
WARPS = 4


@triton.jit
def _interpolate_kernel(real_ptr, fake_ptr, eps_ptr, out_ptr, n, features, ACC: tl.constexpr, BLOCK: tl.constexpr,
                        WIDE: tl.constexpr):
    offs = block_offsets(WIDE, BLOCK)  # (BLOCK,) int32, or int64 where WIDE
    mask = offs < n
    e = tl.load(eps_ptr + offs // features, mask=mask, other=0).to(ACC)
    r = tl.load(real_ptr + offs, mask=mask, other=0).to(ACC)
    f = tl.load(fake_ptr + offs, mask=mask, other=0).to(ACC)
    tl.store(out_ptr + offs, (e * r + (1 - e) * f).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _interpolate_backward_kernel(grad_ptr, eps_ptr, grad_real_ptr, grad_fake_ptr, n, features, ACC: tl.constexpr,
                                 BLOCK: tl.constexpr, WIDE: tl.constexpr):
    offs = block_offsets(WIDE, BLOCK)  # (BLOCK,) int32, or int64 where WIDE
    mask = offs < n
    e = tl.load(eps_ptr + offs // features, mask=mask, other=0).to(ACC)
    g = tl.load(grad_ptr + offs, mask=mask, other=0).to(ACC)
    tl.store(grad_real_ptr + offs, (e * g).to(grad_real_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_fake_ptr + offs, ((1 - e) * g).to(grad_fake_ptr.dtype.element_ty), mask=mask)


def interpolate_triton(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Triton implementation of :func:`fastsn.ops.interpolate.interpolate` with given eps: real's shape, contiguous."""
    check_interpolate_args(real, fake, eps, op="fastsn::interpolate_triton")
    r, f = real.contiguous(), fake.contiguous()
    out = torch.empty_like(r, memory_format=torch.contiguous_format)
    n = r.numel()
    if n == 0:
        return out
    e = eps.to(opmath_dtype(r.dtype)).contiguous()
    with on_device(r):
        _interpolate_kernel[(cdiv(n, BLOCK),)](r, f, e, out, n, n // r.shape[0], acc_tl(r.dtype), BLOCK,
                                                      wide_offsets(n, BLOCK), num_warps=WARPS)
    return out


def interpolate_backward_triton(grad: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton implementation of the backward: (eps_i * grad_i, (1 - eps_i) * grad_i), contiguous."""
    check_interpolate_backward_args(grad, eps, op="fastsn::interpolate_backward_triton")
    g = grad.contiguous()
    grad_real = torch.empty_like(g, memory_format=torch.contiguous_format)
    grad_fake = torch.empty_like(g, memory_format=torch.contiguous_format)
    n = g.numel()
    if n == 0:
        return grad_real, grad_fake
    e = eps.to(opmath_dtype(g.dtype)).contiguous()
    with on_device(g):
        _interpolate_backward_kernel[(cdiv(n, BLOCK),)](g, e, grad_real, grad_fake, n, n // g.shape[0],
                                                               acc_tl(g.dtype), BLOCK, wide_offsets(n, BLOCK),
                                                               num_warps=WARPS)
    return grad_real, grad_fake


torch.library.register_kernel("fastsn::interpolate_triton", ("cuda", "cpu"))(interpolate_triton)
torch.library.register_kernel("fastsn::interpolate_backward_triton", ("cuda", "cpu"))(interpolate_backward_triton)
