"""Helpers every Triton launcher shares: the accumulation dtype, the device context, and scalar arguments passed
through memory."""
from __future__ import annotations

import contextlib

import torch
import triton.language as tl

_SCALARS: dict = {}


def acc_tl(dtype: torch.dtype):
    """The Triton accumulation dtype of a tensor dtype: float64 stays, everything else computes in float32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def on_device(t: torch.Tensor):
    """Launch on t's GPU (Triton launches on the current device); nothing for CPU tensors (the interpreter)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def scalars(like: torch.Tensor, *values: float) -> torch.Tensor:
    """``values`` as a 1-D tensor in like's accumulation dtype on its device, for a kernel to load: exact in float64
    (Triton's interpreter hands Python floats to a kernel as float32), and cached per device, so a module's constants
    are copied to the GPU once, not per call."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    key = (like.device, dtype, values)
    if key not in _SCALARS:
        if len(_SCALARS) >= 256:
            _SCALARS.clear()
        _SCALARS[key] = torch.tensor(values, dtype=dtype, device=like.device)
    return _SCALARS[key]
