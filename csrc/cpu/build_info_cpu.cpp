// fastsn::build_info, C++ CPU kernel: counts non-finite elements of x with at::parallel_reduce.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <functional>

#include "common/build_info.h"
#include "common/checks.h"

namespace fastsn {
namespace {

namespace L = build_info_layout;

constexpr int64_t kGrainSize = 32768;  // elements per task: below this, threading costs more than it saves

at::Tensor build_info_cpu(const at::Tensor& x) {
  check_device(x, c10::DeviceType::CPU, "fastsn::build_info", "x");
  check_floating(x, "fastsn::build_info", "x");
  const at::Tensor xc = x.contiguous();  // (numel,) view of any strides
  const int64_t n = xc.numel();
  int64_t nonfinite = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "build_info_cpu", [&] {
    const scalar_t* p = xc.const_data_ptr<scalar_t>();
    nonfinite = at::parallel_reduce(
        0, n, kGrainSize, int64_t{0},
        [&](int64_t begin, int64_t end, int64_t acc) {
          for (int64_t i = begin; i < end; ++i) {
            // opmath: half and bfloat16 widen to float exactly; double stays double (1e300 is finite)
            acc += !std::isfinite(static_cast<at::opmath_type<scalar_t>>(p[i]));
          }
          return acc;
        },
        std::plus<int64_t>());
  });

  at::Tensor out = at::empty({L::kNumFields}, x.options().dtype(at::kLong));
  int64_t* o = out.mutable_data_ptr<int64_t>();
  o[L::kBackend] = L::kCpu;
  o[L::kAbi] = L::kAbiVersion;
  o[L::kCudaVersion] = FASTSN_CUDA_VERSION;
  o[L::kNumel] = n;
  o[L::kNonFinite] = nonfinite;
  o[L::kDeviceIndex] = -1;
  o[L::kWorkers] = at::get_num_threads();
  o[L::kItemSize] = static_cast<int64_t>(x.element_size());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsn, CPU, m) {
  m.impl("build_info", &build_info_cpu);
}

}  // namespace fastsn
