// fastsn::minibatch_stddev and its backward, CUDA kernels, in opmath (float for float16/bfloat16), on the current
// stream under a device guard. Forward: one block per statistic (m, f) reduces the group std over its K positions,
// then one elementwise pass writes cat([x, stats broadcast], 1). Backward: one block per statistic sums its upstream
// gradient (Gamma), then one thread per position of a group recomputes mean and std over the G samples and writes
// their dx. See common/minibatch_stddev.h for the layout.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/checks.h"
#include "common/cuda_grid.cuh"
#include "common/cuda_platform.cuh"
#include "common/minibatch_stddev.h"

namespace fastsn {
namespace {

constexpr int kThreads = 256;

template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v, acc_t* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) shared[threadIdx.x] += shared[threadIdx.x + half];
    __syncthreads();
  }
  return shared[0];
}

// mean and 1 / sqrt(var + eps) over the G samples at position p of statistic (m, f)
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void group_moments(const scalar_t* __restrict__ x, const MinibatchStddevShape& s,
                                              int64_t m, int64_t f, int64_t p, acc_t& mean, acc_t& inv_std) {
  const int64_t offset = m * s.c * s.s + f * s.k + p, step = s.m * s.c * s.s;  // sample g * M + m
  acc_t sum = 0;
  for (int64_t g = 0; g < s.groups; ++g) sum += static_cast<acc_t>(x[offset + g * step]);
  mean = sum / static_cast<acc_t>(s.groups);
  acc_t sq = 0;
  for (int64_t g = 0; g < s.groups; ++g) {
    const acc_t d = static_cast<acc_t>(x[offset + g * step]) - mean;
    sq += d * d;
  }
  inv_std = acc_t(1) / sqrt(sq / static_cast<acc_t>(s.groups) + static_cast<acc_t>(kMinibatchStddevEps));
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
stddev_stats_kernel(const scalar_t* __restrict__ x, MinibatchStddevShape s, acc_t* __restrict__ stat) {
  __shared__ acc_t shared[kThreads];
  const int64_t m = blockIdx.x / s.f, f = blockIdx.x % s.f;
  acc_t local = 0;
  for (int64_t p = threadIdx.x; p < s.k; p += kThreads) {
    acc_t mean, inv_std;
    group_moments(x, s, m, f, p, mean, inv_std);
    local += acc_t(1) / inv_std;
  }
  const acc_t total = block_sum(local, shared);
  if (threadIdx.x == 0) stat[blockIdx.x] = total / static_cast<acc_t>(s.k);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
stddev_concat_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ stat, MinibatchStddevShape s,
                     int64_t total, scalar_t* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  const int64_t row = (s.c + s.f) * s.s;  // one sample of out
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; idx < total; idx += stride) {
    const int64_t n = idx / row, r = idx % row, ch = r / s.s;
    out[idx] = ch < s.c ? x[n * s.c * s.s + r] : static_cast<scalar_t>(stat[(n % s.m) * s.f + (ch - s.c)]);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
stddev_gamma_kernel(const scalar_t* __restrict__ grad, MinibatchStddevShape s, acc_t* __restrict__ gamma) {
  __shared__ acc_t shared[kThreads];
  const int64_t m = blockIdx.x / s.f, f = blockIdx.x % s.f;
  acc_t local = 0;
  for (int64_t e = threadIdx.x; e < s.groups * s.s; e += kThreads) {
    const int64_t g = e / s.s, q = e % s.s;
    local += static_cast<acc_t>(grad[((g * s.m + m) * (s.c + s.f) + s.c + f) * s.s + q]);
  }
  const acc_t total = block_sum(local, shared);
  if (threadIdx.x == 0) gamma[blockIdx.x] = total / static_cast<acc_t>(s.k * s.groups);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
stddev_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                       const acc_t* __restrict__ gamma, MinibatchStddevShape s, int64_t total,
                       scalar_t* __restrict__ dx) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; idx < total; idx += stride) {
    const int64_t p = idx % s.k, mf = idx / s.k, m = mf / s.f, f = mf % s.f;  // idx over (M, F, K)
    acc_t mean, inv_std;
    group_moments(x, s, m, f, p, mean, inv_std);
    const acc_t scale = gamma[mf] * inv_std;  // Gamma / (K G std): d stat / d x_g = (x_g - mean) / (K G std)
    for (int64_t g = 0; g < s.groups; ++g) {
      const int64_t n = g * s.m + m;
      const int64_t xi = n * s.c * s.s + f * s.k + p;
      const int64_t gi = n * (s.c + s.f) * s.s + f * s.k + p;
      dx[xi] = static_cast<scalar_t>(static_cast<acc_t>(grad[gi]) + scale * (static_cast<acc_t>(x[xi]) - mean));
    }
  }
}

