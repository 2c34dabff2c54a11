// Index arguments checked on the device (torch-free launcher, kernel in index_check.cu):
// PyTorch's convention for out-of-range indices on CUDA, a device-side assertion
// (core/device_assert.cuh), so that no CUDA glue reads an index back to check it.
#pragma once

#include "core/launch.h"

namespace segops {
namespace cuda {

// Asserts on the device that every index[i], i < count, lies in [0, bound). A kernel queued
// after a failed check does not run (the CUDA context is unusable after an assertion).
cudaError_t assert_indices_in_range(const int64_t* index, int64_t count, int64_t bound,
                                    cudaStream_t stream);

}  // namespace cuda
}  // namespace segops
