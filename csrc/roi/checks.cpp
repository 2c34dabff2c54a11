#include "roi/checks.h"

#include <ATen/ops/any.h>
#include <ATen/ops/floor.h>
#include <ATen/ops/ge.h>
#include <ATen/ops/logical_or.h>
#include <ATen/ops/lt.h>
#include <ATen/ops/ne.h>
#include <ATen/ops/nonzero.h>
#include <ATen/ops/select.h>

#include <cmath>
#include <string>
#include <vector>

namespace segops {

void check_batch_indices(const at::Tensor& rois, int64_t batch_size, const char* op) {
  if (rois.size(0) == 0) return;
  const at::Tensor b = rois.select(1, 0);
  // One reduction and one read back; NaN fails floor(b) == b.
  const at::Tensor bad =
      at::logical_or(at::logical_or(at::lt(b, 0), at::ge(b, static_cast<double>(batch_size))),
                     at::ne(at::floor(b), b));
  if (!at::any(bad).item<bool>()) return;
  const int64_t k = at::nonzero(bad).select(1, 0)[0].item<int64_t>();
  TORCH_CHECK_VALUE(false, op, ": every rois batch index must be a whole number in [0, ",
                    batch_size, ") (the input's batch size); row ", k, " has batch index ",
                    b[k].item<double>());
}

at::Tensor rois_for_geometry(const at::Tensor& rois, at::ScalarType input_type) {
  return rois.to(compute_dtype(input_type)).contiguous();
}

namespace {

// The per-level part of a multilevel plan: level count, scales, level areas.
MultiLevelRoIAlign multilevel_plan(const char* op, int64_t levels,
                                   at::ArrayRef<double> spatial_scales, int64_t pooled_h,
                                   int64_t pooled_w, int64_t sampling_ratio, bool aligned,
                                   at::ArrayRef<double> level_areas, bool all_levels) {
  TORCH_CHECK_VALUE(levels >= 1, op, ": `features` must hold at least one level, got none");
  TORCH_CHECK_VALUE(levels <= kMaxRoILevels, op, ": `features` may hold at most ",
                    kMaxRoILevels, " levels, got ", levels);
  TORCH_CHECK_VALUE(static_cast<int64_t>(spatial_scales.size()) == levels, op,
                    ": `spatial_scales` must have one entry per level (", levels, "), got ",
                    spatial_scales.size());
  for (const double s : spatial_scales) {
    TORCH_CHECK_VALUE(std::isfinite(s) && s > 0, op,
                      ": `spatial_scales` must be positive and finite, got ", spatial_scales);
  }
  const int64_t n_areas = static_cast<int64_t>(level_areas.size());
  if (all_levels) {
    TORCH_CHECK_VALUE(n_areas == 0, op,
                      ": `level_areas` must be empty with all_levels=True, got ", n_areas,
                      " entries");
  } else {
    TORCH_CHECK_VALUE(n_areas == levels - 1, op,
                      ": `level_areas` must have one entry per level above the lowest (",
                      levels - 1, "), got ", n_areas);
    for (int64_t i = 0; i < n_areas; ++i) {
      check_not_nan(level_areas[i], op, "level_areas");
      TORCH_CHECK_VALUE(i == 0 || level_areas[i] >= level_areas[i - 1], op,
                        ": `level_areas` must be ascending, got ", level_areas);
    }
  }
  check_pooled_size(pooled_h, pooled_w, op);
  check_sampling_ratio(sampling_ratio, op);
  MultiLevelRoIAlign p{};
  p.levels = levels;
  p.pooled_h = pooled_h;
  p.pooled_w = pooled_w;
  p.sampling_ratio = sampling_ratio;
  p.aligned = aligned;
  p.all_levels = all_levels;
  for (int64_t l = 0; l < levels; ++l) {
    p.scale[l] = spatial_scales[l];
    if (l + 1 < levels && !all_levels) p.area[l] = level_areas[l];
  }
  return p;
}

}  // namespace

MultiLevelRoIAlign check_multilevel_forward(const char* op, at::TensorList features,
                                            const at::Tensor& rois,
                                            at::ArrayRef<double> spatial_scales,
                                            int64_t pooled_h, int64_t pooled_w,
                                            int64_t sampling_ratio, bool aligned,
                                            at::ArrayRef<double> level_areas, bool all_levels) {
  const int64_t L = static_cast<int64_t>(features.size());
  MultiLevelRoIAlign p = multilevel_plan(op, L, spatial_scales, pooled_h, pooled_w,
                                         sampling_ratio, aligned, level_areas, all_levels);
  const at::Tensor& f0 = features[0];
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor& f = features[l];
    const std::string name = "features[" + std::to_string(l) + "]";
    check_float(f, op, name.c_str());
    check_dim(f, 4, op, name.c_str(), "[N, C, H, W]");
    TORCH_CHECK_TYPE(f.scalar_type() == f0.scalar_type(), op, ": every level of `features` ",
                     "must have the dtype of features[0] (", f0.scalar_type(), "), `", name,
                     "` is ", f.scalar_type());
    check_same_device(f0, f, op, "features[0]", name.c_str());
    TORCH_CHECK_VALUE(f.size(0) == f0.size(0) && f.size(1) == f0.size(1), op,
                      ": every level of `features` must have the batch size and channels of ",
                      "features[0] (N = ", f0.size(0), ", C = ", f0.size(1), "), `", name,
                      "` has shape ", f.sizes());
    p.height[l] = f.size(2);
    p.width[l] = f.size(3);
  }
  check_rois(f0, rois, op);
  p.batch = f0.size(0);
  p.channels = f0.size(1);
  p.rois = rois.size(0);
  check_output_size(op, "output_size", {all_levels ? L : 1, p.rois, p.channels, pooled_h,
                                        pooled_w}, f0.element_size());
  return p;
}

