// Masks family on the CPU (docs/ops/masks.md): assemble_masks, its fused upsampled form, paste_masks.
//
// Work is bounded by the boxes, not the image: assembly computes logits only inside each
// crop; the upsampled form and paste compute only the output pixels whose bilinear
// footprint can reach the (cropped) mask and fill every other pixel with the value 0 maps
// to. Every computed value goes through csrc/common/masks.h, as on CUDA.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "common/masks.h"
#include "masks/checks.h"
#include "core/huge_pages.h"

namespace segops {
namespace {

// ---- assemble_masks ----

// protos [H, W, K] -> [H][K][W] in the accumulation type: the logit loop then runs along
// contiguous pixels of one row (each pixel still sums k = 0..K-1 in order, as on CUDA),
// and one row's K x W block stays in L1 across the masks that cross it.
template <typename T>
std::vector<acc_t<T>> transpose_protos(const T* protos, int64_t h, int64_t w, int64_t k) {
  std::vector<acc_t<T>> t(static_cast<size_t>(h * w * k));
  at::parallel_for(0, h, 4, [&](int64_t y0, int64_t y1) {
    for (int64_t y = y0; y < y1; ++y)
      for (int64_t x = 0; x < w; ++x)
        for (int64_t c = 0; c < k; ++c)
          t[(y * k + c) * w + x] = static_cast<acc_t<T>>(protos[(y * w + x) * k + c]);
  });
  return t;
}

template <typename T, typename B>
void assemble_kernel(const T* protos, const T* coeffs, const B* boxes, int64_t n, int64_t h,
                     int64_t w, int64_t k, int64_t padding, T* out) {
  using A = acc_t<T>;
  const std::vector<A> pt = transpose_protos(protos, h, w, k);
  at::parallel_for(0, n, 1, [&](int64_t n0, int64_t n1) {
    std::vector<A> z(static_cast<size_t>(w));
    for (int64_t i = n0; i < n1; ++i) {
      const B* b = boxes + 4 * i;
      const IndexRange rx = crop_range<B>(b[0], b[2], w, padding);
      const IndexRange ry = crop_range<B>(b[1], b[3], h, padding);
      if (rx.begin >= rx.end) continue;
      const T* c = coeffs + i * k;
      for (int64_t y = ry.begin; y < ry.end; ++y) {
        A* zr = z.data();
        for (int64_t x = rx.begin; x < rx.end; ++x) zr[x] = A(0);
        for (int64_t j = 0; j < k; ++j) {
          const A cj = static_cast<A>(c[j]);
          const A* row = pt.data() + (y * k + j) * w;
          for (int64_t x = rx.begin; x < rx.end; ++x) zr[x] += row[x] * cj;
        }
        T* o = out + (i * h + y) * w;
        for (int64_t x = rx.begin; x < rx.end; ++x) o[x] = static_cast<T>(sigmoid_(zr[x]));
      }
    }
  });
}

// One output plane [oh, ow] of a bilinear blend, computed separably. Values may be
// non-zero only in rows x cols; there ty/tx (indexed from the ranges' begins) give the
// taps and at(i, j) the source (0 outside). Each pixel is
//   (at(i0y, i0x) * l0x + at(i0y, i1x) * l1x) * l0y + (at(i1y, i0x) * l0x + ...) * l1y,
// blend()'s order: the row terms are computed once per source row and reused by every
// output row that reads it. Every other pixel gets `bg`, the value 0 maps to.
template <typename A, typename O, typename At, typename Emit>
void render_plane(O* out, int64_t oh, int64_t ow, IndexRange rows, IndexRange cols,
                  const LinearTap<A>* ty, const LinearTap<A>* tx, At&& at, O bg, Emit emit,
                  std::vector<A>& hbuf) {
  if (rows.begin >= rows.end || cols.begin >= cols.end) {
    std::fill(out, out + oh * ow, bg);
    return;
  }
  const int64_t nr = rows.end - rows.begin, nc = cols.end - cols.begin;
  int64_t s0 = ty[0].i0, s1 = ty[0].i1;
  for (int64_t r = 0; r < nr; ++r) {
    s0 = std::min(s0, ty[r].i0);
    s1 = std::max(s1, ty[r].i1);
  }
  hbuf.resize(static_cast<size_t>((s1 - s0 + 1) * nc));
  for (int64_t s = s0; s <= s1; ++s) {
    A* hb = hbuf.data() + (s - s0) * nc;
    for (int64_t j = 0; j < nc; ++j)
      hb[j] = at(s, tx[j].i0) * tx[j].l0 + at(s, tx[j].i1) * tx[j].l1;
  }
  std::fill(out, out + rows.begin * ow, bg);
  for (int64_t r = 0; r < nr; ++r) {
    O* o = out + (rows.begin + r) * ow;
    std::fill(o, o + cols.begin, bg);
    const A* h0 = hbuf.data() + (ty[r].i0 - s0) * nc;
    const A* h1 = hbuf.data() + (ty[r].i1 - s0) * nc;
    const A l0 = ty[r].l0, l1 = ty[r].l1;
    O* oc = o + cols.begin;
    for (int64_t j = 0; j < nc; ++j) oc[j] = emit(h0[j] * l0 + h1[j] * l1);
    std::fill(o + cols.end, o + ow, bg);
  }
  std::fill(out + rows.end * ow, out + oh * ow, bg);
}

// Dispatches T (protos) and B (box geometry: float64 boxes stay float64, else float32).
template <typename Fn>
void dispatch_assemble(const at::Tensor& protos, const at::Tensor& boxes, Fn&& fn) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, protos.scalar_type(),
                                  "assemble_masks", [&] {
    if (boxes.scalar_type() == at::kDouble)
      fn(scalar_t{}, double{});
    else
      fn(scalar_t{}, float{});
  });
}

