// The RoI family's CPU helpers shared by the RoIAlign kernels (cpu.cpp) and roi_pool's
// (cpu_pool.cpp): channel-parallel loops, backward accumulators and the deterministic gather.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstdint>

#include "common/macros.h"
#include "roi/checks.h"

namespace segops {
namespace roi_cpu {

// Runs fn(c_begin, c_end) over channel chunks in parallel.
template <typename Fn>
void for_channels(int64_t channels, int64_t work_per_channel, Fn&& fn) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(work_per_channel, 1));
  at::parallel_for(0, channels, grain, fn);
}

// Accumulators for a backward: float for half types, else the gradient's own dtype.
inline at::Tensor grad_accumulator(const at::Tensor& grad, int64_t n, int64_t c, int64_t h,
                                   int64_t w) {
  return at::zeros({n, c, h, w}, grad.options().dtype(compute_dtype(grad.scalar_type())));
}

// Gather backward shared by roi_align and roi_pool (deterministic mode): for each channel,
// RoIs in index order add their gradient at every pixel of their footprint.
template <typename A, typename Footprint, typename GradAt>
void gather_backward(A* out, int64_t K, int64_t C, int64_t H, int64_t W, Footprint&& footprint,
                     GradAt&& grad_at) {
  for_channels(C, K * 64, [&](int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < K; ++r) {
      int64_t n, y0, y1, x0, x1;
      footprint(r, n, y0, y1, x0, x1);
      if (n < 0) continue;
      for (int64_t c = c0; c < c1; ++c) {
        A* plane = out + (n * C + c) * H * W;
        for (int64_t y = y0; y < y1; ++y)
          for (int64_t x = x0; x < x1; ++x) plane[y * W + x] += grad_at(r, c, y, x);
      }
    }
  });
}

}  // namespace roi_cpu
}  // namespace segops
