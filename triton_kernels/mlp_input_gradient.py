"""Triton kernels of ``fastsn::mlp_input_gradient_triton`` and its backward (the math:
fastsn/ops/mlp_input_gradient.py).

One generic tiled matmul C = A @ B (:func:`_mlp_matmul_kernel`) does every product: each operand and output comes
with its two strides, so a transposed operand (W^T, delta^T) or a strided input is only a swap of strides, never a
copy. Its constexpr epilogue gives the rest of a layer: plain (EPILOGUE 0), bias + activation (1: adds the optional
bias, writes the sign mask z > 0 and, where the next layer needs it, h = z * m), or mask (2: multiplies by m read
from a sign mask). m = where(z > 0, gain, gain * negative_slope), the pair read from memory (exact float64 under
the interpreter too). Two small kernels do the rest: the first delta W_{L-1}[0, :] * m_{L-2} broadcast over the
batch (:func:`_mlp_first_delta_kernel`, also the materialized W_0[0, :] of a one-layer network) and the column sum
dW_{L-1} = 1^T a_{L-1} (:func:`_mlp_column_sum_kernel`).

Precision: products accumulate in float32 (float64 for float64). For float16/bfloat16 the values that stay inside
the op (the activations h, the delta chain of the forward and the a_l of the backward) are kept in float32, as the
reference computes them: an activation rounded to half precision would flip sign masks near 0. The deltas returned
are their rounded copies (a second output of the same epilogue). tl.dot runs on the operands' own dtype where both
are float16 (bfloat16) on a GPU, and on float32 (float64) tiles otherwise: where the operands' dtypes differ, and
for half operands under the interpreter (TRITON_INTERPRET=1), whose bfloat16 dot is wrong. float32 dots are IEEE
(no TF32); float64 dots compile to DMMA on sm_90.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from fastsn.ops.mlp_input_gradient import check_mlp_input_gradient_args, check_mlp_input_gradient_backward_args
from fastsn.triton_kernels._common import acc_tl, cdiv, check_loop_size, on_device, scalars

WARPS = 4
GROUP_M = 8              # the matmul's tile rows per group (program order)
ELEMENTWISE_ROWS = 8     # the broadcast kernel's tile: (8, 128) elements
ELEMENTWISE_COLS = 128
SUM_ROWS = 64            # the column sum's tile: (64, 32) elements a step down the batch
SUM_COLS = 32

PLAIN, BIAS_ACTIVATION, MASK = 0, 1, 2


@triton.jit
def _mlp_matmul_kernel(a_ptr, b_ptr, c_ptr, c2_ptr, bias_ptr, pos_ptr, params_ptr, M, N, K,
                       stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn, stride_pm, stride_pn,
                       stride_bias, EPILOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, STORE_C: tl.constexpr,
                       HAS_C2: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, WIDE: tl.constexpr):
    # C (M, N) = A (M, K) @ B (K, N), then the epilogue. grid (cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N),). c2 (x's dtype,
    # C's strides): a second copy of C where HAS_C2. pos (uint8 view of a bool mask): written by EPILOGUE 1, read by
    # EPILOGUE 2. params: (gain, gain * negative_slope) in ACC.
    # program -> tile: GROUP_M tile rows at a time walk the tile columns (the B tiles they share stay in L2)
    pid = tl.program_id(0)
    tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    first_m = pid // (GROUP_M * tiles_n) * GROUP_M
    rows = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + pid % (GROUP_M * tiles_n) % rows
    pid_n = pid % (GROUP_M * tiles_n) // rows
    rk = tl.arange(0, BLOCK_K)
    if WIDE:
        pid_m, pid_n, rk = pid_m.to(tl.int64), pid_n.to(tl.int64), rk.to(tl.int64)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) int32, or int64 where WIDE
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    m_ok = rm < M
    n_ok = rn < N
    a_ptrs = a_ptr + rm[:, None] * stride_am + rk[None, :] * stride_ak  # (BLOCK_M, BLOCK_K)
    b_ptrs = b_ptr + rk[:, None] * stride_bk + rn[None, :] * stride_bn  # (BLOCK_K, BLOCK_N)
    if WIDE:
        a_step = tl.full((), BLOCK_K, tl.int64) * stride_ak
        b_step = tl.full((), BLOCK_K, tl.int64) * stride_bk
    else:
        a_step = BLOCK_K * stride_ak
        b_step = BLOCK_K * stride_bk
    acc = tl.zeros((BLOCK_M, BLOCK_N), ACC)
    for k in range(0, K, BLOCK_K):
        k_ok = rk < K - k
        a = tl.load(a_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0)
        if UPCAST:
            a = a.to(ACC)
            b = b.to(ACC)
        acc = tl.dot(a, b, acc, input_precision="ieee")
        a_ptrs += a_step
        b_ptrs += b_step
    c_ok = m_ok[:, None] & n_ok[None, :]
    if EPILOGUE != 0:
        pos_ptrs = pos_ptr + rm[:, None] * stride_pm + rn[None, :] * stride_pn
        if EPILOGUE == 1:  # z = acc + bias: the sign mask, and h = z * m
            if HAS_BIAS:
                acc += tl.load(bias_ptr + rn * stride_bias, mask=n_ok, other=0).to(ACC)[None, :]
            positive = acc > 0
            tl.store(pos_ptrs, positive.to(tl.uint8), mask=c_ok)
        else:  # delta = acc * m
            positive = tl.load(pos_ptrs, mask=c_ok, other=0) != 0
        acc = acc * tl.where(positive, tl.load(params_ptr), tl.load(params_ptr + 1))
    offs = rm[:, None] * stride_cm + rn[None, :] * stride_cn
    if STORE_C:
        tl.store(c_ptr + offs, acc.to(c_ptr.dtype.element_ty), mask=c_ok)
    if HAS_C2:
        tl.store(c2_ptr + offs, acc.to(c2_ptr.dtype.element_ty), mask=c_ok)


@triton.jit
def _mlp_first_delta_kernel(w_ptr, pos_ptr, out_ptr, out2_ptr, params_ptr, B, N, stride_w, HAS_MASK: tl.constexpr,
                            HAS_OUT2: tl.constexpr, ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    # out (B, N) contiguous = w[n] (* m[b, n] where HAS_MASK, pos (B, N) a contiguous uint8 view); out2: a second
    # copy where HAS_OUT2. grid (cdiv(B, BLOCK_B) * cdiv(N, BLOCK_N),); params: (gain, gain * negative_slope) in ACC.
    pid = tl.program_id(0)
    tiles_n = tl.cdiv(N, BLOCK_N)
    rb = (pid // tiles_n).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    rn = (pid % tiles_n).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    ok = (rb < B)[:, None] & n_ok[None, :]
    w = tl.load(w_ptr + rn * stride_w, mask=n_ok, other=0).to(ACC)
    offs = rb[:, None] * N + rn[None, :]
    v = tl.broadcast_to(w[None, :], (BLOCK_B, BLOCK_N))
    if HAS_MASK:
        positive = tl.load(pos_ptr + offs, mask=ok, other=0) != 0
        v = v * tl.where(positive, tl.load(params_ptr), tl.load(params_ptr + 1))
    tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=ok)
    if HAS_OUT2:
        tl.store(out2_ptr + offs, v.to(out2_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _mlp_column_sum_kernel(a_ptr, out_ptr, B, N, stride_am, stride_an, ACC: tl.constexpr, BLOCK_B: tl.constexpr,
                           BLOCK_N: tl.constexpr):
    # out (N,) = sum over b of a[b, n]; grid (cdiv(N, BLOCK_N),): each program walks the whole batch
    rb = tl.arange(0, BLOCK_B)
    rn = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    ptrs = a_ptr + rb[:, None].to(tl.int64) * stride_am + rn[None, :] * stride_an
    step = tl.full((), BLOCK_B, tl.int64) * stride_am
    acc = tl.zeros((BLOCK_B, BLOCK_N), ACC)
    for b in range(0, B, BLOCK_B):
        acc += tl.load(ptrs, mask=(rb < B - b)[:, None] & n_ok[None, :], other=0).to(ACC)
        ptrs += step
    tl.store(out_ptr + rn, tl.sum(acc, axis=0).to(out_ptr.dtype.element_ty), mask=n_ok)


# ---------------------------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------------------------

def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _span(t: torch.Tensor) -> int:
    """A bound on the element offsets a matmul computes in t: its extent with a tile's margin past each edge (rows
    and columns past the end are masked, but their offsets and the last pointer step are computed). From 2^31 on,
    the kernel takes int64 offsets (WIDE)."""
    return sum((size + 64) * abs(stride) for size, stride in zip(t.shape, t.stride()))


def _tiles(m: int, n: int, dot: torch.dtype) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K) of a product (M, K) @ (K, N) whose tl.dot runs in ``dot``: a side of 16 for a
    small size (a few samples, a narrow layer), else 64 for float16/bfloat16 (tensor cores, BLOCK_K 32), 32 x 64 for
    float32 (IEEE FMA products: each thread holds whole rows of its A and B slices, so BLOCK_K 16 and half the rows
    keep it below 255 registers without a spill on sm_90) and 32 x 32 for float64 (BLOCK_K 16)."""
    if dot in (torch.float16, torch.bfloat16):
        big_m, big_n, block_k = 64, 64, 32
    elif dot == torch.float32:
        big_m, big_n, block_k = 32, 64, 16
    else:
        big_m, big_n, block_k = 32, 32, 16
    return (16 if m <= 16 else big_m), (16 if n <= 16 else big_n), block_k


