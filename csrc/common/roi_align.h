// RoIAlign per-element math, shared by the CPU and CUDA kernels. Torch-free.
//
// Geometry and bilinear rules are torchvision's (docs/ops/roi.md), written once here:
//  * the box geometry is computed in G (the input dtype for float/double, float for
//    half types), in exactly torchvision's order of operations;
//  * a sample's contribution is separable, w = w_y * w_x, so the per-axis rules live in
//    RoIAxis and a sample at (y, x) is two 1-D interpolations;
//  * samples are visited only where they can be inside [-1, size] (exact: positions are
//    monotone in the sample index), which bounds the work of huge boxes by the image, and
//    the backward's gather form finds the samples near a pixel the same way.
#pragma once

#include <cmath>

#include "macros.h"

namespace segops {

// One axis of a bilinear sample: the two neighbouring pixels and their weights.
template <typename G>
struct Interp1D {
  int64_t lo, hi;
  G wlo, whi;
  bool valid;

  // Weight this sample puts on pixel `p` along this axis (0 if it does not touch it).
  SEGOPS_HOST_DEVICE G weight_at(int64_t p) const {
    return (lo == p ? wlo : G(0)) + (hi == p ? whi : G(0));
  }
};

// The sampling grid of one RoI along one axis.
template <typename G>
struct RoIAxis {
  G start;         // scaled, offset start of the RoI
  G bin;           // bin size
  int64_t grid;    // samples per bin
  int64_t pooled;  // number of bins
  int64_t size;    // feature-map size along this axis (>= 1)
  int64_t first;   // samples [first, last) may lie in [-1, size]
  int64_t last;

  SEGOPS_HOST_DEVICE int64_t samples() const { return pooled * grid; }

  // Position of sample i of bin p, in torchvision's order of operations.
  SEGOPS_HOST_DEVICE G pos(int64_t p, int64_t i) const {
    return start + static_cast<G>(p) * bin +
           static_cast<G>(static_cast<float>(i) + 0.5f) * bin / static_cast<G>(grid);
  }
  SEGOPS_HOST_DEVICE G pos(int64_t s) const { return pos(s / grid, s % grid); }

  // torchvision's bilinear rule along one axis. NaN takes the invalid branch.
  SEGOPS_HOST_DEVICE Interp1D<G> interp(G v) const {
    Interp1D<G> r;
    r.valid = v >= G(-1) && v <= static_cast<G>(size);
    if (!r.valid) {
      r.lo = r.hi = 0;
      r.wlo = r.whi = G(0);
      return r;
    }
    if (v <= G(0)) v = G(0);
    r.lo = static_cast<int64_t>(v);
    if (r.lo >= size - 1) {
      r.lo = r.hi = size - 1;
      v = static_cast<G>(r.lo);
    } else {
      r.hi = r.lo + 1;
    }
    G l = v - static_cast<G>(r.lo);
    r.whi = l;
    r.wlo = G(1) - l;
    return r;
  }

  // First sample index s in [0, n] where pred(pos(s)) holds, for a predicate that is
  // monotone along the samples (false ... false, true ... true). Positions are monotone in
  // s (decreasing when an aligned, inverted box has a negative bin), so an estimate from
  // `v` is usually within a step or two of the answer; a galloping search from it, then a
  // bisection, finds the answer in O(log distance) evaluations whatever the rounding (a
  // huge box's (i + 0.5) * bin overflows to inf for all but its first samples, which a
  // step-by-step walk crossed one sample at a time).
  template <typename Pred>
  SEGOPS_HOST_DEVICE int64_t first_where(G v, Pred pred) const {
    const int64_t n = samples();
    if (n == 0) return 0;
    int64_t s = 0;
    const G step = bin / static_cast<G>(grid);
    if (step != G(0) && is_finite(step)) {
      const G e = (v - start) / step - G(0.5);
      s = !(e > G(0)) ? 0 : (e >= static_cast<G>(n) ? n : static_cast<int64_t>(e));
    }
    const auto holds = [&](int64_t k) { return k >= n || pred(pos(k)); };
    int64_t lo, hi;  // holds(hi); lo == -1 or !holds(lo)
    if (holds(s)) {
      hi = s;
      for (int64_t d = 1;; d *= 2) {
        lo = s - d;
        if (lo < 0) {
          lo = -1;
          break;
        }
        if (!holds(lo)) break;
        hi = lo;
      }
    } else {
      lo = s;
      for (int64_t d = 1;; d *= 2) {
        hi = s + d;
        if (hi >= n) {
          hi = n;
          break;
        }
        if (holds(hi)) break;
        lo = hi;
      }
    }
    while (hi - lo > 1) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (holds(mid)) {
        hi = mid;
      } else {
        lo = mid;
      }
    }
    return hi;
  }

