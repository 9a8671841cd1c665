"""Spectral normalization ops: the fused power iteration and the normalization W / sigma with its fused backward.

A weight W of any shape is seen as the matrix M of shape (h, w) that torch's spectral norm uses: ``dim``
permuted to the front, the rest flattened in order. With W contiguous and viewed as (O, h, I) (O: product of
the sizes before ``dim``, I: of those after), M[i, o*I + k] = W[o, i, k]; every backend works on that view.

Ops (each on the cuda, triton, cpu and ref backends):
    spectral_norm_power_iteration: n power iterations updating u (h,) and v (w,) in place, in the order of the
        API in use (u then v: torch.nn.utils.parametrizations; v then u: the legacy hook API), then
        sigma = u . (M v). No gradient.
    spectral_norm_normalize: W / sigma, where sigma = u . (M(W) v) is a function of W (u and v constant);
        its backward is fused: dW = (G - <G, W_sn> u v^T) / sigma, exactly torch's gradient. Where
        |sigma| < eps (an all-zero weight), eps replaces sigma (and takes no gradient): torch returns NaN there.

    spectral_norm_grouped_power_iteration / spectral_norm_grouped_normalize: the same for a list of weights (every
        spectral norm of a model): one launch for all small weights on CUDA, one C++ call on CPU.

Half and bfloat16 accumulate in float32; sigma is returned in float32 for them (float64 for float64 weights),
and eps is applied in that precision, so 1e-12 does not underflow.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from fastsn import _backend, _extension
from fastsn.ops._checks import check_floating, check_tensor, opmath_dtype, schema_int
from fastsn.ops._eager import below_autograd, eager_autograd, tracing, use_registration

OP = "fastsn::spectral_norm"


def weight_to_matrix(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """torch's view of a weight as a matrix: ``dim`` permuted to the front, the rest flattened.

    Args:
        weight: (d_0, ..., d_{n-1}), n >= 2.
        dim: the output dimension, in [0, n).

    Returns:
        (d_dim, prod of the other sizes), a view where possible.
    """
    if dim != 0:
        weight = weight.permute(dim, *[d for d in range(weight.dim()) if d != dim])
    return weight.flatten(1)


def matrix_to_weight(matrix: torch.Tensor, like: torch.Tensor, dim: int) -> torch.Tensor:
    """Inverse of :func:`weight_to_matrix`: an (h, w) matrix laid out back into the shape of ``like``."""
    order = [dim] + [d for d in range(like.dim()) if d != dim]
    permuted = matrix.reshape([like.shape[d] for d in order])
    return permuted.permute(*sorted(range(like.dim()), key=order.__getitem__))


def check_power_iteration_args(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, dim: int,
                               n_power_iterations: int, eps: float, op: str = OP + "_power_iteration") -> None:
    """The checks every backend makes, worded as the C++ TORCH_CHECKs."""
    for name, t in (("weight", weight), ("u", u), ("v", v)):
        check_tensor(t, op, name)
        check_floating(t, op, name)
    if weight.dim() < 2:
        raise RuntimeError(f"{op}(): argument 'weight' must have at least 2 dimensions, got {weight.dim()}")
    dim = schema_int(dim, op, "dim")
    if not 0 <= dim < weight.dim():
        raise RuntimeError(f"{op}(): argument 'dim' must be in [0, {weight.dim() - 1}], got {dim}")
    h = weight.shape[dim]
    w = math.prod([size for d, size in enumerate(weight.shape) if d != dim])
    if u.dim() != 1 or u.numel() != h:
        raise RuntimeError(f"{op}(): argument 'u' must have shape ({h},), got {tuple(u.shape)}")
    if v.dim() != 1 or v.numel() != w:
        raise RuntimeError(f"{op}(): argument 'v' must have shape ({w},), got {tuple(v.shape)}")
    if u.dtype != weight.dtype or v.dtype != weight.dtype:
        raise RuntimeError(f"{op}(): arguments 'u' and 'v' must have the dtype of 'weight' ({weight.dtype}), "
                           f"got {u.dtype} and {v.dtype}")
    if u.device != weight.device or v.device != weight.device:
        raise RuntimeError(f"{op}(): arguments 'u' and 'v' must be on the device of 'weight' ({weight.device})")
    n_power_iterations = schema_int(n_power_iterations, op, "n_power_iterations")
    if n_power_iterations < 0:
        raise RuntimeError(f"{op}(): argument 'n_power_iterations' must be >= 0, got {n_power_iterations}")
    for name, t in (("u", u), ("v", v)):
        if n_power_iterations > 0 and t.numel() > 1 and t.stride(0) == 0:
            raise RuntimeError(f"{op}(): argument '{name}' is updated in place and must not be expanded "
                               "(elements sharing memory: stride 0)")


def normalize_layout(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(what W / sigma reads, its output, uninitialized), as the C++ normalize_input: the output has torch's layout,
    empty_like(weight)'s (a dense weight's strides, e.g. channels last; else channels last where the strides suggest
    it, else contiguous), and the input is the weight itself where it has that layout, else its clone, so the pass is
    elementwise over storage."""
    out = torch.empty_like(weight)
    return (weight if out.stride() == weight.stride() else weight.clone()), out


