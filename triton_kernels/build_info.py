"""Triton kernel of ``fastsn::build_info_triton``: each program counts the non-finite elements of one
BLOCK of x and adds its count to the output with one atomic; program 0 writes the header fields."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastsn.ops._checks import check_floating
from fastsn.ops.build_info import ABI_VERSION, BACKEND_CODES, BUILD_INFO_FIELDS
from fastsn.triton_kernels._common import acc_tl, cdiv, on_device

BLOCK = 1024


@triton.jit
def _build_info_kernel(x_ptr, out_ptr, n, device_index, item_size, BACKEND: tl.constexpr, ABI: tl.constexpr,
                       COMPUTE_DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offsets = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    # half and bfloat16 widen to float32 exactly; float64 stays float64 (1e300 must not become inf)
    v = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(COMPUTE_DTYPE)
    bad = (v != v) | (tl.abs(v) == float("inf"))
    count = tl.sum(bad.to(tl.int64), axis=0)
    tl.atomic_add(out_ptr + 4, count)
    if pid == 0:
        tl.store(out_ptr + 0, BACKEND)
        tl.store(out_ptr + 1, ABI)
        tl.store(out_ptr + 2, 0)
        tl.store(out_ptr + 3, n)
        tl.store(out_ptr + 5, device_index)
        tl.store(out_ptr + 6, tl.num_programs(0))
        tl.store(out_ptr + 7, item_size)


def build_info_triton(x: torch.Tensor) -> torch.Tensor:
    """Triton implementation of :func:`fastsn.ops.build_info` (see there for the fields).

    Args:
        x: any shape, float16/bfloat16/float32/float64, any strides; CUDA (or CPU under TRITON_INTERPRET=1).

    Returns:
        int64 tensor of shape (8,) on x's device.
    """
    check_floating(x, "fastsn::build_info", "x")
    xc = x.contiguous().view(-1)  # (numel,)
    n = xc.numel()
    out = torch.zeros(len(BUILD_INFO_FIELDS), dtype=torch.int64, device=x.device)
    grid = (max(1, cdiv(n, BLOCK)),)
    device_index = x.device.index if x.device.type == "cuda" else -1
    with on_device(x):  # launch on x's GPU, on its current stream
        _build_info_kernel[grid](xc, out, n, device_index, x.element_size(), BACKEND_CODES["triton"],
                                 ABI_VERSION, acc_tl(x.dtype), BLOCK)
    return out


torch.library.register_kernel("fastsn::build_info_triton", ("cuda", "cpu"))(build_info_triton)
