// Shared by the CPU and CUDA minibatch_stddev kernels: the argument checks and the group layout.
// x (N, C, *spatial) seen as (N, C, S); groups of G samples n = g * M + m (g < G, m < M = N / G), F feature groups
// of C / F channels: the statistic of (m, f) averages, over the K = (C / F) * S positions of feature group f, the
// standard deviation over the group's G samples.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <vector>

#include "common/checks.h"

namespace fastsn {

struct MinibatchStddevShape {
  int64_t n = 0;       // samples
  int64_t c = 0;       // channels of x
  int64_t s = 1;       // spatial positions per channel (product of x.shape[2:])
  int64_t groups = 1;  // G, samples per group
  int64_t m = 0;       // M = N / G: sample n is row n % M of group n / M
  int64_t f = 1;       // F, feature groups (the appended channels)
  int64_t k = 0;       // (C / F) * S, positions averaged per statistic
};

constexpr double kMinibatchStddevEps = 1e-8;  // std = sqrt(var + eps), as StyleGAN

inline MinibatchStddevShape check_minibatch_stddev_args(const at::Tensor& x, int64_t group_size, int64_t num_channels,
                                                        const char* op) {
  check_floating(x, op, "x");
  TORCH_CHECK(x.dim() >= 2, op, "(): argument 'x' must be (N, C, ...) with at least 2 dimensions, got shape ",
              x.sizes());
  TORCH_CHECK(group_size >= 1, op, "(): argument 'group_size' must be at least 1, got ", group_size);
  TORCH_CHECK(num_channels >= 1, op, "(): argument 'num_channels' must be at least 1, got ", num_channels);
  MinibatchStddevShape s;
  s.n = x.size(0);
  s.c = x.size(1);
  TORCH_CHECK(s.n >= 1, op, "(): argument 'x' must hold at least one sample, got shape ", x.sizes());
  TORCH_CHECK(s.c % num_channels == 0, op, "(): argument 'num_channels' (", num_channels,
              ") must divide the channels of 'x' (", s.c, ")");
  s.groups = std::min(group_size, s.n);
  TORCH_CHECK(s.n % s.groups == 0, op, "(): argument 'x' has batch size ", s.n,
              ", which the group size min(group_size, N) = ", s.groups, " does not divide");
  for (int64_t d = 2; d < x.dim(); ++d) s.s *= x.size(d);
  TORCH_CHECK(s.c * s.s > 0, op, "(): argument 'x' must have at least one channel and position, got shape ",
              x.sizes());
  s.m = s.n / s.groups;
  s.f = num_channels;
  s.k = (s.c / s.f) * s.s;
  return s;
}

inline MinibatchStddevShape check_minibatch_stddev_backward_args(const at::Tensor& grad, const at::Tensor& x,
                                                                 int64_t group_size, int64_t num_channels,
                                                                 const char* op) {
  const MinibatchStddevShape s = check_minibatch_stddev_args(x, group_size, num_channels, op);
  check_floating(grad, op, "grad");
  std::vector<int64_t> want(x.sizes().begin(), x.sizes().end());
  want[1] = s.c + s.f;
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(want), op, "(): argument 'grad' must have shape ", at::IntArrayRef(want),
              " (x with C + num_channels channels), got ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), op, "(): argument 'grad' must have the dtype of 'x' (",
              x.scalar_type(), "), got ", grad.scalar_type());
  TORCH_CHECK(grad.device() == x.device(), op, "(): argument 'grad' must be on the device of 'x' (", x.device(), ")");
  return s;
}

}  // namespace fastsn
