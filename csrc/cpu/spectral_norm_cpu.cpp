// Spectral norm, C++ CPU kernels: the fused power iteration, W / sigma, and its fused backward.
//
// The weight is read as the (O, H, I) view of common/spectral_norm.h: M[i, o*I + k] = W[o, i, k].
// One power iteration in torch's parametrization order (u = N(M v), v = N(M^T u)) is ONE pass over W: each
// block of rows i is read once to get s_i = M_i . v and, while it is still in cache, added as s_i * M_i into the
// column sums r = M^T s. Then u = s / max(|s|, eps), M^T u = r / max(|s|, eps), v = N(M^T u), and
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
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/spectral_norm.h"
#include "cpu/vectorize.h"

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

// sum_k a[k] * b[k] in 32 independent partial sums: with AVX2, four 8-lane FMA chains, so the loop runs at the
// load rate instead of waiting on one chain's FMA latency (one 8-lane chain measured 21 GB/s on one core).
template <typename scalar_t, typename other_t, typename acc_t>
FASTSN_CPU_CLONES acc_t dot(const scalar_t* __restrict__ a, const other_t* __restrict__ b, int64_t n) {
  constexpr int64_t kParts = 32;
  acc_t part[kParts] = {};
  int64_t k = 0;
  for (; k + kParts <= n; k += kParts) {
    for (int64_t l = 0; l < kParts; ++l) part[l] += static_cast<acc_t>(a[k + l]) * static_cast<acc_t>(b[k + l]);
  }
  for (int64_t width = kParts / 2; width > 0; width /= 2) {  // pairwise: a fixed order, whatever the CPU
    for (int64_t l = 0; l < width; ++l) part[l] += part[l + width];
  }
  acc_t total = part[0];
  for (; k < n; ++k) total += static_cast<acc_t>(a[k]) * static_cast<acc_t>(b[k]);
  return total;
}

// Outputs (W_sn, dW) of at least this many bytes in one call are written with streaming stores, in float32: a
// plain store first reads the line it overwrites, so writing W costs two passes over memory instead of one, and an
// output this large (half a 32 MB last-level cache) is out of the cache before the next op reads it anyway. On the
// 2-core EPYC VM, streaming took the BigGAN-128-like refresh (40 MB of weights) from 8.8-11.4 ms to 7.8-10.2 ms
// (three runs, alternating in one process).
constexpr int64_t kStreamBytes = int64_t(16) << 20;

