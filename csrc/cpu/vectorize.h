// Helpers of the CPU kernels for loops that GCC vectorizes without -ffast-math (the build's flags): a function
// compiled for AVX2 as well as the baseline, sums in independent lanes, packed square roots.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace fastsn {

// FASTSN_SIMD_CLONES compiles a function twice: for x86-64-v3 (AVX2 + FMA, 8 float lanes) and for the x86-64
// baseline (SSE2, 4 lanes, what the build's flags allow), the one this CPU supports picked by its features when the
// library loads (GCC's target_clones; "arch=haswell" would test the CPU model and miss AMD's). Other compilers and
// architectures build the baseline only. Everything such a function calls must be inlined into it
// (FASTSN_ALWAYS_INLINE), so that it is compiled for both.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FASTSN_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#define FASTSN_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define FASTSN_SIMD_CLONES
#define FASTSN_ALWAYS_INLINE inline
#endif

// Sums in kLanes independent accumulators: a plain `s += v[j]` loop does not vectorize (float addition is not
// associative, and we build without -ffast-math), kLanes interleaved sums do.
constexpr int64_t kLanes = 8;

template <typename acc_t>
FASTSN_ALWAYS_INLINE acc_t lane_sum(const acc_t* v, int64_t len) {
  acc_t lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= len; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += v[j + l];
  acc_t s = 0;
  for (; j < len; ++j) s += v[j];
  for (int64_t l = 0; l < kLanes; ++l) s += lanes[l];
  return s;
}

// v[q] = sqrt(v[q]): std::sqrt may set errno, so a loop of it stays scalar (sqrtss, then a check) without
// -fno-math-errno; SSE2's packed square roots have no errno to set.
inline void sqrt_in_place(float* v, int64_t len) {
  int64_t q = 0;
#if defined(__SSE2__)
  for (; q + 4 <= len; q += 4) _mm_storeu_ps(v + q, _mm_sqrt_ps(_mm_loadu_ps(v + q)));
#endif
  for (; q < len; ++q) v[q] = std::sqrt(v[q]);
}

inline void sqrt_in_place(double* v, int64_t len) {
  int64_t q = 0;
#if defined(__SSE2__)
  for (; q + 2 <= len; q += 2) _mm_storeu_pd(v + q, _mm_sqrt_pd(_mm_loadu_pd(v + q)));
#endif
  for (; q < len; ++q) v[q] = std::sqrt(v[q]);
}

}  // namespace fastsn
