// Patches family (BPR) launchers (torch-free). Pointers are device pointers to contiguous
// data; masks are bool [N, H, W].
#pragma once

#include "core/launch.h"

namespace segops {
namespace cuda {

struct PatchArgs {
  int64_t n, height, width, patch;
  double iou_threshold;
};

// key[e] of pixel e = (i, y, x): 4 - level for boundary candidates (0..3), 4 otherwise.
cudaError_t boundary_keys(const PatchArgs& a, const bool* masks, uint8_t* key,
                          cudaStream_t stream);

// Greedy NMS, one block per instance. order [N, H * W]: each instance's pixels (row-local
// indices) sorted by key, stable, so its count[i] candidates come first. Kept patches are
// written back into order[i][k] (their pixels), their number into kept[i]. `suppressed`
// is a zeroed [N, H, W] byte map.
cudaError_t boundary_nms(const PatchArgs& a, int64_t* order, const int64_t* count,
                         uint8_t* suppressed, int64_t* kept, cudaStream_t stream);

// Writes the first `capacity` patches (instances in order, offsets[i] = first row of
// instance i) as shifted boxes, instance indices and scores.
cudaError_t boundary_write(const PatchArgs& a, const bool* masks, const int64_t* order,
                           const int64_t* kept, const int64_t* offsets, int64_t capacity,
                           int64_t* boxes, int64_t* instance_index, float* scores,
                           cudaStream_t stream);

struct CropArgs {
  int64_t patches, batch, channels, height, width, out_h, out_w;
  int64_t instances;  // N: masks.shape[0]
};

// Image patches (roi_align, aligned, sampling ratio 1) and mask patches (nearest), one launch.
cudaError_t crop_patches(Dtype dtype, const CropArgs& a, const void* images, const bool* masks,
                         const int64_t* boxes, const int64_t* instance_index,
                         const int64_t* batch_index, void* image_patches, bool* mask_patches,
                         cudaStream_t stream);

struct ReassembleArgs {
  int64_t n, height, width, patches, ph, pw;
  double threshold;
};

// order: patch indices grouped by instance in index order, start [N + 1]; bounds [N, 4]
// scratch for the union of each instance's patches. Writes every pixel of out.
cudaError_t reassemble_patches(Dtype dtype, const ReassembleArgs& a, const bool* masks,
                               const void* probs, const int64_t* boxes, const int64_t* order,
                               const int64_t* start, int64_t* bounds, bool* out,
                               cudaStream_t stream);

}  // namespace cuda
}  // namespace segops