inline bool stream_output(int64_t bytes) {
#if defined(__SSE2__)
  return bytes >= kStreamBytes;
#else
  return false;
#endif
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Streaming stores are weakly ordered: fence them before another thread (or the caller) may read the output.
inline void fence_streaming_stores(bool stream) {
#if defined(__SSE2__)
  if (stream) _mm_sfence();
#endif
}

// Rows per block of the matrix pass: the dots of kRowBlock rows load v once, and their kRowBlock contributions to
// r = M^T c are added in one read and write of r. One row at a time (v and r loaded, and r stored, for every row),
// the fused pass over a 512x4608 weight ran at 21 GB/s on one core of the EPYC VM; four at a time, 27 GB/s; a plain
// read of W, 30 GB/s.
constexpr int64_t kRowBlock = 4;

// out[l] = sum_k a_l[k] * b[k] for the four rows a_0..a_3, in 16 partial sums per row added pairwise (a fixed
// order, whatever the CPU)
template <typename scalar_t, typename acc_t>
FASTSN_CPU_CLONES void dot_rows(const scalar_t* __restrict__ a0, const scalar_t* __restrict__ a1,
                                const scalar_t* __restrict__ a2, const scalar_t* __restrict__ a3,
                                const acc_t* __restrict__ b, int64_t n, acc_t* __restrict__ out) {
  constexpr int64_t kParts = 16;
  acc_t p0[kParts] = {}, p1[kParts] = {}, p2[kParts] = {}, p3[kParts] = {};
  int64_t k = 0;
  for (; k + kParts <= n; k += kParts) {
    for (int64_t l = 0; l < kParts; ++l) {
      const acc_t bl = b[k + l];
      p0[l] += static_cast<acc_t>(a0[k + l]) * bl;
      p1[l] += static_cast<acc_t>(a1[k + l]) * bl;
      p2[l] += static_cast<acc_t>(a2[k + l]) * bl;
      p3[l] += static_cast<acc_t>(a3[k + l]) * bl;
    }
  }
  for (int64_t width = kParts / 2; width > 0; width /= 2) {
    for (int64_t l = 0; l < width; ++l) {
      p0[l] += p0[l + width];
      p1[l] += p1[l + width];
      p2[l] += p2[l + width];
      p3[l] += p3[l + width];
    }
  }
  for (; k < n; ++k) {
    const acc_t bk = b[k];
    p0[0] += static_cast<acc_t>(a0[k]) * bk;
    p1[0] += static_cast<acc_t>(a1[k]) * bk;
    p2[0] += static_cast<acc_t>(a2[k]) * bk;
    p3[0] += static_cast<acc_t>(a3[k]) * bk;
  }
  out[0] = p0[0];
  out[1] = p1[0];
  out[2] = p2[0];
  out[3] = p3[0];
}

// y[k] += c[0] * a_0[k] + ... + c[3] * a_3[k]
template <typename scalar_t, typename acc_t>
FASTSN_CPU_CLONES void axpy_rows(const acc_t* __restrict__ c, const scalar_t* __restrict__ a0,
                                 const scalar_t* __restrict__ a1, const scalar_t* __restrict__ a2,
                                 const scalar_t* __restrict__ a3, acc_t* __restrict__ y, int64_t n) {
  const acc_t c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3];
  for (int64_t k = 0; k < n; ++k) {
    y[k] += c0 * static_cast<acc_t>(a0[k]) + c1 * static_cast<acc_t>(a1[k]) + c2 * static_cast<acc_t>(a2[k]) +
            c3 * static_cast<acc_t>(a3[k]);
  }
}

// y[k] += alpha * x[k]
template <typename scalar_t, typename acc_t>
FASTSN_CPU_CLONES void axpy(acc_t alpha, const scalar_t* __restrict__ x, acc_t* __restrict__ y, int64_t n) {
  for (int64_t k = 0; k < n; ++k) y[k] += alpha * static_cast<acc_t>(x[k]);
}

// out[k] = x[k] * scale (scale = 1 / sigma: within an ulp of torch's W / sigma, and several times faster).
// stream: float32 stores that bypass the cache (kStreamBytes).
template <typename scalar_t, typename acc_t>
FASTSN_CPU_CLONES void scale(const scalar_t* __restrict__ x, acc_t factor, scalar_t* __restrict__ out, int64_t n,
                             bool stream) {
  int64_t k = 0;
#if defined(__SSE2__)
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (stream) {
      for (; k < n && !aligned16(out + k); ++k) out[k] = x[k] * factor;
      const __m128 f = _mm_set1_ps(factor);
      for (; k + 8 <= n; k += 8) {
        _mm_stream_ps(out + k, _mm_mul_ps(_mm_loadu_ps(x + k), f));
        _mm_stream_ps(out + k + 4, _mm_mul_ps(_mm_loadu_ps(x + k + 4), f));
      }
    }
  }
#endif
  for (; k < n; ++k) out[k] = static_cast<scalar_t>(static_cast<acc_t>(x[k]) * factor);
}

// out[k] = (g[k] - cu * v[k]) * factor: one row segment of the normalize backward (factor = 1 / sigma)
template <typename scalar_t, typename acc_t>
FASTSN_CPU_CLONES void backward_segment(const scalar_t* __restrict__ g, acc_t cu, const acc_t* __restrict__ v,
                                        acc_t factor, scalar_t* __restrict__ out, int64_t n, bool stream) {
  int64_t k = 0;
#if defined(__SSE2__)
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (stream) {
      for (; k < n && !aligned16(out + k); ++k) out[k] = (g[k] - cu * v[k]) * factor;
      const __m128 f = _mm_set1_ps(factor), c = _mm_set1_ps(cu);
      for (; k + 4 <= n; k += 4) {
        _mm_stream_ps(out + k, _mm_mul_ps(_mm_sub_ps(_mm_loadu_ps(g + k), _mm_mul_ps(c, _mm_loadu_ps(v + k))), f));
      }
    }
  }
