// fastsn::bias_leaky_relu and its backward, CUDA kernels: grid-stride elementwise passes over dense memory
// (contiguous, or channels-last kept as it is where the pass is flat: see elementwise_format),
// in opmath (float for float16/bfloat16), on the current stream under a device guard.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>

#include "common/bias_leaky_relu.h"
#include "common/checks.h"
#include "common/cuda_grid.cuh"
#include "common/cuda_platform.cuh"

namespace fastsn {
namespace {

constexpr int kThreads = 256;

// index_t: 32-bit when n < 2^31 (the channel's division is far cheaper than a 64-bit one), else 64-bit
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
bias_leaky_relu_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ bias, index_t n,
                       index_t channels, index_t inner, acc_t slope, acc_t gain, scalar_t* __restrict__ y) {
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    acc_t v = static_cast<acc_t>(x[i]);
    if (bias) v += static_cast<acc_t>(bias[(i / inner) % channels]);
    y[i] = static_cast<scalar_t>((v > 0 ? v : v * slope) * gain);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
bias_leaky_relu_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ y, int64_t n,
                                acc_t up, acc_t down, scalar_t* __restrict__ dx) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    dx[i] = static_cast<scalar_t>(static_cast<acc_t>(grad[i]) * (static_cast<acc_t>(y[i]) > 0 ? up : down));
  }
}

at::Tensor bias_leaky_relu_cuda(const at::Tensor& x, const c10::optional<at::Tensor>& bias, int64_t dim,
                                double negative_slope, double gain) {
  check_device(x, kKernelDevice, "fastsn::bias_leaky_relu", "x");
  BiasLeakyReluShape s = check_bias_leaky_relu_args(x, bias, dim, negative_slope, gain);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::MemoryFormat format = forward_format(x, bias.has_value(), dim);
  if (format != at::MemoryFormat::Contiguous) s.inner = 1;  // channels last: the channel is the innermost index
  const at::Tensor xc = x.contiguous(format);
  const at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty_like(xc, format);
  const int64_t n = xc.numel();
  if (n == 0) return y;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "bias_leaky_relu_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* b = bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr;
    const int blocks = grid_stride_blocks(n, kThreads, x.get_device());
    // the grid-stride index reaches n + stride: 32-bit only with that much headroom
    if (n + static_cast<int64_t>(blocks) * kThreads < (int64_t{1} << 31)) {
      FASTSN_LAUNCH(blocks, kThreads, 0, stream, bias_leaky_relu_kernel<scalar_t, acc_t, int32_t>)(
          xc.const_data_ptr<scalar_t>(), b, static_cast<int32_t>(n), static_cast<int32_t>(s.channels),
          static_cast<int32_t>(s.inner), static_cast<acc_t>(negative_slope), static_cast<acc_t>(gain),
          y.mutable_data_ptr<scalar_t>());
    } else {
      FASTSN_LAUNCH(blocks, kThreads, 0, stream, bias_leaky_relu_kernel<scalar_t, acc_t, int64_t>)(
          xc.const_data_ptr<scalar_t>(), b, n, s.channels, s.inner, static_cast<acc_t>(negative_slope),
          static_cast<acc_t>(gain), y.mutable_data_ptr<scalar_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

at::Tensor bias_leaky_relu_backward_cuda(const at::Tensor& grad, const at::Tensor& y, double negative_slope,
                                         double gain) {
  check_device(grad, kKernelDevice, "fastsn::bias_leaky_relu_backward", "grad");
  check_bias_leaky_relu_backward_args(grad, y, negative_slope, gain);
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::MemoryFormat format = backward_format(grad, y);
  const at::Tensor gc = grad.contiguous(format), yc = y.contiguous(format);
  at::Tensor dx = at::empty_like(gc, format);
  const int64_t n = gc.numel();
  if (n == 0) return dx;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(grad.get_device()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gc.scalar_type(), "bias_leaky_relu_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int blocks = grid_stride_blocks(n, kThreads, grad.get_device());
    FASTSN_LAUNCH(blocks, kThreads, 0, stream, bias_leaky_relu_backward_kernel<scalar_t, acc_t>)(
        gc.const_data_ptr<scalar_t>(), yc.const_data_ptr<scalar_t>(), n, static_cast<acc_t>(gain),
        static_cast<acc_t>(gain * negative_slope), dx.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

}  // namespace

FASTSN_CUDA_LIBRARY_IMPL(m) {
  m.impl("bias_leaky_relu", &bias_leaky_relu_cuda);
  m.impl("bias_leaky_relu_backward", &bias_leaky_relu_backward_cuda);
}

}  // namespace fastsn
