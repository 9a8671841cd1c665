// Spectral norm, CUDA kernels: the power iteration, W / sigma, and its fused backward.
//
// The weight is read as the (O, H, I) view of common/spectral_norm.h: M[i, j] = W[o, i, k] with j = o*I + k,
// at offset o*H*I + i*I + k. Half and bfloat16 accumulate in float32 (acc_t), float64 in float64.
//
// Power iteration, two paths:
//  * small weights (the many layers of a GAN discriminator, where torch is launch-bound): ONE launch of one
//    CTA runs every iteration, sigma and all writes, with u and v kept in shared memory;
//  * large weights: per pass over W, a row kernel (s = M x, a warp or four per row) or a column kernel
//    (partial sums of M^T y over row slices), then a finalize CTA per weight that adds the partials in a fixed
//    order (deterministic), normalizes, and on the last iteration writes u, v, their copies and sigma. Each
//    launch serves up to 16 large weights (their blocks concatenated in one grid).
// sigma is not a pass of its own: after v = N(t), t = M^T u, sigma = u . (M v) = |t|^2 / max(|t|, eps); in the
// legacy order, after u = N(s), s = M v, sigma = |s|^2 / max(|s|, eps).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>

#include "common/cuda_grid.cuh"
#include "common/cuda_platform.cuh"
#include "common/spectral_norm.h"

namespace fastsn {
namespace {

constexpr int kThreads = 256;           // large-path kernels
constexpr int kSmallThreads = 1024;     // the one-CTA kernels
constexpr int64_t kSmallMaxNumel = 1 << 16;
constexpr int64_t kSmallMaxSharedBytes = 40 * 1024;

// ----------------------------------------------------------------------------------------------------------
// reductions
// ----------------------------------------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ T warp_sum(T x) {
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_down_sync(0xffffffffu, x, offset);
  return x;  // lane 0 holds the sum
}

// Sum over the block, returned to every thread. `scratch` holds 32 values; the call syncs before reusing it.
template <typename T>
__device__ T block_sum(T x, T* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
  x = warp_sum(x);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = threadIdx.x < warps ? scratch[threadIdx.x] : T(0);
  if (warp == 0) {
    x = warp_sum(x);
    if (lane == 0) scratch[0] = x;
  }
  __syncthreads();
  return scratch[0];
}

// max(norm, eps) as std::max on the CPU and clamp_min in F.normalize: a NaN norm stays NaN. (The device max is
// fmax, which returns eps: a NaN in row i of W gave u = s / eps, NaN at i only, where torch's u is all NaN.)
template <typename acc_t>
__device__ __forceinline__ acc_t floor_max(acc_t norm, acc_t eps) {
  return norm < eps ? eps : norm;
}

struct Geometry {
  int64_t outer, h, inner;
  __host__ __device__ int64_t w() const { return outer * inner; }
  // offset of M[i, j] in the contiguous weight
  __device__ __forceinline__ int64_t offset(int64_t i, int64_t j) const {
    const int64_t o = j / inner;
    return (o * h + i) * inner + (j - o * inner);
  }
};

// ----------------------------------------------------------------------------------------------------------
// building blocks shared by the one-CTA kernel: a warp per row, a thread per column
// ----------------------------------------------------------------------------------------------------------

// out[i] = M_i . x for every row i (x, out in shared or global memory); with `dot_with`, returns sum_i dot_with[i] * (M x)_i
// to every thread instead of writing out.
template <typename scalar_t, typename acc_t>
__device__ acc_t block_rows(const scalar_t* __restrict__ weight, Geometry g, const acc_t* x, acc_t* out,
                            const acc_t* dot_with, acc_t* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  acc_t total = 0;
  for (int64_t i = warp; i < g.h; i += warps) {
    acc_t sum = 0;
    for (int64_t j = lane; j < g.w(); j += 32) sum += static_cast<acc_t>(weight[g.offset(i, j)]) * x[j];
    sum = warp_sum(sum);
    if (lane == 0) {
      if (dot_with) total += dot_with[i] * sum;
      else out[i] = sum;
    }
  }
  return dot_with ? block_sum(total, scratch) : acc_t(0);
}

// out[j] = sum_i y[i] M[i, j] for every column j
template <typename scalar_t, typename acc_t>
__device__ void block_columns(const scalar_t* __restrict__ weight, Geometry g, const acc_t* y, acc_t* out) {
  for (int64_t j = threadIdx.x; j < g.w(); j += blockDim.x) {
    const int64_t o = j / g.inner, k = j - o * g.inner;
    const scalar_t* column = weight + o * g.h * g.inner + k;  // M[i, j] = column[i * inner]
    acc_t sum = 0;
    for (int64_t i = 0; i < g.h; ++i) sum += y[i] * static_cast<acc_t>(column[i * g.inner]);
    out[j] = sum;
  }
}

// x /= max(|x|, eps) over n values; returns |x| before scaling. Ends synced.
template <typename acc_t>
__device__ acc_t block_normalize(acc_t* x, int64_t n, acc_t eps, acc_t* scratch) {
  acc_t sq = 0;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) sq += x[k] * x[k];
  const acc_t norm = sqrt(block_sum(sq, scratch));
  const acc_t den = floor_max(norm, eps);
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) x[k] /= den;
  __syncthreads();
  return norm;
}

template <typename scalar_t, typename acc_t>
__device__ void block_store(const acc_t* x, int64_t n, scalar_t* a, scalar_t* b) {
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
    const scalar_t value = static_cast<scalar_t>(x[k]);
    if (a) a[k] = value;
    b[k] = value;
  }
}