#endif
  for (; k < n; ++k) {
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
      const int64_t row_end = std::min(h, (task + 1) * rows_per_task);
      int64_t i = task * rows_per_task;
      for (; i + kRowBlock <= row_end; i += kRowBlock) {
        auto row = [&](int64_t o, int64_t l) { return weight + (o * h + i + l) * inner; };
        acc_t c[kRowBlock];  // the row coefficients: s_i (fused pass, summed below) or coef_i (column pass)
        for (int64_t l = 0; l < kRowBlock; ++l) c[l] = v || !coef ? acc_t(0) : (*coef)[i + l];
        if (v) {
          for (int64_t o = 0; o < outer; ++o) {
            acc_t part[kRowBlock];
            dot_rows<scalar_t, acc_t>(row(o, 0), row(o, 1), row(o, 2), row(o, 3), v->data() + o * inner, inner, part);
            for (int64_t l = 0; l < kRowBlock; ++l) c[l] += part[l];
          }
          for (int64_t l = 0; l < kRowBlock; ++l) (*s)[i + l] = c[l];
        }
        if (r_part) {
          for (int64_t o = 0; o < outer; ++o) {
            axpy_rows<scalar_t, acc_t>(c, row(o, 0), row(o, 1), row(o, 2), row(o, 3), r_part + o * inner, inner);
          }
        }
      }
      for (; i < row_end; ++i) {
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
void write_vector(const std::vector<acc_t>& x, scalar_t* out) {
  for (size_t k = 0; k < x.size(); ++k) out[k] = static_cast<scalar_t>(x[k]);
}

// t (a u or v buffer, updated in place) = values (t.numel() of them); `flat` holds the same values as a tensor,
// for the rare buffer that is not contiguous.
template <typename scalar_t>
void store_in_place(at::Tensor& t, const scalar_t* values, const at::Tensor& flat) {
  if (t.is_contiguous()) {
    std::copy(values, values + t.numel(), t.mutable_data_ptr<scalar_t>());
  } else {
    t.copy_(flat);
  }
}

// One weight's power iteration (arguments checked by the caller): reads u and v, writes the updated vectors to
// u_out (h) and v_out (w), and returns sigma. u and v themselves are left to the caller.
template <typename scalar_t>
at::opmath_type<scalar_t> power_iteration_into(const at::Tensor& weight, const at::Tensor& u, const at::Tensor& v,
                                               int64_t dim, int64_t n_power_iterations, double eps, bool u_first,
                                               scalar_t* u_out, scalar_t* v_out) {
  using acc_t = at::opmath_type<scalar_t>;
  const SpectralNormShape shape = spectral_norm_shape(weight, dim);
  const at::Tensor w_c = weight.contiguous();
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
  write_vector<scalar_t>(u_acc, u_out);  // with no iteration: u and v as they are (in the weight's dtype)
  write_vector<scalar_t>(v_acc, v_out);
  return sigma_value;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> power_iteration_cpu(const at::Tensor& weight, at::Tensor& u,
                                                                   at::Tensor& v, int64_t dim,
                                                                   int64_t n_power_iterations, double eps,
                                                                   bool u_first) {
  check_power_iteration_args(weight, u, v, dim, n_power_iterations, eps);
  check_device(weight, c10::DeviceType::CPU, "fastsn::spectral_norm_power_iteration", "weight");
  const SpectralNormShape shape = spectral_norm_shape(weight, dim);
  at::Tensor sigma = at::empty({}, weight.options().dtype(at::toOpMathType(weight.scalar_type())));
  at::Tensor u_copy = at::empty({shape.h}, u.options());
  at::Tensor v_copy = at::empty({shape.w()}, v.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "spectral_norm_power_iteration", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* u_out = u_copy.mutable_data_ptr<scalar_t>();
    scalar_t* v_out = v_copy.mutable_data_ptr<scalar_t>();
    *sigma.mutable_data_ptr<acc_t>() =
        power_iteration_into<scalar_t>(weight, u, v, dim, n_power_iterations, eps, u_first, u_out, v_out);
    if (n_power_iterations > 0) {
      store_in_place<scalar_t>(u, u_out, u_copy);
      store_in_place<scalar_t>(v, v_out, v_copy);
    }
  });
  return {sigma, u_copy, v_copy};
}

// The kernels multiply by 1 / sigma. Where that overflows (|sigma| below 1 / FLT_MAX, reachable only with eps below
// it, e.g. eps = 0, or sigma = 0) they divide instead, as torch does: W / sigma can still be finite.

// out = W / sigma (W / eps where |sigma| < eps), numel elements; stream: see kStreamBytes
template <typename scalar_t, typename acc_t>
void normalize_into(const scalar_t* wp, acc_t s, double eps, scalar_t* op, int64_t numel, bool stream) {
  const acc_t s_hat = std::abs(s) < static_cast<acc_t>(eps) ? static_cast<acc_t>(eps) : s;
  if (!std::isfinite(acc_t(1) / s_hat)) {  // divide: see above
    at::parallel_for(0, numel, kGrainElements, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) op[k] = static_cast<scalar_t>(static_cast<acc_t>(wp[k]) / s_hat);
    });
    return;
  }
  at::parallel_for(0, numel, kGrainElements, [&](int64_t begin, int64_t end) {
    scale<scalar_t, acc_t>(wp + begin, acc_t(1) / s_hat, op + begin, end - begin, stream);
    fence_streaming_stores(stream);
  });
}

