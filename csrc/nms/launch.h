// Suppression family launchers (torch-free). Device pointers to contiguous data. Boxes are
// [N, 4] in the IoU dtype: double when `f64`, else float.
#pragma once

#include "core/launch.h"

namespace segops {
namespace cuda {

// Rows of the IoU bitmask computed per launch of the greedy NMS: bounds its memory.
int64_t nms_chunk_rows(int64_t n);
int64_t nms_words(int64_t n);  // 64-bit words per mask row

// Greedy NMS over boxes sorted class-major (by score descending within a class), with
// seg_end[p] = end of p's class segment and valid[p] = 0 for absent boxes. Sets keep[p] = 1
// for kept positions. `mask` holds nms_chunk_rows(n) * nms_words(n) words, `removed`
// nms_words(n) zeroed words, `keep` n zeroed bytes. Launches only; no synchronisation.
cudaError_t nms_sorted(bool f64, const void* boxes, const int64_t* seg_end,
                       const uint8_t* valid, int64_t n, double iou_threshold, uint64_t* mask,
                       uint64_t* removed, uint8_t* keep, cudaStream_t stream);

// Fast NMS keep flags: cols [C, 5, D] (x1, y1, x2, y2, area of each class's candidates in
// rank order) -> keep [C, D]: 1 iff the IoU with every higher-ranked candidate is
// <= iou_threshold (compared in the IoU dtype).
cudaError_t fast_nms_keep(bool f64, const void* cols, int64_t classes, int64_t d,
                          double iou_threshold, uint8_t* keep, cudaStream_t stream);

// Matrix NMS on masks sorted by score: masks [N, P] as bytes (0/1), labels [N]. Writes
// decay [N] (IoU dtype). `scratch` holds matrix_nms_scratch_bytes(f64, n, p) bytes.
int64_t matrix_nms_scratch_bytes(bool f64, int64_t n, int64_t p);
cudaError_t matrix_nms_decay(bool f64, const uint8_t* masks, const int64_t* labels, int64_t n,
                             int64_t p, bool gaussian, double sigma, void* scratch, void* decay,
                             cudaStream_t stream);

}  // namespace cuda
}  // namespace segops
