// Spectral norm, C++ CPU kernels: the fused power iteration, W / sigma, and its fused backward.
//
// The weight is read as the (O, H, I) view of common/spectral_norm.h: M[i, o*I + k] = W[o, i, k].
// One power iteration in torch's parametrization order (u = N(M v), v = N(M^T u)) is ONE pass over W: each
// row i is read once to get s_i = M_i . v and, while it is still in cache, added as s_i * M_i into the column
// sums r = M^T s. Then u = s / max(|s|, eps), M^T u = r / max(|s|, eps), v = N(M^T u), and
// sigma = u . (M v) = |M^T u|^2 / max(|M^T u|, eps) needs no further pass.
// The legacy order (v = N(M^T u), u = N(M v)) costs n + 1 passes: a column pass, n - 1 fused passes, a row pass.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "common/spectral_norm.h"

namespace fastsn {
namespace {

// Elements per task at the least: below this a thread costs more than it saves (and on a busy machine a parallel
// region can wait milliseconds for a descheduled thread), so small weights run on the calling thread.
constexpr int64_t kGrainElements = 32768;

// Hot loops. Each takes raw __restrict__ pointers and values (no lambda captures, which the compiler must assume
// a store can alias), and on x86-64 is compiled twice, for AVX2/FMA (x86-64-v3) and for the baseline, with the
// version picked at load time by the CPU (GCC/Clang function multiversioning).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FASTSN_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FASTSN_CPU_CLONES
#endif

// sum_k a[k] * b[k], with eight independent partial sums so that it vectorizes without reordering one chain
template <typename scalar_t, typename other_t, typename acc_t>
FASTSN_CPU_CLONES acc_t dot(const scalar_t* __restrict__ a, const other_t* __restrict__ b, int64_t n) {
  acc_t part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    for (int l = 0; l < 8; ++l) part[l] += static_cast<acc_t>(a[k + l]) * static_cast<acc_t>(b[k + l]);
  }
  acc_t total = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
  for (; k < n; ++k) total += static_cast<acc_t>(a[k]) * static_cast<acc_t>(b[k]);
  return total;
}

// y[k] += alpha * x[k]
template <typename scalar_t, typename acc_t>
FASTSN_CPU_CLONES void axpy(acc_t alpha, const scalar_t* __restrict__ x, acc_t* __restrict__ y, int64_t n) {
  for (int64_t k = 0; k < n; ++k) y[k] += alpha * static_cast<acc_t>(x[k]);
}

// out[k] = x[k] * scale (scale = 1 / sigma: within an ulp of torch's W / sigma, and several times faster)
template <typename scalar_t, typename acc_t>
FASTSN_CPU_CLONES void scale(const scalar_t* __restrict__ x, acc_t factor, scalar_t* __restrict__ out, int64_t n) {
  for (int64_t k = 0; k < n; ++k) out[k] = static_cast<scalar_t>(static_cast<acc_t>(x[k]) * factor);
}

// out[k] = (g[k] - cu * v[k]) * factor: one row segment of the normalize backward (factor = 1 / sigma)
template <typename scalar_t, typename acc_t>
FASTSN_CPU_CLONES void backward_segment(const scalar_t* __restrict__ g, acc_t cu, const acc_t* __restrict__ v,
                                        acc_t factor, scalar_t* __restrict__ out, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    out[k] = static_cast<scalar_t>((static_cast<acc_t>(g[k]) - cu * v[k]) * factor);
  }
}

template <typename acc_t>
acc_t norm(const std::vector<acc_t>& x) {
  acc_t sum = 0;
  for (acc_t value : x) sum += value * value;
  return std::sqrt(sum);
}

