// The CUDA runtime as the .cu files use it, in one place: the real one, or (FASTSN_CUDA_EMULATION, tests only)
// tests/cuda_emulation/cuda_emulation.h, which runs the same kernels on the CPU. Besides the runtime headers:
//   FASTSN_LAUNCH(grid, block, shared, stream, kernel)(args...)   kernel<<<grid, block, shared, stream>>>(args...)
//   FASTSN_DYNAMIC_SHARED(type, name)                             extern __shared__ type name[] (16-byte aligned)
//   FASTSN_CUDA_LIBRARY_IMPL(m)                                   TORCH_LIBRARY_IMPL(fastsn, CUDA, m)
//   kKernelDevice                                                 the device type the kernels take
#pragma once

#ifdef FASTSN_CUDA_EMULATION
#include "cuda_emulation.h"
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#define FASTSN_LAUNCH(grid, block, shared, stream, ...) __VA_ARGS__<<<grid, block, shared, stream>>>
#define FASTSN_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#define FASTSN_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(fastsn, CUDA, m)

namespace fastsn {
constexpr c10::DeviceType kKernelDevice = c10::DeviceType::CUDA;
}
#endif
