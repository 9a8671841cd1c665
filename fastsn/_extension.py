"""Loads the compiled extension ``fastsn._C`` once, and answers what it holds.

``import fastsn`` never fails because of the extension: if ``_C`` cannot be loaded, one warning says why
(the full traceback with ``FASTSN_VERBOSE=1``) and every op falls back to its pure-PyTorch reference.
"""
from __future__ import annotations

import functools
import os
import traceback
import warnings
from typing import Any, Optional

import torch

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _build_config() -> Optional[dict[str, Any]]:
    try:
        from fastsn._build_config import BUILD
    except ImportError:
        return None
    return dict(BUILD)


BUILD: Optional[dict[str, Any]] = _build_config()
"""The facts setup.py recorded at build time (versions, arch list, backends compiled); None if never built."""


def _how_to_build() -> str:
    if BUILD is None and os.path.isfile(os.path.join(_PACKAGE_DIR, os.pardir, "setup.py")):
        return ("this looks like an unbuilt source checkout: run `pip install --no-build-isolation -e .` in it, "
                "or import the installed fastsn from another directory")
    return "rebuild it: `pip install --no-build-isolation -e .` in the fastsn source tree"


def cuda_mismatch(build_cuda: Optional[str], torch_cuda: Optional[str]) -> Optional[str]:
    """An error message if the CUDA major version fastsn._C was compiled with differs from torch's, else None.

    Args:
        build_cuda: the toolkit version of the build, e.g. "13.0", or None for a CPU-only build.
        torch_cuda: ``torch.version.cuda``, e.g. "13.0", or None for a CPU-only torch.
    """
    if build_cuda is None:
        return None
    if torch_cuda is None:
        return (f"fastsn._C was compiled with CUDA {build_cuda} kernels but this torch is a CPU-only build: "
                "reinstall a CUDA build of torch, or rebuild fastsn with FORCE_ONLY_CPU=1")
    if build_cuda.split(".")[0] != torch_cuda.split(".")[0]:
        return (f"fastsn._C was compiled with CUDA {build_cuda} but torch uses CUDA {torch_cuda}: the major versions "
                "must match; rebuild fastsn against this torch with a matching toolkit (set CUDA_HOME)")
    return None


def arch_mismatch(capability: tuple[int, int], arch_list: Optional[str]) -> Optional[str]:
    """An error message if CUDA code built for ``arch_list`` cannot run on a GPU of ``capability``, else None.

    A cubin for X.Y runs on X.Z with Z >= Y ("9.0a" only on 9.0 itself); "+PTX" adds code that the driver
    compiles for any GPU at or above it. Entries that are not numbers (named arches) get the benefit of the doubt.

    Args:
        capability: the GPU's (major, minor), e.g. (9, 0) for an H100.
        arch_list: the build's TORCH_CUDA_ARCH_LIST, e.g. "8.0;9.0+PTX".
    """
    if not arch_list:
        return None
    for entry in arch_list.replace(",", ";").replace(" ", ";").split(";"):
        entry = entry.strip()
        if not entry:
            continue
        ptx = entry.endswith("+PTX")
        number = entry.removesuffix("+PTX")
        specific = number.endswith("a")  # "9.0a": that GPU only; "10.0f" (family) behaves as plain
        try:
            arch = tuple(int(part) for part in number.rstrip("af").split("."))
        except ValueError:
            return None
        if (ptx and arch <= capability) or arch == capability or (
                not specific and arch[0] == capability[0] and arch <= capability):
            return None
    return (f"fastsn._C holds CUDA code for {arch_list} only, which cannot run on this "
            f"sm_{capability[0]}{capability[1]} GPU: rebuild with "
            f"TORCH_CUDA_ARCH_LIST=\"{capability[0]}.{capability[1]}\"")


@functools.lru_cache(maxsize=None)
def gpu_arch_mismatch(device_index: int) -> Optional[str]:
    """:func:`arch_mismatch` for visible GPU ``device_index`` and this build (cached: both are fixed)."""
    return arch_mismatch(torch.cuda.get_device_capability(device_index), (BUILD or {}).get("cuda_arch_list"))


def _load() -> tuple[Optional[Any], Optional[str], str]:
    try:
        from fastsn import _C
    except Exception as exc:  # ImportError, or OSError for undefined symbols after a torch upgrade
        return None, f"{type(exc).__name__}: {exc}", traceback.format_exc()
    return _C, None, ""


_C, LOAD_ERROR, _load_traceback = _load()
"""The loaded extension module (empty: its content is torch.ops.fastsn.*) and why loading failed, if it did."""

if LOAD_ERROR is not None:
    _message = (f"fastsn: the compiled kernels (fastsn._C) could not be loaded, so every op runs its pure-PyTorch "
                f"reference. {LOAD_ERROR}. To get the kernels, {_how_to_build()}.")
    if BUILD is not None and BUILD.get("torch_version") != torch.__version__:
        _message += f" (It was built against torch {BUILD.get('torch_version')}; this is torch {torch.__version__}.)"
    if os.environ.get("FASTSN_VERBOSE", "") not in ("", "0"):
        _message += "\n" + _load_traceback
    else:
        _message += " Set FASTSN_VERBOSE=1 for the traceback."
    warnings.warn(_message, RuntimeWarning, stacklevel=2)
elif BUILD is not None:
    _problem = cuda_mismatch(BUILD.get("cuda_toolkit_version"), torch.version.cuda)
    if _problem is None and BUILD.get("torch_version") != torch.__version__:
        _problem = (f"fastsn._C was built against torch {BUILD.get('torch_version')} but this is torch "
                    f"{torch.__version__}; C++ ABI differences can crash or corrupt results: {_how_to_build()}")
    if _problem is not None:
        warnings.warn("fastsn: " + _problem, RuntimeWarning, stacklevel=2)


def loaded() -> bool:
    """Whether fastsn._C loaded, i.e. the op schemas and the C++ kernels are registered."""
    return _C is not None


# Cached: the schemas and C++ kernels are registered once, when fastsn._C loads, and the backend switch asks
# on every op call.
@functools.lru_cache(maxsize=None)
def op_defined(op: str) -> bool:
    """Whether the schema ``fastsn::<op>`` is registered (it lives in fastsn._C)."""
    return loaded() and hasattr(torch.ops.fastsn, op)


@functools.lru_cache(maxsize=None)
def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether ``fastsn::<op>`` has a kernel for ``dispatch_key`` ("CPU" or "CUDA") in this process."""
    if not op_defined(op):
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"fastsn::{op}", dispatch_key)


def cuda_compiled() -> bool:
    """Whether fastsn._C holds CUDA kernels (whether or not a GPU is visible)."""
    return has_kernel("build_info", "CUDA")
