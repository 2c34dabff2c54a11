// Box IoU and the per-element rules of the suppression family (docs/ops/nms.md), shared by the
// CPU and CUDA kernels. Torch-free.
#pragma once

#include "macros.h"
#include "portable_math.h"

namespace segops {

// An axis-aligned box (x1, y1, x2, y2) in the IoU dtype G (float, or double for double).
template <typename G>
struct Box {
  G x1, y1, x2, y2;
};

template <typename G, typename T>
SEGOPS_HOST_DEVICE Box<G> load_box(const T* p) {
  return Box<G>{static_cast<G>(p[0]), static_cast<G>(p[1]), static_cast<G>(p[2]),
                static_cast<G>(p[3])};
}

// A box with a non-finite coordinate is absent: never kept, never suppresses.
template <typename G>
SEGOPS_HOST_DEVICE bool box_finite(const Box<G>& b) {
  return is_finite(b.x1) && is_finite(b.y1) && is_finite(b.x2) && is_finite(b.y2);
}

template <typename G>
SEGOPS_HOST_DEVICE G box_area(const Box<G>& b) {
  return (b.x2 - b.x1) * (b.y2 - b.y1);
}

// inter / (area_a + area_b - inter), torchvision's order of operations; a pair whose union
// is not positive (zero-area boxes) has IoU 0 rather than NaN.
template <typename G>
SEGOPS_HOST_DEVICE G box_iou(G ax1, G ay1, G ax2, G ay2, G area_a, G bx1, G by1, G bx2, G by2,
                             G area_b) {
  const G w = max_(min_(ax2, bx2) - max_(ax1, bx1), G(0));
  const G h = max_(min_(ay2, by2) - max_(ay1, by1), G(0));
  const G inter = w * h;
  const G uni = area_a + area_b - inter;
  // Branch-free (the division always runs, on a safe denominator), so that loops over
  // candidates vectorise; the value is inter / uni, or 0.
  const G q = inter / (uni > G(0) ? uni : G(1));
  return uni > G(0) ? q : G(0);
}

template <typename G>
SEGOPS_HOST_DEVICE G box_iou(const Box<G>& a, G area_a, const Box<G>& b, G area_b) {
  return box_iou(a.x1, a.y1, a.x2, a.y2, area_a, b.x1, b.y1, b.x2, b.y2, area_b);
}

template <typename G>
SEGOPS_HOST_DEVICE G box_iou(const Box<G>& a, const Box<G>& b) {
  return box_iou(a, box_area(a), b, box_area(b));
}

// One class's Fast NMS candidates in rank order, as structure of arrays.
template <typename G>
struct BoxColumns {
  const G *x1, *y1, *x2, *y2, *area;
};

// Fast NMS (YOLACT): box j is kept iff its IoU with every higher-ranked box i < j,
// suppressed or not, is <= threshold -- the column max of the upper-triangular IoU matrix.
// OR-ing "IoU above the threshold" over i decides the same and vectorises (a 32-bit flag:
// 64-bit lanes would halve the vector width).
template <typename G>
SEGOPS_HOST_DEVICE bool fast_nms_keep(const BoxColumns<G>& b, int64_t j, G threshold) {
  const G x1 = b.x1[j], y1 = b.y1[j], x2 = b.x2[j], y2 = b.y2[j], area = b.area[j];
  uint32_t above = 0;
  for (int64_t i = 0; i < j; ++i)
    above |= box_iou(b.x1[i], b.y1[i], b.x2[i], b.y2[i], b.area[i], x1, y1, x2, y2, area) >
             threshold;
  return above == 0;
}

// Matrix NMS (SOLOv2) decay of mask j, given IoUs with the higher-scored masks, the same-class
// flags, and each mask's compensation comp_i = max IoU with any higher-scored same-class mask.
// iou(i) and same(i) are callables over i < j. gaussian: min_i exp(-sigma iou^2) /
// exp(-sigma comp_i^2); linear: min_i (1 - iou) / (1 - comp_i), leaving out terms whose
// denominator is 0. Terms with i >= j are >= 1 in the original and row 0 gives one <= 1, so
// the minimum over i < j, capped at 1, is the original's.
// One term of the decay: x = the IoU with a higher-scored mask i (0 across labels),
// comp_i = i's compensation. False when the term is left out (linear, denominator 0).
// Terms are never -0 (IoU <= 1 and compensations <= 1), so a minimum over them is the same
// in any order.
template <typename G>
SEGOPS_HOST_DEVICE bool matrix_nms_term(G x, G comp_i, bool gaussian, G sigma, G& term) {
  if (gaussian) {
    // the portable exp: glibc's and CUDA's differ in the last ulp
    term = exp_portable(-sigma * (x * x)) / exp_portable(-sigma * (comp_i * comp_i));
    return true;
  }
  const G den = G(1) - comp_i;
  if (den == G(0)) return false;
  term = (G(1) - x) / den;
  return true;
}

template <typename G, typename Iou, typename Same>
SEGOPS_HOST_DEVICE G matrix_nms_decay(int64_t j, const G* comp, bool gaussian, G sigma, Iou&& iou,
                                      Same&& same) {
  G decay = G(1);
  for (int64_t i = 0; i < j; ++i) {
    G term;
    if (matrix_nms_term(same(i) ? iou(i) : G(0), comp[i], gaussian, sigma, term))
      decay = min_(decay, term);
  }
  return decay;
}

// IoU of two binary masks from their intersection and pixel counts; empty masks give 0.
template <typename G>
SEGOPS_HOST_DEVICE G mask_iou(G inter, G area_a, G area_b) {
  const G uni = area_a + area_b - inter;
  return uni > G(0) ? inter / uni : G(0);
}

}  // namespace segops
