// fastsn::minibatch_stddev and its backward, C++ CPU kernels, in opmath (float for float16/bfloat16). One task per
// statistic (m, f): its G samples' feature group f is K = (C / F) * S contiguous values each, walked in chunks of
// kChunk positions (mean, then variance over the group, vectorized over positions); the task writes every output
// value that depends on them, so each pass runs in one parallel region. See common/minibatch_stddev.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/checks.h"
#include "common/minibatch_stddev.h"

namespace fastsn {
namespace {

constexpr int64_t kChunk = 256;   // positions per chunk: G * kChunk opmath values in flight
constexpr int64_t kGrain = 32768;  // elements of x per task below which threading costs more than it saves

std::vector<int64_t> output_shape(const at::Tensor& x, const MinibatchStddevShape& s) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape[1] = s.c + s.f;
  return shape;
}

// For positions [p0, p0 + len) of statistic (m, f): mean[q] and inv_std[q] = 1 / sqrt(var + eps) over the group.
template <typename scalar_t, typename acc_t>
void group_moments(const scalar_t* px, const MinibatchStddevShape& s, int64_t m, int64_t f, int64_t p0, int64_t len,
                   acc_t* mean, acc_t* inv_std) {
  const acc_t inv_g = acc_t(1) / static_cast<acc_t>(s.groups);
  std::fill(mean, mean + len, acc_t(0));
  std::fill(inv_std, inv_std + len, acc_t(0));
  for (int64_t g = 0; g < s.groups; ++g) {
    const scalar_t* row = px + (g * s.m + m) * s.c * s.s + f * s.k + p0;
    for (int64_t q = 0; q < len; ++q) mean[q] += static_cast<acc_t>(row[q]);
  }
  for (int64_t q = 0; q < len; ++q) mean[q] *= inv_g;
  for (int64_t g = 0; g < s.groups; ++g) {
    const scalar_t* row = px + (g * s.m + m) * s.c * s.s + f * s.k + p0;
    for (int64_t q = 0; q < len; ++q) {
      const acc_t d = static_cast<acc_t>(row[q]) - mean[q];
      inv_std[q] += d * d;
    }
  }
  for (int64_t q = 0; q < len; ++q)
    inv_std[q] = acc_t(1) / std::sqrt(inv_std[q] * inv_g + static_cast<acc_t>(kMinibatchStddevEps));
}

at::Tensor minibatch_stddev_cpu(const at::Tensor& x, int64_t group_size, int64_t num_channels) {
  const char* op = "fastsn::minibatch_stddev";
  check_device(x, c10::DeviceType::CPU, op, "x");
  const MinibatchStddevShape s = check_minibatch_stddev_args(x, group_size, num_channels, op);
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty(output_shape(x, s), x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "minibatch_stddev_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* px = xc.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    // one task per statistic (m, f) does all of its output: the statistic, the copy of its G samples' feature
    // group f (read for the statistic, still in cache) and the broadcast of the statistic over their S positions
    const int64_t row = (s.c + s.f) * s.s;  // one sample of out
    at::parallel_for(0, s.m * s.f, std::max<int64_t>(1, kGrain / (s.groups * s.k)), [&](int64_t lo, int64_t hi) {
      std::vector<acc_t> mean(kChunk), inv_std(kChunk);
      for (int64_t task = lo; task < hi; ++task) {
        const int64_t m = task / s.f, f = task % s.f;
        double total = 0;  // K can be large: chunk sums in double
        for (int64_t p0 = 0; p0 < s.k; p0 += kChunk) {
          const int64_t len = std::min(kChunk, s.k - p0);
          group_moments<scalar_t, acc_t>(px, s, m, f, p0, len, mean.data(), inv_std.data());
          acc_t chunk = 0;
          for (int64_t q = 0; q < len; ++q) chunk += acc_t(1) / inv_std[q];
          total += static_cast<double>(chunk);
          for (int64_t g = 0; g < s.groups; ++g) {
            const int64_t n = g * s.m + m;
            const scalar_t* src = px + n * s.c * s.s + f * s.k + p0;
            std::copy(src, src + len, po + n * row + f * s.k + p0);
          }
        }
        const scalar_t stat = static_cast<scalar_t>(total / static_cast<double>(s.k));
        for (int64_t g = 0; g < s.groups; ++g) {
          scalar_t* dst = po + (g * s.m + m) * row + (s.c + f) * s.s;
          std::fill(dst, dst + s.s, stat);
        }
      }
    });
  });
  return out;
}

at::Tensor minibatch_stddev_backward_cpu(const at::Tensor& grad, const at::Tensor& x, int64_t group_size,
                                         int64_t num_channels) {
  const char* op = "fastsn::minibatch_stddev_backward";
  check_device(x, c10::DeviceType::CPU, op, "x");
  const MinibatchStddevShape s = check_minibatch_stddev_backward_args(grad, x, group_size, num_channels, op);
  const at::Tensor xc = x.contiguous(), gc = grad.contiguous();
  at::Tensor dx = at::empty(xc.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "minibatch_stddev_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* px = xc.const_data_ptr<scalar_t>();
    const scalar_t* pg = gc.const_data_ptr<scalar_t>();
    scalar_t* pd = dx.mutable_data_ptr<scalar_t>();
    // d stat / d x_g = (x_g - mean) / (K G std) at each position; the statistic's upstream gradient Gamma[m, f] sums
    // grad's channel C + f over the group's G samples and the S positions it was broadcast to
    at::parallel_for(0, s.m * s.f, std::max<int64_t>(1, kGrain / (s.groups * s.k)), [&](int64_t lo, int64_t hi) {
      std::vector<acc_t> mean(kChunk), inv_std(kChunk);
      for (int64_t task = lo; task < hi; ++task) {
        const int64_t m = task / s.f, f = task % s.f;
        acc_t gamma = 0;
        for (int64_t g = 0; g < s.groups; ++g) {
          const scalar_t* row = pg + ((g * s.m + m) * (s.c + s.f) + s.c + f) * s.s;
          for (int64_t q = 0; q < s.s; ++q) gamma += static_cast<acc_t>(row[q]);
        }
        const acc_t scale = gamma / static_cast<acc_t>(s.k * s.groups);
        for (int64_t p0 = 0; p0 < s.k; p0 += kChunk) {
          const int64_t len = std::min(kChunk, s.k - p0);
          group_moments<scalar_t, acc_t>(px, s, m, f, p0, len, mean.data(), inv_std.data());
          for (int64_t g = 0; g < s.groups; ++g) {
            const int64_t n = g * s.m + m;
            const scalar_t* xr = px + n * s.c * s.s + f * s.k + p0;
            const scalar_t* gr = pg + n * (s.c + s.f) * s.s + f * s.k + p0;
            scalar_t* dr = pd + n * s.c * s.s + f * s.k + p0;
            for (int64_t q = 0; q < len; ++q)
              dr[q] = static_cast<scalar_t>(static_cast<acc_t>(gr[q]) +
                                            scale * (static_cast<acc_t>(xr[q]) - mean[q]) * inv_std[q]);
          }
        }
      }
    });
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsn, CPU, m) {
  m.impl("minibatch_stddev", &minibatch_stddev_cpu);
  m.impl("minibatch_stddev_backward", &minibatch_stddev_backward_cpu);
}

}  // namespace fastsn
