// Fast NMS (YOLACT) CUDA kernel (torch-free; greedy NMS: greedy.cu, Matrix NMS: matrix.cu).
// The column-max rule comes from csrc/common/box_iou.h, as on the CPU.
#include "common/box_iou.h"
#include "core/half.cuh"
#include "nms/launch.h"

namespace segops {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// One block per class; `cols` is [C, 5, D]: x1, y1, x2, y2, area of the ranked candidates.
template <typename G>
__global__ void fast_nms_keep_kernel(const G* cols, int64_t d, G threshold, uint8_t* keep) {
  const G* c = cols + int64_t(blockIdx.x) * 5 * d;
  const BoxColumns<G> b{c, c + d, c + 2 * d, c + 3 * d, c + 4 * d};
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
    keep[int64_t(blockIdx.x) * d + j] = segops::fast_nms_keep(b, j, threshold);
}

}  // namespace

cudaError_t fast_nms_keep(bool f64, const void* cols, int64_t classes, int64_t d,
                          double iou_threshold, uint8_t* keep, cudaStream_t stream) {
  const unsigned grid = static_cast<unsigned>(classes);
  if (f64)
    fast_nms_keep_kernel<double><<<grid, kThreads, 0, stream>>>(
        static_cast<const double*>(cols), d, iou_threshold, keep);
  else
    fast_nms_keep_kernel<float><<<grid, kThreads, 0, stream>>>(
        static_cast<const float*>(cols), d, static_cast<float>(iou_threshold), keep);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace segops