// One pass over W (O, H, I). With `v`: s_i = M_i . v for every row (into `s`). With `r`: r = M^T c, where the
// row coefficients c are s (fused pass) or `coef` (column pass). (Vectors are passed by pointer, never by
// data(): an empty vector's data() may be null.) Rows are split over threads; each thread
// sums its rows' contributions to r in its own buffer, and the buffers are added at the end.
template <typename scalar_t, typename acc_t>
void matrix_pass(const scalar_t* weight, const SpectralNormShape& shape, const std::vector<acc_t>* v,
                 const std::vector<acc_t>* coef, std::vector<acc_t>* s, std::vector<acc_t>* r) {
  const int64_t h = shape.h, inner = shape.inner, outer = shape.outer, w = shape.w();
  const int64_t threads = std::clamp<int64_t>(h * w / kGrainElements, 1, std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), h)));
  std::vector<std::vector<acc_t>> partial(r ? threads : 0, std::vector<acc_t>(r ? w : 0, acc_t(0)));
  const int64_t rows_per_task = (h + threads - 1) / threads;
  if (v) s->assign(h, acc_t(0));
  auto run_tasks = [&](int64_t task_begin, int64_t task_end) {
    for (int64_t task = task_begin; task < task_end; ++task) {
      acc_t* r_part = r ? partial[task].data() : nullptr;
      for (int64_t i = task * rows_per_task; i < std::min(h, (task + 1) * rows_per_task); ++i) {
        acc_t c = coef ? (*coef)[i] : acc_t(0);
        if (v) {
          acc_t si = 0;
          for (int64_t o = 0; o < outer; ++o) {
            si += dot<scalar_t, acc_t, acc_t>(weight + (o * h + i) * inner, v->data() + o * inner, inner);
          }
          (*s)[i] = si;
          c = si;
        }
        if (r_part) {
          for (int64_t o = 0; o < outer; ++o) axpy<scalar_t, acc_t>(c, weight + (o * h + i) * inner, r_part + o * inner, inner);
        }
      }
    }
  };
  if (threads == 1) {
    run_tasks(0, 1);
  } else {
    at::parallel_for(0, threads, 1, run_tasks);
  }
  if (r) {
    r->assign(w, acc_t(0));
    at::parallel_for(0, w, kGrainElements / std::max<int64_t>(1, threads), [&](int64_t begin, int64_t end) {
      for (const auto& part : partial) {
        for (int64_t j = begin; j < end; ++j) (*r)[j] += part[j];
      }
    });
  }
}

template <typename acc_t>
void scale_into(const std::vector<acc_t>& x, acc_t denominator, std::vector<acc_t>* out) {
  out->resize(x.size());
  for (size_t k = 0; k < x.size(); ++k) (*out)[k] = x[k] / denominator;
}

template <typename scalar_t>
void read_vector(const at::Tensor& t, std::vector<at::opmath_type<scalar_t>>* out) {
  const at::Tensor c = t.contiguous();
  const scalar_t* p = c.const_data_ptr<scalar_t>();
  out->assign(p, p + c.numel());
}

template <typename scalar_t, typename acc_t>
void write_vector(const std::vector<acc_t>& x, at::Tensor& out) {
  scalar_t* p = out.mutable_data_ptr<scalar_t>();
  for (size_t k = 0; k < x.size(); ++k) p[k] = static_cast<scalar_t>(x[k]);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> power_iteration_cpu(const at::Tensor& weight, at::Tensor& u,
                                                                   at::Tensor& v, int64_t dim,
                                                                   int64_t n_power_iterations, double eps,
                                                                   bool u_first) {
  check_power_iteration_args(weight, u, v, dim, n_power_iterations, eps);
  check_device(weight, c10::DeviceType::CPU, "fastsn::spectral_norm_power_iteration", "weight");
  const SpectralNormShape shape = spectral_norm_shape(weight, dim);
  const at::Tensor w_c = weight.contiguous();
  at::Tensor sigma = at::empty({}, weight.options().dtype(at::toOpMathType(weight.scalar_type())));
  at::Tensor u_copy = at::empty({shape.h}, u.options());
  at::Tensor v_copy = at::empty({shape.w()}, v.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "spectral_norm_power_iteration", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* wp = w_c.const_data_ptr<scalar_t>();
    const acc_t e = static_cast<acc_t>(eps);
    std::vector<acc_t> u_acc, v_acc, s, r;
    read_vector<scalar_t>(u, &u_acc);
    read_vector<scalar_t>(v, &v_acc);
    acc_t sigma_value = 0;
    if (n_power_iterations == 0) {
      matrix_pass<scalar_t, acc_t>(wp, shape, &v_acc, nullptr, &s, nullptr);
      for (int64_t i = 0; i < shape.h; ++i) sigma_value += u_acc[i] * s[i];
    } else if (u_first) {
      for (int64_t it = 0; it < n_power_iterations; ++it) {
        matrix_pass<scalar_t, acc_t>(wp, shape, &v_acc, nullptr, &s, &r);  // s = M v, r = M^T s
        const acc_t s_den = std::max(norm(s), e);
        scale_into(s, s_den, &u_acc);  // u = N(M v)
        scale_into(r, s_den, &r);      // r = M^T u
        const acc_t t_norm = norm(r);
        scale_into(r, std::max(t_norm, e), &v_acc);  // v = N(M^T u)
        sigma_value = t_norm * t_norm / std::max(t_norm, e);
      }
    } else {
      matrix_pass<scalar_t, acc_t>(wp, shape, nullptr, &u_acc, nullptr, &r);  // r = M^T u
      for (int64_t it = 0; it < n_power_iterations; ++it) {
        scale_into(r, std::max(norm(r), e), &v_acc);  // v = N(M^T u)
        const bool last = it + 1 == n_power_iterations;
        // s = M v, and unless this is the last iteration, r = M^T s for the next v
        matrix_pass<scalar_t, acc_t>(wp, shape, &v_acc, nullptr, &s, last ? nullptr : &r);
        const acc_t s_norm = norm(s);
        const acc_t s_den = std::max(s_norm, e);
        scale_into(s, s_den, &u_acc);  // u = N(M v)
        if (!last) scale_into(r, s_den, &r);
        sigma_value = s_norm * s_norm / s_den;
      }
    }
    if (n_power_iterations > 0) {
      write_vector<scalar_t>(u_acc, u_copy);
      write_vector<scalar_t>(v_acc, v_copy);
      u.copy_(u_copy);
      v.copy_(v_copy);
    } else {
      u_copy.copy_(u);
      v_copy.copy_(v);
    }
    sigma.fill_(sigma_value);
  });
  return {sigma, u_copy, v_copy};
}