at::Tensor normalize_cpu(const at::Tensor& weight, const at::Tensor& u, const at::Tensor& v, const at::Tensor& sigma,
                         int64_t dim, double eps) {
  check_normalize_args(weight, u, v, sigma, dim, "fastsn::spectral_norm_normalize");
  check_device(weight, c10::DeviceType::CPU, "fastsn::spectral_norm_normalize", "weight");
  const at::Tensor w_c = normalize_input(weight);
  at::Tensor out = at::empty_like(w_c);  // (w_c's strides)
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "spectral_norm_normalize", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t s = sigma.to(at::toOpMathType(weight.scalar_type())).item<acc_t>();
    normalize_into<scalar_t, acc_t>(w_c.const_data_ptr<scalar_t>(), s, eps, out.mutable_data_ptr<scalar_t>(),
                                    w_c.numel(), stream_output(w_c.nbytes()));
  });
  return out;
}

// dW = (G - <G, W_sn> u v^T) / sigma, with <G, W_sn> = <G, W> / sigma; G / eps where |sigma| < eps. All pointers
// to contiguous data; u (h) and v (w) in the weight's dtype. stream: see kStreamBytes.
template <typename scalar_t, typename acc_t>
void normalize_backward_into(const scalar_t* gp, const scalar_t* wp, const scalar_t* up, const scalar_t* vp,
                             acc_t s, double eps, const SpectralNormShape& shape, scalar_t* op, bool stream) {
  const bool clamped = std::abs(s) < static_cast<acc_t>(eps);
  const acc_t s_hat = clamped ? static_cast<acc_t>(eps) : s;
  const int64_t h = shape.h, inner = shape.inner, numel = shape.outer * h * inner;
  const std::vector<acc_t> u_acc(up, up + h), v_acc(vp, vp + shape.w());
  const acc_t g_dot_w = at::parallel_reduce(
      0, numel, kGrainElements, acc_t(0),
      [&](int64_t begin, int64_t end, acc_t acc) {
        return acc + dot<scalar_t, scalar_t, acc_t>(gp + begin, wp + begin, end - begin);
      },
      [](acc_t a, acc_t b) { return a + b; });
  const acc_t coef = clamped ? acc_t(0) : g_dot_w / s_hat;  // <G, W_sn>
  // rows (o, i) of length I: element k of row (o, i) sits at column o*I + k of M
  const bool divide = !std::isfinite(acc_t(1) / s_hat);  // see normalize_into
  at::parallel_for(0, shape.outer * h, std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, inner)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t o = row / h, i = row % h;
      if (divide) {
        for (int64_t k = 0; k < inner; ++k) {
          const acc_t g = static_cast<acc_t>(gp[row * inner + k]);
          op[row * inner + k] = static_cast<scalar_t>((g - coef * u_acc[i] * v_acc[o * inner + k]) / s_hat);
        }
        continue;
      }
      backward_segment<scalar_t, acc_t>(gp + row * inner, coef * u_acc[i], v_acc.data() + o * inner,
                                        acc_t(1) / s_hat, op + row * inner, inner, stream);
    }
    fence_streaming_stores(stream);
  });
}

