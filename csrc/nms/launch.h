// Suppression family launchers (torch-free). Device pointers to contiguous data. Boxes are
// [N, 4] in the IoU dtype: double when `f64`, else float.
#pragma once

#include "core/launch.h"

namespace segops {
namespace cuda {

// Greedy NMS (greedy.cu). Positions p: the boxes class-major, by score within a class
// (order[p] is the box at p; cls[p] its class, ascending, or nullptr for one class).
struct GreedyArgs {
  int64_t n;
  double threshold;  // IoU > threshold suppresses (IoU in the box dtype, compared as double)
  bool f64;          // boxes (and IoUs) are double, else float
  Dtype score_dtype; // scores' dtype (a NaN score makes its box absent)
};

// Words of suppression mask held at once (the chunk buffer) and the number of chunk
// launches, from n alone: a bound over every class layout (one class is the worst).
int64_t nms_mask_words(int64_t n);
int64_t nms_chunks(int64_t n);
// Scratch for greedy_keep_flags: the sorted boxes, the plan and the mask.
int64_t greedy_scratch_bytes(bool f64, int64_t n);

// Sets flags[q] (int32, score order) to 1 for kept boxes, else 0, where q = rank[p] is the
// score rank of position p (rank == nullptr: positions are score ranks). boxes [n, 4] and
// scores [n] in input order. Launches only; no synchronisation.
cudaError_t greedy_keep_flags(const GreedyArgs& a, const void* boxes, const void* scores,
                              const int64_t* order, const int64_t* cls, const int64_t* rank,
                              void* scratch, int32_t* flags, cudaStream_t stream);

// out[capacity] = the boxes by_score[q] of the kept ranks q (incl: inclusive prefix sum of
// flags), padded with -1; *count = min(kept, capacity).
cudaError_t greedy_compact(const int32_t* flags, const int32_t* incl, const int64_t* by_score,
                           int64_t n, int64_t capacity, int64_t* out, int64_t* count,
                           cudaStream_t stream);

// Fast NMS keep flags: cols [C, 5, D] (x1, y1, x2, y2, area of each class's candidates in
// rank order) -> keep [C, D]: 1 iff the IoU with every higher-ranked candidate is
// <= iou_threshold (compared in the IoU dtype).
cudaError_t fast_nms_keep(bool f64, const void* cols, int64_t classes, int64_t d,
                          double iou_threshold, uint8_t* keep, cudaStream_t stream);

// Matrix NMS (matrix.cu). Rows r: the masks by label, by score within a label; rank[r] is
// row r's score rank, src[r] its mask, label[r] its label (ascending). order[j] is the
// mask of score rank j, score_label[j] its label. masks: [N, P] bytes (0 or nonzero).
// Writes out[k] = scores[k] * decay of mask k (IoU dtype: double for double scores, else
// float; rounded to the scores' dtype). `scratch`: matrix_nms_scratch_bytes(f64, n, p).
struct MatrixArgs {
  int64_t n, p;
  bool gaussian;
  double sigma;
  Dtype score_dtype;
};
int64_t matrix_nms_scratch_bytes(bool f64, int64_t n, int64_t p);
cudaError_t matrix_nms(const MatrixArgs& m, const uint8_t* masks, const int64_t* src,
                       const int64_t* label, const int64_t* rank, const int64_t* score_label,
                       const int64_t* order, const void* scores, void* scratch, void* out,
                       cudaStream_t stream);

}  // namespace cuda
}  // namespace segops
