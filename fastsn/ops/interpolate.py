"""``fastsn.ops.interpolate``: the points of the WGAN-GP / WGAN-LP / DRAGAN penalties, x_i = eps_i * real_i +
(1 - eps_i) * fake_i with one factor eps_i ~ U[0, 1) per sample, drawn by the op, computed in one pass.

The backward is the op ``interpolate_backward(grad, eps)`` = (eps_i * grad_i, (1 - eps_i) * grad_i), one read of
grad and two writes; the backward of that op is ``interpolate`` itself (both are linear in their tensors), so every
order of gradient runs these kernels. eps may require grad too: d eps_i = sum over sample i of grad * (real - fake).
"""
from __future__ import annotations

from typing import Optional

import torch

from fastsn import _backend, _extension
from fastsn.ops._checks import check_floating, check_tensor, opmath_dtype
from fastsn.ops._eager import below_autograd, use_registration

OP = "fastsn::interpolate"


def _check_eps(eps: torch.Tensor, like: torch.Tensor, op: str, arg: str) -> None:
    check_tensor(eps, op, "eps")
    check_floating(eps, op, "eps")
    if eps.dim() != 1 or eps.shape[0] != like.shape[0]:
        raise RuntimeError(f"{op}(): argument 'eps' must have shape ({like.shape[0]},) (one factor per sample of "
                           f"'{arg}'), got {tuple(eps.shape)}")
    if eps.device != like.device:
        raise RuntimeError(f"{op}(): argument 'eps' must be on the device of '{arg}' ({like.device}), got "
                           f"{eps.device}")


def check_interpolate_args(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor, op: str = OP) -> None:
    """The checks of the C++ kernels, with the same messages."""
    check_tensor(real, op, "real")
    check_tensor(fake, op, "fake")
    check_floating(real, op, "real")
    if real.dim() < 1:
        raise RuntimeError(f"{op}(): argument 'real' must have a batch dimension, got a 0-d tensor")
    if fake.shape != real.shape:
        raise RuntimeError(f"{op}(): argument 'fake' must have the shape of 'real' ({tuple(real.shape)}), got "
                           f"{tuple(fake.shape)}")
    if fake.dtype != real.dtype:
        raise RuntimeError(f"{op}(): argument 'fake' must have the dtype of 'real' ({real.dtype}), got {fake.dtype}")
    if fake.device != real.device:
        raise RuntimeError(f"{op}(): argument 'fake' must be on the device of 'real' ({real.device}), got "
                           f"{fake.device}")
    _check_eps(eps, real, op, "real")


def check_interpolate_backward_args(grad: torch.Tensor, eps: torch.Tensor,
                                    op: str = "fastsn::interpolate_backward") -> None:
    """The checks of the C++ backward kernels, with the same messages."""
    check_tensor(grad, op, "grad")
    check_floating(grad, op, "grad")
    if grad.dim() < 1:
        raise RuntimeError(f"{op}(): argument 'grad' must have a batch dimension, got a 0-d tensor")
    _check_eps(eps, grad, op, "grad")


