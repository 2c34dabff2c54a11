// Greedy NMS (nms, batched_nms) CUDA kernels (torch-free). IoU rules from
// csrc/common/box_iou.h, as on the CPU. The cost model is docs/cost_model/nms.md.
//
// Boxes are processed class-major, by score within a class ("positions" p, from the glue's
// sorts); rows and columns of the suppression mask are positions, 64 per row block / word.
//  1. prepare: each position's box, its validity (finite box, non-NaN score) and the end of
//     its class segment.
//  2. plan (one block): each row block R's span, the mask words its rows need -- from its
//     own word R to the word of the end of its last row's class, so a batched call never
//     looks at other classes' columns -- and their exclusive prefix sum `off`; the class
//     segments (their starts, found per row block, then listed); zeroes `removed`.
//  3. per chunk of row blocks (the mask is bounded, see nms_chunks): the mask kernel, a
//     persistent grid over the chunk's (row block, word) items -- only those, however many
//     classes -- writing for each row a bitmask of the later boxes of its class it
//     suppresses (IoU > threshold); then the scan kernel: one block per class segment
//     (grid-strided), which settles the segment's rows 64 at a time: the rows' own word
//     decides, in registers, which of them are kept (a kept row removes later rows of the
//     block), then every thread ORs the kept rows' masks into `removed` for the later words.
//     One dependent read of `removed` per 64 rows, not per row.
//  4. compact (after the glue's cumsum of the kept flags, in score order): the kept indices
//     in score order, padded with -1, and their count.
// The host only launches (a fixed number of chunk launches, from n alone); nothing is read
// back.
#include "common/box_iou.h"
#include "core/half.cuh"
#include "nms/launch.h"

namespace segops {
namespace cuda {
namespace {

constexpr int kBits = 64;
constexpr int kPlanThreads = 1024;  // at most: the plan uses a warp per 32 row blocks
constexpr int kScanThreads = 256;
constexpr int kThreads = 256;
// Words of mask per chunk (128 MiB). The CPU emulator (tools/cuda_emu) makes it small (a
// run-time setting there), so that its tests take the multi-chunk path at a few hundred
// boxes, and sets it back to this for its cost tables.
#ifndef SEGOPS_NMS_MASK_BUDGET_WORDS
#define SEGOPS_NMS_MASK_BUDGET_WORDS (int64_t(1) << 24)
#endif
// The budget in "spans" (one word for each of a row block's 64 rows), at least one.
int64_t budget_spans() {
  const int64_t words = SEGOPS_NMS_MASK_BUDGET_WORDS;
  return words / 64 > 1 ? words / 64 : 1;
}

SEGOPS_HOST_DEVICE int64_t words_for(int64_t n) { return (n + kBits - 1) / kBits; }

// Scratch layout (device pointers into one allocation, 16-byte aligned parts).
template <typename G>
struct GreedyScratch {
  Box<G>* boxes;        // [n] in position order
  uint8_t* valid;       // [n]
  int64_t* seg_end;     // [n] end of the position's class segment
  int64_t* off;         // [RB + 1] prefix sums of the row blocks' spans
  int64_t* seg_base;    // [RB + 1] prefix sums of the segments starting in each row block
  int64_t* seg_start;   // [n + 1] segment starts (sentinel n after the last)
  uint64_t* removed;    // [words]
  uint64_t* mask;       // [mask_words(n)]

  static int64_t align(int64_t b) { return (b + 15) / 16 * 16; }

  static int64_t bytes(int64_t n) {
    const int64_t rb = words_for(n), w = words_for(n);
    return align(n * int64_t(sizeof(Box<G>))) + align(n) + align(8 * n) + 2 * align(8 * (rb + 1)) +
           align(8 * (n + 1)) + align(8 * w) + align(8 * nms_mask_words(n));
  }

