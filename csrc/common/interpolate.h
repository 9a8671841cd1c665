// Shared by the CPU and CUDA interpolate kernels: the argument checks. real, fake and grad are seen as (B, F)
// (F: the product of every non-batch dimension); eps (B,) holds each sample's factor.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "common/checks.h"

namespace fastsn {

inline void check_interpolate_eps(const at::Tensor& eps, const at::Tensor& like, const char* op, const char* arg) {
  check_floating(eps, op, "eps");
  TORCH_CHECK(eps.dim() == 1 && eps.size(0) == like.size(0), op, "(): argument 'eps' must have shape (",
              like.size(0), ",) (one factor per sample of '", arg, "'), got ", eps.sizes());
  TORCH_CHECK(eps.device() == like.device(), op, "(): argument 'eps' must be on the device of '", arg, "' (",
              like.device(), "), got ", eps.device());
}

inline void check_interpolate_args(const at::Tensor& real, const at::Tensor& fake, const at::Tensor& eps) {
  const char* op = "fastsn::interpolate";
  check_floating(real, op, "real");
  TORCH_CHECK(real.dim() >= 1, op, "(): argument 'real' must have a batch dimension, got a 0-d tensor");
  TORCH_CHECK(fake.sizes() == real.sizes(), op, "(): argument 'fake' must have the shape of 'real' (", real.sizes(),
              "), got ", fake.sizes());
  TORCH_CHECK(fake.scalar_type() == real.scalar_type(), op, "(): argument 'fake' must have the dtype of 'real' (",
              real.scalar_type(), "), got ", fake.scalar_type());
  TORCH_CHECK(fake.device() == real.device(), op, "(): argument 'fake' must be on the device of 'real' (",
              real.device(), "), got ", fake.device());
  check_interpolate_eps(eps, real, op, "real");
}

inline void check_interpolate_backward_args(const at::Tensor& grad, const at::Tensor& eps) {
  const char* op = "fastsn::interpolate_backward";
  check_floating(grad, op, "grad");
  TORCH_CHECK(grad.dim() >= 1, op, "(): argument 'grad' must have a batch dimension, got a 0-d tensor");
  check_interpolate_eps(eps, grad, op, "grad");
}

}  // namespace fastsn
