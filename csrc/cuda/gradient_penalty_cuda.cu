// fastsn::gradient_penalty_head, CUDA kernels, on the current stream under a device guard. With enough samples to
// fill the GPU, one CTA per sample (a row of grad, (B, N)) reduces its squared norm, computes phi and writes its row
// of d penalty / d grad (the row still in L2). With few long rows (R1 on a few large images: one CTA per row would
// use a few SMs), each row is cut into chunks, one CTA each: one kernel writes the chunks' sums of squares, a second
// sums its row's (in chunk order) and writes its chunk. phi of every sample goes to a (B,) buffer that a one-CTA
// kernel sums in order. Every order is fixed by the shape and the SM count (deterministic).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>

#include "common/checks.h"
#include "common/cuda_grid.cuh"
#include "common/cuda_platform.cuh"
#include "common/gradient_penalty.h"

namespace fastsn {
namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ T block_sum(T x) {  // every thread gets the sum over the CTA
  __shared__ T partial[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_down_sync(0xffffffffu, x, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) partial[warp] = x;
  __syncthreads();
  if (warp == 0) {
    x = lane < kThreads / 32 ? partial[lane] : T(0);
    for (int offset = 16; offset > 0; offset /= 2) x += __shfl_down_sync(0xffffffffu, x, offset);
    if (lane == 0) partial[0] = x;
  }
  __syncthreads();
  return partial[0];
}

constexpr int64_t kMinChunk = 16 * kThreads;  // elements a CTA of the split path reads at least
constexpr int64_t kMaxChunks = 1024;          // chunks per row at most (grid.y; each CTA re-sums its row's partials)

template <typename scalar_t, typename acc_t>
__device__ acc_t sum_squares(const scalar_t* __restrict__ v, int64_t len) {  // the CTA's sum, every thread gets it
  acc_t sumsq = 0;
  for (int64_t j = threadIdx.x; j < len; j += kThreads) {
    const acc_t x = static_cast<acc_t>(v[j]);
    sumsq += x * x;
  }
  return block_sum(sumsq);
}

template <typename scalar_t, typename acc_t>
__device__ void scale_run(const scalar_t* __restrict__ g, acc_t factor, scalar_t* __restrict__ out, int64_t len) {
  for (int64_t j = threadIdx.x; j < len; j += kThreads) {
    out[j] = static_cast<scalar_t>(factor * static_cast<acc_t>(g[j]));
  }
}

// grid (B): CTA i handles row i
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
penalty_rows_kernel(const scalar_t* __restrict__ grad, int64_t features, int64_t mode, acc_t center, acc_t scale,
                    scalar_t* __restrict__ d_grad, acc_t* __restrict__ phi) {
  const int64_t first = static_cast<int64_t>(blockIdx.x) * features;
  acc_t p = 0, k = 0;
  penalty_terms<acc_t>(sum_squares<scalar_t, acc_t>(grad + first, features), mode, center, &p, &k);
  scale_run<scalar_t, acc_t>(grad + first, scale * k, d_grad + first, features);
  if (threadIdx.x == 0) phi[blockIdx.x] = p;
}

__device__ inline int64_t chunk_length(int64_t features, int64_t chunk, int64_t start) {  // the last one is short
  return features - start < chunk ? features - start : chunk;
}

// grid (B, chunks): partial[i, c] = the sum of squares of elements [c * chunk, (c + 1) * chunk) of row i
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
chunk_sums_kernel(const scalar_t* __restrict__ grad, int64_t features, int64_t chunk, acc_t* __restrict__ partial) {
  const int64_t start = static_cast<int64_t>(blockIdx.y) * chunk;
  const acc_t s = sum_squares<scalar_t, acc_t>(grad + static_cast<int64_t>(blockIdx.x) * features + start,
                                               chunk_length(features, chunk, start));
  if (threadIdx.x == 0) partial[static_cast<int64_t>(blockIdx.x) * gridDim.y + blockIdx.y] = s;
}

// grid (B, chunks): every CTA of row i sums the row's partial sums alike (the same threads, the same order), then
// writes its chunk of d penalty / d grad; chunk 0 writes phi_i
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
chunk_scale_kernel(const scalar_t* __restrict__ grad, const acc_t* __restrict__ partial, int64_t features,
                   int64_t chunk, int64_t mode, acc_t center, acc_t scale, scalar_t* __restrict__ d_grad,
                   acc_t* __restrict__ phi) {
  const acc_t* row_partial = partial + static_cast<int64_t>(blockIdx.x) * gridDim.y;
  acc_t s = 0;
  for (unsigned q = threadIdx.x; q < gridDim.y; q += kThreads) s += row_partial[q];
  acc_t p = 0, k = 0;
  penalty_terms<acc_t>(block_sum(s), mode, center, &p, &k);
  const int64_t start = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * features + start;
  scale_run<scalar_t, acc_t>(grad + first, scale * k, d_grad + first, chunk_length(features, chunk, start));
  if (blockIdx.y == 0 && threadIdx.x == 0) phi[blockIdx.x] = p;
}

// Elements per CTA for rows of `features`: the whole row while `batch` rows fill the GPU (4 CTAs per SM) or the row
// is short, else about 4 * SMs / batch chunks per row (a multiple of kThreads, kMinChunk at least).
int64_t row_chunk(int64_t batch, int64_t features, int device) {
  const int64_t target = 4 * static_cast<int64_t>(sm_count(device));
  const int64_t chunks = std::min({(target + batch - 1) / batch, features / kMinChunk, kMaxChunks});
  if (chunks <= 1) return features;
  const int64_t per_chunk = (features + chunks - 1) / chunks;
  return (per_chunk + kThreads - 1) / kThreads * kThreads;
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
penalty_mean_kernel(const acc_t* __restrict__ phi, int64_t batch, acc_t scale, acc_t* __restrict__ penalty) {
  acc_t total = 0;
  for (int64_t i = threadIdx.x; i < batch; i += kThreads) total += phi[i];
  total = block_sum(total);
  if (threadIdx.x == 0) *penalty = total * scale;
}

std::tuple<at::Tensor, at::Tensor> gradient_penalty_head_cuda(const at::Tensor& grad, int64_t mode, double weight,
                                                              double center) {
  check_device(grad, kKernelDevice, "fastsn::gradient_penalty_head", "grad");
  check_gradient_penalty_head_args(grad, mode);
  TORCH_CHECK(grad.size(0) <= 2147483647, "fastsn::gradient_penalty_head(): argument 'grad' has more than 2^31 - 1 "
              "samples");
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor g = grad.contiguous();  // (B, N)
  const int64_t batch = g.size(0), features = g.size(1);
  at::Tensor d_grad = at::empty_like(g, at::MemoryFormat::Contiguous);
  const auto acc_type = g.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor penalty = at::empty({}, g.options().dtype(acc_type));
  at::Tensor phi = at::empty({batch}, g.options().dtype(acc_type));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(grad.get_device()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "gradient_penalty_head_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t scale = static_cast<acc_t>(weight / static_cast<double>(batch));
    const int64_t chunk = row_chunk(batch, features, grad.get_device());
    if (chunk >= features) {
      FASTSN_LAUNCH(static_cast<unsigned>(batch), kThreads, 0, stream, penalty_rows_kernel<scalar_t, acc_t>)(
          g.const_data_ptr<scalar_t>(), features, mode, static_cast<acc_t>(center), scale,
          d_grad.mutable_data_ptr<scalar_t>(), phi.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      const int64_t chunks = (features + chunk - 1) / chunk;  // <= kMaxChunks
      at::Tensor partial = at::empty({batch, chunks}, g.options().dtype(acc_type));
      const dim3 grid(static_cast<unsigned>(batch), static_cast<unsigned>(chunks));
      FASTSN_LAUNCH(grid, kThreads, 0, stream, chunk_sums_kernel<scalar_t, acc_t>)(
          g.const_data_ptr<scalar_t>(), features, chunk, partial.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      FASTSN_LAUNCH(grid, kThreads, 0, stream, chunk_scale_kernel<scalar_t, acc_t>)(
          g.const_data_ptr<scalar_t>(), partial.const_data_ptr<acc_t>(), features, chunk, mode,
          static_cast<acc_t>(center), scale, d_grad.mutable_data_ptr<scalar_t>(), phi.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    FASTSN_LAUNCH(1, kThreads, 0, stream, penalty_mean_kernel<acc_t>)(phi.const_data_ptr<acc_t>(), batch, scale,
                                                                      penalty.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {penalty, d_grad};
}

}  // namespace

FASTSN_CUDA_LIBRARY_IMPL(m) {
  m.impl("gradient_penalty_head", &gradient_penalty_head_cuda);
}

}  // namespace fastsn
