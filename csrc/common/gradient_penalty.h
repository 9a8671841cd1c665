// Shared by the CPU and CUDA gradient penalty heads: the argument checks and phi'(n) / n per sample.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cmath>

#include "common/checks.h"

namespace fastsn {

enum PenaltyMode : int64_t { kTwoSided = 0, kOneSided = 1, kSquared = 2 };

inline void check_gradient_penalty_head_args(const at::Tensor& grad, int64_t mode) {
  const char* op = "fastsn::gradient_penalty_head";
  check_floating(grad, op, "grad");
  TORCH_CHECK(grad.dim() == 2, op, "(): argument 'grad' must be 2-D (batch, features), got shape ", grad.sizes());
  TORCH_CHECK(grad.size(0) > 0, op, "(): argument 'grad' must hold at least one sample, got shape ", grad.sizes());
  TORCH_CHECK(mode >= kTwoSided && mode <= kSquared, op, "(): argument 'mode' must be 0, 1 or 2, got ", mode);
}

// phi(n) of one sample from its squared norm, and k = phi'(n) / n, so that d phi / d g = k * g (k = 0 at n = 0,
// as torch's norm backward; a NaN norm gives a NaN k, so the whole row's gradient is NaN, as through autograd).
// One-sided: gap < 0 is clamped, NaN kept.
template <typename acc_t>
C10_HOST_DEVICE inline void penalty_terms(acc_t sumsq, int64_t mode, acc_t center, acc_t* phi, acc_t* k) {
  if (mode == kSquared) {
    *phi = sumsq;
    *k = acc_t(2);
    return;
  }
  const acc_t n = sqrt(sumsq);
  acc_t gap = n - center;
  if (mode == kOneSided && gap < 0) gap = 0;
  *phi = gap * gap;
  *k = n == acc_t(0) ? acc_t(0) : acc_t(2) * gap / n;
}

}  // namespace fastsn
