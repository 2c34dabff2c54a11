// Argument checks shared by the CPU and CUDA glue of every family. Each message names
// the argument, what was expected and what was given (docs/ops/conventions.md).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace segops {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// The dtype that box geometry, IoUs and accumulators use for a tensor of `t`: float64 for
// float64, float32 for float32 and the half types (the host side of common's acc_t).
inline at::ScalarType compute_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_float(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_TYPE(is_supported_float(t.scalar_type()), op, ": `", name,
                   "` must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* op, const char* name,
                      const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": `", name, "` must be ", layout, ", got shape ",
                    t.sizes());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op,
                              const char* name_a, const char* name_b) {
  TORCH_CHECK_VALUE(a.device() == b.device(), op, ": `", name_a, "` and `", name_b,
                    "` must be on the same device, got ", a.device(), " and ", b.device());
}

inline void check_nonneg(int64_t v, const char* op, const char* name) {
  TORCH_CHECK_VALUE(v >= 0, op, ": `", name, "` must be >= 0, got ", v);
}

inline void check_not_nan(double v, const char* op, const char* name) {
  TORCH_CHECK_VALUE(v == v, op, ": `", name, "` must not be NaN");
}

inline void check_finite(double v, const char* op, const char* name) {
  TORCH_CHECK_VALUE(std::isfinite(v), op, ": `", name, "` must be finite, got ", v);
}

}  // namespace segops
