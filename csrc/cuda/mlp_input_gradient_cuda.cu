// fastsn::mlp_input_gradient and its backward, CUDA: the products through at::mm / at::addmm (cuBLAS, in the dtype:
// float16/bfloat16 accumulate in float32), each followed by one fused grid-stride pass of ours over its (B, H)
// result in opmath (float for float16/bfloat16), rounded once where stored:
//   forward    sign mask + activation in place of z (hidden layers but the last); for the last hidden layer the sign
//              mask and the first delta w_{L-1} * m (the broadcast row never materialized) in one pass; then the
//              mask multiply after each product of the backward chain;
//   backward   the mask multiply after each product, and dW_{L-1} = the column sums of a (B, H_{L-1}), by row
//              chunks whose partial sums a second kernel adds in chunk order (deterministic for a shape and GPU).
// Everything on the current stream under a device guard.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/cuda_grid.cuh"
#include "common/cuda_platform.cuh"
#include "common/mlp_input_gradient.h"

namespace fastsn {
namespace {

constexpr int kThreads = 256;

// The leaky ReLU's derivative factors m = z > 0 ? up : down, gain * slope taken in double (as torch's Python scalars)
template <typename acc_t>
struct MaskFactors {
  acc_t up, down;
  MaskFactors(double negative_slope, double gain)
      : up(static_cast<acc_t>(gain)), down(static_cast<acc_t>(gain * negative_slope)) {}
};

// z (n) in place: positive = z > 0 (a NaN is not: its factor is down, as torch's leaky_relu gradient), z = z * m,
// the next layer's input h
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
sign_mask_kernel(scalar_t* __restrict__ z, int64_t n, acc_t up, acc_t down, bool* __restrict__ positive) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const acc_t v = static_cast<acc_t>(z[i]);
    const bool p = v > acc_t(0);
    positive[i] = p;
    z[i] = static_cast<scalar_t>(v * (p ? up : down));
  }
}

// t (n) in place: t = t * m from the sign mask
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
mask_multiply_kernel(scalar_t* __restrict__ t, const bool* __restrict__ positive, int64_t n, acc_t up, acc_t down) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    t[i] = static_cast<scalar_t>(static_cast<acc_t>(t[i]) * (positive[i] ? up : down));
  }
}

// delta (B, H) = w (H,) broadcast over the rows * m, from the last hidden layer's z (B, H), writing its sign mask
// too; without z (a network of one layer) the plain broadcast, g itself. index_t: 32-bit when n < 2^31 (the column's
// division is far cheaper than a 64-bit one), else 64-bit
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
row_delta_kernel(const scalar_t* __restrict__ z, const scalar_t* __restrict__ w, index_t n, index_t cols, acc_t up,
                 acc_t down, bool* __restrict__ positive, scalar_t* __restrict__ delta) {
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    acc_t m = acc_t(1);
    if (z) {
      const bool p = static_cast<acc_t>(z[i]) > acc_t(0);
      positive[i] = p;
      m = p ? up : down;
    }
    delta[i] = static_cast<scalar_t>(static_cast<acc_t>(w[i % cols]) * m);
  }
}

// Column sums of a (rows, cols): a CTA is 8 rows x 32 columns of threads (a warp reads 32 neighbours of a row),
// grid (ceil(cols / 32), chunks); CTA (t, c) sums rows [c * chunk, (c + 1) * chunk) of columns [32 t, 32 t + 32),
// each thread every 8th row, then its column's 8 sums in order. One chunk: the sum goes to out (scalar_t); more:
// to partial (chunks, cols) in acc_t, which column_partials_kernel adds.
constexpr int kSumColumns = 32;
constexpr int kSumRows = kThreads / kSumColumns;
constexpr int64_t kMinChunkRows = 4 * kSumRows;  // rows a CTA of the split path sums at least

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
column_sum_kernel(const scalar_t* __restrict__ a, int64_t rows, int64_t cols, int64_t chunk,
                  acc_t* __restrict__ partial, scalar_t* __restrict__ out) {
  __shared__ acc_t sums[kSumRows][kSumColumns];
  const int tx = threadIdx.x % kSumColumns, ty = threadIdx.x / kSumColumns;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kSumColumns + tx;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t end = rows - begin < chunk ? rows : begin + chunk;  // the last chunk is short
  acc_t s = acc_t(0);
  if (col < cols) {
    for (int64_t r = begin + ty; r < end; r += kSumRows) s += static_cast<acc_t>(a[r * cols + col]);
  }
  sums[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && col < cols) {
    acc_t total = acc_t(0);
    for (int k = 0; k < kSumRows; ++k) total += sums[k][tx];
    if (partial) {
      partial[static_cast<int64_t>(blockIdx.y) * cols + col] = total;
    } else {
      out[col] = static_cast<scalar_t>(total);
    }
  }
}

