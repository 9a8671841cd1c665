// Grid sizes shared by the CUDA kernels (included by .cu files only).
#pragma once

#include "common/cuda_platform.cuh"

#include <algorithm>
#include <cstdint>

namespace fastsn {

inline int sm_count(int device) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

// Blocks for a grid-stride loop over n elements: enough to fill the GPU a few times over, the loop covers the rest.
inline int grid_stride_blocks(int64_t n, int threads, int device) {
  const int64_t most = 8 * static_cast<int64_t>(sm_count(device));
  return static_cast<int>(std::clamp<int64_t>((n + threads - 1) / threads, 1, most));
}

}  // namespace fastsn
