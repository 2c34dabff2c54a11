"""nms family: nms, batched_nms, fast_nms (YOLACT), matrix_nms (SOLOv2).

Sizes (``--quick`` in brackets):

- ``nms``: 1k / 10k / 100k [100 / 200 / 400] detector boxes in an 800x1216 image, clustered
  around up to 50 objects (see ``inputs.detector_boxes``), IoU threshold 0.5; 364 / 1469 /
  6158 boxes are kept. At 100k the pure-PyTorch reference takes several seconds a call on
  CPU: like every call over 2 s (``timing.SINGLE_CALL_S``) it is timed once, after one
  untimed call (``calls`` 1).
- ``batched_nms``: 10k [200] such boxes in 80 [8] classes (a box's class is its object's
  with probability 0.7), IoU threshold 0.5; 3855 are kept. Also 200k [2000] boxes in 80
  [8] classes: the size at which the CUDA kernels' mask is chunked many times over
  (docs/cost_model/nms.md).
- ``fast_nms``: YOLACT's 19248 anchors of a 550x550 image [1023 anchors of 128x128] x 80
  [8] classes, 500 / 5000 / 19000 of them [27 / 266 / 1010] with a class score above
  ``score_threshold`` 0.05 (every other score below it); top_k 200, max_detections 100,
  IoU threshold 0.5 (``inputs.yolact_detections``).
- ``matrix_nms``: 500 [20] mask candidates of 200x304 [32x32] (1/4 of 800x1216, SOLOv2's
  mask resolution) in 80 [8] classes, gaussian kernel, sigma 2.0.

Implementations: ``segops``; ``segops-padded``, the sync-free form (``max_out=N`` for
nms / batched_nms: a capacity that never truncates; ``padded=True`` for fast_nms), which on
CUDA makes no host synchronisation; ``torchvision`` (nms, batched_nms) where importable;
``reference``. Index outputs must equal segops' exactly (``exact=True``; padded outputs
are cut to their count first); scores are distinct, so tie-breaking cannot differ.

Memory floors (``s``: the dtype's size): the inputs read once, boxes ``4 N s``, scores
``N s`` (fast_nms: ``C A s``), batched_nms' labels and matrix_nms' ``int64`` labels ``8 N``,
matrix_nms' bool masks ``N H W``; the outputs (segops' result, of data-dependent size)
written once. These ops compute far more than they move (O(N^2) IoUs): their floors are
far below their times.
"""

from __future__ import annotations

import math
from typing import Any, Dict

import torch
from .inputs import MASK_RCNN_IMAGE, detector_boxes, instance_masks, yolact_detections
from .registry import Ctx, Fn, nbytes, op_impls, register

IOU_THRESHOLD = 0.5  # torchvision's detection models (RPN proposals use 0.7)

NMS_SIZES = ((1000, 100), (10000, 200), (100000, 400))  # (full, --quick) box counts
BATCHED_SIZE = ((10000, 80), (200, 8))  # (boxes, classes): full, --quick
BATCHED_LARGE = ((200000, 80), (2000, 8))

FAST_NMS = dict(top_k=200, score_threshold=0.05, max_detections=100)
FAST_NMS_IMAGE = (550, 128)  # full, --quick: 19248 and 1023 anchors
FAST_NMS_CLASSES = (80, 8)
FAST_NMS_ABOVE = (500, 5000, 19000)  # anchors above score_threshold, out of 19248

MATRIX_NMS = ((500, (200, 304), 80), (20, (32, 32), 8))  # (masks, HxW, classes)
MATRIX_NMS_KERNEL = dict(kernel="gaussian", sigma=2.0)


def _pick(ctx: Ctx, full_quick):
    return full_quick[1] if ctx.quick else full_quick[0]