// out (cols) = the sums over chunks of partial (chunks, cols), in chunk order
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
column_partials_kernel(const acc_t* __restrict__ partial, int64_t chunks, int64_t cols, scalar_t* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; col < cols; col += stride) {
    acc_t total = acc_t(0);
    for (int64_t c = 0; c < chunks; ++c) total += partial[c * cols + col];
    out[col] = static_cast<scalar_t>(total);
  }
}

// Rows per CTA of the column sum: all of them while the column tiles fill the GPU (4 CTAs per SM) or the rows are
// few, else about 4 * SMs / tiles chunks (a multiple of 8 rows, kMinChunkRows at least).
int64_t column_chunk(int64_t rows, int64_t cols, int device) {
  const int64_t tiles = (cols + kSumColumns - 1) / kSumColumns;
  const int64_t target = 4 * static_cast<int64_t>(sm_count(device));
  const int64_t chunks = std::min((target + tiles - 1) / tiles, rows / kMinChunkRows);
  if (chunks <= 1) return rows;
  const int64_t per_chunk = (rows + chunks - 1) / chunks;
  return (per_chunk + kSumRows - 1) / kSumRows * kSumRows;
}

// ---------------------------------------------------------------------------------------------------------------
// launches (n == 0: none, a grid of 0 blocks is an error)
// ---------------------------------------------------------------------------------------------------------------

