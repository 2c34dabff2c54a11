// Storage wrappers for the half types in torch-free kernels. PyTorch compiles CUDA with
// __CUDA_NO_HALF_CONVERSIONS__ and friends, which removes __half's implicit conversions;
// these wrappers give the shared csrc/common templates the float conversions they use
// (static_cast<float>(v), static_cast<T>(f)) through the explicit intrinsics.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "core/launch.h"

namespace segops {
namespace cuda {

struct alignas(2) half_t {
  __half v;
  half_t() = default;
  __device__ explicit half_t(float f) : v(__float2half_rn(f)) {}
  __device__ explicit half_t(double d) : half_t(static_cast<float>(d)) {}  // as c10::Half
  __device__ explicit operator float() const { return __half2float(v); }
  __device__ explicit operator double() const { return __half2float(v); }
};

struct alignas(2) bfloat16_t {
  __nv_bfloat16 v;
  bfloat16_t() = default;
  __device__ explicit bfloat16_t(float f) : v(__float2bfloat16_rn(f)) {}
  __device__ explicit bfloat16_t(double d) : bfloat16_t(static_cast<float>(d)) {}
  __device__ explicit operator float() const { return __bfloat162float(v); }
  __device__ explicit operator double() const { return __bfloat162float(v); }
};

static_assert(sizeof(half_t) == 2 && sizeof(bfloat16_t) == 2, "half wrappers must be 2 bytes");

// Calls fn(T{}) with T the storage type for `dtype`; returns the launch status.
template <typename Fn>
cudaError_t dispatch(Dtype dtype, Fn&& fn) {
  switch (dtype) {
    case Dtype::Float32: fn(float{}); break;
    case Dtype::Float64: fn(double{}); break;
    case Dtype::Float16: fn(half_t{}); break;
    case Dtype::BFloat16: fn(bfloat16_t{}); break;
  }
  return cudaGetLastError();
}

// A grid-stride loop over [0, total) with 64-bit indices.
#define SEGOPS_GRID_STRIDE(i, total)                                            \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (total); \
       i += int64_t(blockDim.x) * gridDim.x)

// A 1-D grid for a grid-stride loop over n items.
inline unsigned int blocks_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned int>(b < 1 ? 1 : (b > (1 << 20) ? (1 << 20) : b));
}

}  // namespace cuda
}  // namespace segops
