"""Pure-PyTorch references for the suppression ops (docs/ops/nms.md).

These are the executable form of the spec and the oracle the tests compare the kernels
against. They are written to be read, and vectorised enough to serve as the baseline of the
benchmarks (``nms`` on 10k boxes takes well under a second).

Shared arithmetic
-----------------
* Box IoU is ``inter / (area_a + area_b - inter)`` with
  ``inter = max(min(x2) - max(x1), 0) * max(min(y2) - max(y1), 0)`` and
  ``area = (x2 - x1) * (y2 - y1)``, evaluated left to right in float32 for float32, float16
  and bfloat16 boxes and in float64 for float64 boxes. A pair whose union is ``<= 0`` has
  IoU 0 (torchvision and YOLACT give NaN for two zero-area boxes).
* ``nms``/``batched_nms`` compare the IoU with the threshold exactly (in float64, as
  torchvision's kernels do: a float32 IoU is compared with the Python ``float`` itself).
  ``fast_nms`` compares as YOLACT's tensor comparisons do: the IoU with the threshold
  rounded to the IoU's dtype (float32, or float64 for float64 boxes), the scores with
  ``score_threshold`` rounded to the scores' dtype. (``0.3`` rounds up in float32, so a
  float32 IoU equal to ``float32(0.3)`` suppresses in ``nms`` and is kept by ``fast_nms``.)
* Ties in a score are broken by the lower original index (stable descending sorts);
  ``-0.0`` and ``0.0`` are equal scores.
* A box with a non-finite coordinate is absent: never kept, never suppresses (``box_iou``
  gives it IoU 0 with every box, itself included). So is a box with a NaN score in
  ``nms``/``batched_nms``; ``fast_nms`` drops such anchors with its prefilter, as it drops
  an anchor with a NaN among its class scores (the max over classes is NaN, as
  ``torch.max``).

Differences from the originals that are part of segops' spec, and so of these references:

* ``nms``/``batched_nms`` (torchvision): non-finite boxes and NaN scores are never kept;
  ``batched_nms`` suppresses within equal ``idxs`` directly (no coordinate offsets); the
  ``max_out`` form returns ``(keep padded with -1, count)``.
* ``fast_nms`` (YOLACT ``fast_nms``/``cc_fast_nms``): zero-union pairs have IoU 0 instead of
  NaN; anchors with non-finite boxes are dropped with the prefilter; sorts are stable (ties
  by lower index; YOLACT's sorts are not); the scores and indices of
  every class are taken from the same ``D = min(top_k, #prefiltered)`` anchors, as YOLACT;
  ``indices`` index the original anchors (YOLACT returns boxes, not indices);
  ``padded=True`` gives fixed-size outputs plus a count.
* ``matrix_nms`` (SOLOv2): empty masks have IoU 0 (not NaN); linear-kernel terms whose
  denominator is 0 are left out of the minimum (not NaN); the op sorts by score itself and
  returns the decayed scores in the input order.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor


__all__ = ["box_iou", "nms", "batched_nms", "fast_nms", "matrix_nms"]



# --------------------------------------------------------------------------------------
# IoU
# --------------------------------------------------------------------------------------


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _finite_boxes(boxes: Tensor) -> Tensor:
    return torch.isfinite(boxes).all(dim=-1)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU ``[..., Na, Nb]`` of boxes ``[..., Na, 4]`` and ``[..., Nb, 4]``.

    Computed in float32 (float64 for float64 boxes). Zero-union pairs and pairs with a
    non-finite box have IoU 0.
    """
    dt = _compute_dtype(a.dtype if a.dtype == b.dtype else torch.promote_types(a.dtype, b.dtype))
    a, b = a.to(dt), b.to(dt)
    valid = _finite_boxes(a).unsqueeze(-1) & _finite_boxes(b).unsqueeze(-2)
    ax1, ay1, ax2, ay2 = (a[..., k].unsqueeze(-1) for k in range(4))
    bx1, by1, bx2, by2 = (b[..., k].unsqueeze(-2) for k in range(4))
    area_a = (ax2 - ax1) * (ay2 - ay1)
    area_b = (bx2 - bx1) * (by2 - by1)
    w = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp_min(0)
    h = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp_min(0)
    inter = w * h
    union = (area_a + area_b) - inter
    ok = valid & (union > 0)
    iou = inter / torch.where(ok, union, torch.ones_like(union))
    return torch.where(ok, iou, torch.zeros_like(iou))


def _rounded(t: float, dtype: torch.dtype) -> float:
    """``t`` rounded to ``dtype``, as a tensor comparison with a Python scalar rounds it."""
    return float(torch.tensor(float(t), dtype=torch.float64).to(dtype))


