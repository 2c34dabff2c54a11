// Host/device qualifiers shared by the CPU and CUDA builds. Torch-free.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SEGOPS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SEGOPS_HOST_DEVICE inline
#endif

#include <cstdint>
#include <math.h>

namespace segops {

// Accumulation type: half types accumulate (and compute geometry) in float.
template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccType<T>::type;

template <typename T>
SEGOPS_HOST_DEVICE T min_(T a, T b) { return b < a ? b : a; }
template <typename T>
SEGOPS_HOST_DEVICE T max_(T a, T b) { return a < b ? b : a; }

// True for finite values; false for NaN and +-inf. Written without <cmath> so that it
// compiles identically under nvcc and g++ (and is not folded away by -ffast-math).
template <typename T>
SEGOPS_HOST_DEVICE bool is_finite(T v) {
  return v == v && v - v == T(0);
}

SEGOPS_HOST_DEVICE float ceil_(float v) { return ceilf(v); }
SEGOPS_HOST_DEVICE double ceil_(double v) { return ceil(v); }
SEGOPS_HOST_DEVICE float floor_(float v) { return floorf(v); }
SEGOPS_HOST_DEVICE double floor_(double v) { return floor(v); }
SEGOPS_HOST_DEVICE float round_(float v) { return roundf(v); }
SEGOPS_HOST_DEVICE double round_(double v) { return round(v); }

}  // namespace segops
