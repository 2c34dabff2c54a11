// Boundary patch refinement (BPR, docs/ops/patches.md): per-element rules shared by the CPU and CUDA
// kernels. Torch-free. Patch geometry is integer arithmetic; the IoU test divides in
// float64 on both devices, the boundary score in float32.
#pragma once

#include "macros.h"

namespace segops {

// Boundary score of a pixel whose 3x3 neighbourhood holds s mask pixels (zero padding):
// min(s, 9 - s) / 4.5 in float32. Level = min(s, 9 - s) in 0..4; candidates have level > 0.
SEGOPS_HOST_DEVICE int boundary_level(int s) { return s < 9 - s ? s : 9 - s; }
SEGOPS_HOST_DEVICE float boundary_score(int level) { return static_cast<float>(level) / 4.5f; }

// Two p x p patches whose centres differ by (dx, dy) overlap with
// IoU = inter / (2 p^2 - inter), inter = max(p - |dx|, 0) * max(p - |dy|, 0).
SEGOPS_HOST_DEVICE bool patches_suppress(int64_t dx, int64_t dy, int64_t p, double threshold) {
  const int64_t ax = dx < 0 ? -dx : dx, ay = dy < 0 ? -dy : dy;
  const int64_t inter = (ax < p ? p - ax : 0) * (ay < p ? p - ay : 0);
  const int64_t uni = 2 * p * p - inter;
  return static_cast<double>(inter) / static_cast<double>(uni) > threshold;
}

// For |dy| = ady (< p): the largest |dx| at which a patch is still suppressed, or -1.
// Overlap decreases with |dx|, so the suppressed offsets of a row are one interval.
SEGOPS_HOST_DEVICE int64_t suppress_half_width(int64_t ady, int64_t p, double threshold) {
  int64_t hw = -1;
  while (hw + 1 < p && patches_suppress(hw + 1, ady, p, threshold)) ++hw;
  return hw;
}

// A patch of size p centred at pixel c (first corner c - p / 2), shifted (not clipped) into
// an axis of `size` pixels; the whole axis when it is shorter than p.
struct Span {
  int64_t lo, hi;
};

SEGOPS_HOST_DEVICE Span shifted_patch(int64_t c, int64_t p, int64_t size) {
  if (size < p) return {0, size};
  int64_t lo = c - p / 2;
  lo = lo < 0 ? 0 : lo;
  lo = lo > size - p ? size - p : lo;
  return {lo, lo + p};
}

// torch's legacy 'nearest' source index for output index o (F.interpolate(mode="nearest")).
SEGOPS_HOST_DEVICE int64_t nearest_index(int64_t o, int64_t n_in, int64_t n_out) {
  if (n_in == n_out) return o;
  if (n_out == 2 * n_in) return o >> 1;
  const float scale = static_cast<float>(n_in) / static_cast<float>(n_out);
  const int64_t i = static_cast<int64_t>(floorf(static_cast<float>(o) * scale));
  return i < n_in - 1 ? i : n_in - 1;
}

}  // namespace segops
