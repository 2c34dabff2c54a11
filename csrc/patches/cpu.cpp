// BPR patches on the CPU (docs/ops/patches.md): boundary_patches, crop_patches, reassemble_patches.
//
// Work is bounded per instance by its bounding box (extraction) or by the union of its
// patches (reassembly), not by the image. Extraction visits candidates by level (score)
// from 4 down to 1 and in raster order within a level, which is the stable descending
// order of the spec, and suppresses with a bitmap: a kept patch marks, row by row, the
// interval of centre offsets it suppresses (IoU depends only on the offset).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/zeros.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <vector>

#include "common/masks.h"
#include "common/patches.h"
#include "common/roi_align.h"
#include "patches/checks.h"
#include "core/huge_pages.h"

namespace segops {
namespace {

struct Kept {
  int64_t x, y;
  int level;
};

// Bounding box [x0, x1) x [y0, y1) of a mask; empty (x0 >= x1) if it has no pixel.
struct Bounds {
  int64_t x0, y0, x1, y1;
};

Bounds mask_bounds(const bool* m, int64_t h, int64_t w) {
  Bounds b{w, h, 0, 0};
  for (int64_t y = 0; y < h; ++y) {
    const bool* row = m + y * w;
    const void* first = std::memchr(row, 1, static_cast<size_t>(w));
    if (first == nullptr) continue;
    int64_t last = w - 1;
    while (!row[last]) --last;
    b.x0 = std::min(b.x0, static_cast<int64_t>(static_cast<const bool*>(first) - row));
    b.x1 = std::max(b.x1, last + 1);
    b.y0 = std::min(b.y0, y);
    b.y1 = y + 1;
  }
  return b;
}

// One instance's kept patch centres, in NMS order. Work and memory are bounded by the
// instance's bounding box (grown by one pixel), whatever the patch size.
std::vector<Kept> instance_patches(const bool* m, int64_t h, int64_t w, int64_t p,
                                   double threshold) {
  std::vector<Kept> kept;
  const Bounds b = mask_bounds(m, h, w);
  if (b.x0 >= b.x1) return kept;
  // Candidates lie within the box grown by one pixel.
  const int64_t rx0 = std::max<int64_t>(b.x0 - 1, 0), rx1 = std::min<int64_t>(b.x1 + 1, w);
  const int64_t ry0 = std::max<int64_t>(b.y0 - 1, 0), ry1 = std::min<int64_t>(b.y1 + 1, h);
  const int64_t rw = rx1 - rx0, rh = ry1 - ry0;
  // 3x3 sums, separably: horizontal sums of rows ry0 - 1 .. ry1 (zero outside the image).
  std::vector<int> hsum((rh + 2) * rw, 0);
  for (int64_t r = 0; r < rh + 2; ++r) {
    const int64_t y = ry0 - 1 + r;
    if (y < 0 || y >= h) continue;
    const bool* row = m + y * w;
    for (int64_t c = 0; c < rw; ++c) {
      const int64_t x = rx0 + c;
      hsum[r * rw + c] = (x > 0 && row[x - 1]) + row[x] + (x + 1 < w && row[x + 1]);
    }
  }
  std::vector<int64_t> by_level[5];
  for (int64_t r = 0; r < rh; ++r)
    for (int64_t c = 0; c < rw; ++c) {
      const int s = hsum[r * rw + c] + hsum[(r + 1) * rw + c] + hsum[(r + 2) * rw + c];
      const int level = boundary_level(s);
      if (level > 0) by_level[level].push_back(r * rw + c);
    }
  // Suppressed column offsets per row offset |dy| < min(p, rh), clipped to the region.
  std::vector<int64_t> half_width(static_cast<size_t>(std::min(p, rh)));
  for (int64_t d = 0; d < static_cast<int64_t>(half_width.size()); ++d)
    half_width[d] = suppress_half_width(d, p, threshold, rw);
  std::vector<uint8_t> suppressed(rw * rh, 0);
  const bool suppress_all = 0.0 > threshold;  // IoU 0 > threshold: every pair overlaps
  for (int level = 4; level >= 1; --level) {
    for (const int64_t cand : by_level[level]) {
      if (suppressed[cand]) continue;
      const int64_t r = cand / rw, c = cand % rw;
      kept.push_back({rx0 + c, ry0 + r, level});
      if (suppress_all) return kept;
      const int64_t rr0 = std::max(r - (p - 1), int64_t(0));
      const int64_t rr1 = std::min(r + (p - 1), rh - 1);
      for (int64_t rr = rr0; rr <= rr1; ++rr) {
        const int64_t hw = half_width[rr < r ? r - rr : rr - r];
        if (hw < 0) continue;
        const int64_t c0 = std::max<int64_t>(c - hw, 0), c1 = std::min<int64_t>(c + hw + 1, rw);
        if (c0 < c1) std::memset(suppressed.data() + rr * rw + c0, 1, c1 - c0);
      }
    }
  }
  return kept;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> boundary_patches_cpu(
    const at::Tensor& masks, int64_t patch_size, double iou_threshold, int64_t max_out) {
  check_boundary_patches(masks, patch_size, iou_threshold, max_out);
  const int64_t n = masks.size(0), h = masks.size(1), w = masks.size(2), p = patch_size;
  const at::Tensor m = masks.contiguous();
  std::vector<std::vector<Kept>> kept(n);
  if (h > 0 && w > 0) {
    const bool* data = m.const_data_ptr<bool>();
    at::parallel_for(0, n, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i)
        kept[i] = instance_patches(data + i * h * w, h, w, p, iou_threshold);
    });
  }
  int64_t total = 0;
  for (const auto& k : kept) total += static_cast<int64_t>(k.size());
  const int64_t rows = max_out >= 0 ? max_out : total, count = std::min(total, rows);
  const auto opts = masks.options();
  at::Tensor boxes = at::zeros({rows, 4}, opts.dtype(at::kLong));
  at::Tensor index = at::full({rows}, -1, opts.dtype(at::kLong));
  at::Tensor scores = at::zeros({rows}, opts.dtype(at::kFloat));
  int64_t* bx = boxes.mutable_data_ptr<int64_t>();
  int64_t* ix = index.mutable_data_ptr<int64_t>();
  float* sc = scores.mutable_data_ptr<float>();
  int64_t k = 0;
  for (int64_t i = 0; i < n && k < count; ++i)
    for (const Kept& c : kept[i]) {
      if (k == count) break;
      const Span sx = shifted_patch(c.x, p, w), sy = shifted_patch(c.y, p, h);
      bx[4 * k] = sx.lo;
      bx[4 * k + 1] = sy.lo;
      bx[4 * k + 2] = sx.hi;
      bx[4 * k + 3] = sy.hi;
      ix[k] = i;
      sc[k] = boundary_score(c.level);
      ++k;
    }
  return {boxes, index, scores, at::scalar_tensor(count, opts.dtype(at::kLong))};
}

// ---- crop_patches ----

std::tuple<at::Tensor, at::Tensor> crop_patches_cpu(const at::Tensor& images,
                                                    const at::Tensor& masks,
                                                    const at::Tensor& boxes,
                                                    const at::Tensor& instance_index,
                                                    const at::Tensor& batch_index, int64_t out_h,
                                                    int64_t out_w) {
  check_crop_patches(images, masks, boxes, instance_index, batch_index, out_h, out_w,
                     &check_index_range);
  const int64_t P = boxes.size(0), B = images.size(0), C = images.size(1), H = images.size(2),
                W = images.size(3);
  at::Tensor img = empty_output({P, C, out_h, out_w}, images.options());  // fully written
  at::Tensor msk = empty_output({P, out_h, out_w}, masks.options()).zero_();
  if (P == 0 || out_h == 0 || out_w == 0) return {img, msk};
  const at::Tensor x = images.contiguous(), m = masks.contiguous(), b = boxes.contiguous();
  const at::Tensor ii = instance_index.contiguous(), bi = batch_index.contiguous();
  const int64_t* box = b.const_data_ptr<int64_t>();
  const int64_t* inst = ii.const_data_ptr<int64_t>();
  const int64_t* batch = bi.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "crop_patches", [&] {
    using T = scalar_t;
    using G = acc_t<T>;
    const T* src = x.const_data_ptr<T>();
    T* dst = img.mutable_data_ptr<T>();
    bool* mdst = msk.mutable_data_ptr<bool>();
    const bool* msrc = m.const_data_ptr<bool>();
    at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
      std::vector<Interp1D<G>> yi(out_h), xi(out_w);
      std::vector<int64_t> mx(out_w);
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t* bb = box + 4 * p;
        const int64_t i = inst[p];
        const G roi[5] = {static_cast<G>(batch[i]), static_cast<G>(bb[0]), static_cast<G>(bb[1]),
                          static_cast<G>(bb[2]), static_cast<G>(bb[3])};
        const auto g = roi_align_geometry<G>(roi, G(1), out_h, out_w, 1, true, B, H, W);
        // One sample per bin (sample s of an axis is bin s): its interpolations, once per
        // patch. An empty geometry has no samples and never reads them.
        for (int64_t s = 0; s < out_h && !g.empty; ++s) yi[s] = g.y.interp(g.y.pos(s));
        for (int64_t s = 0; s < out_w && !g.empty; ++s) xi[s] = g.x.interp(g.x.pos(s));
        const auto y_at = [&](int64_t s) { return yi[s]; };
        const auto x_at = [&](int64_t s) { return xi[s]; };
        for (int64_t c = 0; c < C; ++c) {
          const T* plane = g.empty ? src : src + (g.batch * C + c) * H * W;
          T* o = dst + (p * C + c) * out_h * out_w;
          for (int64_t ph = 0; ph < out_h; ++ph)
            for (int64_t pw = 0; pw < out_w; ++pw)
              o[ph * out_w + pw] =
                  static_cast<T>(roi_align_bin<T, G, acc_t<T>>(plane, g, ph, pw, y_at, x_at));
        }
        const uint64_t bw = box_extent(bb[0], bb[2]), bh = box_extent(bb[1], bb[3]);
        if (bw == 0 || bh == 0) continue;  // an empty box: an all-False mask patch
        const bool* mi = msrc + i * H * W;
        bool* mo = mdst + p * out_h * out_w;
        for (int64_t pw = 0; pw < out_w; ++pw) mx[pw] = box_coord(bb[0], nearest_index(pw, bw, out_w));
        for (int64_t ph = 0; ph < out_h; ++ph) {
          const int64_t y = box_coord(bb[1], nearest_index(ph, bh, out_h));
          if (y < 0 || y >= H) continue;
          for (int64_t pw = 0; pw < out_w; ++pw)
            mo[ph * out_w + pw] = mx[pw] >= 0 && mx[pw] < W && mi[y * W + mx[pw]];
        }
      }
    });
  });
  return {img, msk};
}

