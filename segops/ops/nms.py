"""Suppression: `nms`, `batched_nms`, YOLACT's `fast_nms`, SOLOv2's `matrix_nms` (docs/ops/nms.md).

Every op has a sync-free form: with a capacity (`max_out=` for nms/batched_nms,
`padded=True` for fast_nms) outputs are fixed-size, padded, with a count tensor; on CUDA
that form makes no host synchronisation, so it can be captured in a CUDA graph and traced
by `torch.compile(fullgraph=True)`. Without a capacity, outputs are exactly sized.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _args
from ._library import fake, non_differentiable

__all__ = ["batched_nms", "fast_nms", "matrix_nms", "nms"]


def _exact(count: Tensor, *padded: Tensor) -> tuple[Tensor, ...]:
    """The first `count` rows of each padded output: `narrow` by `count.item()` (one read),
    bounded by `torch._check`, so that `torch.export` (non-strict too) traces an unbacked
    size instead of failing on `int(count)`."""
    n = count.item()
    torch._check(n >= 0)
    for t in padded:
        torch._check(n <= t.shape[0])
    return tuple(t.narrow(0, 0, n) for t in padded)


def nms(
    boxes: Tensor, scores: Tensor, iou_threshold: float, max_out: int | None = None
) -> Tensor | tuple[Tensor, Tensor]:
    """Greedy non-maximum suppression, torchvision's semantics.

    Args:
        boxes: `Tensor[N, 4]` (x1, y1, x2, y2), any float dtype.
        scores: `Tensor[N]`, any float dtype.
        iou_threshold: a box is suppressed by a kept, higher-scored box when their IoU is
            `> iou_threshold`. IoU is computed in float32 (float64 for float64 boxes) and
            compared with the threshold in float64, as torchvision does.
        max_out: capacity of the sync-free form.

    Returns:
        `int64[M]` kept indices by decreasing score, ties by lower index (stable on every
        device). With `max_out`: `(keep int64[max_out] padded with -1, count int64[])`.

    Boxes with a non-finite coordinate and NaN scores are never kept and suppress nothing.
    """
    op = "nms"
    keep, count = torch.ops.segops.nms(
        _args.tensor(op, "boxes", boxes), _args.tensor(op, "scores", scores),
        _args.real(op, "iou_threshold", iou_threshold),
        _args.capacity(op, "max_out", max_out),
    )
    return _exact(count, keep)[0] if max_out is None else (keep, count)


def batched_nms(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor,
    iou_threshold: float,
    max_out: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """NMS within each category `idxs[i]`, in one pass whatever the number of categories
    (no coordinate-offset trick: exact in float16 and at large coordinates).

    Args and returns as :func:`nms`; `idxs` is `Tensor[N]` of integers.
    """
    op = "batched_nms"
    keep, count = torch.ops.segops.batched_nms(
        _args.tensor(op, "boxes", boxes), _args.tensor(op, "scores", scores),
        _args.tensor(op, "idxs", idxs), _args.real(op, "iou_threshold", iou_threshold),
        _args.capacity(op, "max_out", max_out),
    )
    return _exact(count, keep)[0] if max_out is None else (keep, count)


def fast_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.5,
    top_k: int = 200,
    score_threshold: float = 0.05,
    max_detections: int = 100,
    cross_class: bool = False,
    second_threshold: bool = False,
    padded: bool = False,
) -> tuple[Tensor, ...]:
    """YOLACT's Fast NMS (and `cc_fast_nms` with `cross_class=True`).

    Args:
        boxes: `Tensor[N, 4]` decoded anchor boxes.
        scores: `Tensor[C, N]` per-class scores, background excluded.
        iou_threshold: box j of a class is kept iff its largest IoU with any higher-ranked
            box of the class -- suppressed or not -- is `<= iou_threshold`.
        top_k: candidates per class (per image with `cross_class`).
        score_threshold: anchors whose best class score is not `> score_threshold` are
            dropped first.
        max_detections: the output's length cap (ignored with `cross_class`).
        cross_class: one IoU matrix over the best class of every anchor.
        second_threshold: also drop kept detections whose score is not above
            `score_threshold` (YOLACT leaves this off).
        padded: the sync-free form, see below.

    Returns:
        `(indices int64[M], classes int64[M], scores[M])`: anchor indices into the N boxes,
        0-based class ids, scores, by decreasing score (stable). With `padded=True` the
        three have length `max_detections` (`top_k` with `cross_class`), padded with -1,
        -1 and 0, and a fourth element `count int64[]` follows.

    Differences from YOLACT: ties are broken by lower index (YOLACT's sorts are unstable);
    zero-area pairs have IoU 0 (YOLACT: NaN, which suppresses); boxes with non-finite
    coordinates are dropped with the prefilter.
    """
    op = "fast_nms"
    padded = _args.boolean(op, "padded", padded)
    idx, cls, sc, count = torch.ops.segops.fast_nms(
        _args.tensor(op, "boxes", boxes),
        _args.tensor(op, "scores", scores),
        _args.real(op, "iou_threshold", iou_threshold),
        _args.integer(op, "top_k", top_k),
        _args.real(op, "score_threshold", score_threshold),
        _args.integer(op, "max_detections", max_detections),
        _args.boolean(op, "cross_class", cross_class),
        _args.boolean(op, "second_threshold", second_threshold),
    )
    if padded:
        return idx, cls, sc, count
    return _exact(count, idx, cls, sc)


def matrix_nms(
    masks: Tensor,
    labels: Tensor,
    scores: Tensor,
    kernel: str = "gaussian",
    sigma: float = 2.0,
) -> Tensor:
    """SOLOv2's Matrix NMS: the decayed scores, `Tensor[N]` in the input's order.

    Args:
        masks: `Tensor[N, H, W]` binary masks (bool, or 0/1 of any real dtype).
        labels: `Tensor[N]` integer class of each mask.
        scores: `Tensor[N]` float scores; the op sorts them (descending, stable) itself.
        kernel: `"gaussian"` (`exp(-sigma * iou^2)`, as SOLOv2's code, which multiplies by
            sigma where the paper divides) or `"linear"`.
        sigma: the gaussian kernel's sigma.

    Differences from SOLOv2: empty masks have IoU 0 with everything (SOLOv2: NaN); in the
    linear kernel a term whose denominator is 0 (a duplicate of a higher-scored mask) is
    left out of the minimum (SOLOv2: NaN).
    """
    op = "matrix_nms"
    return torch.ops.segops.matrix_nms(
        _args.tensor(op, "masks", masks), _args.tensor(op, "labels", labels),
        _args.tensor(op, "scores", scores), _args.string(op, "kernel", kernel),
        _args.real(op, "sigma", sigma),
    )


# ---- fake (shape) implementations: padded outputs have static sizes ----


def _padded(like: Tensor, capacity: int) -> tuple[Tensor, Tensor]:
    return like.new_empty((capacity,), dtype=torch.int64), like.new_empty((), dtype=torch.int64)


@fake("nms")
def _(boxes, scores, iou_threshold, max_out=-1):
    return _padded(boxes, boxes.shape[0] if max_out < 0 else max_out)


@fake("batched_nms")
def _(boxes, scores, idxs, iou_threshold, max_out=-1):
    return _padded(boxes, boxes.shape[0] if max_out < 0 else max_out)


@fake("fast_nms")
def _(boxes, scores, iou_threshold, top_k, score_threshold, max_detections, cross_class,
      second_threshold):
    cap = top_k if cross_class else max_detections
    idx, count = _padded(boxes, cap)
    return idx, idx.new_empty((cap,)), scores.new_empty((cap,)), count


@fake("matrix_nms")
def _(masks, labels, scores, kernel, sigma):
    return scores.new_empty((masks.shape[0],))


# Suppression is not differentiated through: fast_nms' scores and matrix_nms' decayed scores
# (selections and products of the input scores) do not require grad, like the indices.
non_differentiable("nms", "batched_nms", "fast_nms", "matrix_nms")