template <typename scalar_t>
void sign_mask(at::Tensor& z, at::Tensor& positive, double negative_slope, double gain, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = z.numel();
  if (n == 0) return;
  const MaskFactors<acc_t> m(negative_slope, gain);
  FASTSN_LAUNCH(grid_stride_blocks(n, kThreads, z.get_device()), kThreads, 0, stream,
                sign_mask_kernel<scalar_t, acc_t>)(z.mutable_data_ptr<scalar_t>(), n, m.up, m.down,
                                                   positive.mutable_data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void mask_multiply(at::Tensor& t, const at::Tensor& positive, double negative_slope, double gain,
                   cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = t.numel();
  if (n == 0) return;
  const MaskFactors<acc_t> m(negative_slope, gain);
  FASTSN_LAUNCH(grid_stride_blocks(n, kThreads, t.get_device()), kThreads, 0, stream,
                mask_multiply_kernel<scalar_t, acc_t>)(t.mutable_data_ptr<scalar_t>(),
                                                       positive.const_data_ptr<bool>(), n, m.up, m.down);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// delta (B, H) from w (H,): with z, its sign mask into positive and the masked rows; without, the broadcast rows
template <typename scalar_t>
void row_delta(const at::Tensor& z, const at::Tensor& w, double negative_slope, double gain, at::Tensor& positive,
               at::Tensor& delta, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = delta.numel(), cols = delta.size(1);
  if (n == 0) return;
  const MaskFactors<acc_t> m(negative_slope, gain);
  const scalar_t* pz = z.defined() ? z.const_data_ptr<scalar_t>() : nullptr;
  bool* pp = positive.defined() ? positive.mutable_data_ptr<bool>() : nullptr;
  const int blocks = grid_stride_blocks(n, kThreads, delta.get_device());
  // the grid-stride index reaches n + stride: 32-bit only with that much headroom
  if (n + static_cast<int64_t>(blocks) * kThreads < (int64_t{1} << 31)) {
    FASTSN_LAUNCH(blocks, kThreads, 0, stream, row_delta_kernel<scalar_t, acc_t, int32_t>)(
        pz, w.const_data_ptr<scalar_t>(), static_cast<int32_t>(n), static_cast<int32_t>(cols), m.up, m.down, pp,
        delta.mutable_data_ptr<scalar_t>());
  } else {
    FASTSN_LAUNCH(blocks, kThreads, 0, stream, row_delta_kernel<scalar_t, acc_t, int64_t>)(
        pz, w.const_data_ptr<scalar_t>(), n, cols, m.up, m.down, pp, delta.mutable_data_ptr<scalar_t>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// (1, cols): the column sums of a contiguous a (rows, cols); zeros for rows == 0
template <typename scalar_t>
at::Tensor column_sums(const at::Tensor& a, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = a.size(0), cols = a.size(1);
  at::Tensor out = at::empty({1, cols}, a.options());
  if (cols == 0) return out;
  const int64_t chunk = column_chunk(rows, cols, a.get_device());
  const int64_t chunks = chunk >= rows ? 1 : (rows + chunk - 1) / chunk;  // <= 4 * SMs
  const dim3 grid(static_cast<unsigned>((cols + kSumColumns - 1) / kSumColumns), static_cast<unsigned>(chunks));
  at::Tensor partial;
  if (chunks > 1) partial = at::empty({chunks, cols}, a.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  FASTSN_LAUNCH(grid, kThreads, 0, stream, column_sum_kernel<scalar_t, acc_t>)(
      a.const_data_ptr<scalar_t>(), rows, cols, chunk, chunks > 1 ? partial.mutable_data_ptr<acc_t>() : nullptr,
      out.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (chunks > 1) {
    FASTSN_LAUNCH(grid_stride_blocks(cols, kThreads, a.get_device()), kThreads, 0, stream,
                  column_partials_kernel<scalar_t, acc_t>)(partial.const_data_ptr<acc_t>(), chunks, cols,
                                                           out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// ops
// ---------------------------------------------------------------------------------------------------------------

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> mlp_input_gradient_cuda(
    const at::Tensor& x, at::TensorList weights, const c10::List<c10::optional<at::Tensor>>& biases,
    c10::ArrayRef<double> negative_slopes, c10::ArrayRef<double> gains) {
  check_device(x, kKernelDevice, "fastsn::mlp_input_gradient", "x");
  check_mlp_input_gradient_args(x, weights, biases, negative_slopes, gains);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t batch = x.size(0), hidden = static_cast<int64_t>(weights.size()) - 1;
  std::vector<at::Tensor> deltas(hidden), positive(hidden);
  at::Tensor g;
  const at::Tensor last = weights[hidden].contiguous();  // (1, H_{L-1}): the row w_{L-1} the chain starts from
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mlp_input_gradient_cuda", [&] {
    if (hidden == 0) {  // D(x) = x w_0^T: g is w_0 broadcast (B, H_0)
      g = at::empty({batch, last.size(1)}, x.options());
      at::Tensor none;
      row_delta<scalar_t>(at::Tensor(), last, 0.0, 1.0, none, g, stream);
      return;
    }
    // forward through the hidden layers: z_l = h_l W_l^T + b_l (B, H_{l+1}), a fresh contiguous product (h_0 = x
    // in any strides: at::mm copies what cuBLAS cannot take), then one pass: the sign mask and h_{l+1} = z_l * m_l
    // in place; for the last hidden layer instead of h (which the last layer, not computed, would take) the first
    // delta_{L-2} = w_{L-1} * m_{L-2}
    at::Tensor h = x;
    for (int64_t l = 0; l < hidden; ++l) {
      const at::Tensor wt = weights[l].t();  // (H_l, H_{l+1})
      const c10::optional<at::Tensor> b = biases.get(l);
      at::Tensor z = b.has_value() ? at::addmm(*b, h, wt) : at::mm(h, wt);
      positive[l] = at::empty(z.sizes(), x.options().dtype(at::kBool));
      if (l < hidden - 1) {
        sign_mask<scalar_t>(z, positive[l], negative_slopes[l], gains[l], stream);
        h = z;
      } else {
        deltas[l] = at::empty_like(z, at::MemoryFormat::Contiguous);
        row_delta<scalar_t>(z, last, negative_slopes[l], gains[l], positive[l], deltas[l], stream);
      }
    }
    // backward chain: d_l = delta_l W_l (B, H_l); delta_{l-1} = d_l * m_{l-1} in place; g = d_0
    at::Tensor d = at::mm(deltas[hidden - 1], weights[hidden - 1]);
    for (int64_t l = hidden - 2; l >= 0; --l) {
      mask_multiply<scalar_t>(d, positive[l], negative_slopes[l], gains[l], stream);
      deltas[l] = d;
      d = at::mm(deltas[l], weights[l]);
    }
    g = d;
  });
  return {g, deltas, positive};
}

std::vector<at::Tensor> mlp_input_gradient_backward_cuda(const at::Tensor& grad, at::TensorList weights,
                                                         at::TensorList deltas, at::TensorList positive,
                                                         c10::ArrayRef<double> negative_slopes,
                                                         c10::ArrayRef<double> gains) {
  check_device(grad, kKernelDevice, "fastsn::mlp_input_gradient_backward", "grad");
  check_mlp_input_gradient_backward_args(grad, weights, deltas, positive, negative_slopes, gains);
  const c10::cuda::CUDAGuard guard(grad.device());
  const int64_t hidden = static_cast<int64_t>(weights.size()) - 1;
  std::vector<at::Tensor> dws(hidden + 1);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(grad.get_device()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "mlp_input_gradient_backward_cuda",
                                  [&] {
    // a_0 = G (any strides); dW_l = delta_l^T a_l (H_{l+1}, H_l); a_{l+1} = (a_l W_l^T) * m_l (B, H_{l+1}), a
    // fresh contiguous product masked in place
    at::Tensor a = grad;
    for (int64_t l = 0; l < hidden; ++l) {
      dws[l] = at::mm(deltas[l].t(), a);
      at::Tensor next = at::mm(a, weights[l].t());
      mask_multiply<scalar_t>(next, positive[l].contiguous(), negative_slopes[l], gains[l], stream);
      a = next;
    }
    dws[hidden] = column_sums<scalar_t>(a.contiguous(), stream);  // dW_{L-1} = 1^T a_{L-1} (1, H_{L-1})
  });
  return dws;
}

}  // namespace

FASTSN_CUDA_LIBRARY_IMPL(m) {
  m.impl("mlp_input_gradient", &mlp_input_gradient_cuda);
  m.impl("mlp_input_gradient_backward", &mlp_input_gradient_backward_cuda);
}

}  // namespace fastsn
