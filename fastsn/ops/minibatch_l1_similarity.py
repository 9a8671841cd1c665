"""``fastsn.ops.minibatch_l1_similarity``: the kernel of minibatch discrimination (Salimans et al. 2016).

From M (N, B, C) (N samples, B kernels of C dims each), o[i, b] = sum_{j != i} exp(-||M[i, b] - M[j, b]||_1), in
O(N * B * C) memory: the kernels walk j in tiles and never build the (N, N, B) distances (let alone the (N, N, B, C)
differences of the usual broadcast form). With e_ij = exp(-||M_i - M_j||_1) (per kernel b), the gradient is

    dM[i, b, c] = -sum_{j != i} (g[i, b] + g[j, b]) * e_ij * sign(M[i, b, c] - M[j, b, c])

(o_i and every o_j holding e_ij depend on M_i), computed by the op ``minibatch_l1_similarity_backward(g, M)``. That
op's own gradient (the second order that a gradient penalty needs) is the closed form of :func:`_backward_backward`
in PyTorch ops, walked over j in chunks so that it too stays O(N * chunk * B * C): sign() has zero derivative almost
everywhere, so with q_kj = <v_k - v_j, sign(M_k - M_j)> for the incoming v (N, B, C),

    d/dg_k = -sum_j e_kj q_kj,        d/dM_k = sum_j (g_k + g_j) e_kj q_kj sign(M_k - M_j).

Being PyTorch ops, it is differentiable again (third order and beyond) by autograd.
"""
from __future__ import annotations

from typing import Optional

import torch

from fastsn import _backend, _extension
from fastsn.ops._checks import check_floating, check_tensor, opmath_dtype

OP = "fastsn::minibatch_l1_similarity"
_CHUNK_ELEMENTS = 1 << 22  # elements of one (N, chunk, B, C) intermediate of the PyTorch formulas


def check_minibatch_l1_similarity_args(M: torch.Tensor, op: str = OP) -> None:
    """The checks of the C++ kernels, with the same messages."""
    check_tensor(M, op, "M")
    check_floating(M, op, "M")
    if M.dim() != 3:
        raise RuntimeError(f"{op}(): argument 'M' must be 3-D (N, B, C), got shape {tuple(M.shape)}")


def check_minibatch_l1_similarity_backward_args(grad: torch.Tensor, M: torch.Tensor,
                                                op: str = OP + "_backward") -> None:
    """The checks of the C++ backward kernels, with the same messages."""
    check_minibatch_l1_similarity_args(M, op)
    check_tensor(grad, op, "grad")
    check_floating(grad, op, "grad")
    if grad.dim() != 2 or tuple(grad.shape) != tuple(M.shape[:2]):
        raise RuntimeError(f"{op}(): argument 'grad' must have shape ({M.shape[0]}, {M.shape[1]}) (M.shape[:2]), "
                           f"got {tuple(grad.shape)}")
    if grad.dtype != M.dtype:
        raise RuntimeError(f"{op}(): argument 'grad' must have the dtype of 'M' ({M.dtype}), got {grad.dtype}")
    if grad.device != M.device:
        raise RuntimeError(f"{op}(): argument 'grad' must be on the device of 'M' ({M.device})")