def _sort_desc(scores: Tensor, dim: int = -1) -> Tuple[Tensor, Tensor]:
    """Stable descending sort (ties: lower index first; -0.0 == 0.0)."""
    return torch.sort(scores, dim=dim, descending=True, stable=True)


def _pad(t: Tensor, capacity: int, fill) -> Tensor:
    out = torch.full((capacity,), fill, dtype=t.dtype, device=t.device)
    n = min(capacity, t.numel())
    out[:n] = t[:n]
    return out


# --------------------------------------------------------------------------------------
# greedy NMS (torchvision)
# --------------------------------------------------------------------------------------


def _greedy(boxes: Tensor, scores: Tensor, iou_threshold: float, idxs: Optional[Tensor]) -> Tensor:
    device = boxes.device
    boxes, scores = boxes.cpu(), scores.cpu()  # the loop runs on the host
    valid = _finite_boxes(boxes) & ~torch.isnan(scores)
    cand = torch.nonzero(valid).flatten()
    order = cand[_sort_desc(scores[cand])[1]]  # valid boxes, best first
    # numpy views in the compute dtype: the loop is cheaper per step than torch's, and
    # numpy float32 arithmetic is IEEE float32 arithmetic, the same as box_iou's.
    x1, y1, x2, y2 = boxes[order].to(_compute_dtype(boxes.dtype)).T.contiguous().numpy()
    cls = idxs.cpu()[order].to(torch.int64).numpy() if idxs is not None else None
    areas = (x2 - x1) * (y2 - y1)
    n = order.numel()
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        # IoU of box i with every later box, evaluated as in box_iou.
        w = np.maximum(np.minimum(x2[i], x2[i + 1:]) - np.maximum(x1[i], x1[i + 1:]), 0)
        h = np.maximum(np.minimum(y2[i], y2[i + 1:]) - np.maximum(y1[i], y1[i + 1:]), 0)
        inter = w * h
        union = (areas[i] + areas[i + 1:]) - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            # the comparison in float64: exact, not against the threshold rounded to float32
            hit = (union > 0) & ((inter / union).astype(np.float64) > float(iou_threshold))
        if cls is not None:
            hit &= cls[i + 1:] == cls[i]
        suppressed[i + 1:] |= hit
    return order[torch.tensor(keep, dtype=torch.int64)].to(device)


def _maybe_padded(keep: Tensor, max_out: Optional[int]) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    if max_out is None:
        return keep
    max_out = int(max_out)
    count = torch.tensor(min(keep.numel(), max_out), dtype=torch.int64, device=keep.device)
    return _pad(keep, max_out, -1), count


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float,
        max_out: Optional[int] = None) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Greedy NMS: indices of the kept boxes by decreasing score (ties: lower index).

    A box is suppressed by a kept higher-ranked box when their IoU is ``> iou_threshold``.
    With ``max_out=K``: ``(keep int64[K] padded with -1, count int64[])``.
    """
    return _maybe_padded(_greedy(boxes, scores, iou_threshold, None), max_out)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float,
                max_out: Optional[int] = None) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Greedy NMS within each ``idxs`` value; the result is ordered as ``nms``'s."""
    return _maybe_padded(_greedy(boxes, scores, iou_threshold, idxs), max_out)


# --------------------------------------------------------------------------------------
# Fast NMS (YOLACT)
# --------------------------------------------------------------------------------------


def _column_max_keep(bx: Tensor, iou_threshold: float) -> Tensor:
    """YOLACT's rule on ranked boxes ``[..., D, 4]``: keep j iff max_{i<j} IoU_ij <= t."""
    iou = box_iou(bx, bx).triu(diagonal=1)  # [..., D, D], row i < column j
    if bx.size(-2) == 0:
        return torch.zeros(bx.shape[:-1], dtype=torch.bool, device=bx.device)
    m = iou.max(dim=-2).values  # [..., D]; IoUs are >= 0, so column 0 gives 0
    keep = m <= _rounded(iou_threshold, m.dtype)  # a comparison in m's dtype, as YOLACT
    keep[..., 0] = True  # the top box of each class is always kept
    return keep


