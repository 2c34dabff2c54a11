// The one TORCH_LIBRARY(segops): every op's schema. Read it as the API table; kernels are
// registered per device in cpu/<family>.cpp and cuda/<family>.cpp, and fake, autograd and
// autocast in segops/ops/<family>.py.
#include <torch/library.h>

TORCH_LIBRARY(segops, m) {
  // ---- roi: RoI pooling (docs/ops/roi.md) ----
  m.def(
      "roi_align(Tensor input, Tensor boxes, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "_roi_align_backward(Tensor grad, Tensor boxes, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, "
      "int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "roi_pool(Tensor input, Tensor boxes, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width) -> (Tensor, Tensor)");
  m.def(
      "_roi_pool_backward(Tensor grad, Tensor boxes, Tensor argmax, float spatial_scale, "
      "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, "
      "SymInt height, SymInt width) -> Tensor");
  // One launch over all FPN levels. level_areas: the L - 1 ascending areas at which levels
  // 1..L-1 start (assign mode, see csrc/common/roi_levels.h); empty with all_levels, where
  // the output is [L, K, C, h, w]. The backward returns one gradient per level.
  m.def(
      "multilevel_roi_align(Tensor[] features, Tensor boxes, float[] spatial_scales, "
      "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, bool aligned, "
      "float[] level_areas, bool all_levels) -> Tensor");
  m.def(
      "_multilevel_roi_align_backward(Tensor grad, Tensor boxes, float[] spatial_scales, "
      "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, "
      "SymInt[] heights, SymInt[] widths, int sampling_ratio, bool aligned, "
      "float[] level_areas, bool all_levels) -> Tensor[]");

  // ---- nms: suppression (docs/ops/nms.md). Outputs are padded to a capacity (max_out = -1: N)
  // with a count, so that CUDA needs no host synchronisation; segops.nms slices them.
  m.def(
      "nms(Tensor boxes, Tensor scores, float iou_threshold, int max_out=-1) "
      "-> (Tensor keep, Tensor count)");
  m.def(
      "batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold, "
      "int max_out=-1) -> (Tensor keep, Tensor count)");
  m.def(
      "fast_nms(Tensor boxes, Tensor scores, float iou_threshold, int top_k, "
      "float score_threshold, int max_detections, bool cross_class, bool second_threshold) "
      "-> (Tensor indices, Tensor classes, Tensor scores, Tensor count)");
  m.def(
      "matrix_nms(Tensor masks, Tensor labels, Tensor scores, str kernel, float sigma) "
      "-> Tensor");

  // ---- masks: YOLACT assembly, Mask R-CNN pasting (docs/ops/masks.md) ----
  m.def("assemble_masks(Tensor protos, Tensor coeffs, Tensor boxes, int padding) -> Tensor");
  m.def(
      "assemble_masks_upsampled(Tensor protos, Tensor coeffs, Tensor boxes, int padding, "
      "SymInt height, SymInt width, float threshold) -> Tensor");
  m.def(
      "paste_masks(Tensor masks, Tensor boxes, SymInt height, SymInt width, float? threshold, "
      "str mode) -> Tensor");

  // ---- cluster: SpatialEmbeddings' Gaussian seed clustering (docs/ops/cluster.md). xs [W], ys [H]:
  // the coordinate map; max_instances = -1: unbounded (scores exactly sized).
  m.def(
      "cluster_seeds(Tensor prediction, Tensor xs, Tensor ys, int n_sigma, float threshold, "
      "float seed_threshold, int min_pixels, int max_instances) "
      "-> (Tensor instance_map, Tensor scores, Tensor count)");

  // ---- patches: BPR boundary patch extraction, crop and reassembly (docs/ops/patches.md) ----
  m.def(
      "boundary_patches(Tensor masks, int patch_size, float iou_threshold, int max_out=-1) "
      "-> (Tensor boxes, Tensor instance_index, Tensor scores, Tensor count)");
  m.def(
      "crop_patches(Tensor images, Tensor masks, Tensor boxes, Tensor instance_index, "
      "Tensor batch_index, SymInt out_h, SymInt out_w) -> (Tensor, Tensor)");
  m.def(
      "reassemble_patches(Tensor masks, Tensor patch_probs, Tensor boxes, "
      "Tensor instance_index, float threshold) -> Tensor");
}
