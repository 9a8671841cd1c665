// fastsn::bias_leaky_relu and its backward, C++ CPU kernels: one pass each over contiguous memory, in opmath
// (float for float16/bfloat16), split across threads with at::parallel_for.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "common/bias_leaky_relu.h"
#include "common/checks.h"

namespace fastsn {
namespace {

constexpr int64_t kGrainSize = 32768;  // elements per task: below this, threading costs more than it saves

at::Tensor bias_leaky_relu_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& bias, int64_t dim,
                               double negative_slope, double gain) {
  check_device(x, c10::DeviceType::CPU, "fastsn::bias_leaky_relu", "x");
  const BiasLeakyReluShape s = check_bias_leaky_relu_args(x, bias, dim, gain);
  const at::Tensor xc = x.contiguous();
  const at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty_like(xc, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "bias_leaky_relu_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* __restrict__ px = xc.const_data_ptr<scalar_t>();
    const scalar_t* __restrict__ pb = bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* __restrict__ py = y.mutable_data_ptr<scalar_t>();
    const acc_t slope = static_cast<acc_t>(negative_slope), g = static_cast<acc_t>(gain);
    at::parallel_for(0, xc.numel(), kGrainSize, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        acc_t v = static_cast<acc_t>(px[i]);
        if (pb) v += static_cast<acc_t>(pb[(i / s.inner) % s.channels]);
        py[i] = static_cast<scalar_t>((v > 0 ? v : v * slope) * g);
      }
    });
  });
  return y;
}

at::Tensor bias_leaky_relu_backward_cpu(const at::Tensor& grad, const at::Tensor& y, double negative_slope,
                                        double gain) {
  check_device(grad, c10::DeviceType::CPU, "fastsn::bias_leaky_relu_backward", "grad");
  check_bias_leaky_relu_backward_args(grad, y, gain);
  const at::Tensor gc = grad.contiguous(), yc = y.contiguous();
  at::Tensor dx = at::empty_like(gc, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gc.scalar_type(), "bias_leaky_relu_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* __restrict__ pg = gc.const_data_ptr<scalar_t>();
    const scalar_t* __restrict__ py = yc.const_data_ptr<scalar_t>();
    scalar_t* __restrict__ pd = dx.mutable_data_ptr<scalar_t>();
    const acc_t up = static_cast<acc_t>(gain), down = static_cast<acc_t>(gain * negative_slope);
    at::parallel_for(0, gc.numel(), kGrainSize, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        // y > 0 exactly where x + bias > 0 (gain > 0); at 0 the slope, as torch's leaky_relu
        pd[i] = static_cast<scalar_t>(static_cast<acc_t>(pg[i]) * (static_cast<acc_t>(py[i]) > 0 ? up : down));
      }
    });
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsn, CPU, m) {
  m.impl("bias_leaky_relu", &bias_leaky_relu_cpu);
  m.impl("bias_leaky_relu_backward", &bias_leaky_relu_backward_cpu);
}

}  // namespace fastsn
