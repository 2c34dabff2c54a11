// RoI family CUDA kernels (torch-free): roi_align and roi_pool, forward and backward
// (multilevel_roi_align: multilevel_kernels.cu; shared pieces: gather.cuh). The cost model
// is docs/cost_model/roi.md.
//
// Per-element math comes from csrc/common, the same functions the CPU kernels call.
// Backward has two forms:
//  * atomic: one thread per output-gradient element scatters into a float/double
//    accumulator (half types never accumulate in half);
//  * gather (deterministic mode): a block per 8x4-pixel tile, image and 64-channel slab;
//    each thread owns one pixel and 8 channels and sums, in RoI index order, what each RoI
//    sends it. RoIs are culled per tile with an order-preserving block compaction, and the
//    samples that touch each tile row and column are found once per RoI and tile (not per
//    pixel and channel group). No float atomics; bit-identical to the CPU's deterministic
//    mode.
// Every kernel that reads rois[:, 0] asserts, on the device, that it names an image of the
// batch; the glue does not read the indices back.
#include "common/roi_align.h"
#include "common/roi_pool.h"
#include "core/half.cuh"
#include "roi/gather.cuh"
#include "roi/launch.h"

namespace segops {
namespace cuda {
namespace {

// ---------------------------------------------------------------- roi_align

template <typename G>
__global__ void roi_align_geometry_kernel(const G* rois, RoIArgs a, RoIAlignGeometry<G>* geoms,
                                          Footprint* fps) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < a.rois;
       k += int64_t(gridDim.x) * blockDim.x) {
    assert_batch_index(rois + k * 5, a.batch);
    const RoIAlignGeometry<G> g = roi_align_geometry<G>(
        rois + k * 5, static_cast<G>(a.spatial_scale), a.pooled_h, a.pooled_w,
        a.sampling_ratio, a.aligned, a.batch, a.height, a.width);
    geoms[k] = g;
    Footprint f;
    f.batch = g.empty ? -1 : g.batch;
    g.y.footprint(f.y0, f.y1);
    g.x.footprint(f.x0, f.x1);
    fps[k] = f;
  }
}

template <typename T, typename G>
__global__ void roi_align_forward_kernel(const T* input, const RoIAlignGeometry<G>* geoms,
                                         RoIArgs a, T* out) {
  const int64_t bins = a.pooled_h * a.pooled_w;
  const int64_t total = a.rois * a.channels * bins;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pw = i % a.pooled_w, ph = i / a.pooled_w % a.pooled_h;
    const int64_t c = i / bins % a.channels, k = i / bins / a.channels;
    const RoIAlignGeometry<G> g = geoms[k];
    acc_t<T> v = acc_t<T>(0);
    if (!g.empty)
      v = roi_align_bin<T, G>(input + (g.batch * a.channels + c) * a.height * a.width, g, ph, pw);
    out[i] = static_cast<T>(v);
  }
}

template <typename T, typename G>
__global__ void roi_align_backward_atomic_kernel(const T* grad, const RoIAlignGeometry<G>* geoms,
                                                 RoIArgs a, acc_t<T>* acc) {
  using A = acc_t<T>;
  const int64_t bins = a.pooled_h * a.pooled_w;
  const int64_t total = a.rois * a.channels * bins;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pw = i % a.pooled_w, ph = i / a.pooled_w % a.pooled_h;
    const int64_t c = i / bins % a.channels, k = i / bins / a.channels;
    const RoIAlignGeometry<G> g = geoms[k];
    if (g.empty) continue;
    A* plane = acc + (g.batch * a.channels + c) * a.height * a.width;
    roi_align_bin_scatter(g, ph, pw, static_cast<A>(grad[i]),
                          [&](int64_t off, A v) { atomicAdd(plane + off, v); });
  }
}

// ---------------------------------------------------------------- roi_pool

template <typename G>
__device__ RoIPoolGeometry<G> roi_pool_geometry_at(const G* rois, const RoIArgs& a, int64_t k) {
  return roi_pool_geometry<G>(rois + k * 5, static_cast<G>(a.spatial_scale), a.pooled_h,
                              a.pooled_w, a.batch, a.height, a.width);
}

template <typename G>
__global__ void roi_pool_geometry_kernel(const G* rois, RoIArgs a, RoIPoolGeometry<G>* geoms,
                                         Footprint* fps) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < a.rois;
       k += int64_t(gridDim.x) * blockDim.x) {
    assert_batch_index(rois + k * 5, a.batch);
    const RoIPoolGeometry<G> g = roi_pool_geometry_at(rois, a, k);
    geoms[k] = g;
    Footprint f;
    f.batch = g.batch;
    roi_pool_footprint(g, f.y0, f.y1, f.x0, f.x1);
    fps[k] = f;
  }
}