// ----------------------------------------------------------------------------------------------------------
// small weights: everything in one CTA, u (h) and v (w) in shared memory; the grouped kernel runs one task
// per CTA, so every small spectral norm of a model is refreshed by one launch
// ----------------------------------------------------------------------------------------------------------

// v starts 16 bytes past the end of u, rounded: the compiler reads u (y in block_columns) with 16-byte loads
// even for its last 1-3 values, and those loads must not overlap v while other threads write it (racecheck).
__host__ __device__ constexpr int64_t small_v_offset(int64_t h) { return (h + 3) / 4 * 4 + 4; }

template <typename scalar_t, typename acc_t>
struct PowerIterationTask {
  const scalar_t* weight;
  Geometry g;
  const scalar_t* u_in;  // contiguous current u (h) and v (w)
  const scalar_t* v_in;
  scalar_t* u_inplace;  // the buffers, written when iterations > 0 (null: updated from the copies afterwards)
  scalar_t* v_inplace;
  scalar_t* u_copy;
  scalar_t* v_copy;
  acc_t* sigma;
  int64_t iterations;
  acc_t eps;
  bool u_first;
};

// Tasks travel in the kernel's parameter space (4 KB): 24 tasks of about 120 bytes per launch.
constexpr int kMaxTasks = 24;

template <typename scalar_t, typename acc_t>
struct PowerIterationTasks {
  PowerIterationTask<scalar_t, acc_t> task[kMaxTasks];
};

template <typename scalar_t, typename acc_t>
__device__ void power_iteration_block(const PowerIterationTask<scalar_t, acc_t>& t) {
  FASTSN_DYNAMIC_SHARED(unsigned char, shared_bytes);  // u, v: float or double
  acc_t* u = reinterpret_cast<acc_t*>(shared_bytes);  // (h)
  acc_t* v = u + small_v_offset(t.g.h);                // (w), after u and its padding
  __shared__ acc_t scratch[32];
  const Geometry g = t.g;
  for (int64_t k = threadIdx.x; k < g.h; k += blockDim.x) u[k] = static_cast<acc_t>(t.u_in[k]);
  for (int64_t k = threadIdx.x; k < g.w(); k += blockDim.x) v[k] = static_cast<acc_t>(t.v_in[k]);
  __syncthreads();
  acc_t sigma_value = 0;
  if (t.iterations == 0) {
    sigma_value = block_rows(t.weight, g, v, static_cast<acc_t*>(nullptr), u, scratch);  // u . (M v)
  }
  for (int64_t it = 0; it < t.iterations; ++it) {
    if (t.u_first) {
      block_rows(t.weight, g, v, u, static_cast<const acc_t*>(nullptr), scratch);  // u = M v
      __syncthreads();
      block_normalize(u, g.h, t.eps, scratch);
      block_columns(t.weight, g, u, v);  // v = M^T u
      __syncthreads();
      const acc_t norm = block_normalize(v, g.w(), t.eps, scratch);
      sigma_value = norm * norm / floor_max(norm, t.eps);
    } else {
      block_columns(t.weight, g, u, v);  // v = M^T u
      __syncthreads();
      block_normalize(v, g.w(), t.eps, scratch);
      block_rows(t.weight, g, v, u, static_cast<const acc_t*>(nullptr), scratch);  // u = M v
      __syncthreads();
      const acc_t norm = block_normalize(u, g.h, t.eps, scratch);
      sigma_value = norm * norm / floor_max(norm, t.eps);
    }
  }
  const bool update = t.iterations > 0;
  block_store(u, g.h, update ? t.u_inplace : static_cast<scalar_t*>(nullptr), t.u_copy);
  block_store(v, g.w(), update ? t.v_inplace : static_cast<scalar_t*>(nullptr), t.v_copy);
  if (threadIdx.x == 0) *t.sigma = sigma_value;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kSmallThreads) power_iteration_small_kernel(PowerIterationTasks<scalar_t, acc_t> tasks) {
  power_iteration_block(tasks.task[blockIdx.x]);
}

// ----------------------------------------------------------------------------------------------------------
// large weights: one pass over W per kernel, then a finalize CTA per weight. The large weights of a group run
// together, up to kMaxLargeTasks per launch: a launch's grid is the concatenation of every weight's blocks, so
// a model's medium weights (a few hundred rows each, too few blocks to fill the GPU alone) share it, and a
// refresh takes a handful of launches instead of four per weight.
// ----------------------------------------------------------------------------------------------------------

constexpr int kMaxLargeTasks = 16;  // 16 tasks of about 170 bytes in the 4 KB of kernel parameters
constexpr int64_t kWideRow = 1024;  // row segments (I) at least this long take 128 threads per row, not a warp

// One large weight: its matrix, its working vectors (acc_t, in global memory) and outputs, its launch shapes.
template <typename scalar_t, typename acc_t>
struct LargeTask {
  const scalar_t* weight;
  Geometry g;
  const scalar_t* u_in;  // contiguous current u (h) and v (w)
  const scalar_t* v_in;
  acc_t* u_acc;    // (h)
  acc_t* s;        // (h): M x of the row kernel
  acc_t* v_acc;    // (w)
  acc_t* partial;  // (slices, w): partial sums of M^T y over row slices
  scalar_t* u_inplace;  // the buffers, written on the last step (null: updated from the copies afterwards)
  scalar_t* v_inplace;
  scalar_t* u_copy;
  scalar_t* v_copy;
  acc_t* sigma;
  int64_t slices, rows_per_slice, column_tiles;
  acc_t eps;
  int row_threads;  // threads per row in the row kernel: 32, or 128 for long rows
};