void check_normalize_backward_grad(const at::Tensor& grad, const at::Tensor& weight, const char* op) {
  check_floating(grad, op, "grad");
  TORCH_CHECK(grad.sizes() == weight.sizes(), op, "(): argument 'grad' must have the shape of 'weight' (",
              weight.sizes(), "), got ", grad.sizes());
}

at::Tensor normalize_backward_cpu(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& u,
                                  const at::Tensor& v, const at::Tensor& sigma, int64_t dim, double eps) {
  const char* op = "fastsn::spectral_norm_normalize_backward";
  check_normalize_args(weight, u, v, sigma, dim, op);
  check_device(weight, c10::DeviceType::CPU, op, "weight");
  check_normalize_backward_grad(grad, weight, op);
  const at::Tensor w_c = weight.contiguous(), u_c = u.contiguous(), v_c = v.contiguous();
  const at::Tensor g_c = grad.to(weight.scalar_type()).contiguous();
  at::Tensor out = at::empty_like(w_c);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "spectral_norm_normalize_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t s = sigma.to(at::toOpMathType(weight.scalar_type())).item<acc_t>();
    normalize_backward_into<scalar_t, acc_t>(g_c.const_data_ptr<scalar_t>(), w_c.const_data_ptr<scalar_t>(),
                                             u_c.const_data_ptr<scalar_t>(), v_c.const_data_ptr<scalar_t>(), s, eps,
                                             spectral_norm_shape(weight, dim), out.mutable_data_ptr<scalar_t>(),
                                             stream_output(w_c.nbytes()));
  });
  return out;
}

int64_t total_bytes(at::TensorList tensors) {
  int64_t bytes = 0;
  for (const at::Tensor& t : tensors) bytes += t.nbytes();
  return bytes;
}

// Grouped ops: one C++ call for every spectral norm of a model, weight after weight, each split over the threads
// as above (spreading small weights over the threads instead, one weight per task, measured 2x slower here). The
// flat outputs are allocated once and every weight's slice found by offset, without a tensor per slice.
std::tuple<at::Tensor, at::Tensor, at::Tensor> grouped_power_iteration_cpu(
    at::TensorList weights, at::TensorList us, at::TensorList vs, at::IntArrayRef dims,
    at::IntArrayRef n_power_iterations, at::ArrayRef<double> eps, const c10::List<bool>& u_first) {
  check_grouped_power_iteration_args(weights, us, vs, dims, n_power_iterations, eps, u_first);
  const size_t n = weights.size();
  int64_t h_total = 0, w_total = 0;
  for (size_t k = 0; k < n; ++k) {
    check_power_iteration_args(weights[k], us[k], vs[k], dims[k], n_power_iterations[k], eps[k]);
    check_device(weights[k], c10::DeviceType::CPU, "fastsn::spectral_norm_grouped_power_iteration", "weights");
    h_total += us[k].numel();
    w_total += vs[k].numel();
  }
  const at::ScalarType dtype = weights[0].scalar_type();
  at::Tensor sigmas = at::empty({static_cast<int64_t>(n)}, weights[0].options().dtype(at::toOpMathType(dtype)));
  at::Tensor u_all = at::empty({h_total}, weights[0].options());
  at::Tensor v_all = at::empty({w_total}, weights[0].options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "spectral_norm_grouped_power_iteration", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* sigma_out = sigmas.mutable_data_ptr<acc_t>();
    int64_t h_offset = 0, w_offset = 0;
    for (size_t k = 0; k < n; ++k) {
      at::Tensor u = us[k], v = vs[k];  // handles sharing the caller's storage: updated in place
      const int64_t h = u.numel(), w = v.numel();
      scalar_t* u_out = u_all.mutable_data_ptr<scalar_t>() + h_offset;
      scalar_t* v_out = v_all.mutable_data_ptr<scalar_t>() + w_offset;
      sigma_out[k] = power_iteration_into<scalar_t>(weights[k], u, v, dims[k], n_power_iterations[k], eps[k],
                                                    u_first.get(k), u_out, v_out);
      if (n_power_iterations[k] > 0) {
        store_in_place<scalar_t>(u, u_out, u_all.narrow(0, h_offset, h));
        store_in_place<scalar_t>(v, v_out, v_all.narrow(0, w_offset, w));
      }
      h_offset += h;
      w_offset += w;
    }
  });
  return {sigmas, u_all, v_all};
}

