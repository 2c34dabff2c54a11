// Gaussian seed clustering, CUDA kernels (torch-free). The per-pixel math is
// csrc/common/cluster.h, as on the CPU. The greedy loop runs in one block that never
// returns to the host: the block finds the next seed in the seed order 1024 positions at a
// time (warp ballots), thread 0 takes it, and the block tests the pixels of the embedding
// buckets near it (as the CPU's EmbeddingGrid), counts them by warp ballots (one shared
// atomic per warp), decides, and writes, with __syncthreads between the phases
// (docs/cost_model/cluster.md).
#include "common/cluster.h"
#include "cluster/launch.h"
#include "core/block_bits.cuh"
#include "core/half.cuh"

namespace segops {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kLoopThreads = 1024;

template <typename A>
__global__ void prepare_kernel(const A* pred, const A* xs, const A* ys, ClusterArgs a, A* px,
                               A* seed_key, bool* valid) {
  const int64_t plane = a.height * a.width;
  const A* sig_y = pred + (a.n_sigma == 2 ? 3 : 2) * plane;
  const A* logit = pred + (2 + a.n_sigma) * plane;
  const A thr = static_cast<A>(a.seed_threshold);
  SEGOPS_GRID_STRIDE(i, plane) {
    const int64_t x = i % a.width, y = i / a.width;
    const A seed = sigmoid_(logit[i]);
    const A ex = embedding(pred[i], xs[x]), ey = embedding(pred[plane + i], ys[y]);
    const bool masked = seed > thr;
    px[i] = ex;
    px[plane + i] = ey;
    px[2 * plane + i] = pred[2 * plane + i];
    px[3 * plane + i] = sig_y[i];
    px[4 * plane + i] = seed;
    seed_key[i] = masked ? seed : A(-1);
    valid[i] = masked && ex == ex && ey == ey;
  }
}

// The embedding grid: origin and cell per axis from bbox (x0, x1, y0, y1).
struct Grid {
  double x0, y0, cx, cy;
  int64_t n;
  __device__ Grid(const double* bbox, int64_t n_) : n(n_) {
    double x1 = bbox[1], y1 = bbox[3];
    x0 = bbox[0];
    y0 = bbox[2];
    if (!(x0 <= x1)) x0 = x1 = y0 = y1 = 0;  // no valid pixel
    cx = fmax((x1 - x0) / static_cast<double>(n), 1e-9);
    cy = fmax((y1 - y0) / static_cast<double>(n), 1e-9);
  }
  __device__ static int64_t clamp_cell(double c, int64_t n) {
    if (!(c > 0)) return 0;
    return c >= static_cast<double>(n - 1) ? n - 1 : static_cast<int64_t>(c);
  }
  __device__ int64_t col(double v) const { return clamp_cell((v - x0) / cx, n); }
  __device__ int64_t row(double v) const { return clamp_cell((v - y0) / cy, n); }
};

template <typename A>
__global__ void bucket_kernel(const A* px, const bool* valid, ClusterArgs a, const double* bbox,
                              int64_t* key) {
  const int64_t plane = a.height * a.width;
  const Grid g(bbox, a.grid);
  SEGOPS_GRID_STRIDE(i, plane) {
    key[i] = valid[i] ? g.row(px[plane + i]) * g.n + g.col(px[i]) : g.n * g.n;
  }
}

constexpr int kLoopWarps = kLoopThreads / 32;

// Calls fn(k) for every position k of the bucket runs of rows by0..by1, columns bx0..bx1,
// kLoopThreads positions at a time, with k = -1 for the threads past a run's end: every
// lane of a warp makes the same calls, so fn can vote.
template <typename Fn>
__device__ void for_each_near(const int64_t* bucket_start, int64_t n, int64_t bx0, int64_t bx1,
                              int64_t by0, int64_t by1, Fn&& fn) {
  for (int64_t by = by0; by <= by1; ++by) {
    const int64_t begin = bucket_start[by * n + bx0], end = bucket_start[by * n + bx1 + 1];
    for (int64_t k0 = begin; k0 < end; k0 += kLoopThreads) {
      const int64_t k = k0 + threadIdx.x;
      fn(k < end ? k : int64_t(-1));
    }
  }
}

template <typename A>
__global__ void __launch_bounds__(kLoopThreads)
    loop_kernel(const A* px, const int64_t* order, const int64_t* masked,
                const int64_t* bucket_pixels, const int64_t* bucket_start, const double* bbox,
                ClusterArgs a, uint8_t* clustered, int32_t* stamp, int32_t* map, A* scores,
                int64_t* count) {
  const int64_t plane = a.height * a.width;
  const A *ex = px, *ey = px + plane, *sx = px + 2 * plane, *sy = px + 3 * plane,
          *seed = px + 4 * plane;
  const Grid g(bbox, a.grid);
  const int lane = threadIdx.x & 31;
  __shared__ int64_t next, unclustered, accepted, bx0, bx1, by0, by1;
  __shared__ unsigned long long n_prop, n_fresh, n_new;
  __shared__ bool done, take, scan;
  __shared__ A cx, cy, s_x, s_y, score;
  __shared__ int warp_first[kLoopWarps];
  if (threadIdx.x == 0) {
    next = 0;
    accepted = 0;
    unclustered = *masked;
    done = unclustered <= a.min_pixels || a.max_instances == 0;
  }
  __syncthreads();
  // Shared scalars are written by thread 0 only between barriers and read by all after one.
  for (int32_t iter = 0;; ++iter) {
    if (done) break;
    // The next seed: the first unclustered position of the seed order, searched
    // kLoopThreads positions at a time (one exists: more than min_pixels >= 0 masked pixels
    // are unclustered, and they precede every unmasked pixel in the order).
    int64_t found = -1;
    for (int64_t s0 = next; found < 0 && s0 < plane; s0 += kLoopThreads) {
      const int64_t k = s0 + threadIdx.x;
      const int f = block_first<kLoopWarps>(k < plane && !clustered[order[k]], warp_first);
      if (f >= 0) found = s0 + f;
    }
    if (threadIdx.x == 0) {
      next = found + 1;
      const int64_t j = order[found];
      score = seed[j];
      if (static_cast<double>(score) < a.threshold) {
        done = true;
      } else {
        clustered[j] = 1;
        --unclustered;
        cx = ex[j];
        cy = ey[j];
        s_x = bandwidth(sx[j]);
        s_y = a.n_sigma == 2 ? bandwidth(sy[j]) : s_x;
        scan = cx == cx && cy == cy;
        const double rx = proposal_radius(s_x), ry = proposal_radius(s_y);
        bx0 = g.col(cx - rx);
        bx1 = g.col(cx + rx);
        by0 = g.row(cy - ry);
        by1 = g.row(cy + ry);
        n_prop = n_fresh = n_new = 0;
      }
    }
    __syncthreads();
    if (done) break;
    // Pass 1: stamp the proposal and count it: a warp's counts from ballots, one shared
    // atomic per warp.
    unsigned long long prop = 0, fresh = 0;
    if (scan) {
      for_each_near(bucket_start, g.n, bx0, bx1, by0, by1, [&](int64_t k) {
        bool in = false, unseen = false;
        if (k >= 0) {
          const int64_t p = bucket_pixels[k];
          if (in_proposal(ex[p], ey[p], cx, cy, s_x, s_y)) {
            stamp[p] = iter;
            in = true;
            unseen = !clustered[p];
          }
        }
        prop += __popc(__ballot_sync(0xffffffffu, in));
        fresh += __popc(__ballot_sync(0xffffffffu, unseen));
      });
    }
    if (lane == 0 && prop) atomicAdd(&n_prop, prop);
    if (lane == 0 && fresh) atomicAdd(&n_fresh, fresh);
    __syncthreads();
    if (threadIdx.x == 0) {
      take = accept_proposal(static_cast<int64_t>(n_prop), static_cast<int64_t>(n_fresh),
                             a.min_pixels);
      if (take) scores[accepted++] = score;
    }
    __syncthreads();
    // Pass 2: write the id (if accepted) and cluster the proposal.
    unsigned long long added = 0;
    if (scan && n_prop) {
      const int32_t id = static_cast<int32_t>(accepted);
      for_each_near(bucket_start, g.n, bx0, bx1, by0, by1, [&](int64_t k) {
        bool fresh_pixel = false;
        if (k >= 0) {
          const int64_t p = bucket_pixels[k];
          if (stamp[p] == iter) {
            if (take) map[p] = id;
            fresh_pixel = !clustered[p];
            clustered[p] = 1;
          }
        }
        added += __popc(__ballot_sync(0xffffffffu, fresh_pixel));
      });
    }
    if (lane == 0 && added) atomicAdd(&n_new, added);
    __syncthreads();
    if (threadIdx.x == 0) {
      unclustered -= static_cast<int64_t>(n_new);
      done = unclustered <= a.min_pixels ||
             (a.max_instances >= 0 && accepted == a.max_instances);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) *count = accepted;
}

template <typename Fn>
cudaError_t dispatch_acc(bool is_double, Fn&& fn) {
  if (is_double)
    fn(double{});
  else
    fn(float{});
  return cudaGetLastError();
}

}  // namespace

cudaError_t cluster_prepare(bool is_double, const ClusterArgs& a, const void* prediction,
                            const void* xs, const void* ys, void* pixels, void* seed_key,
                            bool* valid, cudaStream_t stream) {
  return dispatch_acc(is_double, [&](auto tag) {
    using A = decltype(tag);
    prepare_kernel<A><<<blocks_for(a.height * a.width, kThreads), kThreads, 0, stream>>>(
        static_cast<const A*>(prediction), static_cast<const A*>(xs),
        static_cast<const A*>(ys), a, static_cast<A*>(pixels), static_cast<A*>(seed_key),
        valid);
  });
}

cudaError_t cluster_bucket_keys(bool is_double, const ClusterArgs& a, const void* pixels,
                                const bool* valid, const void* bbox, int64_t* bucket_key,
                                cudaStream_t stream) {
  return dispatch_acc(is_double, [&](auto tag) {
    using A = decltype(tag);
    bucket_kernel<A><<<blocks_for(a.height * a.width, kThreads), kThreads, 0, stream>>>(
        static_cast<const A*>(pixels), valid, a, static_cast<const double*>(bbox), bucket_key);
  });
}

cudaError_t cluster_loop(bool is_double, const ClusterArgs& a, const void* pixels,
                         const int64_t* order, const int64_t* masked, const int64_t* bucket_pixels,
                         const int64_t* bucket_start, const void* bbox, uint8_t* clustered,
                         int32_t* stamp, int32_t* instance_map, void* scores, int64_t* count,
                         cudaStream_t stream) {
  return dispatch_acc(is_double, [&](auto tag) {
    using A = decltype(tag);
    loop_kernel<A><<<1, kLoopThreads, 0, stream>>>(
        static_cast<const A*>(pixels), order, masked, bucket_pixels, bucket_start,
        static_cast<const double*>(bbox), a, clustered, stamp, instance_map,
        static_cast<A*>(scores), count);
  });
}

}  // namespace cuda
}  // namespace segops
