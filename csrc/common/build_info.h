// Layout of the int64[8] tensor returned by fastsn::build_info; fastsn/ops/build_info.py mirrors it.
#pragma once

#include <cstdint>

#ifndef FASTSN_CUDA_VERSION
#define FASTSN_CUDA_VERSION 0  // CPU-only build: setup.py defines the toolkit version (e.g. 13000) otherwise
#endif

namespace fastsn::build_info_layout {

constexpr int64_t kAbiVersion = 1;  // bump when an op's schema or semantics change

enum Field : int64_t {
  kBackend = 0,      // which kernel ran: 0 ref, 1 cpu, 2 cuda, 3 triton
  kAbi = 1,          // kAbiVersion of the code that ran
  kCudaVersion = 2,  // CUDA toolkit fastsn._C was compiled with, as 1000*major + 10*minor; 0 if none
  kNumel = 3,        // elements of x the kernel visited
  kNonFinite = 4,    // NaN and +-Inf among them
  kDeviceIndex = 5,  // x's device index, -1 on CPU
  kWorkers = 6,      // parallel width used: CPU threads, CUDA blocks or Triton programs
  kItemSize = 7,     // bytes per element of x
  kNumFields = 8,
};

enum Backend : int64_t { kRef = 0, kCpu = 1, kCuda = 2, kTriton = 3 };

}  // namespace fastsn::build_info_layout
