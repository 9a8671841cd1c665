// Shared by the CPU and CUDA spectral norm kernels: the matrix view of a weight and the argument checks.
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <utility>
#include <vector>

#include "common/checks.h"

namespace fastsn {

// A contiguous weight seen as (O, H, I) around `dim`: the matrix M (h x w) that torch's spectral norm uses
// (dim permuted to the front, the rest flattened) is M[i, o*I + k] = W[o, i, k], at offset o*H*I + i*I + k.
struct SpectralNormShape {
  int64_t outer = 1;  // O: product of the sizes before dim
  int64_t h = 0;      // H: the size of dim, rows of M
  int64_t inner = 1;  // I: product of the sizes after dim
  int64_t w() const { return outer * inner; }  // columns of M
};

inline SpectralNormShape spectral_norm_shape(const at::Tensor& weight, int64_t dim) {
  SpectralNormShape s;
  for (int64_t d = 0; d < weight.dim(); ++d) {
    if (d < dim) s.outer *= weight.size(d);
    if (d > dim) s.inner *= weight.size(d);
  }
  s.h = weight.size(dim);
  return s;
}

inline void check_spectral_norm_args(const at::Tensor& weight, const at::Tensor& u, const at::Tensor& v, int64_t dim,
                                     const char* op) {
  check_floating(weight, op, "weight");
  check_floating(u, op, "u");
  check_floating(v, op, "v");
  TORCH_CHECK(weight.dim() >= 2, op, "(): argument 'weight' must have at least 2 dimensions, got ", weight.dim());
  TORCH_CHECK(dim >= 0 && dim < weight.dim(), op, "(): argument 'dim' must be in [0, ", weight.dim() - 1, "], got ",
              dim);
  const SpectralNormShape s = spectral_norm_shape(weight, dim);
  TORCH_CHECK(u.dim() == 1 && u.numel() == s.h, op, "(): argument 'u' must have shape (", s.h, ",), got ", u.sizes());
  TORCH_CHECK(v.dim() == 1 && v.numel() == s.w(), op, "(): argument 'v' must have shape (", s.w(), ",), got ",
              v.sizes());
  TORCH_CHECK(u.scalar_type() == weight.scalar_type() && v.scalar_type() == weight.scalar_type(), op,
              "(): arguments 'u' and 'v' must have the dtype of 'weight' (", weight.scalar_type(), "), got ",
              u.scalar_type(), " and ", v.scalar_type());
  TORCH_CHECK(u.device() == weight.device() && v.device() == weight.device(), op,
              "(): arguments 'u' and 'v' must be on the device of 'weight' (", weight.device(), ")");
}

inline void check_power_iteration_args(const at::Tensor& weight, const at::Tensor& u, const at::Tensor& v, int64_t dim,
                                       int64_t n_power_iterations, double eps) {
  const char* op = "fastsn::spectral_norm_power_iteration";
  check_spectral_norm_args(weight, u, v, dim, op);
  TORCH_CHECK(n_power_iterations >= 0, op, "(): argument 'n_power_iterations' must be >= 0, got ",
              n_power_iterations);
  // u and v are written in place: an expanded one (stride 0) would take one element's value in all
  TORCH_CHECK(n_power_iterations == 0 || u.numel() <= 1 || u.stride(0) != 0, op, "(): argument 'u' is updated in "
              "place and must not be expanded (elements sharing memory: stride 0)");
  TORCH_CHECK(n_power_iterations == 0 || v.numel() <= 1 || v.stride(0) != 0, op, "(): argument 'v' is updated in "
              "place and must not be expanded (elements sharing memory: stride 0)");
  // eps is not checked: torch takes any (F.normalize's floor max(norm, eps); eps <= 0 is no floor)
}

inline void check_normalize_args(const at::Tensor& weight, const at::Tensor& u, const at::Tensor& v,
                                 const at::Tensor& sigma, int64_t dim, const char* op) {
  check_spectral_norm_args(weight, u, v, dim, op);
  TORCH_CHECK(sigma.numel() == 1, op, "(): argument 'sigma' must hold one value, got shape ", sigma.sizes());
  TORCH_CHECK(sigma.device() == weight.device(), op, "(): argument 'sigma' must be on the device of 'weight' (",
              weight.device(), ")");
  check_floating(sigma, op, "sigma");
}

// The lists of a grouped op must be as long as its weights.
// W / sigma has torch's layout, empty_like(weight)'s (preserve_format: a dense weight's strides, e.g. channels last,
// else channels last where the strides suggest it, else contiguous), and the kernels read W in that same layout, so
// the pass is elementwise over storage: the weight itself where it is dense, else its clone (in that layout).
inline at::Tensor normalize_input(const at::Tensor& weight) {
  return weight.is_non_overlapping_and_dense() ? weight : weight.clone();
}

inline void check_group_sizes(size_t n, std::initializer_list<std::pair<const char*, size_t>> lists, const char* op) {
  for (const auto& [arg, size] : lists) {
    TORCH_CHECK(size == n, op, "(): argument '", arg, "' must hold one entry per weight (", n, "), got ", size);
  }
}

// The grouped power iteration's lists: one entry per weight, at least one weight, one device and dtype.
inline void check_grouped_power_iteration_args(at::TensorList weights, at::TensorList us, at::TensorList vs,
                                               at::IntArrayRef dims, at::IntArrayRef n_power_iterations,
                                               at::ArrayRef<double> eps, const c10::List<bool>& u_first) {
  const char* op = "fastsn::spectral_norm_grouped_power_iteration";
  check_group_sizes(weights.size(), {{"us", us.size()}, {"vs", vs.size()}, {"dims", dims.size()},
                                     {"n_power_iterations", n_power_iterations.size()}, {"eps", eps.size()},
                                     {"u_first", u_first.size()}},
                    op);
  TORCH_CHECK(!weights.empty(), op, "(): argument 'weights' must not be empty");
  for (const at::Tensor& weight : weights) {
    TORCH_CHECK(weight.device() == weights[0].device() && weight.scalar_type() == weights[0].scalar_type(), op,
                "(): argument 'weights' must share one device and dtype, got ", weights[0].device(), "/",
                weights[0].scalar_type(), " and ", weight.device(), "/", weight.scalar_type());
  }
}

// Where weight k's u (h) and v (w) start in the flat vectors of a grouped op, after checking the group's arguments
// (the CPU kernels read by pointer; split_grouped_vectors makes the CUDA kernels' views from these).
struct GroupedOffset {
  int64_t h_offset = 0, w_offset = 0;
  SpectralNormShape shape;
};

inline std::vector<GroupedOffset> grouped_offsets(at::TensorList weights, const at::Tensor& us, const at::Tensor& vs,
                                                  const at::Tensor& sigmas, at::IntArrayRef dims, const char* op) {
  check_floating(us, op, "us");
  check_floating(vs, op, "vs");
  check_floating(sigmas, op, "sigmas");
  TORCH_CHECK(us.dim() == 1 && vs.dim() == 1 && sigmas.dim() == 1, op,
              "(): arguments 'us', 'vs' and 'sigmas' must be 1-D (the vectors of all weights, concatenated)");
  TORCH_CHECK(sigmas.numel() == static_cast<int64_t>(weights.size()), op, "(): argument 'sigmas' must hold one value per "
              "weight (", weights.size(), "), got ", sigmas.numel());
  std::vector<GroupedOffset> out(weights.size());
  int64_t h_offset = 0, w_offset = 0;
  for (size_t k = 0; k < weights.size(); ++k) {
    const at::Tensor& weight = weights[k];
    check_floating(weight, op, "weights");
    TORCH_CHECK(weight.dim() >= 2 && dims[k] >= 0 && dims[k] < weight.dim(), op, "(): weight ", k,
                " must have at least 2 dimensions and 'dims' within them, got shape ", weight.sizes(), " and dim ",
                dims[k]);
    TORCH_CHECK(us.scalar_type() == weight.scalar_type() && vs.scalar_type() == weight.scalar_type(), op,
                "(): arguments 'us' and 'vs' must have the dtype of the weights (", weight.scalar_type(), "), got ",
                us.scalar_type(), " and ", vs.scalar_type());
    TORCH_CHECK(us.device() == weight.device() && vs.device() == weight.device() && sigmas.device() == weight.device(),
                op, "(): arguments 'us', 'vs' and 'sigmas' must be on the device of the weights (", weight.device(), ")");
    out[k] = {h_offset, w_offset, spectral_norm_shape(weight, dims[k])};
    h_offset += out[k].shape.h;
    w_offset += out[k].shape.w();
  }
  TORCH_CHECK(h_offset == us.numel() && w_offset == vs.numel(), op, "(): arguments 'us' and 'vs' must hold exactly the "
              "vectors of the weights (", h_offset, " and ", w_offset, " values), got ", us.numel(), " and ", vs.numel());
  return out;
}

// Views of weight k's u (h), v (w) and sigma () in the flat vectors of a grouped op, after grouped_offsets' checks
// (all of them before any view: the same error as the CPU kernels for every bad input).
struct GroupedVectors {
  std::vector<at::Tensor> u, v, sigma;
};

inline GroupedVectors split_grouped_vectors(at::TensorList weights, const at::Tensor& us, const at::Tensor& vs,
                                            const at::Tensor& sigmas, at::IntArrayRef dims, const char* op) {
  GroupedVectors out;
  int64_t k = 0;
  for (const GroupedOffset& offset : grouped_offsets(weights, us, vs, sigmas, dims, op)) {
    out.u.push_back(us.narrow(0, offset.h_offset, offset.shape.h));
    out.v.push_back(vs.narrow(0, offset.w_offset, offset.shape.w()));
    out.sigma.push_back(sigmas.select(0, k++));
  }
  return out;
}

}  // namespace fastsn
