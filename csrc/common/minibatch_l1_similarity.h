// Shared by the CPU and CUDA minibatch_l1_similarity kernels: the argument checks.
// M (N, B, C): N samples, B kernels, C dims per kernel; o (N, B); grad of o (N, B).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "common/checks.h"

namespace fastsn {

inline void check_minibatch_l1_similarity_args(const at::Tensor& m, const char* op) {
  check_floating(m, op, "M");
  TORCH_CHECK(m.dim() == 3, op, "(): argument 'M' must be 3-D (N, B, C), got shape ", m.sizes());
}

inline void check_minibatch_l1_similarity_backward_args(const at::Tensor& grad, const at::Tensor& m, const char* op) {
  check_minibatch_l1_similarity_args(m, op);
  check_floating(grad, op, "grad");
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == m.size(0) && grad.size(1) == m.size(1), op,
              "(): argument 'grad' must have shape (", m.size(0), ", ", m.size(1), ") (M.shape[:2]), got ",
              grad.sizes());
  TORCH_CHECK(grad.scalar_type() == m.scalar_type(), op, "(): argument 'grad' must have the dtype of 'M' (",
              m.scalar_type(), "), got ", grad.scalar_type());
  TORCH_CHECK(grad.device() == m.device(), op, "(): argument 'grad' must be on the device of 'M' (", m.device(), ")");
}

}  // namespace fastsn