template <typename scalar_t, typename acc_t>
struct LargeTasks {
  LargeTask<scalar_t, acc_t> task[kMaxLargeTasks];
  int count;
  int rows_begin[kMaxLargeTasks + 1];     // task t has the row kernel's blocks [rows_begin[t], rows_begin[t+1])
  int columns_begin[kMaxLargeTasks + 1];  // and the column kernel's
};

static_assert(sizeof(LargeTasks<double, double>) <= 4000, "the large tasks must fit the 4 KB of kernel parameters");

// The task whose blocks hold `block`: the last t with begin[t] <= block (count <= 16: a scan of the parameters).
__device__ __forceinline__ int task_of_block(const int* begin, int count, int block) {
  int t = 0;
  while (t + 1 < count && begin[t + 1] <= block) ++t;
  return t;
}

// s[i] = M_i . v for every row of every task: row_threads threads per row (a CTA serves one task, so the
// block-wide reduction below is reached by every thread alike).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) rows_kernel(LargeTasks<scalar_t, acc_t> tasks) {
  const int task = task_of_block(tasks.rows_begin, tasks.count, blockIdx.x);
  const LargeTask<scalar_t, acc_t>& t = tasks.task[task];
  const Geometry g = t.g;
  const int row_threads = t.row_threads, rows_per_block = kThreads / row_threads;
  const int lane = threadIdx.x % row_threads;
  const int64_t i = static_cast<int64_t>(blockIdx.x - tasks.rows_begin[task]) * rows_per_block +
                    threadIdx.x / row_threads;
  // (restrict: W and v are only read here, through the read-only data cache)
  const scalar_t* __restrict__ weight = t.weight;
  const acc_t* __restrict__ v = t.v_acc;
  acc_t sum = 0;
  if (i < g.h) {
    for (int64_t o = 0; o < g.outer; ++o) {
      const scalar_t* __restrict__ segment = weight + (o * g.h + i) * g.inner;  // M[i, o*I : (o+1)*I]
      const acc_t* __restrict__ vo = v + o * g.inner;
      for (int64_t k = lane; k < g.inner; k += row_threads) sum += static_cast<acc_t>(segment[k]) * vo[k];
    }
  }
  sum = warp_sum(sum);
  if (row_threads == 32) {
    if (i < g.h && lane == 0) t.s[i] = sum;
    return;
  }
  __shared__ acc_t warp_sums[kThreads / 32];
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = sum;
  __syncthreads();
  if (i < g.h && lane == 0) {
    acc_t total = 0;
    for (int w = 0; w < row_threads / 32; ++w) total += warp_sums[threadIdx.x / 32 + w];  // fixed order
    t.s[i] = total;
  }
}

// partial[slice, j] = sum over the rows i of this slice of y[i] M[i, j], y = u_acc (of_u) or s; the blocks of a
// task are its (column tile, row slice) pairs.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) columns_kernel(LargeTasks<scalar_t, acc_t> tasks, bool of_u) {
  const int task = task_of_block(tasks.columns_begin, tasks.count, blockIdx.x);
  const LargeTask<scalar_t, acc_t>& t = tasks.task[task];
  const Geometry g = t.g;
  const int64_t local = blockIdx.x - tasks.columns_begin[task];
  const int64_t tile = local % t.column_tiles, slice = local / t.column_tiles;
  const int64_t j = tile * kThreads + threadIdx.x;
  if (j >= g.w()) return;
  const int64_t o = j / g.inner, k = j - o * g.inner;
  const scalar_t* __restrict__ column = t.weight + o * g.h * g.inner + k;  // (read only here, as y)
  const acc_t* __restrict__ y = of_u ? t.u_acc : t.s;
  const int64_t begin = slice * t.rows_per_slice, end = min(g.h, begin + t.rows_per_slice);
  acc_t sum = 0;
  for (int64_t i = begin; i < end; ++i) sum += y[i] * static_cast<acc_t>(column[i * g.inner]);
  t.partial[slice * g.w() + j] = sum;
}

enum class Finalize : int {
  kUThenV = 0,   // after rows (s) and columns (partials of M^T s): u = N(s), v = N(M^T u), sigma = |M^T u|
  kV = 1,        // legacy, after columns (partials of M^T u): v = N(M^T u)
  kU = 2,        // legacy, after rows (s = M v): u = N(s), sigma = |s|
  kSigmaOnly = 3 // after rows (s = M v): sigma = u . s
};

