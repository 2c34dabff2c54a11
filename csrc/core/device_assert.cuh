// Device-side assertions for torch-free kernels: PyTorch's convention for bad indices on
// CUDA (CUDA_KERNEL_ASSERT) without its headers. A failed assertion stops the kernel; the
// error is reported, asynchronously, as "device-side assert triggered" by the next CUDA call
// that synchronises with it (the op itself never waits), and the CUDA context is unusable
// afterwards, so nothing queued after the failing kernel runs. Kernels assert *and* guard:
// the condition is checked even under NDEBUG (as CUDA_KERNEL_ASSERT does, by calling
// __assert_fail directly), and the code after it must not read out of bounds anyway.
//
// Under the CPU emulator (tools/cuda_emu) the assertion raises at the launch instead, with
// the same message.
#pragma once

#if defined(__CUDACC__) && defined(__GNUC__) && !defined(__APPLE__)
// <assert.h> brings in glibc's __assert_fail, which CUDA (crt/common_functions.h) makes
// callable from device code.
#include <assert.h>
#define SEGOPS_DEVICE_ASSERT(cond)                                     \
  do {                                                                 \
    if (!(cond)) __assert_fail(#cond, __FILE__, __LINE__, __func__);   \
  } while (0)
#elif defined(__CUDACC__)
#include <cassert>
#define SEGOPS_DEVICE_ASSERT(cond) assert(cond)
#else
#define SEGOPS_DEVICE_ASSERT(cond)                                         \
  do {                                                                     \
    if (!(cond)) ::cuda_emu::device_assert(#cond, __FILE__, __LINE__); \
  } while (0)
#endif