def check_normalize_args(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, dim: int,
                         op: str = OP + "_normalize") -> None:
    """The checks of the normalize kernels (C++ check_normalize_args), with the same messages."""
    check_tensor(sigma, op, "sigma")
    check_power_iteration_args(weight, u, v, dim, 0, 0.0, op=op)
    if sigma.numel() != 1:
        raise RuntimeError(f"{op}(): argument 'sigma' must hold one value, got shape {tuple(sigma.shape)}")
    if sigma.device != weight.device:
        raise RuntimeError(f"{op}(): argument 'sigma' must be on the device of 'weight' ({weight.device})")
    check_floating(sigma, op, "sigma")


def check_normalize_backward_grad(grad: torch.Tensor, weight: torch.Tensor, op: str) -> None:
    """The checks of the normalize backward kernels on ``grad``, with the same messages."""
    check_tensor(grad, op, "grad")
    check_floating(grad, op, "grad")
    if grad.shape != weight.shape:
        raise RuntimeError(f"{op}(): argument 'grad' must have the shape of 'weight' ({list(weight.shape)}), got "
                           f"{list(grad.shape)}")
    if grad.device != weight.device:
        raise RuntimeError(f"{op}(): argument 'grad' must be on the device of 'weight' ({weight.device})")


def check_grouped_power_iteration_args(weights: list, us: list, vs: list, dims: list, n_power_iterations: list,
                                       eps: list, u_first: list) -> None:
    """The group-level checks of the grouped power iteration kernels (C++ check_grouped_power_iteration_args), with
    the same messages; each weight's own (check_power_iteration_args) come with its single-weight call."""
    op = OP + "_grouped_power_iteration"
    _check_group(weights, op, us=us, vs=vs, dims=dims, n_power_iterations=n_power_iterations, eps=eps,
                 u_first=u_first)
    if not weights:
        raise RuntimeError(f"{op}(): argument 'weights' must not be empty")
    for weight in weights:
        check_tensor(weight, op, "weights")
        if weight.device != weights[0].device or weight.dtype != weights[0].dtype:
            raise RuntimeError(f"{op}(): argument 'weights' must share one device and dtype, got "
                               f"{weights[0].device}/{weights[0].dtype} and {weight.device}/{weight.dtype}")


