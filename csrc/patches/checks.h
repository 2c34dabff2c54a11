// Argument checks of the patches family (BPR), shared by its CPU and CUDA glue.
#pragma once

#include "common/patches.h"
#include "core/checks.h"

namespace segops {

inline void check_bool_masks(const at::Tensor& masks, const char* op) {
  TORCH_CHECK_TYPE(masks.scalar_type() == at::kBool, op, ": `masks` must be bool, got ",
                   masks.scalar_type());
  check_dim(masks, 3, op, "masks", "[N, H, W]");
}

inline void check_boundary_patches(const at::Tensor& masks, int64_t patch_size,
                                   double iou_threshold, int64_t max_out) {
  const char* op = "boundary_patches";
  check_bool_masks(masks, op);
  TORCH_CHECK_VALUE(patch_size >= 2 && patch_size % 2 == 0 && patch_size <= kMaxPatchSize, op,
                    ": `patch_size` must be an even int in [2, ", kMaxPatchSize, "], got ",
                    patch_size);
  check_not_nan(iou_threshold, op, "iou_threshold");
  check_capacity(max_out, op, "max_out");
}

// An int64 vector of n entries; `shape` describes n (e.g. "[P] with P = boxes.shape[0]").
inline void check_index_vector(const at::Tensor& t, int64_t n, const char* op, const char* name,
                               const char* shape) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, op, ": `", name, "` must be int64, got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == n, op, ": `", name, "` must be ", shape,
                    " = ", n, ", got shape ", t.sizes());
}

// boxes int64 [P, 4] and instance_index int64 [P] of patches of `masks` [N, H, W].
inline void check_patch_boxes(const char* op, const at::Tensor& masks, const at::Tensor& boxes,
                              const at::Tensor& instance_index) {
  TORCH_CHECK_TYPE(boxes.scalar_type() == at::kLong, op, ": `boxes` must be int64, got ",
                   boxes.scalar_type());
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 4, op,
                    ": `boxes` must be [P, 4] (x1, y1, x2, y2), got shape ", boxes.sizes());
  check_index_vector(instance_index, boxes.size(0), op, "instance_index",
                     "[P] with P = boxes.shape[0]");
  check_same_device(masks, boxes, op, "masks", "boxes");
  check_same_device(masks, instance_index, op, "masks", "instance_index");
}

// Every entry of `index` in [0, n) (the CPU's check: one read back; the CUDA glue asserts
// on the device instead, core/index_check.h).
void check_index_range(const at::Tensor& index, int64_t n, const char* op, const char* name);

// check_index_range on the CPU, a device-side check on CUDA.
using IndexRangeCheck = void (*)(const at::Tensor&, int64_t, const char*, const char*);

inline void check_crop_patches(const at::Tensor& images, const at::Tensor& masks,
                               const at::Tensor& boxes, const at::Tensor& instance_index,
                               const at::Tensor& batch_index, int64_t out_h, int64_t out_w,
                               IndexRangeCheck range_check) {
  const char* op = "crop_patches";
  check_float(images, op, "images");
  check_dim(images, 4, op, "images", "[B, C, H, W]");
  check_bool_masks(masks, op);
  TORCH_CHECK_VALUE(masks.size(1) == images.size(2) && masks.size(2) == images.size(3), op,
                    ": `masks` must be [N, H, W] with the images' H, W = ", images.size(2),
                    ", ", images.size(3), ", got shape ", masks.sizes());
  check_patch_boxes(op, masks, boxes, instance_index);
  check_index_vector(batch_index, masks.size(0), op, "batch_index",
                     "[N] with N = masks.shape[0]");
  check_same_device(images, masks, op, "images", "masks");
  check_same_device(images, batch_index, op, "images", "batch_index");
  check_size_pair(out_h, out_w, op, "output_size");
  check_output_size(op, "output_size", {boxes.size(0), images.size(1), out_h, out_w},
                    images.element_size());
  range_check(instance_index, masks.size(0), op, "instance_index");
  range_check(batch_index, images.size(0), op, "batch_index");
}

inline void check_reassemble_patches(const at::Tensor& masks, const at::Tensor& patch_probs,
                                     const at::Tensor& boxes, const at::Tensor& instance_index,
                                     double threshold, IndexRangeCheck range_check) {
  const char* op = "reassemble_patches";
  check_bool_masks(masks, op);
  check_float(patch_probs, op, "patch_probs");
  check_dim(patch_probs, 3, op, "patch_probs", "[P, h, w]");
  check_patch_boxes(op, masks, boxes, instance_index);
  TORCH_CHECK_VALUE(patch_probs.size(0) == boxes.size(0), op,
                    ": `patch_probs` must be [P, h, w] with P = boxes.shape[0] = ", boxes.size(0),
                    ", got shape ", patch_probs.sizes());
  TORCH_CHECK_VALUE(boxes.size(0) == 0 || (patch_probs.size(1) > 0 && patch_probs.size(2) > 0),
                    op, ": `patch_probs` must have h, w >= 1 to be resampled, got shape ",
                    patch_probs.sizes());
  check_same_device(masks, patch_probs, op, "masks", "patch_probs");
  check_not_nan(threshold, op, "threshold");
  range_check(instance_index, masks.size(0), op, "instance_index");
}

}  // namespace segops