def _chunks(M: torch.Tensor):
    """(j0, j1, diff, keep) over chunks of j: diff = M[:, None] - M[None, j0:j1] (N, J, B, C) in opmath, keep (N, J, 1)
    is False on the self pairs i == j."""
    x = M.to(opmath_dtype(M.dtype))
    n, b, c = x.shape
    step = max(1, _CHUNK_ELEMENTS // max(1, n * b * c))
    rows = torch.arange(n, device=M.device)
    for j0 in range(0, n, step):
        j1 = min(n, j0 + step)
        keep = (rows[:, None] != rows[None, j0:j1]).unsqueeze(-1)
        yield j0, j1, x[:, None] - x[None, j0:j1], keep


def minibatch_l1_similarity_ref(M: torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch reference of :func:`minibatch_l1_similarity` (differentiable to any order by autograd), over
    chunks of j, so its memory is O(N * chunk * B * C) and not the full broadcast.

    Args:
        M: (N, B, C), float16/bfloat16/float32/float64, any strides.

    Returns:
        o (N, B) in M's dtype (computed in float32 for float16/bfloat16).
    """
    check_minibatch_l1_similarity_args(M)
    o = M.new_zeros(M.shape[:2], dtype=opmath_dtype(M.dtype))
    for _, _, diff, keep in _chunks(M):
        e = torch.exp(-diff.abs().sum(-1))  # (N, J, B)
        o = o + torch.where(keep, e, torch.zeros_like(e)).sum(1)
    return o.to(M.dtype)


def minibatch_l1_similarity_backward_ref(grad: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch reference of the backward op: dM (N, B, C) from the gradient of o (N, B) (module docstring)."""
    check_minibatch_l1_similarity_backward_args(grad, M)
    g = grad.to(opmath_dtype(M.dtype))
    dm = M.new_zeros(M.shape, dtype=g.dtype)
    for j0, j1, diff, keep in _chunks(M):
        e = torch.where(keep, torch.exp(-diff.abs().sum(-1)), torch.zeros((), dtype=g.dtype, device=g.device))
        w = (g[:, None] + g[None, j0:j1]) * e  # (N, J, B)
        dm = dm - (w.unsqueeze(-1) * diff.sign()).sum(1)
    return dm.to(M.dtype)


def _backward_backward(v: torch.Tensor, grad: torch.Tensor, M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient of <v, minibatch_l1_similarity_backward(grad, M)> in grad (N, B) and M (N, B, C), as PyTorch ops
    (module docstring), chunked over j."""
    opmath = opmath_dtype(M.dtype)
    g, vv = grad.to(opmath), v.to(opmath)
    dg = g.new_zeros(g.shape)
    dm = g.new_zeros(M.shape)
    for j0, j1, diff, keep in _chunks(M):
        s = diff.sign()  # (N, J, B, C)
        e = torch.where(keep, torch.exp(-diff.abs().sum(-1)), torch.zeros((), dtype=opmath, device=g.device))
        q = ((vv[:, None] - vv[None, j0:j1]) * s).sum(-1)  # (N, J, B)
        eq = e * q
        dg = dg - eq.sum(1)
        dm = dm + (((g[:, None] + g[None, j0:j1]) * eq).unsqueeze(-1) * s).sum(1)
    return dg.to(grad.dtype), dm.to(M.dtype)


def _kernel(name: str, backend: str):
    return getattr(torch.ops.fastsn, f"{name}_triton" if backend == "triton" else name)


def minibatch_l1_similarity(M: torch.Tensor, *, backend: Optional[str] = None) -> torch.Tensor:
    """o[i, b] = sum_{j != i} exp(-sum_c |M[i, b, c] - M[j, b, c]|), fused, in O(N * B * C) memory.

    Args:
        M: (N, B, C): N samples, B kernels of C dims; float16/bfloat16/float32/float64, any strides, CPU or CUDA.
            N = 1 gives zeros (no other sample).
        backend: as :func:`fastsn.ops.build_info`.

    Returns:
        o (N, B) in M's dtype (accumulated in float32 for float16/bfloat16); differentiable in M to any order.
    """
    check_minibatch_l1_similarity_args(M)
    name = _backend.resolve("minibatch_l1_similarity", M.device, backend)
    if name == "ref":
        return minibatch_l1_similarity_ref(M)
    return _kernel("minibatch_l1_similarity", name)(M)


# ---------------------------------------------------------------------------------------------------------------
# fake kernels and autograd (the schemas come with fastsn._C)
# ---------------------------------------------------------------------------------------------------------------

def _forward_fake(M):
    check_minibatch_l1_similarity_args(M)
    return M.new_empty(M.shape[:2])


def _backward_fake(grad, M):
    check_minibatch_l1_similarity_backward_args(grad, M)
    return M.new_empty(M.shape)


def _forward_setup_context(ctx, inputs, output):
    (M,) = inputs
    ctx.save_for_backward(M)


def _make_forward_backward(backward_op: str):
    def backward(ctx, grad):
        (M,) = ctx.saved_tensors
        return getattr(torch.ops.fastsn, backward_op)(grad, M)
    return backward


def _backward_setup_context(ctx, inputs, output):
    grad, M = inputs
    ctx.save_for_backward(grad, M)


def _backward_backward_autograd(ctx, v):
    grad, M = ctx.saved_tensors
    return _backward_backward(v, grad, M)


for _suffix in ("", "_triton"):
    if _extension.op_defined("minibatch_l1_similarity" + _suffix):
        torch.library.register_fake("fastsn::minibatch_l1_similarity" + _suffix)(_forward_fake)
        torch.library.register_fake("fastsn::minibatch_l1_similarity_backward" + _suffix)(_backward_fake)
        torch.library.register_autograd("fastsn::minibatch_l1_similarity" + _suffix,
                                        _make_forward_backward("minibatch_l1_similarity_backward" + _suffix),
                                        setup_context=_forward_setup_context)
        torch.library.register_autograd("fastsn::minibatch_l1_similarity_backward" + _suffix,
                                        _backward_backward_autograd, setup_context=_backward_setup_context)
