// Torch-free launcher conventions shared by every CUDA family: the glue (.cpp) passes raw
// pointers, sizes, a dtype tag and a stream; kernels (.cu) include only CUDA headers and
// csrc/common. Launchers return the launch's cudaError_t for the glue to check.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace segops {
namespace cuda {

enum class Dtype { Float32, Float64, Float16, BFloat16 };

// The current device's multiprocessor count (1 if it cannot be read), for persistent grids.
inline int multiprocessor_count() {
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      sms <= 0)
    sms = 1;
  return sms;
}

}  // namespace cuda
}  // namespace segops
