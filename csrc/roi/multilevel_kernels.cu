// multilevel_roi_align CUDA kernels (torch-free): one launch per step over every level.
//
// The work is split into "slots" (csrc/common/roi_levels.h): RoI k at its assigned level,
// or RoI k at level l with all_levels. A geometry kernel computes each slot's level, its
// roi_align geometry and its footprint once; then, as roi_kernel.cu does for roi_align:
//  * forward: one thread per output element, roi_align_bin over its level's plane;
//  * backward, atomic: one thread per output-gradient element scatters into its level's
//    float/double accumulator;
//  * backward, gather (deterministic mode): one block per (level, tile, image, channel
//    slab); each pixel sums, in slot order, what the slots of its level send it. Footprints
//    are keyed by level * N + image so that gather.cuh's compaction culls by both.
//    Bit-identical to the CPU's deterministic mode, which sums the same terms in the same
//    order.
// Every level decision and geometry comes from the functions the CPU kernels call. The
// per-level pointers and sizes travel by value and are read with gather.cuh's select (an
// indexed read of a parameter array would copy it to local memory).
#include "common/roi_align.h"
#include "common/roi_levels.h"
#include "core/half.cuh"
#include "roi/gather.cuh"
#include "roi/launch.h"

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
    assert_batch_index(rois + (p.all_levels ? s % p.rois : s) * 5, p.batch);
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
      const T* plane = static_cast<const T*>(select(input.p, levels[s])) +
                       (g.batch * p.channels + c) * g.y.size * g.x.size;
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
    A* plane = static_cast<A*>(select(acc.p, levels[s])) +
               (g.batch * p.channels + c) * g.y.size * g.x.size;
    roi_align_bin_scatter(g, ph, pw, static_cast<A>(grad[i]),
                          [&](int64_t off, A v) { atomicAdd(plane + off, v); });
  }
}

// One block per (level, tile, image, channel slab) job: gather.cuh's gather_tile over the
// slots of the job's level.
template <typename T, typename G>
// No __launch_bounds__: with it ptxas caps the registers low enough to spill (sm_90).
__global__ void multilevel_gather_kernel(const RoIAlignGeometry<G>* geoms, const Footprint* fps,
                             MultiLevelRoIAlign p, LevelJobs jobs, RoIAlignGather<T, G> op,
                             RoILevelOutputs out) {
  __shared__ GatherShared<RoIAlignGeometry<G>> sh;
  const int64_t total = select(jobs.begin, p.levels);
  for (int64_t job = blockIdx.x; job < total; job += gridDim.x) {
    int64_t l = 0;  // the job's level: how many levels begin at or before it
#pragma unroll
    for (int k = 1; k < kMaxRoILevels; ++k)
      l += k < p.levels && job >= jobs.begin[k];
    const int64_t H = select(p.height, l), W = select(p.width, l);
    const TileJob j = tile_job(job - select(jobs.begin, l), p.batch, p.channels, H, W);
    // Level l's slots lie in [l K, (l + 1) K) with all_levels, else among [0, K).
    const int64_t s0 = p.all_levels ? l * p.rois : 0;
    gather_tile<T, RoIAlignGeometry<G>, RoIAlignGather<T, G>>(
        geoms, fps, s0, s0 + p.rois, l * p.batch + j.n, j.n, p.channels, H, W, j.c_slab, j.ty0,
        j.tx0, op, static_cast<T*>(select(out.p, l)), sh);
  }
}

LevelJobs gather_jobs(const MultiLevelRoIAlign& p) {
  LevelJobs j{};
  for (int64_t l = 0; l < p.levels; ++l)
    j.begin[l + 1] = j.begin[l] + tile_jobs(p.batch, p.channels, p.height[l], p.width[l]);
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
    const RoIAlignGather<T, G> op{static_cast<const T*>(grad), p.channels,
                                  p.pooled_h * p.pooled_w};
    multilevel_gather_kernel<T, G>
        <<<grid_for_jobs(jobs.begin[p.levels]), gather_block(), 0, stream>>>(
        geometry_of<Geom>(scratch), footprints_of<Geom>(scratch, p.slots()), p, jobs, op,
        grad_input);
  });
}

}  // namespace cuda
}  // namespace segops
