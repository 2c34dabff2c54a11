// Argument checks of the suppression family, shared by its CPU and CUDA glue.
#pragma once

#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include "core/checks.h"

namespace segops {

inline void check_boxes(const char* op, const at::Tensor& boxes) {
  check_float(boxes, op, "boxes");
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 4, op,
                    ": `boxes` must be [N, 4] (x1, y1, x2, y2), got shape ", boxes.sizes());
}

inline void check_integer(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_TYPE(!at::isFloatingType(t.scalar_type()) && !at::isComplexType(t.scalar_type()) &&
                       t.scalar_type() != at::kBool,
                   op, ": `", name, "` must hold integers, got ", t.scalar_type());
}

// nms / batched_nms: boxes [N, 4], scores [N], idxs [N] on one device; a threshold that is
// not NaN; max_out a capacity (-1: N).
inline void check_nms_inputs(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                             const c10::optional<at::Tensor>& idxs, double iou_threshold,
                             int64_t max_out) {
  check_boxes(op, boxes);
  check_float(scores, op, "scores");
  TORCH_CHECK_VALUE(scores.dim() == 1 && scores.size(0) == boxes.size(0), op,
                    ": `scores` must be [N] with N = boxes.size(0) = ", boxes.size(0),
                    ", got shape ", scores.sizes());
  check_same_device(boxes, scores, op, "boxes", "scores");
  if (idxs.has_value()) {
    check_integer(*idxs, op, "idxs");
    TORCH_CHECK_VALUE(idxs->dim() == 1 && idxs->size(0) == boxes.size(0), op,
                      ": `idxs` must be [N] with N = boxes.size(0) = ", boxes.size(0),
                      ", got shape ", idxs->sizes());
    check_same_device(boxes, *idxs, op, "boxes", "idxs");
  }
  check_not_nan(iou_threshold, op, "iou_threshold");
  check_capacity(max_out, op, "max_out");
}

// fast_nms: boxes [N, 4], scores [C, N], thresholds that are not NaN, capacities.
inline void check_fast_nms_inputs(const at::Tensor& boxes, const at::Tensor& scores,
                                  double iou_threshold, int64_t top_k, double score_threshold,
                                  int64_t max_detections) {
  const char* op = "fast_nms";
  check_boxes(op, boxes);
  check_float(scores, op, "scores");
  TORCH_CHECK_VALUE(scores.dim() == 2 && scores.size(1) == boxes.size(0), op,
                    ": `scores` must be [C, N] with N = boxes.size(0) = ", boxes.size(0),
                    ", got shape ", scores.sizes());
  check_same_device(boxes, scores, op, "boxes", "scores");
  check_not_nan(iou_threshold, op, "iou_threshold");
  check_not_nan(score_threshold, op, "score_threshold");
  check_count(top_k, op, "top_k");
  check_count(max_detections, op, "max_detections");
}

// matrix_nms: masks [N, H, W], labels [N], scores [N]. Returns whether the kernel is gaussian.
inline bool check_matrix_nms_inputs(const at::Tensor& masks, const at::Tensor& labels,
                                    const at::Tensor& scores, c10::string_view kernel,
                                    double sigma) {
  const char* op = "matrix_nms";
  TORCH_CHECK_VALUE(masks.dim() == 3, op, ": `masks` must be [N, H, W], got shape ",
                    masks.sizes());
  TORCH_CHECK_TYPE(!at::isComplexType(masks.scalar_type()), op,
                   ": `masks` must be bool, integer or float, got ", masks.scalar_type());
  check_integer(labels, op, "labels");
  check_float(scores, op, "scores");
  const int64_t N = masks.size(0);
  TORCH_CHECK_VALUE(labels.dim() == 1 && labels.size(0) == N, op,
                    ": `labels` must be [N] with N = masks.size(0) = ", N, ", got shape ",
                    labels.sizes());
  TORCH_CHECK_VALUE(scores.dim() == 1 && scores.size(0) == N, op,
                    ": `scores` must be [N] with N = masks.size(0) = ", N, ", got shape ",
                    scores.sizes());
  check_same_device(masks, labels, op, "masks", "labels");
  check_same_device(masks, scores, op, "masks", "scores");
  TORCH_CHECK_VALUE(kernel == "gaussian" || kernel == "linear", op,
                    ": `kernel` must be 'gaussian' or 'linear', got '", std::string(kernel), "'");
  TORCH_CHECK_VALUE(std::isfinite(sigma) && sigma >= 0, op,
                    ": `sigma` must be finite and >= 0, got ", sigma);
  return kernel == "gaussian";
}

// A threshold as a tensor of `dtype` holds it: comparisons against it then decide exactly as
// `tensor > threshold` does in PyTorch (the scalar is cast to the tensor's dtype).
double as_dtype(double v, at::ScalarType dtype);

}  // namespace segops
