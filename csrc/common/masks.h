// Masks family (docs/ops/masks.md), per-element math shared by the CPU and CUDA kernels. Torch-free.
//
// Every function here is evaluated operation by operation in acc_t (float32, or float64 for
// float64 data) with no fused multiply-add (CPU: -ffp-contract=off; CUDA: --fmad=false) and
// no library transcendental (portable_math.h). So the CPU and CUDA kernels give
// the same bits for the same inputs, which is what makes their masks identical.
#pragma once

#include "macros.h"
#include "portable_math.h"

namespace segops {

// ---- YOLACT's crop ----

// The integer indices [begin, end) of an axis of `size` pixels that YOLACT's crop keeps for
// relative coordinates b1, b2: lo = clamp(min(b1, b2) * S - padding, min=0),
// hi = clamp(max(b1, b2) * S + padding, max=S), i kept iff lo <= i < hi. A NaN or infinite
// coordinate gives an empty range (docs/ops/conventions.md: a non-finite box is empty).
struct IndexRange {
  int64_t begin, end;
  SEGOPS_HOST_DEVICE bool contains(int64_t i) const { return begin <= i && i < end; }
};

template <typename A>
SEGOPS_HOST_DEVICE IndexRange crop_range(A b1, A b2, int64_t size, int64_t padding) {
  if (!is_finite(b1) || !is_finite(b2)) return {0, 0};
  const A s = static_cast<A>(size), p = static_cast<A>(padding);
  A lo = min_(b1, b2) * s - p;
  A hi = max_(b1, b2) * s + p;
  lo = max_(lo, A(0));
  hi = min_(hi, s);
  // i >= lo  <=>  i >= ceil(lo);  i < hi  <=>  i < ceil(hi). Clip before converting.
  const A first = ceil_(min_(lo, s));
  const A last = ceil_(max_(hi, A(0)));
  const int64_t b = static_cast<int64_t>(first), e = static_cast<int64_t>(last);
  return {b, e > b ? e : b};
}

// logit = sum_k protos[k * stride] * coeffs[k], in order k = 0..K-1, in acc_t.
template <typename T>
SEGOPS_HOST_DEVICE acc_t<T> proto_logit(const T* protos, int64_t stride, const T* coeffs,
                                        int64_t k) {
  acc_t<T> z = 0;
  for (int64_t i = 0; i < k; ++i)
    z += static_cast<acc_t<T>>(protos[i * stride]) * static_cast<acc_t<T>>(coeffs[i]);
  return z;
}

// ---- bilinear resize, align_corners=False (F.interpolate's source index and weights) ----

template <typename A>
struct LinearTap {
  int64_t i0, i1;
  A l0, l1;
};

// Output index `o` of an axis resized from n_in to n_out samples.
template <typename A>
SEGOPS_HOST_DEVICE LinearTap<A> resize_tap(int64_t o, int64_t n_in, int64_t n_out) {
  if (n_in == n_out) return {o, o, A(1), A(0)};
  const A scale = static_cast<A>(n_in) / static_cast<A>(n_out);
  A src = scale * (static_cast<A>(o) + A(0.5)) - A(0.5);
  src = max_(src, A(0));
  int64_t i0 = static_cast<int64_t>(floor_(src));
  i0 = i0 < n_in - 1 ? i0 : n_in - 1;
  const A l1 = min_(max_(src - static_cast<A>(i0), A(0)), A(1));
  const int64_t i1 = i0 + (i0 < n_in - 1 ? 1 : 0);
  return {i0, i1, A(1) - l1, l1};
}

// (v00 * lx0 + v01 * lx1) * ly0 + (v10 * lx0 + v11 * lx1) * ly1, in that order.
template <typename A>
SEGOPS_HOST_DEVICE A blend(A v00, A v01, A v10, A v11, const LinearTap<A>& ty,
                           const LinearTap<A>& tx) {
  return (v00 * tx.l0 + v01 * tx.l1) * ty.l0 + (v10 * tx.l0 + v11 * tx.l1) * ty.l1;
}

// ---- paste_masks: both modes are a bilinear blend over the mask read as 0 outside ----

// mask[i][j] for i in [0, mh), j in [0, mw); 0 elsewhere.
template <typename T, typename A>
SEGOPS_HOST_DEVICE A mask_at(const T* mask, int64_t mh, int64_t mw, int64_t i, int64_t j) {
  return (0 <= i && i < mh && 0 <= j && j < mw) ? static_cast<A>(mask[i * mw + j]) : A(0);
}

// detectron2 (grid_sample, bilinear, zeros, align_corners=False), one axis: pixel p of a
// box [b0, b1] over m cells samples position
//   pos = ((g + 1) * m - 1) / 2,  g = ((p + 0.5) - b0) / (b1 - b0) * 2 - 1,
// from cells lo = floor(pos) and lo + 1 with weights (lo + 1) - pos and pos - lo. A
// position whose two cells both lie outside the mask (or that is not finite) gets zero
// weights on cells outside, so that its value is exactly 0.
template <typename A>
SEGOPS_HOST_DEVICE LinearTap<A> grid_tap(int64_t p, A b0, A b1, int64_t m) {
  const A g = ((static_cast<A>(p) + A(0.5)) - b0) / (b1 - b0) * A(2) - A(1);
  const A pos = ((g + A(1)) * static_cast<A>(m) - A(1)) / A(2);
  if (!(pos > A(-1) && pos < static_cast<A>(m))) return {-2, -1, A(0), A(0)};
  const A lo = floor_(pos);
  const int64_t i = static_cast<int64_t>(lo);
  return {i, i + 1, (lo + A(1)) - pos, pos - lo};
}

// torchvision (paste_masks_in_image): the box expanded by (m + 2) / m about its centre and
// truncated to integers; the mask zero-padded by one cell is resized onto it.
struct PasteBox {
  int64_t x0, y0, x1, y1;  // inclusive corners of the resized (padded) mask in the image
  int64_t w, h;            // its size: max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
};

template <typename A>
SEGOPS_HOST_DEVICE int64_t trunc_coord(A v) {
  // Truncation toward zero, as Tensor.to(int64); clamped far outside any image.
  const A limit = A(1099511627776.0);  // 2^40
  return static_cast<int64_t>(min_(max_(v, -limit), limit));
}

template <typename A>
SEGOPS_HOST_DEVICE PasteBox torchvision_paste_box(A x0, A y0, A x1, A y1, A scale) {
  A w_half = (x1 - x0) * A(0.5);
  A h_half = (y1 - y0) * A(0.5);
  const A x_c = (x1 + x0) * A(0.5);
  const A y_c = (y1 + y0) * A(0.5);
  w_half = w_half * scale;
  h_half = h_half * scale;
  PasteBox b;
  b.x0 = trunc_coord(x_c - w_half);
  b.x1 = trunc_coord(x_c + w_half);
  b.y0 = trunc_coord(y_c - h_half);
  b.y1 = trunc_coord(y_c + h_half);
  b.w = b.x1 - b.x0 + 1 > 1 ? b.x1 - b.x0 + 1 : 1;
  b.h = b.y1 - b.y0 + 1 > 1 ? b.y1 - b.y0 + 1 : 1;
  return b;
}

// Image pixel p of an axis whose box starts at `start` and spans `size` pixels: the resize
// tap of the (m + 2)-cell padded mask, shifted back to unpadded cell indices.
template <typename A>
SEGOPS_HOST_DEVICE LinearTap<A> torchvision_tap(int64_t p, int64_t start, int64_t size,
                                                int64_t m) {
  LinearTap<A> t = resize_tap<A>(p - start, m + 2, size);
  t.i0 -= 1;
  t.i1 -= 1;
  return t;
}

}  // namespace segops