std::vector<int64_t> output_shape(const at::Tensor& x, const MinibatchStddevShape& s) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape[1] = s.c + s.f;
  return shape;
}

at::Tensor minibatch_stddev_cuda(const at::Tensor& x, int64_t group_size, int64_t num_channels) {
  const char* op = "fastsn::minibatch_stddev";
  check_device(x, kKernelDevice, op, "x");
  const MinibatchStddevShape s = check_minibatch_stddev_args(x, group_size, num_channels, op);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty(output_shape(x, s), x.options());
  const int64_t total = out.numel();
  TORCH_CHECK(s.m * s.f < (int64_t{1} << 31), op, "(): argument 'x' gives too many statistics (N / G * num_channels)");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "minibatch_stddev_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor stat = at::empty({s.m * s.f}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    FASTSN_LAUNCH(static_cast<unsigned>(s.m * s.f), kThreads, 0, stream, stddev_stats_kernel<scalar_t, acc_t>)(
        xc.const_data_ptr<scalar_t>(), s, stat.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int blocks = grid_stride_blocks(total, kThreads, x.get_device());
    FASTSN_LAUNCH(blocks, kThreads, 0, stream, stddev_concat_kernel<scalar_t, acc_t>)(
        xc.const_data_ptr<scalar_t>(), stat.const_data_ptr<acc_t>(), s, total, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor minibatch_stddev_backward_cuda(const at::Tensor& grad, const at::Tensor& x, int64_t group_size,
                                          int64_t num_channels) {
  const char* op = "fastsn::minibatch_stddev_backward";
  check_device(x, kKernelDevice, op, "x");
  const MinibatchStddevShape s = check_minibatch_stddev_backward_args(grad, x, group_size, num_channels, op);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), gc = grad.contiguous();
  at::Tensor dx = at::empty(xc.sizes(), x.options());
  const int64_t total = s.m * s.f * s.k;  // one thread per position of a group
  TORCH_CHECK(s.m * s.f < (int64_t{1} << 31), op, "(): argument 'x' gives too many statistics (N / G * num_channels)");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "minibatch_stddev_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor gamma = at::empty({s.m * s.f}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    FASTSN_LAUNCH(static_cast<unsigned>(s.m * s.f), kThreads, 0, stream, stddev_gamma_kernel<scalar_t, acc_t>)(
        gc.const_data_ptr<scalar_t>(), s, gamma.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int blocks = grid_stride_blocks(total, kThreads, x.get_device());
    FASTSN_LAUNCH(blocks, kThreads, 0, stream, stddev_backward_kernel<scalar_t, acc_t>)(
        gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(), gamma.const_data_ptr<acc_t>(), s, total,
        dx.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

}  // namespace

FASTSN_CUDA_LIBRARY_IMPL(m) {
  m.impl("minibatch_stddev", &minibatch_stddev_cuda);
  m.impl("minibatch_stddev_backward", &minibatch_stddev_backward_cuda);
}

}  // namespace fastsn
