// Torch-free launcher conventions shared by every CUDA family: the glue (.cpp) passes raw
// pointers, sizes, a dtype tag and a stream; kernels (.cu) include only CUDA headers and
// csrc/common. Launchers return the launch's cudaError_t for the glue to check.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace segops {
namespace cuda {

enum class Dtype { Float32, Float64, Float16, BFloat16 };

}  // namespace cuda
}  // namespace segops
