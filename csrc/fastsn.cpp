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

  // Spectral norm (fastsn/ops/spectral_norm.py). weight: any shape, seen as the (h, w) matrix with `dim` first.
  // Power iteration: u (h) and v (w) updated in place; returns sigma and fresh copies of u and v.
  // Normalize: weight / sigma, sigma replaced by eps where |sigma| < eps (u, v, dim: for the fused backward).
  // Grouped: the same for a list of weights (every spectral norm of a model) in one launch on CUDA. The vectors
  // travel flat, concatenated in the order of the weights: the grouped power iteration returns sigmas (n) and the
  // copies of all u (sum of h) and all v (sum of w) (a mutating op cannot return lists anyway), and the grouped
  // normalize takes them so (fewer tensors for autograd to track).
  // Each has a twin "<name>_triton" with the same schema: the Triton kernels, registered from Python.
#define FASTSN_SPECTRAL_NORM_SCHEMAS(SUFFIX)                                                                   \
  m.def("spectral_norm_power_iteration" SUFFIX                                                               \
        "(Tensor weight, Tensor(a!) u, Tensor(b!) v, int dim, int n_power_iterations, float eps, bool u_first)" \
        " -> (Tensor sigma, Tensor u_copy, Tensor v_copy)",                                                  \
        {at::Tag::pt2_compliant_tag});                                                                        \
  m.def("spectral_norm_normalize" SUFFIX                                                                     \
        "(Tensor weight, Tensor u, Tensor v, Tensor sigma, int dim, float eps) -> Tensor",                    \
        {at::Tag::pt2_compliant_tag});                                                                        \
  m.def("spectral_norm_normalize_backward" SUFFIX                                                            \
        "(Tensor grad, Tensor weight, Tensor u, Tensor v, Tensor sigma, int dim, float eps) -> Tensor",       \
        {at::Tag::pt2_compliant_tag});                                                                        \
  m.def("spectral_norm_grouped_power_iteration" SUFFIX                                                       \
        "(Tensor[] weights, Tensor(a!)[] us, Tensor(b!)[] vs, int[] dims, int[] n_power_iterations,"          \
        " float[] eps, bool[] u_first) -> (Tensor sigmas, Tensor u_copies, Tensor v_copies)",                 \
        {at::Tag::pt2_compliant_tag});                                                                        \
  m.def("spectral_norm_grouped_normalize" SUFFIX                                                             \
        "(Tensor[] weights, Tensor us, Tensor vs, Tensor sigmas, int[] dims, float[] eps) -> Tensor[]",       \
        {at::Tag::pt2_compliant_tag});                                                                        \
  m.def("spectral_norm_grouped_normalize_backward" SUFFIX                                                    \
        "(Tensor[] grads, Tensor[] weights, Tensor us, Tensor vs, Tensor sigmas, int[] dims,"                 \
        " float[] eps) -> Tensor[]",                                                                          \
        {at::Tag::pt2_compliant_tag});
  FASTSN_SPECTRAL_NORM_SCHEMAS("")
  FASTSN_SPECTRAL_NORM_SCHEMAS("_triton")
#undef FASTSN_SPECTRAL_NORM_SCHEMAS

  // Bias + leaky ReLU + gain (fastsn/ops/bias_leaky_relu.py): y = leaky_relu(x + bias along dim) * gain, gain > 0.
  // Its backward is an op too, dx = grad * gain * (y > 0 ? 1 : negative_slope), whose own backward is itself:
  // the double backward of a gradient penalty runs these kernels (the StyleGAN2-ADA bias_act pattern).
#define FASTSN_BIAS_LEAKY_RELU_SCHEMAS(SUFFIX)                                                                 \
  m.def("bias_leaky_relu" SUFFIX "(Tensor x, Tensor? bias, int dim, float negative_slope, float gain) -> Tensor", \
        {at::Tag::pt2_compliant_tag});                                                                        \
  m.def("bias_leaky_relu_backward" SUFFIX "(Tensor grad, Tensor y, float negative_slope, float gain) -> Tensor",  \
        {at::Tag::pt2_compliant_tag});
  FASTSN_BIAS_LEAKY_RELU_SCHEMAS("")
  FASTSN_BIAS_LEAKY_RELU_SCHEMAS("_triton")
#undef FASTSN_BIAS_LEAKY_RELU_SCHEMAS

  // Minibatch discrimination (fastsn/ops/minibatch_l1_similarity.py): M (N, B, C) -> o (N, B),
  // o[i, b] = sum_{j != i} exp(-sum_c |M[i, b, c] - M[j, b, c]|), without the (N, N, B) tensor. Its backward is an op,
  // dM[i, b, c] = -sum_{j != i} (grad[i, b] + grad[j, b]) e_ij sign(M[i, b, c] - M[j, b, c]); the backward's own
  // gradient is a differentiable PyTorch formula (registered from Python).
