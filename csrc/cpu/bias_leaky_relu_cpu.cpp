// fastsn::bias_leaky_relu and its backward, C++ CPU kernels: one pass each over contiguous memory, in opmath
// (float for float16/bfloat16), split across threads with at::parallel_for.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>

#include "common/bias_leaky_relu.h"
#include "common/checks.h"

namespace fastsn {
namespace {

constexpr int64_t kGrainSize = 32768;  // elements per task: below this, threading costs more than it saves

at::Tensor bias_leaky_relu_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& bias, int64_t dim,
                               double negative_slope, double gain) {
  check_device(x, c10::DeviceType::CPU, "fastsn::bias_leaky_relu", "x");
  const BiasLeakyReluShape s = check_bias_leaky_relu_args(x, bias, dim, negative_slope, gain);
  const at::Tensor xc = x.contiguous();
  const at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty_like(xc, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "bias_leaky_relu_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* __restrict__ px = xc.const_data_ptr<scalar_t>();
    const scalar_t* __restrict__ pb = bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* __restrict__ py = y.mutable_data_ptr<scalar_t>();
    const acc_t slope = static_cast<acc_t>(negative_slope), g = static_cast<acc_t>(gain);
    // branch-free (max + slope * min): a data-dependent branch on random signs mispredicts half the time and
    // measured 8x slower than torch; this form vectorizes. Exact: v > 0 gives v, else slope * v; NaN stays NaN.
    const auto activate = [slope, g](acc_t v) {
      return static_cast<scalar_t>((std::max(v, acc_t(0)) + slope * std::min(v, acc_t(0))) * g);
    };
    if (xc.numel() == 0) return;
    if (!pb) {
      at::parallel_for(0, xc.numel(), kGrainSize, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) py[i] = activate(static_cast<acc_t>(px[i]));
      });
      return;
    }
    if (s.inner == 1) {
      // (outer, C) with C last, e.g. a Linear layer's (N, C): rows of C elements, the bias read as a vector
      const int64_t channels = s.channels, rows = xc.numel() / channels;
      at::parallel_for(0, rows, std::max<int64_t>(1, kGrainSize / channels), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const scalar_t* __restrict__ xr = px + r * channels;
          scalar_t* __restrict__ yr = py + r * channels;
          for (int64_t c = 0; c < channels; ++c) yr[c] = activate(static_cast<acc_t>(xr[c]) + static_cast<acc_t>(pb[c]));
        }
      });
      return;
    }
    // rows of `inner` contiguous elements share one bias value: (outer * C) rows, the channel advancing by one per
    // row, so the inner loop has no division and vectorizes
    const int64_t inner = s.inner, rows = xc.numel() / s.inner;
    at::parallel_for(0, rows, std::max<int64_t>(1, kGrainSize / inner), [&](int64_t begin, int64_t end) {
      int64_t channel = begin % s.channels;
      for (int64_t r = begin; r < end; ++r) {
        const acc_t b = static_cast<acc_t>(pb[channel]);
        const scalar_t* __restrict__ xr = px + r * inner;
        scalar_t* __restrict__ yr = py + r * inner;
        for (int64_t k = 0; k < inner; ++k) yr[k] = activate(static_cast<acc_t>(xr[k]) + b);
        if (++channel == s.channels) channel = 0;
      }
    });
  });
  return y;
}

at::Tensor bias_leaky_relu_backward_cpu(const at::Tensor& grad, const at::Tensor& y, double negative_slope,
                                        double gain) {
  check_device(grad, c10::DeviceType::CPU, "fastsn::bias_leaky_relu_backward", "grad");
  check_bias_leaky_relu_backward_args(grad, y, negative_slope, gain);
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
        // y > 0 exactly where x + bias > 0 (gain > 0); at 0 the slope, as torch's leaky_relu; branch-free
        const acc_t positive = static_cast<acc_t>(static_cast<acc_t>(py[i]) > 0);
        pd[i] = static_cast<scalar_t>(static_cast<acc_t>(pg[i]) * (positive * up + (1 - positive) * down));
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