  // Samples [b, e) whose position lies in [lo, hi].
  SEGOPS_HOST_DEVICE void range(G lo, G hi, int64_t& b, int64_t& e) const {
    if (bin >= G(0)) {
      b = first_where(lo, [&](G p) { return p >= lo; });
      e = first_where(hi, [&](G p) { return p > hi; });
    } else {
      b = first_where(hi, [&](G p) { return p <= hi; });
      e = first_where(lo, [&](G p) { return p < lo; });
    }
    e = max_(e, b);
  }

  // Samples [b, e) that can put weight on pixel p (a superset checked by weight_at).
  SEGOPS_HOST_DEVICE void touching(int64_t p, int64_t& b, int64_t& e) const {
    const G lo = p == 0 ? G(-1) : static_cast<G>(p - 1);
    const G hi = p == size - 1 ? static_cast<G>(size) : static_cast<G>(p + 1);
    range(lo, hi, b, e);
    b = max_(b, first);
    e = min_(e, last);
  }

  // Pixels [b, e) that valid samples can touch.
  SEGOPS_HOST_DEVICE void footprint(int64_t& b, int64_t& e) const {
    if (first >= last) {
      b = e = 0;
      return;
    }
    const Interp1D<G> u = interp(pos(first)), w = interp(pos(last - 1));
    b = min_(u.lo, w.lo);
    e = max_(u.hi, w.hi) + 1;
  }
};

template <typename G>
struct RoIAlignGeometry {
  RoIAxis<G> y, x;
  int64_t batch;
  G count;     // divisor: max(grid_h * grid_w, 1)
  bool empty;  // non-finite box, or a batch index outside [0, N): contributes nothing
};

namespace detail {

template <typename G>
SEGOPS_HOST_DEVICE int64_t grid_size(G roi_size, int64_t pooled, int64_t sampling_ratio) {
  if (sampling_ratio > 0) return sampling_ratio;
  G g = ceil_(roi_size / static_cast<G>(pooled));
  // A negative (aligned, inverted) box samples nothing; an absurdly large one is capped,
  // which only matters for boxes whose samples are already restricted to the image.
  if (!(g > G(0))) return 0;
  return g > G(1 << 30) ? int64_t(1) << 30 : static_cast<int64_t>(g);
}

template <typename G>
SEGOPS_HOST_DEVICE RoIAxis<G> make_axis(G start, G end, int64_t pooled, int64_t sampling_ratio,
                                        bool aligned, int64_t size) {
  RoIAxis<G> a;
  G len = end - start;
  if (!aligned) len = max_(len, G(1));
  a.start = start;
  a.bin = len / static_cast<G>(pooled);
  a.grid = grid_size(len, pooled, sampling_ratio);
  a.pooled = pooled;
  a.size = size;
  a.range(G(-1), static_cast<G>(size), a.first, a.last);
  return a;
}

}  // namespace detail

// Geometry of RoI `roi` = (batch_index, x1, y1, x2, y2), as torchvision computes it.
template <typename G, typename R>
SEGOPS_HOST_DEVICE RoIAlignGeometry<G> roi_align_geometry(const R* roi, G spatial_scale,
                                                          int64_t pooled_h, int64_t pooled_w,
                                                          int64_t sampling_ratio, bool aligned,
                                                          int64_t batch_size, int64_t height,
                                                          int64_t width) {
  RoIAlignGeometry<G> g;
  const G offset = aligned ? G(0.5) : G(0);
  const G b = static_cast<G>(roi[0]);
  const G x1 = static_cast<G>(roi[1]) * spatial_scale - offset;
  const G y1 = static_cast<G>(roi[2]) * spatial_scale - offset;
  const G x2 = static_cast<G>(roi[3]) * spatial_scale - offset;
  const G y2 = static_cast<G>(roi[4]) * spatial_scale - offset;
  g.batch = b >= G(0) && b < static_cast<G>(batch_size) ? static_cast<int64_t>(b) : -1;
  g.empty = g.batch < 0 || !is_finite(x1) || !is_finite(y1) || !is_finite(x2) ||
            !is_finite(y2) || height <= 0 || width <= 0;
  if (g.empty) {  // an axis with no samples
    g.y = detail::make_axis(G(0), G(0), pooled_h, 0, true, 1);
    g.x = detail::make_axis(G(0), G(0), pooled_w, 0, true, 1);
    g.count = G(1);
    return g;
  }
  g.y = detail::make_axis(y1, y2, pooled_h, sampling_ratio, aligned, height);
  g.x = detail::make_axis(x1, x2, pooled_w, sampling_ratio, aligned, width);
  g.count = static_cast<G>(max_(g.y.grid * g.x.grid, int64_t(1)));
  return g;
}

