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

// Greedy NMS, one block per instance. `suppressed` and `kept` are [N, H, ceil(W / 32)]
// bitmaps (uninitialised: each block zeroes the rows of its candidate region); counts
// [N, 4, H] (uninitialised: written whole) receives the number of kept patches per
// (instance, level 4 - l, row).
cudaError_t boundary_nms(const PatchArgs& a, const bool* masks, uint32_t* suppressed,
                         uint32_t* kept, int32_t* counts, cudaStream_t stream);

// Writes the first `capacity` kept patches in NMS order (instances in order, each by level
// descending, then raster order) as shifted boxes, instance indices and scores; ends is the
// inclusive scan of counts (flattened).
cudaError_t boundary_write(const PatchArgs& a, const bool* masks, const uint32_t* kept,
                           const int32_t* counts, const int64_t* ends, int64_t capacity,
                           int64_t* boxes, int64_t* instance_index, float* scores,
                           cudaStream_t stream);

struct CropArgs {
  int64_t patches, batch, channels, height, width, out_h, out_w;
  int64_t instances;  // N: masks.shape[0]
};

// Image patches (roi_align, aligned, sampling ratio 1) and mask patches (nearest), one
// launch; writes every element of both outputs.
// `scratch`: crop_patches_scratch_bytes(dtype, patches) bytes (the per-patch geometry),
// aligned as a device allocation.
int64_t crop_patches_scratch_bytes(Dtype dtype, int64_t patches);
cudaError_t crop_patches(Dtype dtype, const CropArgs& a, const void* images, const bool* masks,
                         const int64_t* boxes, const int64_t* instance_index,
                         const int64_t* batch_index, void* scratch, void* image_patches,
                         bool* mask_patches, cudaStream_t stream);

struct ReassembleArgs {
  int64_t n, height, width, patches, ph, pw;
  double threshold;
};

// order: patch indices grouped by instance in index order, start [N + 1]. Writes every
// pixel of out.
cudaError_t reassemble_patches(Dtype dtype, const ReassembleArgs& a, const bool* masks,
                               const void* probs, const int64_t* boxes, const int64_t* order,
                               const int64_t* start, bool* out, cudaStream_t stream);

}  // namespace cuda
}  // namespace segops
