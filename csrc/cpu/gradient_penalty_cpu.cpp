// fastsn::gradient_penalty_head, C++ CPU kernel: per sample (a row of grad), the squared norm, phi and the row of
// d penalty / d grad; rows split across threads; the mean over the batch summed in order (deterministic).
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

namespace fastsn {
namespace {

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
    const scalar_t* __restrict__ pg = g.const_data_ptr<scalar_t>();
    scalar_t* __restrict__ pd = d_grad.mutable_data_ptr<scalar_t>();
    std::vector<acc_t> phi(batch);
    const acc_t scale = static_cast<acc_t>(weight / static_cast<double>(batch));
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(features, 1));  // rows per task
    at::parallel_for(0, batch, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t* row = pg + i * features;
        acc_t sumsq = 0;
        for (int64_t j = 0; j < features; ++j) sumsq += static_cast<acc_t>(row[j]) * static_cast<acc_t>(row[j]);
        acc_t k = 0;
        penalty_terms<acc_t>(sumsq, mode, static_cast<acc_t>(center), &phi[i], &k);
        const acc_t factor = scale * k;  // d (weight * mean phi) / d g_ij = weight / B * k_i * g_ij
        scalar_t* out = pd + i * features;
        for (int64_t j = 0; j < features; ++j) out[j] = static_cast<scalar_t>(factor * static_cast<acc_t>(row[j]));
      }
    });
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