std::vector<at::Tensor> grouped_normalize_cpu(at::TensorList weights, const at::Tensor& us, const at::Tensor& vs,
                                              const at::Tensor& sigmas, at::IntArrayRef dims, at::ArrayRef<double> eps) {
  const char* op = "fastsn::spectral_norm_grouped_normalize";
  check_group_sizes(weights.size(), {{"dims", dims.size()}, {"eps", eps.size()}}, op);
  const std::vector<GroupedOffset> offsets = grouped_offsets(weights, us, vs, sigmas, dims, op);
  std::vector<at::Tensor> out(weights.size());
  for (size_t k = 0; k < weights.size(); ++k) check_device(weights[k], c10::DeviceType::CPU, op, "weights");
  if (weights.empty()) return out;
  const at::ScalarType dtype = weights[0].scalar_type();
  const at::Tensor sigma_acc = sigmas.to(at::toOpMathType(dtype)).contiguous();
  const bool stream = stream_output(total_bytes(weights));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "spectral_norm_grouped_normalize", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* sp = sigma_acc.const_data_ptr<acc_t>();
    for (size_t k = 0; k < weights.size(); ++k) {
      const at::Tensor w_c = normalize_input(weights[k]);
      out[k] = at::empty_like(w_c);  // (w_c's strides)
      normalize_into<scalar_t, acc_t>(w_c.const_data_ptr<scalar_t>(), sp[k], eps[k],
                                      out[k].mutable_data_ptr<scalar_t>(), w_c.numel(), stream);
    }
  });
  return out;
}

std::vector<at::Tensor> grouped_normalize_backward_cpu(at::TensorList grads, at::TensorList weights, const at::Tensor& us,
                                                       const at::Tensor& vs, const at::Tensor& sigmas,
                                                       at::IntArrayRef dims, at::ArrayRef<double> eps) {
  const char* op = "fastsn::spectral_norm_grouped_normalize_backward";
  check_group_sizes(weights.size(), {{"grads", grads.size()}, {"dims", dims.size()}, {"eps", eps.size()}}, op);
  const std::vector<GroupedOffset> offsets = grouped_offsets(weights, us, vs, sigmas, dims, op);
  std::vector<at::Tensor> out(weights.size());
  for (size_t k = 0; k < weights.size(); ++k) {
    check_device(weights[k], c10::DeviceType::CPU, op, "weights");
    check_normalize_backward_grad(grads[k], weights[k], op);
  }
  if (weights.empty()) return out;
  const at::ScalarType dtype = weights[0].scalar_type();
  const at::Tensor sigma_acc = sigmas.to(at::toOpMathType(dtype)).contiguous();
  const at::Tensor us_c = us.contiguous(), vs_c = vs.contiguous();
  const bool stream = stream_output(total_bytes(weights));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "spectral_norm_grouped_normalize_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* sp = sigma_acc.const_data_ptr<acc_t>();
    for (size_t k = 0; k < weights.size(); ++k) {
      const at::Tensor w_c = weights[k].contiguous();
      const at::Tensor g_c = grads[k].to(dtype).contiguous();
      out[k] = at::empty_like(w_c);
      normalize_backward_into<scalar_t, acc_t>(g_c.const_data_ptr<scalar_t>(), w_c.const_data_ptr<scalar_t>(),
                                               us_c.const_data_ptr<scalar_t>() + offsets[k].h_offset,
                                               vs_c.const_data_ptr<scalar_t>() + offsets[k].w_offset, sp[k], eps[k],
                                               offsets[k].shape, out[k].mutable_data_ptr<scalar_t>(), stream);
    }
  });
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
