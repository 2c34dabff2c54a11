// Matrix NMS (SOLOv2) CUDA kernels (torch-free). Decay rule and mask IoU from
// csrc/common/box_iou.h, as on the CPU. The cost model is docs/cost_model/nms.md.
//
// Masks are handled in label-major order ("rows" r: by label, by score within a label,
// from the glue's two stable sorts; rank[r] is row r's score rank), so that, as on the CPU,
// only pairs of the same label are intersected:
//  1. pack: every mask as bits (one warp per 32-word strip of a row: coalesced byte loads,
//     two ballots a word), its pixel count added up per strip (integer atomics, exact),
//     stored by score rank;
//  2. intersections: 64 x 64 tiles of row pairs r < s, skipped unless the two row ranges
//     share a label, and split along the words (blockIdx.z) so that a few tiles still fill
//     the GPU; each thread intersects 4 x 4 pairs from 16-word slices staged in shared
//     memory and adds the same-label pairs' counts (integer atomics: exact, in any order) at
//     (rank[r], rank[s]) of the score-order matrix (no other entry is ever read);
//  3. compensation: each mask's largest IoU with a higher-scored mask of its label (over
//     its label's rows only);
//  4. decay and output (a warp per mask): the decay over every higher-scored mask
//     (cross-label terms included: with a negative sigma they matter), and score * decay
//     written straight to the mask's input position (the inverse permutation is a scatter).
// IoUs are computed from the counts where they are used, by the CPU's mask_iou.
#include "common/box_iou.h"
#include "core/half.cuh"
#include "nms/launch.h"