// A CTA per task. On the last step the outputs are written (in place where given, and the copies), and sigma.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kSmallThreads)
finalize_kernel(LargeTasks<scalar_t, acc_t> tasks, Finalize mode, bool last) {
  const LargeTask<scalar_t, acc_t>& t = tasks.task[blockIdx.x];
  __shared__ acc_t scratch[32];
  const int64_t h = t.g.h, w = t.g.w();
  const acc_t eps = t.eps;
  const acc_t* s = t.s;
  acc_t* u_acc = t.u_acc;
  acc_t* v_acc = t.v_acc;
  acc_t sigma_value = 0;
  if (mode == Finalize::kSigmaOnly) {
    acc_t dot = 0;
    for (int64_t i = threadIdx.x; i < h; i += blockDim.x) dot += u_acc[i] * s[i];
    sigma_value = block_sum(dot, scratch);
  }
  acc_t s_den = 1;
  if (mode == Finalize::kUThenV || mode == Finalize::kU) {
    acc_t sq = 0;
    for (int64_t i = threadIdx.x; i < h; i += blockDim.x) sq += s[i] * s[i];
    const acc_t s_norm = sqrt(block_sum(sq, scratch));
    s_den = floor_max(s_norm, eps);
    for (int64_t i = threadIdx.x; i < h; i += blockDim.x) u_acc[i] = s[i] / s_den;
    sigma_value = s_norm * s_norm / s_den;
  }
  if (mode == Finalize::kUThenV || mode == Finalize::kV) {
    acc_t sq = 0;
    for (int64_t j = threadIdx.x; j < w; j += blockDim.x) {
      acc_t v = 0;
      for (int64_t slice = 0; slice < t.slices; ++slice) v += t.partial[slice * w + j];  // fixed order
      v /= s_den;  // kUThenV: M^T s / |s| = M^T u
      v_acc[j] = v;
      sq += v * v;
    }
    const acc_t t_norm = sqrt(block_sum(sq, scratch));
    const acc_t t_den = floor_max(t_norm, eps);
    for (int64_t j = threadIdx.x; j < w; j += blockDim.x) v_acc[j] /= t_den;  // same thread wrote it
    if (mode == Finalize::kUThenV) sigma_value = t_norm * t_norm / t_den;
  }
  if (!last) return;
  __syncthreads();
  block_store(u_acc, h, t.u_inplace, t.u_copy);
  block_store(v_acc, w, t.v_inplace, t.v_copy);
  if (threadIdx.x == 0) *t.sigma = sigma_value;
}

// u_acc = u_in (widen_u) and v_acc = v_in (widen_v) in acc_t; grid (blocks, tasks)
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) widen_kernel(LargeTasks<scalar_t, acc_t> tasks, bool widen_u,
                                                         bool widen_v) {
  const LargeTask<scalar_t, acc_t>& t = tasks.task[blockIdx.y];
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  if (widen_u) {
    for (int64_t k = first; k < t.g.h; k += stride) t.u_acc[k] = static_cast<acc_t>(t.u_in[k]);
  }
  if (widen_v) {
    for (int64_t k = first; k < t.g.w(); k += stride) t.v_acc[k] = static_cast<acc_t>(t.v_in[k]);
  }
}

// Outputs of one weight's power iteration, and the contiguous inputs the kernels read.
struct PowerIterationJob {
  at::Tensor weight, u_in, v_in, u, v, sigma, u_copy, v_copy;
  Geometry g;
  int64_t iterations;
  double eps;
  bool u_first;
  bool direct;  // u and v are contiguous: the kernels write them in place
};

// The outputs are given (views into the flat outputs of the grouped op) or, if undefined, allocated.
PowerIterationJob make_job(const at::Tensor& weight, const at::Tensor& u, const at::Tensor& v, int64_t dim,
                           int64_t n_power_iterations, double eps, bool u_first, at::Tensor sigma = {},
                           at::Tensor u_copy = {}, at::Tensor v_copy = {}) {
  check_power_iteration_args(weight, u, v, dim, n_power_iterations, eps);
  check_device(weight, kKernelDevice, "fastsn::spectral_norm_power_iteration", "weight");
  const SpectralNormShape shape = spectral_norm_shape(weight, dim);
  PowerIterationJob job;
  job.weight = weight.contiguous();
  job.u_in = u.contiguous();
  job.v_in = v.contiguous();
  job.u = u;
  job.v = v;
  job.sigma = sigma.defined() ? sigma : at::empty({}, weight.options().dtype(at::toOpMathType(weight.scalar_type())));
  job.u_copy = u_copy.defined() ? u_copy : at::empty({shape.h}, u.options());
  job.v_copy = v_copy.defined() ? v_copy : at::empty({shape.w()}, v.options());
  job.g = Geometry{shape.outer, shape.h, shape.inner};
  job.iterations = n_power_iterations;
  job.eps = eps;
  job.u_first = u_first;
  job.direct = u.is_contiguous() && v.is_contiguous() && n_power_iterations > 0;
  return job;
}

template <typename acc_t>
int64_t small_shared_bytes(const Geometry& g) {
  return (small_v_offset(g.h) + g.w() + 4) * static_cast<int64_t>(sizeof(acc_t));  // + the same slack after v
}

template <typename acc_t>
bool is_small(const PowerIterationJob& job) {
  return job.weight.numel() <= kSmallMaxNumel && small_shared_bytes<acc_t>(job.g) <= kSmallMaxSharedBytes;
}

