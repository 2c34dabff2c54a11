// multilevel_roi_align CUDA kernels (torch-free): one launch per step over every level.
//
// The work is split into "slots" (csrc/common/roi_levels.h): RoI k at its assigned level,
// or RoI k at level l with all_levels. A geometry kernel computes each slot's level, its
// roi_align geometry and its footprint once; then, as roi_kernel.cu does for roi_align:
//  * forward: one thread per output element, roi_align_bin over its level's plane;
//  * backward, atomic: one thread per output-gradient element scatters into its level's
//    float/double accumulator;
//  * backward, gather (deterministic mode): one block per (level, tile, image, channel
//    group); each pixel sums, in slot order, what the slots of its level send it. Footprints
//    are keyed by level * N + image so that roi_gather.cuh's compaction culls by both.
//    Bit-identical to the CPU's deterministic mode, which sums the same terms in the same
//    order.
// Every level decision and geometry comes from the functions the CPU kernels call.
#include "common/roi_align.h"
#include "common/roi_levels.h"
#include "core/half.cuh"
#include "roi/launch.h"
#include "roi/gather.cuh"

namespace segops {
namespace cuda {
namespace {

// Where each level's gather jobs begin: level l owns jobs [begin[l], begin[l + 1]).
struct LevelJobs {
  int64_t begin[kMaxRoILevels + 1];
};

template <typename Geom>
int64_t* levels_of(void* scratch, int64_t slots) {
  return reinterpret_cast<int64_t*>(footprints_of<Geom>(scratch, slots) + slots);
}

template <typename G>
__global__ void multilevel_geometry_kernel(const G* rois, MultiLevelRoIAlign p,
                                           RoIAlignGeometry<G>* geoms, Footprint* fps,
                                           int64_t* levels) {
  const int64_t slots = p.slots();
  SEGOPS_GRID_STRIDE(s, slots) {
    int64_t level;
    const RoIAlignGeometry<G> g = p.geometry<G>(rois, s, level);
    geoms[s] = g;
    levels[s] = level;
    Footprint f;
    f.batch = g.empty ? -1 : level * p.batch + g.batch;
    g.y.footprint(f.y0, f.y1);
    g.x.footprint(f.x0, f.x1);
    fps[s] = f;
  }
}

template <typename T, typename G>
__global__ void multilevel_forward_kernel(RoILevelInputs input,
                                          const RoIAlignGeometry<G>* geoms,
                                          const int64_t* levels, MultiLevelRoIAlign p, T* out) {
  const int64_t bins = p.pooled_h * p.pooled_w;
  const int64_t total = p.slots() * p.channels * bins;
  SEGOPS_GRID_STRIDE(i, total) {
    const int64_t pw = i % p.pooled_w, ph = i / p.pooled_w % p.pooled_h;
    const int64_t c = i / bins % p.channels, s = i / bins / p.channels;
    const RoIAlignGeometry<G> g = geoms[s];
    acc_t<T> v = acc_t<T>(0);
    if (!g.empty) {
      const int64_t l = levels[s];
      const T* plane = static_cast<const T*>(input.p[l]) +
                       (g.batch * p.channels + c) * p.height[l] * p.width[l];
      v = roi_align_bin<T, G>(plane, g, ph, pw);
    }
    out[i] = static_cast<T>(v);
  }
}

template <typename T, typename G>
__global__ void multilevel_backward_atomic_kernel(const T* grad,
                                                  const RoIAlignGeometry<G>* geoms,
                                                  const int64_t* levels, MultiLevelRoIAlign p,
                                                  RoILevelOutputs acc) {
  using A = acc_t<T>;
  const int64_t bins = p.pooled_h * p.pooled_w;
  const int64_t total = p.slots() * p.channels * bins;
  SEGOPS_GRID_STRIDE(i, total) {
    const int64_t pw = i % p.pooled_w, ph = i / p.pooled_w % p.pooled_h;
    const int64_t c = i / bins % p.channels, s = i / bins / p.channels;
    const RoIAlignGeometry<G> g = geoms[s];
    if (g.empty) continue;
    const int64_t l = levels[s];
    A* plane = static_cast<A*>(acc.p[l]) + (g.batch * p.channels + c) * p.height[l] * p.width[l];
    roi_align_bin_scatter(g, ph, pw, static_cast<A>(grad[i]),
                          [&](int64_t off, A v) { atomicAdd(plane + off, v); });
  }
}

// One block per (level, tile, image, channel group) job; each thread owns one pixel of the
// tile and kChannelGroup channels, and adds the contributions of its level's slots in slot
// order (gather_backward_kernel of roi_kernel.cu, over every level at once).
template <typename T, typename G>
__global__ void __launch_bounds__(kThreads)
    multilevel_gather_kernel(const RoIAlignGeometry<G>* geoms, const Footprint* fps,
                             MultiLevelRoIAlign p, LevelJobs jobs, RoIAlignGather<T, G> op,
                             RoILevelOutputs out) {
  using A = acc_t<T>;
  __shared__ int list[kThreads];
  __shared__ int warp_counts[kWarps];
  const int64_t groups = (p.channels + kChannelGroup - 1) / kChannelGroup;
  const int64_t total = jobs.begin[p.levels];
  for (int64_t job = blockIdx.x; job < total; job += gridDim.x) {
    int64_t l = 0;
    while (job >= jobs.begin[l + 1]) ++l;
    const int64_t H = p.height[l], W = p.width[l];
    const int64_t tiles_x = (W + kTileW - 1) / kTileW;
    const int64_t tiles = tiles_x * ((H + kTileH - 1) / kTileH);
    const int64_t local = job - jobs.begin[l];
    const int64_t tile = local % tiles, ng = local / tiles;
    const int64_t n = ng / groups, c0 = ng % groups * kChannelGroup;
    const int nc = static_cast<int>(min_(int64_t(kChannelGroup), p.channels - c0));
    const int64_t ty0 = tile / tiles_x * kTileH, tx0 = tile % tiles_x * kTileW;
    const int64_t py = ty0 + threadIdx.y, px = tx0 + threadIdx.x;
    const bool inside = py < H && px < W;
    A acc[kChannelGroup];
#pragma unroll
    for (int cc = 0; cc < kChannelGroup; ++cc) acc[cc] = A(0);
    // Level l's slots lie in [l K, (l + 1) K) with all_levels, else among [0, K).
    const int64_t s0 = p.all_levels ? l * p.rois : 0, s1 = s0 + p.rois;
    const int64_t key = l * p.batch + n;
    for (int64_t base = s0; base < s1; base += kThreads) {
      const int count = compact_rois(fps, s1, base, key, ty0, tx0, list, warp_counts);
      if (inside)
        for (int j = 0; j < count; ++j) {
          const int64_t r = list[j];
          op(geoms[r], r, c0, nc, py, px, acc);
        }
      __syncthreads();  // list is rewritten by the next compaction
    }
    if (inside) {
      T* o = static_cast<T*>(out.p[l]);
      for (int cc = 0; cc < nc; ++cc)
        o[((n * p.channels + c0 + cc) * H + py) * W + px] = static_cast<T>(acc[cc]);
    }
  }
}

LevelJobs gather_jobs(const MultiLevelRoIAlign& p) {
  LevelJobs j{};
  const int64_t groups = (p.channels + kChannelGroup - 1) / kChannelGroup;
  for (int64_t l = 0; l < p.levels; ++l) {
    const int64_t tiles =
        ((p.width[l] + kTileW - 1) / kTileW) * ((p.height[l] + kTileH - 1) / kTileH);
    j.begin[l + 1] = j.begin[l] + tiles * p.batch * groups;
  }
  return j;
}

template <typename G>
void launch_multilevel_geometry(const MultiLevelRoIAlign& p, const void* rois, void* scratch,
                                cudaStream_t stream) {
  using Geom = RoIAlignGeometry<G>;
  const int64_t slots = p.slots();
  multilevel_geometry_kernel<G><<<blocks_for(slots, kThreads), kThreads, 0, stream>>>(
      static_cast<const G*>(rois), p, geometry_of<Geom>(scratch),
      footprints_of<Geom>(scratch, slots), levels_of<Geom>(scratch, slots));
}

}  // namespace

int64_t multilevel_roi_align_scratch_bytes(Dtype dtype, int64_t slots) {
  const int64_t g = dtype == Dtype::Float64 ? sizeof(RoIAlignGeometry<double>)
                                            : sizeof(RoIAlignGeometry<float>);
  return slots * (g + int64_t(sizeof(Footprint)) + int64_t(sizeof(int64_t)));
}

cudaError_t multilevel_roi_align_forward(Dtype dtype, const MultiLevelRoIAlign& p,
                                         const RoILevelInputs& input, const void* rois,
                                         void* scratch, void* output, cudaStream_t stream) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using G = geom_t<T>;
    using Geom = RoIAlignGeometry<G>;
    launch_multilevel_geometry<G>(p, rois, scratch, stream);
    const int64_t slots = p.slots();
    const int64_t total = slots * p.channels * p.pooled_h * p.pooled_w;
    multilevel_forward_kernel<T, G><<<blocks_for(total, kThreads), kThreads, 0, stream>>>(
        input, geometry_of<Geom>(scratch), levels_of<Geom>(scratch, slots), p,
        static_cast<T*>(output));
  });
}

