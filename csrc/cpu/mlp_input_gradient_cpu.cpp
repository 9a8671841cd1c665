// fastsn::mlp_input_gradient and its backward, C++ CPU kernels: the products through at::mm (BLAS), or vectorized
// loops where one side is narrow (the input layer of low-dimensional data), each followed by one fused pass over its
// (B, H) result (bias + activation + sign mask; mask multiply), in opmath (float for float16/bfloat16: the whole
// chain computes in float, rounded once where an output is stored).
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
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "common/mlp_input_gradient.h"
#include "cpu/vectorize.h"

namespace fastsn {
namespace {

constexpr int64_t kGrainSize = 32768;  // elements per task: below this, threading costs more than it saves

// m = p ? up : down as an integer select between the two bit patterns: GCC compiles `p ? up : down` on a mask
// loaded from memory as a branch, which mispredicts on random signs (a pass over 512 x 128 took 40 us, not 10), and
// vectorizes the select only from bytes read as uint8_t, not as bool
template <typename acc_t>
FASTSN_ALWAYS_INLINE acc_t pick(uint8_t p, acc_t up, acc_t down) {
  using bits_t = std::conditional_t<sizeof(acc_t) == 4, uint32_t, uint64_t>;
  bits_t u, d;
  std::memcpy(&u, &up, sizeof(u));
  std::memcpy(&d, &down, sizeof(d));
  const bits_t select = bits_t(0) - static_cast<bits_t>(p);  // all ones where p
  const bits_t r = (u & select) | (d & ~select);
  acc_t out;
  std::memcpy(&out, &r, sizeof(out));
  return out;
}

// The activation's derivative factors, where z > 0 and elsewhere (the slope at 0, as torch's leaky_relu)
template <typename acc_t>
struct MaskFactors {
  acc_t up, down;
  MaskFactors(double negative_slope, double gain)
      : up(static_cast<acc_t>(gain)), down(static_cast<acc_t>(gain * negative_slope)) {}
};

// For rows of H: positive[k] = v > 0 with v = z[k] + bias[k % H], and in place of z[k] the next layer's input
// v * m, or, given the last layer's row w (H), the first delta w[k % H] * m (the broadcast never materialized)
template <typename acc_t>
FASTSN_SIMD_CLONES void activate_rows(acc_t* __restrict__ z, const acc_t* __restrict__ bias,
                                      const acc_t* __restrict__ w, acc_t up, acc_t down, bool* __restrict__ positive,
                                      int64_t rows, int64_t features) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < features; ++c) {
      const acc_t v = z[r * features + c] + (bias ? bias[c] : acc_t(0));
      const bool p = v > acc_t(0);
      positive[r * features + c] = p;
      z[r * features + c] = (w ? w[c] : v) * pick(p, up, down);
    }
  }
}

// t[k] *= positive[k] ? up : down
template <typename acc_t>
FASTSN_SIMD_CLONES void mask_run(acc_t* __restrict__ t, const uint8_t* __restrict__ positive, acc_t up, acc_t down,
                                 int64_t n) {
  for (int64_t k = 0; k < n; ++k) t[k] *= pick(positive[k], up, down);
}

// Products with a narrow side (an input layer of a few features, e.g. 2-D toy data): BLAS spends 50-60 us on a
// 512 x 128 x 2 product (2 threads), a plain vectorized loop about a tenth of that.
constexpr int64_t kNarrow = 8;

// out (M, N) = a (M, K) @ bt (K, N), K <= kNarrow, all contiguous: rows of out as sums of K scaled rows of bt
template <typename acc_t>
FASTSN_SIMD_CLONES void narrow_inner_rows(const acc_t* __restrict__ a, const acc_t* __restrict__ bt,
                                          acc_t* __restrict__ out, int64_t rows, int64_t inner, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    acc_t* o = out + r * cols;
    for (int64_t c = 0; c < cols; ++c) o[c] = a[r * inner] * bt[c];
    for (int64_t k = 1; k < inner; ++k) {
      const acc_t f = a[r * inner + k];
      const acc_t* b = bt + k * cols;
      for (int64_t c = 0; c < cols; ++c) o[c] += f * b[c];
    }
  }
}

