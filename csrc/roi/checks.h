// Argument checks of the RoI family, shared by its CPU and CUDA glue.
#pragma once

#include "core/checks.h"
#include "common/roi_levels.h"

namespace segops {

// RoIs are `[K, 5]` rows of (batch_index, x1, y1, x2, y2) on the input's device.
inline void check_rois(const at::Tensor& input, const at::Tensor& rois, const char* op) {
  check_float(rois, op, "boxes");
  TORCH_CHECK_VALUE(rois.dim() == 2 && rois.size(1) == 5, op,
                    ": `boxes` must be [K, 5] (batch_index, x1, y1, x2, y2), got shape ",
                    rois.sizes());
  check_same_device(input, rois, op, "input", "boxes");
}

// Samples per bin along an axis: at most this many (<= 0: adaptive, ceil(roi / bins)). A
// bin then averages at most 2**20 samples, and no sample count overflows.
constexpr int64_t kMaxSamplingRatio = 1024;

inline void check_sampling_ratio(int64_t sampling_ratio, const char* op) {
  TORCH_CHECK_VALUE(sampling_ratio <= kMaxSamplingRatio, op,
                    ": `sampling_ratio` must be <= ", kMaxSamplingRatio,
                    " (or <= 0 for adaptive), got ", sampling_ratio);
}

inline void check_pooled_size(int64_t pooled_h, int64_t pooled_w, const char* op) {
  check_size_pair(pooled_h, pooled_w, op, "output_size");
}

// RoI forward ops: input [N, C, H, W], rois [K, 5], output size, scale.
inline void check_roi_forward(const char* op, const at::Tensor& input, const at::Tensor& rois,
                              double spatial_scale, int64_t pooled_h, int64_t pooled_w) {
  check_float(input, op, "input");
  check_dim(input, 4, op, "input", "[N, C, H, W]");
  check_rois(input, rois, op);
  check_finite(spatial_scale, op, "spatial_scale");
  check_pooled_size(pooled_h, pooled_w, op);
  check_output_size(op, "output_size", {rois.size(0), input.size(1), pooled_h, pooled_w},
                    input.element_size());
}

inline void check_roi_align(const at::Tensor& input, const at::Tensor& rois,
                            double spatial_scale, int64_t pooled_h, int64_t pooled_w,
                            int64_t sampling_ratio) {
  check_roi_forward("roi_align", input, rois, spatial_scale, pooled_h, pooled_w);
  check_sampling_ratio(sampling_ratio, "roi_align");
}

// RoI backward ops: grad [K, C, pooled_h, pooled_w] for an input of [N, C, H, W].
inline void check_roi_backward(const char* op, const at::Tensor& grad, const at::Tensor& rois,
                               double spatial_scale, int64_t pooled_h, int64_t pooled_w,
                               int64_t batch_size, int64_t channels, int64_t height,
                               int64_t width) {
  check_float(grad, op, "grad");
  check_rois(grad, rois, op);
  check_finite(spatial_scale, op, "spatial_scale");
  check_nonneg(batch_size, op, "batch_size");
  check_nonneg(channels, op, "channels");
  check_nonneg(height, op, "height");
  check_nonneg(width, op, "width");
  check_pooled_size(pooled_h, pooled_w, op);
  check_output_size(op, "batch_size, channels, height, width",
                    {batch_size, channels, height, width}, grad.element_size());
  TORCH_CHECK_VALUE(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels &&
                        grad.size(2) == pooled_h && grad.size(3) == pooled_w,
                    op, ": `grad` must be [K, channels, pooled_height, pooled_width] = [",
                    rois.size(0), ", ", channels, ", ", pooled_h, ", ", pooled_w, "], got shape ",
                    grad.sizes());
}

inline void check_argmax(const char* op, const at::Tensor& grad, const at::Tensor& argmax) {
  TORCH_CHECK_TYPE(argmax.scalar_type() == at::kLong, op, ": `argmax` must be int64, got ",
                   argmax.scalar_type());
  TORCH_CHECK_VALUE(argmax.sizes() == grad.sizes(), op, ": `argmax` must have grad's shape ",
                    grad.sizes(), ", got ", argmax.sizes());
  check_same_device(grad, argmax, op, "grad", "argmax");
}

// Batch indices must be integers in [0, N). `batch_index` is rois[:, 0] on the CPU.
void check_batch_indices(const at::Tensor& rois, int64_t batch_size, const char* op);

// The dtype box geometry is computed in: the input's for float32/float64, float32 for
// half types (docs/ops/roi.md). Returns rois converted to it, contiguous.
at::Tensor rois_for_geometry(const at::Tensor& rois, at::ScalarType input_type);

// multilevel_roi_align: features [L][N, C, H_l, W_l] sharing N, C, dtype and device, one
// spatial scale per level, and (assign mode) L - 1 ascending level areas, empty with
// all_levels. Returns the kernels' plan; batch indices are checked separately.
MultiLevelRoIAlign check_multilevel_forward(const char* op, at::TensorList features,
                                            const at::Tensor& rois,
                                            at::ArrayRef<double> spatial_scales,
                                            int64_t pooled_h, int64_t pooled_w,
                                            int64_t sampling_ratio, bool aligned,
                                            at::ArrayRef<double> level_areas, bool all_levels);

// Its backward: grad [K, C, ph, pw] (assign) or [L, K, C, ph, pw] (all levels) for
// features of [batch_size, channels, heights[l], widths[l]].
MultiLevelRoIAlign check_multilevel_backward(const char* op, const at::Tensor& grad,
                                             const at::Tensor& rois,
                                             at::ArrayRef<double> spatial_scales,
                                             int64_t pooled_h, int64_t pooled_w,
                                             int64_t batch_size, int64_t channels,
                                             at::IntArrayRef heights, at::IntArrayRef widths,
                                             int64_t sampling_ratio, bool aligned,
                                             at::ArrayRef<double> level_areas,
                                             bool all_levels);

}  // namespace segops