// ---- reassemble_patches ----

std::vector<std::vector<int64_t>> patches_by_instance(const int64_t* inst, int64_t p,
                                                      int64_t n) {
  std::vector<std::vector<int64_t>> lists(n);
  for (int64_t k = 0; k < p; ++k) lists[inst[k]].push_back(k);
  return lists;
}

at::Tensor reassemble_patches_cpu(const at::Tensor& masks, const at::Tensor& patch_probs,
                                  const at::Tensor& boxes, const at::Tensor& instance_index,
                                  double threshold) {
  check_reassemble_patches(masks, patch_probs, boxes, instance_index, threshold,
                           &check_index_range);
  at::Tensor out = empty_output(masks.sizes(), masks.options()).copy_(masks);
  const int64_t n = masks.size(0), H = masks.size(1), W = masks.size(2), P = boxes.size(0);
  const int64_t ph = patch_probs.size(1), pw = patch_probs.size(2);
  if (P == 0 || H == 0 || W == 0 || ph == 0 || pw == 0) return out;
  const at::Tensor pr = patch_probs.contiguous(), b = boxes.contiguous();
  const at::Tensor ii = instance_index.contiguous();
  const auto lists = patches_by_instance(ii.const_data_ptr<int64_t>(), P, n);
  const int64_t* box = b.const_data_ptr<int64_t>();
  bool* o = out.mutable_data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pr.scalar_type(), "reassemble_patches", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const T* probs = pr.const_data_ptr<T>();
    const A thr = static_cast<A>(threshold);
    at::parallel_for(0, n, 1, [&](int64_t i0, int64_t i1) {
      std::vector<A> acc;
      std::vector<int32_t> cnt;
      std::vector<LinearTap<A>> ty, tx;
      for (int64_t i = i0; i < i1; ++i) {
        const auto& list = lists[i];
        // The union of the instance's patches, clipped to the image.
        int64_t x0 = W, y0 = H, x1 = 0, y1 = 0;
        for (const int64_t k : list) {
          const int64_t* bb = box + 4 * k;
          if (bb[2] <= bb[0] || bb[3] <= bb[1]) continue;
          x0 = std::min(x0, std::max<int64_t>(bb[0], 0));
          y0 = std::min(y0, std::max<int64_t>(bb[1], 0));
          x1 = std::max(x1, std::min<int64_t>(bb[2], W));
          y1 = std::max(y1, std::min<int64_t>(bb[3], H));
        }
        if (x0 >= x1 || y0 >= y1) continue;
        const int64_t rw = x1 - x0, rh = y1 - y0;
        acc.assign(rw * rh, A(0));
        cnt.assign(rw * rh, 0);
        for (const int64_t k : list) {
          const int64_t* bb = box + 4 * k;
          const uint64_t bw = box_extent(bb[0], bb[2]), bh = box_extent(bb[1], bb[3]);
          if (bw == 0 || bh == 0) continue;
          const T* pk = probs + k * ph * pw;
          // The part of the box inside the union (and so the image): taps only there.
          const int64_t ya = std::max(bb[1], y0), yb = std::min(bb[3], y1);
          const int64_t xa = std::max(bb[0], x0), xb = std::min(bb[2], x1);
          if (ya >= yb || xa >= xb) continue;
          const bool same = bh == static_cast<uint64_t>(ph) && bw == static_cast<uint64_t>(pw);
          if (!same) {
            ty.resize(yb - ya);
            tx.resize(xb - xa);
            for (int64_t y = ya; y < yb; ++y)
              ty[y - ya] = resize_tap<A, uint64_t>(box_extent(bb[1], y), ph, bh);
            for (int64_t x = xa; x < xb; ++x)
              tx[x - xa] = resize_tap<A, uint64_t>(box_extent(bb[0], x), pw, bw);
          }
          for (int64_t y = ya; y < yb; ++y) {
            A* ar = acc.data() + (y - y0) * rw - x0;
            int32_t* cr = cnt.data() + (y - y0) * rw - x0;
            for (int64_t x = xa; x < xb; ++x) {
              A val;
              if (same) {
                val = static_cast<A>(pk[(y - bb[1]) * pw + (x - bb[0])]);
              } else {
                const LinearTap<A>& t = ty[y - ya];
                const LinearTap<A>& s = tx[x - xa];
                val = blend<A>(static_cast<A>(pk[t.i0 * pw + s.i0]),
                               static_cast<A>(pk[t.i0 * pw + s.i1]),
                               static_cast<A>(pk[t.i1 * pw + s.i0]),
                               static_cast<A>(pk[t.i1 * pw + s.i1]), t, s);
              }
              ar[x] += val;
              cr[x] += 1;
            }
          }
        }
        bool* oi = o + i * H * W;
        for (int64_t y = y0; y < y1; ++y)
          for (int64_t x = x0; x < x1; ++x) {
            const int64_t r = (y - y0) * rw + (x - x0);
            if (cnt[r] > 0) oi[y * W + x] = acc[r] / static_cast<A>(cnt[r]) > thr;
          }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CPU, m) {
  m.impl("boundary_patches", &boundary_patches_cpu);
  m.impl("crop_patches", &crop_patches_cpu);
  m.impl("reassemble_patches", &reassemble_patches_cpu);
}

}  // namespace segops