// out (M, N) = a (M, H) @ b (H, N), N <= kNarrow, given bt = b^T (N, H) contiguous: dot products of rows
template <typename acc_t>
FASTSN_SIMD_CLONES void narrow_outer_rows(const acc_t* __restrict__ a, const acc_t* __restrict__ bt,
                                          acc_t* __restrict__ out, int64_t rows, int64_t inner, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < cols; ++j) {
      acc_t lanes[kLanes] = {};
      const acc_t* x = a + r * inner;
      const acc_t* y = bt + j * inner;
      int64_t h = 0;
      for (; h + kLanes <= inner; h += kLanes)
        for (int64_t l = 0; l < kLanes; ++l) lanes[l] += x[h + l] * y[h + l];
      acc_t sum = 0;
      for (; h < inner; ++h) sum += x[h] * y[h];
      for (int64_t l = 0; l < kLanes; ++l) sum += lanes[l];
      out[r * cols + j] = sum;
    }
  }
}

// outt (N, H) = (a^T (H, B) @ b (B, N))^T, N <= kNarrow, for columns [h0, h1) of a (B, H): per row of the batch, N
// scaled copies of a's row added to outt's rows
template <typename acc_t>
FASTSN_SIMD_CLONES void narrow_batch_sums(const acc_t* __restrict__ a, const acc_t* __restrict__ b,
                                          acc_t* __restrict__ outt, int64_t batch, int64_t features, int64_t cols,
                                          int64_t h0, int64_t h1) {
  for (int64_t j = 0; j < cols; ++j)
    for (int64_t h = h0; h < h1; ++h) outt[j * features + h] = 0;
  for (int64_t r = 0; r < batch; ++r) {
    const acc_t* x = a + r * features;
    for (int64_t j = 0; j < cols; ++j) {
      const acc_t f = b[r * cols + j];
      acc_t* o = outt + j * features;
      for (int64_t h = h0; h < h1; ++h) o[h] += f * x[h];
    }
  }
}

// a (M, K) @ w^T for w (N, K): through BLAS, or by rows when K is narrow (the input layer)
at::Tensor times_transposed(const at::Tensor& a, const at::Tensor& w) {
  const int64_t inner = w.size(1);
  if (inner > kNarrow) return at::mm(a, w.t());
  const at::Tensor ac = a.contiguous(), wt = w.t().contiguous();  // (K, N)
  at::Tensor out = at::empty({a.size(0), w.size(0)}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "times_transposed", [&] {
    const int64_t cols = out.size(1);
    const scalar_t* pa = ac.const_data_ptr<scalar_t>();
    const scalar_t* pw = wt.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, a.size(0), std::max<int64_t>(1, kGrainSize / std::max<int64_t>(cols * inner, 1)),
                     [&](int64_t begin, int64_t end) {
      narrow_inner_rows<scalar_t>(pa + begin * inner, pw, po + begin * cols, end - begin, inner, cols);
    });
  });
  return out;
}

// d (B, H) @ w for w (H, K): through BLAS, or dot products of rows when K is narrow
at::Tensor times(const at::Tensor& d, const at::Tensor& w) {
  const int64_t cols = w.size(1), inner = w.size(0);
  if (cols > kNarrow) return at::mm(d, w);
  const at::Tensor dc = d.contiguous(), wt = w.t().contiguous();  // (K, H)
  at::Tensor out = at::empty({d.size(0), cols}, d.options());
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "times", [&] {
    const scalar_t* pd = dc.const_data_ptr<scalar_t>();
    const scalar_t* pw = wt.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, d.size(0), std::max<int64_t>(1, kGrainSize / std::max<int64_t>(cols * inner, 1)),
                     [&](int64_t begin, int64_t end) {
      narrow_outer_rows<scalar_t>(pd + begin * inner, pw, po + begin * cols, end - begin, inner, cols);
    });
  });
  return out;
}

