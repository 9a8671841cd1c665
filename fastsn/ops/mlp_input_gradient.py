"""``fastsn.ops.mlp_input_gradient``: the input gradient of a leaky-ReLU MLP discriminator's scores, fused.

The network, L >= 1 linear layers (0-based l; H_0 = x's features, H_L = 1):

    h_0 = x (B, H_0);  z_l = h_l W_l^T + b_l,  h_{l+1} = gain_l * leaky_relu(z_l, negative_slope_l)  (l < L - 1);
    D(x) = h_{L-1} W_{L-1}^T + b_{L-1}  (B, 1)

The op returns g = d sum_i D(x_i) / dx (B, H_0), the gradient a gradient penalty takes, by the backward chain

    d_{L-1} = 1 w_{L-1} (B, H_{L-1});  delta_l = d_{l+1} * m_l,  d_l = delta_l W_l;  g = d_0,
    m_l = where(z_l > 0, gain_l, gain_l * negative_slope_l)   (torch's leaky_relu gradient: the slope at 0)

and, for its backward, each hidden layer's delta_l (B, H_{l+1}) and sign mask z_l > 0 (bool). The last bias does
not change g and is not an argument. The backward is an op: from the gradient G (B, H_0) of g,

    a_0 = G;  dW_l = delta_l^T a_l,  a_{l+1} = (a_l W_l^T) * m_l  (l < L - 1);  dW_{L-1} = 1^T a_{L-1}

with 2 (L - 1) products of a hidden layer's size, where autograd's double backward of the same network runs
another backward of every layer on the zeros that each leaky ReLU sends down for its mask (the masks are piecewise
constant: x and the biases get zero gradients, as with torch). Its own gradient is a differentiable PyTorch formula.
``fastsn.gradient_penalty`` takes this op for a discriminator it recognizes as such an MLP.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from fastsn import _backend, _extension
from fastsn.ops._checks import check_floating, check_tensor, opmath_dtype
from fastsn.ops._eager import below_autograd, use_registration

OP = "fastsn::mlp_input_gradient"
BACKWARD_OP = "fastsn::mlp_input_gradient_backward"


def _check_same(t: torch.Tensor, like: torch.Tensor, op: str, arg: str, like_name: str) -> None:
    if t.dtype != like.dtype:
        raise RuntimeError(f"{op}(): argument '{arg}' must have the dtype of '{like_name}' ({like.dtype}), got "
                           f"{t.dtype}")
    if t.device != like.device:
        raise RuntimeError(f"{op}(): argument '{arg}' must be on the device of '{like_name}' ({like.device}), got "
                           f"{t.device}")


def _check_batch(t: torch.Tensor, op: str, arg: str) -> None:
    """A floating-point (batch, features) tensor."""
    check_tensor(t, op, arg)
    check_floating(t, op, arg)
    if t.dim() != 2:
        raise RuntimeError(f"{op}(): argument '{arg}' must be 2-D (batch, features), got shape {tuple(t.shape)}")


def _check_layers(op: str, features: int, like: torch.Tensor, like_name: str, weights: Sequence[torch.Tensor],
                  negative_slopes: Sequence[float], gains: Sequence[float]) -> None:
    if len(weights) < 1:
        raise RuntimeError(f"{op}(): argument 'weights' must hold at least one layer")
    size = features
    for l, w in enumerate(weights):
        check_tensor(w, op, f"weights[{l}]")
        if w.dim() != 2:
            raise RuntimeError(f"{op}(): argument 'weights[{l}]' must be 2-D (out_features, in_features), got shape "
                               f"{tuple(w.shape)}")
        if w.shape[1] != size:
            source = "x's features" if l == 0 else "the previous layer's outputs"
            raise RuntimeError(f"{op}(): argument 'weights[{l}]' must have {size} input features ({source}), got "
                               f"shape {tuple(w.shape)}")
        _check_same(w, like, op, f"weights[{l}]", like_name)
        size = w.shape[0]
    if size != 1:
        raise RuntimeError(f"{op}(): argument 'weights[{len(weights) - 1}]' must have 1 output feature (one score per "
                           f"sample), got shape {tuple(weights[-1].shape)}")
    hidden = len(weights) - 1
    if len(negative_slopes) != hidden:
        raise RuntimeError(f"{op}(): argument 'negative_slopes' must hold one slope per hidden layer ({hidden}), got "
                           f"{len(negative_slopes)}")
    if len(gains) != hidden:
        raise RuntimeError(f"{op}(): argument 'gains' must hold one gain per hidden layer ({hidden}), got {len(gains)}")


def check_mlp_input_gradient_args(x: torch.Tensor, weights: Sequence[torch.Tensor],
                                  biases: Sequence[Optional[torch.Tensor]], negative_slopes: Sequence[float],
                                  gains: Sequence[float], op: str = OP) -> None:
    """The checks of the C++ kernels (csrc/common/mlp_input_gradient.h), with the same messages."""
    _check_batch(x, op, "x")
    _check_layers(op, x.shape[1], x, "x", weights, negative_slopes, gains)
    hidden = len(weights) - 1
    if len(biases) != hidden:
        raise RuntimeError(f"{op}(): argument 'biases' must hold one entry (a tensor or None) per hidden layer "
                           f"({hidden}), got {len(biases)}")
    for l, b in enumerate(biases):
        if b is None:
            continue
        check_tensor(b, op, f"biases[{l}]")
        if b.dim() != 1 or b.shape[0] != weights[l].shape[0]:
            raise RuntimeError(f"{op}(): argument 'biases[{l}]' must have shape ({weights[l].shape[0]},), got "
                               f"{tuple(b.shape)}")
        _check_same(b, x, op, f"biases[{l}]", "x")


def check_mlp_input_gradient_backward_args(grad: torch.Tensor, weights: Sequence[torch.Tensor],
                                           deltas: Sequence[torch.Tensor], positive: Sequence[torch.Tensor],
                                           negative_slopes: Sequence[float], gains: Sequence[float],
                                           op: str = BACKWARD_OP) -> None:
    """The checks of the C++ backward kernels, with the same messages."""
    _check_batch(grad, op, "grad")
    _check_layers(op, grad.shape[1], grad, "grad", weights, negative_slopes, gains)
    hidden = len(weights) - 1
    if len(deltas) != hidden or len(positive) != hidden:
        raise RuntimeError(f"{op}(): arguments 'deltas' and 'positive' must hold one tensor per hidden layer "
                           f"({hidden}), got {len(deltas)} and {len(positive)}")
    for l in range(hidden):
        shape = (grad.shape[0], weights[l].shape[0])
        check_tensor(deltas[l], op, f"deltas[{l}]")
        check_tensor(positive[l], op, f"positive[{l}]")
        if tuple(deltas[l].shape) != shape:
            raise RuntimeError(f"{op}(): argument 'deltas[{l}]' must have shape {list(shape)}, got "
                               f"{list(deltas[l].shape)}")
        _check_same(deltas[l], grad, op, f"deltas[{l}]", "grad")
        if tuple(positive[l].shape) != shape:
            raise RuntimeError(f"{op}(): argument 'positive[{l}]' must have shape {list(shape)}, got "
                               f"{list(positive[l].shape)}")
        if positive[l].dtype != torch.bool:
            raise RuntimeError(f"{op}(): argument 'positive[{l}]' must be bool, got {positive[l].dtype}")
        if positive[l].device != grad.device:
            raise RuntimeError(f"{op}(): argument 'positive[{l}]' must be on the device of 'grad' ({grad.device}), "
                               f"got {positive[l].device}")


# ---------------------------------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------------------------------

def _mask(positive: torch.Tensor, negative_slope: float, gain: float, dtype: torch.dtype) -> torch.Tensor:
    """m = where(z > 0, gain, gain * negative_slope) (B, H) in ``dtype``, from the sign mask z > 0."""
    return torch.where(positive, torch.tensor(gain, dtype=dtype, device=positive.device),
                       torch.tensor(gain * negative_slope, dtype=dtype, device=positive.device))


def mlp_input_gradient_ref(x: torch.Tensor, weights: Sequence[torch.Tensor],
                           biases: Optional[Sequence[Optional[torch.Tensor]]] = None,
                           negative_slopes: Optional[Sequence[float]] = None,
                           gains: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Pure-PyTorch reference of :func:`mlp_input_gradient`: the network run with ``F.linear`` and
    ``F.leaky_relu`` and differentiated by ``torch.autograd.grad(create_graph=True)``, as a gradient penalty
    written in plain PyTorch does (in float32 for float16/bfloat16), so differentiable to any order.

    Args: as :func:`mlp_input_gradient`.

    Returns:
        g (B, H_0), x's dtype.
    """
    biases, negative_slopes, gains = _defaults(weights, biases, negative_slopes, gains)
    check_mlp_input_gradient_args(x, weights, biases, negative_slopes, gains, op=OP + "_ref")
    opmath = opmath_dtype(x.dtype)
    graph = torch.is_grad_enabled()
    with torch.enable_grad():
        # the gradient is taken at x: a copy that requires grad stands for an x that does not
        point = x if x.requires_grad else x.detach().requires_grad_(True)
        h = point.to(opmath)
        for w, b, slope, gain in zip(weights, biases, negative_slopes, gains):
            h = F.leaky_relu(F.linear(h, w.to(opmath), None if b is None else b.to(opmath)), slope) * gain
        score = F.linear(h, weights[-1].to(opmath))
        (g,) = torch.autograd.grad(score.sum(), point, create_graph=graph)
    return g.to(x.dtype)


