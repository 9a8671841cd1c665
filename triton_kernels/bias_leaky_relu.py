"""Triton kernels of ``fastsn::bias_leaky_relu_triton`` and its backward: each program handles BLOCK consecutive
elements of dense memory (contiguous, or channels-last kept where the pass is flat; with a bias x is contiguous, seen
as (outer, C, inner) around ``dim``: the channel of flat index i is (i // inner) % C), in float32 for
float16/bfloat16 and float64 for float64."""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from fastsn.ops.bias_leaky_relu import backward_format, check_bias_leaky_relu_args, forward_format
from fastsn.triton_kernels._common import acc_tl, block_offsets, cdiv, on_device, scalars, wide_offsets

BLOCK = 1024
WARPS = 4


@triton.jit
def _bias_leaky_relu_kernel(x_ptr, bias_ptr, y_ptr, n, channels, inner, params_ptr, HAS_BIAS: tl.constexpr,
                            ACC: tl.constexpr, BLOCK: tl.constexpr, WIDE: tl.constexpr):
    # params: (negative_slope, gain) in ACC, from memory: exact float64 scalars under the interpreter too
    offs = block_offsets(WIDE, BLOCK)  # (BLOCK,) int32, or int64 where WIDE
    mask = offs < n
    v = tl.load(x_ptr + offs, mask=mask, other=0).to(ACC)
    if HAS_BIAS:
        v += tl.load(bias_ptr + (offs // inner) % channels, mask=mask, other=0).to(ACC)
    slope, gain = tl.load(params_ptr), tl.load(params_ptr + 1)
    y = tl.where(v > 0, v, v * slope) * gain
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bias_leaky_relu_backward_kernel(grad_ptr, y_ptr, dx_ptr, n, params_ptr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # params: (gain, gain * negative_slope) in ACC
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) int64
    mask = offs < n
    g = tl.load(grad_ptr + offs, mask=mask, other=0).to(ACC)
    y = tl.load(y_ptr + offs, mask=mask, other=0).to(ACC)
    scale = tl.where(y > 0, tl.load(params_ptr), tl.load(params_ptr + 1))
    tl.store(dx_ptr + offs, (g * scale).to(dx_ptr.dtype.element_ty), mask=mask)




def bias_leaky_relu_triton(x: torch.Tensor, bias: Optional[torch.Tensor], dim: int, negative_slope: float,
                           gain: float) -> torch.Tensor:
    """Triton implementation of :func:`fastsn.ops.bias_leaky_relu.bias_leaky_relu`: y, x's shape, in
    forward_format's layout."""
    dim = check_bias_leaky_relu_args(x, bias, dim, negative_slope, gain, op="fastsn::bias_leaky_relu_triton")
    layout = forward_format(x, bias is not None, dim)
    xc = x.contiguous(memory_format=layout)
    y = torch.empty_like(xc, memory_format=layout)
    n = xc.numel()
    if n == 0:
        return y
    channels = xc.shape[dim] if bias is not None else 1
    inner = 1
    if bias is not None and layout == torch.contiguous_format:  # (channels last: the channel is innermost)
        for size in xc.shape[dim + 1:]:
            inner *= size
    b = bias.contiguous() if bias is not None else xc  # any pointer when HAS_BIAS is off
    with on_device(xc):
        _bias_leaky_relu_kernel[(cdiv(n, BLOCK),)](xc, b, y, n, channels, inner,
                                                          scalars(xc, float(negative_slope), float(gain)),
                                                          bias is not None, acc_tl(xc.dtype), BLOCK,
                                                          wide_offsets(n, BLOCK), num_warps=WARPS)
    return y


def bias_leaky_relu_backward_triton(grad: torch.Tensor, y: torch.Tensor, negative_slope: float,
                                    gain: float) -> torch.Tensor:
    """Triton implementation of the backward: grad * gain * (y > 0 ? 1 : negative_slope), in backward_format's
    layout."""
    op = "fastsn::bias_leaky_relu_backward_triton"
    check_bias_leaky_relu_args(grad, None, 0, negative_slope, gain, op=op, name="grad")
    if grad.shape != y.shape or grad.dtype != y.dtype or grad.device != y.device:
        raise RuntimeError(f"{op}(): arguments 'grad' and 'y' must have one shape, dtype and device, got "
                           f"{tuple(grad.shape)} {grad.dtype} {grad.device} and {tuple(y.shape)} {y.dtype} {y.device}")
    layout = backward_format(grad, y)
    gc, yc = grad.contiguous(memory_format=layout), y.contiguous(memory_format=layout)
    dx = torch.empty_like(gc, memory_format=layout)
    n = gc.numel()
    if n == 0:
        return dx
    with on_device(gc):
        _bias_leaky_relu_backward_kernel[(cdiv(n, BLOCK),)](
            gc, yc, dx, n, scalars(gc, float(gain), float(gain * negative_slope)), acc_tl(gc.dtype), BLOCK,
            num_warps=WARPS)
    return dx


torch.library.register_kernel("fastsn::bias_leaky_relu_triton", ("cuda", "cpu"))(bias_leaky_relu_triton)
torch.library.register_kernel("fastsn::bias_leaky_relu_backward_triton", ("cuda", "cpu"))(
    bias_leaky_relu_backward_triton)