at::Tensor normalize_cpu(const at::Tensor& weight, const at::Tensor& u, const at::Tensor& v, const at::Tensor& sigma,
                         int64_t dim, double eps) {
  check_normalize_args(weight, u, v, sigma, dim, "fastsn::spectral_norm_normalize");
  check_device(weight, c10::DeviceType::CPU, "fastsn::spectral_norm_normalize", "weight");
  const at::Tensor w_c = weight.contiguous();
  at::Tensor out = at::empty_like(w_c);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "spectral_norm_normalize", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t s = sigma.to(at::toOpMathType(weight.scalar_type())).item<acc_t>();
    const acc_t s_hat = std::abs(s) < static_cast<acc_t>(eps) ? static_cast<acc_t>(eps) : s;
    const scalar_t* wp = w_c.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, w_c.numel(), kGrainElements, [&](int64_t begin, int64_t end) {
      scale<scalar_t, acc_t>(wp + begin, acc_t(1) / s_hat, op + begin, end - begin);
    });
  });
  return out;
}

// dW = (G - <G, W_sn> u v^T) / sigma, with <G, W_sn> = <G, W> / sigma; G / eps where |sigma| < eps.
at::Tensor normalize_backward_cpu(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& u,
                                  const at::Tensor& v, const at::Tensor& sigma, int64_t dim, double eps) {
  const char* op = "fastsn::spectral_norm_normalize_backward";
  check_normalize_args(weight, u, v, sigma, dim, op);
  check_device(weight, c10::DeviceType::CPU, op, "weight");
  check_floating(grad, op, "grad");
  TORCH_CHECK(grad.sizes() == weight.sizes(), op, "(): argument 'grad' must have the shape of 'weight' (",
              weight.sizes(), "), got ", grad.sizes());
  const SpectralNormShape shape = spectral_norm_shape(weight, dim);
  const at::Tensor w_c = weight.contiguous();
  const at::Tensor g_c = grad.to(weight.scalar_type()).contiguous();
  at::Tensor out = at::empty_like(w_c);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "spectral_norm_normalize_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t s = sigma.to(at::toOpMathType(weight.scalar_type())).item<acc_t>();
    const bool clamped = std::abs(s) < static_cast<acc_t>(eps);
    const acc_t s_hat = clamped ? static_cast<acc_t>(eps) : s;
    const scalar_t* wp = w_c.const_data_ptr<scalar_t>();
    const scalar_t* gp = g_c.const_data_ptr<scalar_t>();
    std::vector<acc_t> u_acc, v_acc;
    read_vector<scalar_t>(u, &u_acc);
    read_vector<scalar_t>(v, &v_acc);
    const acc_t g_dot_w = at::parallel_reduce(
        0, w_c.numel(), kGrainElements, acc_t(0),
        [&](int64_t begin, int64_t end, acc_t acc) {
          return acc + dot<scalar_t, scalar_t, acc_t>(gp + begin, wp + begin, end - begin);
        },
        [](acc_t a, acc_t b) { return a + b; });
    const acc_t coef = clamped ? acc_t(0) : g_dot_w / s_hat;  // <G, W_sn>
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const int64_t h = shape.h, inner = shape.inner;
    // rows (o, i) of length I: element k of row (o, i) sits at column o*I + k of M
    at::parallel_for(0, shape.outer * h, std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, inner)),
                     [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t o = row / h, i = row % h;
        backward_segment<scalar_t, acc_t>(gp + row * inner, coef * u_acc[i], v_acc.data() + o * inner,
                                          acc_t(1) / s_hat, op + row * inner, inner);
      }
    });
  });
  return out;
}

