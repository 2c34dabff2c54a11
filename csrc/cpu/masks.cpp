// Masks family on the CPU (SPEC §3): assemble_masks, its fused upsampled form, paste_masks.
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

#include "../common/masks.h"
#include "../masks_checks.h"

namespace segops {
namespace {

// The output type's value for an accumulated value v: the value rounded to T, or the
// comparison of that rounded value with the threshold (rounded to T) for bool outputs.
template <typename T, typename A>
struct Emit {
  bool binary;
  bool strict;  // '>' (assemble_masks) or '>=' (paste_masks)
  A thr;
  template <typename O>
  O operator()(A v) const {
    const A r = static_cast<A>(static_cast<T>(v));
    if constexpr (std::is_same_v<O, bool>) {
      return strict ? r > thr : r >= thr;
    } else {
      return static_cast<O>(r);
    }
  }
};

template <typename T, typename A>
Emit<T, A> make_emit(const std::optional<double>& threshold, bool strict) {
  const double t = threshold.value_or(0.0);
  return {threshold.has_value(), strict,
          static_cast<A>(static_cast<T>(static_cast<acc_t<T>>(t)))};
}

// ---- assemble_masks ----

// protos [H, W, K] -> [K, H * W] in the accumulation type, so that the logit loop runs
// along contiguous pixels (each pixel still sums k = 0..K-1 in order, as on CUDA).
template <typename T>
std::vector<acc_t<T>> transpose_protos(const T* protos, int64_t hw, int64_t k) {
  std::vector<acc_t<T>> t(static_cast<size_t>(hw * k));
  at::parallel_for(0, k, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t c = k0; c < k1; ++c)
      for (int64_t p = 0; p < hw; ++p) t[c * hw + p] = static_cast<acc_t<T>>(protos[p * k + c]);
  });
  return t;
}

template <typename T, typename B>
void assemble_kernel(const T* protos, const T* coeffs, const B* boxes, int64_t n, int64_t h,
                     int64_t w, int64_t k, int64_t padding, T* out) {
  using A = acc_t<T>;
  const std::vector<A> pt = transpose_protos(protos, h * w, k);
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
          const A* row = pt.data() + j * h * w + y * w;
          for (int64_t x = rx.begin; x < rx.end; ++x) zr[x] += row[x] * cj;
        }
        T* o = out + (i * h + y) * w;
        for (int64_t x = rx.begin; x < rx.end; ++x) o[x] = static_cast<T>(sigmoid_(zr[x]));
      }
    }
  });
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

at::Tensor assemble_cropped(const at::Tensor& protos, const at::Tensor& coeffs,
                            const at::Tensor& boxes, int64_t padding) {
  const int64_t h = protos.size(0), w = protos.size(1), k = protos.size(2), n = coeffs.size(0);
  at::Tensor out = at::zeros({n, h, w}, protos.options());
  if (out.numel() == 0) return out;
  const at::Tensor p = protos.contiguous(), c = coeffs.contiguous();
  const at::Tensor b = boxes.to(compute_dtype(boxes.scalar_type())).contiguous();
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
  return assemble_cropped(protos, coeffs, boxes, padding);
}

// The output columns [begin, end) whose taps reach source indices [r.begin, r.end): taps
// are monotone in the output index, so the set is an interval.
template <typename A>
IndexRange reaching(const std::vector<LinearTap<A>>& taps, const IndexRange& r) {
  const int64_t n = static_cast<int64_t>(taps.size());
  int64_t b = 0;
  while (b < n && taps[b].i1 < r.begin) ++b;
  int64_t e = b;
  while (e < n && taps[e].i0 < r.end) ++e;
  return {b, e};
}

template <typename T, typename B>
void upsample_kernel(const T* cropped, const B* boxes, int64_t n, int64_t h, int64_t w,
                     int64_t padding, int64_t oh, int64_t ow, const Emit<T, acc_t<T>>& emit,
                     bool* out) {
  using A = acc_t<T>;
  std::vector<LinearTap<A>> ty(oh), tx(ow);
  for (int64_t o = 0; o < oh; ++o) ty[o] = resize_tap<A>(o, h, oh);
  for (int64_t o = 0; o < ow; ++o) tx[o] = resize_tap<A>(o, w, ow);
  std::vector<IndexRange> rows(n), cols(n);  // output rows/columns reaching each crop
  for (int64_t i = 0; i < n; ++i) {
    const B* b = boxes + 4 * i;
    const IndexRange rx = crop_range<B>(b[0], b[2], w, padding);
    const IndexRange ry = crop_range<B>(b[1], b[3], h, padding);
    const bool empty = rx.begin >= rx.end || ry.begin >= ry.end;
    rows[i] = empty ? IndexRange{0, 0} : reaching(ty, ry);
    cols[i] = empty ? IndexRange{0, 0} : reaching(tx, rx);
  }
  const bool bg = emit.template operator()<bool>(A(0));
  at::parallel_for(0, n * oh, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t i = r / oh, y = r % oh;
      bool* o = out + r * ow;
      const IndexRange cx = rows[i].contains(y) ? cols[i] : IndexRange{0, 0};
      for (int64_t x = 0; x < cx.begin; ++x) o[x] = bg;
      const T* plane = cropped + i * h * w;
      const LinearTap<A>& t = ty[y];
      const T* row0 = plane + t.i0 * w;
      const T* row1 = plane + t.i1 * w;
      for (int64_t x = cx.begin; x < cx.end; ++x) {
        const LinearTap<A>& s = tx[x];
        const A v = blend<A>(static_cast<A>(row0[s.i0]), static_cast<A>(row0[s.i1]),
                             static_cast<A>(row1[s.i0]), static_cast<A>(row1[s.i1]), t, s);
        o[x] = emit.template operator()<bool>(v);
      }
      for (int64_t x = cx.end > cx.begin ? cx.end : 0; x < ow; ++x) o[x] = bg;
    }
  });
}