namespace segops {
namespace cuda {
namespace {

constexpr int kBits = 64;
constexpr int kThreads = 256;
constexpr int kStrip = 32;   // words of a row packed by one warp
constexpr int kTile = 64;    // rows / columns of an IoU tile
constexpr int kSlice = 16;   // words staged per step
constexpr int kPer = 4;      // pairs per thread along each axis (16 x 16 threads)

using Count = unsigned int;  // pixel counts (a mask has fewer than 2**32 pixels)

// 1. One warp per (row, strip): bit b of word w is pixel 64 w + b of mask src[r] being set.
__global__ void matrix_pack_kernel(const uint8_t* masks, const int64_t* src,
                                   const int64_t* rank, int64_t n, int64_t p, int64_t words,
                                   uint64_t* packed, Count* area) {
  const int64_t strips = (words + kStrip - 1) / kStrip;
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t job = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; job < n * strips;
       job += warps) {
    const int64_t r = job / strips, w0 = job % strips * kStrip;
    const uint8_t* m = masks + src[r] * p;
    Count count = 0;
    for (int64_t w = w0; w < min_(w0 + kStrip, words); ++w) {
      const int64_t i = w * kBits + lane;
      const unsigned lo = __ballot_sync(0xffffffffu, i < p && m[i] != 0);
      const unsigned hi = __ballot_sync(0xffffffffu, i + 32 < p && m[i + 32] != 0);
      const uint64_t bits = uint64_t(lo) | uint64_t(hi) << 32;
      if (lane == 0) {
        packed[r * words + w] = bits;
        count += __popcll(bits);
      }
    }
    if (lane == 0) atomicAdd(area + rank[r], count);
  }
}

// 2. Intersection tiles (blockIdx.x: column tile, blockIdx.y: row tile, blockIdx.z: word
// slice) over label-major rows; counts added at (rank[r], rank[s]).
__global__ void matrix_inter_kernel(const uint64_t* packed, const int64_t* label,
                                    const int64_t* rank, int64_t n, int64_t words,
                                    int64_t words_per_z, Count* inter) {
  __shared__ uint64_t a[kTile][kSlice + 1];
  __shared__ uint64_t b[kTile][kSlice + 1];
  const int64_t r0 = int64_t(blockIdx.y) * kTile, s0 = int64_t(blockIdx.x) * kTile;
  // Pairs r < s only, and only tiles whose row and column label ranges meet (labels ascend).
  if (s0 + kTile <= r0 + 1 || label[min_(r0 + kTile, n) - 1] < label[s0]) return;
  const int64_t wz0 = int64_t(blockIdx.z) * words_per_z;
  const int64_t wz1 = min_(wz0 + words_per_z, words);
  if (wz0 >= wz1) return;
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * 16 + tx;
  Count count[kPer][kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i)
#pragma unroll
    for (int j = 0; j < kPer; ++j) count[i][j] = 0;
  for (int64_t w0 = wz0; w0 < wz1; w0 += kSlice) {
    for (int k = tid; k < kTile * kSlice; k += kThreads) {
      const int row = k / kSlice, w = k % kSlice;
      const bool in_w = w0 + w < wz1;
      a[row][w] = in_w && r0 + row < n ? packed[(r0 + row) * words + w0 + w] : 0;
      b[row][w] = in_w && s0 + row < n ? packed[(s0 + row) * words + w0 + w] : 0;
    }
    __syncthreads();
#pragma unroll 4
    for (int w = 0; w < kSlice; ++w) {
      uint64_t x[kPer], y[kPer];
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        x[i] = a[ty + 16 * i][w];
        y[i] = b[tx + 16 * i][w];
      }
#pragma unroll
      for (int i = 0; i < kPer; ++i)
#pragma unroll
        for (int j = 0; j < kPer; ++j) count[i][j] += __popcll(x[i] & y[j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int64_t r = r0 + ty + 16 * i;
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int64_t s = s0 + tx + 16 * j;
      if (r < s && s < n && label[r] == label[s] && count[i][j] != 0)
        atomicAdd(inter + rank[r] * n + rank[s], count[i][j]);
    }
  }
}

// The IoU of the masks of score ranks i < j (same label), as the CPU computes it.
template <typename G>
__device__ __forceinline__ G pair_iou(const Count* inter, const Count* area, int64_t n,
                                      int64_t i, int64_t j) {
  return mask_iou(static_cast<G>(inter[i * n + j]), static_cast<G>(area[i]),
                  static_cast<G>(area[j]));
}

// 3. comp[rank[s]] = the largest IoU of row s with an earlier row of its label.
template <typename G>
__global__ void matrix_comp_kernel(const Count* inter, const Count* area, const int64_t* label,
                                   const int64_t* rank, int64_t n, G* comp) {
  SEGOPS_GRID_STRIDE(s, n) {
    const int64_t j = rank[s];
    G c = G(0);
    for (int64_t r = s - 1; r >= 0 && label[r] == label[s]; --r)
      c = max_(c, pair_iou<G>(inter, area, n, rank[r], j));
    comp[j] = c;
  }
}

// 4. out[order[j]] = score * decay of the mask of score rank j, rounded as the CPU does.
// A warp per j: lanes fold the terms i < j with min (exact, and the same in any order:
// matrix_nms_term), then lane 0 folds the lanes'.
constexpr int kDecayWarps = kThreads / 32;
template <typename G, typename T>
__global__ void matrix_decay_kernel(const Count* inter, const Count* area,
                                    const int64_t* score_label, const G* comp, const T* scores,
                                    const int64_t* order, int64_t n, bool gaussian, G sigma,
                                    T* out) {
  __shared__ G part[kDecayWarps][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t j0 = int64_t(blockIdx.x) * kDecayWarps; j0 < n;
       j0 += int64_t(gridDim.x) * kDecayWarps) {
    const int64_t j = j0 + warp;
    G decay = G(1);
    if (j < n)
      for (int64_t i = lane; i < j; i += 32) {
        G term;
        const G x = score_label[i] == score_label[j] ? pair_iou<G>(inter, area, n, i, j) : G(0);
        if (matrix_nms_term(x, comp[i], gaussian, sigma, term)) decay = min_(decay, term);
      }
    part[warp][lane] = decay;
    __syncthreads();
    if (lane == 0 && j < n) {
      for (int l = 1; l < 32; ++l) decay = min_(decay, part[warp][l]);
      const int64_t k = order[j];
      out[k] = static_cast<T>(static_cast<G>(static_cast<acc_t<T>>(scores[k])) * decay);
    }
    __syncthreads();
  }
}

struct MatrixScratch {
  uint64_t* packed;
  Count* area;   // by score rank
  Count* inter;  // [n, n] by score rank; only same-label (i < j) entries are written
  void* comp;
  static int64_t align(int64_t b) { return (b + 15) / 16 * 16; }
  static int64_t bytes(int64_t n, int64_t words, int64_t g) {
    return align(8 * n * words) + align(4 * n) + align(4 * n * n) + align(g * n);
  }
  MatrixScratch(void* base, int64_t n, int64_t words) {
    char* p = static_cast<char*>(base);
    packed = reinterpret_cast<uint64_t*>(p), p += align(8 * n * words);
    area = reinterpret_cast<Count*>(p), p += align(4 * n);
    inter = reinterpret_cast<Count*>(p), p += align(4 * n * n);
    comp = p;
  }
};

template <typename G, typename T>
void launch_matrix(const MatrixArgs& m, const uint8_t* masks, const int64_t* src,
                   const int64_t* label, const int64_t* rank, const int64_t* score_label,
                   const int64_t* order, const T* scores, void* scratch, T* out,
                   cudaStream_t stream) {
  const int64_t n = m.n, words = (m.p + kBits - 1) / kBits;
  MatrixScratch s(scratch, n, words);
  // The counts are summed with atomics: zeroed first (areas and intersections are adjacent).
  cudaMemsetAsync(s.area, 0, reinterpret_cast<char*>(s.comp) - reinterpret_cast<char*>(s.area),
                  stream);
  const int64_t strips = (words + kStrip - 1) / kStrip;
  matrix_pack_kernel<<<blocks_for(n * strips * 32, kThreads), kThreads, 0, stream>>>(
      masks, src, rank, n, m.p, words, s.packed, s.area);
  // Split the words so that the upper-triangle tiles make about two waves of blocks.
  const int64_t tiles = (n + kTile - 1) / kTile, pairs = tiles * (tiles + 1) / 2;
  const int64_t slices = (words + kSlice - 1) / kSlice;
  const int64_t split = max_(min_((2 * multiprocessor_count() + pairs - 1) / pairs, slices),
                             int64_t(1));
  const int64_t per_z = (slices + split - 1) / split * kSlice;
  matrix_inter_kernel<<<dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(tiles),
                             static_cast<unsigned>(split)),
                        dim3(16, 16), 0, stream>>>(s.packed, label, rank, n, words, per_z,
                                                   s.inter);
  matrix_comp_kernel<G><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(
      s.inter, s.area, label, rank, n, static_cast<G*>(s.comp));
  matrix_decay_kernel<G, T><<<blocks_for(n * 32, kThreads), kThreads, 0, stream>>>(
      s.inter, s.area, score_label, static_cast<const G*>(s.comp), scores, order, n,
      m.gaussian, static_cast<G>(m.sigma), out);
}

}  // namespace

int64_t matrix_nms_scratch_bytes(bool f64, int64_t n, int64_t p) {
  return MatrixScratch::bytes(n, (p + kBits - 1) / kBits, f64 ? 8 : 4);
}

cudaError_t matrix_nms(const MatrixArgs& m, const uint8_t* masks, const int64_t* src,
                       const int64_t* label, const int64_t* rank, const int64_t* score_label,
                       const int64_t* order, const void* scores, void* scratch, void* out,
                       cudaStream_t stream) {
  return dispatch(m.score_dtype, [&](auto tag) {
    using T = decltype(tag);  // IoUs and decay in acc_t<T>: double for double, else float
    launch_matrix<acc_t<T>, T>(m, masks, src, label, rank, score_label, order,
                               static_cast<const T*>(scores), scratch, static_cast<T*>(out),
                               stream);
  });
}

}  // namespace cuda
}  // namespace segops
