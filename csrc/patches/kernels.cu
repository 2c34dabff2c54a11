// Patches family (BPR) CUDA kernels (torch-free). Rules from csrc/common/patches.h (and
// roi_align.h / masks.h for resampling), as on the CPU.
//
// Extraction: every pixel gets a sort key (its level); a stable device sort of each
// instance's row puts its candidates first, in the CPU's visiting order (level 4 to 1,
// raster order within);
// then one block per instance runs the greedy NMS: thread 0 walks the candidates, and each
// kept patch's suppressed offsets (row intervals) are marked by the whole block.
#include "common/masks.h"
#include "common/patches.h"
#include "common/roi_align.h"
#include "core/half.cuh"
#include "patches/launch.h"

namespace segops {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kNmsThreads = 256;

// Boundary level of pixel (y, x) of a mask: min(S, 9 - S) of its 3x3 sum, zero padding.
__device__ int pixel_level(const bool* m, int64_t h, int64_t w, int64_t y, int64_t x) {
  int s = 0;
  for (int64_t yy = y - 1; yy <= y + 1; ++yy)
    for (int64_t xx = x - 1; xx <= x + 1; ++xx)
      s += yy >= 0 && yy < h && xx >= 0 && xx < w && m[yy * w + xx];
  return boundary_level(s);
}

__global__ void keys_kernel(PatchArgs a, const bool* masks, uint8_t* key) {
  const int64_t plane = a.height * a.width, total = a.n * plane;
  SEGOPS_GRID_STRIDE(e, total) {
    const int64_t i = e / plane, y = (e % plane) / a.width, x = e % a.width;
    const int level = pixel_level(masks + i * plane, a.height, a.width, y, x);
    key[e] = static_cast<uint8_t>(level > 0 ? 4 - level : 4);
  }
}

__global__ void nms_kernel(PatchArgs a, int64_t* order, const int64_t* count,
                           uint8_t* suppressed, int64_t* kept) {
  extern __shared__ int64_t half_width[];
  const int64_t i = blockIdx.x, p = a.patch, plane = a.height * a.width;
  for (int64_t d = threadIdx.x; d < p; d += blockDim.x)
    half_width[d] = suppress_half_width(d, p, a.iou_threshold);
  __shared__ int64_t pos, keep, n_kept;
  __shared__ bool found;
  int64_t* row = order + i * plane;  // row-local pixel indices
  const int64_t end = count[i];
  uint8_t* sup = suppressed + i * plane;
  const bool suppress_all = 0.0 > a.iou_threshold;
  if (threadIdx.x == 0) {
    pos = 0;
    n_kept = 0;
  }
  __syncthreads();
  while (true) {
    if (threadIdx.x == 0) {
      found = false;
      while (pos < end) {
        const int64_t q = row[pos++];
        if (sup[q]) continue;
        found = true;
        keep = q;
        break;
      }
    }
    __syncthreads();
    if (!found) break;
    const int64_t cy = keep / a.width, cx = keep % a.width;
    if (threadIdx.x == 0) row[n_kept++] = keep;  // behind the scan position
    if (suppress_all) {
      if (threadIdx.x == 0) pos = end;
      __syncthreads();
      continue;
    }
    const int64_t rows = 2 * p - 1, cols = 2 * p - 1;
    for (int64_t t = threadIdx.x; t < rows * cols; t += blockDim.x) {
      const int64_t dy = t / cols - (p - 1), dx = t % cols - (p - 1);
      const int64_t hw = half_width[dy < 0 ? -dy : dy];
      const int64_t y = cy + dy, x = cx + dx;
      if ((dx < 0 ? -dx : dx) <= hw && y >= 0 && y < a.height && x >= 0 && x < a.width)
        sup[y * a.width + x] = 1;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) kept[i] = n_kept;
}

__global__ void write_kernel(PatchArgs a, const bool* masks, const int64_t* order,
                             const int64_t* kept, const int64_t* offsets, int64_t capacity,
                             int64_t* boxes, int64_t* instance_index, float* scores) {
  const int64_t i = blockIdx.x, plane = a.height * a.width;
  for (int64_t k = threadIdx.x; k < kept[i]; k += blockDim.x) {
    const int64_t row = offsets[i] + k;
    if (row >= capacity) break;
    const int64_t q = order[i * plane + k], y = q / a.width, x = q % a.width;
    const Span sx = shifted_patch(x, a.patch, a.width), sy = shifted_patch(y, a.patch, a.height);
    boxes[4 * row] = sx.lo;
    boxes[4 * row + 1] = sy.lo;
    boxes[4 * row + 2] = sx.hi;
    boxes[4 * row + 3] = sy.hi;
    instance_index[row] = i;
    scores[row] = boundary_score(pixel_level(masks + i * plane, a.height, a.width, y, x));
  }
}

template <typename T>
__global__ void crop_kernel(CropArgs a, const T* images, const bool* masks, const int64_t* boxes,
                            const int64_t* inst, const int64_t* batch, T* image_patches,
                            bool* mask_patches) {
  using G = acc_t<T>;
  const int64_t bins = a.out_h * a.out_w, total = a.patches * (a.channels + 1) * bins;
  SEGOPS_GRID_STRIDE(e, total) {
    const int64_t bin = e % bins, c = (e / bins) % (a.channels + 1), p = e / (bins * (a.channels + 1));
    const int64_t ph = bin / a.out_w, pw = bin % a.out_w;
    const int64_t* bb = boxes + 4 * p;
    const int64_t i = inst[p];
    const int64_t bw = bb[2] - bb[0], bh = bb[3] - bb[1];
    // Indices are range-checked by the glue except during graph capture: an instance (or
    // image) out of range then gives empty patches rather than an out-of-bounds read.
    if (i < 0 || i >= a.instances || batch[i] < 0 || batch[i] >= a.batch) {
      if (c < a.channels)
        image_patches[(p * a.channels + c) * bins + bin] = static_cast<T>(0.0f);
      else
        mask_patches[p * bins + bin] = false;
      continue;
    }
    if (c < a.channels) {
      const G roi[5] = {static_cast<G>(batch[i]), static_cast<G>(bb[0]), static_cast<G>(bb[1]),
                        static_cast<G>(bb[2]), static_cast<G>(bb[3])};
      const auto g = roi_align_geometry<G>(roi, G(1), a.out_h, a.out_w, 1, true, a.batch,
                                           a.height, a.width);
      const T* plane =
          g.empty ? images : images + (g.batch * a.channels + c) * a.height * a.width;
      image_patches[(p * a.channels + c) * bins + bin] =
          static_cast<T>(roi_align_bin<T, G>(plane, g, ph, pw));
    } else if (bw <= 0 || bh <= 0) {  // an empty box: an all-False mask patch
      mask_patches[p * bins + bin] = false;
    } else {
      const int64_t y = bb[1] + nearest_index(ph, bh, a.out_h);
      const int64_t x = bb[0] + nearest_index(pw, bw, a.out_w);
      mask_patches[p * bins + bin] = y >= 0 && y < a.height && x >= 0 && x < a.width &&
                                     masks[(i * a.height + y) * a.width + x];
    }
  }
}

__global__ void bounds_kernel(ReassembleArgs a, const int64_t* boxes, const int64_t* order,
                              const int64_t* start, int64_t* bounds) {
  SEGOPS_GRID_STRIDE(i, a.n) {
    int64_t x0 = a.width, y0 = a.height, x1 = 0, y1 = 0;
    for (int64_t k = start[i]; k < start[i + 1]; ++k) {
      const int64_t* bb = boxes + 4 * order[k];
      if (bb[2] <= bb[0] || bb[3] <= bb[1]) continue;
      x0 = min_(x0, max_(bb[0], int64_t(0)));
      y0 = min_(y0, max_(bb[1], int64_t(0)));
      x1 = max_(x1, min_(bb[2], a.width));
      y1 = max_(y1, min_(bb[3], a.height));
    }
    bounds[4 * i] = x0;
    bounds[4 * i + 1] = y0;
    bounds[4 * i + 2] = x1;
    bounds[4 * i + 3] = y1;
  }
}

template <typename T>
__global__ void reassemble_kernel(ReassembleArgs a, const bool* masks, const T* probs,
                                  const int64_t* boxes, const int64_t* order,
                                  const int64_t* start, const int64_t* bounds, bool* out) {
  using A = acc_t<T>;
  const int64_t plane = a.height * a.width, total = a.n * plane;
  const A thr = static_cast<A>(a.threshold);
  SEGOPS_GRID_STRIDE(e, total) {
    const int64_t i = e / plane, y = (e % plane) / a.width, x = e % a.width;
    const int64_t* bd = bounds + 4 * i;
    bool v = masks[e];
    if (x >= bd[0] && x < bd[2] && y >= bd[1] && y < bd[3]) {
      A acc = A(0);
      int32_t cnt = 0;
      for (int64_t k = start[i]; k < start[i + 1]; ++k) {
        const int64_t q = order[k];
        const int64_t* bb = boxes + 4 * q;
        if (x < bb[0] || x >= bb[2] || y < bb[1] || y >= bb[3]) continue;
        const int64_t bw = bb[2] - bb[0], bh = bb[3] - bb[1];
        const T* pk = probs + q * a.ph * a.pw;
        const int64_t u = x - bb[0], w = y - bb[1];
        A val;
        if (bh == a.ph && bw == a.pw) {
          val = static_cast<A>(pk[w * a.pw + u]);
        } else {
          const LinearTap<A> t = resize_tap<A>(w, a.ph, bh), s = resize_tap<A>(u, a.pw, bw);
          val = blend<A>(static_cast<A>(pk[t.i0 * a.pw + s.i0]),
                         static_cast<A>(pk[t.i0 * a.pw + s.i1]),
                         static_cast<A>(pk[t.i1 * a.pw + s.i0]),
                         static_cast<A>(pk[t.i1 * a.pw + s.i1]), t, s);
        }
        acc += val;
        cnt += 1;
      }
      if (cnt > 0) v = acc / static_cast<A>(cnt) > thr;
    }
    out[e] = v;
  }
}

}  // namespace

cudaError_t boundary_keys(const PatchArgs& a, const bool* masks, uint8_t* key,
                          cudaStream_t stream) {
  keys_kernel<<<blocks_for(a.n * a.height * a.width, kThreads), kThreads, 0, stream>>>(a, masks,
                                                                                        key);
  return cudaGetLastError();
}

cudaError_t boundary_nms(const PatchArgs& a, int64_t* order, const int64_t* count,
                         uint8_t* suppressed, int64_t* kept, cudaStream_t stream) {
  if (a.n == 0) return cudaSuccess;
  nms_kernel<<<static_cast<unsigned int>(a.n), kNmsThreads, a.patch * sizeof(int64_t), stream>>>(
      a, order, count, suppressed, kept);
  return cudaGetLastError();
}

cudaError_t boundary_write(const PatchArgs& a, const bool* masks, const int64_t* order,
                           const int64_t* kept, const int64_t* offsets, int64_t capacity,
                           int64_t* boxes, int64_t* instance_index, float* scores,
                           cudaStream_t stream) {
  if (a.n == 0) return cudaSuccess;
  write_kernel<<<static_cast<unsigned int>(a.n), kThreads, 0, stream>>>(
      a, masks, order, kept, offsets, capacity, boxes, instance_index, scores);
  return cudaGetLastError();
}

cudaError_t crop_patches(Dtype dtype, const CropArgs& a, const void* images, const bool* masks,
                         const int64_t* boxes, const int64_t* instance_index,
                         const int64_t* batch_index, void* image_patches, bool* mask_patches,
                         cudaStream_t stream) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t total = a.patches * (a.channels + 1) * a.out_h * a.out_w;
    crop_kernel<T><<<blocks_for(total, kThreads), kThreads, 0, stream>>>(
        a, static_cast<const T*>(images), masks, boxes, instance_index, batch_index,
        static_cast<T*>(image_patches), mask_patches);
  });
}

cudaError_t reassemble_patches(Dtype dtype, const ReassembleArgs& a, const bool* masks,
                               const void* probs, const int64_t* boxes, const int64_t* order,
                               const int64_t* start, int64_t* bounds, bool* out,
                               cudaStream_t stream) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    bounds_kernel<<<blocks_for(a.n, kThreads), kThreads, 0, stream>>>(a, boxes, order, start,
                                                                      bounds);
    reassemble_kernel<T><<<blocks_for(a.n * a.height * a.width, kThreads), kThreads, 0, stream>>>(
        a, masks, static_cast<const T*>(probs), boxes, order, start, bounds, out);
  });
}

}  // namespace cuda
}  // namespace segops