at::Tensor assemble_masks_upsampled_cpu(const at::Tensor& protos, const at::Tensor& coeffs,
                                        const at::Tensor& boxes, int64_t padding, int64_t height,
                                        int64_t width, double threshold) {
  const char* op = "assemble_masks_upsampled";
  check_assemble(op, protos, coeffs, boxes);
  check_nonneg(height, op, "image_size (height)");
  check_nonneg(width, op, "image_size (width)");
  check_threshold(threshold, op);
  const int64_t n = coeffs.size(0), h = protos.size(0), w = protos.size(1);
  at::Tensor out = at::empty({n, height, width}, protos.options().dtype(at::kBool));
  if (out.numel() == 0) return out;
  if (h == 0 || w == 0) {
    // No source pixels: F.interpolate would refuse; every value is the empty crop's 0.
    TORCH_CHECK_VALUE(false, op, ": `protos` must have H, W >= 1 to be resized, got shape ",
                      protos.sizes());
  }
  const at::Tensor cropped = assemble_cropped(protos, coeffs, boxes, padding);
  const at::Tensor b = boxes.to(compute_dtype(boxes.scalar_type())).contiguous();
  dispatch_assemble(protos, b, [&](auto t, auto g) {
    using T = decltype(t);
    using B = decltype(g);
    const auto emit = make_emit<T, acc_t<T>>(threshold, /*strict=*/true);
    upsample_kernel<T, B>(cropped.const_data_ptr<T>(), b.const_data_ptr<B>(), n, h, w, padding,
                          height, width, emit, out.mutable_data_ptr<bool>());
  });
  return out;
}

// ---- paste_masks ----

// Per mask: the output rows and columns whose value may be non-zero and their taps.
template <typename Tap>
struct PastePlan {
  IndexRange rows{0, 0}, cols{0, 0};
  std::vector<Tap> ty, tx;
};

// Pixels whose grid_sample footprint can reach the mask: a superset of
// x + 0.5 in (x0 - cell / 2, x1 + cell / 2), cell = (x1 - x0) / m, clipped to the image.
inline IndexRange detectron2_reach(double b0, double b1, int64_t m, int64_t size) {
  const double half = (b1 - b0) / static_cast<double>(m) * 0.5;
  const double lo = std::floor(b0 - half - 0.5) - 1.0;
  const double hi = std::ceil(b1 + half - 0.5) + 2.0;
  const double s = static_cast<double>(size);
  const int64_t begin = static_cast<int64_t>(std::min(std::max(lo, 0.0), s));
  const int64_t end = static_cast<int64_t>(std::min(std::max(hi, 0.0), s));
  return {begin, std::max(begin, end)};
}

