// RoI family launchers (torch-free). Pointers are device pointers to contiguous data.
// `rois` are [K, 5] in the geometry dtype: double for Float64 inputs, float otherwise.
// Backward "acc" outputs are in the accumulation dtype (double for Float64, float
// otherwise) and must be zeroed by the caller; gather outputs are in the input dtype.
// `scratch` holds per-RoI geometry: at least roi_*_scratch_bytes(dtype, K) bytes.
#pragma once

#include "common/roi_levels.h"
#include "core/launch.h"

namespace segops {
namespace cuda {

struct RoIArgs {
  int64_t batch, channels, height, width, rois, pooled_h, pooled_w;
  double spatial_scale;
  int64_t sampling_ratio;  // roi_align only
  bool aligned;            // roi_align only
};

// Every kernel that reads rois[:, 0] asserts on the device that it is a whole number in
// [0, batch) (core/device_assert.cuh). This launches that check alone, for calls that have
// nothing else to compute (an empty output); `f64`: rois are double, else float.
cudaError_t roi_check_batch_indices(bool f64, const void* rois, int64_t K, int64_t batch,
                                    cudaStream_t stream);

int64_t roi_align_scratch_bytes(Dtype dtype, int64_t rois);
int64_t roi_pool_scratch_bytes(Dtype dtype, int64_t rois);

cudaError_t roi_align_forward(Dtype dtype, const RoIArgs& a, const void* input,
                              const void* rois, void* scratch, void* output,
                              cudaStream_t stream);
cudaError_t roi_align_backward_atomic(Dtype dtype, const RoIArgs& a, const void* grad,
                                      const void* rois, void* scratch, void* grad_input_acc,
                                      cudaStream_t stream);
cudaError_t roi_align_backward_gather(Dtype dtype, const RoIArgs& a, const void* grad,
                                      const void* rois, void* scratch, void* grad_input,
                                      cudaStream_t stream);

cudaError_t roi_pool_forward(Dtype dtype, const RoIArgs& a, const void* input, const void* rois,
                             void* output, int64_t* argmax, cudaStream_t stream);
cudaError_t roi_pool_backward_atomic(Dtype dtype, const RoIArgs& a, const void* grad,
                                     const int64_t* argmax, const void* rois,
                                     void* grad_input_acc, cudaStream_t stream);
cudaError_t roi_pool_backward_gather(Dtype dtype, const RoIArgs& a, const void* grad,
                                     const int64_t* argmax, const void* rois, void* scratch,
                                     void* grad_input, cudaStream_t stream);

// multilevel_roi_align (multilevel_kernels.cu): one pointer per level, to the features
// or to the per-level gradients (backward "acc": accumulation dtype, zeroed by the caller;
// gather: the input dtype). Output and grad are [p.slots(), C, pooled_h, pooled_w].
struct RoILevelInputs {
  const void* p[kMaxRoILevels];
};
struct RoILevelOutputs {
  void* p[kMaxRoILevels];
};

int64_t multilevel_roi_align_scratch_bytes(Dtype dtype, int64_t slots);

cudaError_t multilevel_roi_align_forward(Dtype dtype, const MultiLevelRoIAlign& p,
                                         const RoILevelInputs& input, const void* rois,
                                         void* scratch, void* output, cudaStream_t stream);
cudaError_t multilevel_roi_align_backward_atomic(Dtype dtype, const MultiLevelRoIAlign& p,
                                                 const void* grad, const void* rois,
                                                 void* scratch,
                                                 const RoILevelOutputs& grad_input_acc,
                                                 cudaStream_t stream);
cudaError_t multilevel_roi_align_backward_gather(Dtype dtype, const MultiLevelRoIAlign& p,
                                                 const void* grad, const void* rois,
                                                 void* scratch,
                                                 const RoILevelOutputs& grad_input,
                                                 cudaStream_t stream);

}  // namespace cuda
}  // namespace segops
