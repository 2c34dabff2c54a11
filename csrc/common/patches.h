// Boundary patch refinement (BPR, docs/ops/patches.md): per-element rules shared by the CPU and CUDA
// kernels. Torch-free. Patch geometry is integer arithmetic; the IoU test divides in
// float64 on both devices, the boundary score in float32.
#pragma once

#include "macros.h"

namespace segops {

// Largest patch size: 2 p^2 then fits int64, so the IoU's integers are exact.
constexpr int64_t kMaxPatchSize = int64_t(1) << 30;

// Boundary score of a pixel whose 3x3 neighbourhood holds s mask pixels (zero padding):
// min(s, 9 - s) / 4.5 in float32. Level = min(s, 9 - s) in 0..4; candidates have level > 0.
SEGOPS_HOST_DEVICE int boundary_level(int s) { return s < 9 - s ? s : 9 - s; }
SEGOPS_HOST_DEVICE float boundary_score(int level) { return static_cast<float>(level) / 4.5f; }

// Two p x p patches whose centres differ by (dx, dy) overlap with
// IoU = inter / (2 p^2 - inter), inter = max(p - |dx|, 0) * max(p - |dy|, 0) (p <= 2^30).
SEGOPS_HOST_DEVICE bool patches_suppress(int64_t dx, int64_t dy, int64_t p, double threshold) {
  const int64_t ax = dx < 0 ? -dx : dx, ay = dy < 0 ? -dy : dy;
  const int64_t inter = (ax < p ? p - ax : 0) * (ay < p ? p - ay : 0);
  const int64_t uni = 2 * p * p - inter;
  return static_cast<double>(inter) / static_cast<double>(uni) > threshold;
}

// For |dy| = ady (< p): the largest |dx| <= cap at which a patch is still suppressed, or -1.
// Overlap, and with it the rounded IoU, does not increase with |dx|, so the suppressed
// offsets of a row are one interval, found by bisection: O(log min(p, cap)). Callers pass
// cap = the width of the region they mark (a larger half width changes nothing there).
SEGOPS_HOST_DEVICE int64_t suppress_half_width(int64_t ady, int64_t p, double threshold,
                                               int64_t cap) {
  // Invariant: lo = -1 or suppresses; hi = min(p - 1, cap) + 1 (not tested: the answer is
  // clipped there) or does not suppress.
  int64_t lo = -1, hi = (p - 1 < cap ? p - 1 : cap) + 1;
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (patches_suppress(mid, ady, p, threshold)) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
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

// The extent hi - lo of a box axis [lo, hi) as an unsigned integer: exact for every pair of
// int64 coordinates (up to 2^64 - 1); 0 for an empty axis (hi <= lo).
SEGOPS_HOST_DEVICE uint64_t box_extent(int64_t lo, int64_t hi) {
  return hi > lo ? static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo) : 0;
}

// lo + off for an offset off < box_extent(lo, hi): the true sum lies in [lo, hi), so the
// unsigned (wrapping) sum read back as int64 is exact.
SEGOPS_HOST_DEVICE int64_t box_coord(int64_t lo, uint64_t off) {
  return static_cast<int64_t>(static_cast<uint64_t>(lo) + off);
}

// torch's legacy 'nearest' source index for output index o (F.interpolate(mode="nearest")),
// for an input of n_in >= 1 samples (up to 2^64 - 1: a box's extent).
SEGOPS_HOST_DEVICE uint64_t nearest_index(int64_t o, uint64_t n_in, int64_t n_out) {
  const uint64_t out = static_cast<uint64_t>(n_out);
  if (n_in == out) return static_cast<uint64_t>(o);
  if (out % 2 == 0 && out / 2 == n_in) return static_cast<uint64_t>(o) >> 1;
  const float scale = static_cast<float>(n_in) / static_cast<float>(n_out);
  const float f = floorf(static_cast<float>(o) * scale);
  if (!(f < 18446744073709551616.0f)) return n_in - 1;  // 2^64: the cast would overflow
  const uint64_t i = static_cast<uint64_t>(f);
  return i < n_in - 1 ? i : n_in - 1;
}

}  // namespace segops
