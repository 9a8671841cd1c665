// Argument checks shared by the CPU and CUDA kernels; every message names the op and the argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace fastsn {

// float16, bfloat16, float32 or float64: the dtypes every fastsn kernel is instantiated for.
inline void check_floating(const at::Tensor& t, const char* op, const char* arg) {
  const auto dt = t.scalar_type();
  TORCH_CHECK(dt == at::kHalf || dt == at::kBFloat16 || dt == at::kFloat || dt == at::kDouble,
              op, "(): argument '", arg, "' must be float16, bfloat16, float32 or float64, got ", dt);
}

inline void check_device(const at::Tensor& t, c10::DeviceType type, const char* op, const char* arg) {
  TORCH_CHECK(t.device().type() == type, op, "(): argument '", arg, "' must be a ", c10::DeviceTypeName(type),
              " tensor for this kernel, got one on ", t.device());
}

}  // namespace fastsn
