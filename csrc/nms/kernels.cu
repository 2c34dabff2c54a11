// Suppression family CUDA kernels (torch-free). Per-element rules (IoU, Fast NMS column
// max, Matrix NMS decay) come from csrc/common/box_iou.h, as on the CPU.
//
// Greedy NMS works on boxes sorted class-major, score-descending within a class, and
// proceeds in chunks of rows so that memory stays bounded (not n * n / 64 words):
//   1. mask kernel: for each row i of the chunk, a bitmask of the boxes j > i of the same
//      class with IoU > threshold (only the words up to the end of i's class);
//   2. scan kernel (one block): rows in order; a row not yet removed is kept and ORs its
//      mask into the global `removed` bitmap.
// The host only launches; nothing is read back, so the op needs no synchronisation.
#include "common/box_iou.h"
#include "core/half.cuh"
#include "nms/launch.h"

namespace segops {
namespace cuda {
namespace {

constexpr int kBits = 64;
constexpr int kScanThreads = 256;
constexpr int kThreads = 256;
// 128 MiB of mask per chunk. The CPU emulator's build (tools/cuda_emu) makes it small, so
// that its tests take the multi-chunk path at a few hundred boxes.
#ifndef SEGOPS_NMS_MASK_BUDGET_WORDS
#define SEGOPS_NMS_MASK_BUDGET_WORDS (int64_t(1) << 24)
#endif
constexpr int64_t kMaskBudgetWords = SEGOPS_NMS_MASK_BUDGET_WORDS;

template <typename G>
__global__ void nms_mask_kernel(const Box<G>* boxes, const int64_t* seg_end,
                                const uint8_t* valid, int64_t n, int64_t row0, int64_t rows,
                                int64_t words, double threshold, uint64_t* mask) {
  const int64_t row_start = row0 + int64_t(blockIdx.y) * kBits;
  const int64_t col_start = int64_t(blockIdx.x) * kBits;
  const int64_t row_last = min_(row_start + kBits, row0 + rows) - 1;
  // Block-uniform exits: no row here, columns all before the rows, or past their classes.
  if (row_start > row_last || col_start + kBits <= row_start || col_start >= seg_end[row_last])
    return;
  __shared__ Box<G> cols[kBits];
  const int t = threadIdx.x;
  if (col_start + t < n) cols[t] = boxes[col_start + t];
  __syncthreads();
  const int64_t i = row_start + t;
  if (i > row_last) return;
  uint64_t bits = 0;
  if (valid[i]) {
    const Box<G> b = boxes[i];
    const G area = box_area(b);
    const int64_t end = seg_end[i];
    for (int k = 0; k < kBits; ++k) {
      const int64_t j = col_start + k;
      if (j <= i || j >= end || !valid[j]) continue;
      if (static_cast<double>(box_iou(b, area, cols[k], box_area(cols[k]))) > threshold)
        bits |= uint64_t(1) << k;
    }
  }
  mask[(i - row0) * words + blockIdx.x] = bits;
}

__global__ void nms_scan_kernel(const uint64_t* mask, const int64_t* seg_end,
                                const uint8_t* valid, int64_t row0, int64_t rows, int64_t words,
                                uint64_t* removed, uint8_t* keep) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = row0 + r;
    // Every thread reads the same values, so the branch is uniform.
    if (!valid[i] || ((removed[i >> 6] >> (i & 63)) & 1u)) continue;
    __syncthreads();  // all reads of `removed` for row i happen before the writes below
    if (threadIdx.x == 0) keep[i] = 1;
    const uint64_t* m = mask + r * words;
    const int64_t last = (seg_end[i] - 1) >> 6;
    for (int64_t w = (i >> 6) + threadIdx.x; w <= last; w += blockDim.x) removed[w] |= m[w];
    __syncthreads();  // writes visible before the next row's read
  }
}

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
void launch_nms_sorted(const Box<G>* boxes, const int64_t* seg_end, const uint8_t* valid,
                       int64_t n, double threshold, uint64_t* mask, uint64_t* removed,
                       uint8_t* keep, cudaStream_t stream) {
  const int64_t words = nms_words(n), chunk = nms_chunk_rows(n);
  for (int64_t row0 = 0; row0 < n; row0 += chunk) {
    const int64_t rows = min_(chunk, n - row0);
    const dim3 grid(static_cast<unsigned>(words), static_cast<unsigned>((rows + kBits - 1) / kBits));
    nms_mask_kernel<G><<<grid, kBits, 0, stream>>>(boxes, seg_end, valid, n, row0, rows, words,
                                                   threshold, mask);
    nms_scan_kernel<<<1, kScanThreads, 0, stream>>>(mask, seg_end, valid, row0, rows, words,
                                                    removed, keep);
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

int64_t nms_words(int64_t n) { return (n + kBits - 1) / kBits; }

int64_t nms_chunk_rows(int64_t n) {
  const int64_t rows = kMaskBudgetWords / max_(nms_words(n), int64_t(1)) / kBits * kBits;
  return min_(max_(rows, int64_t(kBits)), nms_words(n) * kBits);
}

cudaError_t nms_sorted(bool f64, const void* boxes, const int64_t* seg_end,
                       const uint8_t* valid, int64_t n, double iou_threshold, uint64_t* mask,
                       uint64_t* removed, uint8_t* keep, cudaStream_t stream) {
  if (f64)
    launch_nms_sorted(static_cast<const Box<double>*>(boxes), seg_end, valid, n, iou_threshold,
                      mask, removed, keep, stream);
  else
    launch_nms_sorted(static_cast<const Box<float>*>(boxes), seg_end, valid, n, iou_threshold,
                      mask, removed, keep, stream);
  return cudaGetLastError();
}

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
