// fastsn::interpolate and its backward, C++ CPU kernels: one pass over (B, F) contiguous memory, each sample's
// factor read once per row, in opmath (float for float16/bfloat16), rows split across threads.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "common/checks.h"
#include "common/interpolate.h"

namespace fastsn {
namespace {

constexpr int64_t kGrainElements = 32768;  // elements per task: below this, threading costs more than it saves

// Calls body(i, begin, end) over the rows i of a (batch, features) layout, split into tasks of ~kGrainElements.
template <typename Body>
void for_each_row(int64_t batch, int64_t features, const Body& body) {
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(features, 1));
  at::parallel_for(0, batch, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) body(i, i * features, (i + 1) * features);
  });
}

at::Tensor interpolate_cpu(const at::Tensor& real, const at::Tensor& fake, const at::Tensor& eps) {
  check_device(real, c10::DeviceType::CPU, "fastsn::interpolate", "real");
  check_interpolate_args(real, fake, eps);
  const at::Tensor r = real.contiguous(), f = fake.contiguous();
  at::Tensor out = at::empty_like(r, at::MemoryFormat::Contiguous);
  const int64_t batch = r.size(0);
  if (r.numel() == 0) return out;
  const int64_t features = r.numel() / batch;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.scalar_type(), "interpolate_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor e = eps.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* __restrict__ pe = e.const_data_ptr<acc_t>();
    const scalar_t* __restrict__ pr = r.const_data_ptr<scalar_t>();
    const scalar_t* __restrict__ pf = f.const_data_ptr<scalar_t>();
    scalar_t* __restrict__ po = out.mutable_data_ptr<scalar_t>();
    for_each_row(batch, features, [&](int64_t i, int64_t begin, int64_t end) {
      const acc_t a = pe[i], b = acc_t(1) - pe[i];
      for (int64_t k = begin; k < end; ++k) {
        po[k] = static_cast<scalar_t>(a * static_cast<acc_t>(pr[k]) + b * static_cast<acc_t>(pf[k]));
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> interpolate_backward_cpu(const at::Tensor& grad, const at::Tensor& eps) {
  check_device(grad, c10::DeviceType::CPU, "fastsn::interpolate_backward", "grad");
  check_interpolate_backward_args(grad, eps);
  const at::Tensor g = grad.contiguous();
  at::Tensor grad_real = at::empty_like(g, at::MemoryFormat::Contiguous);
  at::Tensor grad_fake = at::empty_like(g, at::MemoryFormat::Contiguous);
  const int64_t batch = g.size(0);
  if (g.numel() == 0) return {grad_real, grad_fake};
  const int64_t features = g.numel() / batch;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "interpolate_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor e = eps.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* __restrict__ pe = e.const_data_ptr<acc_t>();
    const scalar_t* __restrict__ pg = g.const_data_ptr<scalar_t>();
    scalar_t* __restrict__ pr = grad_real.mutable_data_ptr<scalar_t>();
    scalar_t* __restrict__ pf = grad_fake.mutable_data_ptr<scalar_t>();
    for_each_row(batch, features, [&](int64_t i, int64_t begin, int64_t end) {
      const acc_t a = pe[i], b = acc_t(1) - pe[i];
      for (int64_t k = begin; k < end; ++k) {
        const acc_t v = static_cast<acc_t>(pg[k]);
        pr[k] = static_cast<scalar_t>(a * v);
        pf[k] = static_cast<scalar_t>(b * v);
      }
    });
  });
  return {grad_real, grad_fake};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsn, CPU, m) {
  m.impl("interpolate", &interpolate_cpu);
  m.impl("interpolate_backward", &interpolate_backward_cpu);
}

}  // namespace fastsn