// delta^T (H, B) @ a (B, K): through BLAS, or as batch sums split over H when K is narrow
at::Tensor transposed_times(const at::Tensor& delta, const at::Tensor& a) {
  const int64_t cols = a.size(1), features = delta.size(1), batch = delta.size(0);
  if (cols > kNarrow) return at::mm(delta.t(), a);
  const at::Tensor dc = delta.contiguous(), ac = a.contiguous();
  at::Tensor outt = at::empty({cols, features}, a.options());  // (K, H)
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "transposed_times", [&] {
    const scalar_t* pd = dc.const_data_ptr<scalar_t>();
    const scalar_t* pa = ac.const_data_ptr<scalar_t>();
    scalar_t* po = outt.mutable_data_ptr<scalar_t>();
    // columns of 64 per task at least (a cache line's worth of each row, and threads that do not share lines)
    at::parallel_for(0, features, std::max<int64_t>(64, kGrainSize / std::max<int64_t>(batch * cols, 1)),
                     [&](int64_t begin, int64_t end) {
      narrow_batch_sums<scalar_t>(pd, pa, po, batch, features, cols, begin, end);
    });
  });
  return outt.t().contiguous();
}

template <typename acc_t>
void mask_in_place(at::Tensor& t, const at::Tensor& positive, const MaskFactors<acc_t>& m) {
  acc_t* pt = t.mutable_data_ptr<acc_t>();
  const uint8_t* pp = reinterpret_cast<const uint8_t*>(positive.const_data_ptr<bool>());
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
    const at::Tensor last = weights[hidden].to(acc).reshape({-1}).contiguous();  // w_{L-1} (H_{L-1},)
    if (hidden == 0) {  // D(x) = x w_0^T + b: g is w_0 broadcast (B, H_0)
      g = last.expand({batch, last.size(0)}).to(dtype, /*non_blocking=*/false, /*copy=*/true).contiguous();
      return;
    }
    // forward through the hidden layers: z_l = h_l W_l^T (+ b_l) (B, H_{l+1}), then in one pass the sign mask and,
    // in place of z_l, h_{l+1} = z_l * m_l; for the last hidden layer, whose h the last layer (not computed) would
    // take, the first delta_{L-2} = w_{L-1} * m_{L-2}
    at::Tensor h = x.to(acc);
    for (int64_t l = 0; l < hidden; ++l) {
      at::Tensor z = times_transposed(h, weights[l].to(acc));
      const c10::optional<at::Tensor> b = biases.get(l);
      const at::Tensor bc = b.has_value() ? b->to(acc).contiguous() : at::Tensor();
      positive[l] = at::empty(z.sizes(), x.options().dtype(at::kBool));
      const MaskFactors<acc_t> m(negative_slopes[l], gains[l]);
      const int64_t features = z.size(1);
      acc_t* pz = z.mutable_data_ptr<acc_t>();
      const acc_t* pb = bc.defined() ? bc.const_data_ptr<acc_t>() : nullptr;
      const acc_t* pw = l == hidden - 1 ? last.const_data_ptr<acc_t>() : nullptr;
      bool* pp = positive[l].mutable_data_ptr<bool>();
      for_rows(batch, features, [&](int64_t begin, int64_t end) {
        activate_rows<acc_t>(pz + begin * features, pb, pw, m.up, m.down, pp + begin * features, end - begin,
                             features);
      });
      h = z;
    }
    // backward chain: delta_l = d_{l+1} * m_l (B, H_{l+1}); d_l = delta_l W_l (B, H_l); g = d_0
    at::Tensor delta = h, d;
    for (int64_t l = hidden - 1; l >= 0; --l) {
      if (l < hidden - 1) {
        delta = d;  // (a fresh product: masked in place)
        mask_in_place<acc_t>(delta, positive[l], MaskFactors<acc_t>(negative_slopes[l], gains[l]));
      }
      deltas[l] = delta.to(dtype);
      d = times(delta, weights[l].to(acc));
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
      dws[l] = transposed_times(deltas[l].to(acc), a).to(dtype);
      a = times_transposed(a, weights[l].to(acc));
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
