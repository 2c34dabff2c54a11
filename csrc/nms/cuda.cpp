// Suppression family, CUDA glue. Sorting is ATen's; the kernels (greedy.cu, kernels.cu) do
// the rest. Nothing here reads a device value on the host, so every op is free of host
// synchronisation.
#include <ATen/core/Tensor.h>
#include <ATen/ops/all.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/clamp_max.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/floor_divide.h>
#include <ATen/ops/full.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/max.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "nms/checks.h"
#include "core/cuda_glue.h"
#include "nms/launch.h"

namespace segops {
namespace {

at::Tensor stable_order(const at::Tensor& key, bool descending, int64_t dim = 0) {
  return std::get<1>(at::sort(key, /*stable=*/true, dim, descending));
}

// The first `capacity` positions (in `order`) whose flag is set, padded with -1, and their
// count: a stable sort moves flagged entries first without reading anything back.
std::tuple<at::Tensor, at::Tensor> compact(const at::Tensor& flags, const at::Tensor& order,
                                           int64_t capacity) {
  const int64_t n = flags.size(0);
  const at::Tensor first = stable_order(flags.logical_not().to(at::kByte), false);
  const at::Tensor count = flags.sum().clamp_max(capacity);
  const int64_t take = std::min(n, capacity);
  at::Tensor out = at::full({capacity}, -1, order.options());
  const at::Tensor slot = at::arange(take, order.options());
  const at::Tensor picked = order.index_select(0, first.narrow(0, 0, take));
  out.narrow(0, 0, take).copy_(at::where(slot.lt(count), picked, -1));
  return {out, count};
}

std::tuple<at::Tensor, at::Tensor> batched_nms_cuda(const at::Tensor& boxes,
                                                    const at::Tensor& scores,
                                                    const c10::optional<at::Tensor>& idxs,
                                                    double iou_threshold, int64_t max_out,
                                                    const char* op) {
  check_nms_inputs(op, boxes, scores, idxs, iou_threshold, max_out);
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  const int64_t capacity = max_out < 0 ? n : max_out;
  const auto longs = boxes.options().dtype(at::kLong);
  if (n == 0 || capacity == 0)
    return {at::full({capacity}, -1, longs), at::zeros({}, longs)};
  TORCH_CHECK_VALUE(n <= std::numeric_limits<int32_t>::max(), op,
                    ": `boxes` may hold at most 2**31 - 1 boxes on CUDA, got ", n);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor b = boxes.to(compute_dtype(boxes.scalar_type())).contiguous();
  const at::Tensor sc = scores.contiguous();
  // Score order (descending, ties by index); processing order: class-major within it, the
  // class sort's permutation `by_class` being each position's score rank.
  const at::Tensor by_score = stable_order(sc, true);
  at::Tensor order = by_score, cls_sorted, by_class;
  if (idxs.has_value()) {
    const at::Tensor cls = idxs->to(at::kLong).index_select(0, by_score);
    std::tie(cls_sorted, by_class) = at::sort(cls, /*stable=*/true, 0, /*descending=*/false);
    order = by_score.index_select(0, by_class);
  }
  const cuda::GreedyArgs a{n, iou_threshold, b.scalar_type() == at::kDouble, cuda_dtype(sc)};
  at::Tensor scratch = at::empty({cuda::greedy_scratch_bytes(a.f64, n)},
                                 boxes.options().dtype(at::kByte));
  at::Tensor flags = at::empty({n}, boxes.options().dtype(at::kInt));
  C10_CUDA_CHECK(cuda::greedy_keep_flags(
      a, b.const_data_ptr(), sc.const_data_ptr(), order.const_data_ptr<int64_t>(),
      idxs.has_value() ? cls_sorted.const_data_ptr<int64_t>() : nullptr,
      idxs.has_value() ? by_class.const_data_ptr<int64_t>() : nullptr,
      scratch.mutable_data_ptr(), flags.mutable_data_ptr<int32_t>(), stream));
  scratch.reset();
  // Output slots of the kept boxes, in score order.
  const at::Tensor incl = at::cumsum(flags, 0, at::kInt);
  at::Tensor keep = at::empty({capacity}, longs);
  at::Tensor count = at::empty({}, longs);
  C10_CUDA_CHECK(cuda::greedy_compact(flags.const_data_ptr<int32_t>(),
                                      incl.const_data_ptr<int32_t>(),
                                      by_score.const_data_ptr<int64_t>(), n, capacity,
                                      keep.mutable_data_ptr<int64_t>(),
                                      count.mutable_data_ptr<int64_t>(), stream));
  return {keep, count};
}

std::tuple<at::Tensor, at::Tensor> nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                                            double iou_threshold, int64_t max_out) {
  return batched_nms_cuda(boxes, scores, c10::nullopt, iou_threshold, max_out, "nms");
}

std::tuple<at::Tensor, at::Tensor> batched_nms_op_cuda(const at::Tensor& boxes,
                                                       const at::Tensor& scores,
                                                       const at::Tensor& idxs,
                                                       double iou_threshold, int64_t max_out) {
  return batched_nms_cuda(boxes, scores, idxs, iou_threshold, max_out, "batched_nms");
}

// Fast NMS keep flags for candidates [C, D] (anchor indices into boxes).
at::Tensor fast_nms_keep(const at::Tensor& b, const at::Tensor& cand, double iou_threshold) {
  const int64_t C = cand.size(0), D = cand.size(1);
  const at::Tensor cb = b.index_select(0, cand.reshape(-1)).view({C, D, 4});
  // (x2 - x1) * (y2 - y1), as box_area computes it
  const at::Tensor area = cb.select(2, 2).sub(cb.select(2, 0)).mul(cb.select(2, 3).sub(cb.select(2, 1)));
  const at::Tensor cols = at::cat({cb.permute({0, 2, 1}), area.unsqueeze(1)}, 1).contiguous();
  at::Tensor keep = at::zeros({C, D}, b.options().dtype(at::kByte));
  if (C * D > 0)
    C10_CUDA_CHECK(cuda::fast_nms_keep(b.scalar_type() == at::kDouble, cols.const_data_ptr(), C, D,
                                       iou_threshold, keep.mutable_data_ptr<uint8_t>(),
                                       c10::cuda::getCurrentCUDAStream()));
  return keep.to(at::kBool);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fast_nms_cuda(
    const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold, int64_t top_k,
    double score_threshold, int64_t max_detections, bool cross_class, bool second_threshold) {
  check_fast_nms_inputs(boxes, scores, iou_threshold, top_k, score_threshold, max_detections);
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t C = scores.size(0), N = scores.size(1);
  const int64_t capacity = cross_class ? top_k : max_detections;
  const auto longs = boxes.options().dtype(at::kLong);
  // top_k == 0 leaves no candidates: the gathers below would index empty tensors.
  if (C * N == 0 || capacity == 0 || top_k == 0)
    return {at::full({capacity}, -1, longs), at::full({capacity}, -1, longs),
            at::zeros({capacity}, scores.options()), at::zeros({}, longs)};
  const at::Tensor b = boxes.to(compute_dtype(boxes.scalar_type()));
  const double iou_t = as_dtype(iou_threshold, b.scalar_type());
  const double score_t = as_dtype(score_threshold, scores.scalar_type());
  // Prefilter (NaN-propagating max, as torch.max) and drop non-finite boxes.
  auto [best, best_cls] = at::max(scores, 0);
  const at::Tensor pre = best.gt(score_t).logical_and(at::isfinite(b).all(1));
  const at::Tensor npre = pre.sum();
  const int64_t D = std::min(top_k, N);
  const at::Tensor rank_ok = at::arange(D, longs).lt(npre);  // rank r is a candidate iff r < npre
  // Per-row candidate order: prefiltered first, then score descending, ties by index.
  auto ranked = [&](const at::Tensor& s) {  // s: [R, N] -> anchors [R, D]
    const at::Tensor by_score = stable_order(s, true, 1);
    const at::Tensor out = pre.index_select(0, by_score.reshape(-1)).view_as(by_score);
    const at::Tensor first = stable_order(out.logical_not().to(at::kByte), false, 1);
    return by_score.gather(1, first).narrow(1, 0, D);
  };
  const at::Tensor cand = cross_class ? ranked(best.unsqueeze(0)) : ranked(scores);  // [R, D]
  const at::Tensor cand_scores =
      cross_class ? best.index_select(0, cand.reshape(-1)).view_as(cand) : scores.gather(1, cand);
  at::Tensor keep = fast_nms_keep(b, cand, iou_t).logical_and(rank_ok.unsqueeze(0));
  if (second_threshold) keep = keep.logical_and(cand_scores.gt(score_t));
  if (cross_class) {
    // Output in rank order, classes = argmax.
    auto [idx, count] = compact(keep.reshape(-1), cand.reshape(-1), capacity);
    const at::Tensor valid = idx.ge(0);
    const at::Tensor safe = idx.clamp_min(0);
    return {idx, at::where(valid, best_cls.index_select(0, safe), -1),
            at::where(valid, best.index_select(0, safe), 0), count};
  }
  // Merge: class-major order, then a stable descending sort by score among kept entries.
  const at::Tensor flat_keep = keep.reshape(-1);
  const at::Tensor flat_scores = cand_scores.reshape(-1);
  const at::Tensor by_score = stable_order(flat_scores, true);
  const at::Tensor kept_first =
      stable_order(flat_keep.index_select(0, by_score).logical_not().to(at::kByte), false);
  const at::Tensor order = by_score.index_select(0, kept_first);  // positions in [C * D]
  auto [pos, count] = compact(flat_keep.index_select(0, order), order, capacity);
  const at::Tensor valid = pos.ge(0);
  const at::Tensor safe = pos.clamp_min(0);
  return {at::where(valid, cand.reshape(-1).index_select(0, safe), -1),
          at::where(valid, at::floor_divide(safe, D), -1),
          at::where(valid, flat_scores.index_select(0, safe), 0), count};
}

at::Tensor matrix_nms_cuda(const at::Tensor& masks, const at::Tensor& labels,
                           const at::Tensor& scores, c10::string_view kernel, double sigma) {
  const bool gaussian = check_matrix_nms_inputs(masks, labels, scores, kernel, sigma);
  const c10::cuda::CUDAGuard guard(masks.device());
  const int64_t n = masks.size(0), p = masks.size(1) * masks.size(2);
  if (n == 0) return at::empty({0}, scores.options());
  const at::Tensor sc = scores.contiguous();
  // Score order; then label-major rows (stable: by score within a label).
  const at::Tensor order = stable_order(sc, true);
  const at::Tensor score_label = labels.to(at::kLong).index_select(0, order);
  const auto [label, rank] = at::sort(score_label, /*stable=*/true, 0, /*descending=*/false);
  const at::Tensor src = order.index_select(0, rank);
  const at::Tensor m = (masks.scalar_type() == at::kBool ? masks : masks.ne(0)).contiguous();
  const cuda::MatrixArgs a{n, p, gaussian, sigma, cuda_dtype(sc)};
  at::Tensor scratch = at::empty(
      {cuda::matrix_nms_scratch_bytes(sc.scalar_type() == at::kDouble, n, p)},
      masks.options().dtype(at::kByte));
  at::Tensor out = at::empty({n}, sc.options());
  C10_CUDA_CHECK(cuda::matrix_nms(
      a, static_cast<const uint8_t*>(m.const_data_ptr()), src.const_data_ptr<int64_t>(),
      label.const_data_ptr<int64_t>(), rank.const_data_ptr<int64_t>(),
      score_label.const_data_ptr<int64_t>(), order.const_data_ptr<int64_t>(),
      sc.const_data_ptr(), scratch.mutable_data_ptr(), out.mutable_data_ptr(),
      c10::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CUDA, m) {
  m.impl("nms", &nms_cuda);
  m.impl("batched_nms", &batched_nms_op_cuda);
  m.impl("fast_nms", &fast_nms_cuda);
  m.impl("matrix_nms", &matrix_nms_cuda);
}

}  // namespace segops