def _matmul(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, *, epilogue: int = PLAIN,
            c2: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
            positive: Optional[torch.Tensor] = None, params: Optional[torch.Tensor] = None,
            store_c: bool = True) -> None:
    """c (M, N) = epilogue(a (M, K) @ b (K, N)), any strides; c2 (c's strides): a second copy; positive: the sign
    mask, written (BIAS_ACTIVATION) or read (MASK)."""
    (m, k), n = a.shape, b.shape[1]
    if m == 0 or n == 0:
        return
    acc = acc_tl(c.dtype)
    half = (torch.float16, torch.bfloat16)
    # half tiles go to tl.dot as they are on a GPU; the interpreter's bfloat16 dot is wrong (the kernel object
    # tells: a recorder standing in for it, as resource_report.py's, gets the GPU's code)
    upcast = a.dtype != b.dtype or (a.dtype in half and isinstance(_mlp_matmul_kernel, InterpretedFunction))
    pos = positive.view(torch.uint8) if positive is not None else c
    dot = _acc_dtype(a.dtype) if upcast else a.dtype  # the dtype tl.dot runs in
    block_m, block_n, block_k = _tiles(m, n, dot)
    wide = any(_span(t) >= 2**31 for t in (a, b, c, pos) + ((bias,) if bias is not None else ()))
    grid = (cdiv(m, block_m) * cdiv(n, block_n),)
    _mlp_matmul_kernel[grid](a, b, c, c2 if c2 is not None else c, bias if bias is not None else c, pos,
                             params if params is not None else c, m, n, k, a.stride(0), a.stride(1), b.stride(0),
                             b.stride(1), c.stride(0), c.stride(1), pos.stride(0), pos.stride(1),
                             bias.stride(0) if bias is not None else 0, epilogue, bias is not None, store_c,
                             c2 is not None, upcast, acc, block_m, block_n, block_k, GROUP_M, wide,
                             num_warps=WARPS)


