"""ONNX translations of the suppression ops.

``nms`` / ``batched_nms`` use NonMaxSuppression for the greedy loop, fed so that its result
is segops' exactly:

* the order is decided outside it: a stable TopK ranks the boxes (decreasing score, ties
  by lower index, as segops), and NonMaxSuppression sees the ranks as distinct scores
  ``N - rank`` (exact in float32 below 2**24 boxes), so its own tie-breaking never matters;
* absent boxes (a non-finite coordinate, a NaN score) and, in ``batched_nms``, the boxes
  of other categories get score 0 under ``score_threshold = 0.5``: never candidates, so
  they neither are kept nor suppress;
* a box with ``x2 < x1`` or ``y2 < y1`` has IoU 0 with every box in segops, but
  NonMaxSuppression would reorder its corners: it is passed as the empty box (0, 0, 0, 0);
* NonMaxSuppression suppresses when its float32 IoU is ``> threshold`` with the threshold
  in float32, segops compares with the exact Python float: the threshold passed is the
  largest float32 not above it, for which both comparisons agree on every float32 IoU.
  Thresholds >= 1 suppress nothing (NaN is refused by the op); a negative one suppresses
  everything after the first box of each category (``max_output_boxes_per_class = 1``);
* ``batched_nms`` runs one NonMaxSuppression batch per distinct category (Unique), all
  sharing the boxes.

Its IoU arithmetic is segops' for float32 (and half types, which are exact in float32):
``inter / (area_a + area_b - inter)``, pairs without intersection never suppress. float64
boxes are IoU'd in float64 by segops, which NonMaxSuppression (float32 only) cannot do:
they raise.

``fast_nms`` and ``matrix_nms`` are matrix algorithms and are composed from TopK, Gather,
elementwise arithmetic, ReduceMax/Min and MatMul, in the dtypes segops uses.
"""

from __future__ import annotations

import math

from onnxscript import opset18 as op

from ._common import (
    DOUBLE, FLOAT, HALF, INT64, INT64_MAX, UnsupportedExportError, arange, col, compute_dtype,
    const, finite_rows, first_n, ints, largest_float32_not_above, length, pad_to, scalar, to)

# ---- greedy NMS ----------------------------------------------------------------------


def _greedy(name: str, boxes, scores, iou_threshold: float, idxs=None):
    """Kept indices, int64 [M], by decreasing score (ties: lower index)."""
    if DOUBLE in (boxes.dtype, scores.dtype):
        raise UnsupportedExportError(
            f"segops.onnx: `segops.{name}` with float64 boxes or scores: ONNX "
            f"NonMaxSuppression computes IoUs and orders scores in float32, where segops "
            f"uses float64; export with float32 (or float16/bfloat16) inputs")
    b = to(boxes, FLOAT)
    s = to(scores, FLOAT)
    n = length(b)
    valid = op.And(finite_rows(b, FLOAT), op.Not(op.IsNaN(s)))
    # rank: a stable descending sort (TopK breaks ties by the lower index); absent boxes
    # are ranked too (as -inf) but get score 0 below.
    key = op.Where(valid, s, const(-math.inf, FLOAT))
    _, order = op.TopK(key, n, axis=0, largest=1, sorted=1)
    rank_score = op.ScatterElements(op.Expand(const(0.0, FLOAT), n), order,
                                    op.Sub(op.Cast(n, to=FLOAT), arange(n, FLOAT)), axis=0)
    rank_score = op.Where(valid, rank_score, const(0.0, FLOAT))
    # corners reversed (or non-finite): the empty box, which never overlaps
    x1, y1, x2, y2 = (col(b, i) for i in range(4))
    isolated = op.Or(op.Not(valid), op.Or(op.Less(x2, x1), op.Less(y2, y1)))
    b = op.Where(op.Unsqueeze(isolated, ints(1)), const(0.0, FLOAT), b)

    if idxs is None:
        nms_boxes = op.Unsqueeze(b, ints(0))  # [1, N, 4]
        nms_scores = op.Unsqueeze(rank_score, ints(0, 1))  # [1, 1, N]
    else:
        _, _, dense, _ = op.Unique(idxs, sorted=1)  # dense category id per box
        num = op.Add(op.ReduceMax(op.Concat(dense, const([-1], INT64), axis=0), keepdims=1),
                     ints(1))  # int64 [1]: number of categories (0 without boxes)
        member = op.Equal(op.Unsqueeze(arange(num, INT64), ints(1)),
                          op.Unsqueeze(dense, ints(0)))  # [C, N]
        nms_scores = op.Unsqueeze(op.Where(member, rank_score, const(0.0, FLOAT)), ints(1))
        nms_boxes = op.Expand(op.Unsqueeze(b, ints(0)),
                              op.Concat(num, ints(1, 4), axis=0))  # [C, N, 4] (shared)

    thr = float(iou_threshold)
    per_class = INT64_MAX
    if thr >= 1:
        thr = 1.0  # float32 IoUs are <= 1: nothing is suppressed
    elif thr < 0:
        per_class, thr = 1, 0.0  # every IoU (>= 0) exceeds it: the first box alone
    else:
        thr = float(largest_float32_not_above(thr))
    selected = op.NonMaxSuppression(nms_boxes, nms_scores, const([per_class], INT64),
                                    const([thr], FLOAT), const([0.5], FLOAT),
                                    center_point_box=0)
    kept = op.Reshape(op.Slice(selected, ints(2), ints(3), ints(1)), ints(-1))
    if idxs is not None:  # batches come one category after another: order by rank
        _, o = op.TopK(op.Gather(rank_score, kept), length(kept), axis=0, largest=1,
                       sorted=1)
        kept = op.Gather(kept, o)
    return kept


