"""``fastsn.ops.bias_leaky_relu``: y = leaky_relu(x + bias, negative_slope) * gain, bias broadcast along ``dim``.

The common discriminator activation, fused, with gradients of every order as kernels: the backward is the op
``bias_leaky_relu_backward(grad, y)`` = grad * gain * (y > 0 ? 1 : negative_slope), and the backward of that op
is the same op applied to the incoming gradient (the mask is piecewise constant, so y gets no gradient). A gradient
penalty's double backward through a discriminator therefore runs these kernels, not a chain of PyTorch ops (the
pattern of NVlabs StyleGAN2-ADA's ``bias_act``). The gradient of ``bias`` is dx summed over every other dimension.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from fastsn import _backend, _extension
from fastsn.ops._checks import check_floating, check_tensor, opmath_dtype
from fastsn.ops._eager import below_autograd, use_registration
from fastsn.ops._zero_fill import zero_fill_leaves_below

OP = "fastsn::bias_leaky_relu"


def check_slope_and_gain(negative_slope: float, gain: float, op: str = OP) -> None:
    """negative_slope >= 0 and gain > 0: the gradient reads the mask from y, so y > 0 must mean x + bias > 0."""
    if not negative_slope >= 0:
        raise RuntimeError(f"{op}(): argument 'negative_slope' must be non-negative (the gradient reads the mask "
                           f"from y), got {negative_slope}")
    if not gain > 0:
        raise RuntimeError(f"{op}(): argument 'gain' must be positive, got {gain}")


def check_bias_leaky_relu_args(x: torch.Tensor, bias: Optional[torch.Tensor], dim: int, negative_slope: float,
                               gain: float, op: str = OP, name: str = "x") -> int:
    """The checks of the C++ kernels (same messages); returns ``dim`` made non-negative."""
    check_tensor(x, op, name)
    check_floating(x, op, name)
    check_slope_and_gain(negative_slope, gain, op)
    if bias is None:
        return dim
    check_tensor(bias, op, "bias")
    if x.dim() < 1:
        raise RuntimeError(f"{op}(): argument 'x' must have at least 1 dimension when 'bias' is given")
    if not -x.dim() <= dim < x.dim():
        raise RuntimeError(f"{op}(): argument 'dim' must be in [{-x.dim()}, {x.dim() - 1}], got {dim}")
    dim = dim % x.dim()
    if bias.dim() != 1 or bias.numel() != x.shape[dim]:
        raise RuntimeError(f"{op}(): argument 'bias' must have shape ({x.shape[dim]},) (x.shape[dim]), got "
                           f"{tuple(bias.shape)}")
    if bias.dtype != x.dtype:
        raise RuntimeError(f"{op}(): argument 'bias' must have the dtype of 'x' ({x.dtype}), got {bias.dtype}")
    if bias.device != x.device:
        raise RuntimeError(f"{op}(): argument 'bias' must be on the device of 'x' ({x.device})")
    return dim


def elementwise_format(t: torch.Tensor) -> torch.memory_format:
    """The layout an elementwise pass keeps (the C++ elementwise_format): a dense channels-last (4-D) or
    channels-last-3d (5-D) tensor stays so, as with torch's elementwise ops; anything else becomes contiguous."""
    if t.is_contiguous():
        return torch.contiguous_format
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def forward_format(x: torch.Tensor, has_bias: bool, dim: int) -> torch.memory_format:
    """The forward's layout (the C++ forward_format): x's without a bias (a flat pass) or with a bias along dim 1
    (channels last: the channel of flat index i is i % C); else contiguous."""
    layout = elementwise_format(x)
    return layout if not has_bias or dim == 1 else torch.contiguous_format


def backward_format(grad: torch.Tensor, y: torch.Tensor) -> torch.memory_format:
    """The backward's layout: grad's where y has it too, else contiguous."""
    layout = elementwise_format(grad)
    return layout if y.is_contiguous(memory_format=layout) else torch.contiguous_format


def bias_leaky_relu_ref(x: torch.Tensor, bias: Optional[torch.Tensor] = None, negative_slope: float = 0.2,
                        gain: float = 1.0, dim: int = 1) -> torch.Tensor:
    """Pure-PyTorch reference of :func:`bias_leaky_relu` (differentiable to any order by autograd).

    Args:
        x: any shape; bias: (x.shape[dim],) or None; negative_slope: >= 0, the slope for x + bias <= 0; gain: > 0.

    Returns:
        y, x's shape and dtype (computed in float32 for float16/bfloat16).
    """
    dim = check_bias_leaky_relu_args(x, bias, dim, negative_slope, gain)
    opmath = opmath_dtype(x.dtype)
    v = x.to(opmath)
    if bias is not None:
        shape = [1] * x.dim()
        shape[dim] = -1
        v = v + bias.to(opmath).view(shape)
    return (F.leaky_relu(v, negative_slope) * gain).to(x.dtype)