// Grouped ops: one C++ call for every spectral norm of a model, weight after weight, each split over the threads
// as above. (Spreading small weights over the threads instead, one weight per task, measured 2x slower here.)
std::tuple<at::Tensor, at::Tensor, at::Tensor> grouped_power_iteration_cpu(
    at::TensorList weights, at::TensorList us, at::TensorList vs, at::IntArrayRef dims,
    at::IntArrayRef n_power_iterations, at::ArrayRef<double> eps, const c10::List<bool>& u_first) {
  check_grouped_power_iteration_args(weights, us, vs, dims, n_power_iterations, eps, u_first);
  const size_t n = weights.size();
  std::vector<at::Tensor> sigmas(n), u_copies(n), v_copies(n);
  for (size_t k = 0; k < n; ++k) {
    at::Tensor u = us[k], v = vs[k];  // handles sharing the caller's storage: updated in place
    std::tie(sigmas[k], u_copies[k], v_copies[k]) =
        power_iteration_cpu(weights[k], u, v, dims[k], n_power_iterations[k], eps[k], u_first.get(k));
    sigmas[k] = sigmas[k].reshape({1});
  }
  return {at::cat(sigmas), at::cat(u_copies), at::cat(v_copies)};
}

std::vector<at::Tensor> grouped_normalize_cpu(at::TensorList weights, const at::Tensor& us, const at::Tensor& vs,
                                              const at::Tensor& sigmas, at::IntArrayRef dims, at::ArrayRef<double> eps) {
  const char* op = "fastsn::spectral_norm_grouped_normalize";
  check_group_sizes(weights.size(), {{"dims", dims.size()}, {"eps", eps.size()}}, op);
  const GroupedVectors vectors = split_grouped_vectors(weights, us, vs, sigmas, dims, op);
  std::vector<at::Tensor> out(weights.size());
  for (size_t k = 0; k < weights.size(); ++k) {
    out[k] = normalize_cpu(weights[k], vectors.u[k], vectors.v[k], vectors.sigma[k], dims[k], eps[k]);
  }
  return out;
}

std::vector<at::Tensor> grouped_normalize_backward_cpu(at::TensorList grads, at::TensorList weights, const at::Tensor& us,
                                                       const at::Tensor& vs, const at::Tensor& sigmas,
                                                       at::IntArrayRef dims, at::ArrayRef<double> eps) {
  const char* op = "fastsn::spectral_norm_grouped_normalize_backward";
  check_group_sizes(weights.size(), {{"grads", grads.size()}, {"dims", dims.size()}, {"eps", eps.size()}}, op);
  const GroupedVectors vectors = split_grouped_vectors(weights, us, vs, sigmas, dims, op);
  std::vector<at::Tensor> out(weights.size());
  for (size_t k = 0; k < weights.size(); ++k) {
    out[k] = normalize_backward_cpu(grads[k], weights[k], vectors.u[k], vectors.v[k], vectors.sigma[k], dims[k], eps[k]);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsn, CPU, m) {
  m.impl("spectral_norm_power_iteration", &power_iteration_cpu);
  m.impl("spectral_norm_normalize", &normalize_cpu);
  m.impl("spectral_norm_normalize_backward", &normalize_backward_cpu);
  m.impl("spectral_norm_grouped_power_iteration", &grouped_power_iteration_cpu);
  m.impl("spectral_norm_grouped_normalize", &grouped_normalize_cpu);
  m.impl("spectral_norm_grouped_normalize_backward", &grouped_normalize_backward_cpu);
}

}  // namespace fastsn
