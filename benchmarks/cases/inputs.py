"""Input builders shared by the case families: random RoIs and features, detector-like
boxes and scores, YOLACT anchors, instance masks. All are seeded and built on the CPU (the
same inputs on every device); callers move them to ``ctx.device``."""

from __future__ import annotations

import math
from typing import Callable, Tuple

import torch

from .registry import Ctx

MASK_RCNN_IMAGE = (800, 1216)  # (h, w) of the Mask R-CNN inputs the sizes come from


def random_boxes(
    num: int,
    image_hw=MASK_RCNN_IMAGE,
    size_range=(16.0, 600.0),
    batch_size: int = 1,
    seed: int = 0,
) -> torch.Tensor:
    """Detector-like RoIs as a [num, 5] float64 CPU tensor (batch_index, x1, y1, x2, y2).

    Widths and heights are log-uniform in ``size_range`` pixels (independently), each box lies
    inside the image, and batch indices are spread evenly over ``batch_size`` images.
    """
    g = torch.Generator().manual_seed(seed)
    img_h, img_w = image_hw
    lo, hi = math.log(size_range[0]), math.log(size_range[1])
    w = torch.exp(torch.empty(num, dtype=torch.float64).uniform_(lo, hi, generator=g))
    h = torch.exp(torch.empty(num, dtype=torch.float64).uniform_(lo, hi, generator=g))
    w = w.clamp(max=img_w)
    h = h.clamp(max=img_h)
    x1 = torch.rand(num, dtype=torch.float64, generator=g) * (img_w - w)
    y1 = torch.rand(num, dtype=torch.float64, generator=g) * (img_h - h)
    idx = torch.arange(num, dtype=torch.float64) * batch_size // num
    return torch.stack([idx, x1, y1, x1 + w, y1 + h], dim=1)


def random_features(shape, ctx: Ctx, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float32).to(ctx.device, ctx.dtype)


def backward_only(forward: Callable, x, seed: int = 2):
    """Run ``forward`` once on a grad-requiring copy of ``x`` (a tensor, or a list of them
    such as pyramid levels); return a callable timing only the backward:
    ``torch.autograd.grad(out, x, grad, retain_graph=True)``. Use it as
    ``Fn(prepare=lambda: backward_only(...))`` so the graph lives only while it is timed."""
    if isinstance(x, (list, tuple)):
        x = [t.detach().requires_grad_(True) for t in x]
    else:
        x = x.detach().requires_grad_(True)
    out = forward(x)
    g = torch.Generator().manual_seed(seed)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float32).to(out.device, out.dtype)

    def call():
        return torch.autograd.grad(out, x, grad, retain_graph=True)

    return call


# --------------------------------------------------------------------------------------
# Suppression inputs
# --------------------------------------------------------------------------------------


def distinct_scores(num: int, g: torch.Generator) -> torch.Tensor:
    """Uniform scores in (0, 1), all distinct (a random permutation of (k + 0.5) / num):
    float32 ``rand`` repeats values at 100k draws, and then implementations that order tied
    scores differently (torchvision's sort is not stable) would keep different boxes."""
    return (torch.randperm(num, generator=g).to(torch.float64) + 0.5) / num


def _box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix of (x1, y1, x2, y2) boxes [n, 4] x [m, 4]; only to shape the inputs."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(dim=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-12)


