// fastsn::gradient_penalty_head, CUDA kernel: one CTA per sample (a row of grad) reduces its squared norm, computes
// phi and writes its row of d penalty / d grad; phi of every sample goes to a (B,) buffer that a second one-CTA
// kernel sums in order (deterministic), on the current stream under a device guard.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include "common/checks.h"
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

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
penalty_rows_kernel(const scalar_t* __restrict__ grad, int64_t features, int64_t mode, acc_t center, acc_t scale,
                    scalar_t* __restrict__ d_grad, acc_t* __restrict__ phi) {
  const scalar_t* row = grad + static_cast<int64_t>(blockIdx.x) * features;
  acc_t sumsq = 0;
  for (int64_t j = threadIdx.x; j < features; j += kThreads) {
    const acc_t v = static_cast<acc_t>(row[j]);
    sumsq += v * v;
  }
  sumsq = block_sum(sumsq);
  acc_t p = 0, k = 0;
  penalty_terms<acc_t>(sumsq, mode, center, &p, &k);
  const acc_t factor = scale * k;
  scalar_t* out = d_grad + static_cast<int64_t>(blockIdx.x) * features;
  for (int64_t j = threadIdx.x; j < features; j += kThreads) out[j] = static_cast<scalar_t>(factor * static_cast<acc_t>(row[j]));
  if (threadIdx.x == 0) phi[blockIdx.x] = p;
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
  check_device(grad, c10::DeviceType::CUDA, "fastsn::gradient_penalty_head", "grad");
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
    penalty_rows_kernel<scalar_t, acc_t><<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(
        g.const_data_ptr<scalar_t>(), features, mode, static_cast<acc_t>(center), scale,
        d_grad.mutable_data_ptr<scalar_t>(), phi.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    penalty_mean_kernel<acc_t><<<1, kThreads, 0, stream>>>(phi.const_data_ptr<acc_t>(), batch, scale,
                                                           penalty.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {penalty, d_grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsn, CUDA, m) {
  m.impl("gradient_penalty_head", &gradient_penalty_head_cuda);
}

}  // namespace fastsn
