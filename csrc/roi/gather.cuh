// Pieces of the RoI CUDA kernels shared by roi_kernel.cu and roi_multilevel_kernel.cu
// (torch-free): launch shapes, per-RoI footprints and scratch layout, the deterministic
// gather's order-preserving RoI compaction, and roi_align's per-RoI gather step.
#pragma once

#include "common/roi_align.h"
#include "core/half.cuh"

namespace segops {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kTileW = 32, kTileH = 8;  // gather tile: kTileW * kTileH == kThreads
constexpr int kWarps = kThreads / 32;
constexpr int kChannelGroup = 8;         // channels per gather thread

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

// Adds to acc[0..nc) what RoI r sends pixel (py, px) of channels c0..c0+nc.
template <typename T, typename G>
struct RoIAlignGather {
  const T* grad;
  int64_t channels, bins;
  __device__ void operator()(const RoIAlignGeometry<G>& g, int64_t r, int64_t c0, int nc,
                             int64_t py, int64_t px, acc_t<T>* acc) const {
    using A = acc_t<T>;
    A local[kChannelGroup];
#pragma unroll
    for (int cc = 0; cc < kChannelGroup; ++cc) local[cc] = A(0);
    const T* gb = grad + (r * channels + c0) * bins;
    roi_align_pixel_weights(g, py, px, [&](int64_t bin, G w) {
#pragma unroll
      for (int cc = 0; cc < kChannelGroup; ++cc)
        if (cc < nc)
          local[cc] += roi_align_grad_term(static_cast<A>(gb[cc * bins + bin]), w, g.count);
    });
#pragma unroll
    for (int cc = 0; cc < kChannelGroup; ++cc) acc[cc] += local[cc];
  }
};

// Order-preserving compaction of RoIs [base, min(base + kThreads, K)) of image n (footprint
// batch == n) whose footprint meets the tile: their indices land in list[0, count) in
// increasing order. Every thread of the block must call it (it synchronises the block).
__device__ inline int compact_rois(const Footprint* fps, int64_t K, int64_t base, int64_t n,
                                   int64_t ty0, int64_t tx0, int* list, int* warp_counts) {
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int64_t r = base + tid;
  bool hit = false;
  if (r < K) {
    const Footprint f = fps[r];
    hit = f.batch == n && f.y0 < ty0 + kTileH && f.y1 > ty0 && f.x0 < tx0 + kTileW && f.x1 > tx0;
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

}  // namespace
}  // namespace cuda
}  // namespace segops
