// Patches family (BPR) CUDA kernels (torch-free). Rules from csrc/common/patches.h (and
// roi_align.h / masks.h for resampling), as on the CPU; docs/cost_model/patches.md has the
// cost model.
//
// Extraction, sync-free and with scratch of two bits per pixel:
//  * nms_kernel, one block per instance: the mask's bounding box; then, for level 4 down to
//    1, the region (the box grown by one pixel) in chunks of 4096 pixels in raster order:
//    the chunk's unsuppressed candidates of the level are compacted in shared memory (warp
//    ballots and a block scan), and the greedy NMS walks them with a block-parallel search
//    for the next unsuppressed one; a kept patch marks its suppressed offsets (an interval
//    per row) in a bitmap, row by row in parallel. Kept patches are bits of a second bitmap
//    and a count per (instance, level, row);
//  * an exclusive scan of those counts (instance, then level descending, then row) gives
//    every kept patch's output row: the NMS order;
//  * write_kernel, one warp per (instance, row): the row's kept bits, ranked by ballots.
// Crops: one block per (patch, 16 output rows); the RoIAlign geometry once per block, the
// row interpolations in shared memory, the column interpolations once per thread.
// Reassembly: one block per (instance, image row); the instance's patches that cross the
// row are compacted in shared memory (in index order), with their row taps, and each pixel
// sums only those.
#include "common/masks.h"
#include "common/patches.h"
#include "common/roi_align.h"
#include "core/block_bits.cuh"
#include "core/half.cuh"
#include "patches/launch.h"

