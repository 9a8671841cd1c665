// fastsn::minibatch_l1_similarity and its backward, C++ CPU kernels. M (N, B, C) is first copied to T (B, C, N) in
// opmath (float for float16/bfloat16): for one kernel b and one dim c the N samples are contiguous, so the inner loops
// run over a tile of j with unit stride and vectorize, and a (C, kTileJ) tile of T stays in L1 while a block of rows
// i reuses it. Memory: O(N * B * C), never the (N, N, B) distances. Tasks: (b, block of i), split by at::parallel_for.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "common/checks.h"
#include "common/minibatch_l1_similarity.h"
#include "cpu/vectorize.h"

namespace fastsn {
namespace {

constexpr int64_t kTileJ = 256;       // j per tile: C * kTileJ opmath values of T, in L1
constexpr int64_t kBlockI = 16;       // rows i per task, reusing one tile of T
constexpr int64_t kGrainPairs = 1 << 16;  // (i, j, c) triples per task below which threading costs more than it saves

// exp(-d) for d >= 0, written so that a loop over j vectorizes (std::exp does not without -ffast-math): Cephes'
// expf range reduction (x = n ln2 + r, ln2 split in two), its degree-6 polynomial (about 1 ulp), 2^n from the
// exponent bits. d > 87.33654 (126 ln 2 rounded down: beyond it exp is below the smallest normal float, 2^-126)
// and d = +inf give 0, where std::exp gives a subnormal down to d = 103.9 (off by 1.2e-38 at most); NaN stays NaN. No
// float comparison or select: GCC (with -ftrapping-math) turns those into branches, and branches stop the vectorizer;
// the clamp is integer arithmetic on the bits (d >= 0, so its bits order as its values).
FASTSN_ALWAYS_INLINE float exp_neg(float d) {
  constexpr uint32_t kCut = 0x42AEAC4Fu, kInf = 0x7F800000u;  // bits of 87.33654f and +inf
  uint32_t dbits;
  std::memcpy(&dbits, &d, sizeof(d));
  const uint32_t beyond = static_cast<uint32_t>(dbits > kCut) & static_cast<uint32_t>(dbits <= kInf);
  const uint32_t cbits = dbits - (dbits - kCut) * beyond;  // min(d, cut) for d in [0, inf]; NaN untouched
  float x;
  std::memcpy(&x, &cbits, sizeof(x));
  x = -x;
  const int32_t n = static_cast<int32_t>(x * 1.44269504088896341f - 0.5f);  // x <= 0: truncation rounds to nearest
  const float fn = static_cast<float>(n);
  const float r = (x - fn * 0.693359375f) + fn * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (n + 127) << 23;  // n >= -126 (d <= cut): a normal power of two, and p * 2^n normal
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale * static_cast<float>(1u - beyond);
}

inline double exp_neg(double d) { return std::exp(-d); }

template <typename acc_t>
FASTSN_ALWAYS_INLINE acc_t sign_of(acc_t a, acc_t b) {  // sign(a - b), branch-free, 0 at a == b
  return static_cast<acc_t>(a > b) - static_cast<acc_t>(a < b);
}

// sum_j w[j] * sign(xi - xj[j]), in kLanes accumulators as lane_sum
template <typename acc_t>
FASTSN_ALWAYS_INLINE acc_t lane_signed_sum(const acc_t* w, acc_t xi, const acc_t* xj, int64_t len) {
  acc_t lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= len; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += w[j + l] * sign_of(xi, xj[j + l]);
  acc_t s = 0;
  for (; j < len; ++j) s += w[j] * sign_of(xi, xj[j]);
  for (int64_t l = 0; l < kLanes; ++l) s += lanes[l];
  return s;
}

// T (B, C, N) in opmath from M (N, B, C) of any strides.
template <typename scalar_t, typename acc_t>
std::vector<acc_t> transposed(const at::Tensor& m) {
  const int64_t n = m.size(0), b = m.size(1), c = m.size(2);
  const int64_t s0 = m.stride(0), s1 = m.stride(1), s2 = m.stride(2);
  const scalar_t* pm = m.const_data_ptr<scalar_t>();
  std::vector<acc_t> t(static_cast<size_t>(n * b * c));
  at::parallel_for(0, b * c, std::max<int64_t>(1, kGrainPairs / std::max<int64_t>(n, 1)), [&](int64_t lo, int64_t hi) {
    for (int64_t bc = lo; bc < hi; ++bc) {
      const int64_t kb = bc / c, kc = bc % c;
      acc_t* row = t.data() + bc * n;
      const scalar_t* src = pm + kb * s1 + kc * s2;
      for (int64_t j = 0; j < n; ++j) row[j] = static_cast<acc_t>(src[j * s0]);
    }
  });
  return t;
}

// dist[jj] = sum_c |T[c][i] - T[c][j0 + jj]| for jj < len, with the self pair (j == i) set to +inf (its exp is 0).
template <typename acc_t>
FASTSN_ALWAYS_INLINE void tile_distances(const acc_t* tb, int64_t n, int64_t c, int64_t i, int64_t j0, int64_t len,
                                         acc_t* dist) {
  std::fill(dist, dist + len, acc_t(0));
  for (int64_t kc = 0; kc < c; ++kc) {
    const acc_t xi = tb[kc * n + i];
    const acc_t* xj = tb + kc * n + j0;
    for (int64_t jj = 0; jj < len; ++jj) dist[jj] += std::abs(xi - xj[jj]);
  }
  if (i >= j0 && i < j0 + len) dist[i - j0] = std::numeric_limits<acc_t>::infinity();
}

// sum_{j in tile, j != i} exp(-||M_i - M_j||_1) for row i (dist: a kTileJ scratch buffer)
template <typename acc_t>
FASTSN_ALWAYS_INLINE acc_t similarity_tile(const acc_t* tb, int64_t n, int64_t c, int64_t i, int64_t j0,
                                           int64_t len, acc_t* dist) {
  tile_distances(tb, n, c, i, j0, len, dist);
  for (int64_t jj = 0; jj < len; ++jj) dist[jj] = exp_neg(dist[jj]);
  return lane_sum(dist, len);
}

// acc_row[c] -= sum_{j in tile, j != i} (g_i + g_j) e_ij sign(M_ic - M_jc) for row i
template <typename acc_t>
FASTSN_ALWAYS_INLINE void gradient_tile(const acc_t* tb, const acc_t* gb, int64_t n, int64_t c, int64_t i,
                                        int64_t j0, int64_t len, acc_t* dist, acc_t* acc_row) {
  tile_distances(tb, n, c, i, j0, len, dist);
  const acc_t gi = gb[i];
  // w_ij = (g_i + g_j) e_ij in place of the distances (0 for the self pair)
  for (int64_t jj = 0; jj < len; ++jj) dist[jj] = (gi + gb[j0 + jj]) * exp_neg(dist[jj]);
  for (int64_t kc = 0; kc < c; ++kc) acc_row[kc] -= lane_signed_sum(dist, tb[kc * n + i], tb + kc * n + j0, len);
}

// The float tiles (float32, float16, bfloat16 inputs) twice, for x86-64-v3 and for the baseline (cpu/vectorize.h).
FASTSN_SIMD_CLONES float similarity_tile_f32(const float* tb, int64_t n, int64_t c, int64_t i, int64_t j0,
                                             int64_t len, float* dist) {
  return similarity_tile(tb, n, c, i, j0, len, dist);
}

FASTSN_SIMD_CLONES void gradient_tile_f32(const float* tb, const float* gb, int64_t n, int64_t c, int64_t i,
                                          int64_t j0, int64_t len, float* dist, float* acc_row) {
  gradient_tile(tb, gb, n, c, i, j0, len, dist, acc_row);
}

inline float similarity_tile_any(const float* tb, int64_t n, int64_t c, int64_t i, int64_t j0, int64_t len,
                                 float* dist) {
  return similarity_tile_f32(tb, n, c, i, j0, len, dist);
}

inline double similarity_tile_any(const double* tb, int64_t n, int64_t c, int64_t i, int64_t j0, int64_t len,
                                  double* dist) {
  return similarity_tile(tb, n, c, i, j0, len, dist);
}

inline void gradient_tile_any(const float* tb, const float* gb, int64_t n, int64_t c, int64_t i, int64_t j0,
                              int64_t len, float* dist, float* acc_row) {
  gradient_tile_f32(tb, gb, n, c, i, j0, len, dist, acc_row);
}

inline void gradient_tile_any(const double* tb, const double* gb, int64_t n, int64_t c, int64_t i, int64_t j0,
                              int64_t len, double* dist, double* acc_row) {
  gradient_tile(tb, gb, n, c, i, j0, len, dist, acc_row);
}

int64_t grain_tasks(int64_t n, int64_t c) {
  return std::max<int64_t>(1, kGrainPairs / std::max<int64_t>(1, kBlockI * n * c));
}

at::Tensor minibatch_l1_similarity_cpu(const at::Tensor& m) {
  const char* op = "fastsn::minibatch_l1_similarity";
  check_device(m, c10::DeviceType::CPU, op, "M");
  check_minibatch_l1_similarity_args(m, op);
  const int64_t n = m.size(0), b = m.size(1), c = m.size(2);
  at::Tensor o = at::empty({n, b}, m.options());
  if (o.numel() == 0) return o;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, m.scalar_type(), "minibatch_l1_similarity_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const std::vector<acc_t> t = transposed<scalar_t, acc_t>(m);
    scalar_t* po = o.mutable_data_ptr<scalar_t>();
    const int64_t blocks = (n + kBlockI - 1) / kBlockI;
    at::parallel_for(0, b * blocks, grain_tasks(n, c), [&](int64_t lo, int64_t hi) {
      std::vector<acc_t> dist(kTileJ);
      double sums[kBlockI];  // per row: tile sums in double, so N = 8192 terms lose nothing to float32 rounding
      for (int64_t task = lo; task < hi; ++task) {
        const int64_t kb = task / blocks, i0 = (task % blocks) * kBlockI, i1 = std::min(n, i0 + kBlockI);
        const acc_t* tb = t.data() + kb * c * n;  // (C, N) of kernel b
        std::fill(sums, sums + kBlockI, 0.0);
        for (int64_t j0 = 0; j0 < n; j0 += kTileJ) {
          const int64_t len = std::min(kTileJ, n - j0);
          for (int64_t i = i0; i < i1; ++i) {
            sums[i - i0] += static_cast<double>(similarity_tile_any(tb, n, c, i, j0, len, dist.data()));
          }
        }
        for (int64_t i = i0; i < i1; ++i) po[i * b + kb] = static_cast<scalar_t>(sums[i - i0]);
      }
    });
  });
  return o;
}

