// CUDA emulation on the CPU (tools/cuda_emu): the subset of the CUDA runtime and device
// language that segops' torch-free kernels use, so that the kernels in csrc/<family>/ compile with g++ and its
// kernels run on host memory. Each block's threads run as fibers (runtime.cpp), switching
// only at __syncthreads() and warp votes; see tools/cuda_emu/README.md for what this checks
// and what it cannot.
#pragma once

#include <cstddef>
#include <cstdint>
#include <math.h>

#include <tuple>
#include <type_traits>
#include <utility>


#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Blocks run one at a time (launches are serialised), so a function-local static is the
// block's shared memory.
#define __shared__ static

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
      : x(x_), y(y_), z(z_) {}
};

// Set by the scheduler before every switch into a thread.
inline uint3 threadIdx{0, 0, 0};
inline uint3 blockIdx{0, 0, 0};
inline dim3 blockDim;
inline dim3 gridDim;
constexpr int warpSize = 32;

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorAssert = 710,
  cudaErrorLaunchFailure = 719,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
typedef cudaError_t cudaError;
typedef struct CUstream_st* cudaStream_t;

namespace cuda_emu {

// Runtime (runtime.cpp).
void syncthreads();
unsigned ballot(unsigned mask, bool pred);
void* dynamic_shared();
void fail(const char* what);
// A failed device-side assertion (csrc/core/device_assert.cuh): the launch stops, and the
// error (cudaErrorAssert, "device-side assert triggered") is sticky until read, as on a GPU.
void device_assert(const char* condition, const char* file, int line);
cudaError_t take_error();
// The trace of an op call (trace.cpp): launches and host synchronisations of the glue.
void trace_launch(const char* kernel, const dim3& grid, const dim3& block, size_t shared);
void trace_sync(const char* what);
int multiprocessors();
// Greedy NMS's mask budget (SEGOPS_NMS_MASK_BUDGET_WORDS, set to this by build.py): 256
// words unless set.
int64_t nms_mask_budget_words();
#define CUDA_EMU_NMS_MASK_BUDGET_WORDS (::cuda_emu::nms_mask_budget_words())
const char* error_string(cudaError_t e);

struct Config {
  dim3 grid, block;
  size_t shared;
};
inline Config config(dim3 grid, dim3 block, size_t shared = 0, cudaStream_t = nullptr) {
  return {grid, block, shared};
}

// Runs body() once per thread of every block of c (serialised; see runtime.cpp): as fibers
// when `synchronises`, else as plain calls one thread after another.
void run(const Config& c, const char* name, bool synchronises, void (*body)(void*), void* ctx);

// Sync: the kernel can reach __syncthreads() or a warp vote (build.py finds these by name).
template <bool Sync, typename... P, typename... A>
void launch(const Config& c, const char* name, void (*kernel)(P...), A&&... args) {
  struct Ctx {
    void (*kernel)(P...);
    std::tuple<std::decay_t<P>...> params;
  } ctx{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
  run(
      c, name, Sync,
      [](void* p) {
        auto* x = static_cast<Ctx*>(p);
        auto params = x->params;  // by value per thread, as kernel parameters are
        std::apply(x->kernel, params);
      },
      &ctx);
}

}  // namespace cuda_emu

inline void __syncthreads() { cuda_emu::syncthreads(); }
inline unsigned __ballot_sync(unsigned mask, int pred) { return cuda_emu::ballot(mask, pred != 0); }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __ffsll(long long v) { return __builtin_ffsll(v); }

// One thread runs at a time, and only a barrier switches threads: a read-modify-write is
// atomic by construction.
template <typename T>
inline T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
template <typename T>
inline T atomicOr(T* p, T v) {
  const T old = *p;
  *p = old | v;
  return old;
}
template <typename T>
inline T atomicMax(T* p, T v) {
  const T old = *p;
  *p = old < v ? v : old;
  return old;
}

inline cudaError_t cudaGetLastError() { return cuda_emu::take_error(); }

// Host-side calls that wait for the device: counted in the op call's trace (a sync-free
// path must make none). Memory is host memory, so copies are plain memcpy.
inline cudaError_t cudaStreamSynchronize(cudaStream_t) {
  cuda_emu::trace_sync("cudaStreamSynchronize");
  return cudaSuccess;
}
inline cudaError_t cudaDeviceSynchronize() {
  cuda_emu::trace_sync("cudaDeviceSynchronize");
  return cudaSuccess;
}
inline cudaError_t cuda_emu_copy(void* dst, const void* src, size_t n, cudaMemcpyKind kind,
                                 const char* what) {
  if (kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDefault) cuda_emu::trace_sync(what);
  for (size_t i = 0; i < n; ++i) static_cast<char*>(dst)[i] = static_cast<const char*>(src)[i];
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind kind) {
  return cuda_emu_copy(dst, src, n, kind, "cudaMemcpy (device to host)");
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind kind,
                                   cudaStream_t = nullptr) {
  return cuda_emu_copy(dst, src, n, kind, "cudaMemcpyAsync (device to host)");
}
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t = nullptr) {
  cuda_emu::trace_launch("cudaMemsetAsync", dim3(1), dim3(1), 0);  // a device operation too
  for (size_t i = 0; i < n; ++i) static_cast<unsigned char*>(p)[i] = static_cast<unsigned char>(v);
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
// A small "GPU" (cuda_emu::multiprocessors(), 4 unless set), so that grids sized from the
// SM count run several blocks per grid-stride loop here.
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int) {
  *v = attr == cudaDevAttrMultiProcessorCount ? cuda_emu::multiprocessors() : 0;
  return cudaSuccess;
}
inline const char* cudaGetErrorString(cudaError_t e) { return cuda_emu::error_string(e); }

