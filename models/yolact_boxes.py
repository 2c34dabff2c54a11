"""YOLACT's anchors and box coding (dbolya/yolact ``make_priors``, ``layers/box_utils.py``):
priors in relative (cx, cy, w, h), decoding/encoding with variances (0.1, 0.2), IoU and
the prior matching that picks the mask loss's positives. Used by ``models/yolact.py``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["VARIANCES", "make_priors", "point_form", "decode", "encode", "box_iou", "match"]

VARIANCES = (0.1, 0.2)  # YOLACT's box-regression variances (centre, size)



def make_priors(
    feature_sizes: Sequence[tuple[int, int]],
    scales: Sequence[float] = (24, 48, 96, 192, 384),
    aspect_ratios: Sequence[float] = (1.0, 0.5, 2.0),
    max_size: float = 550,
    device: torch.device | str | None = None,
) -> Tensor:
    """YOLACT's priors: ``Tensor[N, 4]`` float32 ``(cx, cy, w, h)`` relative to the image.

    For level ``l`` of size ``(h, w)``, location ``(j, i)`` in raster order and each aspect
    ratio ``ar`` in order: ``cx = (i + 0.5) / w``, ``cy = (j + 0.5) / h``,
    ``w = h = scales[l] * sqrt(ar) / max_size`` (``use_pixel_scales``, ``preapply_sqrt=False``,
    ``use_square_anchors``: the anchor is square). Computed in float64 (YOLACT's Python
    floats) and rounded to float32 once, as ``torch.Tensor(prior_data)`` does.
    ``N = len(aspect_ratios) * sum(h * w)``: 19248 for a 550x550 input.
    """
    if len(feature_sizes) != len(scales):
        raise ValueError(
            f"make_priors: {len(feature_sizes)} feature sizes but {len(scales)} scales")
    out = []
    for (h, w), scale in zip(feature_sizes, scales):
        ys = (torch.arange(h, dtype=torch.float64) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float64) + 0.5) / w
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        sides = torch.tensor([scale * math.sqrt(ar) / max_size for ar in aspect_ratios],
                             dtype=torch.float64)
        a = len(aspect_ratios)
        cx = cx.reshape(-1, 1).expand(-1, a)
        cy = cy.reshape(-1, 1).expand(-1, a)
        s = sides.expand(h * w, a)
        out.append(torch.stack([cx, cy, s, s], dim=-1).reshape(-1, 4))
    return torch.cat(out).to(device=device, dtype=torch.float32)


def point_form(boxes: Tensor) -> Tensor:
    """``(cx, cy, w, h) [..., 4] -> (x1, y1, x2, y2) [..., 4]``."""
    return torch.cat([boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2],
                     dim=-1)


def decode(loc: Tensor, priors: Tensor) -> Tensor:
    """YOLACT's ``decode``: regressions ``[..., N, 4]`` on priors ``[N, 4]`` (cx, cy, w, h)
    to relative ``(x1, y1, x2, y2) [..., N, 4]``.

    ``c = prior_c + loc_c * 0.1 * prior_wh``; ``wh = prior_wh * exp(loc_wh * 0.2)``;
    ``x1y1 = c - wh / 2``; ``x2y2 = x1y1 + wh`` (YOLACT's order of operations).
    """
    c = priors[..., :2] + loc[..., :2] * VARIANCES[0] * priors[..., 2:]
    wh = priors[..., 2:] * torch.exp(loc[..., 2:] * VARIANCES[1])
    x1y1 = c - wh / 2
    return torch.cat([x1y1, wh + x1y1], dim=-1)


def encode(matched: Tensor, priors: Tensor) -> Tensor:
    """Inverse of :func:`decode`: point-form boxes ``[N, 4]`` -> regression targets ``[N, 4]``."""
    c = ((matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]) / (VARIANCES[0] * priors[:, 2:])
    wh = torch.log((matched[:, 2:] - matched[:, :2]) / priors[:, 2:]) / VARIANCES[1]
    return torch.cat([c, wh], dim=1)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU ``[Na, Nb]`` of point-form boxes (YOLACT's ``jaccard``; no +1 convention)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None]
    area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None, :]
    return inter / (area_a + area_b - inter)


@torch.no_grad()
def match(
    gt_boxes: Tensor,
    gt_labels: Tensor,
    priors: Tensor,
    pos_threshold: float = 0.5,
    neg_threshold: float = 0.4,
    crowd_boxes: Tensor | None = None,
    crowd_iou_threshold: float = 0.7,
) -> tuple[Tensor, Tensor, Tensor]:
    """YOLACT's ``match`` for one image (``use_prediction_matching`` off, as released).

    Args:
        gt_boxes: ``Tensor[G, 4]`` relative point-form GT boxes (crowds excluded).
        gt_labels: ``Tensor[G]`` 0-based class ids.
        priors: ``Tensor[N, 4]`` (cx, cy, w, h).
        crowd_boxes: optional ``Tensor[Gc, 4]`` crowd boxes: a prior that is not positive
            and whose area lies ``> crowd_iou_threshold`` inside a crowd box
            (intersection / prior area) becomes neutral (none when the threshold is >= 1).

    Returns:
        ``(conf_t int64[N], idx_t int64[N], loc_t [N, 4])``: ``conf_t`` is the class + 1 for
        positives (IoU with the best GT ``>= pos_threshold``), -1 for neutrals, 0 for
        background (``< neg_threshold``); ``idx_t`` the matched GT per prior; ``loc_t`` the
        :func:`encode` targets. Each GT is first forced onto its best prior, greedily by
        highest overlap, as YOLACT does, so that every GT gets a positive.
    """
    n = priors.shape[0]
    pf = point_form(priors)
    if gt_boxes.shape[0] == 0:
        conf = torch.zeros(n, dtype=torch.int64, device=priors.device)
        _neutralise_crowds(conf, pf, crowd_boxes, crowd_iou_threshold)
        return (conf, torch.zeros(n, dtype=torch.int64, device=priors.device),
                torch.zeros(n, 4, dtype=priors.dtype, device=priors.device))
    overlaps = box_iou(gt_boxes, pf)  # [G, N]
    best_truth_overlap, best_truth_idx = overlaps.max(0)
    for _ in range(overlaps.shape[0]):
        best_prior_overlap, best_prior_idx = overlaps.max(1)
        j = best_prior_overlap.argmax()
        i = best_prior_idx[j]
        overlaps[:, i] = -1
        overlaps[j, :] = -1
        best_truth_overlap[i] = 2
        best_truth_idx[i] = j
    conf = gt_labels[best_truth_idx].to(torch.int64) + 1
    conf[best_truth_overlap < pos_threshold] = -1
    conf[best_truth_overlap < neg_threshold] = 0
    _neutralise_crowds(conf, pf, crowd_boxes, crowd_iou_threshold)
    loc = encode(gt_boxes[best_truth_idx], priors)
    return conf, best_truth_idx, loc


def _neutralise_crowds(conf: Tensor, priors_pf: Tensor, crowd_boxes: Tensor | None,
                       threshold: float) -> None:
    """YOLACT's crowd rule, in place: ``conf[(conf <= 0) & (max_c inter / prior area >
    threshold)] = -1``."""
    if crowd_boxes is None or crowd_boxes.shape[0] == 0 or threshold >= 1:
        return
    lt = torch.maximum(priors_pf[:, None, :2], crowd_boxes[None, :, :2])
    rb = torch.minimum(priors_pf[:, None, 2:], crowd_boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    area = ((priors_pf[:, 2] - priors_pf[:, 0]) * (priors_pf[:, 3] - priors_pf[:, 1]))[:, None]
    conf[(conf <= 0) & ((inter / area).max(dim=1).values > threshold)] = -1