def _padded_keep(kept, boxes, max_out: int):
    cap = length(boxes) if max_out < 0 else ints(max_out)
    kept = first_n(kept, cap)
    return pad_to(kept, cap, -1, INT64), scalar(length(kept))


def nms(boxes, scores, iou_threshold, max_out=-1):
    return _padded_keep(_greedy("nms", boxes, scores, iou_threshold), boxes, max_out)


def batched_nms(boxes, scores, idxs, iou_threshold, max_out=-1):
    kept = _greedy("batched_nms", boxes, scores, iou_threshold, to(idxs, INT64))
    return _padded_keep(kept, boxes, max_out)


# ---- YOLACT's Fast NMS ---------------------------------------------------------------


def _pairwise_iou(a, dt):
    """IoU [..., D, D] of boxes a [..., D, 4] with themselves, in `dt`, as segops' box_iou
    (left to right: area_a + area_b - inter; union <= 0 gives 0)."""
    x1, y1, x2, y2 = (op.Gather(a, const(i, INT64), axis=-1) for i in range(4))
    area = op.Mul(op.Sub(x2, x1), op.Sub(y2, y1))

    def row(v):
        return op.Unsqueeze(v, ints(-1))

    def column(v):
        return op.Unsqueeze(v, ints(-2))

    w = op.Max(op.Sub(op.Min(row(x2), column(x2)), op.Max(row(x1), column(x1))),
               const(0, dt))
    h = op.Max(op.Sub(op.Min(row(y2), column(y2)), op.Max(row(y1), column(y1))),
               const(0, dt))
    inter = op.Mul(w, h)
    union = op.Sub(op.Add(row(area), column(area)), inter)
    ok = op.Greater(union, const(0, dt))
    return op.Where(ok, op.Div(inter, op.Where(ok, union, const(1, dt))), const(0, dt))


def _column_max_keep(ranked, iou_threshold: float, dt):
    """YOLACT's rule on ranked boxes [..., D, 4]: keep j iff max_{i<j} IoU_ij <= t (a NaN
    IoU, from overflowing coordinates, suppresses as torch's max propagates it)."""
    iou = _pairwise_iou(ranked, dt)
    d = op.Shape(iou, start=-1)
    idx = arange(d, INT64)
    upper = op.Less(op.Unsqueeze(idx, ints(1)), op.Unsqueeze(idx, ints(0)))  # i < j
    iou = op.Where(upper, iou, const(0, dt))
    m = op.ReduceMax(iou, ints(-2), keepdims=0)
    nan = op.ReduceMax(op.Cast(op.IsNaN(iou), to=INT64), ints(-2), keepdims=0)
    keep = op.And(op.LessOrEqual(m, const(iou_threshold, dt)),
                  op.Equal(nan, const(0, INT64)))
    return op.Or(keep, op.Equal(idx, const(0, INT64)))  # the top box is always kept


