// fastsn::interpolate and its backward, CUDA kernels: grid-stride elementwise passes over (B, F) contiguous memory
// (the sample of flat index k is k / F), in opmath (float for float16/bfloat16), on the current stream under a
// device guard.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "common/checks.h"
#include "common/cuda_grid.cuh"
#include "common/cuda_platform.cuh"
#include "common/interpolate.h"

namespace fastsn {
namespace {

constexpr int kThreads = 256;

// index_t: 32-bit when the grid-stride index stays below 2^31 (the division by F is far cheaper), else 64-bit
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
interpolate_kernel(const scalar_t* __restrict__ real, const scalar_t* __restrict__ fake,
                   const acc_t* __restrict__ eps, index_t n, index_t features, scalar_t* __restrict__ out) {
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t k = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += stride) {
    const acc_t e = eps[k / features];
    out[k] = static_cast<scalar_t>(e * static_cast<acc_t>(real[k]) + (acc_t(1) - e) * static_cast<acc_t>(fake[k]));
  }
}

template <typename scalar_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
interpolate_backward_kernel(const scalar_t* __restrict__ grad, const acc_t* __restrict__ eps, index_t n,
                            index_t features, scalar_t* __restrict__ grad_real, scalar_t* __restrict__ grad_fake) {
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t k = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += stride) {
    const acc_t e = eps[k / features], g = static_cast<acc_t>(grad[k]);
    grad_real[k] = static_cast<scalar_t>(e * g);
    grad_fake[k] = static_cast<scalar_t>((acc_t(1) - e) * g);
  }
}

bool fits_int32(int64_t n, int blocks) { return n + static_cast<int64_t>(blocks) * kThreads < (int64_t{1} << 31); }

at::Tensor interpolate_cuda(const at::Tensor& real, const at::Tensor& fake, const at::Tensor& eps) {
  check_device(real, kKernelDevice, "fastsn::interpolate", "real");
  check_interpolate_args(real, fake, eps);
  const c10::cuda::CUDAGuard guard(real.device());
  const at::Tensor r = real.contiguous(), f = fake.contiguous();
  at::Tensor out = at::empty_like(r, at::MemoryFormat::Contiguous);
  const int64_t n = r.numel();
  if (n == 0) return out;
  const int64_t features = n / r.size(0);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(real.get_device()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.scalar_type(), "interpolate_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor e = eps.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const int blocks = grid_stride_blocks(n, kThreads, real.get_device());
    if (fits_int32(n, blocks)) {
      FASTSN_LAUNCH(blocks, kThreads, 0, stream, interpolate_kernel<scalar_t, acc_t, int32_t>)(
          r.const_data_ptr<scalar_t>(), f.const_data_ptr<scalar_t>(), e.const_data_ptr<acc_t>(),
          static_cast<int32_t>(n), static_cast<int32_t>(features), out.mutable_data_ptr<scalar_t>());
    } else {
      FASTSN_LAUNCH(blocks, kThreads, 0, stream, interpolate_kernel<scalar_t, acc_t, int64_t>)(
          r.const_data_ptr<scalar_t>(), f.const_data_ptr<scalar_t>(), e.const_data_ptr<acc_t>(), n, features,
          out.mutable_data_ptr<scalar_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> interpolate_backward_cuda(const at::Tensor& grad, const at::Tensor& eps) {
  check_device(grad, kKernelDevice, "fastsn::interpolate_backward", "grad");
  check_interpolate_backward_args(grad, eps);
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor g = grad.contiguous();
  at::Tensor grad_real = at::empty_like(g, at::MemoryFormat::Contiguous);
  at::Tensor grad_fake = at::empty_like(g, at::MemoryFormat::Contiguous);
  const int64_t n = g.numel();
  if (n == 0) return {grad_real, grad_fake};
  const int64_t features = n / g.size(0);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(grad.get_device()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "interpolate_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor e = eps.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const int blocks = grid_stride_blocks(n, kThreads, grad.get_device());
    if (fits_int32(n, blocks)) {
      FASTSN_LAUNCH(blocks, kThreads, 0, stream, interpolate_backward_kernel<scalar_t, acc_t, int32_t>)(
          g.const_data_ptr<scalar_t>(), e.const_data_ptr<acc_t>(), static_cast<int32_t>(n),
          static_cast<int32_t>(features), grad_real.mutable_data_ptr<scalar_t>(),
          grad_fake.mutable_data_ptr<scalar_t>());
    } else {
      FASTSN_LAUNCH(blocks, kThreads, 0, stream, interpolate_backward_kernel<scalar_t, acc_t, int64_t>)(
          g.const_data_ptr<scalar_t>(), e.const_data_ptr<acc_t>(), n, features,
          grad_real.mutable_data_ptr<scalar_t>(), grad_fake.mutable_data_ptr<scalar_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_real, grad_fake};
}

}  // namespace

FASTSN_CUDA_LIBRARY_IMPL(m) {
  m.impl("interpolate", &interpolate_cuda);
  m.impl("interpolate_backward", &interpolate_backward_cuda);
}

}  // namespace fastsn
