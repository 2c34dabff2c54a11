// CUDA emulation: __half with the round-to-nearest-even conversions of cuda_fp16.h.
#pragma once
#include <c10/util/Half.h>

struct __half {
  c10::Half h;
};
inline __half __float2half_rn(float f) { return {c10::Half(f)}; }
inline float __half2float(__half h) { return static_cast<float>(h.h); }
