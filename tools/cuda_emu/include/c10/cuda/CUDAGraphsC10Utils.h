// CUDA emulation: stream-capture status, switchable from Python (cuda_emu.capturing) so
// that tests can run the glue as it runs under CUDA-graph capture (no read-backs).
#pragma once
#include <cuda_runtime_api.h>

namespace cuda_emu {
bool capturing();
}

namespace c10 {
namespace cuda {
enum class CaptureStatus { None = 0, Active = 1, Invalidated = 2 };
inline CaptureStatus currentStreamCaptureStatusMayInitCtx() {
  return cuda_emu::capturing() ? CaptureStatus::Active : CaptureStatus::None;
}
}  // namespace cuda
}  // namespace c10
