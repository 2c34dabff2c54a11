// CUDA emulation: C10_CUDA_CHECK raises with the emulator's message.
#pragma once
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#define C10_CUDA_CHECK(EXPR)                                                        \
  do {                                                                              \
    const cudaError_t segops_emu_err = (EXPR);                                      \
    TORCH_CHECK(segops_emu_err == cudaSuccess, "CUDA error (emulated): ",           \
                cudaGetErrorString(segops_emu_err));                                \
  } while (0)
