// Pieces of the RoI CUDA kernels shared by kernels.cu and multilevel_kernels.cu
// (torch-free): launch shapes, per-RoI footprints and scratch layout, the device-side batch
// index check, and the deterministic (gather) backward's tile step.
#pragma once

#include "common/roi_align.h"
#include "common/roi_pool.h"
#include "core/device_assert.cuh"
#include "core/half.cuh"

namespace segops {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// The gather backward: a block is a tile of kTileW x kTileH pixels times kGroups channel
// groups of kChannelGroup channels (threadIdx.z picks the group: one warp per group).
constexpr int kTileW = 8, kTileH = 4;
constexpr int kGroups = kThreads / (kTileW * kTileH);
constexpr int kChannelGroup = 8;
constexpr int kSlab = kGroups * kChannelGroup;  // channels per block
constexpr int kRangeBatch = 32;                 // RoIs whose tile data are held at once
static_assert(kTileW * kTileH == 32, "a channel group's tile is one warp");

// Which pixels an RoI can touch, in which image (batch < 0: none; the multilevel kernels
// store level * N + image there, so that one compaction selects both).
struct Footprint {
  int64_t batch, y0, y1, x0, x1;
};

template <typename Geom>
Geom* geometry_of(void* scratch) {
  return static_cast<Geom*>(scratch);
}
template <typename Geom>
Footprint* footprints_of(void* scratch, int64_t K) {
  return reinterpret_cast<Footprint*>(static_cast<Geom*>(scratch) + K);
}

template <typename T>
using geom_t = acc_t<T>;  // box geometry dtype: double for double, float otherwise

// rois[k, 0] must name an image of the batch (PyTorch's convention for bad indices on CUDA:
// a device-side assertion). The geometry functions treat a bad index as an empty RoI, so
// nothing reads outside the input even where assertions are off.
template <typename G>
__device__ inline void assert_batch_index(const G* roi, int64_t batch) {
  SEGOPS_DEVICE_ASSERT(valid_batch_index(roi[0], batch) &&
                       "rois[:, 0] must be a whole number in [0, N)");
}

// a[i] for a small by-value array of a kernel parameter, as selects: indexing it with a
// run-time i would copy the whole array to local memory.
template <typename T, int N>
__device__ __forceinline__ T select(const T (&a)[N], int64_t i) {
  T v = a[0];
#pragma unroll
  for (int k = 1; k < N; ++k)
    if (k == i) v = a[k];
  return v;
}

struct AxisRange {
  int64_t b, e;
};

// roi_align's part of the gather: the samples touching a row / column (computed once per
// tile row / column and RoI, shared by the tile's pixels and channel groups), and what RoI r
// sends pixel (py, px) of channels c0..c0+nc.
template <typename T, typename G>
struct RoIAlignGather {
  using Geom = RoIAlignGeometry<G>;
  const T* grad;
  int64_t channels, bins;
  __device__ AxisRange rows(const Geom& g, int64_t py) const {
    AxisRange r{0, 0};
    if (!g.empty) g.y.touching(py, r.b, r.e);
    return r;
  }
  __device__ AxisRange cols(const Geom& g, int64_t px) const {
    AxisRange r{0, 0};
    if (!g.empty) g.x.touching(px, r.b, r.e);
    return r;
  }
  __device__ void operator()(const Geom& g, int64_t r, int64_t c0, int nc, int64_t py,
                             int64_t px, AxisRange ys, AxisRange xs, acc_t<T>* acc) const {
    using A = acc_t<T>;
    A local[kChannelGroup];
#pragma unroll
    for (int cc = 0; cc < kChannelGroup; ++cc) local[cc] = A(0);
    const T* gb = grad + (r * channels + c0) * bins;
    roi_align_pixel_weights(g, py, px, ys.b, ys.e, xs.b, xs.e, [&](int64_t bin, G w) {
#pragma unroll
      for (int cc = 0; cc < kChannelGroup; ++cc)
        if (cc < nc)
          local[cc] += roi_align_grad_term(static_cast<A>(gb[cc * bins + bin]), w, g.count);
    });
#pragma unroll
    for (int cc = 0; cc < kChannelGroup; ++cc) acc[cc] += local[cc];
  }
};

// The block's shared state for one gather tile.
template <typename Geom>
struct GatherShared {
  int list[kThreads];
  int warp_counts[kWarps];
  Geom geom[kRangeBatch];
  AxisRange ys[kRangeBatch][kTileH];
  AxisRange xs[kRangeBatch][kTileW];
};

// Order-preserving compaction of RoIs [base, min(base + kThreads, K)) whose footprint key
// is `key` and meets the tile at (ty0, tx0): their indices land in list[0, count) in
// increasing order. Every thread of the block must call it (it synchronises the block).
__device__ inline int compact_rois(const Footprint* fps, int64_t K, int64_t base, int64_t key,
                                   int64_t ty0, int64_t tx0, int* list, int* warp_counts) {
  const int tid = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int64_t r = base + tid;
  bool hit = false;
  if (r < K) {
    const Footprint f = fps[r];
    hit = f.batch == key && f.y0 < ty0 + kTileH && f.y1 > ty0 && f.x0 < tx0 + kTileW &&
          f.x1 > tx0;
  }
  const unsigned mask = __ballot_sync(0xffffffffu, hit);
  if (lane == 0) warp_counts[warp] = __popc(mask);
  __syncthreads();
  int offset = 0, count = 0;
  for (int w = 0; w < kWarps; ++w) {
    if (w < warp) offset += warp_counts[w];
    count += warp_counts[w];
  }
  if (hit) list[offset + __popc(mask & ((1u << lane) - 1u))] = static_cast<int>(r);
  __syncthreads();
  return count;
}

// One gather tile: pixels [ty0, ty0 + kTileH) x [tx0, tx0 + kTileW) of image n (plane size
// H x W, C channels; channels [c_slab, c_slab + kSlab)) sum, in slot order, what the slots
// [s0, s1) whose footprint key is `key` send them, and write the sums to `out` (the
// [N, C, H, W] gradient). Bit-identical to the CPU's deterministic backward, which adds the
// same per-RoI terms in the same order. Every thread of the block must call it.
template <typename T, typename Geom, typename Op>
__device__ void gather_tile(const Geom* geoms, const Footprint* fps, int64_t s0, int64_t s1,
                            int64_t key, int64_t n, int64_t C, int64_t H, int64_t W,
                            int64_t c_slab, int64_t ty0, int64_t tx0, const Op& op, T* out,
                            GatherShared<Geom>& sh) {
  using A = acc_t<T>;
  const int tx = threadIdx.x, ty = threadIdx.y, tz = threadIdx.z;
  const int tid = (tz * kTileH + ty) * kTileW + tx;
  const int64_t py = ty0 + ty, px = tx0 + tx;
  const int64_t c0 = c_slab + int64_t(tz) * kChannelGroup;
  const int nc = static_cast<int>(max_(min_(int64_t(kChannelGroup), C - c0), int64_t(0)));
  const bool active = py < H && px < W && nc > 0;
  A acc[kChannelGroup];
#pragma unroll
  for (int cc = 0; cc < kChannelGroup; ++cc) acc[cc] = A(0);
  for (int64_t base = s0; base < s1; base += kThreads) {
    const int count = compact_rois(fps, s1, base, key, ty0, tx0, sh.list, sh.warp_counts);
    for (int j0 = 0; j0 < count; j0 += kRangeBatch) {
      const int jn = min_(kRangeBatch, count - j0);
      if (tid < jn) sh.geom[tid] = geoms[sh.list[j0 + tid]];
      __syncthreads();
      for (int item = tid; item < jn * (kTileH + kTileW); item += kThreads) {
        const int j = item / (kTileH + kTileW), a = item % (kTileH + kTileW);
        if (a < kTileH)
          sh.ys[j][a] = op.rows(sh.geom[j], ty0 + a);
        else
          sh.xs[j][a - kTileH] = op.cols(sh.geom[j], tx0 + (a - kTileH));
      }
      __syncthreads();
      if (active)
        for (int j = 0; j < jn; ++j)
          op(sh.geom[j], sh.list[j0 + j], c0, nc, py, px, sh.ys[j][ty], sh.xs[j][tx], acc);
      __syncthreads();  // the tile data and the list are rewritten next
    }
  }
  if (active) {
#pragma unroll
    for (int cc = 0; cc < kChannelGroup; ++cc)
      if (cc < nc) out[((n * C + c0 + cc) * H + py) * W + px] = static_cast<T>(acc[cc]);
  }
}

// Gather jobs of one plane size: (tile, image, channel slab).
struct TileJob {
  int64_t n, c_slab, ty0, tx0;
};
__device__ inline TileJob tile_job(int64_t job, int64_t batch, int64_t C, int64_t H,
                                   int64_t W) {
  const int64_t tiles_x = (W + kTileW - 1) / kTileW;
  const int64_t tiles = tiles_x * ((H + kTileH - 1) / kTileH);
  const int64_t slabs = (C + kSlab - 1) / kSlab;
  const int64_t tile = job % tiles, ns = job / tiles;
  (void)batch;
  return {ns / slabs, ns % slabs * kSlab, tile / tiles_x * kTileH, tile % tiles_x * kTileW};
}
SEGOPS_HOST_DEVICE int64_t tile_jobs(int64_t batch, int64_t C, int64_t H, int64_t W) {
  const int64_t tiles = ((W + kTileW - 1) / kTileW) * ((H + kTileH - 1) / kTileH);
  return tiles * batch * ((C + kSlab - 1) / kSlab);
}
inline unsigned int grid_for_jobs(int64_t jobs) {
  return static_cast<unsigned int>(jobs < 1 ? 1 : (jobs > (1 << 20) ? (1 << 20) : jobs));
}
inline dim3 gather_block() { return dim3(kTileW, kTileH, kGroups); }

}  // namespace
}  // namespace cuda
}  // namespace segops