def _jittered(centre: torch.Tensor, size: torch.Tensor, g: torch.Generator,
              shift: float, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Centres shifted by N(0, shift * size) and sizes scaled by exp(N(0, scale))."""
    c = centre + torch.randn(centre.shape, generator=g, dtype=torch.float64) * shift * size
    s = size * torch.exp(torch.randn(size.shape, generator=g, dtype=torch.float64) * scale)
    return c, s


def _clip_xyxy(c: torch.Tensor, s: torch.Tensor, hw, min_size: float) -> torch.Tensor:
    """(x1, y1, x2, y2) from centres/sizes [n, 2] (x, y order), clipped to the image."""
    lim = torch.tensor([hw[1], hw[0]], dtype=torch.float64)
    c = torch.minimum(c.clamp(min=0), lim)
    lo = torch.minimum((c - s / 2).clamp(min=0), lim - min_size)
    hi = torch.maximum(torch.minimum(c + s / 2, lim), lo + min_size)
    return torch.cat([lo, hi], dim=1)


def detector_boxes(num: int, image_hw=MASK_RCNN_IMAGE, num_objects: int = 50,
                   num_classes: int = 80, clutter: float = 0.1, seed: int = 0):
    """Detector output before NMS: ``(boxes float64[num, 4], scores float64[num],
    classes int64[num])`` on the CPU.

    ``num_objects`` objects (centres uniform in the image, sides log-uniform in 24..400 px,
    a class each); each box belongs to a random object, its centre jittered by
    N(0, 0.15 side) and its sides scaled by exp(N(0, 0.25)), so that boxes of one object
    overlap heavily and NMS has work to do (at 10k boxes, a box's best IoU with another is
    0.54 / 0.74 / 0.85 at the 10th / 50th / 90th percentile). A ``clutter`` fraction
    are false positives anywhere in the image (sides log-uniform 16..600 px). A box's
    class is its object's with probability 0.7, else uniform. Scores: :func:`distinct_scores`.
    """
    g = torch.Generator().manual_seed(seed)
    h, w = image_hw
    f64 = dict(dtype=torch.float64)
    obj_c = torch.rand(num_objects, 2, generator=g, **f64) * torch.tensor([w, h], **f64)
    obj_s = torch.exp(torch.empty(num_objects, 2, **f64).uniform_(math.log(24), math.log(400),
                                                                 generator=g))
    obj_cls = torch.randint(num_classes, (num_objects,), generator=g)
    obj = torch.randint(num_objects, (num,), generator=g)
    c, s = _jittered(obj_c[obj], obj_s[obj], g, shift=0.15, scale=0.25)
    bg = torch.rand(num, generator=g) < clutter
    bg_s = torch.exp(torch.empty(num, 2, **f64).uniform_(math.log(16), math.log(600),
                                                         generator=g))
    bg_c = torch.rand(num, 2, generator=g, **f64) * torch.tensor([w, h], **f64)
    c = torch.where(bg[:, None], bg_c, c)
    s = torch.where(bg[:, None], bg_s, s)
    boxes = _clip_xyxy(c, s, image_hw, min_size=1.0)
    cls = torch.where(torch.rand(num, generator=g) < 0.7, obj_cls[obj],
                      torch.randint(num_classes, (num,), generator=g))
    return boxes, distinct_scores(num, g), cls


def yolact_anchors(image_size: int = 550) -> torch.Tensor:
    """YOLACT's prior boxes, (x1, y1, x2, y2) in image-relative [0, 1] coordinates, float64.

    As ``yolact_base_config``: FPN levels P3..P7 with ceil(size / stride) cells (69, 35, 18,
    9, 5 at 550: 19248 anchors), scale 24 * 2**level px of a 550 image, and per cell three
    square anchors of side scale * sqrt(ar) for ar in (1, 1/2, 2) (``use_square_anchors``).
    """
    out = []
    for k, stride in enumerate((8, 16, 32, 64, 128)):
        n = math.ceil(image_size / stride)
        ys, xs = torch.meshgrid(torch.arange(n, dtype=torch.float64),
                                torch.arange(n, dtype=torch.float64), indexing="ij")
        cy, cx = ((ys + 0.5) / n).reshape(-1, 1), ((xs + 0.5) / n).reshape(-1, 1)
        sides = [24 * 2 ** k / 550 * math.sqrt(ar) for ar in (1.0, 0.5, 2.0)]
        per_cell = [torch.cat([cx - a / 2, cy - a / 2, cx + a / 2, cy + a / 2], 1) for a in sides]
        out.append(torch.stack(per_cell, dim=1).reshape(-1, 4))  # cell-major, as YOLACT
    return torch.cat(out)


def yolact_detections(num_classes: int, above: int, image_size: int = 550,
                      num_objects: int = 30, score_threshold: float = 0.05, seed: int = 0):
    """YOLACT's head output for Fast NMS: ``(boxes float64[N, 4], scores float64[C, N])``.

    ``num_objects`` ground-truth-like objects with a class each; the ``above`` anchors
    nearest an object (by IoU, with noise) are decoded towards it (70% of the way, plus
    jitter) and get their object's class score uniform in (threshold, 1) and one other class
    up to 0.3; every other score (and every score of the other anchors) is uniform in
    [0, 0.98 threshold), so exactly ``above`` anchors pass the prefilter.
    """
    g = torch.Generator().manual_seed(seed)
    anchors = yolact_anchors(image_size)
    n = anchors.size(0)
    above = min(above, n)
    f64 = dict(dtype=torch.float64)
    oc = 0.1 + 0.8 * torch.rand(num_objects, 2, generator=g, **f64)
    os_ = torch.exp(torch.empty(num_objects, 2, **f64).uniform_(math.log(0.05), math.log(0.6),
                                                               generator=g))
    objects = torch.cat([(oc - os_ / 2).clamp(min=0), (oc + os_ / 2).clamp(max=1)], dim=1)
    obj_cls = torch.randint(num_classes, (num_objects,), generator=g)
    best_iou, best = _box_iou(anchors, objects).max(dim=1)
    rank = best_iou + 0.05 * torch.rand(n, generator=g, **f64)
    sel = torch.topk(rank, above).indices
    a_c, a_s = (anchors[:, :2] + anchors[:, 2:]) / 2, anchors[:, 2:] - anchors[:, :2]
    o = objects[best[sel]]
    o_c, o_s = (o[:, :2] + o[:, 2:]) / 2, o[:, 2:] - o[:, :2]
    c, s = _jittered(0.3 * a_c[sel] + 0.7 * o_c, 0.3 * a_s[sel] + 0.7 * o_s, g, 0.1, 0.15)
    a_c, a_s = a_c.clone(), a_s.clone()
    a_c[sel], a_s[sel] = c, s
    boxes = _clip_xyxy(a_c, a_s, (1.0, 1.0), min_size=1e-3)
    scores = torch.rand(num_classes, n, generator=g, **f64) * (0.98 * score_threshold)
    cls = obj_cls[best[sel]]
    scores[cls, sel] = score_threshold + (1 - score_threshold) * (
        1 - torch.rand(above, generator=g, **f64))
    other = (cls + 1 + torch.randint(num_classes - 1, (above,), generator=g)) % num_classes
    scores[other, sel] = 0.3 * torch.rand(above, generator=g, **f64)
    return boxes, scores


def instance_masks(num: int, hw=(200, 304), num_objects: int = 25, num_classes: int = 80,
                   seed: int = 0):
    """SOLOv2-like mask candidates: ``(masks bool[num, H, W], labels int64[num],
    scores float64[num])`` on the CPU.

    ``num_objects`` objects (ellipses or rectangles, sides 8..60% of the image); each mask
    is a jittered copy of a random object (centre N(0, 0.1 side), sides exp(N(0, 0.2)))
    drawn as an ellipse or a rectangle, so masks of one object overlap heavily. Labels:
    the object's class with probability 0.8, else uniform. Scores: :func:`distinct_scores`.
    """
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    f64 = dict(dtype=torch.float64)
    size = torch.tensor([w, h], **f64)
    obj_c = torch.rand(num_objects, 2, generator=g, **f64) * size
    obj_s = torch.empty(num_objects, 2, **f64).uniform_(0.08, 0.6, generator=g) * size
    obj_cls = torch.randint(num_classes, (num_objects,), generator=g)
    obj = torch.randint(num_objects, (num,), generator=g)
    c, s = _jittered(obj_c[obj], obj_s[obj], g, shift=0.1, scale=0.2)
    rect = torch.rand(num, generator=g) < 0.5
    # pixel centres relative to each mask's centre, in half-sides: [num, 1, W] and [num, H, 1]
    dx = (torch.arange(w, dtype=torch.float64) + 0.5 - c[:, :1]) / (s[:, :1] / 2)
    dy = (torch.arange(h, dtype=torch.float64) + 0.5 - c[:, 1:]) / (s[:, 1:] / 2)
    dx, dy = dx.float().view(num, 1, w), dy.float().view(num, h, 1)
    masks = torch.where(rect.view(num, 1, 1), (dx.abs() <= 1) & (dy.abs() <= 1),
                        dx * dx + dy * dy <= 1)
    labels = torch.where(torch.rand(num, generator=g) < 0.8, obj_cls[obj],
                         torch.randint(num_classes, (num,), generator=g))
    return masks, labels, distinct_scores(num, g)