def mlp_input_gradient_parts_ref(x: torch.Tensor, weights: Sequence[torch.Tensor],
                                 biases: Sequence[Optional[torch.Tensor]], negative_slopes: Sequence[float],
                                 gains: Sequence[float]) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """What the kernels return, by the chain of the module docstring in torch ops (float32 for float16/bfloat16).

    Returns:
        g (B, H_0), deltas [(B, H_{l+1}) for each hidden layer l], positive [bool (B, H_{l+1})].
    """
    check_mlp_input_gradient_args(x, weights, biases, negative_slopes, gains, op=OP + "_ref")
    opmath = opmath_dtype(x.dtype)
    h, positive = x.to(opmath), []
    for w, b, slope, gain in zip(weights, biases, negative_slopes, gains):
        z = F.linear(h, w.to(opmath), None if b is None else b.to(opmath))
        positive.append(z > 0)
        h = z * _mask(positive[-1], slope, gain, opmath)
    g, deltas = _backward_chain(x.shape[0], weights, positive, negative_slopes, gains, opmath)
    return g.to(x.dtype), [d.to(x.dtype) for d in deltas], positive


def _backward_chain(batch: int, weights: Sequence[torch.Tensor], positive: Sequence[torch.Tensor],
                    negative_slopes: Sequence[float], gains: Sequence[float], dtype: torch.dtype
                    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """g and the deltas from the weights and sign masks, in ``dtype``: differentiable in the weights."""
    d = weights[-1].to(dtype).expand(batch, -1)
    deltas = [None] * (len(weights) - 1)
    for l in range(len(weights) - 2, -1, -1):
        deltas[l] = d * _mask(positive[l], negative_slopes[l], gains[l], dtype)
        d = deltas[l] @ weights[l].to(dtype)
    return d, deltas


def mlp_input_gradient_backward_ref(grad: torch.Tensor, weights: Sequence[torch.Tensor],
                                    deltas: Sequence[torch.Tensor], positive: Sequence[torch.Tensor],
                                    negative_slopes: Sequence[float], gains: Sequence[float]) -> list[torch.Tensor]:
    """Pure-PyTorch reference of the backward (float32 for float16/bfloat16): differentiable in grad, the weights
    and the deltas.

    Returns:
        [dW_l, the shape of weights[l]], grad's dtype.
    """
    check_mlp_input_gradient_backward_args(grad, weights, deltas, positive, negative_slopes, gains,
                                           op=BACKWARD_OP + "_ref")
    opmath = opmath_dtype(grad.dtype)
    a, dws = grad.to(opmath), []
    for l in range(len(weights) - 1):
        dws.append(deltas[l].to(opmath).t() @ a)
        a = (a @ weights[l].to(opmath).t()) * _mask(positive[l], negative_slopes[l], gains[l], opmath)
    dws.append(a.sum(0, keepdim=True))
    return [dw.to(grad.dtype) for dw in dws]


def mlp_input_gradient_backward_backward(grad: torch.Tensor, weights: Sequence[torch.Tensor],
                                          positive: Sequence[torch.Tensor], negative_slopes: Sequence[float],
                                          gains: Sequence[float], cotangents: Sequence[Optional[torch.Tensor]]
                                          ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The gradient of S = sum_l <C_l, dW_l> (dW_l: the backward of ``grad``, C_l: ``cotangents``, None for zero)
    for grad and the weights, the masks held constant; PyTorch ops (float32 for float16/bfloat16), differentiable.

    With a_l and delta_l of the module docstring, <C_l, delta_l^T a_l> = <delta_l C_l, a_l> = <a_l C_l^T, delta_l>.
    Back through the a chain, from abar_{L-1} = 1 C_{L-1}: abar_l = delta_l C_l + (abar_{l+1} * m_l) W_l, and W_l
    gets (abar_{l+1} * m_l)^T a_l; dgrad = abar_0. Forward through the delta chain, from deltabar_0 = a_0 C_0^T: the
    gradient of d_{l+1} is dbar_{l+1} = deltabar_l * m_l, W_{l+1} gets delta_{l+1}^T dbar_{l+1}, deltabar_{l+1} =
    a_{l+1} C_{l+1}^T + dbar_{l+1} W_{l+1}^T; d_{L-1} = 1 w_{L-1} gives W_{L-1} the column sums of dbar_{L-1}.

    Returns:
        (dgrad (B, H_0), [dW_l]) in grad's dtype.
    """
    opmath = opmath_dtype(grad.dtype)
    layers, hidden = len(weights), len(weights) - 1
    w = [t.to(opmath) for t in weights]
    c = [None if t is None else t.to(opmath) for t in cotangents]
    masks = [_mask(positive[l], negative_slopes[l], gains[l], opmath) for l in range(hidden)]
    a = [grad.to(opmath)]
    for l in range(hidden):
        a.append((a[l] @ w[l].t()) * masks[l])
    _, deltas = _backward_chain(grad.shape[0], w, positive, negative_slopes, gains, opmath)
    wbar: list[Optional[torch.Tensor]] = [None] * layers

    def add(k: int, term: torch.Tensor) -> None:
        wbar[k] = term if wbar[k] is None else wbar[k] + term

    # the a chain, back from the last layer
    abar = None if c[hidden] is None else c[hidden].expand(grad.shape[0], -1)  # (B, H_{L-1})
    for l in range(hidden - 1, -1, -1):
        new = None if c[l] is None else deltas[l] @ c[l]  # (B, H_l)
        if abar is not None:
            up = abar * masks[l]  # (B, H_{l+1})
            add(l, up.t() @ a[l])
            new = up @ w[l] if new is None else new + up @ w[l]
        abar = new
    dgrad = torch.zeros_like(a[0]) if abar is None else abar
    # the delta chain, forward from delta_0
    dbar = None  # the gradient of d_l = delta_l W_l, l >= 1
    for l in range(hidden):
        deltabar = None if c[l] is None else a[l] @ c[l].t()  # (B, H_{l+1})
        if dbar is not None:
            add(l, deltas[l].t() @ dbar)
            deltabar = dbar @ w[l].t() if deltabar is None else deltabar + dbar @ w[l].t()
        dbar = None if deltabar is None else deltabar * masks[l]  # the gradient of d_{l+1}
    if dbar is not None:
        add(hidden, dbar.sum(0, keepdim=True))  # d_{L-1} = 1 w_{L-1}
    dws = [torch.zeros_like(w[k]) if wbar[k] is None else wbar[k] for k in range(layers)]
    return dgrad.to(grad.dtype), [dw.to(grad.dtype) for dw in dws]


def _defaults(weights: Sequence[torch.Tensor], biases: Optional[Sequence[Optional[torch.Tensor]]],
              negative_slopes: Optional[Sequence[float]], gains: Optional[Sequence[float]]
              ) -> tuple[list, list[float], list[float]]:
    hidden = max(len(weights) - 1, 0)
    biases = [None] * hidden if biases is None else list(biases)
    negative_slopes = [0.2] * hidden if negative_slopes is None else [float(s) for s in negative_slopes]
    gains = [1.0] * hidden if gains is None else [float(g) for g in gains]
    return biases, negative_slopes, gains


def _kernel(name: str, suffix: str):
    return getattr(torch.ops.fastsn, name + suffix)


def mlp_input_gradient(x: torch.Tensor, weights: Sequence[torch.Tensor],
                       biases: Optional[Sequence[Optional[torch.Tensor]]] = None,
                       negative_slopes: Optional[Sequence[float]] = None, gains: Optional[Sequence[float]] = None, *,
                       backend: Optional[str] = None) -> torch.Tensor:
    """g = d sum_i D(x_i) / dx for the leaky-ReLU MLP D of the module docstring, fused: the gradient a gradient
    penalty takes, whose backward to the weights skips autograd's pass of zeros through every layer.

    Args:
        x: (B, H_0), float16/bfloat16/float32/float64, any strides, CPU or CUDA.
        weights: L >= 1 matrices W_l (H_{l+1}, H_l) of x's dtype and device (``nn.Linear.weight``), H_L = 1.
        biases: one per hidden layer (L - 1), each (H_{l+1},) or None; None for all None. The last layer's bias
            does not change g and is not taken.
        negative_slopes: one per hidden layer, the leaky ReLU's slope where z <= 0 (torch's convention at 0);
            None for all 0.2.
        gains: one per hidden layer, a factor after the activation (StyleGAN2's sqrt(2)); None for all 1.
        backend: as :func:`fastsn.ops.build_info`.

    Returns:
        g (B, H_0) in x's dtype (float32 accumulation for float16/bfloat16), contiguous; differentiable in the
        weights to any order. x and the biases get zero gradients (they move only the piecewise-constant masks), as
        through torch's autograd.
    """
    biases, negative_slopes, gains = _defaults(weights, biases, negative_slopes, gains)
    check_mlp_input_gradient_args(x, weights, biases, negative_slopes, gains)
    name = _backend.resolve("mlp_input_gradient", x.device, backend)
    if name == "ref":
        return mlp_input_gradient_ref(x, weights, biases, negative_slopes, gains)
    suffix = "_triton" if name == "triton" else ""
    weights = list(weights)
    if use_registration():  # traced, or in a torch.func transform: the registered op and its autograd
        # (zeros for absent biases: torch.library passes a list holding None as one argument, whose gradient can
        # only be None as a whole; of tensors only, each bias gets its zero gradient)
        biases = [x.new_zeros(w.shape[0]) if b is None else b for w, b in zip(weights, biases)]
        return _kernel("mlp_input_gradient", suffix)(x, weights, biases, negative_slopes, gains)[0]
    tensors = [x, *weights, *[b for b in biases if b is not None]]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _ForwardFunction.apply(x, negative_slopes, gains, suffix, len(weights), *weights, *biases)
    return below_autograd(_kernel("mlp_input_gradient", suffix), x, weights, biases, negative_slopes, gains)[0]


# ---------------------------------------------------------------------------------------------------------------
# fake kernels and autograd (the schemas come with fastsn._C)
# ---------------------------------------------------------------------------------------------------------------

def _forward_fake(x, weights, biases, negative_slopes, gains):
    check_mlp_input_gradient_args(x, weights, biases, negative_slopes, gains)
    hidden = [(x.shape[0], w.shape[0]) for w in weights[:-1]]
    return (x.new_empty(x.shape), [x.new_empty(shape) for shape in hidden],
            [x.new_empty(shape, dtype=torch.bool) for shape in hidden])


def _backward_fake(grad, weights, deltas, positive, negative_slopes, gains):
    check_mlp_input_gradient_backward_args(grad, weights, deltas, positive, negative_slopes, gains)
    return [w.new_empty(w.shape) for w in weights]


def _forward_setup_context(ctx, inputs, output):
    x, weights, biases, negative_slopes, gains = inputs
    _, deltas, positive = output
    ctx.save_for_backward(*weights, *deltas, *positive)
    ctx.layers = len(weights)
    ctx.negative_slopes, ctx.gains = list(negative_slopes), list(gains)
    # x and the biases only move the masks: their gradient is zero, sent as a tensor (as torch's autograd does)
    # where one is wanted
    ctx.x_zero = (x.shape, x.dtype, x.device) if x.requires_grad else None
    ctx.bias_zero = [(b.shape, b.dtype, b.device) if b is not None and b.requires_grad else None for b in biases]
    ctx.bias_missing = any(b is None for b in biases)
    ctx.weight_needs = [w.requires_grad for w in weights]
    ctx.set_materialize_grads(False)


def _zero(meta) -> Optional[torch.Tensor]:
    return None if meta is None else torch.zeros(meta[0], dtype=meta[1], device=meta[2])


def _forward_grads(ctx, grad: Optional[torch.Tensor], suffix: str
                   ) -> tuple[Optional[torch.Tensor], list[Optional[torch.Tensor]], list[Optional[torch.Tensor]]]:
    """(dx, [dW_l], [db_l]) from the gradient of g (None: nothing came, nothing goes down)."""
    layers = ctx.layers
    if grad is None:
        return None, [None] * layers, [None] * (layers - 1)
    saved = ctx.saved_tensors
    weights, deltas, positive = saved[:layers], saved[layers:2 * layers - 1], saved[2 * layers - 1:]
    dws: list[Optional[torch.Tensor]] = [None] * layers
    if any(ctx.weight_needs):
        dws = list(_backward_call(grad, list(weights), list(deltas), list(positive), ctx.negative_slopes, ctx.gains,
                                  suffix))
        dws = [dw if need else None for dw, need in zip(dws, ctx.weight_needs)]
    return _zero(ctx.x_zero), dws, [_zero(meta) for meta in ctx.bias_zero]


def _backward_call(grad: torch.Tensor, weights: list[torch.Tensor], deltas: list[torch.Tensor],
                   positive: list[torch.Tensor], negative_slopes: list[float], gains: list[float], suffix: str
                   ) -> list[torch.Tensor]:
    """The backward op: through its autograd.Function when it may be differentiated again (create_graph=True), else
    straight to the kernel."""
    op = _kernel("mlp_input_gradient_backward", suffix)
    if use_registration():
        return op(grad, weights, deltas, positive, negative_slopes, gains)
    if torch.is_grad_enabled() and (grad.requires_grad or any(w.requires_grad for w in weights)):
        return list(_BackwardFunction.apply(grad, negative_slopes, gains, suffix, len(weights), *weights, *deltas,
                                            *positive))
    return below_autograd(op, grad, weights, deltas, positive, negative_slopes, gains)


def _make_forward_backward(suffix: str):
    def backward(ctx, grad, grad_deltas, grad_positive):
        dx, dws, dbs = _forward_grads(ctx, grad, suffix)
        # torch.library takes a list holding None (an absent bias) as one argument: its gradient is None
        return dx, dws, (None if ctx.bias_missing else dbs), None, None
    return backward


def _backward_setup_context(ctx, inputs, output):
    grad, weights, deltas, positive, negative_slopes, gains = inputs
    ctx.save_for_backward(grad, *weights, *positive)
    ctx.negative_slopes, ctx.gains = list(negative_slopes), list(gains)
    ctx.set_materialize_grads(False)


def _backward_grads(ctx, grads_of_dws: Sequence[Optional[torch.Tensor]]
                    ) -> tuple[Optional[torch.Tensor], list[Optional[torch.Tensor]]]:
    """The gradients of the backward op for grad and the weights (the masks are constant), by
    :func:`mlp_input_gradient_backward_backward`: PyTorch ops, so differentiable again. (dgrad, [dW_l])."""
    grad, *rest = ctx.saved_tensors
    layers = (len(rest) + 1) // 2
    weights, positive = rest[:layers], rest[layers:]
    if all(c is None for c in grads_of_dws):
        return None, [None] * layers
    dgrad, dws = mlp_input_gradient_backward_backward(grad, weights, positive, ctx.negative_slopes, ctx.gains,
                                                      grads_of_dws)
    return (dgrad if grad.requires_grad else None), [dw if w.requires_grad else None for dw, w in zip(dws, weights)]


def _backward_backward(ctx, grads_of_dws):
    dgrad, dws = _backward_grads(ctx, list(grads_of_dws))
    hidden = [None] * (len(dws) - 1)
    return dgrad, dws, hidden, list(hidden), None, None


# The eager twins of the registered autograd below (see fastsn/ops/_eager.py). Lists travel flattened: layers
# tells the lengths.
class _ForwardFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, negative_slopes, gains, suffix, layers, *tensors):
        weights, biases = list(tensors[:layers]), list(tensors[layers:])
        output = below_autograd(_kernel("mlp_input_gradient", suffix), x, weights, biases, negative_slopes, gains)
        _forward_setup_context(ctx, (x, weights, biases, negative_slopes, gains), output)
        ctx.suffix = suffix
        return output[0]

    @staticmethod
    def backward(ctx, grad):
        dx, dws, dbs = _forward_grads(ctx, grad, ctx.suffix)
        return dx, None, None, None, None, *dws, *dbs


class _BackwardFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad, negative_slopes, gains, suffix, layers, *tensors):
        weights = list(tensors[:layers])
        deltas, positive = list(tensors[layers:2 * layers - 1]), list(tensors[2 * layers - 1:])
        dws = below_autograd(_kernel("mlp_input_gradient_backward", suffix), grad, weights, deltas, positive,
                             negative_slopes, gains)
        _backward_setup_context(ctx, (grad, weights, deltas, positive, negative_slopes, gains), dws)
        return tuple(dws)

    @staticmethod
    def backward(ctx, *grads_of_dws):
        dgrad, dws = _backward_grads(ctx, grads_of_dws)
        hidden = len(dws) - 1
        return dgrad, None, None, None, None, *dws, *([None] * (2 * hidden))


for _suffix in ("", "_triton"):
    if _extension.op_defined("mlp_input_gradient" + _suffix):
        torch.library.register_fake("fastsn::mlp_input_gradient" + _suffix)(_forward_fake)
        torch.library.register_fake("fastsn::mlp_input_gradient_backward" + _suffix)(_backward_fake)
        torch.library.register_autograd("fastsn::mlp_input_gradient" + _suffix, _make_forward_backward(_suffix),
                                        setup_context=_forward_setup_context)
        torch.library.register_autograd("fastsn::mlp_input_gradient_backward" + _suffix, _backward_backward,
                                        setup_context=_backward_setup_context)