// Boxes in their geometry dtype (float64 boxes stay float64, else float32), contiguous.
at::Tensor geometry_boxes(const at::Tensor& boxes) {
  return boxes.to(compute_dtype(boxes.scalar_type())).contiguous();
}

// b: geometry_boxes(boxes).
at::Tensor assemble_cropped(const at::Tensor& protos, const at::Tensor& coeffs,
                            const at::Tensor& b, int64_t padding) {
  const int64_t h = protos.size(0), w = protos.size(1), k = protos.size(2), n = coeffs.size(0);
  at::Tensor out = empty_output({n, h, w}, protos.options()).zero_();
  if (out.numel() == 0) return out;
  const at::Tensor p = protos.contiguous(), c = coeffs.contiguous();
  dispatch_assemble(p, b, [&](auto t, auto g) {
    using T = decltype(t);
    using B = decltype(g);
    assemble_kernel<T, B>(p.const_data_ptr<T>(), c.const_data_ptr<T>(), b.const_data_ptr<B>(),
                          n, h, w, k, padding, out.mutable_data_ptr<T>());
  });
  return out;
}

at::Tensor assemble_masks_cpu(const at::Tensor& protos, const at::Tensor& coeffs,
                              const at::Tensor& boxes, int64_t padding) {
  check_assemble("assemble_masks", protos, coeffs, boxes);
  return assemble_cropped(protos, coeffs, geometry_boxes(boxes), padding);
}

template <typename T, typename B>
void upsample_kernel(const T* cropped, const B* boxes, int64_t n, int64_t h, int64_t w,
                     int64_t padding, int64_t oh, int64_t ow, double thr_rounded, bool* out) {
  using A = acc_t<T>;
  std::vector<LinearTap<A>> ty(oh), tx(ow);
  for (int64_t o = 0; o < oh; ++o) ty[o] = resize_tap<A>(o, h, oh);
  for (int64_t o = 0; o < ow; ++o) tx[o] = resize_tap<A>(o, w, ow);
  const A thr = static_cast<A>(thr_rounded);
  const auto to_bool = [thr](A v) -> bool { return static_cast<A>(static_cast<T>(v)) > thr; };
  const bool bg = to_bool(A(0));
  at::parallel_for(0, n, 1, [&](int64_t n0, int64_t n1) {
    std::vector<A> hbuf;
    for (int64_t i = n0; i < n1; ++i) {
      // Only output pixels reading a kept proto pixel can differ from bg.
      const B* b = boxes + 4 * i;
      const IndexRange rx = crop_range<B>(b[0], b[2], w, padding);
      const IndexRange ry = crop_range<B>(b[1], b[3], h, padding);
      const bool empty = rx.begin >= rx.end || ry.begin >= ry.end;
      const IndexRange rows = empty ? IndexRange{0, 0} : resize_reach<A>(ry, h, oh);
      const IndexRange cols = empty ? IndexRange{0, 0} : resize_reach<A>(rx, w, ow);
      const T* plane = cropped + i * h * w;
      const auto at = [&](int64_t r, int64_t c) { return static_cast<A>(plane[r * w + c]); };
      render_plane<A, bool>(out + i * oh * ow, oh, ow, rows, cols, ty.data() + rows.begin,
                            tx.data() + cols.begin, at, bg, to_bool, hbuf);
    }
  });
}