#define FASTSN_MINIBATCH_L1_SIMILARITY_SCHEMAS(SUFFIX)                                                         \
  m.def("minibatch_l1_similarity" SUFFIX "(Tensor M) -> Tensor", {at::Tag::pt2_compliant_tag});              \
  m.def("minibatch_l1_similarity_backward" SUFFIX "(Tensor grad, Tensor M) -> Tensor",                        \
        {at::Tag::pt2_compliant_tag});
  FASTSN_MINIBATCH_L1_SIMILARITY_SCHEMAS("")
  FASTSN_MINIBATCH_L1_SIMILARITY_SCHEMAS("_triton")
#undef FASTSN_MINIBATCH_L1_SIMILARITY_SCHEMAS

  // Minibatch standard deviation (fastsn/ops/minibatch_stddev.py): x (N, C, *spatial) -> cat([x, stats], 1) of shape
  // (N, C + num_channels, *spatial), groups of G = min(group_size, N) samples (see common/minibatch_stddev.h).
  // Its backward is an op, dx from grad (N, C + num_channels, *spatial); the backward's own gradient is a
  // differentiable PyTorch formula (registered from Python).
#define FASTSN_MINIBATCH_STDDEV_SCHEMAS(SUFFIX)                                                                \
  m.def("minibatch_stddev" SUFFIX "(Tensor x, int group_size, int num_channels) -> Tensor",                  \
        {at::Tag::pt2_compliant_tag});                                                                        \
  m.def("minibatch_stddev_backward" SUFFIX "(Tensor grad, Tensor x, int group_size, int num_channels) -> Tensor", \
        {at::Tag::pt2_compliant_tag});
  FASTSN_MINIBATCH_STDDEV_SCHEMAS("")
  FASTSN_MINIBATCH_STDDEV_SCHEMAS("_triton")
#undef FASTSN_MINIBATCH_STDDEV_SCHEMAS

  // Gradient penalty head (fastsn/ops/gradient_penalty.py): from the input gradients grad (B, N), one pass per
  // sample gives its norm n_i, the penalty weight * mean_i phi(n_i) and its gradient d penalty / d grad (B, N).
  // mode 0: phi = (n - center)^2 (wgan-gp, dragan); 1: max(0, n - center)^2 (wgan-lp); 2: n^2 (r1, r2).
  m.def("gradient_penalty_head(Tensor grad, int mode, float weight, float center) -> (Tensor penalty, Tensor d_grad)",
        {at::Tag::pt2_compliant_tag});
  m.def("gradient_penalty_head_triton(Tensor grad, int mode, float weight, float center)"
        " -> (Tensor penalty, Tensor d_grad)",
        {at::Tag::pt2_compliant_tag});

  // Interpolation of the WGAN-GP/WGAN-LP/DRAGAN penalty points (fastsn/ops/interpolate.py): out_i = eps_i * real_i
  // + (1 - eps_i) * fake_i, one factor per sample (eps (B,), drawn by the caller), one pass. The backward is an op:
  // (grad_real, grad_fake) = (eps_i * grad_i, (1 - eps_i) * grad_i), and its own backward is interpolate itself.
#define FASTSN_INTERPOLATE_SCHEMAS(SUFFIX)                                                                      \
  m.def("interpolate" SUFFIX "(Tensor real, Tensor fake, Tensor eps) -> Tensor", {at::Tag::pt2_compliant_tag});  \
  m.def("interpolate_backward" SUFFIX "(Tensor grad, Tensor eps) -> (Tensor grad_real, Tensor grad_fake)",       \
        {at::Tag::pt2_compliant_tag});
  FASTSN_INTERPOLATE_SCHEMAS("")
  FASTSN_INTERPOLATE_SCHEMAS("_triton")
#undef FASTSN_INTERPOLATE_SCHEMAS

  // Input gradient of a leaky-ReLU MLP's score (fastsn/ops/mlp_input_gradient.py; shapes in
  // common/mlp_input_gradient.h): g = d sum_i D(x_i) / dx with D = W_{L-1} a(... a(W_0 x + b_0) ...), a_l = gain_l *
  // leaky_relu(., negative_slope_l), plus for the backward each hidden layer's masked delta and sign mask. The
  // backward is an op, dW_l from grad (B, H_0): what a gradient penalty's second backward through such a D needs,
  // without the pass of zeros through every layer that autograd's double backward makes. The backward's own
  // gradient is a differentiable PyTorch formula (registered from Python).
#define FASTSN_MLP_INPUT_GRADIENT_SCHEMAS(SUFFIX)                                                              \
  m.def("mlp_input_gradient" SUFFIX "(Tensor x, Tensor[] weights, Tensor?[] biases, float[] negative_slopes,"   \
        " float[] gains) -> (Tensor input_grad, Tensor[] deltas, Tensor[] positive)",                         \
        {at::Tag::pt2_compliant_tag});                                                                        \
  m.def("mlp_input_gradient_backward" SUFFIX "(Tensor grad, Tensor[] weights, Tensor[] deltas,"                \
        " Tensor[] positive, float[] negative_slopes, float[] gains) -> Tensor[]",                             \
        {at::Tag::pt2_compliant_tag});
  FASTSN_MLP_INPUT_GRADIENT_SCHEMAS("")
  FASTSN_MLP_INPUT_GRADIENT_SCHEMAS("_triton")
#undef FASTSN_MLP_INPUT_GRADIENT_SCHEMAS
}
