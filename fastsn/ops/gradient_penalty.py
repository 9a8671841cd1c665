"""``fastsn.ops.gradient_penalty_head``: a gradient penalty from the input gradients, in one pass per sample.

From grad (B, N) (each sample's input gradient, flattened), each row gives its norm n_i, phi(n_i), and its row of
d penalty / d grad; the penalty is weight * mean_i phi(n_i). Modes: 0 two-sided (n - center)^2 (WGAN-GP, DRAGAN),
1 one-sided max(0, n - center)^2 (WGAN-LP), 2 squared n^2 (R1, R2; the caller folds StyleGAN2's 1/2 into weight).
The kernels return d penalty / d grad with the penalty, so the backward is one multiply by the incoming scalar; when
that backward must itself be differentiated (create_graph), it goes through the differentiable reference formula.
"""
from __future__ import annotations

import operator
from typing import Optional

import torch

from fastsn import _backend, _extension
from fastsn.ops._checks import check_floating, check_tensor, opmath_dtype
from fastsn.ops._eager import below_autograd, eager_autograd

OP = "fastsn::gradient_penalty_head"
MODES = {"wgan-gp": 0, "dragan": 0, "wgan-lp": 1, "r1": 2, "r2": 2}


def check_gradient_penalty_head_args(grad: torch.Tensor, mode: int, op: str = OP) -> None:
    """The checks of the C++ kernels, with the same messages."""
    check_tensor(grad, op, "grad")
    check_floating(grad, op, "grad")
    if grad.dim() != 2:
        raise RuntimeError(f"{op}(): argument 'grad' must be 2-D (batch, features), got shape {tuple(grad.shape)}")
    if grad.shape[0] == 0:
        raise RuntimeError(f"{op}(): argument 'grad' must hold at least one sample, got shape {tuple(grad.shape)}")
    check_mode(mode, op)


def check_mode(mode: object, op: str = OP) -> int:
    """``mode`` as an int, or the kernels' error for anything but 0, 1 or 2 (a float is not truncated)."""
    try:
        index = operator.index(mode)
    except TypeError:
        index = None
    if index not in (0, 1, 2):
        raise RuntimeError(f"{op}(): argument 'mode' must be 0, 1 or 2, got {mode!r}")
    return index


def _penalty_ref(grad: torch.Tensor, mode: int, weight: float, center: float) -> torch.Tensor:
    g = grad.to(opmath_dtype(grad.dtype))
    if mode == 2:
        phi = g.square().sum(dim=1)
    else:
        gap = g.norm(2, dim=1) - center
        phi = (gap.clamp(min=0) if mode == 1 else gap).square()
    return weight * phi.mean()


def _d_grad_ref(grad: torch.Tensor, mode: int, weight: float, center: float) -> torch.Tensor:
    """d penalty / d grad as a differentiable formula: weight / B * k_i * g_i, k = phi'(n) / n (0 at n = 0)."""
    g = grad.to(opmath_dtype(grad.dtype))
    if mode == 2:
        k = torch.full_like(g[:, :1], 2.0)
    else:
        n = g.square().sum(dim=1, keepdim=True).sqrt()
        gap = n - center
        if mode == 1:
            gap = gap.clamp(min=0)
        zero = n == 0  # (a NaN norm gives NaN, as autograd through the norm)
        k = torch.where(zero, torch.zeros_like(n), 2 * gap / torch.where(zero, torch.ones_like(n), n))
    return (weight / g.shape[0] * k * g).to(grad.dtype)


def gradient_penalty_head_ref(grad: torch.Tensor, mode: int, weight: float, center: float
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-PyTorch reference of the head.

    Args:
        grad: (B, N), B >= 1, float16/bfloat16/float32/float64.
        mode: 0 two-sided, 1 one-sided, 2 squared (see the module docstring).
        weight, center: the penalty's coefficient and target norm (center unused by mode 2).

    Returns:
        penalty () in float32 (float64 for float64 grad), and d penalty / d grad (B, N) in grad's dtype.
    """
    check_gradient_penalty_head_args(grad, mode)
    return _penalty_ref(grad, mode, weight, center), _d_grad_ref(grad, mode, weight, center)


def gradient_penalty_head(grad: torch.Tensor, mode: int, weight: float, center: float = 1.0, *,
                          backend: Optional[str] = None) -> torch.Tensor:
    """weight * mean_i phi(|grad_i|), fused: one pass per sample computes the norm, the penalty and its gradient.

    Args:
        grad: (B, N) per-sample input gradients, any strides, CPU or CUDA (typically with a graph to D's
            parameters: the penalty's backward flows through it).
        mode, weight, center: as :func:`gradient_penalty_head_ref`.
        backend: as :func:`fastsn.ops.build_info`.

    Returns:
        The penalty, a scalar (float32, or float64 for float64 grad), differentiable in grad (to any order).
    """
    check_tensor(grad, OP, "grad")
    mode = check_mode(mode)
    name = _backend.resolve("gradient_penalty", grad.device, backend)
    if name == "ref":
        check_gradient_penalty_head_args(grad, mode)  # the kernels check their own arguments
        return _penalty_ref(grad, mode, weight, center)
    op = torch.ops.fastsn.gradient_penalty_head_triton if name == "triton" else torch.ops.fastsn.gradient_penalty_head
    if grad.requires_grad and eager_autograd():
        penalty, _ = _HeadFunction.apply(grad, mode, float(weight), float(center), op)
    else:
        penalty, _ = op(grad, mode, float(weight), float(center))
    return penalty


# ---------------------------------------------------------------------------------------------------------------
# fake kernels and autograd (the schemas come with fastsn._C)
# ---------------------------------------------------------------------------------------------------------------

def _head_fake(grad, mode, weight, center):
    check_gradient_penalty_head_args(grad, mode)
    return (grad.new_empty((), dtype=opmath_dtype(grad.dtype)),
            torch.empty_like(grad, memory_format=torch.contiguous_format))


def _head_setup_context(ctx, inputs, output):
    grad, mode, weight, center = inputs
    ctx.save_for_backward(grad, output[1])
    ctx.mode, ctx.weight, ctx.center = mode, weight, center
    ctx.mark_non_differentiable(output[1])


def _head_backward(ctx, grad_penalty, _grad_d_grad):
    grad, d_grad = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: this backward must be differentiable in grad
        d_grad = _d_grad_ref(grad, ctx.mode, ctx.weight, ctx.center)
    return (grad_penalty * d_grad).to(grad.dtype), None, None, None


# The eager twin of the registered autograd below (see fastsn/ops/_eager.py).
class _HeadFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad, mode, weight, center, op):
        output = below_autograd(op, grad, mode, weight, center)
        _head_setup_context(ctx, (grad, mode, weight, center), output)
        return output

    @staticmethod
    def backward(ctx, grad_penalty, grad_d_grad):
        return (*_head_backward(ctx, grad_penalty, grad_d_grad), None)


for _name in ("gradient_penalty_head", "gradient_penalty_head_triton"):
    if _extension.op_defined(_name):
        torch.library.register_fake(f"fastsn::{_name}")(_head_fake)
        torch.library.register_autograd(f"fastsn::{_name}", _head_backward, setup_context=_head_setup_context)
