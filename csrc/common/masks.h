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

// Output index `o` of an axis resized from n_in to n_out samples. I is int64_t, or uint64_t
// for output axes of up to 2^64 - 1 samples (a box's extent); the arithmetic is the same.
template <typename A, typename I = int64_t>
SEGOPS_HOST_DEVICE LinearTap<A> resize_tap(I o, int64_t n_in, I n_out) {
  if (static_cast<I>(n_in) == n_out) {
    const int64_t i = static_cast<int64_t>(o);  // < n_in
    return {i, i, A(1), A(0)};
  }
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
  bool valid;              // false when an expanded corner is NaN: the box pastes nothing
};

// Truncation toward zero, as Tensor.to(int64), clamped to +-2^40 (far outside any image).
// NaN (inf - inf, from finite corners near the float range's end) maps to 0 so that the
// conversion is defined on every device (x86 would give INT64_MIN, PTX 0); callers treat
// such a box as pasting nothing (PasteBox::valid).
template <typename A>
SEGOPS_HOST_DEVICE int64_t trunc_coord(A v) {
  const A limit = A(1099511627776.0);  // 2^40
  return v == v ? static_cast<int64_t>(min_(max_(v, -limit), limit)) : 0;
}

template <typename A>
SEGOPS_HOST_DEVICE PasteBox torchvision_paste_box(A x0, A y0, A x1, A y1, A scale) {
  A w_half = (x1 - x0) * A(0.5);
  A h_half = (y1 - y0) * A(0.5);
  const A x_c = (x1 + x0) * A(0.5);
  const A y_c = (y1 + y0) * A(0.5);
  w_half = w_half * scale;
  h_half = h_half * scale;
  const A ex0 = x_c - w_half, ex1 = x_c + w_half, ey0 = y_c - h_half, ey1 = y_c + h_half;
  PasteBox b;
  b.valid = ex0 == ex0 && ex1 == ex1 && ey0 == ey0 && ey1 == ey1;
  b.x0 = trunc_coord(ex0);
  b.x1 = trunc_coord(ex1);
  b.y0 = trunc_coord(ey0);
  b.y1 = trunc_coord(ey1);
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

// ---- footprints: the output pixels that can differ from the value 0 maps to ----
// Computed once per mask (per block on CUDA); every other pixel gets that value without
// being evaluated, on both devices.

// First index o in [0, n) where pred(o) holds, for pred false...false true...true; n if none.
template <typename Pred>
SEGOPS_HOST_DEVICE int64_t lower_bound_index(int64_t n, Pred pred) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (pred(mid)) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

// The output indices of an axis resized from n_in to n_out whose taps reach source indices
// [r.begin, r.end): an interval, as both taps are non-decreasing in the output index.
template <typename A>
SEGOPS_HOST_DEVICE IndexRange resize_reach(IndexRange r, int64_t n_in, int64_t n_out) {
  if (r.begin >= r.end) return {0, 0};
  const int64_t b =
      lower_bound_index(n_out, [&](int64_t o) { return resize_tap<A>(o, n_in, n_out).i1 >= r.begin; });
  const int64_t e =
      lower_bound_index(n_out, [&](int64_t o) { return resize_tap<A>(o, n_in, n_out).i0 >= r.end; });
  return {b, e > b ? e : b};
}

// detectron2: the pixels whose grid_sample footprint can reach the mask, a superset of
// x + 0.5 in (b0 - cell / 2, b1 + cell / 2), cell = (b1 - b0) / m, clipped to [0, size).
SEGOPS_HOST_DEVICE IndexRange detectron2_reach(double b0, double b1, int64_t m, int64_t size) {
  const double half = (b1 - b0) / static_cast<double>(m) * 0.5;
  const double lo = floor_(b0 - half - 0.5) - 1.0;
  const double hi = ceil_(b1 + half - 0.5) + 2.0;
  const double s = static_cast<double>(size);
  const int64_t begin = static_cast<int64_t>(min_(max_(lo, 0.0), s));
  const int64_t end = static_cast<int64_t>(min_(max_(hi, 0.0), s));
  return {begin, end > begin ? end : begin};
}

// One image axis of a pasted mask: the pixels that can be non-zero, and each one's taps.
template <typename A>
struct PasteAxis {
  IndexRange reach;  // empty: the mask pastes nothing
  A b0, b1;          // detectron2: the box's edges on this axis
  int64_t start, size;  // torchvision: the expanded box
  int64_t m;            // mask cells on this axis
  bool detectron2;

  SEGOPS_HOST_DEVICE LinearTap<A> tap(int64_t p) const {
    return detectron2 ? grid_tap<A>(p, b0, b1, m) : torchvision_tap<A>(p, start, size, m);
  }
};

template <typename A>
struct PasteGeometry {
  PasteAxis<A> y, x;
  SEGOPS_HOST_DEVICE bool empty() const {
    return y.reach.begin >= y.reach.end || x.reach.begin >= x.reach.end;
  }
};

// Geometry of box b = (x0, y0, x1, y1) pasting an mh x mw mask into an ih x iw image. A box
// with a non-finite coordinate (or, for detectron2, x1 <= x0 or y1 <= y0; for torchvision,
// a NaN expanded corner) reaches nothing.
template <typename A>
SEGOPS_HOST_DEVICE PasteGeometry<A> paste_geometry(const A* b, bool detectron2, int64_t mh,
                                                   int64_t mw, int64_t ih, int64_t iw) {
  PasteGeometry<A> g;
  g.y = {{0, 0}, b[1], b[3], 0, 0, mh, detectron2};
  g.x = {{0, 0}, b[0], b[2], 0, 0, mw, detectron2};
  if (!(is_finite(b[0]) && is_finite(b[1]) && is_finite(b[2]) && is_finite(b[3]))) return g;
  if (detectron2) {
    if (!(b[2] > b[0]) || !(b[3] > b[1])) return g;
    g.x.reach = detectron2_reach(b[0], b[2], mw, iw);
    g.y.reach = detectron2_reach(b[1], b[3], mh, ih);
    return g;
  }
  const A scale = static_cast<A>(static_cast<double>(mw + 2) / static_cast<double>(mw));
  const PasteBox pb = torchvision_paste_box<A>(b[0], b[1], b[2], b[3], scale);
  if (!pb.valid) return g;
  g.x.start = pb.x0;
  g.x.size = pb.w;
  g.y.start = pb.y0;
  g.y.size = pb.h;
  g.x.reach = {max_<int64_t>(pb.x0, 0), min_<int64_t>(pb.x1 + 1, iw)};
  g.y.reach = {max_<int64_t>(pb.y0, 0), min_<int64_t>(pb.y1 + 1, ih)};
  if (g.x.reach.end < g.x.reach.begin) g.x.reach.end = g.x.reach.begin;
  if (g.y.reach.end < g.y.reach.begin) g.y.reach.end = g.y.reach.begin;
  return g;
}

}  // namespace segops
