// Multilevel RoIAlign (FPN) per-RoI math, shared by the CPU and CUDA kernels. Torch-free.
//
// A multilevel RoIAlign pools "slots": in assign mode slot k is RoI k at the level it is
// assigned to; in all-levels mode slot l * K + k is RoI k at level l. The output is
// [slots, C, pooled_h, pooled_w], i.e. [K, C, h, w] or [L, K, C, h, w].
//
// Level assignment (torchvision's LevelMapper) is
//   floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6), clamped,
// which is decided here without any transcendental: level l + 1 starts at the area
//   (canonical_scale * 2^(k_min + l + 1 - canonical_level - 1e-6))^2,
// precomputed once on the host in double (`area[l]`) and compared with the RoI's area,
// so CPU and CUDA decide identically (libm's and CUDA's log2 differ in the last ulp).
#pragma once

#include "macros.h"
#include "roi_align.h"

namespace segops {

// Largest number of pyramid levels (the per-level facts travel by value to CUDA kernels).
constexpr int64_t kMaxRoILevels = 16;

// The index (0 = lowest level) of the level RoI `roi` = (batch_index, x1, y1, x2, y2) is
// assigned to: how many of the ascending thresholds areas[0..levels-1) its area reaches.
// The area (x2 - x1) * (y2 - y1) is in input-image pixels, computed in the geometry dtype G
// (torchvision's box_area, no +1) and compared in double; a zero, negative or NaN area
// goes to the lowest level, an infinite one to the highest.
template <typename G, typename R>
SEGOPS_HOST_DEVICE int64_t roi_level(const R* roi, const double* areas, int64_t levels) {
  const G w = static_cast<G>(roi[3]) - static_cast<G>(roi[1]);
  const G h = static_cast<G>(roi[4]) - static_cast<G>(roi[2]);
  const double area = static_cast<double>(w * h);
  int64_t l = 0;
  while (l < levels - 1 && area >= areas[l]) ++l;  // NaN compares false
  return l;
}

// Everything a multilevel RoIAlign kernel needs besides its pointers, by value.
struct MultiLevelRoIAlign {
  int64_t levels, batch, channels, rois, pooled_h, pooled_w, sampling_ratio;
  bool aligned;
  bool all_levels;                     // every RoI from every level (PANet)
  int64_t height[kMaxRoILevels], width[kMaxRoILevels];
  double scale[kMaxRoILevels];         // spatial scale of each level
  double area[kMaxRoILevels];          // area[l]: smallest area of level l + 1 (assign mode)

  SEGOPS_HOST_DEVICE int64_t slots() const { return all_levels ? levels * rois : rois; }

  // False when every level is empty (H or W of 0): nothing to sample, no launch needed.
  SEGOPS_HOST_DEVICE bool any_pixels() const {
    for (int64_t l = 0; l < levels; ++l)
      if (height[l] > 0 && width[l] > 0) return true;
    return false;
  }

  // Slot s: its level and its RoI's geometry at that level (roi_align's, exactly).
  template <typename G>
  SEGOPS_HOST_DEVICE RoIAlignGeometry<G> geometry(const G* boxes, int64_t s,
                                                  int64_t& level) const {
    const int64_t k = all_levels ? s % rois : s;
    const G* roi = boxes + k * 5;
    level = all_levels ? s / rois : roi_level<G>(roi, area, levels);
    return roi_align_geometry<G>(roi, static_cast<G>(scale[level]), pooled_h, pooled_w,
                                 sampling_ratio, aligned, batch, height[level], width[level]);
  }
};

}  // namespace segops