namespace segops {
namespace cuda {
namespace {

constexpr int kNmsThreads = 1024;
constexpr int kNmsWarps = kNmsThreads / 32;
constexpr int kChunkRounds = 4;  // a chunk: kChunkRounds * kNmsThreads region pixels
constexpr int kWriteThreads = 256;

// Boundary level of pixel (y, x) of a mask: min(S, 9 - S) of its 3x3 sum, zero padding.
__device__ int pixel_level(const bool* m, int64_t h, int64_t w, int64_t y, int64_t x) {
  int s = 0;
  for (int64_t yy = y - 1; yy <= y + 1; ++yy)
    for (int64_t xx = x - 1; xx <= x + 1; ++xx)
      s += yy >= 0 && yy < h && xx >= 0 && xx < w && m[yy * w + xx];
  return boundary_level(s);
}

// Block-wide, called by every thread: the rank of this thread among those with `pred` (in
// thread order) and their number, from warp ballots and a scan of the warp counts.
__device__ int block_rank(bool pred, int* warp_count, int& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned b = __ballot_sync(0xffffffffu, pred);
  if (lane == 0) warp_count[warp] = __popc(b);
  __syncthreads();
  int before = 0, all = 0;
  for (int w = 0; w < kNmsWarps; ++w) {
    before += w < warp ? warp_count[w] : 0;
    all += warp_count[w];
  }
  __syncthreads();  // warp_count is reused by the next call
  total = all;
  return before + __popc(b & lanes_below(lane));
}

// Block-wide min (max: pass -v) of one int64 per thread, by a tree in shared memory.
__device__ int64_t block_min(int64_t v, int64_t* red) {
  red[threadIdx.x] = v;
  __syncthreads();
  for (int s = kNmsThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) red[threadIdx.x] = min_(red[threadIdx.x], red[threadIdx.x + s]);
    __syncthreads();
  }
  const int64_t r = red[0];
  __syncthreads();
  return r;
}

struct alignas(16) Bytes16 {
  uint32_t w[4];
};

__device__ __forceinline__ bool bit_at(const uint32_t* row, int64_t x) {
  return (row[x >> 5] >> (x & 31)) & 1u;
}

__global__ void __launch_bounds__(kNmsThreads)
    nms_kernel(PatchArgs a, const bool* masks, uint32_t* suppressed, uint32_t* kept,
               int32_t* counts) {
  __shared__ int64_t red[kNmsThreads];
  __shared__ int32_t list[kChunkRounds * kNmsThreads];
  __shared__ int warp_tmp[kNmsWarps];
  const int t = threadIdx.x;
  const int64_t i = blockIdx.x, H = a.height, W = a.width, plane = H * W;
  const int64_t words = (W + 31) / 32, p = a.patch;
  const bool* m = masks + i * plane;
  uint32_t* sup = suppressed + i * H * words;
  uint32_t* kep = kept + i * H * words;
  int32_t* cnt = counts + i * 4 * H;
  for (int64_t k = t; k < 4 * H; k += kNmsThreads) cnt[k] = 0;

  // The bounding box of the mask: 16 bytes per load where the plane allows it.
  int64_t bx0 = W, by0 = H, bx1 = -1, by1 = -1;
  const auto see = [&](int64_t q) {
    const int64_t y = q / W, x = q % W;
    bx0 = min_(bx0, x);
    bx1 = max_(bx1, x);
    by0 = min_(by0, y);
    by1 = max_(by1, y);
  };
  int64_t scalar_from = 0;
  if (reinterpret_cast<uintptr_t>(m) % 16 == 0) {
    const Bytes16* v = reinterpret_cast<const Bytes16*>(m);
    const int64_t n16 = plane / 16;
    for (int64_t c = t; c < n16; c += kNmsThreads) {
      const Bytes16 b = v[c];
      if ((b.w[0] | b.w[1] | b.w[2] | b.w[3]) == 0) continue;
      for (int j = 0; j < 16; ++j)
        if (m[c * 16 + j]) see(c * 16 + j);
    }
    scalar_from = n16 * 16;
  }
  for (int64_t q = scalar_from + t; q < plane; q += kNmsThreads)
    if (m[q]) see(q);
  bx0 = block_min(bx0, red);
  by0 = block_min(by0, red);
  bx1 = -block_min(-bx1, red);
  by1 = -block_min(-by1, red);
  if (bx1 < 0) return;  // an empty mask: no candidate (counts are zero)

  // The candidate region: the box grown by one pixel. Its rows of both bitmaps are zeroed.
  const int64_t rx0 = max_<int64_t>(bx0 - 1, 0), rx1 = min_<int64_t>(bx1 + 2, W);
  const int64_t ry0 = max_<int64_t>(by0 - 1, 0), ry1 = min_<int64_t>(by1 + 2, H);
  const int64_t rw = rx1 - rx0, rh = ry1 - ry0, area = rw * rh;
  for (int64_t k = ry0 * words + t; k < ry1 * words; k += kNmsThreads) sup[k] = kep[k] = 0;
  __syncthreads();

  const bool suppress_all = 0.0 > a.iou_threshold;  // IoU 0 > threshold: every pair overlaps
  bool done = false;                                 // block-uniform
  for (int level = 4; level >= 1 && !done; --level) {
    for (int64_t base = 0; base < area && !done; base += kChunkRounds * kNmsThreads) {
      // The chunk's unsuppressed candidates of this level, in raster order.
      int n_list = 0;
      for (int j = 0; j < kChunkRounds; ++j) {
        const int64_t r = base + int64_t(j) * kNmsThreads + t;
        bool pred = false;
        if (r < area) {
          const int64_t y = ry0 + r / rw, x = rx0 + r % rw;
          pred = pixel_level(m, H, W, y, x) == level && !bit_at(sup + y * words, x);
        }
        int total;
        const int pos = block_rank(pred, warp_tmp, total);
        if (pred) list[n_list + pos] = static_cast<int32_t>(r - base);
        n_list += total;
      }
      __syncthreads();
      // Greedy NMS over the list: the next unsuppressed candidate, block-parallel.
      int start = 0;
      while (start < n_list && !done) {
        int found = -1;
        for (int s0 = start; s0 < n_list && found < 0; s0 += kNmsThreads) {
          bool pred = false;
          if (s0 + t < n_list) {
            const int64_t r = base + list[s0 + t];
            pred = !bit_at(sup + (ry0 + r / rw) * words, rx0 + r % rw);
          }
          const int f = block_first<kNmsWarps>(pred, warp_tmp);
          if (f >= 0) found = s0 + f;
        }
        if (found < 0) break;
        const int64_t r = base + list[found];
        const int64_t cr = r / rw, cc = r % rw, y = ry0 + cr, x = rx0 + cc;
        if (t == 0) {
          kep[y * words + (x >> 5)] |= 1u << (x & 31);
          cnt[(4 - level) * H + y] += 1;
        }
        if (suppress_all) {
          done = true;
          break;
        }
        // Suppress: row offsets |dy| < p within the region, an interval of columns each.
        const int64_t rr0 = max_<int64_t>(cr - (p - 1), 0), rr1 = min_<int64_t>(cr + (p - 1), rh - 1);
        for (int64_t rr = rr0 + t; rr <= rr1; rr += kNmsThreads) {
          const int64_t hw = suppress_half_width(rr < cr ? cr - rr : rr - cr, p, a.iou_threshold, rw);
          if (hw < 0) continue;
          const int64_t xa = rx0 + max_<int64_t>(cc - hw, 0), xb = rx0 + min_<int64_t>(cc + hw + 1, rw);
          uint32_t* row = sup + (ry0 + rr) * words;
          for (int64_t wd = xa >> 5; wd <= (xb - 1) >> 5; ++wd) {
            const int64_t lo = max_<int64_t>(xa - wd * 32, 0), hi = min_<int64_t>(xb - wd * 32, 32);
            const uint32_t bits = hi - lo == 32 ? ~0u : ((1u << (hi - lo)) - 1u) << lo;
            row[wd] |= bits;
          }
        }
        __syncthreads();
        start = found + 1;
      }
      __syncthreads();  // the list is reused by the next chunk
    }
  }
}

// One warp per (instance, row): the row's kept patches, ranked within their level by
// ballots, written at their output rows (ends: inclusive scan of counts).
__global__ void __launch_bounds__(kWriteThreads)
    write_kernel(PatchArgs a, const bool* masks, const uint32_t* kept, const int32_t* counts,
                 const int64_t* ends, int64_t capacity, int64_t* boxes, int64_t* instance_index,
                 float* scores) {
  const int lane = threadIdx.x & 31;
  const int64_t H = a.height, W = a.width, words = (W + 31) / 32;
  const int64_t warps = int64_t(gridDim.x) * (kWriteThreads / 32);
  for (int64_t g = (int64_t(blockIdx.x) * kWriteThreads + threadIdx.x) / 32; g < a.n * H;
       g += warps) {
    const int64_t i = g / H, y = g % H;
    int64_t base[5];  // by level
    bool any = false;
    for (int level = 4; level >= 1; --level) {
      const int64_t k = (i * 4 + (4 - level)) * H + y;
      base[level] = ends[k] - counts[k];
      any |= counts[k] > 0;
    }
    if (!any) continue;  // (the bitmaps are not initialised outside the candidate region)
    const bool* m = masks + i * H * W;
    const uint32_t* row = kept + (i * H + y) * words;
    for (int64_t wd = 0; wd < words; ++wd) {
      const uint32_t bits = row[wd];
      if (bits == 0) continue;
      const int64_t x = wd * 32 + lane;
      const bool has = (bits >> lane) & 1u;
      const int lvl = has ? pixel_level(m, H, W, y, x) : 0;
      for (int level = 4; level >= 1; --level) {
        const bool mine = has && lvl == level;
        const unsigned b = __ballot_sync(0xffffffffu, mine);
        const int64_t out = base[level] + __popc(b & lanes_below(lane));
        base[level] += __popc(b);
        if (!mine || out >= capacity) continue;
        const Span sx = shifted_patch(x, a.patch, W), sy = shifted_patch(y, a.patch, H);
        boxes[4 * out] = sx.lo;
        boxes[4 * out + 1] = sy.lo;
        boxes[4 * out + 2] = sx.hi;
        boxes[4 * out + 3] = sy.hi;
        instance_index[out] = i;
        scores[out] = boundary_score(level);
      }
    }
  }
}

// ---- crop_patches ----

constexpr int kCropThreads = 256;
constexpr int kCropRows = 16;

// Per patch: its RoIAlign geometry, or valid = false for an instance (or image) index out
// of range. Indices are range-checked by the glue except during graph capture: such a patch
// then gives empty patches rather than an out-of-bounds read. A kernel of its own: the range
// searches' registers would otherwise cap the occupancy of the per-pixel kernel.
template <typename G>
struct CropGeometry {
  RoIAlignGeometry<G> g;
  bool valid;
};

template <typename G>
__global__ void crop_geometry_kernel(CropArgs a, const int64_t* boxes, const int64_t* inst,
                                     const int64_t* batch, CropGeometry<G>* geo) {
  SEGOPS_GRID_STRIDE(p, a.patches) {
    const int64_t* bb = boxes + 4 * p;
    const int64_t i = inst[p];
    CropGeometry<G> c;
    c.valid = i >= 0 && i < a.instances && batch[i] >= 0 && batch[i] < a.batch;
    if (c.valid) {
      const G roi[5] = {static_cast<G>(batch[i]), static_cast<G>(bb[0]), static_cast<G>(bb[1]),
                        static_cast<G>(bb[2]), static_cast<G>(bb[3])};
      c.g = roi_align_geometry<G>(roi, G(1), a.out_h, a.out_w, 1, true, a.batch, a.height,
                                  a.width);
    }
    geo[p] = c;
  }
}

template <typename T>
__global__ void __launch_bounds__(kCropThreads)
    crop_kernel(CropArgs a, const CropGeometry<acc_t<T>>* geometry, const T* images,
                const bool* masks, const int64_t* boxes, const int64_t* inst, T* image_patches,
                bool* mask_patches) {
  using G = acc_t<T>;
  __shared__ CropGeometry<G> geo;
  __shared__ Interp1D<G> yi[kCropRows];
  __shared__ int64_t my[kCropRows];  // mask row of each output row, -1 outside
  const int64_t groups = (a.out_h + kCropRows - 1) / kCropRows, bins = a.out_h * a.out_w;
  for (int64_t blk = blockIdx.x; blk < a.patches * groups; blk += gridDim.x) {
    const int64_t p = blk / groups, r0 = (blk % groups) * kCropRows;
    const int64_t r1 = min_<int64_t>(r0 + kCropRows, a.out_h);
    const int64_t* bb = boxes + 4 * p;
    const int64_t i = inst[p];
    const uint64_t bw = box_extent(bb[0], bb[2]), bh = box_extent(bb[1], bb[3]);
    __syncthreads();  // the previous block's shared values are consumed
    if (threadIdx.x == 0) geo = geometry[p];
    __syncthreads();
    const bool valid = geo.valid;
    const int64_t k = threadIdx.x;
    if (valid && k < r1 - r0) {
      if (!geo.g.empty) yi[k] = geo.g.y.interp(geo.g.y.pos(r0 + k));
      my[k] = -1;
      if (bw > 0 && bh > 0) {
        const int64_t y = box_coord(bb[1], nearest_index(r0 + k, bh, a.out_h));
        if (y >= 0 && y < a.height) my[k] = y;
      }
    }
    __syncthreads();
    const RoIAlignGeometry<G>& g = geo.g;
    for (int64_t pw = threadIdx.x; pw < a.out_w; pw += kCropThreads) {
      if (!valid) {
        for (int64_t ph = r0; ph < r1; ++ph) {
          for (int64_t c = 0; c < a.channels; ++c)
            image_patches[(p * a.channels + c) * bins + ph * a.out_w + pw] = static_cast<T>(0.0f);
          mask_patches[p * bins + ph * a.out_w + pw] = false;
        }
        continue;
      }
      // This column's interpolation (its one sample) and mask column, for every row.
      Interp1D<G> xi{};
      if (!g.empty) xi = g.x.interp(g.x.pos(pw));
      int64_t mx = -1;
      if (bw > 0 && bh > 0) {
        const int64_t x = box_coord(bb[0], nearest_index(pw, bw, a.out_w));
        if (x >= 0 && x < a.width) mx = x;
      }
      const auto y_at = [&](int64_t s) { return yi[s - r0]; };
      const auto x_at = [&](int64_t) { return xi; };
      for (int64_t c = 0; c < a.channels; ++c) {
        const T* plane =
            g.empty ? images : images + (g.batch * a.channels + c) * a.height * a.width;
        T* o = image_patches + (p * a.channels + c) * bins + pw;
#pragma unroll 1
        for (int64_t ph = r0; ph < r1; ++ph)
          o[ph * a.out_w] = static_cast<T>(roi_align_bin<T, G, acc_t<T>>(plane, g, ph, pw, y_at, x_at));
      }
      const bool* mi = masks + i * a.height * a.width;
      for (int64_t ph = r0; ph < r1; ++ph) {
        const int64_t y = my[ph - r0];
        mask_patches[p * bins + ph * a.out_w + pw] = y >= 0 && mx >= 0 && mi[y * a.width + mx];
      }
    }
  }
}

// ---- reassemble_patches ----

constexpr int kRowThreads = 256;
constexpr int kRowList = kRowThreads;  // patches per shared batch

template <typename A>
struct RowPatch {
  int64_t k;           // patch index
  int64_t x0, x1;      // its columns [x0, x1)
  LinearTap<A> ty;     // its resize tap for this row (resampled patches)
  int64_t v;           // its row offset (patches of the box size)
  bool same;           // probs of the box size: no resampling
};

// One block per (instance, image row), 1024 columns per pass: the instance's patches that
// cross the row within the pass, in index order, batch by batch in shared memory; each
// thread's 4 columns sum only those. Pixels no patch covers keep the coarse mask.
template <typename T>
// No __launch_bounds__: under it ptxas spilled registers; launched with kRowThreads.
__global__ void
    reassemble_kernel(ReassembleArgs a, const bool* masks, const T* probs, const int64_t* boxes,
                      const int64_t* order, const int64_t* start, bool vec, bool* out) {
  using A = acc_t<T>;
  constexpr int kCols = 4;  // columns per thread per pass
  constexpr int64_t kPass = int64_t(kRowThreads) * kCols;
  __shared__ RowPatch<A> list[kRowList];
  __shared__ int warp_count[kRowThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const A thr = static_cast<A>(a.threshold);
  for (int64_t blk = blockIdx.x; blk < a.n * a.height; blk += gridDim.x) {
    const int64_t i = blk / a.height, y = blk % a.height;
    const bool* src = masks + (i * a.height + y) * a.width;
    bool* dst = out + (i * a.height + y) * a.width;
    const int64_t k0 = start[i], k1 = start[i + 1];
    for (int64_t c0 = 0; c0 < a.width; c0 += kPass) {  // block-uniform
      const int64_t x0 = c0 + int64_t(threadIdx.x) * kCols;
      A acc[kCols];
      int32_t cnt[kCols];
      for (int j = 0; j < kCols; ++j) {
        acc[j] = A(0);
        cnt[j] = 0;
      }
      for (int64_t kb = k0; kb < k1; kb += kRowList) {  // block-uniform
        // This batch's patches crossing row y within the pass, in index order.
        const int64_t kk = kb + threadIdx.x;
        bool cross = false;
        int64_t q = -1;
        if (kk < k1) {
          q = order[kk];
          const int64_t* bb = boxes + 4 * q;
          cross = bb[2] > bb[0] && bb[3] > bb[1] && bb[1] <= y && y < bb[3] &&
                  bb[0] < min_(c0 + kPass, a.width) && bb[2] > c0;
        }
        __syncthreads();  // the previous batch's list is consumed
        const unsigned b = __ballot_sync(0xffffffffu, cross);
        if (lane == 0) warp_count[warp] = __popc(b);
        __syncthreads();
        int pos = __popc(b & lanes_below(lane)), n_list = 0;
        for (int w = 0; w < kRowThreads / 32; ++w) {
          pos += w < warp ? warp_count[w] : 0;
          n_list += warp_count[w];
        }
        if (cross) {
          const int64_t* bb = boxes + 4 * q;
          const uint64_t bh = box_extent(bb[1], bb[3]);
          RowPatch<A> e;
          e.k = q;
          e.x0 = bb[0];
          e.x1 = bb[2];
          e.same = bh == static_cast<uint64_t>(a.ph) &&
                   box_extent(bb[0], bb[2]) == static_cast<uint64_t>(a.pw);
          e.v = e.same ? y - bb[1] : 0;
          e.ty = e.same ? LinearTap<A>{0, 0, A(1), A(0)}
                        : resize_tap<A, uint64_t>(box_extent(bb[1], y), a.ph, bh);
          list[pos] = e;
        }
        __syncthreads();
        for (int e = 0; e < n_list; ++e) {
          const RowPatch<A>& rp = list[e];
          const T* pk = probs + rp.k * a.ph * a.pw;
          for (int j = 0; j < kCols; ++j) {
            const int64_t x = x0 + j;
            if (x >= a.width || x < rp.x0 || x >= rp.x1) continue;
            A val;
            if (rp.same) {
              val = static_cast<A>(pk[rp.v * a.pw + (x - rp.x0)]);
            } else {
              const LinearTap<A> s =
                  resize_tap<A, uint64_t>(box_extent(rp.x0, x), a.pw, box_extent(rp.x0, rp.x1));
              const LinearTap<A>& t = rp.ty;
              val = blend<A>(static_cast<A>(pk[t.i0 * a.pw + s.i0]),
                             static_cast<A>(pk[t.i0 * a.pw + s.i1]),
                             static_cast<A>(pk[t.i1 * a.pw + s.i0]),
                             static_cast<A>(pk[t.i1 * a.pw + s.i1]), t, s);
            }
            acc[j] += val;
            cnt[j] += 1;
          }
        }
      }
      if (x0 >= a.width) continue;
      if (vec) {  // width % 4 == 0, 4-byte aligned rows: one load and one store
        const uint32_t coarse = *reinterpret_cast<const uint32_t*>(src + x0);
        uint32_t v = 0;
        for (int j = 0; j < kCols; ++j) {
          const uint32_t m = (coarse >> (8 * j)) & 0xffu;
          v |= (cnt[j] > 0 ? uint32_t(acc[j] / static_cast<A>(cnt[j]) > thr) : m) << (8 * j);
        }
        *reinterpret_cast<uint32_t*>(dst + x0) = v;
      } else {
        for (int j = 0; j < kCols; ++j) {
          const int64_t x = x0 + j;
          if (x < a.width) dst[x] = cnt[j] > 0 ? acc[j] / static_cast<A>(cnt[j]) > thr : src[x];
        }
      }
    }
  }
}

unsigned int grid_for(int64_t blocks) {
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > (1 << 30) ? (1 << 30) : blocks));
}

}  // namespace

