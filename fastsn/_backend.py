"""The one place that decides which implementation of an op runs.

Precedence: the op's ``backend=`` argument > the innermost ``fastsn.use_backend(name)`` context >
the ``FASTSN_BACKEND`` environment variable > ``"auto"``.

Backends:
    "cuda":   the CUDA kernels of fastsn._C (CUDA tensors).
    "triton": the Triton kernels in fastsn.triton_kernels (CUDA tensors, or CPU tensors when
              TRITON_INTERPRET=1 was set before triton was imported).
    "cpu":    the C++ CPU kernels of fastsn._C (CPU tensors).
    "ref":    the pure-PyTorch reference ``<op>_ref``; always available, on any device.
    "auto":   CUDA tensors: cuda, else triton, else ref. CPU tensors: cpu, else ref. Others: ref. Under torch.func
              transforms (vmap, grad, jacrev, jvp, ...): ref, which they can differentiate and batch (they cannot
              run the autograd of ops defined in C++); likewise inside torch.autograd.forward_ad.dual_level() (the
              kernels have no forward derivatives).

A backend requested by name (argument, context or environment) that cannot run raises
:class:`BackendUnavailableError` saying why and how to get it; ``"auto"`` falls back silently.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import os
from typing import Iterator, Optional, Union

import torch
import torch.autograd.forward_ad

from fastsn import _extension

BACKENDS = ("auto", "cuda", "triton", "cpu", "ref")
_AUTO_ORDER = {"cuda": ("cuda", "triton", "ref"), "cpu": ("cpu", "ref")}
_context: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("fastsn_backend", default=None)
_triton_import_errors: dict[str, str] = {}
# auto's choice per (op, device, the unavailable_reason it was found with): which kernels are built, loaded and
# match the GPU does not change in a process, and every op call resolves (found afresh, it cost about 20 us per
# call inside a training step on the 2-core VM, where the matmuls between calls evict the Python from the cache)
_auto_choices: dict[tuple, str] = {}
# An op family (one name in every tree) holds several schemas; this one proves a build has the family.
_PROBE_SCHEMA = {"spectral_norm": "spectral_norm_power_iteration", "gradient_penalty": "gradient_penalty_head"}


def _schema(op: str) -> str:
    return _PROBE_SCHEMA.get(op, op)


class BackendUnavailableError(RuntimeError):
    """A backend was requested by name but cannot run this op on these tensors."""


def _validate(name: object, where: str) -> str:
    if not isinstance(name, str) or name.strip().lower() not in BACKENDS:
        raise ValueError(f"fastsn: {where} must be one of {', '.join(map(repr, BACKENDS))}; got {name!r}")
    return name.strip().lower()


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the fastsn ops inside the block with backend ``name``, unless a call passes ``backend=``.

    Contexts nest (the innermost wins) and are local to the thread or asyncio task.

    Args:
        name: one of "auto", "cuda", "triton", "cpu", "ref".
    """
    token = _context.set(_validate(name, "use_backend(name)"))
    try:
        yield
    finally:
        _context.reset(token)


def requested(backend: Optional[str] = None) -> tuple[str, str]:
    """The backend asked for, and who asked: ("cuda", "argument backend='cuda'") and so on.

    Args:
        backend: the op's ``backend=`` argument; None defers to the context, then FASTSN_BACKEND.
    """
    if backend is not None:
        return _validate(backend, "argument 'backend'"), f"argument backend={backend!r}"
    name = _context.get()
    if name is not None:
        return name, f"fastsn.use_backend({name!r})"
    env = os.environ.get("FASTSN_BACKEND", "")
    if env.strip():
        return _validate(env, "environment variable FASTSN_BACKEND"), f"FASTSN_BACKEND={env!r}"
    return "auto", "default"


def _triton_reason(op: str, device: torch.device) -> Optional[str]:
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        return ("Triton kernels run on CPU tensors only in Triton's interpreter: set TRITON_INTERPRET=1 before "
                "importing triton or fastsn, or move the tensors to a GPU")
    if device.type not in ("cpu", "cuda"):
        return f"the Triton kernels take CUDA tensors, not {device.type}"
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (it comes with CUDA builds of torch on Linux: pip install triton)"
    if not _extension.op_defined(f"{_schema(op)}_triton"):
        return f"the op schemas live in fastsn._C, which is not loaded ({_extension.LOAD_ERROR})"
    if op not in _triton_import_errors:
        try:  # importing the kernel module registers its kernels for fastsn::<op>_triton
            importlib.import_module(f"fastsn.triton_kernels.{op}")
            _triton_import_errors[op] = ""
        except Exception as exc:  # a broken triton install must not break the other backends
            _triton_import_errors[op] = f"fastsn.triton_kernels.{op} failed to import: {type(exc).__name__}: {exc}"
    return _triton_import_errors[op] or None