cudaError_t multilevel_roi_align_backward_atomic(Dtype dtype, const MultiLevelRoIAlign& p,
                                                 const void* grad, const void* rois,
                                                 void* scratch,
                                                 const RoILevelOutputs& grad_input_acc,
                                                 cudaStream_t stream) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using G = geom_t<T>;
    using Geom = RoIAlignGeometry<G>;
    launch_multilevel_geometry<G>(p, rois, scratch, stream);
    const int64_t slots = p.slots();
    const int64_t total = slots * p.channels * p.pooled_h * p.pooled_w;
    multilevel_backward_atomic_kernel<T, G>
        <<<blocks_for(total, kThreads), kThreads, 0, stream>>>(
            static_cast<const T*>(grad), geometry_of<Geom>(scratch),
            levels_of<Geom>(scratch, slots), p, grad_input_acc);
  });
}

cudaError_t multilevel_roi_align_backward_gather(Dtype dtype, const MultiLevelRoIAlign& p,
                                                 const void* grad, const void* rois,
                                                 void* scratch,
                                                 const RoILevelOutputs& grad_input,
                                                 cudaStream_t stream) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using G = geom_t<T>;
    using Geom = RoIAlignGeometry<G>;
    launch_multilevel_geometry<G>(p, rois, scratch, stream);
    const LevelJobs jobs = gather_jobs(p);
    const int64_t total = jobs.begin[p.levels];
    const unsigned int blocks =
        static_cast<unsigned int>(total < 1 ? 1 : (total > (1 << 20) ? (1 << 20) : total));
    const RoIAlignGather<T, G> op{static_cast<const T*>(grad), p.channels,
                                  p.pooled_h * p.pooled_w};
    multilevel_gather_kernel<T, G><<<blocks, dim3(kTileW, kTileH), 0, stream>>>(
        geometry_of<Geom>(scratch), footprints_of<Geom>(scratch, p.slots()), p, jobs, op,
        grad_input);
  });
}

}  // namespace cuda
}  // namespace segops