def fast_nms(boxes, scores, iou_threshold, top_k, score_threshold, max_detections,
             cross_class, second_threshold):
    dtype = scores.dtype
    sdt = FLOAT if dtype in HALF else dtype  # half scores compare exactly in float32
    gdt = compute_dtype(boxes)
    s = to(scores, sdt)
    b = to(boxes, gdt)
    thr = to(const(score_threshold, dtype), sdt)  # rounded to the scores' dtype
    # 1. prefilter: best class score > threshold, finite box, no NaN class score
    best = op.ReduceMax(s, ints(0), keepdims=0)
    any_nan = op.ReduceMax(op.Cast(op.IsNaN(s), to=INT64), ints(0), keepdims=0)
    pre_mask = op.And(op.And(op.Greater(best, thr), finite_rows(b, gdt)),
                      op.Equal(any_nan, const(0, INT64)))
    pre = op.Reshape(op.NonZero(pre_mask), ints(-1))  # ascending
    d = op.Min(length(pre), ints(top_k))
    if cross_class:
        sp = op.Gather(best, pre)
        cls_pre = op.ArgMax(op.Gather(s, pre, axis=1), axis=0, keepdims=0,
                            select_last_index=0)  # first maximum
        s_sorted, order = op.TopK(sp, d, axis=0, largest=1, sorted=1)
        anchors = op.Gather(pre, order)
        keep = _column_max_keep(op.Gather(b, anchors), iou_threshold, gdt)
        if second_threshold:
            keep = op.And(keep, op.Greater(s_sorted, thr))
        idx = op.Compress(anchors, keep)
        cls = op.Compress(op.Gather(cls_pre, order), keep)
        sc = op.Compress(s_sorted, keep)
        cap = top_k
    else:
        s_sorted, order = op.TopK(op.Gather(s, pre, axis=1), d, axis=1, largest=1,
                                  sorted=1)  # [C, D]
        anchors = op.Gather(pre, order)  # [C, D]
        keep = _column_max_keep(op.Gather(b, anchors), iou_threshold, gdt)
        if second_threshold:
            keep = op.And(keep, op.Greater(s_sorted, thr))
        classes = op.Expand(op.Unsqueeze(arange(op.Shape(s, start=0, end=1), INT64),
                                         ints(1)), op.Shape(anchors))
        flat = ints(-1)
        keep = op.Reshape(keep, flat)
        idx = op.Compress(op.Reshape(anchors, flat), keep)
        cls = op.Compress(op.Reshape(classes, flat), keep)
        sc = op.Compress(op.Reshape(s_sorted, flat), keep)
        # merged class-major; a stable sort by score, the first max_detections
        sc, o = op.TopK(sc, op.Min(length(sc), ints(max_detections)), axis=0, largest=1,
                        sorted=1)
        idx, cls = op.Gather(idx, o), op.Gather(cls, o)
        cap = max_detections
    capacity = ints(cap)
    idx, cls, sc = (first_n(t, capacity) for t in (idx, cls, sc))
    count = scalar(length(idx))
    return (pad_to(idx, capacity, -1, INT64), pad_to(cls, capacity, -1, INT64),
            to(pad_to(sc, capacity, 0, sdt), dtype), count)


# ---- SOLOv2's Matrix NMS -------------------------------------------------------------


def matrix_nms(masks, labels, scores, kernel, sigma):
    dtype = scores.dtype
    dt = compute_dtype(scores)
    s = to(scores, dt)
    n = length(s)
    _, order = op.TopK(s, n, axis=0, largest=1, sorted=1)  # stable descending
    flat = op.Reshape(op.Gather(masks, order), op.Concat(n, ints(-1), axis=0))
    # binary masks as 0/1: the overlap counts are exact integers in float32 below 2**24
    # pixels (and in float64 always), whatever the order of the sums
    pixels = masks.shape.numel() if masks.shape is not None and masks.shape.is_static() else None
    cnt = FLOAT if pixels is not None and pixels < 2**24 else DOUBLE
    m = op.Cast(op.Not(op.Equal(flat, const(0, masks.dtype))), to=cnt)
    inter = to(op.MatMul(m, op.Transpose(m, perm=[1, 0])), dt)
    area = to(op.ReduceSum(m, ints(1), keepdims=0), dt)
    union = op.Sub(op.Add(op.Unsqueeze(area, ints(1)), op.Unsqueeze(area, ints(0))), inter)
    ok = op.Greater(union, const(0, dt))
    iou = op.Where(ok, op.Div(inter, op.Where(ok, union, const(1, dt))), const(0, dt))
    i = arange(n, INT64)
    upper = op.Less(op.Unsqueeze(i, ints(1)), op.Unsqueeze(i, ints(0)))
    lab = op.Gather(labels, order)
    same = op.And(op.Equal(op.Unsqueeze(lab, ints(1)), op.Unsqueeze(lab, ints(0))), upper)
    decay_iou = op.Where(same, iou, const(0, dt))  # [i, j]
    comp = op.Unsqueeze(op.ReduceMax(decay_iou, ints(0), keepdims=0), ints(1))  # by row i
    if kernel == "gaussian":
        neg = const(-sigma, dt)
        ratio = op.Div(op.Exp(op.Mul(neg, op.Mul(decay_iou, decay_iou))),
                       op.Exp(op.Mul(neg, op.Mul(comp, comp))))
    else:
        one = const(1, dt)
        ratio = op.Div(op.Sub(one, decay_iou), op.Sub(one, comp))
        ratio = op.Where(op.Equal(comp, one), const(math.inf, dt), ratio)
    decay = op.ReduceMin(ratio, ints(0), keepdims=0)
    decayed = to(op.Mul(op.Gather(s, order), decay), dtype)
    return op.ScatterElements(to(scores, dtype), order, decayed, axis=0)
