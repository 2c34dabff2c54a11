// Argument checks of the masks family, shared by its CPU and CUDA glue.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <optional>

#include <string>

#include "core/checks.h"

namespace segops {

// assemble_masks: protos [H, W, k], coeffs [N, k] of protos' dtype, boxes [N, 4] (relative).
inline void check_assemble(const char* op, const at::Tensor& protos, const at::Tensor& coeffs,
                           const at::Tensor& boxes) {
  check_float(protos, op, "protos");
  check_dim(protos, 3, op, "protos", "[H, W, k]");
  TORCH_CHECK_VALUE(coeffs.dim() == 2 && coeffs.size(1) == protos.size(2), op,
                    ": `coeffs` must be [N, k] with k = protos.shape[2] = ", protos.size(2),
                    ", got shape ", coeffs.sizes());
  TORCH_CHECK_TYPE(coeffs.scalar_type() == protos.scalar_type(), op,
                   ": `coeffs` must have protos' dtype ", protos.scalar_type(), ", got ",
                   coeffs.scalar_type());
  check_float(boxes, op, "boxes");
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 4 && boxes.size(0) == coeffs.size(0),
                    op, ": `boxes` must be [N, 4] with N = coeffs.shape[0] = ", coeffs.size(0),
                    ", got shape ", boxes.sizes());
  check_same_device(protos, coeffs, op, "protos", "coeffs");
  check_same_device(protos, boxes, op, "protos", "boxes");
}

// assemble_masks_upsampled: check_assemble's, an image size, a threshold that is not NaN, and
// prototypes to resize from whenever there is anything to resize to.
inline void check_assemble_upsampled(const char* op, const at::Tensor& protos,
                                     const at::Tensor& coeffs, const at::Tensor& boxes,
                                     int64_t height, int64_t width, double threshold) {
  check_assemble(op, protos, coeffs, boxes);
  check_size_pair(height, width, op, "image_size");
  check_output_size(op, "image_size", {coeffs.size(0), height, width}, 1);
  check_not_nan(threshold, op, "threshold");
  TORCH_CHECK_VALUE(coeffs.size(0) * height * width == 0 ||
                        (protos.size(0) > 0 && protos.size(1) > 0),
                    op, ": `protos` must have H, W >= 1 to be resized, got shape ",
                    protos.sizes());
}

// The threshold rounded to `dtype` (through its accumulation type), as torch rounds the
// scalar of `tensor > threshold`; exact in the kernels' accumulation type.
inline double rounded_threshold(double t, at::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble: return t;
    case at::kHalf: return static_cast<float>(c10::Half(static_cast<float>(t)));
    case at::kBFloat16: return static_cast<float>(c10::BFloat16(static_cast<float>(t)));
    default: return static_cast<float>(t);
  }
}

enum class PasteMode { Detectron2, Torchvision };

// paste_masks: masks [N, Mh, Mw] (Mh, Mw >= 1), boxes [N, 4] (absolute), image size.
inline PasteMode check_paste(const char* op, const at::Tensor& masks, const at::Tensor& boxes,
                             int64_t height, int64_t width,
                             const std::optional<double>& threshold, c10::string_view mode) {
  check_float(masks, op, "masks");
  check_dim(masks, 3, op, "masks", "[N, Mh, Mw]");
  TORCH_CHECK_VALUE(masks.size(1) >= 1 && masks.size(2) >= 1, op,
                    ": `masks` must have at least one cell per axis, got shape ", masks.sizes());
  check_float(boxes, op, "boxes");
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 4 && boxes.size(0) == masks.size(0),
                    op, ": `boxes` must be [N, 4] with N = masks.shape[0] = ", masks.size(0),
                    ", got shape ", boxes.sizes());
  check_same_device(masks, boxes, op, "masks", "boxes");
  check_size_pair(height, width, op, "image_size");
  check_output_size(op, "image_size", {masks.size(0), height, width},
                    threshold.has_value() ? 1 : masks.element_size());
  if (threshold.has_value()) check_not_nan(*threshold, op, "threshold");
  if (mode == "detectron2") return PasteMode::Detectron2;
  TORCH_CHECK_VALUE(mode == "torchvision", op,
                    ": `mode` must be \"detectron2\" or \"torchvision\", got \"",
                    std::string(mode), "\"");
  return PasteMode::Torchvision;
}

// Paste geometry (and value accumulation) dtype: float64 if masks or boxes is float64.
inline at::ScalarType paste_geometry_dtype(const at::Tensor& masks, const at::Tensor& boxes) {
  return masks.scalar_type() == at::kDouble || boxes.scalar_type() == at::kDouble ? at::kDouble
                                                                                 : at::kFloat;
}

}  // namespace segops
