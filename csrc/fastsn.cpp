// fastsn._C: every fastsn op schema, in the one TORCH_LIBRARY block of the package.
// CPU and CUDA kernels register beside their code (csrc/cpu, csrc/cuda); Triton kernels, fake kernels
// and autograd formulas register from Python (fastsn/ops, fastsn/triton_kernels).
#include <Python.h>
#include <torch/library.h>

// Importing fastsn._C loads this shared library, which runs the static registrations below and in the
// kernel files. The module itself is empty: every entry point is a torch.ops.fastsn.* operator.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(fastsn, m) {
  // Probe op: which kernel ran, the build it came from, and what it read of x (layout: common/build_info.h).
  m.def("build_info(Tensor x) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("build_info_triton(Tensor x) -> Tensor", {at::Tag::pt2_compliant_tag});
}