def _first_delta(w_row: torch.Tensor, batch: int, out: torch.Tensor, out2: Optional[torch.Tensor],
                 positive: Optional[torch.Tensor], params: Optional[torch.Tensor]) -> None:
    """out (B, N) contiguous = w_row (N,) broadcast over the batch, times m where a sign mask is given."""
    n = w_row.shape[0]
    if batch == 0 or n == 0:
        return
    grid = (cdiv(batch, ELEMENTWISE_ROWS) * cdiv(n, ELEMENTWISE_COLS),)
    pos = positive.view(torch.uint8) if positive is not None else out
    _mlp_first_delta_kernel[grid](w_row, pos, out, out2 if out2 is not None else out,
                                  params if params is not None else out, batch, n, w_row.stride(0),
                                  positive is not None, out2 is not None, acc_tl(out.dtype), ELEMENTWISE_ROWS,
                                  ELEMENTWISE_COLS, num_warps=WARPS)


def _column_sum(a: torch.Tensor, out: torch.Tensor) -> None:
    """out (N,) = a (B, N).sum(0), any strides of a."""
    batch, n = a.shape
    if n == 0:
        return
    _mlp_column_sum_kernel[(cdiv(n, SUM_COLS),)](a, out, batch, n, a.stride(0), a.stride(1),
                                                       acc_tl(a.dtype), SUM_ROWS, SUM_COLS, num_warps=WARPS)


def _check_sizes(op: str, batch: int, weights: Sequence[torch.Tensor]) -> None:
    check_loop_size(batch, op, "batch sizes")
    for l, w in enumerate(weights):
        check_loop_size(w.shape[1], op, f"feature counts (weights[{l}])")
        check_loop_size(w.shape[0], op, f"feature counts (weights[{l}])")


