"""``fastsn::build_info``: the probe op that proves the build, the registration and the backend switch.

It returns an int64 tensor of 8 fields on x's device: which kernel ran, the build it came from, and what
that kernel read of ``x`` (its element count and how many elements are NaN or infinite). Every backend
computes the data fields from ``x`` itself, so parity with :func:`build_info_ref` shows that the kernel
really ran over the tensor's memory; ``python -m fastsn.info`` uses it to check each backend.
The output is integral, so the op has no gradient (inputs that require grad are fine).
"""
from __future__ import annotations

from typing import Optional

import torch

from fastsn import _backend, _extension
from fastsn.ops._checks import check_floating, check_tensor

OP = "fastsn::build_info"
ABI_VERSION = 1  # mirrors kAbiVersion in csrc/common/build_info.h
BUILD_INFO_FIELDS = ("backend", "abi_version", "cuda_version", "numel", "nonfinite", "device_index", "workers",
                     "itemsize")
"""Names of the 8 fields, in order (csrc/common/build_info.h). ``backend``: 0 ref, 1 cpu, 2 cuda, 3 triton;
``cuda_version``: CUDA toolkit of fastsn._C as 1000*major + 10*minor (0: none, and always 0 for ref/triton);
``device_index``: -1 on CPU; ``workers``: CPU threads, CUDA blocks or Triton programs used (1 for ref)."""
BACKEND_CODES = {"ref": 0, "cpu": 1, "cuda": 2, "triton": 3}


def build_info_ref(x: torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch reference of :func:`build_info`.

    Args:
        x: any shape, float16/bfloat16/float32/float64, any strides.

    Returns:
        int64 tensor of shape (8,) on x's device, fields as :data:`BUILD_INFO_FIELDS`.
    """
    check_tensor(x, OP, "x")
    check_floating(x, OP, "x")
    nonfinite = (~torch.isfinite(x)).sum(dtype=torch.int64).reshape(1)
    device_index = x.device.index if x.device.type != "cpu" and x.device.index is not None else -1
    head = torch.tensor([BACKEND_CODES["ref"], ABI_VERSION, 0, x.numel()], dtype=torch.int64, device=x.device)
    tail = torch.tensor([device_index, 1, x.element_size()], dtype=torch.int64, device=x.device)
    return torch.cat([head, nonfinite, tail])


def build_info(x: torch.Tensor, *, backend: Optional[str] = None) -> torch.Tensor:
    """Run the probe op on ``x`` with the chosen backend.

    Args:
        x: any shape, float16/bfloat16/float32/float64, any strides, on CPU or CUDA.
        backend: "auto", "cuda", "triton", "cpu" or "ref"; None defers to :func:`fastsn.use_backend`,
            then ``FASTSN_BACKEND``, then "auto".

    Returns:
        int64 tensor of shape (8,) on x's device, fields as :data:`BUILD_INFO_FIELDS`.
    """
    check_tensor(x, OP, "x")
    name = _backend.resolve("build_info", x.device, backend)
    if name == "ref":
        return build_info_ref(x)
    if name == "triton":
        return torch.ops.fastsn.build_info_triton(x)
    return torch.ops.fastsn.build_info(x)


def _fake(x: torch.Tensor) -> torch.Tensor:
    check_floating(x, OP, "x")
    return x.new_empty((len(BUILD_INFO_FIELDS),), dtype=torch.int64)


for _name in ("build_info", "build_info_triton"):
    if _extension.op_defined(_name):  # the schemas come with fastsn._C
        torch.library.register_fake(f"fastsn::{_name}")(_fake)