// Calls fn(a, c) with the y and x interpolations of every valid sample of bin (ph, pw),
// iy outer and ix inner (torchvision's order). yi(s) / xi(s) give sample s's
// interpolation along each axis: callers may precompute them per RoI and reuse them across
// channels.
template <typename G, typename YI, typename XI, typename Fn>
SEGOPS_HOST_DEVICE void roi_align_bin_samples(const RoIAlignGeometry<G>& g, int64_t ph,
                                              int64_t pw, YI&& yi, XI&& xi, Fn&& fn) {
  if (g.empty) return;
  const int64_t iy0 = max_(ph * g.y.grid, g.y.first), iy1 = min_((ph + 1) * g.y.grid, g.y.last);
  const int64_t ix0 = max_(pw * g.x.grid, g.x.first), ix1 = min_((pw + 1) * g.x.grid, g.x.last);
  for (int64_t sy = iy0; sy < iy1; ++sy) {
    const Interp1D<G> a = yi(sy);
    if (!a.valid) continue;
    for (int64_t sx = ix0; sx < ix1; ++sx) {
      const Interp1D<G> c = xi(sx);
      if (c.valid) fn(a, c);
    }
  }
}

// The interpolations computed on the fly (the CUDA kernels' choice).
template <typename G>
struct OnTheFly {
  const RoIAxis<G>& axis;
  SEGOPS_HOST_DEVICE Interp1D<G> operator()(int64_t s) const { return axis.interp(axis.pos(s)); }
};

// A sample's four neighbours (offsets into a plane of width W) and their weights w_y * w_x,
// which depend on the RoI only: a caller may compute them once and reuse them per channel.
// I: the offsets' type (int32 where a plane has fewer than 2^31 elements: the CPU's table of
// a RoI's samples then fits L1, as torchvision's does).
template <typename G, typename I = int64_t>
struct BilinearSample {
  I offset[4];
  G weight[4];
};

// The offsets are computed in int64 and stored as I (the caller ensures they fit).
template <typename I = int64_t, typename G>
SEGOPS_HOST_DEVICE BilinearSample<G, I> bilinear_sample(const Interp1D<G>& a,
                                                        const Interp1D<G>& c, int64_t W) {
  return {{static_cast<I>(a.lo * W + c.lo), static_cast<I>(a.lo * W + c.hi),
           static_cast<I>(a.hi * W + c.lo), static_cast<I>(a.hi * W + c.hi)},
          {a.wlo * c.wlo, a.wlo * c.whi, a.whi * c.wlo, a.whi * c.whi}};
}

// A sample's value: its neighbours weighted and summed in torchvision's order.
template <typename A, typename T, typename G, typename I>
SEGOPS_HOST_DEVICE A bilinear_value(const T* plane, const BilinearSample<G, I>& s) {
  return s.weight[0] * static_cast<A>(plane[s.offset[0]]) +
         s.weight[1] * static_cast<A>(plane[s.offset[1]]) +
         s.weight[2] * static_cast<A>(plane[s.offset[2]]) +
         s.weight[3] * static_cast<A>(plane[s.offset[3]]);
}

// Forward: the value of output bin (ph, pw) of one RoI over one input plane [H, W]: the
// bin's samples' values summed in order from 0, over the sample count.
template <typename T, typename G, typename A, typename YI, typename XI>
SEGOPS_HOST_DEVICE A roi_align_bin(const T* plane, const RoIAlignGeometry<G>& g, int64_t ph,
                                   int64_t pw, YI&& yi, XI&& xi) {
  A acc = A(0);
  const int64_t W = g.x.size;
  roi_align_bin_samples(g, ph, pw, yi, xi, [&](const Interp1D<G>& a, const Interp1D<G>& c) {
    acc += bilinear_value<A>(plane, bilinear_sample(a, c, W));
  });
  return acc / static_cast<A>(g.count);
}

template <typename T, typename G, typename A = acc_t<T>>
SEGOPS_HOST_DEVICE A roi_align_bin(const T* plane, const RoIAlignGeometry<G>& g, int64_t ph,
                                   int64_t pw) {
  return roi_align_bin<T, G, A>(plane, g, ph, pw, OnTheFly<G>{g.y}, OnTheFly<G>{g.x});
}

// One sample's share of an output gradient, as torchvision computes it: grad * w / count.
template <typename A, typename G>
SEGOPS_HOST_DEVICE A roi_align_grad_term(A grad, G w, G count) {
  return grad * static_cast<A>(w) / static_cast<A>(count);
}

