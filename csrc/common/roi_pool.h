// RoIPool per-element math (torchvision semantics), shared by CPU and CUDA. Torch-free.
#pragma once

#include <float.h>

#include "macros.h"

namespace segops {

template <typename G>
struct RoIPoolGeometry {
  int64_t batch;       // -1 when the RoI is empty (non-finite box or bad batch index)
  int64_t start_h, start_w;
  G bin_h, bin_w;
  int64_t height, width;
  int64_t pooled_h, pooled_w;

  // Bin `p`'s pixel range [b, e) along one axis, clipped to [0, size).
  SEGOPS_HOST_DEVICE void bin_range(int64_t p, G bin, int64_t start, int64_t size, int64_t& b,
                                    int64_t& e) const {
    b = static_cast<int64_t>(floor_(static_cast<G>(p) * bin));
    e = static_cast<int64_t>(ceil_(static_cast<G>(p + 1) * bin));
    b = min_(max_(b + start, int64_t(0)), size);
    e = min_(max_(e + start, int64_t(0)), size);
  }
  SEGOPS_HOST_DEVICE void rows(int64_t ph, int64_t& b, int64_t& e) const {
    bin_range(ph, bin_h, start_h, height, b, e);
  }
  SEGOPS_HOST_DEVICE void cols(int64_t pw, int64_t& b, int64_t& e) const {
    bin_range(pw, bin_w, start_w, width, b, e);
  }