template <typename T, typename G>
__global__ void roi_pool_forward_kernel(const T* input, const G* rois, RoIArgs a, T* out,
                                        int64_t* argmax) {
  const int64_t bins = a.pooled_h * a.pooled_w;
  const int64_t total = a.rois * a.channels * bins;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pw = i % a.pooled_w, ph = i / a.pooled_w % a.pooled_h;
    const int64_t c = i / bins % a.channels, k = i / bins / a.channels;
    assert_batch_index(rois + k * 5, a.batch);
    const RoIPoolGeometry<G> g = roi_pool_geometry_at(rois, a, k);
    int64_t am = -1;
    acc_t<T> v = acc_t<T>(0);
    if (g.batch >= 0)
      v = roi_pool_bin<T, G>(input + (g.batch * a.channels + c) * a.height * a.width, g, ph, pw,
                             am);
    out[i] = static_cast<T>(v);
    argmax[i] = am;
  }
}

template <typename T, typename G>
__global__ void roi_pool_backward_atomic_kernel(const T* grad, const int64_t* argmax,
                                                const G* rois, RoIArgs a, acc_t<T>* acc) {
  using A = acc_t<T>;
  const int64_t bins = a.pooled_h * a.pooled_w;
  const int64_t total = a.rois * a.channels * bins;
  const int64_t plane = a.height * a.width;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t idx = argmax[i];
    if (idx < 0 || idx >= plane) continue;
    const int64_t c = i / bins % a.channels, k = i / bins / a.channels;
    assert_batch_index(rois + k * 5, a.batch);
    const int64_t n = roi_pool_geometry_at(rois, a, k).batch;
    if (n < 0) continue;
    atomicAdd(acc + (n * a.channels + c) * plane + idx, static_cast<A>(grad[i]));
  }
}

template <typename T, typename G>
struct RoIPoolGather {
  using Geom = RoIPoolGeometry<G>;
  const T* grad;
  const int64_t* argmax;
  int64_t channels, bins;
  __device__ AxisRange rows(const Geom& g, int64_t py) const {
    AxisRange r{0, 0};
    if (g.batch >= 0) rows_containing(g, py, r.b, r.e);
    return r;
  }
  __device__ AxisRange cols(const Geom& g, int64_t px) const {
    AxisRange r{0, 0};
    if (g.batch >= 0) cols_containing(g, px, r.b, r.e);
    return r;
  }
  __device__ void operator()(const Geom& g, int64_t r, int64_t c0, int nc, int64_t py,
                             int64_t px, AxisRange ys, AxisRange xs, acc_t<T>* acc) const {
#pragma unroll
    for (int cc = 0; cc < kChannelGroup; ++cc) {
      if (cc < nc) {
        const int64_t o = (r * channels + c0 + cc) * bins;
        acc[cc] += roi_pool_grad_at<T, G>(grad + o, argmax + o, g, py, px, ys.b, ys.e, xs.b,
                                          xs.e);
      }
    }
  }
};

// ---------------------------------------------------------------- deterministic gather

// One block per (tile, image, channel slab) job (gather.cuh's gather_tile).
template <typename T, typename Geom, typename Op>
// No __launch_bounds__: with it ptxas caps the registers low enough to spill (sm_90).
__global__ void gather_backward_kernel(const Geom* geoms, const Footprint* fps, RoIArgs a, Op op, T* out) {
  __shared__ GatherShared<Geom> sh;
  const int64_t jobs = tile_jobs(a.batch, a.channels, a.height, a.width);
  for (int64_t job = blockIdx.x; job < jobs; job += gridDim.x) {
    const TileJob j = tile_job(job, a.batch, a.channels, a.height, a.width);
    gather_tile<T, Geom, Op>(geoms, fps, 0, a.rois, j.n, j.n, a.channels, a.height, a.width,
                             j.c_slab, j.ty0, j.tx0, op, out, sh);
  }
}

unsigned int gather_blocks(const RoIArgs& a) {
  return grid_for_jobs(tile_jobs(a.batch, a.channels, a.height, a.width));
}

// The batch index check alone, for calls with nothing else to compute.
template <typename G>
__global__ void check_batch_kernel(const G* rois, int64_t K, int64_t batch) {
  SEGOPS_GRID_STRIDE(k, K) { assert_batch_index(rois + k * 5, batch); }
}

}  // namespace

int64_t roi_align_scratch_bytes(Dtype dtype, int64_t rois) {
  const int64_t g = dtype == Dtype::Float64 ? sizeof(RoIAlignGeometry<double>)
                                            : sizeof(RoIAlignGeometry<float>);
  return rois * (g + int64_t(sizeof(Footprint)));
}

int64_t roi_pool_scratch_bytes(Dtype dtype, int64_t rois) {
  const int64_t g = dtype == Dtype::Float64 ? sizeof(RoIPoolGeometry<double>)
                                            : sizeof(RoIPoolGeometry<float>);
  return rois * (g + int64_t(sizeof(Footprint)));
}

namespace {

template <typename G>
void launch_roi_align_geometry(const RoIArgs& a, const void* rois, void* scratch,
                               cudaStream_t stream) {
  using Geom = RoIAlignGeometry<G>;
  roi_align_geometry_kernel<G><<<blocks_for(a.rois, kThreads), kThreads, 0, stream>>>(
      static_cast<const G*>(rois), a, geometry_of<Geom>(scratch),
      footprints_of<Geom>(scratch, a.rois));
}

}  // namespace