  GreedyScratch(void* base, int64_t n) {
    char* p = static_cast<char*>(base);
    const int64_t rb = words_for(n), w = words_for(n);
    boxes = reinterpret_cast<Box<G>*>(p), p += align(n * int64_t(sizeof(Box<G>)));
    valid = reinterpret_cast<uint8_t*>(p), p += align(n);
    seg_end = reinterpret_cast<int64_t*>(p), p += align(8 * n);
    off = reinterpret_cast<int64_t*>(p), p += align(8 * (rb + 1));
    seg_base = reinterpret_cast<int64_t*>(p), p += align(8 * (rb + 1));
    seg_start = reinterpret_cast<int64_t*>(p), p += align(8 * (n + 1));
    removed = reinterpret_cast<uint64_t*>(p), p += align(8 * w);
    mask = reinterpret_cast<uint64_t*>(p);
  }
};

// First index in [lo, hi) with a[i] > v (a ascending), or hi.
__device__ inline int64_t upper_bound(const int64_t* a, int64_t lo, int64_t hi, int64_t v) {
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (a[mid] > v) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

// First index in [lo, hi) with a[i] >= v (a ascending), or hi.
__device__ inline int64_t lower_bound(const int64_t* a, int64_t lo, int64_t hi, int64_t v) {
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (a[mid] >= v) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

// 1. Boxes, validity and class ends in position order. order[p]: the box at position p;
// cls: the class of each position, ascending (nullptr: one class).
template <typename G, typename S>
__global__ void greedy_prepare_kernel(const G* boxes, const S* scores, const int64_t* order,
                                      const int64_t* cls, int64_t n, Box<G>* sorted,
                                      uint8_t* valid, int64_t* seg_end) {
  SEGOPS_GRID_STRIDE(p, n) {
    const int64_t k = order[p];
    const Box<G> b = load_box<G>(boxes + 4 * k);
    const float s = static_cast<float>(scores[k]);
    sorted[p] = b;
    valid[p] = box_finite(b) && s == s;
    seg_end[p] = cls == nullptr ? n : upper_bound(cls, p + 1, n, cls[p]);
  }
}

// Exclusive prefix sum over a block's blockDim.x values in shared memory; returns the
// total. Every thread of the block must call it.
__device__ inline int64_t block_exclusive_scan(int64_t* s) {
  const int t = threadIdx.x, threads = blockDim.x;
  for (int d = 1; d < threads; d *= 2) {
    const int64_t v = t >= d ? s[t - d] : 0;
    __syncthreads();
    s[t] += v;
    __syncthreads();
  }
  const int64_t total = s[threads - 1];
  const int64_t mine = t == 0 ? 0 : s[t - 1];
  __syncthreads();
  s[t] = mine;
  __syncthreads();
  return total;
}

// 2. One block: spans and their prefix sums, class segments, `removed` zeroed.
__global__ void __launch_bounds__(kPlanThreads)
    greedy_plan_kernel(const int64_t* cls, const int64_t* seg_end, int64_t n, int64_t* off,
                       int64_t* seg_base, int64_t* seg_start, uint64_t* removed) {
  __shared__ int64_t span_sum[kPlanThreads];
  __shared__ int64_t seg_sum[kPlanThreads];
  const int64_t rb = words_for(n);
  const int t = threadIdx.x;
  const int threads = blockDim.x;
  for (int64_t w = t; w < rb; w += threads) removed[w] = 0;
  // Thread t owns row blocks [t * per, (t + 1) * per).
  const int64_t per = (rb + threads - 1) / threads;
  const int64_t r0 = min_(rb, t * per), r1 = min_(rb, r0 + per);
  int64_t spans = 0, segs = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t last = min_(r * kBits + kBits, n) - 1;
    spans += ((seg_end[last] - 1) >> 6) - r + 1;
    for (int64_t p = r * kBits; p <= last; ++p)
      segs += p == 0 || (cls != nullptr && cls[p] != cls[p - 1]);
  }
  span_sum[t] = spans;
  seg_sum[t] = segs;
  __syncthreads();
  const int64_t span_total = block_exclusive_scan(span_sum);
  const int64_t seg_total = block_exclusive_scan(seg_sum);
  spans = span_sum[t];
  segs = seg_sum[t];
  for (int64_t r = r0; r < r1; ++r) {
    off[r] = spans;
    seg_base[r] = segs;
    const int64_t last = min_(r * kBits + kBits, n) - 1;
    spans += ((seg_end[last] - 1) >> 6) - r + 1;
    for (int64_t p = r * kBits; p <= last; ++p)
      if (p == 0 || (cls != nullptr && cls[p] != cls[p - 1])) seg_start[segs++] = p;
  }
  if (t == 0) {
    off[rb] = span_total;
    seg_base[rb] = seg_total;
    seg_start[seg_total] = n;
  }
}

// The row blocks [lo, hi) of chunk c: those whose mask begins in [c B, (c + 1) B).
__device__ inline void chunk_range(const int64_t* off, int64_t rb, int64_t c, int64_t budget,
                                   int64_t& lo, int64_t& hi) {
  lo = lower_bound(off, 0, rb, c * budget);
  hi = lower_bound(off, lo, rb, (c + 1) * budget);
}

// 3a. The mask of chunk c: one (row block, word) item per 64-thread block iteration.
template <typename G>
__global__ void __launch_bounds__(kBits)
    greedy_mask_kernel(const Box<G>* boxes, const uint8_t* valid, const int64_t* seg_end,
                       const int64_t* off, int64_t n, int64_t c, int64_t budget,
                       double threshold, uint64_t* mask) {
  __shared__ Box<G> cols[kBits];
  __shared__ uint8_t col_valid[kBits];
  const int64_t rb = words_for(n);
  int64_t lo, hi;
  chunk_range(off, rb, c, budget, lo, hi);
  const int64_t base = off[lo], items = off[hi] - base;
  const int t = threadIdx.x;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t r = upper_bound(off, lo, hi, base + item) - 1;  // the item's row block
    const int64_t span = off[r + 1] - off[r];
    const int64_t w = r + (base + item - off[r]);                  // its word
    const int64_t j0 = w * kBits;
    __syncthreads();  // the previous item's reads of cols are done
    if (j0 + t < n) {
      cols[t] = boxes[j0 + t];
      col_valid[t] = valid[j0 + t];
    }
    __syncthreads();
    const int64_t i = r * kBits + t;
    if (i >= n) continue;
    uint64_t bits = 0;
    if (valid[i]) {
      const Box<G> b = boxes[i];
      const G area = box_area(b);
      const int64_t end = seg_end[i];
      for (int k = 0; k < kBits; ++k) {
        const int64_t j = j0 + k;
        if (j <= i || j >= end || !col_valid[k]) continue;
        if (static_cast<double>(box_iou(b, area, cols[k], box_area(cols[k]))) > threshold)
          bits |= uint64_t(1) << k;
      }
    }
    mask[kBits * (off[r] - base) + t * span + (w - r)] = bits;
  }
}

// 3b. The scan of chunk c: one block per class segment (grid-strided). `flags[q]` (score
// order; q = rank[p], or p without `rank`) is set to whether position p is kept.
__global__ void __launch_bounds__(kScanThreads)
    greedy_scan_kernel(const uint64_t* mask, const uint8_t* valid, const int64_t* off,
                       const int64_t* seg_base, const int64_t* seg_start, const int64_t* rank,
                       int64_t n, int64_t c, int64_t budget, uint64_t* removed,
                       int32_t* flags) {
  __shared__ uint64_t diag[kBits];
  __shared__ unsigned candidates[2];
  __shared__ uint64_t kept_rows;
  const int64_t rb = words_for(n);
  int64_t lo, hi;
  chunk_range(off, rb, c, budget, lo, hi);
  if (lo >= hi) return;
  const int64_t base = off[lo];
  const int t = threadIdx.x;
  // The segments with rows in [lo, hi): those starting before row block hi, ending after lo.
  const int64_t k0 = max_(seg_base[lo] - 1, int64_t(0)), k1 = seg_base[hi];
  for (int64_t k = k0 + blockIdx.x; k < k1; k += gridDim.x) {
    const int64_t s = seg_start[k], e = seg_start[k + 1];
    const int64_t first = max_(s >> 6, lo), last = min_(((e - 1) >> 6) + 1, hi);
    for (int64_t r = first; r < last; ++r) {
      const int64_t span = off[r + 1] - off[r];
      const uint64_t* m = mask + kBits * (off[r] - base);
      const int64_t p0 = r * kBits;
      if (t < kBits) {  // warps 0 and 1, whole
        const int64_t p = p0 + t;
        diag[t] = p < n ? m[t * span] : 0;
        // Candidates: this segment's valid rows of the block.
        const unsigned vote = __ballot_sync(0xffffffffu, p < n && p >= s && p < e && valid[p]);
        if ((t & 31) == 0) candidates[t >> 5] = vote;
      }
      __syncthreads();
      if (t == 0) {
        // Settle the block's rows in order: a kept row removes the later rows it overlaps.
        const uint64_t mine = uint64_t(candidates[0]) | uint64_t(candidates[1]) << 32;
        // Other blocks OR into a boundary word too (their own rows' bits): read it from L2.
        uint64_t cur = *static_cast<volatile const uint64_t*>(removed + r), kept = 0,
                 cand = mine & ~cur;
        while (cand != 0) {
          const int b = __ffsll(static_cast<long long>(cand)) - 1;
          kept |= uint64_t(1) << b;
          cur |= diag[b];
          cand &= ~cur & ~((uint64_t(2) << b) - 1);  // later candidates still alive
        }
        kept_rows = kept;
      }
      __syncthreads();
      const uint64_t kept = kept_rows;
      if (t < kBits) {
        const int64_t p = p0 + t;
        if (p >= s && p < e) flags[rank == nullptr ? p : rank[p]] = static_cast<int32_t>((kept >> t) & 1);
      }
      if (kept != 0)
        for (int64_t w = r + 1 + t; w < r + span; w += kScanThreads) {
          uint64_t acc = 0, rows = kept;
          while (rows != 0) {
            const int b = __ffsll(static_cast<long long>(rows)) - 1;
            rows &= rows - 1;
            acc |= m[b * span + (w - r)];
          }
          // Words at a class boundary are shared with the neighbouring segment's block.
          if (acc != 0) atomicOr(reinterpret_cast<unsigned long long*>(removed + w),
                                 static_cast<unsigned long long>(acc));
        }
      __syncthreads();  // removed[r + 1] and diag are read for the next row block
    }
  }
}

// 4. Kept indices in score order: flags[q] and their inclusive prefix sum `incl`.
__global__ void greedy_compact_kernel(const int32_t* flags, const int32_t* incl,
                                      const int64_t* by_score, int64_t n, int64_t capacity,
                                      int64_t* out, int64_t* count) {
  const int64_t total = n > 0 ? incl[n - 1] : 0;
  if (blockIdx.x == 0 && threadIdx.x == 0) *count = min_(total, capacity);
  SEGOPS_GRID_STRIDE(i, max_(n, capacity)) {
    if (i < n && flags[i] != 0 && incl[i] - 1 < capacity) out[incl[i] - 1] = by_score[i];
    if (i < capacity && i >= total) out[i] = -1;
  }
}

template <typename G, typename S>
void launch_greedy(const GreedyArgs& a, const void* boxes, const void* scores,
                   const int64_t* order, const int64_t* cls, const int64_t* rank,
                   void* scratch, int32_t* flags, cudaStream_t stream) {
  const int64_t n = a.n, rb = words_for(n);
  GreedyScratch<G> s(scratch, n);
  greedy_prepare_kernel<G, S><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(
      static_cast<const G*>(boxes), static_cast<const S*>(scores), order, cls, n, s.boxes,
      s.valid, s.seg_end);
  const int plan_threads = static_cast<int>(min_(int64_t(kPlanThreads), (rb + 31) / 32 * 32));
  greedy_plan_kernel<<<1, plan_threads, 0, stream>>>(cls, s.seg_end, n, s.off, s.seg_base,
                                                     s.seg_start, s.removed);
  const int sms = multiprocessor_count();
  const int64_t chunks = nms_chunks(n), budget = budget_spans();
  const unsigned mask_grid = static_cast<unsigned>(
      min_(max_(min_(budget, rb * rb), int64_t(1)), int64_t(sms) * 32));
  const unsigned scan_grid = static_cast<unsigned>(min_(rb, int64_t(sms) * 4));
  for (int64_t c = 0; c < chunks; ++c) {
    greedy_mask_kernel<G><<<mask_grid, kBits, 0, stream>>>(s.boxes, s.valid, s.seg_end, s.off,
                                                           n, c, budget, a.threshold, s.mask);
    greedy_scan_kernel<<<scan_grid, kScanThreads, 0, stream>>>(
        s.mask, s.valid, s.off, s.seg_base, s.seg_start, rank, n, c, budget, s.removed, flags);
  }
}

}  // namespace

int64_t nms_mask_words(int64_t n) {
  const int64_t w = words_for(n);
  // Everything when it fits the budget, else a chunk: up to the budget, plus the last row
  // block that begins inside it (at most one word per column word).
  return min_(kBits * w * (w + 1) / 2, kBits * (budget_spans() + w));
}

int64_t nms_chunks(int64_t n) {
  // Row block r spans at most words - r words: the single-class total bounds every call's.
  const int64_t w = words_for(n);
  return w * (w + 1) / 2 / budget_spans() + 1;
}

int64_t greedy_scratch_bytes(bool f64, int64_t n) {
  return f64 ? GreedyScratch<double>::bytes(n) : GreedyScratch<float>::bytes(n);
}

cudaError_t greedy_keep_flags(const GreedyArgs& a, const void* boxes, const void* scores,
                              const int64_t* order, const int64_t* cls, const int64_t* rank,
                              void* scratch, int32_t* flags, cudaStream_t stream) {
  return dispatch(a.score_dtype, [&](auto tag) {
    using S = decltype(tag);
    if (a.f64)
      launch_greedy<double, S>(a, boxes, scores, order, cls, rank, scratch, flags, stream);
    else
      launch_greedy<float, S>(a, boxes, scores, order, cls, rank, scratch, flags, stream);
  });
}

cudaError_t greedy_compact(const int32_t* flags, const int32_t* incl, const int64_t* by_score,
                           int64_t n, int64_t capacity, int64_t* out, int64_t* count,
                           cudaStream_t stream) {
  greedy_compact_kernel<<<blocks_for(max_(n, capacity), kThreads), kThreads, 0, stream>>>(
      flags, incl, by_score, n, capacity, out, count);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace segops
