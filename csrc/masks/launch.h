// Masks family launchers (torch-free). Pointers are device pointers to contiguous data.
// `thr` is the threshold already rounded to the data dtype (exact in the kernel's type).
#pragma once

#include "core/launch.h"

namespace segops {
namespace cuda {

struct AssembleArgs {
  int64_t n, h, w, k, padding;
  bool boxes_double;  // box geometry in float64 (float64 boxes), else float32
};

// out [N, H, W] (protos' dtype) = YOLACT's cropped sigmoid(protos @ coeffs^T).
cudaError_t assemble_masks(Dtype dtype, const AssembleArgs& a, const void* protos,
                           const void* coeffs, const void* boxes, void* out,
                           cudaStream_t stream);

// out [N, oh, ow] bool = bilinear resize of `cropped` [N, H, W] (align_corners=False),
// rounded to the dtype, > thr; `boxes` (as for assemble_masks) bound each mask's footprint.
cudaError_t upsample_masks(Dtype dtype, const AssembleArgs& a, const void* cropped,
                           const void* boxes, int64_t oh, int64_t ow, double thr, bool* out,
                           cudaStream_t stream);

struct PasteArgs {
  int64_t n, mh, mw, height, width;
  bool detectron2;       // else torchvision's rule
  bool binary;           // bool output (value >= thr), else masks' dtype
  bool geometry_double;  // boxes are float64 and geometry runs in float64
  double thr;
};

cudaError_t paste_masks(Dtype dtype, const PasteArgs& a, const void* masks, const void* boxes,
                        void* out, cudaStream_t stream);

}  // namespace cuda
}  // namespace segops