// Scatter form of the backward for one output bin: calls add(pixel_offset, value) for the
// four neighbours of every sample, in torchvision's order. Used by the CPU kernel and the
// atomic CUDA kernel; yi / xi as in roi_align_bin_samples.
template <typename G, typename A, typename Add, typename YI, typename XI>
SEGOPS_HOST_DEVICE void roi_align_bin_scatter(const RoIAlignGeometry<G>& g, int64_t ph,
                                              int64_t pw, A grad, Add&& add, YI&& yi, XI&& xi) {
  const int64_t W = g.x.size;
  roi_align_bin_samples(g, ph, pw, yi, xi, [&](const Interp1D<G>& a, const Interp1D<G>& c) {
    add(a.lo * W + c.lo, roi_align_grad_term(grad, a.wlo * c.wlo, g.count));
    add(a.lo * W + c.hi, roi_align_grad_term(grad, a.wlo * c.whi, g.count));
    add(a.hi * W + c.lo, roi_align_grad_term(grad, a.whi * c.wlo, g.count));
    add(a.hi * W + c.hi, roi_align_grad_term(grad, a.whi * c.whi, g.count));
  });
}

template <typename G, typename A, typename Add>
SEGOPS_HOST_DEVICE void roi_align_bin_scatter(const RoIAlignGeometry<G>& g, int64_t ph,
                                              int64_t pw, A grad, Add&& add) {
  roi_align_bin_scatter(g, ph, pw, grad, add, OnTheFly<G>{g.y}, OnTheFly<G>{g.x});
}

// Gather form of the backward: calls fn(bin, w) for every sample of the RoI that puts
// weight w = w_y * w_x on pixel (py, px), `bin` = ph * pooled_w + pw, in a fixed order
// (samples in raster order). A caller that visits RoIs in index order is deterministic.
// [sy0, sy1) and [sx0, sx1) are the samples that can touch the pixel's row and column
// (RoIAxis::touching): they depend on the row or the column alone, so callers may compute
// them once per row / column and share them.
template <typename G, typename Fn>
SEGOPS_HOST_DEVICE void roi_align_pixel_weights(const RoIAlignGeometry<G>& g, int64_t py,
                                                int64_t px, int64_t sy0, int64_t sy1,
                                                int64_t sx0, int64_t sx1, Fn&& fn) {
  if (g.empty) return;
  for (int64_t sy = sy0; sy < sy1; ++sy) {
    const Interp1D<G> a = g.y.interp(g.y.pos(sy));
    const G wy = a.weight_at(py);
    if (!a.valid || wy == G(0)) continue;
    const int64_t row = sy / g.y.grid * g.x.pooled;
    for (int64_t sx = sx0; sx < sx1; ++sx) {
      const Interp1D<G> c = g.x.interp(g.x.pos(sx));
      const G wx = c.weight_at(px);
      if (!c.valid || wx == G(0)) continue;
      fn(row + sx / g.x.grid, wy * wx);
    }
  }
}

template <typename G, typename Fn>
SEGOPS_HOST_DEVICE void roi_align_pixel_weights(const RoIAlignGeometry<G>& g, int64_t py,
                                                int64_t px, Fn&& fn) {
  if (g.empty) return;
  int64_t sy0, sy1, sx0, sx1;
  g.y.touching(py, sy0, sy1);
  if (sy0 >= sy1) return;
  g.x.touching(px, sx0, sx1);
  roi_align_pixel_weights(g, py, px, sy0, sy1, sx0, sx1, fn);
}

// Whether a RoI's batch index (rois[k, 0], in the geometry dtype) names an image of the
// batch: a whole number in [0, batch_size). NaN is not.
template <typename G>
SEGOPS_HOST_DEVICE bool valid_batch_index(G b, int64_t batch_size) {
  return b >= G(0) && b < static_cast<G>(batch_size) && floor_(b) == b;
}

// The gradient one RoI sends to pixel (py, px) of one channel, given that RoI's output
// gradient grad[pooled_h * pooled_w] for the channel. The CPU kernel (deterministic mode)
// and the deterministic CUDA kernel both sum exactly this, so they agree bit for bit.
template <typename T, typename G, typename A = acc_t<T>>
SEGOPS_HOST_DEVICE A roi_align_grad_at(const T* grad, const RoIAlignGeometry<G>& g, int64_t py,
                                       int64_t px) {
  A acc = A(0);
  roi_align_pixel_weights(g, py, px, [&](int64_t bin, G w) {
    acc += roi_align_grad_term(static_cast<A>(grad[bin]), w, g.count);
  });
  return acc;
}

}  // namespace segops
