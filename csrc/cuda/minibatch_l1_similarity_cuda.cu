// fastsn::minibatch_l1_similarity and its backward, CUDA kernels, in opmath (float for float16/bfloat16), on the
// current stream under a device guard. A block owns kThreads rows i of one kernel b (a thread per row); it walks j in
// tiles of kTileJ samples staged in shared memory kChunkC dims at a time, keeping the kTileJ distances of its row in
// registers. Memory: O(N * B * C), never the (N, N, B) distances. C > kChunkC works in chunks: the backward then
// recomputes the distances once per chunk of dM it accumulates in registers.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/cuda_platform.cuh"
#include "common/minibatch_l1_similarity.h"

namespace fastsn {
namespace {

constexpr int kThreads = 128;  // rows i per block
constexpr int kTileJ = 32;     // samples j per shared tile (the distances a thread holds in registers)
constexpr int kChunkC = 16;    // dims per shared tile

struct Strides {
  int64_t n, b, c;  // sizes of M
  int64_t s0, s1, s2;  // strides of M (any layout)
};

template <typename acc_t>
__device__ __forceinline__ acc_t exp_neg(acc_t d) {
  return exp(-d);
}

template <>
__device__ __forceinline__ float exp_neg<float>(float d) {
  return expf(-d);
}

// tile[t][cc] = M[j0 + t, b, c0 + cc], zero outside M; every thread of the block takes part
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_tile(const scalar_t* __restrict__ m, const Strides& s, int64_t kb, int64_t j0,
                                          int64_t c0, acc_t (*tile)[kChunkC + 1]) {
  for (int e = threadIdx.x; e < kTileJ * kChunkC; e += kThreads) {
    const int t = e / kChunkC, cc = e % kChunkC;
    const int64_t j = j0 + t, k = c0 + cc;
    tile[t][cc] = (j < s.n && k < s.c) ? static_cast<acc_t>(m[j * s.s0 + kb * s.s1 + k * s.s2]) : acc_t(0);
  }
}

// row[cc] = M[i, b, c0 + cc], zero outside M
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_row(const scalar_t* __restrict__ m, const Strides& s, int64_t i, int64_t kb,
                                         int64_t c0, acc_t* row) {
#pragma unroll
  for (int cc = 0; cc < kChunkC; ++cc) {
    const int64_t k = c0 + cc;
    row[cc] = (i < s.n && k < s.c) ? static_cast<acc_t>(m[i * s.s0 + kb * s.s1 + k * s.s2]) : acc_t(0);
  }
}

// dist[t] += sum over the chunk's valid dims of |row[cc] - tile[t][cc]|
template <typename acc_t>
__device__ __forceinline__ void add_distances(const acc_t* row, const acc_t (*tile)[kChunkC + 1], int valid,
                                              acc_t* dist) {
#pragma unroll
  for (int cc = 0; cc < kChunkC; ++cc) {
    if (cc < valid) {  // uniform across the block: C = 5 does not pay for 16 dims
#pragma unroll
      for (int t = 0; t < kTileJ; ++t) dist[t] += fabs(row[cc] - tile[t][cc]);
    }
  }
}

// The kTileJ distances of row i to samples j0.. (all dims, every chunk loaded in turn); leaves the last chunk in tile.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void tile_distances(const scalar_t* __restrict__ m, const Strides& s, int64_t i,
                                               int64_t kb, int64_t j0, acc_t (*tile)[kChunkC + 1], acc_t* row,
                                               acc_t* dist) {
#pragma unroll
  for (int t = 0; t < kTileJ; ++t) dist[t] = 0;
  for (int64_t c0 = 0; c0 < s.c; c0 += kChunkC) {
    __syncthreads();  // the previous tile is no longer read
    load_tile(m, s, kb, j0, c0, tile);
    if (s.c > kChunkC) load_row(m, s, i, kb, c0, row);  // one chunk: the row was loaded once, before the j loop
    __syncthreads();
    add_distances(row, tile, static_cast<int>(s.c - c0 < kChunkC ? s.c - c0 : kChunkC), dist);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
l1_similarity_kernel(const scalar_t* __restrict__ m, Strides s, scalar_t* __restrict__ out) {
  __shared__ acc_t tile[kTileJ][kChunkC + 1];
  const int64_t kb = blockIdx.x, i = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  acc_t row[kChunkC], dist[kTileJ];
  if (s.c <= kChunkC) load_row(m, s, i, kb, 0, row);
  // up to N - 1 terms: each tile's sum in acc_t, their total in double, as the CPU kernel sums (a float32 total
  // loses about 1e-6 relative at N = 8192); one double add per tile
  double sum = 0;
  for (int64_t j0 = 0; j0 < s.n; j0 += kTileJ) {
    tile_distances(m, s, i, kb, j0, tile, row, dist);
    acc_t tile_sum = 0;
#pragma unroll
    for (int t = 0; t < kTileJ; ++t) {
      const int64_t j = j0 + t;
      if (j < s.n && j != i) tile_sum += exp_neg(dist[t]);
    }
    sum += static_cast<double>(tile_sum);
  }
  if (i < s.n) out[i * s.b + kb] = static_cast<scalar_t>(sum);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
l1_similarity_backward_kernel(const scalar_t* __restrict__ grad, int64_t g0, int64_t g1,
                              const scalar_t* __restrict__ m, Strides s, scalar_t* __restrict__ dm) {
  __shared__ acc_t tile[kTileJ][kChunkC + 1];
  __shared__ acc_t gj[kTileJ];
  const int64_t kb = blockIdx.x, i = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  const acc_t gi = i < s.n ? static_cast<acc_t>(grad[i * g0 + kb * g1]) : acc_t(0);
  const int64_t last_c0 = ((s.c - 1) / kChunkC) * kChunkC;
  acc_t row[kChunkC], dist[kTileJ];
  // dM[i, b, a0 .. a0 + kChunkC) in registers: one pass over j per chunk of dims
  for (int64_t a0 = 0; a0 < s.c; a0 += kChunkC) {
    acc_t acc[kChunkC];
#pragma unroll
    for (int cc = 0; cc < kChunkC; ++cc) acc[cc] = 0;
    if (s.c <= kChunkC) load_row(m, s, i, kb, 0, row);
    for (int64_t j0 = 0; j0 < s.n; j0 += kTileJ) {
      tile_distances(m, s, i, kb, j0, tile, row, dist);
      if (threadIdx.x < kTileJ) {
        const int64_t j = j0 + threadIdx.x;
        gj[threadIdx.x] = j < s.n ? static_cast<acc_t>(grad[j * g0 + kb * g1]) : acc_t(0);
      }
      if (a0 != last_c0) {  // the tile holds the last chunk of dims: bring chunk a0 back
        __syncthreads();
        load_tile(m, s, kb, j0, a0, tile);
        load_row(m, s, i, kb, a0, row);
      }
      __syncthreads();
      // w_ij = (g_i + g_j) e_ij in place of the distances, 0 for j == i and past N
#pragma unroll
      for (int t = 0; t < kTileJ; ++t) {
        const int64_t j = j0 + t;
        dist[t] = (j < s.n && j != i) ? (gi + gj[t]) * exp_neg(dist[t]) : acc_t(0);
      }
      const int valid = static_cast<int>(s.c - a0 < kChunkC ? s.c - a0 : kChunkC);
#pragma unroll
      for (int cc = 0; cc < kChunkC; ++cc) {
        if (cc < valid) {
          acc_t sum = 0;
#pragma unroll
          for (int t = 0; t < kTileJ; ++t) {
            const acc_t diff = row[cc] - tile[t][cc];
            sum += dist[t] * static_cast<acc_t>((diff > 0) - (diff < 0));
          }
          acc[cc] -= sum;
        }
      }
    }
    if (i < s.n) {
      const int valid = static_cast<int>(s.c - a0 < kChunkC ? s.c - a0 : kChunkC);
#pragma unroll
      for (int cc = 0; cc < kChunkC; ++cc)
        if (cc < valid) dm[(i * s.b + kb) * s.c + a0 + cc] = static_cast<scalar_t>(acc[cc]);
    }
  }
}

Strides strides_of(const at::Tensor& m) {
  return {m.size(0), m.size(1), m.size(2), m.stride(0), m.stride(1), m.stride(2)};
}

dim3 grid_for(const at::Tensor& m) {
  const int64_t blocks_i = (m.size(0) + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks_i <= 65535, "fastsn::minibatch_l1_similarity(): argument 'M' has ", m.size(0),
              " samples; the CUDA kernel takes at most ", 65535 * kThreads);
  TORCH_CHECK(m.size(1) < (int64_t{1} << 31), "fastsn::minibatch_l1_similarity(): argument 'M' has too many kernels");
  return dim3(static_cast<unsigned>(m.size(1)), static_cast<unsigned>(blocks_i));
}

at::Tensor minibatch_l1_similarity_cuda(const at::Tensor& m) {
  const char* op = "fastsn::minibatch_l1_similarity";
  check_device(m, kKernelDevice, op, "M");
  check_minibatch_l1_similarity_args(m, op);
  const c10::cuda::CUDAGuard guard(m.device());
  at::Tensor o = at::empty({m.size(0), m.size(1)}, m.options());
  if (o.numel() == 0) return o;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(m.get_device()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, m.scalar_type(), "minibatch_l1_similarity_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    FASTSN_LAUNCH(grid_for(m), kThreads, 0, stream, l1_similarity_kernel<scalar_t, acc_t>)(
        m.const_data_ptr<scalar_t>(), strides_of(m), o.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return o;
}

at::Tensor minibatch_l1_similarity_backward_cuda(const at::Tensor& grad, const at::Tensor& m) {
  const char* op = "fastsn::minibatch_l1_similarity_backward";
  check_device(m, kKernelDevice, op, "M");
  check_minibatch_l1_similarity_backward_args(grad, m, op);
  const c10::cuda::CUDAGuard guard(m.device());
  at::Tensor dm = at::empty({m.size(0), m.size(1), m.size(2)}, m.options());
  if (dm.numel() == 0) return dm;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(m.get_device()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, m.scalar_type(), "minibatch_l1_similarity_backward_cuda",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    FASTSN_LAUNCH(grid_for(m), kThreads, 0, stream, l1_similarity_backward_kernel<scalar_t, acc_t>)(
        grad.const_data_ptr<scalar_t>(), grad.stride(0), grad.stride(1), m.const_data_ptr<scalar_t>(),
        strides_of(m), dm.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dm;
}

}  // namespace

FASTSN_CUDA_LIBRARY_IMPL(m) {
  m.impl("minibatch_l1_similarity", &minibatch_l1_similarity_cuda);
  m.impl("minibatch_l1_similarity_backward", &minibatch_l1_similarity_backward_cuda);
}

}  // namespace fastsn