template <typename T, typename A, typename O>
void paste_kernel(const T* masks, const A* boxes, int64_t n, int64_t mh, int64_t mw, int64_t ih,
                  int64_t iw, PasteMode mode, const Emit<T, A>& emit, O* out) {
  const O bg = emit.template operator()<O>(A(0));
  const int64_t plane = ih * iw;
  if (mode == PasteMode::Detectron2) {
    std::vector<PastePlan<GridTap<A>>> plans(n);
    at::parallel_for(0, n, 8, [&](int64_t n0, int64_t n1) {
      for (int64_t i = n0; i < n1; ++i) {
        const A* b = boxes + 4 * i;
        auto& p = plans[i];
        if (!(is_finite(b[0]) && is_finite(b[1]) && is_finite(b[2]) && is_finite(b[3])) ||
            !(b[2] > b[0]) || !(b[3] > b[1]))
          continue;  // empty: every value is 0
        p.cols = detectron2_reach(b[0], b[2], mw, iw);
        p.rows = detectron2_reach(b[1], b[3], mh, ih);
        for (int64_t x = p.cols.begin; x < p.cols.end; ++x)
          p.tx.push_back(grid_tap<A>(x, b[0], b[2], mw));
        for (int64_t y = p.rows.begin; y < p.rows.end; ++y)
          p.ty.push_back(grid_tap<A>(y, b[1], b[3], mh));
      }
    });
    at::parallel_for(0, n * ih, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t i = r / ih, y = r % ih;
        const auto& p = plans[i];
        O* o = out + i * plane + y * iw;
        const IndexRange c = p.rows.contains(y) ? p.cols : IndexRange{0, 0};
        for (int64_t x = 0; x < c.begin; ++x) o[x] = bg;
        if (c.begin < c.end) {
          const auto& ty = p.ty[y - p.rows.begin];
          const T* m = masks + i * mh * mw;
          for (int64_t x = c.begin; x < c.end; ++x)
            o[x] = emit.template operator()<O>(
                grid_sample_zeros<T, A>(m, mh, mw, ty, p.tx[x - c.begin]));
        }
        for (int64_t x = std::max(c.end, c.begin); x < iw; ++x) o[x] = bg;
      }
    });
    return;
  }
  // torchvision: the (m + 2)-cell padded mask resized onto the expanded, truncated box.
  const A scale = static_cast<A>(static_cast<double>(mw + 2) / static_cast<double>(mw));
  std::vector<PastePlan<LinearTap<A>>> plans(n);
  std::vector<PasteBox> pboxes(n);
  at::parallel_for(0, n, 8, [&](int64_t n0, int64_t n1) {
    for (int64_t i = n0; i < n1; ++i) {
      const A* b = boxes + 4 * i;
      auto& p = plans[i];
      if (!(is_finite(b[0]) && is_finite(b[1]) && is_finite(b[2]) && is_finite(b[3]))) continue;
      const PasteBox pb = torchvision_paste_box<A>(b[0], b[1], b[2], b[3], scale);
      pboxes[i] = pb;
      p.cols = {std::max<int64_t>(pb.x0, 0), std::min<int64_t>(pb.x1 + 1, iw)};
      p.rows = {std::max<int64_t>(pb.y0, 0), std::min<int64_t>(pb.y1 + 1, ih)};
      if (p.cols.end <= p.cols.begin || p.rows.end <= p.rows.begin) {
        p.cols = p.rows = {0, 0};
        continue;
      }
      for (int64_t x = p.cols.begin; x < p.cols.end; ++x)
        p.tx.push_back(resize_tap<A>(x - pb.x0, mw + 2, pb.w));
      for (int64_t y = p.rows.begin; y < p.rows.end; ++y)
        p.ty.push_back(resize_tap<A>(y - pb.y0, mh + 2, pb.h));
    }
  });
  at::parallel_for(0, n * ih, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t i = r / ih, y = r % ih;
      const auto& p = plans[i];
      O* o = out + i * plane + y * iw;
      const IndexRange c = p.rows.contains(y) ? p.cols : IndexRange{0, 0};
      for (int64_t x = 0; x < c.begin; ++x) o[x] = bg;
      if (c.begin < c.end) {
        const LinearTap<A>& t = p.ty[y - p.rows.begin];
        const T* m = masks + i * mh * mw;
        for (int64_t x = c.begin; x < c.end; ++x) {
          const LinearTap<A>& s = p.tx[x - c.begin];
          const A v = blend<A>(padded_at<T, A>(m, mh, mw, t.i0, s.i0),
                               padded_at<T, A>(m, mh, mw, t.i0, s.i1),
                               padded_at<T, A>(m, mh, mw, t.i1, s.i0),
                               padded_at<T, A>(m, mh, mw, t.i1, s.i1), t, s);
          o[x] = emit.template operator()<O>(v);
        }
      }
      for (int64_t x = std::max(c.end, c.begin); x < iw; ++x) o[x] = bg;
    }
  });
}

at::Tensor paste_masks_cpu(const at::Tensor& masks, const at::Tensor& boxes, int64_t height,
                           int64_t width, std::optional<double> threshold,
                           c10::string_view mode_name) {
  const PasteMode mode =
      check_paste("paste_masks", masks, boxes, height, width, threshold, mode_name);
  const int64_t n = masks.size(0), mh = masks.size(1), mw = masks.size(2);
  at::Tensor out = at::empty({n, height, width},
                             threshold ? masks.options().dtype(at::kBool) : masks.options());
  if (out.numel() == 0) return out;
  const at::Tensor m = masks.contiguous();
  const at::Tensor b = boxes.to(paste_geometry_dtype(masks, boxes)).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, m.scalar_type(), "paste_masks", [&] {
    using T = scalar_t;
    auto run = [&](auto geometry) {
      using A = decltype(geometry);
      const auto emit = make_emit<T, A>(threshold, /*strict=*/false);
      if (threshold)
        paste_kernel<T, A, bool>(m.const_data_ptr<T>(), b.const_data_ptr<A>(), n, mh, mw,
                                 height, width, mode, emit, out.mutable_data_ptr<bool>());
      else
        paste_kernel<T, A, T>(m.const_data_ptr<T>(), b.const_data_ptr<A>(), n, mh, mw, height,
                              width, mode, emit, out.mutable_data_ptr<T>());
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
