// Shared by the CPU and CUDA bias_leaky_relu kernels: the argument checks and the (outer, C, inner) view.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include "common/checks.h"

namespace fastsn {

// x in forward_format's layout, seen as (outer, channels, inner) around `dim`: the channel of flat index i is
// (i / inner) % channels (inner 1 for channels last, whose channels are innermost).
struct BiasLeakyReluShape {
  int64_t channels = 1;
  int64_t inner = 1;
};

// negative_slope >= 0 and gain > 0: the gradient reads the mask from y, and y > 0 must mean x + bias > 0.
inline void check_slope_and_gain(const char* op, double negative_slope, double gain) {
  TORCH_CHECK(negative_slope >= 0, op, "(): argument 'negative_slope' must be non-negative (the gradient reads the "
              "mask from y), got ", negative_slope);
  TORCH_CHECK(gain > 0, op, "(): argument 'gain' must be positive, got ", gain);
}

inline BiasLeakyReluShape check_bias_leaky_relu_args(const at::Tensor& x, const c10::optional<at::Tensor>& bias,
                                                     int64_t dim, double negative_slope, double gain) {
  const char* op = "fastsn::bias_leaky_relu";
  check_floating(x, op, "x");
  check_slope_and_gain(op, negative_slope, gain);
  BiasLeakyReluShape s;
  if (!bias.has_value()) return s;
  const at::Tensor& b = *bias;
  TORCH_CHECK(x.dim() >= 1, op, "(): argument 'x' must have at least 1 dimension when 'bias' is given");
  TORCH_CHECK(dim >= 0 && dim < x.dim(), op, "(): argument 'dim' must be in [0, ", x.dim() - 1, "], got ", dim);
  TORCH_CHECK(b.dim() == 1 && b.numel() == x.size(dim), op, "(): argument 'bias' must have shape (", x.size(dim),
              ",) (x.shape[dim]), got ", b.sizes());
  TORCH_CHECK(b.scalar_type() == x.scalar_type(), op, "(): argument 'bias' must have the dtype of 'x' (",
              x.scalar_type(), "), got ", b.scalar_type());
  TORCH_CHECK(b.device() == x.device(), op, "(): argument 'bias' must be on the device of 'x' (", x.device(), ")");
  s.channels = x.size(dim);
  for (int64_t d = dim + 1; d < x.dim(); ++d) s.inner *= x.size(d);
  return s;
}

// The layout an elementwise pass keeps: a channels-last (4-D) or channels-last-3d (5-D) dense tensor stays so, as
// torch's elementwise ops keep it; anything else runs, and returns, contiguous. (fastsn/ops/bias_leaky_relu.py's
// elementwise_format is the Python twin, for the Triton kernels and the fake kernels.)
inline at::MemoryFormat elementwise_format(const at::Tensor& t) {
  if (t.is_contiguous()) return at::MemoryFormat::Contiguous;
  if (t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast)) return at::MemoryFormat::ChannelsLast;
  if (t.dim() == 5 && t.is_contiguous(at::MemoryFormat::ChannelsLast3d)) return at::MemoryFormat::ChannelsLast3d;
  return at::MemoryFormat::Contiguous;
}

// Forward: x's layout without a bias (the pass is flat), and with a bias along dim 1 (channels last: the channel of
// flat index i is i % C, inner 1); else contiguous (the channel of flat index i is (i / inner) % C). Backward: grad's
// layout where y has it too, else contiguous.
inline at::MemoryFormat forward_format(const at::Tensor& x, bool has_bias, int64_t dim) {
  const at::MemoryFormat format = elementwise_format(x);
  return !has_bias || dim == 1 ? format : at::MemoryFormat::Contiguous;
}

inline at::MemoryFormat backward_format(const at::Tensor& grad, const at::Tensor& y) {
  const at::MemoryFormat format = elementwise_format(grad);
  return y.is_contiguous(format) ? format : at::MemoryFormat::Contiguous;
}

inline void check_bias_leaky_relu_backward_args(const at::Tensor& grad, const at::Tensor& y, double negative_slope,
                                                double gain) {
  const char* op = "fastsn::bias_leaky_relu_backward";
  check_floating(grad, op, "grad");
  check_slope_and_gain(op, negative_slope, gain);
  TORCH_CHECK(grad.sizes() == y.sizes(), op, "(): arguments 'grad' and 'y' must have one shape, got ", grad.sizes(),
              " and ", y.sizes());
  TORCH_CHECK(grad.scalar_type() == y.scalar_type(), op, "(): arguments 'grad' and 'y' must have one dtype, got ",
              grad.scalar_type(), " and ", y.scalar_type());
  TORCH_CHECK(grad.device() == y.device(), op, "(): arguments 'grad' and 'y' must be on one device");
}

}  // namespace fastsn
