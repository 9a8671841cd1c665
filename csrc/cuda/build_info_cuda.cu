// fastsn::build_info, CUDA kernel: a grid-stride count of non-finite elements of x, reduced per warp
// with shuffles and per block through shared memory, then one atomicAdd per block into the output.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>

#include "common/build_info.h"
#include "common/checks.h"
#include "common/cuda_grid.cuh"
#include "common/cuda_platform.cuh"

namespace fastsn {
namespace {

namespace L = build_info_layout;

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void build_info_kernel(const scalar_t* __restrict__ x, int64_t n, int64_t device_index,
                                  int64_t item_size, int64_t* __restrict__ out) {
  __shared__ unsigned long long warp_counts[kThreads / 32];
  unsigned long long count = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    // opmath: half and bfloat16 widen to float exactly; double stays double (1e300 is finite)
    count += !isfinite(static_cast<at::opmath_type<scalar_t>>(x[i]));
  }
  for (int offset = 16; offset > 0; offset /= 2) count += __shfl_down_sync(0xffffffffu, count, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_counts[warp] = count;
  __syncthreads();
  if (warp == 0) {
    count = lane < kThreads / 32 ? warp_counts[lane] : 0;
    for (int offset = 16; offset > 0; offset /= 2) count += __shfl_down_sync(0xffffffffu, count, offset);
    if (lane == 0 && count > 0) {
      atomicAdd(reinterpret_cast<unsigned long long*>(out + L::kNonFinite), count);
    }
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    out[L::kBackend] = L::kCuda;
    out[L::kAbi] = L::kAbiVersion;
    out[L::kCudaVersion] = FASTSN_CUDA_VERSION;
    out[L::kNumel] = n;
    out[L::kDeviceIndex] = device_index;
    out[L::kWorkers] = gridDim.x;
    out[L::kItemSize] = item_size;
  }
}

at::Tensor build_info_cuda(const at::Tensor& x) {
  check_device(x, kKernelDevice, "fastsn::build_info", "x");
  check_floating(x, "fastsn::build_info", "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();  // (numel,) view of any strides
  const int64_t n = xc.numel();
  at::Tensor out = at::zeros({L::kNumFields}, x.options().dtype(at::kLong));
  // Enough blocks to fill the GPU a few times over; the grid-stride loop covers the rest.
  const int64_t wanted = (n + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(std::clamp<int64_t>(wanted, 1, 4 * sm_count(x.get_device())));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "build_info_cuda", [&] {
    FASTSN_LAUNCH(blocks, kThreads, 0, stream, build_info_kernel<scalar_t>)(
        xc.const_data_ptr<scalar_t>(), n, x.get_device(), static_cast<int64_t>(x.element_size()),
        out.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

FASTSN_CUDA_LIBRARY_IMPL(m) {
  m.impl("build_info", &build_info_cuda);
}

}  // namespace fastsn