MultiLevelRoIAlign check_multilevel_backward(const char* op, const at::Tensor& grad,
                                             const at::Tensor& rois,
                                             at::ArrayRef<double> spatial_scales,
                                             int64_t pooled_h, int64_t pooled_w,
                                             int64_t batch_size, int64_t channels,
                                             at::IntArrayRef heights, at::IntArrayRef widths,
                                             int64_t sampling_ratio, bool aligned,
                                             at::ArrayRef<double> level_areas,
                                             bool all_levels) {
  const int64_t L = static_cast<int64_t>(heights.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(widths.size()) == L, op,
                    ": `heights` and `widths` must have one entry per level, got ", L, " and ",
                    widths.size());
  MultiLevelRoIAlign p = multilevel_plan(op, L, spatial_scales, pooled_h, pooled_w,
                                         sampling_ratio, aligned, level_areas, all_levels);
  check_float(grad, op, "grad");
  check_rois(grad, rois, op);
  check_nonneg(batch_size, op, "batch_size");
  check_nonneg(channels, op, "channels");
  for (int64_t l = 0; l < L; ++l) {
    check_nonneg(heights[l], op, "heights");
    check_nonneg(widths[l], op, "widths");
    check_output_size(op, "batch_size, channels, heights, widths",
                      {batch_size, channels, heights[l], widths[l]}, grad.element_size());
    p.height[l] = heights[l];
    p.width[l] = widths[l];
  }
  p.batch = batch_size;
  p.channels = channels;
  p.rois = rois.size(0);
  std::vector<int64_t> shape = {p.rois, channels, pooled_h, pooled_w};
  if (all_levels) shape.insert(shape.begin(), L);
  TORCH_CHECK_VALUE(grad.sizes() == at::IntArrayRef(shape), op, ": `grad` must be ",
                    all_levels ? "[L, K, channels, pooled_height, pooled_width]"
                               : "[K, channels, pooled_height, pooled_width]",
                    " = ", at::IntArrayRef(shape), ", got shape ", grad.sizes());
  return p;
}

}  // namespace segops
