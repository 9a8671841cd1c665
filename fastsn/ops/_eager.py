"""Eager autograd without torch.library's per-call overhead.

An op with ``torch.library.register_autograd`` pays, on every differentiable call, Python handling of its
arguments (defaults filled in, lists flattened and rebuilt): about 10 us a call on the 2-core VM, 110 us for a
grouped op over 11 weights, as much as the kernels of a small discriminator. The functional ops therefore call,
in eager mode, an ``autograd.Function`` per op with the same setup_context and backward as its registration, and
run the op below autograd inside it. The registration stays what torch.compile and torch.jit.trace record and what
direct ``torch.ops.fastsn`` calls and ``opcheck`` use; tests check that both give the same gradients to second order.
"""
from __future__ import annotations

import torch


def tracing() -> bool:
    """Whether torch.compile or torch.jit.trace is recording the call: both record the registered op (an
    ``autograd.Function`` would be a Python call in a TorchScript graph, which ``torch.jit.save`` cannot export)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def use_registration() -> bool:
    """Whether a call should go through the op's registration and its torch.library autograd rather than the eager
    ``autograd.Function``: while tracing (see :func:`tracing`), and inside torch.func transforms, which take an
    ``autograd.Function`` only with a setup_context and a vmap rule (the registration's autograd runs under vmap;
    grad transforms refuse the kernel backends before)."""
    return tracing() or torch._C._are_functorch_transforms_active()


def eager_autograd() -> bool:
    """Whether a differentiable call should take the op's eager ``autograd.Function``: grad mode on and not
    :func:`use_registration`."""
    return torch.is_grad_enabled() and not use_registration()


def below_autograd(op, *args):
    """``op(*args)`` straight to its kernel, skipping the op's Autograd kernel: inside an ``autograd.Function``
    (whose own node records the gradient), or for a call that records no graph."""
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)