// Runs large jobs that share u_first and the iteration count (so one sequence of launches serves them all), at
// most kMaxLargeTasks, on the multi-kernel path.
template <typename scalar_t>
void run_large_batch(const std::vector<PowerIterationJob*>& batch, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  const PowerIterationJob& first = *batch.front();
  const int device = first.weight.get_device(), sms = sm_count(device);
  const int64_t iterations = first.iterations;
  const bool u_first = first.u_first;
  LargeTasks<scalar_t, acc_t> tasks;
  tasks.count = static_cast<int>(batch.size());
  std::vector<int64_t> work_offset(batch.size());
  int64_t work_size = 0, rows_blocks = 0, columns_blocks = 0, longest = 1;
  for (size_t k = 0; k < batch.size(); ++k) {
    const PowerIterationJob& job = *batch[k];
    LargeTask<scalar_t, acc_t>& t = tasks.task[k];
    const int64_t h = job.g.h, w = job.g.w();
    t.g = job.g;
    t.column_tiles = std::max<int64_t>(1, (w + kThreads - 1) / kThreads);  // (w may be 0: a (h, 0) weight)
    // row slices for the column kernel: enough blocks for this weight alone to fill the GPU twice over
    t.slices = std::clamp<int64_t>(2 * sms / std::max<int64_t>(t.column_tiles, 1), 1, std::max<int64_t>(h, 1));
    t.rows_per_slice = (h + t.slices - 1) / t.slices;
    t.row_threads = job.g.inner >= kWideRow ? 128 : 32;
    tasks.rows_begin[k] = static_cast<int>(rows_blocks);
    tasks.columns_begin[k] = static_cast<int>(columns_blocks);
    rows_blocks += std::max<int64_t>(1, (h + kThreads / t.row_threads - 1) / (kThreads / t.row_threads));
    columns_blocks += t.column_tiles * t.slices;
    work_offset[k] = work_size;
    work_size += 2 * h + w + t.slices * w;
    longest = std::max({longest, h, w});
  }
  TORCH_CHECK(rows_blocks < (int64_t{1} << 31) && columns_blocks < (int64_t{1} << 31),
              "fastsn::spectral_norm_power_iteration(): the weights are too large for one launch's grid");
  tasks.rows_begin[batch.size()] = static_cast<int>(rows_blocks);
  tasks.columns_begin[batch.size()] = static_cast<int>(columns_blocks);
  at::Tensor work = at::empty({work_size}, first.weight.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  for (size_t k = 0; k < batch.size(); ++k) {
    PowerIterationJob& job = *batch[k];
    LargeTask<scalar_t, acc_t>& t = tasks.task[k];
    t.weight = job.weight.const_data_ptr<scalar_t>();
    t.u_in = job.u_in.const_data_ptr<scalar_t>();
    t.v_in = job.v_in.const_data_ptr<scalar_t>();
    t.u_acc = work.mutable_data_ptr<acc_t>() + work_offset[k];
    t.s = t.u_acc + t.g.h;
    t.v_acc = t.s + t.g.h;
    t.partial = t.v_acc + t.g.w();
    t.u_inplace = job.direct ? job.u.mutable_data_ptr<scalar_t>() : nullptr;
    t.v_inplace = job.direct ? job.v.mutable_data_ptr<scalar_t>() : nullptr;
    t.u_copy = job.u_copy.mutable_data_ptr<scalar_t>();
    t.v_copy = job.v_copy.mutable_data_ptr<scalar_t>();
    t.sigma = job.sigma.mutable_data_ptr<acc_t>();
    t.eps = static_cast<acc_t>(job.eps);
  }
  const unsigned count = static_cast<unsigned>(batch.size());
  // Only the vector the first pass reads is widened: u in the legacy order (columns of u first), v when u comes
  // first (rows of v first); the finalize writes the other before it is read. Without iterations (sigma only) the
  // finalize reads u and stores both.
  const dim3 widen_grid(static_cast<unsigned>(grid_stride_blocks(longest, kThreads, device)), count);
  FASTSN_LAUNCH(widen_grid, kThreads, 0, stream, widen_kernel<scalar_t, acc_t>)(
      tasks, !u_first || iterations == 0, u_first || iterations == 0);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto rows = [&] {  // s = M v
    FASTSN_LAUNCH(static_cast<unsigned>(rows_blocks), kThreads, 0, stream, rows_kernel<scalar_t, acc_t>)(tasks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  auto columns = [&](bool of_u) {  // partials of M^T u (of_u) or M^T s
    FASTSN_LAUNCH(static_cast<unsigned>(columns_blocks), kThreads, 0, stream, columns_kernel<scalar_t, acc_t>)(
        tasks, of_u);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  auto finalize = [&](Finalize mode, bool last) {
    FASTSN_LAUNCH(count, kSmallThreads, 0, stream, finalize_kernel<scalar_t, acc_t>)(tasks, mode, last);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (iterations == 0) {
    rows();
    finalize(Finalize::kSigmaOnly, true);
    return;
  }
  for (int64_t it = 0; it < iterations; ++it) {
    const bool last = it + 1 == iterations;
    if (u_first) {
      rows();
      columns(false);
      finalize(Finalize::kUThenV, last);
    } else {
      columns(true);
      finalize(Finalize::kV, false);
      rows();
      finalize(Finalize::kU, last);
    }
  }
}

// Runs the large jobs in batches of kMaxLargeTasks that share u_first and the iteration count.
template <typename scalar_t>
void run_large(const std::vector<PowerIterationJob*>& large, cudaStream_t stream) {
  std::vector<bool> done(large.size(), false);
  for (size_t k = 0; k < large.size(); ++k) {
    if (done[k]) continue;
    std::vector<PowerIterationJob*> batch;
    for (size_t m = k; m < large.size() && batch.size() < kMaxLargeTasks; ++m) {
      if (!done[m] && large[m]->u_first == large[k]->u_first && large[m]->iterations == large[k]->iterations) {
        batch.push_back(large[m]);
        done[m] = true;
      }
    }
    run_large_batch<scalar_t>(batch, stream);
  }
}

// Runs jobs of one dtype on one device: the small ones kMaxTasks to a launch (a CTA each), the large ones
// batched on the multi-kernel path.
template <typename scalar_t>
void run_power_iterations(std::vector<PowerIterationJob>& jobs, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  auto task_of = [](PowerIterationJob& job) {
    PowerIterationTask<scalar_t, acc_t> t;
    t.weight = job.weight.const_data_ptr<scalar_t>();
    t.g = job.g;
    t.u_in = job.u_in.const_data_ptr<scalar_t>();
    t.v_in = job.v_in.const_data_ptr<scalar_t>();
    t.u_inplace = job.direct ? job.u.mutable_data_ptr<scalar_t>() : nullptr;
    t.v_inplace = job.direct ? job.v.mutable_data_ptr<scalar_t>() : nullptr;
    t.u_copy = job.u_copy.mutable_data_ptr<scalar_t>();
    t.v_copy = job.v_copy.mutable_data_ptr<scalar_t>();
    t.sigma = job.sigma.mutable_data_ptr<acc_t>();
    t.iterations = job.iterations;
    t.eps = static_cast<acc_t>(job.eps);
    t.u_first = job.u_first;
    return t;
  };
  PowerIterationTasks<scalar_t, acc_t> batch;
  int count = 0;
  int64_t shared = 0;
  std::vector<PowerIterationJob*> large;
  auto flush = [&] {
    if (count == 0) return;
    FASTSN_LAUNCH(count, kSmallThreads, shared, stream, power_iteration_small_kernel<scalar_t, acc_t>)(batch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    count = 0;
    shared = 0;
  };
  for (PowerIterationJob& job : jobs) {
    if (is_small<acc_t>(job)) {
      batch.task[count++] = task_of(job);
      shared = std::max(shared, small_shared_bytes<acc_t>(job.g));
      if (count == kMaxTasks) flush();
    } else {
      large.push_back(&job);
    }
  }
  flush();
  run_large<scalar_t>(large, stream);
  for (PowerIterationJob& job : jobs) {
    if (job.iterations > 0 && !job.direct) {
      job.u.copy_(job.u_copy);
      job.v.copy_(job.v_copy);
    }
  }
}

void run_jobs(std::vector<PowerIterationJob>& jobs) {
  if (jobs.empty()) return;
  const at::Tensor& first = jobs.front().weight;  // one device and dtype: check_grouped_power_iteration_args
  const c10::cuda::CUDAGuard guard(first.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(first.get_device()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, first.scalar_type(), "spectral_norm_power_iteration",
                                  [&] { run_power_iterations<scalar_t>(jobs, stream); });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> power_iteration_cuda(const at::Tensor& weight, at::Tensor& u,
                                                                    at::Tensor& v, int64_t dim,
                                                                    int64_t n_power_iterations, double eps,
                                                                    bool u_first) {
  std::vector<PowerIterationJob> jobs{make_job(weight, u, v, dim, n_power_iterations, eps, u_first)};
  run_jobs(jobs);
  return {jobs[0].sigma, jobs[0].u_copy, jobs[0].v_copy};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grouped_power_iteration_cuda(
    at::TensorList weights, at::TensorList us, at::TensorList vs, at::IntArrayRef dims,
    at::IntArrayRef n_power_iterations, at::ArrayRef<double> eps, const c10::List<bool>& u_first) {
  check_grouped_power_iteration_args(weights, us, vs, dims, n_power_iterations, eps, u_first);
  int64_t total_h = 0, total_w = 0;
  for (size_t k = 0; k < weights.size(); ++k) {
    total_h += us[k].numel();
    total_w += vs[k].numel();
  }
  const at::Tensor& first = weights[0];
  at::Tensor sigmas = at::empty({static_cast<int64_t>(weights.size())},
                                first.options().dtype(at::toOpMathType(first.scalar_type())));
  at::Tensor u_copies = at::empty({total_h}, first.options());
  at::Tensor v_copies = at::empty({total_w}, first.options());
  std::vector<PowerIterationJob> jobs;
  int64_t h_offset = 0, w_offset = 0;
  for (size_t k = 0; k < weights.size(); ++k) {
    const int64_t h = us[k].numel(), w = vs[k].numel();
    jobs.push_back(make_job(weights[k], us[k], vs[k], dims[k], n_power_iterations[k], eps[k], u_first.get(k),
                            sigmas.select(0, static_cast<int64_t>(k)), u_copies.narrow(0, h_offset, h),
                            v_copies.narrow(0, w_offset, w)));
    h_offset += h;
    w_offset += w;
  }
  run_jobs(jobs);
  return {sigmas, u_copies, v_copies};
}

// ----------------------------------------------------------------------------------------------------------
// normalize and its backward
// ----------------------------------------------------------------------------------------------------------

// sigma, or eps where |sigma| < eps (an all-zero weight): no NaN, where torch would give one
template <typename acc_t>
__device__ __forceinline__ bool too_small(acc_t sigma, acc_t eps) {
  return (sigma < 0 ? -sigma : sigma) < eps;
}

// One weight of a grouped normalize or backward; blockIdx.y picks the task.
template <typename scalar_t, typename acc_t>
struct NormalizeTask {
  const scalar_t* weight;
  const scalar_t* grad;  // backward only
  const scalar_t* u;
  const scalar_t* v;
  const acc_t* sigma;
  scalar_t* out;
  Geometry g;
  acc_t eps;
};

template <typename scalar_t, typename acc_t>
struct NormalizeTasks {
  NormalizeTask<scalar_t, acc_t> task[kMaxTasks];
};

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) normalize_kernel(NormalizeTasks<scalar_t, acc_t> tasks) {
  const NormalizeTask<scalar_t, acc_t>& t = tasks.task[blockIdx.y];
  const acc_t s = too_small(*t.sigma, t.eps) ? t.eps : *t.sigma;
  const int64_t n = t.g.h * t.g.w();
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    t.out[k] = static_cast<scalar_t>(static_cast<acc_t>(t.weight[k]) / s);
  }
}

// partial[task, block] = sum over this block's elements of G * W
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
grad_dot_weight_kernel(NormalizeTasks<scalar_t, acc_t> tasks, acc_t* __restrict__ partial) {
  const NormalizeTask<scalar_t, acc_t>& t = tasks.task[blockIdx.y];
  __shared__ acc_t scratch[32];
  const int64_t n = t.g.h * t.g.w();
  acc_t sum = 0;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    sum += static_cast<acc_t>(t.grad[k]) * static_cast<acc_t>(t.weight[k]);
  }
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) partial[blockIdx.y * gridDim.x + blockIdx.x] = sum;
}

// dW = (G - <G, W_sn> u_i v_j) / sigma; every block first adds its task's <G, W> partials in the same order.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
normalize_backward_kernel(NormalizeTasks<scalar_t, acc_t> tasks, const acc_t* __restrict__ partial, int partials) {
  const NormalizeTask<scalar_t, acc_t>& t = tasks.task[blockIdx.y];
  __shared__ acc_t scratch[32];
  acc_t dot = 0;
  for (int k = threadIdx.x; k < partials; k += blockDim.x) dot += partial[blockIdx.y * partials + k];
  dot = block_sum(dot, scratch);
  const bool clamped = too_small(*t.sigma, t.eps);
  const acc_t s = clamped ? t.eps : *t.sigma;
  const acc_t coef = clamped ? acc_t(0) : dot / s;  // <G, W_sn>
  const Geometry g = t.g;
  const int64_t n = g.h * g.w(), stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= n) return;  // (also an empty weight, whose I or H may be 0)
  // Element k = (o*H + i)*I + c: its (o, i, c) advance by the same step at every turn of the grid-stride loop, so
  // they are carried along (the divisions once per thread; per element they were two int64 divisions, each a long
  // emulated sequence on the GPU).
  int64_t c = k % g.inner, i = k / g.inner % g.h, o = k / g.inner / g.h;
  const int64_t step_c = stride % g.inner, step_i = stride / g.inner % g.h, step_o = stride / g.inner / g.h;
  for (; k < n; k += stride) {
    const acc_t uv = static_cast<acc_t>(t.u[i]) * static_cast<acc_t>(t.v[o * g.inner + c]);
    t.out[k] = static_cast<scalar_t>((static_cast<acc_t>(t.grad[k]) - coef * uv) / s);
    c += step_c;
    const int64_t carry_c = c >= g.inner ? 1 : 0;  // c, i stay below 2I, 2H before the carry: one subtraction
    c -= carry_c * g.inner;
    i += step_i + carry_c;
    const int64_t carry_i = i >= g.h ? 1 : 0;
    i -= carry_i * g.h;
    o += step_o + carry_i;
  }
}

// Normalize (grads empty) or its backward for a list of weights: one launch (two for the backward) per
// kMaxTasks weights.
std::vector<at::Tensor> run_normalize(at::TensorList grads, at::TensorList weights, at::TensorList us,
                                      at::TensorList vs, at::TensorList sigmas, at::IntArrayRef dims,
                                      at::ArrayRef<double> eps, const char* op) {
  const bool backward = !grads.empty();
  check_group_sizes(weights.size(), {{"us", us.size()}, {"vs", vs.size()}, {"sigmas", sigmas.size()},
                                     {"dims", dims.size()}, {"eps", eps.size()}},
                    op);
  if (backward) check_group_sizes(weights.size(), {{"grads", grads.size()}}, op);
  std::vector<at::Tensor> outputs;
  if (weights.empty()) return outputs;
  const at::Tensor& first = weights[0];
  std::vector<at::Tensor> keep;  // contiguous inputs, alive until the launches are queued
  for (size_t k = 0; k < weights.size(); ++k) {
    check_normalize_args(weights[k], us[k], vs[k], sigmas[k], dims[k], op);
    check_device(weights[k], kKernelDevice, op, "weight");
    TORCH_CHECK(weights[k].device() == first.device() && weights[k].scalar_type() == first.scalar_type(), op,
                "(): argument 'weights' must share one device and dtype, got ", first.device(), "/",
                first.scalar_type(), " and ", weights[k].device(), "/", weights[k].scalar_type());
    if (backward) {
      check_floating(grads[k], op, "grad");
      TORCH_CHECK(grads[k].sizes() == weights[k].sizes(), op, "(): argument 'grad' must have the shape of 'weight' (",
                  weights[k].sizes(), "), got ", grads[k].sizes());
      // the kernel reads grad by pointer: one on another device (a CPU grad routes here too) is an illegal access
      TORCH_CHECK(grads[k].device() == weights[k].device(), op, "(): argument 'grad' must be on the device of "
                  "'weight' (", weights[k].device(), "), got ", grads[k].device());
    }
  }
  const c10::cuda::CUDAGuard guard(first.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(first.get_device()).stream();
  const int device = first.get_device();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, first.scalar_type(), "spectral_norm_normalize", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = at::toOpMathType(first.scalar_type());
    for (size_t begin = 0; begin < weights.size(); begin += kMaxTasks) {
      const size_t end = std::min(weights.size(), begin + kMaxTasks);
      NormalizeTasks<scalar_t, acc_t> tasks;
      int64_t largest = 1;
      for (size_t k = begin; k < end; ++k) {
        const SpectralNormShape shape = spectral_norm_shape(weights[k], dims[k]);
        // the forward is elementwise over storage (out has w_c's strides); the backward indexes rows and columns
        const at::Tensor w_c = backward ? weights[k].contiguous() : normalize_input(weights[k]);
        const at::Tensor u_c = us[k].contiguous(), v_c = vs[k].contiguous();
        const at::Tensor s_c = sigmas[k].to(acc_type).contiguous();
        at::Tensor out = at::empty_like(w_c);
        NormalizeTask<scalar_t, acc_t>& t = tasks.task[k - begin];
        t.weight = w_c.const_data_ptr<scalar_t>();
        t.grad = nullptr;
        if (backward) {
          const at::Tensor g_c = grads[k].to(first.scalar_type()).contiguous();
          t.grad = g_c.const_data_ptr<scalar_t>();
          keep.push_back(g_c);
        }
        t.u = u_c.const_data_ptr<scalar_t>();
        t.v = v_c.const_data_ptr<scalar_t>();
        t.sigma = s_c.const_data_ptr<acc_t>();
        t.out = out.mutable_data_ptr<scalar_t>();
        t.g = Geometry{shape.outer, shape.h, shape.inner};
        t.eps = static_cast<acc_t>(eps[k]);
        keep.insert(keep.end(), {w_c, u_c, v_c, s_c});
        outputs.push_back(out);
        largest = std::max<int64_t>(largest, w_c.numel());
      }
      const unsigned count = static_cast<unsigned>(end - begin);
      // blocks per weight: enough for the largest to fill the GPU, at most 1024 (the backward's partials)
      const int blocks = std::min(grid_stride_blocks(largest, kThreads, device), 1024);
      const dim3 grid(static_cast<unsigned>(blocks), count);
      if (!backward) {
        FASTSN_LAUNCH(grid, kThreads, 0, stream, normalize_kernel<scalar_t, acc_t>)(tasks);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        continue;
      }
      at::Tensor partial = at::empty({static_cast<int64_t>(count) * blocks}, first.options().dtype(acc_type));
      FASTSN_LAUNCH(grid, kThreads, 0, stream, grad_dot_weight_kernel<scalar_t, acc_t>)(
          tasks, partial.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      FASTSN_LAUNCH(grid, kThreads, 0, stream, normalize_backward_kernel<scalar_t, acc_t>)(
          tasks, partial.const_data_ptr<acc_t>(), blocks);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return outputs;
}

at::Tensor normalize_cuda(const at::Tensor& weight, const at::Tensor& u, const at::Tensor& v, const at::Tensor& sigma,
                          int64_t dim, double eps) {
  return run_normalize({}, {weight}, {u}, {v}, {sigma}, {dim}, {eps}, "fastsn::spectral_norm_normalize")[0];
}

at::Tensor normalize_backward_cuda(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& u,
                                   const at::Tensor& v, const at::Tensor& sigma, int64_t dim, double eps) {
  return run_normalize({grad}, {weight}, {u}, {v}, {sigma}, {dim}, {eps},
                       "fastsn::spectral_norm_normalize_backward")[0];
}

std::vector<at::Tensor> grouped_normalize_cuda(at::TensorList weights, const at::Tensor& us, const at::Tensor& vs,
                                               const at::Tensor& sigmas, at::IntArrayRef dims, at::ArrayRef<double> eps) {
  const char* op = "fastsn::spectral_norm_grouped_normalize";
  check_group_sizes(weights.size(), {{"dims", dims.size()}, {"eps", eps.size()}}, op);
  const GroupedVectors vectors = split_grouped_vectors(weights, us, vs, sigmas, dims, op);
  return run_normalize({}, weights, vectors.u, vectors.v, vectors.sigma, dims, eps, op);
}

std::vector<at::Tensor> grouped_normalize_backward_cuda(at::TensorList grads, at::TensorList weights,
                                                        const at::Tensor& us, const at::Tensor& vs,
                                                        const at::Tensor& sigmas, at::IntArrayRef dims,
                                                        at::ArrayRef<double> eps) {
  const char* op = "fastsn::spectral_norm_grouped_normalize_backward";
  check_group_sizes(weights.size(), {{"grads", grads.size()}, {"dims", dims.size()}, {"eps", eps.size()}}, op);
  const GroupedVectors vectors = split_grouped_vectors(weights, us, vs, sigmas, dims, op);
  return run_normalize(grads, weights, vectors.u, vectors.v, vectors.sigma, dims, eps, op);
}

}  // namespace

FASTSN_CUDA_LIBRARY_IMPL(m) {
  m.impl("spectral_norm_power_iteration", &power_iteration_cuda);
  m.impl("spectral_norm_normalize", &normalize_cuda);
  m.impl("spectral_norm_normalize_backward", &normalize_backward_cuda);
  m.impl("spectral_norm_grouped_power_iteration", &grouped_power_iteration_cuda);
  m.impl("spectral_norm_grouped_normalize", &grouped_normalize_cuda);
  m.impl("spectral_norm_grouped_normalize_backward", &grouped_normalize_backward_cuda);
}

}  // namespace fastsn