def check_grouped_normalize_args(weights: list, us: torch.Tensor, vs: torch.Tensor, sigmas: torch.Tensor,
                                 dims: list, eps: list, op: str = OP + "_grouped_normalize",
                                 grads: Optional[list] = None) -> None:
    """The checks of the grouped normalize kernels and their backward (C++ grouped_offsets), with the same
    messages: us, vs, sigmas flat and 1-D, holding exactly the vectors of the weights."""
    lists = {"dims": dims, "eps": eps} if grads is None else {"grads": grads, "dims": dims, "eps": eps}
    _check_group(weights, op, **lists)
    for name, t in (("us", us), ("vs", vs), ("sigmas", sigmas)):
        check_tensor(t, op, name)
        check_floating(t, op, name)
    if us.dim() != 1 or vs.dim() != 1 or sigmas.dim() != 1:
        raise RuntimeError(f"{op}(): arguments 'us', 'vs' and 'sigmas' must be 1-D (the vectors of all weights, "
                           "concatenated)")
    if sigmas.numel() != len(weights):
        raise RuntimeError(f"{op}(): argument 'sigmas' must hold one value per weight ({len(weights)}), got "
                           f"{sigmas.numel()}")
    h_total = w_total = 0
    for k, (weight, dim) in enumerate(zip(weights, dims)):
        check_tensor(weight, op, "weights")
        check_floating(weight, op, "weights")
        if weight.dim() < 2 or not 0 <= dim < weight.dim():
            raise RuntimeError(f"{op}(): weight {k} must have at least 2 dimensions and 'dims' within them, got "
                               f"shape {list(weight.shape)} and dim {dim}")
        if us.dtype != weight.dtype or vs.dtype != weight.dtype:
            raise RuntimeError(f"{op}(): arguments 'us' and 'vs' must have the dtype of the weights ({weight.dtype}), "
                               f"got {us.dtype} and {vs.dtype}")
        if not us.device == vs.device == sigmas.device == weight.device:
            raise RuntimeError(f"{op}(): arguments 'us', 'vs' and 'sigmas' must be on the device of the weights "
                               f"({weight.device})")
        h_total += weight.shape[dim]
        w_total += math.prod([size for d, size in enumerate(weight.shape) if d != dim])
        if grads is not None:
            check_normalize_backward_grad(grads[k], weight, op)
    if h_total != us.numel() or w_total != vs.numel():
        raise RuntimeError(f"{op}(): arguments 'us' and 'vs' must hold exactly the vectors of the weights ({h_total} "
                           f"and {w_total} values), got {us.numel()} and {vs.numel()}")