def fast_nms(boxes: Tensor, scores: Tensor, iou_threshold: float = 0.5, top_k: int = 200,
             score_threshold: float = 0.05, max_detections: int = 100, cross_class: bool = False,
             second_threshold: bool = False, padded: bool = False):
    """YOLACT's Fast NMS; ``boxes [N, 4]``, per-class ``scores [C, N]``.

    Returns ``(indices int64[M], classes int64[M], scores[M])``; with ``padded=True`` the
    three have length ``max_detections`` (``top_k`` when ``cross_class``), padded with
    ``-1, -1, 0``, and a fourth element ``count int64[]``.
    """
    top_k, max_detections = int(top_k), int(max_detections)
    C, N = scores.shape
    dev = boxes.device

    if C == 0 or N == 0:
        idx = torch.zeros(0, dtype=torch.int64, device=dev)
        cls, sc = idx.clone(), torch.zeros(0, dtype=scores.dtype, device=dev)
    else:
        # 1. prefilter on the max over classes (a NaN class score makes the max NaN: dropped)
        # (and anchors with a non-finite box are absent)
        max_scores, _ = scores.max(dim=0)
        thr = _rounded(score_threshold, scores.dtype)  # compared in the scores' dtype
        pre = torch.nonzero((max_scores > thr) & _finite_boxes(boxes)).flatten()  # ascending
        if cross_class:
            s = max_scores[pre]
            col = scores[:, pre]
            # argmax, first maximum on ties
            cls_pre = (col == s.unsqueeze(0)).to(torch.int64).argmax(dim=0)
            s_sorted, order = _sort_desc(s)
            order, s_sorted = order[:top_k], s_sorted[:top_k]
            anchors = pre[order]
            keep = _column_max_keep(boxes[anchors], iou_threshold)
            if second_threshold:
                keep &= s_sorted > thr
            idx, cls, sc = anchors[keep], cls_pre[order][keep], s_sorted[keep]
        else:
            # 2. per class, the prefiltered anchors sorted by that class's score, first top_k
            s_sorted, order = _sort_desc(scores[:, pre], dim=1)  # [C, P]
            D = min(top_k, pre.numel())
            s_sorted, anchors = s_sorted[:, :D], pre[order[:, :D]]  # [C, D]
            # 3. column-max rule within each class
            keep = _column_max_keep(boxes[anchors], iou_threshold)  # [C, D]
            if second_threshold:
                keep &= s_sorted > thr
            classes = torch.arange(C, device=dev).unsqueeze(1).expand(C, D)
            # 4. merge (class-major), stable sort by score, first max_detections
            idx, cls, sc = anchors[keep], classes[keep], s_sorted[keep]
            sc, o = _sort_desc(sc)
            o, sc = o[:max_detections], sc[:max_detections]
            idx, cls = idx[o], cls[o]
    if not padded:
        return idx, cls, sc
    capacity = top_k if cross_class else max_detections
    count = torch.tensor(min(idx.numel(), capacity), dtype=torch.int64, device=dev)
    return _pad(idx, capacity, -1), _pad(cls, capacity, -1), _pad(sc, capacity, 0), count


# --------------------------------------------------------------------------------------
# Matrix NMS (SOLOv2)
# --------------------------------------------------------------------------------------


def matrix_nms(masks: Tensor, labels: Tensor, scores: Tensor, kernel: str = "gaussian",
               sigma: float = 2.0) -> Tensor:
    """SOLOv2's Matrix NMS: decayed scores ``[N]`` in the input order."""
    N = masks.size(0)
    if N == 0:
        return scores.clone()

    dt = _compute_dtype(scores.dtype)
    _, order = _sort_desc(scores)
    # Binary masks flattened; the counts are exact integers, also in dt.
    # (float32 sums of 0/1 products are exact below 2**24 pixels.)
    cnt = torch.float32 if masks[0].numel() < 2 ** 24 else torch.float64
    m = (masks[order].reshape(N, -1) != 0).to(cnt)
    inter = (m @ m.T).to(dt)
    area = m.sum(dim=1).to(dt)
    union = area[:, None] + area[None, :] - inter
    ok = union > 0
    iou = torch.where(ok, inter / torch.where(ok, union, torch.ones_like(union)),
                      torch.zeros_like(union))
    iou = iou.triu(diagonal=1)  # iou_ij for i < j (i the higher-scored)
    lab = labels[order]
    same = (lab[:, None] == lab[None, :]).triu(diagonal=1)
    decay_iou = torch.where(same, iou, torch.zeros_like(iou))  # [i, j]
    comp = decay_iou.max(dim=0).values  # comp_i: max IoU of i with a higher-scored mask
    comp = comp[:, None]  # indexed by the row i
    if kernel == "gaussian":
        decay_matrix = torch.exp(-sigma * decay_iou ** 2)
        comp_matrix = torch.exp(-sigma * comp ** 2)
        decay = (decay_matrix / comp_matrix).min(dim=0).values
    else:
        terms = (1 - decay_iou) / (1 - comp)
        terms = torch.where(comp == 1, torch.full_like(terms, float("inf")), terms)
        decay = terms.min(dim=0).values
    out = torch.empty_like(scores)
    out[order] = (scores[order].to(dt) * decay).to(scores.dtype)
    return out
