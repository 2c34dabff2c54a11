"""Mask R-CNN's box coding, proposal matching, losses, mask targets and detection
post-processing: part of :mod:`segops.models.mask_rcnn`, which re-exports everything here
(see its docstring for the two flavours and the label convention)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

import segops

from .mask_rcnn_heads import _check_boxes, _expect, pooling_settings

__all__ = [
    "BoxCoder", "box_iou", "clip_boxes", "match_proposals", "fast_rcnn_loss", "mask_targets",
    "mask_loss", "postprocess_detections",
]


class BoxCoder:
    """torchvision's ``BoxCoder`` / detectron2's ``Box2BoxTransform``: deltas
    ``(wx (cx' - cx) / w, wy (cy' - cy) / h, ww log(w' / w), wh log(h' / h))``, weights
    ``(10, 10, 5, 5)``, decoded ``dw, dh`` clamped at ``log(1000 / 16)``. Computed in the
    inputs' dtype promoted to at least float32."""

    def __init__(self, weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
                 clip: float = math.log(1000.0 / 16)) -> None:
        self.weights = tuple(float(w) for w in weights)
        self.clip = float(clip)

    @staticmethod
    def _centres(b: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
        return b[..., 0] + 0.5 * w, b[..., 1] + 0.5 * h, w, h

    def encode(self, gt: Tensor, proposals: Tensor) -> Tensor:
        """``gt [R, 4]``, ``proposals [R, 4]`` -> regression targets ``[R, 4]``."""
        dt = torch.promote_types(torch.promote_types(gt.dtype, proposals.dtype), torch.float32)
        gx, gy, gw, gh = self._centres(gt.to(dt))
        px, py, pw, ph = self._centres(proposals.to(dt))
        wx, wy, ww, wh = self.weights
        return torch.stack([wx * (gx - px) / pw, wy * (gy - py) / ph,
                            ww * torch.log(gw / pw), wh * torch.log(gh / ph)], dim=-1)

    def decode(self, deltas: Tensor, proposals: Tensor) -> Tensor:
        """``deltas [R, 4K]``, ``proposals [R, 4]`` -> boxes ``[R, K, 4]``."""
        dt = torch.promote_types(torch.promote_types(deltas.dtype, proposals.dtype),
                                 torch.float32)
        d = deltas.to(dt).reshape(deltas.shape[0], -1, 4)
        px, py, pw, ph = (t[:, None] for t in self._centres(proposals.to(dt)))
        wx, wy, ww, wh = self.weights
        cx = d[..., 0] / wx * pw + px
        cy = d[..., 1] / wy * ph + py
        w = torch.exp((d[..., 2] / ww).clamp(max=self.clip)) * pw
        h = torch.exp((d[..., 3] / wh).clamp(max=self.clip)) * ph
        return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU ``[A, B]`` of ``(x1, y1, x2, y2)`` boxes, no +1 convention (0 for empty unions)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), 0)