at::Tensor minibatch_l1_similarity_backward_cpu(const at::Tensor& grad, const at::Tensor& m) {
  const char* op = "fastsn::minibatch_l1_similarity_backward";
  check_device(m, c10::DeviceType::CPU, op, "M");
  check_minibatch_l1_similarity_backward_args(grad, m, op);
  const int64_t n = m.size(0), b = m.size(1), c = m.size(2);
  at::Tensor dm = at::empty({n, b, c}, m.options());
  if (dm.numel() == 0) return dm;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, m.scalar_type(), "minibatch_l1_similarity_backward_cpu",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const std::vector<acc_t> t = transposed<scalar_t, acc_t>(m);
    // gT (B, N): the upstream gradient of kernel b, contiguous over samples
    std::vector<acc_t> gt(static_cast<size_t>(n * b));
    const scalar_t* pg = grad.const_data_ptr<scalar_t>();
    const int64_t g0 = grad.stride(0), g1 = grad.stride(1);
    for (int64_t kb = 0; kb < b; ++kb)
      for (int64_t j = 0; j < n; ++j) gt[kb * n + j] = static_cast<acc_t>(pg[j * g0 + kb * g1]);
    scalar_t* pd = dm.mutable_data_ptr<scalar_t>();
    const int64_t blocks = (n + kBlockI - 1) / kBlockI;
    at::parallel_for(0, b * blocks, grain_tasks(n, c), [&](int64_t lo, int64_t hi) {
      std::vector<acc_t> dist(kTileJ);
      std::vector<acc_t> acc(kBlockI * c);  // (rows of the block, C): dM of the block's rows
      for (int64_t task = lo; task < hi; ++task) {
        const int64_t kb = task / blocks, i0 = (task % blocks) * kBlockI, i1 = std::min(n, i0 + kBlockI);
        const acc_t* tb = t.data() + kb * c * n;
        const acc_t* gb = gt.data() + kb * n;
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t j0 = 0; j0 < n; j0 += kTileJ) {
          const int64_t len = std::min(kTileJ, n - j0);
          for (int64_t i = i0; i < i1; ++i) {
            gradient_tile_any(tb, gb, n, c, i, j0, len, dist.data(), acc.data() + (i - i0) * c);
          }
        }
        for (int64_t i = i0; i < i1; ++i)
          for (int64_t kc = 0; kc < c; ++kc) pd[(i * b + kb) * c + kc] = static_cast<scalar_t>(acc[(i - i0) * c + kc]);
      }
    });
  });
  return dm;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsn, CPU, m) {
  m.impl("minibatch_l1_similarity", &minibatch_l1_similarity_cpu);
  m.impl("minibatch_l1_similarity_backward", &minibatch_l1_similarity_backward_cpu);
}

}  // namespace fastsn