cudaError_t roi_align_forward(Dtype dtype, const RoIArgs& a, const void* input,
                              const void* rois, void* scratch, void* output,
                              cudaStream_t stream) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using G = geom_t<T>;
    launch_roi_align_geometry<G>(a, rois, scratch, stream);
    const int64_t total = a.rois * a.channels * a.pooled_h * a.pooled_w;
    roi_align_forward_kernel<T, G><<<blocks_for(total, kThreads), kThreads, 0, stream>>>(
        static_cast<const T*>(input), geometry_of<RoIAlignGeometry<G>>(scratch), a,
        static_cast<T*>(output));
  });
}

cudaError_t roi_align_backward_atomic(Dtype dtype, const RoIArgs& a, const void* grad,
                                      const void* rois, void* scratch, void* grad_input_acc,
                                      cudaStream_t stream) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using G = geom_t<T>;
    launch_roi_align_geometry<G>(a, rois, scratch, stream);
    const int64_t total = a.rois * a.channels * a.pooled_h * a.pooled_w;
    roi_align_backward_atomic_kernel<T, G><<<blocks_for(total, kThreads), kThreads, 0, stream>>>(
        static_cast<const T*>(grad), geometry_of<RoIAlignGeometry<G>>(scratch), a,
        static_cast<acc_t<T>*>(grad_input_acc));
  });
}

cudaError_t roi_align_backward_gather(Dtype dtype, const RoIArgs& a, const void* grad,
                                      const void* rois, void* scratch, void* grad_input,
                                      cudaStream_t stream) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using G = geom_t<T>;
    using Geom = RoIAlignGeometry<G>;
    launch_roi_align_geometry<G>(a, rois, scratch, stream);
    const RoIAlignGather<T, G> op{static_cast<const T*>(grad), a.channels,
                                  a.pooled_h * a.pooled_w};
    gather_backward_kernel<T, Geom, RoIAlignGather<T, G>>
        <<<gather_blocks(a), gather_block(), 0, stream>>>(
            geometry_of<Geom>(scratch), footprints_of<Geom>(scratch, a.rois), a, op,
            static_cast<T*>(grad_input));
  });
}

cudaError_t roi_pool_forward(Dtype dtype, const RoIArgs& a, const void* input, const void* rois,
                             void* output, int64_t* argmax, cudaStream_t stream) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using G = geom_t<T>;
    const int64_t total = a.rois * a.channels * a.pooled_h * a.pooled_w;
    roi_pool_forward_kernel<T, G><<<blocks_for(total, kThreads), kThreads, 0, stream>>>(
        static_cast<const T*>(input), static_cast<const G*>(rois), a, static_cast<T*>(output),
        argmax);
  });
}

cudaError_t roi_pool_backward_atomic(Dtype dtype, const RoIArgs& a, const void* grad,
                                     const int64_t* argmax, const void* rois,
                                     void* grad_input_acc, cudaStream_t stream) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using G = geom_t<T>;
    const int64_t total = a.rois * a.channels * a.pooled_h * a.pooled_w;
    roi_pool_backward_atomic_kernel<T, G><<<blocks_for(total, kThreads), kThreads, 0, stream>>>(
        static_cast<const T*>(grad), argmax, static_cast<const G*>(rois), a,
        static_cast<acc_t<T>*>(grad_input_acc));
  });
}

cudaError_t roi_pool_backward_gather(Dtype dtype, const RoIArgs& a, const void* grad,
                                     const int64_t* argmax, const void* rois, void* scratch,
                                     void* grad_input, cudaStream_t stream) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using G = geom_t<T>;
    using Geom = RoIPoolGeometry<G>;
    roi_pool_geometry_kernel<G><<<blocks_for(a.rois, kThreads), kThreads, 0, stream>>>(
        static_cast<const G*>(rois), a, geometry_of<Geom>(scratch),
        footprints_of<Geom>(scratch, a.rois));
    const RoIPoolGather<T, G> op{static_cast<const T*>(grad), argmax, a.channels,
                                 a.pooled_h * a.pooled_w};
    gather_backward_kernel<T, Geom, RoIPoolGather<T, G>>
        <<<gather_blocks(a), gather_block(), 0, stream>>>(
            geometry_of<Geom>(scratch), footprints_of<Geom>(scratch, a.rois), a, op,
            static_cast<T*>(grad_input));
  });
}

cudaError_t roi_check_batch_indices(bool f64, const void* rois, int64_t K, int64_t batch,
                                    cudaStream_t stream) {
  if (K > 0) {
    if (f64)
      check_batch_kernel<double><<<blocks_for(K, kThreads), kThreads, 0, stream>>>(
          static_cast<const double*>(rois), K, batch);
    else
      check_batch_kernel<float><<<blocks_for(K, kThreads), kThreads, 0, stream>>>(
          static_cast<const float*>(rois), K, batch);
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace segops
