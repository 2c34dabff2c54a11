// The device-side index check of core/index_check.h (torch-free).
#include "core/device_assert.cuh"
#include "core/half.cuh"
#include "core/index_check.h"

namespace segops {
namespace cuda {
namespace {

__global__ void assert_in_range_kernel(const int64_t* index, int64_t count, int64_t bound) {
  SEGOPS_GRID_STRIDE(i, count) {
    const int64_t v = index[i];
    SEGOPS_DEVICE_ASSERT(v >= 0 && v < bound && "index out of range");
  }
}

}  // namespace

cudaError_t assert_indices_in_range(const int64_t* index, int64_t count, int64_t bound,
                                    cudaStream_t stream) {
  if (count > 0)
    assert_in_range_kernel<<<blocks_for(count, 256), 256, 0, stream>>>(index, count, bound);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace segops
