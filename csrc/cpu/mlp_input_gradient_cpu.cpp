// fastsn::mlp_input_gradient and its backward, C++ CPU kernels: the products through at::mm (BLAS), each followed by
// one fused pass over its (B, H) result (bias + activation + sign mask; mask multiply), in opmath (float for
// float16/bfloat16: the whole chain computes in float, rounded once where an output is stored).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/checks.h"
#include "common/mlp_input_gradient.h"
#include "cpu/vectorize.h"

namespace fastsn {
namespace {

constexpr int64_t kGrainSize = 32768;  // elements per task: below this, threading costs more than it saves

// The activation's derivative factors, where z > 0 and elsewhere (the slope at 0, as torch's leaky_relu)
template <typename acc_t>
struct MaskFactors {
  acc_t up, down;
  MaskFactors(double negative_slope, double gain)
      : up(static_cast<acc_t>(gain)), down(static_cast<acc_t>(gain * negative_slope)) {}
};

// z[k] = (z[k] + bias[k % H]) * (positive ? up : down) in place and positive[k] = z + bias > 0, for rows of H
template <typename acc_t>
FASTSN_SIMD_CLONES void activate_rows(acc_t* __restrict__ z, const acc_t* __restrict__ bias, acc_t up, acc_t down,
                                      bool* __restrict__ positive, int64_t rows, int64_t features) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < features; ++c) {
      const acc_t v = z[r * features + c] + (bias ? bias[c] : acc_t(0));
      const bool p = v > acc_t(0);
      positive[r * features + c] = p;
      z[r * features + c] = v * (p ? up : down);
    }
  }
}

// t[k] *= positive[k] ? up : down
template <typename acc_t>
FASTSN_SIMD_CLONES void mask_run(acc_t* __restrict__ t, const bool* __restrict__ positive, acc_t up, acc_t down,
                                 int64_t n) {
  for (int64_t k = 0; k < n; ++k) t[k] *= positive[k] ? up : down;
}

// delta[r, c] = w[c] * (positive[r, c] ? up : down): the first backward step, from the last layer's row w (H)
template <typename acc_t>
FASTSN_SIMD_CLONES void broadcast_mask_rows(const acc_t* __restrict__ w, const bool* __restrict__ positive, acc_t up,
                                            acc_t down, acc_t* __restrict__ delta, int64_t rows, int64_t features) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < features; ++c) {
      delta[r * features + c] = w[c] * (positive[r * features + c] ? up : down);
    }
  }
}

template <typename acc_t>
void mask_in_place(at::Tensor& t, const at::Tensor& positive, const MaskFactors<acc_t>& m) {
  acc_t* pt = t.mutable_data_ptr<acc_t>();
  const bool* pp = positive.const_data_ptr<bool>();
  at::parallel_for(0, t.numel(), kGrainSize, [&](int64_t begin, int64_t end) {
    mask_run<acc_t>(pt + begin, pp + begin, m.up, m.down, end - begin);
  });
}