cudaError_t boundary_nms(const PatchArgs& a, const bool* masks, uint32_t* suppressed,
                         uint32_t* kept, int32_t* counts, cudaStream_t stream) {
  if (a.n == 0) return cudaSuccess;
  nms_kernel<<<static_cast<unsigned int>(a.n), kNmsThreads, 0, stream>>>(a, masks, suppressed,
                                                                         kept, counts);
  return cudaGetLastError();
}

cudaError_t boundary_write(const PatchArgs& a, const bool* masks, const uint32_t* kept,
                           const int32_t* counts, const int64_t* ends, int64_t capacity,
                           int64_t* boxes, int64_t* instance_index, float* scores,
                           cudaStream_t stream) {
  if (a.n * a.height == 0 || capacity == 0) return cudaSuccess;
  const int64_t blocks = (a.n * a.height + kWriteThreads / 32 - 1) / (kWriteThreads / 32);
  write_kernel<<<grid_for(blocks), kWriteThreads, 0, stream>>>(
      a, masks, kept, counts, ends, capacity, boxes, instance_index, scores);
  return cudaGetLastError();
}

int64_t crop_patches_scratch_bytes(Dtype dtype, int64_t patches) {
  return patches * static_cast<int64_t>(dtype == Dtype::Float64 ? sizeof(CropGeometry<double>)
                                                                : sizeof(CropGeometry<float>));
}

