// Suppression family CUDA kernels (torch-free): Fast NMS and Matrix NMS (greedy NMS:
// greedy.cu). Per-element rules (IoU, Fast NMS column max, Matrix NMS decay) come from
// csrc/common/box_iou.h, as on the CPU.
#include "common/box_iou.h"
#include "core/half.cuh"
#include "nms/launch.h"

namespace segops {
namespace cuda {
namespace {

constexpr int kBits = 64;
constexpr int kThreads = 256;

// One block per class; `cols` is [C, 5, D]: x1, y1, x2, y2, area of the ranked candidates.
template <typename G>
__global__ void fast_nms_keep_kernel(const G* cols, int64_t d, G threshold, uint8_t* keep) {
  const G* c = cols + int64_t(blockIdx.x) * 5 * d;
  const BoxColumns<G> b{c, c + d, c + 2 * d, c + 3 * d, c + 4 * d};
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
    keep[int64_t(blockIdx.x) * d + j] = segops::fast_nms_keep(b, j, threshold);
}

// ---- matrix NMS: masks as bits, IoU by popcount

__global__ void pack_masks_kernel(const uint8_t* masks, int64_t n, int64_t p, int64_t words,
                                  uint64_t* packed) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n * words;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = k / words, w = k % words;
    const uint8_t* src = masks + r * p + w * kBits;
    const int64_t len = min_(int64_t(kBits), p - w * kBits);
    uint64_t bits = 0;
    for (int64_t b = 0; b < len; ++b) bits |= uint64_t(src[b] != 0) << b;
    packed[k] = bits;
  }
}

template <typename G>
__global__ void mask_area_kernel(const uint64_t* packed, int64_t n, int64_t words, G* area) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < n;
       r += int64_t(gridDim.x) * blockDim.x) {
    int64_t a = 0;
    for (int64_t w = 0; w < words; ++w) a += __popcll(packed[r * words + w]);
    area[r] = static_cast<G>(a);
  }
}

template <typename G>
__global__ void mask_iou_kernel(const uint64_t* packed, const G* area, int64_t n, int64_t words,
                                G* iou) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n * n;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = k / n, j = k % n;
    G v = G(0);
    if (i < j) {
      int64_t inter = 0;
      const uint64_t *a = packed + i * words, *b = packed + j * words;
      for (int64_t w = 0; w < words; ++w) inter += __popcll(a[w] & b[w]);
      v = mask_iou(static_cast<G>(inter), area[i], area[j]);
    }
    iou[k] = v;
  }
}

template <typename G>
__global__ void matrix_nms_comp_kernel(const G* iou, const int64_t* labels, int64_t n, G* comp) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < n;
       j += int64_t(gridDim.x) * blockDim.x) {
    G c = G(0);
    for (int64_t i = 0; i < j; ++i)
      if (labels[i] == labels[j]) c = max_(c, iou[i * n + j]);
    comp[j] = c;
  }
}

template <typename G>
__global__ void matrix_nms_decay_kernel(const G* iou, const int64_t* labels, const G* comp,
                                        int64_t n, bool gaussian, G sigma, G* decay) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < n;
       j += int64_t(gridDim.x) * blockDim.x) {
    decay[j] = segops::matrix_nms_decay<G>(
        j, comp, gaussian, sigma, [&](int64_t i) { return iou[i * n + j]; },
        [&](int64_t i) { return labels[i] == labels[j]; });
  }
}

template <typename G>
void launch_matrix_nms(const uint8_t* masks, const int64_t* labels, int64_t n, int64_t p,
                       bool gaussian, double sigma, void* scratch, G* decay,
                       cudaStream_t stream) {
  const int64_t words = (p + kBits - 1) / kBits;
  uint64_t* packed = static_cast<uint64_t*>(scratch);
  G* area = reinterpret_cast<G*>(packed + n * words);
  G* iou = area + n;
  G* comp = iou + n * n;
  pack_masks_kernel<<<blocks_for(n * words, kThreads), kThreads, 0, stream>>>(masks, n, p, words,
                                                                              packed);
  mask_area_kernel<G><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(packed, n, words, area);
  mask_iou_kernel<G><<<blocks_for(n * n, kThreads), kThreads, 0, stream>>>(packed, area, n,
                                                                           words, iou);
  matrix_nms_comp_kernel<G><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(iou, labels, n,
                                                                              comp);
  matrix_nms_decay_kernel<G><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(
      iou, labels, comp, n, gaussian, static_cast<G>(sigma), decay);
}

}  // namespace

cudaError_t fast_nms_keep(bool f64, const void* cols, int64_t classes, int64_t d,
                          double iou_threshold, uint8_t* keep, cudaStream_t stream) {
  const unsigned grid = static_cast<unsigned>(classes);
  if (f64)
    fast_nms_keep_kernel<double><<<grid, kThreads, 0, stream>>>(
        static_cast<const double*>(cols), d, iou_threshold, keep);
  else
    fast_nms_keep_kernel<float><<<grid, kThreads, 0, stream>>>(
        static_cast<const float*>(cols), d, static_cast<float>(iou_threshold), keep);
  return cudaGetLastError();
}

int64_t matrix_nms_scratch_bytes(bool f64, int64_t n, int64_t p) {
  const int64_t g = f64 ? sizeof(double) : sizeof(float);
  return n * ((p + kBits - 1) / kBits) * int64_t(sizeof(uint64_t)) + (2 * n + n * n) * g;
}

cudaError_t matrix_nms_decay(bool f64, const uint8_t* masks, const int64_t* labels, int64_t n,
                             int64_t p, bool gaussian, double sigma, void* scratch, void* decay,
                             cudaStream_t stream) {
  if (f64)
    launch_matrix_nms(masks, labels, n, p, gaussian, sigma, scratch,
                      static_cast<double*>(decay), stream);
  else
    launch_matrix_nms(masks, labels, n, p, gaussian, sigma, scratch, static_cast<float*>(decay),
                      stream);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace segops