def _num_objects(num_boxes: int) -> int:
    return min(50, max(5, num_boxes // 20))


def _unpad_keep(out):
    keep, count = out
    return keep[: int(count)]


def _unpad_fast(out):
    n = int(out[3])
    return tuple(t[:n] for t in out[:3])


def _boxes_and_scores(ctx: Ctx, n: int, num_classes: int = 80):
    boxes, scores, cls = detector_boxes(n, MASK_RCNN_IMAGE, _num_objects(n), num_classes)
    return (boxes.to(ctx.device, ctx.dtype), scores.to(ctx.device, ctx.dtype),
            cls.to(ctx.device))


# ---- nms, batched_nms


def _nms_setup(k: int):
    def setup(ctx: Ctx) -> Dict[str, Any]:
        n = _pick(ctx, NMS_SIZES[k])
        boxes, scores, _ = _boxes_and_scores(ctx, n)
        impls: Dict[str, Any] = {
            name: (lambda fn=fn: fn(boxes, scores, IOU_THRESHOLD))
            for name, fn in op_impls(ctx, "nms").items()
        }
        if ctx.wants("segops-padded"):
            impls["segops-padded"] = Fn(
                call=lambda: ctx.segops.nms(boxes, scores, IOU_THRESHOLD, max_out=n),
                output=_unpad_keep)
        return impls

    return setup


def _batched_nms_setup(sizes):
    def setup(ctx: Ctx) -> Dict[str, Any]:
        n, c = _pick(ctx, sizes)
        boxes, scores, cls = _boxes_and_scores(ctx, n, num_classes=c)
        impls: Dict[str, Any] = {
            name: (lambda fn=fn: fn(boxes, scores, cls, IOU_THRESHOLD))
            for name, fn in op_impls(ctx, "batched_nms").items()
        }
        if ctx.wants("segops-padded"):
            impls["segops-padded"] = Fn(
                call=lambda: ctx.segops.batched_nms(boxes, scores, cls, IOU_THRESHOLD,
                                                    max_out=n),
                output=_unpad_keep)
        return impls

    return setup


# ---- fast_nms


def _fast_nms_sizes(ctx: Ctx, k: int):
    """(image size, classes, anchors above the threshold); anchors counted by the caller."""
    image, classes = _pick(ctx, FAST_NMS_IMAGE), _pick(ctx, FAST_NMS_CLASSES)
    above = FAST_NMS_ABOVE[k]
    if ctx.quick:  # the same fraction of the anchors as at full size
        above = round(above * _num_anchors(image) / _num_anchors(FAST_NMS_IMAGE[0]))
    return image, classes, above


def _num_anchors(image: int) -> int:
    return 3 * sum(math.ceil(image / s) ** 2 for s in (8, 16, 32, 64, 128))  # as yolact_anchors


def _fast_nms_name(k: int):
    def name(ctx: Ctx) -> str:
        image, classes, above = _fast_nms_sizes(ctx, k)
        return (f"A{_num_anchors(image)} C{classes} {above} above {FAST_NMS['score_threshold']}"
                f" top{FAST_NMS['top_k']} det{FAST_NMS['max_detections']} iou{IOU_THRESHOLD}")

    return name


def _fast_nms_setup(k: int):
    def setup(ctx: Ctx) -> Dict[str, Any]:
        image, classes, above = _fast_nms_sizes(ctx, k)
        boxes, scores = yolact_detections(classes, above, image,
                                          score_threshold=FAST_NMS["score_threshold"])
        boxes, scores = boxes.to(ctx.device, ctx.dtype), scores.to(ctx.device, ctx.dtype)
        impls: Dict[str, Any] = {
            name: (lambda fn=fn: fn(boxes, scores, IOU_THRESHOLD, **FAST_NMS))
            for name, fn in op_impls(ctx, "fast_nms", torchvision=False).items()
        }
        if ctx.wants("segops-padded"):
            impls["segops-padded"] = Fn(
                call=lambda: ctx.segops.fast_nms(boxes, scores, IOU_THRESHOLD, padded=True,
                                                 **FAST_NMS),
                output=_unpad_fast)
        return impls

    return setup


# ---- matrix_nms


def _matrix_nms_name(ctx: Ctx) -> str:
    n, (h, w), c = _pick(ctx, MATRIX_NMS)
    return f"N{n} {h}x{w} C{c} {MATRIX_NMS_KERNEL['kernel']} sigma{MATRIX_NMS_KERNEL['sigma']}"


def _matrix_nms_setup(ctx: Ctx) -> Dict[str, Any]:
    n, hw, c = _pick(ctx, MATRIX_NMS)
    masks, labels, scores = instance_masks(n, hw, max(4, n // 20), c)
    masks, labels = masks.to(ctx.device), labels.to(ctx.device)
    scores = scores.to(ctx.device, ctx.dtype)
    return {
        name: (lambda fn=fn: fn(masks, labels, scores, **MATRIX_NMS_KERNEL))
        for name, fn in op_impls(ctx, "matrix_nms", torchvision=False).items()
    }


def _floor(*inputs):
    """A floor of the given input terms (``nbytes`` items, functions of ctx) plus the
    output."""

    def floor(ctx: Ctx, out) -> int:
        return nbytes(*(term(ctx) for term in inputs), out)

    return floor


def _boxes_scores(sizes):
    return lambda ctx: (((_pick(ctx, sizes), 5), ctx.dtype),)  # 4 coordinates + a score


def _fast_nms_inputs(k: int):
    def term(ctx: Ctx):
        image, classes, _ = _fast_nms_sizes(ctx, k)
        a = _num_anchors(image)
        return (((a, 4), ctx.dtype), ((classes, a), ctx.dtype))

    return term


def _matrix_nms_inputs(ctx: Ctx):
    n, (h, w), _ = _pick(ctx, MATRIX_NMS)
    return (((n, h, w), torch.bool), ((n,), torch.int64), ((n,), ctx.dtype))


def register_cases() -> None:
    # params: the options, not the sizes (those differ with --quick; the name has them)
    for k, sizes in enumerate(NMS_SIZES):
        register("nms", lambda ctx, s=sizes: f"N{_pick(ctx, s)} iou{IOU_THRESHOLD}",
                 _nms_setup(k), exact=True, floor=_floor(_boxes_scores(sizes)),
                 slow_reference=k == 2, iou_threshold=IOU_THRESHOLD)
    for sizes in (BATCHED_SIZE, BATCHED_LARGE):
        register("batched_nms",
                 lambda ctx, s=sizes: "N{} C{} iou{}".format(*_pick(ctx, s), IOU_THRESHOLD),
                 _batched_nms_setup(sizes), exact=True, slow_reference=sizes is BATCHED_LARGE,
                 floor=_floor(lambda ctx, s=sizes: (((_pick(ctx, s)[0], 5), ctx.dtype),),
                              lambda ctx, s=sizes: (((_pick(ctx, s)[0],), torch.int64),)),
                 iou_threshold=IOU_THRESHOLD)
    for k in range(len(FAST_NMS_ABOVE)):
        register("fast_nms", _fast_nms_name(k), _fast_nms_setup(k), exact=True,
                 floor=_floor(_fast_nms_inputs(k)), iou_threshold=IOU_THRESHOLD, **FAST_NMS)
    register("matrix_nms", _matrix_nms_name, _matrix_nms_setup,
             floor=_floor(_matrix_nms_inputs), **MATRIX_NMS_KERNEL)