cudaError_t crop_patches(Dtype dtype, const CropArgs& a, const void* images, const bool* masks,
                         const int64_t* boxes, const int64_t* instance_index,
                         const int64_t* batch_index, void* scratch, void* image_patches,
                         bool* mask_patches, cudaStream_t stream) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using G = acc_t<T>;
    auto* geo = static_cast<CropGeometry<G>*>(scratch);
    crop_geometry_kernel<G><<<blocks_for(a.patches, kCropThreads), kCropThreads, 0, stream>>>(
        a, boxes, instance_index, batch_index, geo);
    const int64_t blocks = a.patches * ((a.out_h + kCropRows - 1) / kCropRows);
    crop_kernel<T><<<grid_for(blocks), kCropThreads, 0, stream>>>(
        a, geo, static_cast<const T*>(images), masks, boxes, instance_index,
        static_cast<T*>(image_patches), mask_patches);
  });
}

cudaError_t reassemble_patches(Dtype dtype, const ReassembleArgs& a, const bool* masks,
                               const void* probs, const int64_t* boxes, const int64_t* order,
                               const int64_t* start, bool* out, cudaStream_t stream) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool vec = a.width % 4 == 0 && reinterpret_cast<uintptr_t>(masks) % 4 == 0 &&
                     reinterpret_cast<uintptr_t>(out) % 4 == 0;
    reassemble_kernel<T><<<grid_for(a.n * a.height), kRowThreads, 0, stream>>>(
        a, masks, static_cast<const T*>(probs), boxes, order, start, vec, out);
  });
}

}  // namespace cuda
}  // namespace segops