def bias_leaky_relu_backward_ref(grad: torch.Tensor, y: torch.Tensor, negative_slope: float = 0.2,
                                 gain: float = 1.0) -> torch.Tensor:
    """Pure-PyTorch reference of the backward: grad * gain * where(y > 0, 1, negative_slope), y's shape."""
    opmath = opmath_dtype(grad.dtype)
    scale = torch.where(y > 0, gain, gain * negative_slope).to(opmath)
    return (grad.to(opmath) * scale).to(grad.dtype)


def _backend_suffix(backend: str) -> str:
    return "_triton" if backend == "triton" else ""


def _kernel(name: str, backend: str):
    return getattr(torch.ops.fastsn, name + _backend_suffix(backend))


def bias_leaky_relu(x: torch.Tensor, bias: Optional[torch.Tensor] = None, negative_slope: float = 0.2,
                    gain: float = 1.0, dim: int = 1, *, backend: Optional[str] = None) -> torch.Tensor:
    """y = leaky_relu(x + bias (broadcast along ``dim``), negative_slope) * gain, fused, with fused gradients of
    every order.

    Args:
        x: (..., C at ``dim``, ...), float16/bfloat16/float32/float64, any strides, CPU or CUDA.
        bias: (C,) of x's dtype and device, or None.
        negative_slope: the slope where x + bias <= 0 (torch's leaky_relu convention at 0); non-negative, since the
            gradient reads the mask from y.
        gain: a positive scale applied after the activation (StyleGAN2 uses sqrt(2)).
        dim: the dimension ``bias`` runs along (negative counts from the end).
        backend: as :func:`fastsn.ops.build_info`.

    Returns:
        y, x's shape and dtype, contiguous, or channels-last where x is so (without a bias, or with one along
        dim 1), as torch's elementwise ops keep it; differentiable in x and bias, to any order.
    """
    dim = check_bias_leaky_relu_args(x, bias, dim, negative_slope, gain)
    name = _backend.resolve("bias_leaky_relu", x.device, backend)
    if name == "ref":
        return bias_leaky_relu_ref(x, bias, negative_slope, gain, dim)
    args = (x, bias, dim, float(negative_slope), float(gain))
    if use_registration():  # traced, or in a torch.func transform: the registered op and its autograd
        return _kernel("bias_leaky_relu", name)(*args)
    if torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad)):
        return _ForwardFunction.apply(*args, _backend_suffix(name))
    return below_autograd(_kernel("bias_leaky_relu", name), *args)  # no graph: straight to the kernel


# ---------------------------------------------------------------------------------------------------------------
# fake kernels and autograd (the schemas come with fastsn._C)
# ---------------------------------------------------------------------------------------------------------------

def _forward_fake(x, bias, dim, negative_slope, gain):
    dim = check_bias_leaky_relu_args(x, bias, dim, negative_slope, gain)
    return torch.empty_like(x, memory_format=forward_format(x, bias is not None, dim))


def _backward_fake(grad, y, negative_slope, gain):
    return torch.empty_like(grad, memory_format=backward_format(grad, y))


def _forward_setup_context(ctx, inputs, output):
    x, bias, dim, negative_slope, gain = inputs
    # The gradient's mask, y > 0, is x > 0 without a bias (negative_slope >= 0, gain > 0): then x is saved, as
    # torch's leaky_relu saves its input, so that an in-place op on y afterwards (a Dropout(inplace=True), h += skip)
    # works as with torch. With a bias, x + bias exists only as y (as in StyleGAN2's fused op).
    ctx.save_for_backward(x if bias is None else output)
    ctx.fastsn_activation = True  # (told apart from other nodes by _backward_grad)
    # An absent gradient stays None instead of becoming zeros, which would run every layer below (see
    # fastsn/ops/_zero_fill.py): a gradient penalty's second backward reaches here only through a saved y.
    ctx.set_materialize_grads(False)
    ctx.dim, ctx.negative_slope, ctx.gain, ctx.has_bias = dim, negative_slope, gain, bias is not None


def _backward_call(grad: torch.Tensor, y: torch.Tensor, negative_slope: float, gain: float, suffix: str):
    """bias_leaky_relu_backward(grad, y). In eager mode: through its autograd.Function when it may be
    differentiated again (create_graph=True), else straight to the kernel (the registered autograd kernel would
    only pass the call on, after about 5 us of Python; a penalty's second backward makes one per activation)."""
    op = getattr(torch.ops.fastsn, "bias_leaky_relu_backward" + suffix)
    if use_registration():
        return op(grad, y, negative_slope, gain)
    if torch.is_grad_enabled() and (grad.requires_grad or y.requires_grad):
        return _BackwardFunction.apply(grad, y, negative_slope, gain, suffix)
    return below_autograd(op, grad, y, negative_slope, gain)