def mlp_input_gradient_triton(x: torch.Tensor, weights: Sequence[torch.Tensor],
                              biases: Sequence[Optional[torch.Tensor]], negative_slopes: Sequence[float],
                              gains: Sequence[float]) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Triton implementation of ``fastsn::mlp_input_gradient``.

    Args:
        x: (B, H_0), float16/bfloat16/float32/float64, any strides; CUDA (or CPU under TRITON_INTERPRET=1).
        weights: W_l (H_{l+1}, H_l), L >= 1 of them, H_L = 1, x's dtype and device, any strides.
        biases: one per hidden layer (L - 1), each (H_{l+1},) or None.
        negative_slopes, gains: one per hidden layer.

    Returns:
        input_grad (B, H_0), deltas [(B, H_{l+1})], positive [bool (B, H_{l+1})]: contiguous, x's dtype.
    """
    op = "fastsn::mlp_input_gradient_triton"
    check_mlp_input_gradient_args(x, weights, biases, negative_slopes, gains, op=op)
    _check_sizes(op, x.shape[0], weights)
    batch, hidden, dtype, device = x.shape[0], len(weights) - 1, x.dtype, x.device
    scratch = _acc_dtype(dtype) if dtype in (torch.float16, torch.bfloat16) else None  # the chain's dtype if not x's
    input_grad = torch.empty((batch, x.shape[1]), dtype=dtype, device=device)
    deltas = [torch.empty((batch, weights[l].shape[0]), dtype=dtype, device=device) for l in range(hidden)]
    positive = [torch.empty((batch, weights[l].shape[0]), dtype=torch.bool, device=device) for l in range(hidden)]
    if batch == 0:
        return input_grad, deltas, positive
    params = [scalars(x, float(g), float(g) * float(s)) for s, g in zip(negative_slopes, gains)]
    with on_device(x):
        if hidden == 0:
            _first_delta(weights[0][0], batch, input_grad, None, None, None)
            return input_grad, deltas, positive
        h = x
        for l in range(hidden):  # the sign masks (and the activations the next layer needs)
            w = weights[l]
            last = l == hidden - 1
            out = h if last else torch.empty((batch, w.shape[0]), dtype=_acc_dtype(dtype), device=device)
            _matmul(h, w.t(), out, epilogue=BIAS_ACTIVATION, bias=biases[l], positive=positive[l], params=params[l],
                    store_c=not last)
            h = out
        del h
        # the chain: d = W_{L-1}[0, :] broadcast; delta_l = d * m_l, d = delta_l W_l
        d = deltas[-1] if scratch is None else torch.empty_like(deltas[-1], dtype=scratch)
        _first_delta(weights[-1][0], batch, d, None if scratch is None else deltas[-1], positive[-1],
                     params[-1])
        for l in range(hidden - 1, 0, -1):
            nxt = deltas[l - 1] if scratch is None else torch.empty_like(deltas[l - 1], dtype=scratch)
            _matmul(d, weights[l], nxt, epilogue=MASK, c2=None if scratch is None else deltas[l - 1],
                    positive=positive[l - 1], params=params[l - 1])
            d = nxt
        _matmul(d, weights[0], input_grad)
    return input_grad, deltas, positive


def mlp_input_gradient_backward_triton(grad: torch.Tensor, weights: Sequence[torch.Tensor],
                                       deltas: Sequence[torch.Tensor], positive: Sequence[torch.Tensor],
                                       negative_slopes: Sequence[float], gains: Sequence[float]) -> list[torch.Tensor]:
    """Triton implementation of ``fastsn::mlp_input_gradient_backward``: a_0 = grad; per hidden layer
    dW_l = delta_l^T a_l, a_{l+1} = (a_l W_l^T) * m_l; dW_{L-1} = 1^T a_{L-1}.

    Args:
        grad: (B, H_0), any strides; weights, deltas, positive, negative_slopes, gains: as the forward's (any
            strides).

    Returns:
        [dW_l, the shape of weights[l]]: contiguous, grad's dtype.
    """
    op = "fastsn::mlp_input_gradient_backward_triton"
    check_mlp_input_gradient_backward_args(grad, weights, deltas, positive, negative_slopes, gains, op=op)
    _check_sizes(op, grad.shape[0], weights)
    batch, hidden, dtype, device = grad.shape[0], len(weights) - 1, grad.dtype, grad.device
    if batch == 0:
        return [torch.zeros(tuple(w.shape), dtype=dtype, device=device) for w in weights]
    dws = [torch.empty(tuple(w.shape), dtype=dtype, device=device) for w in weights]
    params = [scalars(grad, float(g), float(g) * float(s)) for s, g in zip(negative_slopes, gains)]
    with on_device(grad):
        a = grad
        for l in range(hidden):
            _matmul(deltas[l].t(), a, dws[l])
            nxt = torch.empty((batch, weights[l].shape[0]), dtype=_acc_dtype(dtype), device=device)
            _matmul(a, weights[l].t(), nxt, epilogue=MASK, positive=positive[l], params=params[l])
            a = nxt
        _column_sum(a, dws[-1].view(-1))
    return dws


torch.library.register_kernel("fastsn::mlp_input_gradient_triton", ("cuda", "cpu"))(mlp_input_gradient_triton)
torch.library.register_kernel("fastsn::mlp_input_gradient_backward_triton", ("cuda", "cpu"))(
    mlp_input_gradient_backward_triton)