# ---------------------------------------------------------------------------------------------------------------
# pure-PyTorch references
# ---------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def spectral_norm_power_iteration_ref(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, dim: int = 0,
                                      n_power_iterations: int = 1, eps: float = 1e-12,
                                      u_first: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference of :func:`spectral_norm_power_iteration`.

    Args:
        weight: (d_0, ..., d_{n-1}), n >= 2; seen as M of shape (h, w), h = d_dim.
        u: (h,), updated in place when n_power_iterations > 0.
        v: (w,), updated in place when n_power_iterations > 0.
        dim: the output dimension of weight.
        n_power_iterations: iterations to run (0: only compute sigma).
        eps: floor of the norms, as in F.normalize.
        u_first: True: u = N(M v) then v = N(M^T u) (parametrizations API); False: v first (legacy hook API).

    Returns:
        sigma: () in float32 (float64 for float64 weights), u . (M v) with the updated vectors;
        u_copy (h,), v_copy (w,): fresh copies of the updated u and v, for the backward.
    """
    check_power_iteration_args(weight, u, v, dim, n_power_iterations, eps)
    acc = opmath_dtype(weight.dtype)
    m = weight_to_matrix(weight.detach(), dim).to(acc)
    u_acc, v_acc = u.to(acc), v.to(acc)
    for _ in range(n_power_iterations):
        if u_first:
            u_acc = F.normalize(torch.mv(m, v_acc), dim=0, eps=eps)
            v_acc = F.normalize(torch.mv(m.t(), u_acc), dim=0, eps=eps)
        else:
            v_acc = F.normalize(torch.mv(m.t(), u_acc), dim=0, eps=eps)
            u_acc = F.normalize(torch.mv(m, v_acc), dim=0, eps=eps)
    if n_power_iterations > 0:
        # written by an out= op, not copy_: torch.func's grad transforms refuse an in-place op on a tensor captured
        # from outside the transformed function (u and v are a module's buffers) but take out=, as torch's own
        # spectral norm writes them; x * 1 is x exactly (-0 and NaN included)
        torch.mul(u_acc, 1, out=u)
        torch.mul(v_acc, 1, out=v)
    sigma = torch.dot(u.to(acc), torch.mv(m, v.to(acc)))
    return sigma, u.clone(memory_format=torch.contiguous_format), v.clone(memory_format=torch.contiguous_format)


def spectral_norm_normalize_ref(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor,
                                dim: int = 0, eps: float = 1e-12) -> torch.Tensor:
    """Reference of :func:`spectral_norm_normalize`: ``weight / (u . (M(weight) v))``, differentiable in weight.

    ``sigma`` (its precomputed value, which the kernels use) is recomputed here from weight, as torch does, so
    that autograd sees sigma's dependence on the weight.

    Args:
        weight: (d_0, ..., d_{n-1}), n >= 2.
        u: (h,), v: (w,): constants (no gradient).
        sigma: (), the value of u . (M v); unused by the reference.
        dim: the output dimension of weight.
        eps: where |sigma| < eps, eps replaces sigma (no NaN for an all-zero weight).

    Returns:
        W_sn, same shape and dtype as weight.
    """
    check_normalize_args(weight, u, v, sigma, dim)
    return _normalize_ref(weight, u, v, dim, eps)


def _normalize_ref(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, dim: int, eps: float) -> torch.Tensor:
    """:func:`spectral_norm_normalize_ref` with its arguments already checked."""
    acc = opmath_dtype(weight.dtype)
    m = weight_to_matrix(weight, dim).to(acc)
    sigma_of_weight = torch.dot(u.detach().to(acc), torch.mv(m, v.detach().to(acc)))
    guarded = torch.where(sigma_of_weight.abs() < eps, torch.full_like(sigma_of_weight, eps), sigma_of_weight)
    return (weight.to(acc) / guarded).to(weight.dtype)


def spectral_norm_normalize_backward_ref(grad: torch.Tensor, weight: torch.Tensor, u: torch.Tensor,
                                         v: torch.Tensor, sigma: torch.Tensor, dim: int = 0,
                                         eps: float = 1e-12) -> torch.Tensor:
    """dW = (G - <G, W_sn> u v^T) / sigma (G / eps where |sigma| < eps), in torch ops, so itself differentiable.

    As in :func:`spectral_norm_normalize_ref`, sigma is recomputed from the weight (the argument is unused), so
    that differentiating this gradient again also sees sigma's dependence on the weight.

    Args:
        grad: G, the gradient of W_sn, shape of weight.
        weight, u, v, sigma, dim, eps: as :func:`spectral_norm_normalize`.

    Returns:
        dW, shape and dtype of weight.
    """
    op = OP + "_normalize_backward"
    check_normalize_args(weight, u, v, sigma, dim, op)
    check_normalize_backward_grad(grad, weight, op)
    acc = opmath_dtype(weight.dtype)
    g, w_acc = grad.to(acc), weight.to(acc)
    s = torch.dot(u.detach().to(acc), torch.mv(weight_to_matrix(w_acc, dim), v.detach().to(acc)))
    clamped = s.abs() < eps
    s_hat = torch.where(clamped, torch.full_like(s, eps), s)
    coef = torch.where(clamped, torch.zeros_like(s), (g * w_acc).sum() / s_hat)  # <G, W_sn>
    uv = matrix_to_weight(torch.outer(u.to(acc), v.to(acc)), weight, dim)
    return ((g - coef * uv) / s_hat).to(weight.dtype)


def spectral_norm_grouped_power_iteration_ref(weights: list[torch.Tensor], us: list[torch.Tensor],
                                              vs: list[torch.Tensor], dims: list[int], n_power_iterations: list[int],
                                              eps: list[float], u_first: list[bool]
                                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference of :func:`spectral_norm_grouped_power_iteration`: the single-weight reference, weight by weight.

    Args:
        weights, us, vs: one weight (one dtype for all) and its u, v (both updated in place) per entry.
        dims, n_power_iterations, eps, u_first: per weight, as :func:`spectral_norm_power_iteration_ref`.

    Returns:
        sigmas (n,) in the accumulation dtype; u_copies (sum of h,) and v_copies (sum of w,): the updated
        vectors of all weights, concatenated in order.
    """
    check_grouped_power_iteration_args(weights, us, vs, dims, n_power_iterations, eps, u_first)
    results = [spectral_norm_power_iteration_ref(*args) for args in zip(weights, us, vs, dims, n_power_iterations,
                                                                         eps, u_first)]
    return (torch.stack([r[0] for r in results]), torch.cat([r[1] for r in results]),
            torch.cat([r[2] for r in results]))