def clip_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clamp x to ``[0, W]`` and y to ``[0, H]`` (``boxes [..., 4]``)."""
    h, w = image_size
    x = boxes[..., 0::2].clamp(0, w)
    y = boxes[..., 1::2].clamp(0, h)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def match_proposals(proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
                    iou_threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """Each proposal takes the label of its best-overlapping GT box if that IoU is
    ``>= iou_threshold``, else background 0 (both references' RoI-head matcher).

    Returns ``labels [R]`` int64 (0 or a GT label in 1..K) and ``matched_idxs [R]`` int64
    (the best GT's index; 0 where there is no GT)."""
    r = proposals.shape[0]
    if gt_boxes.shape[0] == 0:
        zeros = torch.zeros(r, dtype=torch.int64, device=proposals.device)
        return zeros, zeros.clone()
    iou, matched = box_iou(proposals.float(), gt_boxes.float()).max(dim=1)
    labels = torch.where(iou >= iou_threshold, gt_labels.long()[matched], 0)
    return labels, matched


def fast_rcnn_loss(class_logits: Tensor, box_regression: Tensor, labels: Tensor,
                   regression_targets: Tensor, beta: float = 1 / 9) -> tuple[Tensor, Tensor]:
    """``(cross_entropy(class_logits, labels), smooth_l1(beta, sum over positives) / R)``;
    ``box_regression [R, 4K]`` is read at the GT class's 4 columns. ``beta = 0`` is L1."""
    loss_cls = F.cross_entropy(class_logits, labels)
    pos = torch.nonzero(labels > 0).squeeze(1)
    picked = box_regression.reshape(box_regression.shape[0], -1, 4)[pos, labels[pos] - 1]
    loss_box = F.smooth_l1_loss(picked, regression_targets[pos].to(picked.dtype), beta=beta,
                                reduction="sum") / max(labels.numel(), 1)
    return loss_cls, loss_box


def mask_targets(gt_masks: Tensor, boxes: Tensor, matched_idxs: Tensor, resolution: int = 28,
                 flavour: str = "torchvision") -> Tensor:
    """GT masks RoIAligned into each (positive) box of one image.

    Args:
        gt_masks: ``[G, H, W]`` (bool or float) in image pixels.
        boxes: ``[P, 4]`` float boxes; matched_idxs: ``[P]`` int, the GT of each box.
        resolution: ``M`` (28).
        flavour: ``"torchvision"``: ``roi_align(gt[:, None], rois, M, 1.0)`` with
            roi_align's defaults (adaptive sampling, not aligned), soft targets in [0, 1];
            ``"detectron2"``: ``roi_align(..., M, 1.0, 0, aligned=True) >= 0.5``, 0/1.

    Returns ``[P, M, M]`` in boxes' dtype.
    """
    pooling_settings(flavour)
    boxes = _check_boxes(boxes, "mask_targets", "boxes")
    _expect(gt_masks, "gt_masks", "[G, H, W]", lambda t: t.dim() == 3, "mask_targets")
    _expect(matched_idxs, "matched_idxs", f"[P] with P = {boxes.shape[0]}",
            lambda t: t.shape == boxes.shape[:1], "mask_targets")
    rois = torch.cat([matched_idxs[:, None].to(boxes), boxes], dim=1)
    masks = gt_masks[:, None].to(boxes)
    if flavour == "torchvision":
        return segops.roi_align(masks, rois, resolution, 1.0)[:, 0]
    out = segops.roi_align(masks, rois, resolution, 1.0, sampling_ratio=0, aligned=True)
    return (out[:, 0] >= 0.5).to(boxes.dtype)


def mask_loss(mask_logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """Per-pixel sigmoid BCE on the GT class channel of the positive RoIs, averaged.

    Args:
        mask_logits: ``[P, K, M, M]``; labels: ``[P]`` int in ``1..K`` (channel
            ``label - 1``); targets: ``[P, M, M]`` in [0, 1].

    Returns a scalar in mask_logits' dtype; ``mask_logits.sum() * 0`` (so backward works)
    when ``P == 0``.
    """
    _expect(mask_logits, "mask_logits", "[P, K, M, M]", lambda t: t.dim() == 4)
    p, k, mh, mw = mask_logits.shape
    _expect(labels, "labels", f"an int Tensor[{p}]",
            lambda t: t.shape == (p,) and not t.is_floating_point())
    _expect(targets, "targets", f"[{p}, {mh}, {mw}]", lambda t: t.shape == (p, mh, mw))
    if p == 0:
        return mask_logits.sum() * 0
    if bool((labels < 1).any() | (labels > k).any()):
        raise ValueError(f"mask_loss: `labels` must lie in [1, {k}] (positive RoIs), got "
                         f"{labels.tolist()}")
    picked = mask_logits[torch.arange(p, device=labels.device), labels.long() - 1]
    return F.binary_cross_entropy_with_logits(picked, targets.to(picked.dtype))


def postprocess_detections(class_logits: Tensor, box_regression: Tensor,
                           proposals: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]],
                           box_coder: BoxCoder | None = None, score_threshold: float = 0.05,
                           nms_threshold: float = 0.5, detections_per_image: int = 100,
                           flavour: str = "torchvision") -> list[dict[str, Tensor]]:
    """Per image: decode (class-specific), clip, softmax scores without background, keep
    ``score > score_threshold`` (strict), drop degenerate boxes (torchvision: a side
    ``< 1e-2`` after clipping; detectron2: proposals with a non-finite box or score),
    :func:`segops.batched_nms` per class, keep the first ``detections_per_image``.

    Args:
        class_logits: ``[R, K + 1]``; box_regression: ``[R, 4K]``; proposals: one
            ``[R_i, 4]`` per image (``sum R_i = R``); image_sizes: one ``(H, W)`` per image.

    Returns one dict per image: ``boxes [D, 4]``, ``scores [D]`` (decreasing), ``labels [D]``
    int64 in ``1..K``.
    """
    pooling_settings(flavour)
    coder = box_coder or BoxCoder()
    boxes_all = coder.decode(box_regression, torch.cat(list(proposals)))
    scores_all = F.softmax(class_logits, dim=-1)
    out = []
    for boxes, scores, size in zip(boxes_all.split([len(p) for p in proposals]),
                                   scores_all.split([len(p) for p in proposals]), image_sizes):
        finite = torch.isfinite(boxes).flatten(1).all(1) & torch.isfinite(scores).all(1)
        boxes, scores = clip_boxes(boxes, size), scores[:, 1:]
        labels = torch.arange(1, scores.shape[1] + 1, device=boxes.device).expand_as(scores)
        keep = scores > score_threshold  # [R, K]: flattened proposal-major, class-minor
        if flavour == "torchvision":
            keep &= ((boxes[..., 2:] - boxes[..., :2]) >= 1e-2).all(-1)
        else:
            keep &= finite[:, None]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        kept = segops.batched_nms(boxes, scores, labels, nms_threshold)[:detections_per_image]
        out.append({"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]})
    return out