def _forward_grads(ctx, grad: Optional[torch.Tensor], suffix: str):
    if grad is None:
        if getattr(ctx, "y_pruned_in", None) != torch._C._current_graph_task_id():
            return None, None  # no gradient came: torch's activation sends nothing down either
        # a gradient penalty's second backward, where torch's activation would send zeros down through y: the
        # leaves below end the pass with zeros, as torch leaves them, without a backward of each layer
        send_zeros = zero_fill_leaves_below(ctx)
        (y,) = ctx.saved_tensors
        zero_bias = y.new_zeros(y.shape[ctx.dim]) if ctx.has_bias and ctx.needs_input_grad[1] else None
        # under autograd.grad() asking for a gradient below, the zero itself goes down, as with torch
        return (torch.zeros_like(y) if send_zeros else None), zero_bias
    (mask,) = ctx.saved_tensors  # x or y: their signs agree
    dx = _backward_call(grad, mask, ctx.negative_slope, ctx.gain, suffix)
    dbias = None
    if ctx.has_bias and ctx.needs_input_grad[1]:
        others = [d for d in range(dx.dim()) if d != ctx.dim]
        dbias = dx.sum(dim=others) if others else dx  # (sum over no dims would sum over all: a 1-D x)
    return dx, dbias


def _make_forward_backward(suffix: str):
    def backward(ctx, grad):
        return (*_forward_grads(ctx, grad, suffix), None, None, None)
    return backward


def _backward_setup_context(ctx, inputs, output):
    grad, y, negative_slope, gain = inputs
    ctx.save_for_backward(y)
    ctx.negative_slope, ctx.gain = negative_slope, gain
    ctx.set_materialize_grads(False)


def _backward_grad(ctx, grad_of_dx: Optional[torch.Tensor], suffix: str
                   ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The gradients of bias_leaky_relu_backward(grad, mask) for grad and mask (mask: the forward's x or y)."""
    if grad_of_dx is None:
        return None, None
    (mask,) = ctx.saved_tensors
    # dx is linear in grad with the same mask; the mask does not change almost everywhere: its gradient is zero,
    # which torch sends down as a tensor. fastsn sends none, and the leaves below end the pass with zeros
    # (fastsn/ops/_zero_fill.py): through the forward's node when the mask is its y (told here that y's zero was not
    # sent, see _forward_grads), else from here
    d_mask = None
    if getattr(mask.grad_fn, "fastsn_activation", False):
        mask.grad_fn.y_pruned_in = torch._C._current_graph_task_id()
    elif ctx.needs_input_grad[1] and zero_fill_leaves_below(ctx, 1):
        d_mask = torch.zeros_like(mask)
    return _backward_call(grad_of_dx, mask, ctx.negative_slope, ctx.gain, suffix), d_mask


def _make_backward_backward(suffix: str):
    def backward(ctx, grad_of_dx):
        return *_backward_grad(ctx, grad_of_dx, suffix), None, None
    return backward


# The eager twins of the registered autograd below (see fastsn/ops/_eager.py).
class _ForwardFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, dim, negative_slope, gain, suffix):
        y = below_autograd(getattr(torch.ops.fastsn, "bias_leaky_relu" + suffix), x, bias, dim, negative_slope, gain)
        _forward_setup_context(ctx, (x, bias, dim, negative_slope, gain), y)
        ctx.suffix = suffix
        return y

    @staticmethod
    def backward(ctx, grad):
        return (*_forward_grads(ctx, grad, ctx.suffix), None, None, None, None)


class _BackwardFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad, y, negative_slope, gain, suffix):
        dx = below_autograd(getattr(torch.ops.fastsn, "bias_leaky_relu_backward" + suffix), grad, y, negative_slope,
                            gain)
        _backward_setup_context(ctx, (grad, y, negative_slope, gain), dx)
        ctx.suffix = suffix
        return dx

    @staticmethod
    def backward(ctx, grad_of_dx):
        return *_backward_grad(ctx, grad_of_dx, ctx.suffix), None, None, None


for _suffix in ("", "_triton"):
    if _extension.op_defined("bias_leaky_relu" + _suffix):
        torch.library.register_fake("fastsn::bias_leaky_relu" + _suffix)(_forward_fake)
        torch.library.register_fake("fastsn::bias_leaky_relu_backward" + _suffix)(_backward_fake)
        torch.library.register_autograd("fastsn::bias_leaky_relu" + _suffix,
                                        _make_forward_backward(_suffix),
                                        setup_context=_forward_setup_context)
        torch.library.register_autograd("fastsn::bias_leaky_relu_backward" + _suffix,
                                        _make_backward_backward(_suffix),
                                        setup_context=_backward_setup_context)
