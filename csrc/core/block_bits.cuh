// Bit tricks and a block-wide search on warp ballots, shared by the cluster and patches
// kernels.
#pragma once

#include <cuda_runtime.h>

namespace segops {
namespace cuda {

// Index of the lowest set bit of v != 0 (__ffs(v) - 1, from __popc only).
__device__ __forceinline__ int lowest_bit(unsigned v) { return __popc((v & (0u - v)) - 1u); }

__device__ __forceinline__ unsigned lanes_below(int lane) { return (1u << lane) - 1u; }

// Block-wide, called by every thread of a block of kWarps whole warps: the lowest thread
// index with `pred`, or -1. warp_first: shared memory for kWarps ints.
template <int kWarps>
__device__ inline int block_first(bool pred, int* warp_first) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned b = __ballot_sync(0xffffffffu, pred);
  if (lane == 0) warp_first[warp] = b ? warp * 32 + lowest_bit(b) : -1;
  __syncthreads();
  int first = -1;
  for (int w = kWarps - 1; w >= 0; --w)
    if (warp_first[w] >= 0) first = warp_first[w];
  __syncthreads();
  return first;
}

}  // namespace cuda
}  // namespace segops
