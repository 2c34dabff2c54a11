// CUDA emulation: __nv_bfloat16 with the round-to-nearest-even conversions of cuda_bf16.h.
#pragma once
#include <c10/util/BFloat16.h>

struct __nv_bfloat16 {
  c10::BFloat16 h;
};
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {c10::BFloat16(f)}; }
inline float __bfloat162float(__nv_bfloat16 h) { return static_cast<float>(h.h); }
