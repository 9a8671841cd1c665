// fastsn::bias_leaky_relu and its backward, C++ CPU kernels: one pass each over dense memory (contiguous, or
// channels-last kept as it is where the pass is flat: see elementwise_format), in opmath
// (float for float16/bfloat16), split across threads with at::parallel_for.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "common/bias_leaky_relu.h"
#include "common/checks.h"
#include "cpu/vectorize.h"

namespace fastsn {
namespace {

constexpr int64_t kGrainSize = 32768;  // elements per task: below this, threading costs more than it saves

// The hot loops, each compiled for AVX2 as well as the baseline (FASTSN_SIMD_CLONES) and given raw __restrict__
// pointers: written inline in the parallel_for lambdas (pointers captured by reference, which a store may alias,
// SSE2 only) they ran at half torch's leaky_relu speed (2M floats: 314 us against 141 us, two threads).
//
// leaky_relu(v) * gain, branch-free: max and min pick between v and a constant, which vectorizes (a compare and a
// blend, or maxps/minps). Forms that select between v and slope * v, or between the factors 1 and slope, stay a
// branch (under -ftrapping-math GCC may not compute a product that the branch skips), and on random signs it
// mispredicts half the time: 2M floats took 6.2 ms instead of 0.13 ms. maxps gives +0 for max(-0, 0), so the sign
// is copied from v (bit operations): with slope >= 0 and gain > 0, torch's result has v's sign, zeros included.
// Exact: v > 0 gives v, else slope * v (-0 stays -0); NaN stays NaN.
template <typename acc_t>
FASTSN_ALWAYS_INLINE acc_t activate(acc_t v, acc_t slope, acc_t gain) {
  return std::copysign((std::max(v, acc_t(0)) + slope * std::min(v, acc_t(0))) * gain, v);
}

// y[k] = activate(x[k] + b): a run of elements that share one bias value (b = -0 without a bias)
template <typename scalar_t, typename acc_t>
FASTSN_SIMD_CLONES void activate_run(const scalar_t* __restrict__ x, acc_t b, acc_t slope, acc_t gain,
                                     scalar_t* __restrict__ y, int64_t n) {
  for (int64_t k = 0; k < n; ++k) y[k] = static_cast<scalar_t>(activate(static_cast<acc_t>(x[k]) + b, slope, gain));
}

// y[r, c] = activate(x[r, c] + bias[c]) for `rows` rows of `channels` elements (C last, e.g. a Linear layer's)
template <typename scalar_t, typename acc_t>
FASTSN_SIMD_CLONES void activate_rows(const scalar_t* __restrict__ x, const scalar_t* __restrict__ bias, acc_t slope,
                                      acc_t gain, scalar_t* __restrict__ y, int64_t rows, int64_t channels) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < channels; ++c) {
      y[r * channels + c] = static_cast<scalar_t>(
          activate(static_cast<acc_t>(x[r * channels + c]) + static_cast<acc_t>(bias[c]), slope, gain));
    }
  }
}

// dx[k] = grad[k] * (y[k] > 0 ? gain : gain * slope): y > 0 exactly where x + bias > 0 (gain > 0); at 0 the
// slope, as torch's leaky_relu
template <typename scalar_t, typename acc_t>
FASTSN_SIMD_CLONES void backward_run(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ y, acc_t up,
                                     acc_t down, scalar_t* __restrict__ dx, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    dx[k] = static_cast<scalar_t>(static_cast<acc_t>(grad[k]) * (static_cast<acc_t>(y[k]) > acc_t(0) ? up : down));
  }
}

at::Tensor bias_leaky_relu_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& bias, int64_t dim,
                               double negative_slope, double gain) {
  check_device(x, c10::DeviceType::CPU, "fastsn::bias_leaky_relu", "x");
  BiasLeakyReluShape s = check_bias_leaky_relu_args(x, bias, dim, negative_slope, gain);
  const at::MemoryFormat format = forward_format(x, bias.has_value(), dim);
  if (format != at::MemoryFormat::Contiguous) s.inner = 1;  // channels last: the channel is the innermost index
  const at::Tensor xc = x.contiguous(format);
  const at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty_like(xc, format);
  if (xc.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "bias_leaky_relu_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* px = xc.const_data_ptr<scalar_t>();
    const scalar_t* pb = bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* py = y.mutable_data_ptr<scalar_t>();
    const acc_t slope = static_cast<acc_t>(negative_slope), g = static_cast<acc_t>(gain);
    if (!pb) {
      at::parallel_for(0, xc.numel(), kGrainSize, [&](int64_t begin, int64_t end) {
        // b = -0, the additive identity: x + (+0) would turn -0 into +0
        activate_run<scalar_t, acc_t>(px + begin, -acc_t(0), slope, g, py + begin, end - begin);
      });
      return;
    }
    if (s.inner == 1) {
      // (outer, C) with C last, e.g. a Linear layer's (N, C): rows of C elements, the bias read as a vector
      const int64_t channels = s.channels, rows = xc.numel() / channels;
      at::parallel_for(0, rows, std::max<int64_t>(1, kGrainSize / channels), [&](int64_t begin, int64_t end) {
        activate_rows<scalar_t, acc_t>(px + begin * channels, pb, slope, g, py + begin * channels, end - begin,
                                       channels);
      });
      return;
    }
    // rows of `inner` contiguous elements share one bias value: (outer * C) rows, the channel advancing by one per
    // row, so the inner loop has no division and vectorizes
    const int64_t inner = s.inner, rows = xc.numel() / s.inner;
    at::parallel_for(0, rows, std::max<int64_t>(1, kGrainSize / inner), [&](int64_t begin, int64_t end) {
      int64_t channel = begin % s.channels;
      for (int64_t r = begin; r < end; ++r) {
        activate_run<scalar_t, acc_t>(px + r * inner, static_cast<acc_t>(pb[channel]), slope, g, py + r * inner,
                                      inner);
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
  const at::MemoryFormat format = backward_format(grad, y);
  const at::Tensor gc = grad.contiguous(format), yc = y.contiguous(format);
  at::Tensor dx = at::empty_like(gc, format);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gc.scalar_type(), "bias_leaky_relu_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* pg = gc.const_data_ptr<scalar_t>();
    const scalar_t* py = yc.const_data_ptr<scalar_t>();
    scalar_t* pd = dx.mutable_data_ptr<scalar_t>();
    const acc_t up = static_cast<acc_t>(gain), down = static_cast<acc_t>(gain * negative_slope);
    at::parallel_for(0, gc.numel(), kGrainSize, [&](int64_t begin, int64_t end) {
      backward_run<scalar_t, acc_t>(pg + begin, py + begin, up, down, pd + begin, end - begin);
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
