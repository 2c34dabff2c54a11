// Argument checks every family uses: the one place where what an argument's value must be is
// stated, for the CPU and CUDA kernels alike (the Python wrappers check only Python types).
// One wording: "<op>: `<arg>` must be ..., got ...". TORCH_CHECK_TYPE raises TypeError,
// TORCH_CHECK_VALUE ValueError.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>

namespace segops {

// The largest capacity (max_out, top_k, max_detections, max_instances) and the largest
// output extent along one axis an op accepts: far beyond any real use, and small enough that
// products of two of them (and offsets into them) fit in int64.
constexpr int64_t kMaxCount = (int64_t{1} << 31) - 1;

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

// `b` must be on the device of `a`.
inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op,
                              const char* name_a, const char* name_b) {
  TORCH_CHECK_VALUE(a.device() == b.device(), op, ": `", name_b, "` must be on the device of `",
                    name_a, "` (", a.device(), "), got ", b.device());
}

inline void check_nonneg(int64_t v, const char* op, const char* name) {
  TORCH_CHECK_VALUE(v >= 0, op, ": `", name, "` must be >= 0, got ", v);
}

inline void check_not_nan(double v, const char* op, const char* name) {
  TORCH_CHECK_VALUE(v == v, op, ": `", name, "` must not be NaN, got ", v);
}

inline void check_finite(double v, const char* op, const char* name) {
  TORCH_CHECK_VALUE(std::isfinite(v), op, ": `", name, "` must be finite, got ", v);
}

inline void check_range(int64_t v, int64_t lo, int64_t hi, const char* op, const char* name) {
  TORCH_CHECK_VALUE(v >= lo && v <= hi, op, ": `", name, "` must be in [", lo, ", ", hi,
                    "], got ", v);
}

// A size or count in [0, kMaxCount].
inline void check_count(int64_t v, const char* op, const char* name) {
  check_range(v, 0, kMaxCount, op, name);
}

// An (h, w) size argument (output_size, image_size): each axis a count.
inline void check_size_pair(int64_t h, int64_t w, const char* op, const char* name) {
  TORCH_CHECK_VALUE(h >= 0 && h <= kMaxCount && w >= 0 && w <= kMaxCount, op, ": `", name,
                    "` must be in [0, ", kMaxCount, "] on each axis, got (", h, ", ", w, ")");
}

// A capacity: -1 (none: the exact size) or a count.
inline void check_capacity(int64_t v, const char* op, const char* name) {
  TORCH_CHECK_VALUE(v == -1 || (v >= 0 && v <= kMaxCount), op, ": `", name,
                    "` must be in [0, ", kMaxCount, "] (or -1 for none), got ", v);
}

// An output of `sizes` elements of `element_size` bytes must be addressable: the product
// may not overflow, and its bytes must fit in int64. `name` is the argument that sets it.
inline void check_output_size(const char* op, const char* name,
                              std::initializer_list<int64_t> sizes, int64_t element_size) {
  int64_t bytes = element_size;
  bool fits = true;
  for (const int64_t s : sizes) {
    if (s == 0) return;  // an empty output always fits
    fits = fits && s > 0 && bytes <= std::numeric_limits<int64_t>::max() / s;
    if (fits) bytes *= s;
  }
  TORCH_CHECK_VALUE(fits, op, ": `", name, "` makes the output too large (",
                    at::IntArrayRef(sizes), " elements of ", element_size,
                    " bytes overflow int64), got ", at::IntArrayRef(sizes));
}

}  // namespace segops
