"""Helpers every Triton launcher shares: the accumulation dtype, the device context, and scalar arguments passed
through memory."""
from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

_SCALARS: dict = {}


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for host ints. ``triton.cdiv`` is a constexpr function in Triton 3.8: 2.7 us a call on the
    2-core VM (argument unwrapping), paid several times per launch; this is about 0.1 us."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1), for host ints (see :func:`cdiv`)."""
    return 1 << max(0, n - 1).bit_length()


# Most launchers loop `for start in range(0, size, BLOCK)` with an int32 counter, which wraps past 2^31 - BLOCK.
MAX_LOOP_SIZE = 2**31 - 2**16


def wide_offsets(n: int, block: int) -> bool:
    """Whether a grid of cdiv(n, block) programs of ``block`` elements needs int64 offsets. Elementwise kernels
    that divide their offsets (the channel or sample of an element) take int32 ones below that: a GPU divides int64
    in a software sequence of about 70 instructions per element, more than a memory-bound pass can hide."""
    return cdiv(n, block) * block >= 2**31


@triton.jit
def block_offsets(WIDE: tl.constexpr, BLOCK: tl.constexpr):
    """This program's BLOCK consecutive flat offsets: int64 where ``WIDE`` (see :func:`wide_offsets`), else int32."""
    pid = tl.program_id(0)
    if WIDE:
        pid = pid.to(tl.int64)
    return pid * BLOCK + tl.arange(0, BLOCK)


def check_loop_size(size: int, op: str, what: str) -> None:
    """Refuse a size the kernels' int32 loop counters would wrap on (clearly, instead of out-of-bounds access)."""
    if size >= MAX_LOOP_SIZE:
        raise RuntimeError(f"{op}(): the Triton kernels take {what} below 2^31 - 2^16, got {size}")


@triton.jit
def div_rn(x, y):
    """IEEE division: fp32 '/' lowers to the approximate div.full.f32 on a GPU; fp64 '/' is div.rn.f64."""
    if y.dtype == tl.float64:  # (y: x may be a Python number)
        return x / y
    else:
        return tl.div_rn(x, y)


@triton.jit
def sqrt_rn(x):
    """IEEE square root: fp32 tl.sqrt is sqrt.approx.ftz (a subnormal input flushes to 0); fp64 is sqrt.rn."""
    if x.dtype == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def program_target(t: torch.Tensor) -> int:
    """About how many programs fill t's GPU (four per SM); 8 for CPU tensors, where the interpreter runs the
    programs one by one and a small number keeps the split paths it tests cheap."""
    return 4 * _sm_count(t.device.index if t.device.index is not None else torch.cuda.current_device()) \
        if t.device.type == "cuda" else 8


def acc_tl(dtype: torch.dtype):
    """The Triton accumulation dtype of a tensor dtype: float64 stays, everything else computes in float32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def on_device(t: torch.Tensor):
    """Launch on t's GPU (Triton launches on the current device); nothing for CPU tensors (the interpreter)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


# Entries are never evicted: a cached tensor may still be read by kernels queued on another stream, or by a captured
# CUDA graph, which would read freed memory. Past the limit (about 2 MB of GPU memory), new values get a fresh
# tensor per call instead, freed in stream order like any temporary.
_MAX_SCALARS = 4096


def scalars(like: torch.Tensor, *values: float) -> torch.Tensor:
    """``values`` as a 1-D tensor in like's accumulation dtype on its device, for a kernel to load: exact in float64
    (Triton's interpreter hands float arguments to a kernel as float32, even annotated tl.float64), and cached per
    device, so a module's constants are copied to the GPU once, not per call."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    key = (like.device, dtype, values)
    cached = _SCALARS.get(key)
    if cached is None:
        cached = torch.tensor(values, dtype=dtype, device=like.device)
        if len(_SCALARS) < _MAX_SCALARS:
            _SCALARS[key] = cached
    return cached