def split_grouped_vectors(weights: list[torch.Tensor], us: torch.Tensor, vs: torch.Tensor, sigmas: torch.Tensor,
                          dims: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Each weight's view of the flat u (sum of h,), v (sum of w,) and sigmas (n,) of the grouped ops."""
    hs = [w.shape[d] for w, d in zip(weights, dims)]
    ws = [math.prod([size for i, size in enumerate(w.shape) if i != d]) for w, d in zip(weights, dims)]
    if us.numel() != sum(hs) or vs.numel() != sum(ws) or sigmas.numel() != len(weights):
        raise RuntimeError(f"{OP}_grouped_normalize(): arguments 'us' and 'vs' must hold the vectors of every weight "
                           f"({sum(hs)} and {sum(ws)} values) and 'sigmas' one value per weight ({len(weights)}), got "
                           f"{us.numel()}, {vs.numel()} and {sigmas.numel()}")
    return list(us.split(hs)), list(vs.split(ws)), list(sigmas.unbind(0))


def spectral_norm_grouped_normalize_ref(weights: list[torch.Tensor], us: torch.Tensor, vs: torch.Tensor,
                                        sigmas: torch.Tensor, dims: list[int],
                                        eps: list[float]) -> list[torch.Tensor]:
    """Reference of :func:`spectral_norm_grouped_normalize`: :func:`spectral_norm_normalize_ref` per weight.

    Args:
        weights: the weights; us (sum of h,), vs (sum of w,), sigmas (n,): flat, as the grouped power iteration
            returns them; dims, eps: per weight.

    Returns:
        W_sn per weight.
    """
    check_grouped_normalize_args(weights, us, vs, sigmas, dims, eps)
    u, v, _ = split_grouped_vectors(weights, us, vs, sigmas, dims)
    return [_normalize_ref(*args) for args in zip(weights, u, v, dims, eps)]


def _check_group(weights: list, op: str, **lists: list) -> None:
    for name, values in lists.items():
        if len(values) != len(weights):
            raise RuntimeError(f"{op}(): argument '{name}' must hold one entry per weight ({len(weights)}), "
                               f"got {len(values)}")


# ---------------------------------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------------------------------

def _backend_suffix(backend: str) -> str:
    return "_triton" if backend == "triton" else ""


def _kernel(name: str, backend: str):
    return getattr(torch.ops.fastsn, name + _backend_suffix(backend))


def _mark_written(tensors: list[torch.Tensor]) -> None:
    """Bump the version counters of the u and v that a kernel wrote in place, as torch's in-place ops do, so that
    autograd refuses a graph that saved their old values (the dispatcher bumps none for ops defined in C++)."""
    if tensors and not tracing():  # (traced graphs record the mutation through the op's schema instead)
        torch.autograd.graph.increment_version(tensors)


def spectral_norm_power_iteration(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, dim: int = 0,
                                  n_power_iterations: int = 1, eps: float = 1e-12, u_first: bool = True, *,
                                  backend: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused power iteration: updates u and v in place and returns (sigma, u_copy, v_copy).

    Args and Returns: as :func:`spectral_norm_power_iteration_ref`; ``backend`` as :func:`fastsn.ops.build_info`.
    """
    check_tensor(weight, OP + "_power_iteration", "weight")
    name = _backend.resolve("spectral_norm", weight.device, backend)
    if name == "ref":
        return spectral_norm_power_iteration_ref(weight, u, v, dim, n_power_iterations, eps, u_first)
    out = _kernel("spectral_norm_power_iteration", name)(weight.detach(), u, v, dim, n_power_iterations, eps, u_first)
    if n_power_iterations:
        _mark_written([u, v])
    return out


def spectral_norm_normalize(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor,
                            dim: int = 0, eps: float = 1e-12, *, backend: Optional[str] = None) -> torch.Tensor:
    """W_sn = weight / sigma with the fused backward dW = (G - <G, W_sn> u v^T) / sigma.

    Args and Returns: as :func:`spectral_norm_normalize_ref`; ``backend`` as :func:`fastsn.ops.build_info`.
    """
    check_tensor(weight, OP + "_normalize", "weight")
    name = _backend.resolve("spectral_norm", weight.device, backend)
    if name == "ref":
        return spectral_norm_normalize_ref(weight, u, v, sigma, dim, eps)
    if weight.requires_grad and eager_autograd():
        return _NormalizeFunction.apply(weight, u, v, sigma, dim, eps, _backend_suffix(name))
    return _kernel("spectral_norm_normalize", name)(weight, u, v, sigma, dim, eps)


def spectral_norm_grouped_power_iteration(weights: list[torch.Tensor], us: list[torch.Tensor],
                                          vs: list[torch.Tensor], dims: list[int], n_power_iterations: list[int],
                                          eps: list[float], u_first: list[bool], *, backend: Optional[str] = None
                                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Power iteration of many weights at once (one device and dtype): in place on every u and v.

    Args and Returns: as :func:`spectral_norm_grouped_power_iteration_ref`; ``backend`` as
    :func:`fastsn.ops.build_info`.
    """
    if not weights:  # (no tensor for the dispatcher to route by: the kernels' own check cannot run)
        raise RuntimeError(f"{OP}_grouped_power_iteration(): argument 'weights' must not be empty")
    name = _backend.resolve("spectral_norm", weights[0].device, backend)
    if name == "ref":
        return spectral_norm_grouped_power_iteration_ref(weights, us, vs, dims, n_power_iterations, eps, u_first)
    kernel = _kernel("spectral_norm_grouped_power_iteration", name)
    if use_registration():
        out = kernel([w.detach() for w in weights], us, vs, dims, n_power_iterations, eps, u_first)
    else:  # the op has no autograd: skip its Autograd kernel for all weights at once rather than detach each
        out = below_autograd(kernel, weights, us, vs, dims, n_power_iterations, eps, u_first)
    _mark_written([t for u, v, n in zip(us, vs, n_power_iterations) if n for t in (u, v)])
    return out


def spectral_norm_grouped_normalize(weights: list[torch.Tensor], us: torch.Tensor, vs: torch.Tensor,
                                    sigmas: torch.Tensor, dims: list[int], eps: list[float], *,
                                    backend: Optional[str] = None) -> list[torch.Tensor]:
    """W / sigma for many weights at once, each differentiable in its weight (one fused backward for all).

    Args and Returns: as :func:`spectral_norm_grouped_normalize_ref`; ``backend`` as :func:`fastsn.ops.build_info`.
    """
    name = _backend.resolve("spectral_norm", weights[0].device if weights else "cpu", backend)
    if name == "ref":
        return spectral_norm_grouped_normalize_ref(weights, us, vs, sigmas, dims, eps)
    if any(w.requires_grad for w in weights) and eager_autograd():
        return list(_GroupedNormalizeFunction.apply(us, vs, sigmas, dims, eps, _backend_suffix(name), *weights))
    return _kernel("spectral_norm_grouped_normalize", name)(weights, us, vs, sigmas, dims, eps)


def spectral_norm(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, dim: int = 0,
                  n_power_iterations: int = 1, eps: float = 1e-12, u_first: bool = True, *,
                  backend: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole spectral norm of one weight: power iteration (in place on u, v), then W / sigma.

    Args:
        weight: (d_0, ..., d_{n-1}), n >= 2; u: (h,); v: (w,); the rest as :func:`spectral_norm_power_iteration`.

    Returns:
        W_sn (shape of weight, differentiable in weight) and sigma ().
    """
    name = _backend.resolve("spectral_norm", weight.device, backend)
    sigma, u_copy, v_copy = spectral_norm_power_iteration(weight, u, v, dim, n_power_iterations, eps, u_first,
                                                          backend=name)
    return spectral_norm_normalize(weight, u_copy, v_copy, sigma, dim, eps, backend=name), sigma


# ---------------------------------------------------------------------------------------------------------------
# fake kernels and autograd (the schemas come with fastsn._C)
# ---------------------------------------------------------------------------------------------------------------

def _power_iteration_fake(weight, u, v, dim, n_power_iterations, eps, u_first):
    check_power_iteration_args(weight, u, v, dim, n_power_iterations, eps)
    sigma = weight.new_empty((), dtype=opmath_dtype(weight.dtype))
    return sigma, torch.empty_like(u, memory_format=torch.contiguous_format), \
        torch.empty_like(v, memory_format=torch.contiguous_format)


# The fake kernels check as the kernels do: besides tracing, they run when a meta tensor is among real ones (the
# dispatcher then picks the Meta kernel), where skipping the checks returned uninitialized memory.
def _normalize_fake(weight, u, v, sigma, dim, eps):
    check_normalize_args(weight, u, v, sigma, dim)
    return torch.empty_like(weight)  # (see normalize_layout)


def _normalize_backward_fake(grad, weight, u, v, sigma, dim, eps):
    op = OP + "_normalize_backward"
    check_normalize_args(weight, u, v, sigma, dim, op)
    check_normalize_backward_grad(grad, weight, op)
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


def _normalize_setup_context(ctx, inputs, output):
    weight, u, v, sigma, dim, eps = inputs
    ctx.save_for_backward(weight, u, v, sigma)
    ctx.dim, ctx.eps = dim, eps


def _normalize_grad(ctx, grad: torch.Tensor, backward_op: str) -> torch.Tensor:
    """dW from the tensors ``_normalize_setup_context`` saved: the fused op, or under create_graph=True a formula
    autograd can differentiate again."""
    weight, u, v, sigma = ctx.saved_tensors
    if torch.is_grad_enabled():
        return spectral_norm_normalize_backward_ref(grad, weight, u, v, sigma, ctx.dim, ctx.eps)
    return getattr(torch.ops.fastsn, backward_op)(grad, weight, u, v, sigma, ctx.dim, ctx.eps)


def _make_normalize_backward(backward_op: str):
    def backward(ctx, grad):
        return _normalize_grad(ctx, grad, backward_op), None, None, None, None, None
    return backward


def _grouped_power_iteration_fake(weights, us, vs, dims, n_power_iterations, eps, u_first):
    check_grouped_power_iteration_args(weights, us, vs, dims, n_power_iterations, eps, u_first)
    for args in zip(weights, us, vs, dims, n_power_iterations, eps):
        check_power_iteration_args(*args)
    first = weights[0]
    return (first.new_empty((len(weights),), dtype=opmath_dtype(first.dtype)),
            first.new_empty((sum(u.numel() for u in us),)), first.new_empty((sum(v.numel() for v in vs),)))


def _grouped_normalize_fake(weights, us, vs, sigmas, dims, eps):
    check_grouped_normalize_args(weights, us, vs, sigmas, dims, eps)
    return [torch.empty_like(w) for w in weights]  # (see normalize_layout)


def _grouped_normalize_backward_fake(grads, weights, us, vs, sigmas, dims, eps):
    check_grouped_normalize_args(weights, us, vs, sigmas, dims, eps, OP + "_grouped_normalize_backward", grads)
    return [torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights]


def _grouped_normalize_setup_context(ctx, inputs, output):
    weights, us, vs, sigmas, dims, eps = inputs
    ctx.save_for_backward(us, vs, sigmas, *weights)
    ctx.dims, ctx.eps = list(dims), list(eps)
    ctx.set_materialize_grads(False)  # a weight whose W_sn went unused gets None, as layer by layer


def _grouped_normalize_grads(ctx, grads: list, backward_op: str) -> list[Optional[torch.Tensor]]:
    """dW per weight from the tensors ``_grouped_normalize_setup_context`` saved (see :func:`_normalize_grad`);
    None for a weight whose W_sn got no gradient (unused in the block), as layer by layer."""
    us, vs, sigmas, *weights = ctx.saved_tensors
    used = [k for k, grad in enumerate(grads) if grad is not None]
    if not used:
        return [None] * len(grads)
    if len(used) < len(grads):  # the flat vectors of the used weights only
        u, v, _ = split_grouped_vectors(weights, us, vs, sigmas, ctx.dims)
        us, vs, sigmas = torch.cat([u[k] for k in used]), torch.cat([v[k] for k in used]), sigmas[used]
    grads_used, weights_used = [grads[k] for k in used], [weights[k] for k in used]
    dims, eps = [ctx.dims[k] for k in used], [ctx.eps[k] for k in used]
    if torch.is_grad_enabled():
        u, v, sigma = split_grouped_vectors(weights_used, us, vs, sigmas, dims)
        computed = [spectral_norm_normalize_backward_ref(*args)
                    for args in zip(grads_used, weights_used, u, v, sigma, dims, eps)]
    else:
        computed = getattr(torch.ops.fastsn, backward_op)(grads_used, weights_used, us, vs, sigmas, dims, eps)
    result: list[Optional[torch.Tensor]] = [None] * len(grads)
    for k, grad_weight in zip(used, computed):
        result[k] = grad_weight
    return result


def _make_grouped_normalize_backward(backward_op: str):
    def backward(ctx, grads):
        return _grouped_normalize_grads(ctx, list(grads), backward_op), None, None, None, None, None
    return backward


# The eager twins of the registered autograd below (see fastsn/ops/_eager.py).
class _NormalizeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, u, v, sigma, dim, eps, suffix):
        output = below_autograd(getattr(torch.ops.fastsn, "spectral_norm_normalize" + suffix), weight, u, v, sigma,
                                dim, eps)
        _normalize_setup_context(ctx, (weight, u, v, sigma, dim, eps), output)
        ctx.suffix = suffix
        return output

    @staticmethod
    def backward(ctx, grad):
        grad_weight = _normalize_grad(ctx, grad, "spectral_norm_normalize_backward" + ctx.suffix)
        return grad_weight, None, None, None, None, None, None


class _GroupedNormalizeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, us, vs, sigmas, dims, eps, suffix, *weights):
        output = below_autograd(getattr(torch.ops.fastsn, "spectral_norm_grouped_normalize" + suffix),
                                list(weights), us, vs, sigmas, dims, eps)
        _grouped_normalize_setup_context(ctx, (weights, us, vs, sigmas, dims, eps), output)
        ctx.suffix = suffix
        return tuple(output)

    @staticmethod
    def backward(ctx, *grads):
        grad_weights = _grouped_normalize_grads(ctx, list(grads), "spectral_norm_grouped_normalize_backward"
                                                + ctx.suffix)
        return (None,) * 6 + tuple(grad_weights)


for _suffix in ("", "_triton"):
    if _extension.op_defined("spectral_norm_power_iteration" + _suffix):
        torch.library.register_fake("fastsn::spectral_norm_power_iteration" + _suffix)(_power_iteration_fake)
        torch.library.register_fake("fastsn::spectral_norm_normalize" + _suffix)(_normalize_fake)
        torch.library.register_fake("fastsn::spectral_norm_normalize_backward" + _suffix)(_normalize_backward_fake)
        torch.library.register_autograd(
            "fastsn::spectral_norm_normalize" + _suffix,
            _make_normalize_backward("spectral_norm_normalize_backward" + _suffix),
            setup_context=_normalize_setup_context)
        torch.library.register_fake("fastsn::spectral_norm_grouped_power_iteration" + _suffix)(
            _grouped_power_iteration_fake)
        torch.library.register_fake("fastsn::spectral_norm_grouped_normalize" + _suffix)(_grouped_normalize_fake)
        torch.library.register_fake("fastsn::spectral_norm_grouped_normalize_backward" + _suffix)(
            _grouped_normalize_backward_fake)
        torch.library.register_autograd(
            "fastsn::spectral_norm_grouped_normalize" + _suffix,
            _make_grouped_normalize_backward("spectral_norm_grouped_normalize_backward" + _suffix),
            setup_context=_grouped_normalize_setup_context)
