// Transcendentals from basic IEEE arithmetic only, shared by the CPU and CUDA kernels.
// Library exp/tanh differ between glibc, CUDA and vectorised variants in the last ulp;
// these give the same bits everywhere (CPU: -ffp-contract=off, CUDA: --fmad=false), which is
// what lets thresholded outputs (masks, clusters) agree exactly across devices. Torch-free.
// The pure-PyTorch references mirror them op by op (segops/reference/cluster.py: exp_p, sigmoid_p, tanh_p).
#pragma once

#include <string.h>

#include "macros.h"

// Always inlined on the host too: CPU loops over them then vectorise.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define SEGOPS_PORTABLE SEGOPS_HOST_DEVICE
#else
#define SEGOPS_PORTABLE inline __attribute__((always_inline))
#endif

namespace segops {

// 2^e from its bit pattern: e in [-126, 127] (float), [-1022, 1023] (double).
SEGOPS_PORTABLE float pow2_(int32_t e) {
  const int32_t bits = (e + 127) << 23;
#ifdef __CUDA_ARCH__
  return __int_as_float(bits);
#else
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

SEGOPS_PORTABLE double pow2_(int64_t e) {
  const int64_t bits = (e + 1023) << 52;
#ifdef __CUDA_ARCH__
  return __longlong_as_double(static_cast<long long>(bits));
#else
  double d;
  memcpy(&d, &bits, sizeof d);
  return d;
#endif
}

// exp(x) from basic arithmetic only, so that it rounds identically on every device:
// x = n ln2 + r with n rounded to nearest (the 1.5 * 2^23 trick) and a two-part ln2
// (Cody & Waite; the high part is short enough that n * hi is exact), exp(r) by Cephes'
// minimax polynomial (within 2 ulp), and 2^n applied as two exact power-of-two factors
// (one rounding, even into subnormals). Branch-free, so that CPU loops vectorise.
SEGOPS_PORTABLE float exp_portable(float x) {
  const bool nan = !(x == x);
  const float xc = nan ? 0.0f : min_(max_(x, -103.972084f), 88.7228394f);
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * (r * r) + r + 1.0f;
  const int32_t ni = static_cast<int32_t>(n), n1 = ni / 2;
  float e = y * pow2_(n1) * pow2_(ni - n1);
  e = x > 88.7228394f ? INFINITY : e;
  e = x < -103.972084f ? 0.0f : e;
  return nan ? x : e;
}

SEGOPS_PORTABLE double exp_portable(double x) {
  const bool nan = !(x == x);
  const double xc = nan ? 0.0 : min_(max_(x, -745.1332191019412), 709.782712893384);
  const double n = (xc * 1.4426950408889634073599 + 6755399441055744.0) - 6755399441055744.0;
  double r = xc - n * 6.93145751953125e-1;
  r = r - n * 1.42860682030941723212e-6;
  const double r2 = r * r;
  const double p = r * ((1.26177193074810590878e-4 * r2 + 3.02994407707441961300e-2) * r2 +
                        9.99999999999999999910e-1);
  const double q = ((3.00198505138664455042e-6 * r2 + 2.52448340349684104192e-3) * r2 +
                    2.27265548208155028766e-1) * r2 + 2.00000000000000000009e0;
  const double y = 1.0 + 2.0 * (p / (q - p));
  const int64_t ni = static_cast<int64_t>(n), n1 = ni / 2;
  double e = y * pow2_(n1) * pow2_(ni - n1);
  e = x > 709.782712893384 ? static_cast<double>(INFINITY) : e;
  e = x < -745.1332191019412 ? 0.0 : e;
  return nan ? x : e;
}


template <typename A>
SEGOPS_PORTABLE A sigmoid_(A z) {
  return A(1) / (A(1) + exp_portable(-z));
}

// tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|): absolute error within a few ulp of 1.
template <typename A>
SEGOPS_PORTABLE A tanh_portable(A x) {
  const A a = x < A(0) ? -x : x;
  const A e = exp_portable(A(-2) * a);
  const A t = (A(1) - e) / (A(1) + e);
  return x < A(0) ? -t : t;
}

}  // namespace segops
