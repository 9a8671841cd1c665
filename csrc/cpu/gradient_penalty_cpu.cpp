// fastsn::gradient_penalty_head, C++ CPU kernel: per sample (a row of grad), the squared norm, phi and the row of
// d penalty / d grad. Rows of up to kChunk elements are one task each (the norm pass leaves the row in cache for
// the write pass); longer rows (a few large images) are cut into kChunk-element chunks, so that one sample uses every
// thread: one parallel pass of chunk partial sums, then one of writes. The sums run in kLanes lanes and every order
// is fixed by the shape alone, not by the thread count (deterministic); the batch mean is summed in order.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/checks.h"
#include "common/gradient_penalty.h"
#include "cpu/vectorize.h"

namespace fastsn {
namespace {

constexpr int64_t kChunk = 32768;  // elements per task: 128 KiB of float32, in L2 between the two passes of a row

// sum_j v[j]^2 in opmath, in kLanes independent sums (vectorizes without -ffast-math)
template <typename scalar_t, typename acc_t>
FASTSN_SIMD_CLONES acc_t sum_squares(const scalar_t* __restrict__ v, int64_t len) {
  acc_t lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= len; j += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      const acc_t x = static_cast<acc_t>(v[j + l]);
      lanes[l] += x * x;
    }
  }
  acc_t s = 0;
  for (; j < len; ++j) s += static_cast<acc_t>(v[j]) * static_cast<acc_t>(v[j]);
  for (int64_t l = 0; l < kLanes; ++l) s += lanes[l];
  return s;
}

// out[j] = factor * g[j]: d (weight * mean phi) / d g_ij = weight / B * k_i * g_ij
template <typename scalar_t, typename acc_t>
FASTSN_SIMD_CLONES void scale_run(const scalar_t* __restrict__ g, acc_t factor, scalar_t* __restrict__ out,
                                  int64_t len) {
  for (int64_t j = 0; j < len; ++j) out[j] = static_cast<scalar_t>(factor * static_cast<acc_t>(g[j]));
}

std::tuple<at::Tensor, at::Tensor> gradient_penalty_head_cpu(const at::Tensor& grad, int64_t mode, double weight,
                                                             double center) {
  check_device(grad, c10::DeviceType::CPU, "fastsn::gradient_penalty_head", "grad");
  check_gradient_penalty_head_args(grad, mode);
  const at::Tensor g = grad.contiguous();  // (B, N)
  const int64_t batch = g.size(0), features = g.size(1);
  at::Tensor d_grad = at::empty_like(g, at::MemoryFormat::Contiguous);
  const auto acc_type = g.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor penalty = at::empty({}, g.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "gradient_penalty_head_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* pg = g.const_data_ptr<scalar_t>();
    scalar_t* pd = d_grad.mutable_data_ptr<scalar_t>();
    std::vector<acc_t> phi(batch);
    const acc_t scale = static_cast<acc_t>(weight / static_cast<double>(batch));
    const acc_t c = static_cast<acc_t>(center);
    if (features <= kChunk) {  // a row per task, read twice while in cache
      const int64_t grain = std::max<int64_t>(1, kChunk / std::max<int64_t>(features, 1));  // rows per task
      at::parallel_for(0, batch, grain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          acc_t k = 0;
          penalty_terms<acc_t>(sum_squares<scalar_t, acc_t>(pg + i * features, features), mode, c, &phi[i], &k);
          scale_run<scalar_t, acc_t>(pg + i * features, scale * k, pd + i * features, features);
        }
      });
    } else {  // (B, chunks) tasks: partial sums, then per row phi and k (in chunk order), then the writes
      const int64_t chunks = (features + kChunk - 1) / kChunk;
      const auto span = [&](int64_t task) {  // task -> (first element, length) in the flat (B * N) grad
        const int64_t row = task / chunks, start = (task % chunks) * kChunk;
        return std::pair<int64_t, int64_t>(row * features + start, std::min(kChunk, features - start));
      };
      std::vector<acc_t> partial(batch * chunks), factor(batch);
      at::parallel_for(0, batch * chunks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const auto [first, len] = span(t);
          partial[t] = sum_squares<scalar_t, acc_t>(pg + first, len);
        }
      });
      for (int64_t i = 0; i < batch; ++i) {
        acc_t sumsq = 0, k = 0;
        for (int64_t q = 0; q < chunks; ++q) sumsq += partial[i * chunks + q];
        penalty_terms<acc_t>(sumsq, mode, c, &phi[i], &k);
        factor[i] = scale * k;
      }
      at::parallel_for(0, batch * chunks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const auto [first, len] = span(t);
          scale_run<scalar_t, acc_t>(pg + first, factor[t / chunks], pd + first, len);
        }
      });
    }
    acc_t total = 0;
    for (int64_t i = 0; i < batch; ++i) total += phi[i];
    *penalty.mutable_data_ptr<acc_t>() = total * scale;  // acc_t is penalty's dtype (float, or double)
  });
  return {penalty, d_grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsn, CPU, m) {
  m.impl("gradient_penalty_head", &gradient_penalty_head_cpu);
}

}  // namespace fastsn