  // Bins [b, e) along an axis whose pixel range can contain pixel `p`.
  SEGOPS_HOST_DEVICE void bins_containing(int64_t p, G bin, int64_t start, int64_t pooled,
                                          int64_t& b, int64_t& e) const {
    if (!(bin > G(0))) {
      b = 0;
      e = pooled;
      return;
    }
    // Bin q covers [floor(q*bin), ceil((q+1)*bin)) relative to start, so it can contain
    // p only if (p-start)/bin - 1 < q < (p-start+1)/bin; widen by one and let the caller's
    // exact test decide.
    const G rel = static_cast<G>(p - start);
    b = max_(static_cast<int64_t>(floor_(rel / bin)) - 2, int64_t(0));
    e = min_(static_cast<int64_t>(floor_((rel + G(1)) / bin)) + 2, pooled);
    if (b > e) b = e;
  }
};

// Pixel coordinates are rounded after scaling; non-finite or absurd values make the RoI empty.
template <typename G, typename R>
SEGOPS_HOST_DEVICE RoIPoolGeometry<G> roi_pool_geometry(const R* roi, G spatial_scale,
                                                        int64_t pooled_h, int64_t pooled_w,
                                                        int64_t batch_size, int64_t height,
                                                        int64_t width) {
  RoIPoolGeometry<G> g;
  g.height = height;
  g.width = width;
  g.pooled_h = pooled_h;
  g.pooled_w = pooled_w;
  const G b = static_cast<G>(roi[0]);
  const G x1 = round_(static_cast<G>(roi[1]) * spatial_scale);
  const G y1 = round_(static_cast<G>(roi[2]) * spatial_scale);
  const G x2 = round_(static_cast<G>(roi[3]) * spatial_scale);
  const G y2 = round_(static_cast<G>(roi[4]) * spatial_scale);
  const G limit = G(1 << 30);  // beyond any feature map; keeps int64 arithmetic exact
  const bool ok = b >= G(0) && b < static_cast<G>(batch_size) && x1 >= -limit && x1 <= limit &&
                  y1 >= -limit && y1 <= limit && x2 >= -limit && x2 <= limit && y2 >= -limit &&
                  y2 <= limit;
  g.batch = ok ? static_cast<int64_t>(b) : -1;
  if (!ok) {
    g.start_h = g.start_w = 0;
    g.bin_h = g.bin_w = G(0);
    return g;
  }
  g.start_w = static_cast<int64_t>(x1);
  g.start_h = static_cast<int64_t>(y1);
  const int64_t roi_w = max_(static_cast<int64_t>(x2) - g.start_w + 1, int64_t(1));
  const int64_t roi_h = max_(static_cast<int64_t>(y2) - g.start_h + 1, int64_t(1));
  g.bin_h = static_cast<G>(roi_h) / static_cast<G>(pooled_h);
  g.bin_w = static_cast<G>(roi_w) / static_cast<G>(pooled_w);
  return g;
}

// The max over rows [h0, h1) and columns [w0, w1) of one plane, scanned in raster order:
// the first pixel strictly above everything before it wins (NaN never does); `argmax` gets
// its index h * width + w, or -1 when no pixel exceeds -FLT_MAX (an empty window gives 0
// and -1; a non-empty one starts from -FLT_MAX, as torchvision).
template <typename T, typename A = acc_t<T>>
SEGOPS_HOST_DEVICE A roi_pool_window_max(const T* plane, int64_t width, int64_t h0, int64_t h1,
                                         int64_t w0, int64_t w1, int64_t& argmax) {
  int64_t arg = -1;
  if (h1 <= h0 || w1 <= w0) {
    argmax = arg;
    return A(0);
  }
  A best = static_cast<A>(-FLT_MAX);
  for (int64_t h = h0; h < h1; ++h) {
    const T* row = plane + h * width;
    for (int64_t w = w0; w < w1; ++w) {
      // No branch on the data (a mispredicted one per pixel costs more than the compare):
      // the index is selected by a mask, and `above ? v : best` compiles to a max
      // instruction that keeps `best` for NaN and for ties, as the comparison does.
      const A v = static_cast<A>(row[w]);
      const bool above = v > best;
      const int64_t take = -static_cast<int64_t>(above);
      arg = (arg & ~take) | ((h * width + w) & take);
      best = above ? v : best;
    }
  }
  argmax = arg;
  return best;
}

// Forward: max over bin (ph, pw) of one plane (roi_pool_window_max over the bin's pixels).
template <typename T, typename G, typename A = acc_t<T>>
SEGOPS_HOST_DEVICE A roi_pool_bin(const T* plane, const RoIPoolGeometry<G>& g, int64_t ph,
                                  int64_t pw, int64_t& argmax) {
  argmax = -1;
  if (g.batch < 0) return A(0);
  int64_t h0, h1, w0, w1;
  g.rows(ph, h0, h1);
  g.cols(pw, w0, w1);
  return roi_pool_window_max<T, A>(plane, g.width, h0, h1, w0, w1, argmax);
}

// Gather form of the backward for one RoI and channel: the gradient that reaches pixel
// (py, px) through the bins whose argmax is that pixel, bins in raster order. [b0, b1) and
// [c0, c1) are the bins whose rows / columns can contain the pixel (rows_containing,
// cols_containing): they depend on the row or the column alone.
template <typename T, typename G, typename A = acc_t<T>>
SEGOPS_HOST_DEVICE A roi_pool_grad_at(const T* grad, const int64_t* argmax,
                                      const RoIPoolGeometry<G>& g, int64_t py, int64_t px,
                                      int64_t b0, int64_t b1, int64_t c0, int64_t c1) {
  A acc = A(0);
  if (g.batch < 0) return acc;
  const int64_t target = py * g.width + px;
  for (int64_t ph = b0; ph < b1; ++ph) {
    for (int64_t pw = c0; pw < c1; ++pw) {
      const int64_t k = ph * g.pooled_w + pw;
      if (argmax[k] == target) acc += static_cast<A>(grad[k]);
    }
  }
  return acc;
}

template <typename G>
SEGOPS_HOST_DEVICE void rows_containing(const RoIPoolGeometry<G>& g, int64_t py, int64_t& b,
                                        int64_t& e) {
  g.bins_containing(py, g.bin_h, g.start_h, g.pooled_h, b, e);
}
template <typename G>
SEGOPS_HOST_DEVICE void cols_containing(const RoIPoolGeometry<G>& g, int64_t px, int64_t& b,
                                        int64_t& e) {
  g.bins_containing(px, g.bin_w, g.start_w, g.pooled_w, b, e);
}

template <typename T, typename G, typename A = acc_t<T>>
SEGOPS_HOST_DEVICE A roi_pool_grad_at(const T* grad, const int64_t* argmax,
                                      const RoIPoolGeometry<G>& g, int64_t py, int64_t px) {
  if (g.batch < 0) return A(0);
  int64_t b0, b1, c0, c1;
  rows_containing(g, py, b0, b1);
  cols_containing(g, px, c0, c1);
  return roi_pool_grad_at<T, G, A>(grad, argmax, g, py, px, b0, b1, c0, c1);
}

// Pixels [b, e) along each axis that any bin of the RoI can cover.
template <typename G>
SEGOPS_HOST_DEVICE void roi_pool_footprint(const RoIPoolGeometry<G>& g, int64_t& y0,
                                           int64_t& y1, int64_t& x0, int64_t& x1) {
  if (g.batch < 0 || g.pooled_h <= 0 || g.pooled_w <= 0) {
    y0 = y1 = x0 = x1 = 0;
    return;
  }
  int64_t e;
  g.rows(0, y0, e);
  g.rows(g.pooled_h - 1, e, y1);
  g.cols(0, x0, e);
  g.cols(g.pooled_w - 1, e, x1);
}

}  // namespace segops
