// Cluster family launchers (torch-free). Pointers are device pointers to contiguous data;
// A is the compute dtype (float, or double for Float64 data).
#pragma once

#include "core/launch.h"

namespace segops {
namespace cuda {

struct ClusterArgs {
  int64_t height, width, n_sigma, min_pixels, max_instances;  // max_instances -1: unbounded
  double threshold, seed_threshold;
  int64_t grid;  // buckets per axis of the embedding grid
};

// Per pixel: ex, ey, sx, sy, seed ([5, H*W], A) and the sort keys: seed_key = seed for
// masked pixels, -1 otherwise; valid = masked with a finite embedding.
cudaError_t cluster_prepare(bool is_double, const ClusterArgs& a, const void* prediction,
                            const void* xs, const void* ys, void* pixels, void* seed_key,
                            bool* valid, cudaStream_t stream);

// bucket_key[i] = bucket of pixel i on the grid over bbox = (x0, x1, y0, y1) (valid pixels),
// grid * grid for the others.
cudaError_t cluster_bucket_keys(bool is_double, const ClusterArgs& a, const void* pixels,
                                const bool* valid, const void* bbox, int64_t* bucket_key,
                                cudaStream_t stream);

// The greedy loop, on one block. order: raster indices by seed, descending (stable);
// bucket_pixels / bucket_start: raster indices grouped by bucket and each bucket's offset
// ([grid * grid + 1]); masked: number of masked pixels (device scalar). Writes the map
// (zeroed by the caller), scores (capacity as allocated) and count.
cudaError_t cluster_loop(bool is_double, const ClusterArgs& a, const void* pixels,
                         const int64_t* order, const int64_t* masked, const int64_t* bucket_pixels,
                         const int64_t* bucket_start, const void* bbox, uint8_t* clustered,
                         int32_t* stamp, int32_t* instance_map, void* scores, int64_t* count,
                         cudaStream_t stream);

}  // namespace cuda
}  // namespace segops