// rows x features loops split across threads by rows
template <typename F>
void for_rows(int64_t rows, int64_t features, const F& f) {
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrainSize / std::max<int64_t>(features, 1)), f);
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> mlp_input_gradient_cpu(
    const at::Tensor& x, at::TensorList weights, const c10::List<c10::optional<at::Tensor>>& biases,
    c10::ArrayRef<double> negative_slopes, c10::ArrayRef<double> gains) {
  check_device(x, c10::DeviceType::CPU, "fastsn::mlp_input_gradient", "x");
  check_mlp_input_gradient_args(x, weights, biases, negative_slopes, gains);
  const int64_t batch = x.size(0), hidden = static_cast<int64_t>(weights.size()) - 1;
  const at::ScalarType dtype = x.scalar_type();
  std::vector<at::Tensor> deltas(hidden), positive(hidden);
  at::Tensor g;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "mlp_input_gradient_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::ScalarType acc = c10::CppTypeToScalarType<acc_t>::value;
    // forward through the hidden layers: z_l = h_l W_l^T (+ b_l) (B, H_{l+1}), then in one pass the sign mask and
    // h_{l+1} = z_l * m_l in place of z_l
    at::Tensor h = x.to(acc);
    for (int64_t l = 0; l < hidden; ++l) {
      at::Tensor z = at::mm(h, weights[l].to(acc).t());
      const c10::optional<at::Tensor> b = biases.get(l);
      const at::Tensor bc = b.has_value() ? b->to(acc).contiguous() : at::Tensor();
      positive[l] = at::empty(z.sizes(), x.options().dtype(at::kBool));
      const MaskFactors<acc_t> m(negative_slopes[l], gains[l]);
      const int64_t features = z.size(1);
      acc_t* pz = z.mutable_data_ptr<acc_t>();
      const acc_t* pb = bc.defined() ? bc.const_data_ptr<acc_t>() : nullptr;
      bool* pp = positive[l].mutable_data_ptr<bool>();
      for_rows(batch, features, [&](int64_t begin, int64_t end) {
        activate_rows<acc_t>(pz + begin * features, pb, m.up, m.down, pp + begin * features, end - begin, features);
      });
      h = z;
    }
    // backward chain: d_{L-1} = 1 w_{L-1}; delta_l = d_{l+1} * m_l (B, H_{l+1}); d_l = delta_l W_l (B, H_l)
    const at::Tensor last = weights[hidden].to(acc).reshape({-1}).contiguous();  // (H_{L-1},)
    if (hidden == 0) {
      g = last.expand({batch, last.size(0)}).to(dtype, /*non_blocking=*/false, /*copy=*/true).contiguous();
      return;
    }
    at::Tensor d;
    for (int64_t l = hidden - 1; l >= 0; --l) {
      const MaskFactors<acc_t> m(negative_slopes[l], gains[l]);
      at::Tensor delta;
      if (l == hidden - 1) {  // the broadcast row, masked, without materializing the broadcast
        delta = at::empty(positive[l].sizes(), x.options().dtype(acc));
        const int64_t features = delta.size(1);
        const acc_t* pw = last.const_data_ptr<acc_t>();
        const bool* pp = positive[l].const_data_ptr<bool>();
        acc_t* pd = delta.mutable_data_ptr<acc_t>();
        for_rows(batch, features, [&](int64_t begin, int64_t end) {
          broadcast_mask_rows<acc_t>(pw, pp + begin * features, m.up, m.down, pd + begin * features, end - begin,
                                     features);
        });
      } else {
        delta = d;  // (a fresh product: masked in place)
        mask_in_place<acc_t>(delta, positive[l], m);
      }
      deltas[l] = delta.to(dtype);
      d = at::mm(delta, weights[l].to(acc));
    }
    g = d.to(dtype);
  });
  return {g, deltas, positive};
}

std::vector<at::Tensor> mlp_input_gradient_backward_cpu(const at::Tensor& grad, at::TensorList weights,
                                                        at::TensorList deltas, at::TensorList positive,
                                                        c10::ArrayRef<double> negative_slopes,
                                                        c10::ArrayRef<double> gains) {
  check_device(grad, c10::DeviceType::CPU, "fastsn::mlp_input_gradient_backward", "grad");
  check_mlp_input_gradient_backward_args(grad, weights, deltas, positive, negative_slopes, gains);
  const int64_t hidden = static_cast<int64_t>(weights.size()) - 1;
  const at::ScalarType dtype = grad.scalar_type();
  std::vector<at::Tensor> dws(hidden + 1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "mlp_input_gradient_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::ScalarType acc = c10::CppTypeToScalarType<acc_t>::value;
    // a_0 = G; dW_l = delta_l^T a_l (H_{l+1}, H_l); a_{l+1} = (a_l W_l^T) * m_l (B, H_{l+1})
    at::Tensor a = grad.to(acc);
    for (int64_t l = 0; l < hidden; ++l) {
      dws[l] = at::mm(deltas[l].to(acc).t(), a).to(dtype);
      a = at::mm(a, weights[l].to(acc).t());
      mask_in_place<acc_t>(a, positive[l].contiguous(), MaskFactors<acc_t>(negative_slopes[l], gains[l]));
    }
    dws[hidden] = at::sum(a, {0}, /*keepdim=*/true).to(dtype);  // dW_{L-1} = 1^T a_{L-1} (1, H_{L-1})
  });
  return dws;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsn, CPU, m) {
  m.impl("mlp_input_gradient", &mlp_input_gradient_cpu);
  m.impl("mlp_input_gradient_backward", &mlp_input_gradient_backward_cpu);
}

}  // namespace fastsn
