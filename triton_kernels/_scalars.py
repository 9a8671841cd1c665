"""Scalar kernel arguments passed through memory: exact in float64 (Triton's interpreter hands Python floats to a
kernel as float32), and cached per device, so a module's constants are copied to the GPU once, not per call."""
from __future__ import annotations

import torch

_CACHE: dict = {}


def scalars(like: torch.Tensor, *values: float) -> torch.Tensor:
    """``values`` as a 1-D tensor in like's accumulation dtype (float64 for float64, else float32) on its device."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    key = (like.device, dtype, values)
    if key not in _CACHE:
        if len(_CACHE) >= 256:
            _CACHE.clear()
        _CACHE[key] = torch.tensor(values, dtype=dtype, device=like.device)
    return _CACHE[key]