def _differentiating_transform_active() -> bool:
    """Whether a torch.func grad or jvp transform is running (grad, vjp, jacrev, jacfwd, hessian, jvp): those
    cannot differentiate ops defined in C++ (an explicit kernel backend gives no gradient, or a zero tangent);
    vmap alone runs the kernels, batched one sample at a time."""
    if not torch._C._are_functorch_transforms_active():
        return False
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
    return any(i.key() in (TransformType.Grad, TransformType.Jvp) for i in retrieve_all_functorch_interpreters())


def _forward_ad_active() -> bool:
    """Whether a ``torch.autograd.forward_ad.dual_level()`` is open: the kernels define no forward derivatives (a
    tangent would be lost, or refused), the reference has torch's."""
    return getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0


def unavailable_reason(name: str, op: str, device: Union[torch.device, str]) -> Optional[str]:
    """Why backend ``name`` cannot run ``op`` on tensors of ``device``, with how to fix it; None if it can.

    Args:
        name: a backend other than "auto".
        op: the op's name, e.g. "build_info".
        device: the device of the op's tensors.
    """
    device = torch.device(device)
    if name == "ref":
        return None
    if _differentiating_transform_active():
        return ("torch.func's grad and jvp transforms (grad, vjp, jacrev, jacfwd, hessian, jvp) cannot differentiate "
                "the compiled kernels; inside them use backend 'ref', or 'auto', which takes it there")
    if _forward_ad_active():
        return ("forward-mode AD (torch.autograd.forward_ad) has no forward derivatives of the compiled kernels; "
                "inside a dual_level() use backend 'ref', or 'auto', which takes it there")
    if name == "triton":
        return _triton_reason(op, device)
    wanted = {"cpu": "cpu", "cuda": "cuda"}[name]
    if device.type != wanted:
        return (f"the {name.upper()} kernels take {wanted.upper()} tensors, got tensors on {device}; "
                f"move them with .{wanted}() or choose another backend")
    if not _extension.loaded():
        return f"fastsn._C is not loaded ({_extension.LOAD_ERROR}); build it: pip install --no-build-isolation -e ."
    if not _extension.has_kernel(_schema(op), wanted.upper()):
        if name == "cuda" and not _extension.cuda_compiled():
            why = (_extension.BUILD or {}).get("cuda_choice", "unknown reason")
            return (f"fastsn._C was built without CUDA kernels ({why}); rebuild with "
                    "FORCE_CUDA=1 pip install --no-build-isolation -e . "
                    "(CUDA toolkit and a CUDA build of torch needed)")
        return (f"fastsn._C has no {wanted.upper()} kernel for fastsn::{op}: it was built from older sources; "
                "rebuild: pip install --no-build-isolation -e .")
    if name == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        return _extension.gpu_arch_mismatch(index)
    return None


# Under torch.compile the choice is made once, while tracing, and baked into the graph: a later
# use_backend()/FASTSN_BACKEND change does not retrace a function that was already compiled.
@torch.compiler.assume_constant_result
def resolve(op: str, device: Union[torch.device, str], backend: Optional[str] = None) -> str:
    """The backend that will run ``op`` on tensors of ``device``: never "auto".

    Args:
        op: the op's name, e.g. "build_info".
        device: the device of the op's tensors.
        backend: the op's ``backend=`` argument (None: context, then FASTSN_BACKEND, then auto).

    Raises:
        BackendUnavailableError: a backend requested by name cannot run here.
        ValueError: an unknown backend name.
    """
    device = device if isinstance(device, torch.device) else torch.device(device)
    name, source = requested(backend)
    if name == "auto":
        if torch._C._are_functorch_transforms_active() or _forward_ad_active():
            return "ref"  # torch.func transforms and forward AD cannot differentiate the kernels: the twin can
        key = (op, device, unavailable_reason)
        choice = _auto_choices.get(key)
        if choice is None:
            candidates = _AUTO_ORDER.get(device.type, ("ref",))
            choice = next((c for c in candidates if unavailable_reason(c, op, device) is None), "ref")
            _auto_choices[key] = choice
        return choice
    reason = unavailable_reason(name, op, device)
    if reason is not None:
        raise BackendUnavailableError(f"fastsn.{op}: backend {name!r} (from {source}) is unavailable: {reason}.")
    return name


def available_backends(op: str = "build_info", device: Union[torch.device, str] = "cpu") -> list[str]:
    """The backends that can run ``op`` on tensors of ``device`` in this process, "auto" excluded."""
    return [name for name in BACKENDS[1:] if unavailable_reason(name, op, device) is None]