def _per_sample(eps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """eps (B,) in like's accumulation dtype, shaped (B, 1, ..., 1) to broadcast over like."""
    return eps.to(opmath_dtype(like.dtype)).view((-1,) + (1,) * (like.dim() - 1))


def interpolate_ref(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch reference of :func:`interpolate` with given factors (differentiable to any order by autograd).

    Args:
        real, fake: (B, ...), one shape, dtype and device. eps: (B,), floating.

    Returns:
        eps_i * real_i + (1 - eps_i) * fake_i, real's shape and dtype (computed in float32 for float16/bfloat16).
    """
    check_interpolate_args(real, fake, eps)
    e = _per_sample(eps, real)
    opmath = opmath_dtype(real.dtype)
    return (e * real.to(opmath) + (1 - e) * fake.to(opmath)).to(real.dtype)


def interpolate_backward_ref(grad: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-PyTorch reference of the backward: (eps_i * grad_i, (1 - eps_i) * grad_i), grad's shape and dtype."""
    check_interpolate_backward_args(grad, eps)
    e = _per_sample(eps, grad)
    g = grad.to(e.dtype)
    return (e * g).to(grad.dtype), ((1 - e) * g).to(grad.dtype)


def draw_eps(like: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One factor per sample of ``like``, U[0, 1), in its accumulation dtype: the numbers of
    ``torch.rand(B, generator=generator, device=like.device, dtype=float32)`` (float64 for float64 ``like``)."""
    return torch.rand(like.shape[0], generator=generator, device=like.device, dtype=opmath_dtype(like.dtype))


def _kernel(name: str, backend: str):
    return getattr(torch.ops.fastsn, f"{name}_triton" if backend == "triton" else name)


def interpolate(real: torch.Tensor, fake: torch.Tensor, eps: Optional[torch.Tensor] = None, *,
                generator: Optional[torch.Generator] = None, backend: Optional[str] = None) -> torch.Tensor:
    """x_i = eps_i * real_i + (1 - eps_i) * fake_i, one factor per sample, fused into one pass.

    Args:
        real, fake: (B, ...), one shape, dtype (float16/bfloat16/float32/float64) and device; any strides.
        eps: (B,) factors; None draws them, U[0, 1), by :func:`draw_eps` (float32, float64 for float64 inputs).
        generator: the ``torch.Generator`` (on the inputs' device) that draws eps, for reproducible runs.
        backend: as :func:`fastsn.ops.build_info`.

    Returns:
        x, real's shape and dtype, contiguous; differentiable in real, fake and eps, to any order.
    """
    check_tensor(real, OP, "real")
    check_tensor(fake, OP, "fake")
    if eps is None:
        eps = draw_eps(real, generator)
    check_tensor(eps, OP, "eps")
    name = _backend.resolve("interpolate", real.device, backend)
    if name == "ref":
        return interpolate_ref(real, fake, eps)
    op = _kernel("interpolate", name)
    if use_registration() or (torch.is_grad_enabled() and (
            real.requires_grad or fake.requires_grad or eps.requires_grad)):
        return op(real, fake, eps)  # through the registered autograd
    # no graph to record (a penalty detaches real and fake): straight to the kernel, without the ~8 us of Python
    # the registered autograd kernel spends only to pass the call on
    return below_autograd(op, real, fake, eps)


# ---------------------------------------------------------------------------------------------------------------
# fake kernels and autograd (the schemas come with fastsn._C)
# ---------------------------------------------------------------------------------------------------------------

def _forward_fake(real, fake, eps):
    check_interpolate_args(real, fake, eps)
    return torch.empty_like(real, memory_format=torch.contiguous_format)


def _backward_fake(grad, eps):
    check_interpolate_backward_args(grad, eps)
    return (torch.empty_like(grad, memory_format=torch.contiguous_format),
            torch.empty_like(grad, memory_format=torch.contiguous_format))


def _eps_grad(grad: torch.Tensor, first: torch.Tensor, second: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """d eps_i of a term eps_i * first_i + (1 - eps_i) * second_i receiving grad: sum_i grad * (first - second)."""
    opmath = opmath_dtype(grad.dtype)
    terms = grad.to(opmath) * (first.to(opmath) - second.to(opmath))  # (B, ...)
    return (terms.sum(dim=list(range(1, terms.dim()))) if terms.dim() > 1 else terms).to(eps.dtype)


def _forward_setup_context(ctx, inputs, output):
    real, fake, eps = inputs
    ctx.save_for_backward(eps, *((real, fake) if ctx.needs_input_grad[2] else ()))


def _make_forward_backward(suffix: str):
    def backward(ctx, grad):
        eps = ctx.saved_tensors[0]
        grad_real, grad_fake = getattr(torch.ops.fastsn, "interpolate_backward" + suffix)(grad, eps)
        grad_eps = _eps_grad(grad, *ctx.saved_tensors[1:], eps) if ctx.needs_input_grad[2] else None
        return grad_real, grad_fake, grad_eps
    return backward


def _backward_setup_context(ctx, inputs, output):
    grad, eps = inputs
    ctx.save_for_backward(eps, *((grad,) if ctx.needs_input_grad[1] else ()))


def _make_backward_backward(suffix: str):
    def backward(ctx, grad_of_grad_real, grad_of_grad_fake):
        # (grad_real, grad_fake) = (eps * grad, (1 - eps) * grad): d grad = eps * a + (1 - eps) * b, an interpolate
        eps = ctx.saved_tensors[0]
        grad = ctx.saved_tensors[1] if ctx.needs_input_grad[1] else None
        like = grad_of_grad_real if grad_of_grad_real is not None else grad_of_grad_fake
        grad_of_grad_real = torch.zeros_like(like) if grad_of_grad_real is None else grad_of_grad_real
        grad_of_grad_fake = torch.zeros_like(like) if grad_of_grad_fake is None else grad_of_grad_fake
        d_grad = getattr(torch.ops.fastsn, "interpolate" + suffix)(grad_of_grad_real, grad_of_grad_fake, eps)
        d_eps = None
        if grad is not None:
            d_eps = _eps_grad(grad, grad_of_grad_real, grad_of_grad_fake, eps)
        return d_grad, d_eps
    return backward


for _suffix in ("", "_triton"):
    if _extension.op_defined("interpolate" + _suffix):
        torch.library.register_fake("fastsn::interpolate" + _suffix)(_forward_fake)
        torch.library.register_fake("fastsn::interpolate_backward" + _suffix)(_backward_fake)
        torch.library.register_autograd("fastsn::interpolate" + _suffix, _make_forward_backward(_suffix),
                                        setup_context=_forward_setup_context)
        torch.library.register_autograd("fastsn::interpolate_backward" + _suffix, _make_backward_backward(_suffix),
                                        setup_context=_backward_setup_context)
