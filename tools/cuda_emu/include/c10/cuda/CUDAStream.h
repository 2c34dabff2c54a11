// CUDA emulation: one null stream; launches run to completion before they return.
#pragma once
#include <cuda_runtime_api.h>

namespace c10 {
namespace cuda {
struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
  operator cudaStream_t() const { return nullptr; }
  void synchronize() const { cuda_emu::trace_sync("CUDAStream::synchronize"); }
};
inline CUDAStream getCurrentCUDAStream(int = -1) { return {}; }
}  // namespace cuda
}  // namespace c10