at::Tensor assemble_masks_upsampled_cpu(const at::Tensor& protos, const at::Tensor& coeffs,
                                        const at::Tensor& boxes, int64_t padding, int64_t height,
                                        int64_t width, double threshold) {
  const char* op = "assemble_masks_upsampled";
  check_assemble_upsampled(op, protos, coeffs, boxes, height, width, threshold);
  const int64_t n = coeffs.size(0), h = protos.size(0), w = protos.size(1);
  at::Tensor out = empty_output({n, height, width}, protos.options().dtype(at::kBool));
  if (out.numel() == 0) return out;
  const at::Tensor b = geometry_boxes(boxes);
  const at::Tensor cropped = assemble_cropped(protos, coeffs, b, padding);
  dispatch_assemble(protos, b, [&](auto t, auto g) {
    using T = decltype(t);
    using B = decltype(g);
    upsample_kernel<T, B>(cropped.const_data_ptr<T>(), b.const_data_ptr<B>(), n, h, w, padding,
                          height, width, rounded_threshold(threshold, protos.scalar_type()),
                          out.mutable_data_ptr<bool>());
  });
  return out;
}

// ---- paste_masks ----

// to_out maps an accumulated value to the output element (bool or T).
template <typename T, typename A, typename O, typename ToOut>
void paste_kernel(const T* masks, const A* boxes, int64_t n, int64_t mh, int64_t mw, int64_t ih,
                  int64_t iw, PasteMode mode, ToOut to_out, O* out) {
  const O bg = to_out(A(0));
  at::parallel_for(0, n, 1, [&](int64_t n0, int64_t n1) {
    std::vector<A> hbuf;
    std::vector<LinearTap<A>> ty, tx;
    for (int64_t i = n0; i < n1; ++i) {
      const T* m = masks + i * mh * mw;
      const PasteGeometry<A> g =
          paste_geometry<A>(boxes + 4 * i, mode == PasteMode::Detectron2, mh, mw, ih, iw);
      IndexRange rows{0, 0}, cols{0, 0};
      ty.clear();
      tx.clear();
      if (!g.empty()) {
        rows = g.y.reach;
        cols = g.x.reach;
        for (int64_t x = cols.begin; x < cols.end; ++x) tx.push_back(g.x.tap(x));
        for (int64_t y = rows.begin; y < rows.end; ++y) ty.push_back(g.y.tap(y));
      }
      const auto at = [&](int64_t r, int64_t c) { return mask_at<T, A>(m, mh, mw, r, c); };
      render_plane<A, O>(out + i * ih * iw, ih, iw, rows, cols, ty.data(), tx.data(), at, bg,
                         to_out, hbuf);
    }
  });
}

at::Tensor paste_masks_cpu(const at::Tensor& masks, const at::Tensor& boxes, int64_t height,
                           int64_t width, std::optional<double> threshold,
                           c10::string_view mode_name) {
  const PasteMode mode =
      check_paste("paste_masks", masks, boxes, height, width, threshold, mode_name);
  const int64_t n = masks.size(0), mh = masks.size(1), mw = masks.size(2);
  at::Tensor out = empty_output({n, height, width},
                                threshold ? masks.options().dtype(at::kBool) : masks.options());
  if (out.numel() == 0) return out;
  const at::Tensor m = masks.contiguous();
  const at::Tensor b = boxes.to(paste_geometry_dtype(masks, boxes)).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, m.scalar_type(), "paste_masks", [&] {
    using T = scalar_t;
    auto run = [&](auto geometry) {
      using A = decltype(geometry);
      if (threshold) {
        const A thr = static_cast<A>(rounded_threshold(*threshold, m.scalar_type()));
        const auto to_bool = [thr](A v) -> bool {
          return static_cast<A>(static_cast<T>(v)) >= thr;
        };
        paste_kernel<T, A, bool>(m.const_data_ptr<T>(), b.const_data_ptr<A>(), n, mh, mw,
                                 height, width, mode, to_bool, out.mutable_data_ptr<bool>());
      } else {
        const auto to_value = [](A v) -> T { return static_cast<T>(v); };
        paste_kernel<T, A, T>(m.const_data_ptr<T>(), b.const_data_ptr<A>(), n, mh, mw, height,
                              width, mode, to_value, out.mutable_data_ptr<T>());
      }
    };
    if (b.scalar_type() == at::kDouble)
      run(double{});
    else
      run(float{});
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CPU, m) {
  m.impl("assemble_masks", &assemble_masks_cpu);
  m.impl("assemble_masks_upsampled", &assemble_masks_upsampled_cpu);
  m.impl("paste_masks", &paste_masks_cpu);
}

}  // namespace segops
