// Shared by the CPU and CUDA mlp_input_gradient kernels: the argument checks (every message names its argument).
//
// The network (fastsn/ops/mlp_input_gradient.py): L >= 1 linear layers W_l (H_{l+1}, H_l), H_0 = x's features and
// H_L = 1, each but the last followed by gain_l * leaky_relu(., negative_slope_l) after an optional bias b_l. The op
// returns g = d sum_i D(x_i) / dx (B, H_0) and, for its backward, per hidden layer l < L - 1 the masked delta
// (B, H_{l+1}) and the sign mask z_l > 0 (bool, B x H_{l+1}) of the layer's pre-activation z_l.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/List.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include "common/checks.h"

namespace fastsn {

inline void check_same_dtype_device(const at::Tensor& t, const at::Tensor& like, const char* op, const char* arg,
                                    int64_t index, const char* like_name) {
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, "(): argument '", arg, "[", index, "]' must have the dtype "
              "of '", like_name, "' (", like.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), op, "(): argument '", arg, "[", index, "]' must be on the device of '",
              like_name, "' (", like.device(), "), got ", t.device());
}

// weights: W_l (H_{l+1}, H_l) chained from `features` inputs to one output; slopes and gains: one per hidden layer
inline void check_mlp_layers(const char* op, int64_t features, const at::Tensor& like, const char* like_name,
                             at::TensorList weights, c10::ArrayRef<double> negative_slopes,
                             c10::ArrayRef<double> gains) {
  const int64_t layers = static_cast<int64_t>(weights.size());
  TORCH_CHECK(layers >= 1, op, "(): argument 'weights' must hold at least one layer");
  int64_t in = features;
  for (int64_t l = 0; l < layers; ++l) {
    const at::Tensor& w = weights[l];
    TORCH_CHECK(w.dim() == 2, op, "(): argument 'weights[", l, "]' must be 2-D (out_features, in_features), got "
                "shape ", w.sizes());
    TORCH_CHECK(w.size(1) == in, op, "(): argument 'weights[", l, "]' must have ", in, " input features (",
                l == 0 ? "x's features" : "the previous layer's outputs", "), got shape ", w.sizes());
    check_same_dtype_device(w, like, op, "weights", l, like_name);
    in = w.size(0);
  }
  TORCH_CHECK(in == 1, op, "(): argument 'weights[", layers - 1, "]' must have 1 output feature (one score per "
              "sample), got shape ", weights[layers - 1].sizes());
  TORCH_CHECK(static_cast<int64_t>(negative_slopes.size()) == layers - 1, op, "(): argument 'negative_slopes' must "
              "hold one slope per hidden layer (", layers - 1, "), got ", negative_slopes.size());
  TORCH_CHECK(static_cast<int64_t>(gains.size()) == layers - 1, op, "(): argument 'gains' must hold one gain per "
              "hidden layer (", layers - 1, "), got ", gains.size());
}

inline void check_mlp_input_gradient_args(const at::Tensor& x, at::TensorList weights,
                                          const c10::List<c10::optional<at::Tensor>>& biases,
                                          c10::ArrayRef<double> negative_slopes, c10::ArrayRef<double> gains) {
  const char* op = "fastsn::mlp_input_gradient";
  check_floating(x, op, "x");
  TORCH_CHECK(x.dim() == 2, op, "(): argument 'x' must be 2-D (batch, features), got shape ", x.sizes());
  check_mlp_layers(op, x.size(1), x, "x", weights, negative_slopes, gains);
  const int64_t hidden = static_cast<int64_t>(weights.size()) - 1;
  TORCH_CHECK(static_cast<int64_t>(biases.size()) == hidden, op, "(): argument 'biases' must hold one entry (a "
              "tensor or None) per hidden layer (", hidden, "), got ", biases.size());
  for (int64_t l = 0; l < hidden; ++l) {
    const c10::optional<at::Tensor> b = biases.get(l);
    if (!b.has_value()) continue;
    TORCH_CHECK(b->dim() == 1 && b->size(0) == weights[l].size(0), op, "(): argument 'biases[", l, "]' must have "
                "shape (", weights[l].size(0), ",), got ", b->sizes());
    check_same_dtype_device(*b, x, op, "biases", l, "x");
  }
}

inline void check_mlp_input_gradient_backward_args(const at::Tensor& grad, at::TensorList weights,
                                                   at::TensorList deltas, at::TensorList positive,
                                                   c10::ArrayRef<double> negative_slopes,
                                                   c10::ArrayRef<double> gains) {
  const char* op = "fastsn::mlp_input_gradient_backward";
  check_floating(grad, op, "grad");
  TORCH_CHECK(grad.dim() == 2, op, "(): argument 'grad' must be 2-D (batch, features), got shape ", grad.sizes());
  check_mlp_layers(op, grad.size(1), grad, "grad", weights, negative_slopes, gains);
  const int64_t hidden = static_cast<int64_t>(weights.size()) - 1;
  TORCH_CHECK(static_cast<int64_t>(deltas.size()) == hidden && static_cast<int64_t>(positive.size()) == hidden, op,
              "(): arguments 'deltas' and 'positive' must hold one tensor per hidden layer (", hidden, "), got ",
              deltas.size(), " and ", positive.size());
  for (int64_t l = 0; l < hidden; ++l) {
    const std::vector<int64_t> shape{grad.size(0), weights[l].size(0)};
    TORCH_CHECK(deltas[l].sizes() == c10::IntArrayRef(shape), op, "(): argument 'deltas[", l, "]' must have shape ",
                c10::IntArrayRef(shape), ", got ", deltas[l].sizes());
    check_same_dtype_device(deltas[l], grad, op, "deltas", l, "grad");
    TORCH_CHECK(positive[l].sizes() == c10::IntArrayRef(shape), op, "(): argument 'positive[", l, "]' must have "
                "shape ", c10::IntArrayRef(shape), ", got ", positive[l].sizes());
    TORCH_CHECK(positive[l].scalar_type() == at::kBool, op, "(): argument 'positive[", l, "]' must be bool, got ",
                positive[l].scalar_type());
    TORCH_CHECK(positive[l].device() == grad.device(), op, "(): argument 'positive[", l, "]' must be on the device "
                "of 'grad' (", grad.device(), "), got ", positive[l].device());
  }
}

}  // namespace fastsn
