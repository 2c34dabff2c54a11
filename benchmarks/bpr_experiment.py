#!/usr/bin/env python
"""BPR's argument on synthetic scenes: coarse 28x28 masks lose the boundary; refining small
boundary patches recovers it and raises mask AP.

Usage (from the repository root)::

    python benchmarks/bpr_experiment.py            # 8 images of 256x512, < 1 min on CPU
    python benchmarks/bpr_experiment.py --quick    # 3 images

What it does:

1. Ground truth: ``--images`` images of 256x512, each with 5..10 instances: smooth blobs
   with fine boundary harmonics and star-shaped polygons (areas log-uniform in 500..40k px,
   :func:`cases.patches.random_shapes`), each with 1..4 thin parts (strokes 1.5..5 px wide
   from its centroid outwards, 1.2..2 times its equivalent radius long: legs, poles, the
   structures a 28x28 mask loses); later instances occlude earlier ones, and an instance
   left with fewer than 100 pixels is dropped.
2. Coarse masks, as a perfect Mask R-CNN mask head would give: each GT mask resampled to
   28x28 inside its tight box (``segops.roi_align``, ``aligned=True``, adaptive sampling:
   detectron2's mask-target settings) and pasted back with ``segops.paste_masks``
   (detectron2 mode, threshold 0.5).
3. Refinement with an ORACLE in place of the refinement net: the patch probabilities are the
   ground-truth masks' crops at the patch boxes (``segops.crop_patches`` on the GT masks at
   the box size, as 0.0 / 1.0), run through ``models/bpr.py``'s :class:`BPRRefiner`:
   ``segops.boundary_patches`` on the coarse masks (64x64 patches, NMS threshold 0.25 and
   0.55) and ``segops.reassemble_patches``. This bounds what a refinement net can recover
   from the patches alone: pixels outside every patch keep the coarse mask.
4. The paper's upper-bound analysis (its Table 1): the coarse masks with every pixel within
   1, 2 and 3 px (Euclidean, centre to centre) of a pixel of the other label replaced by the
   ground truth (``models/bpr_train.py``'s :func:`boundary_band`).
5. Mask AP with pycocotools' ``COCOeval`` (``iouType="segm"``, one category, masks as RLE
   from ``pycocotools.mask.encode`` on Fortran-ordered uint8), each detection scored by the
   rank of its box area (larger boxes first), before and after refinement.

It prints two tables (per NMS threshold: patches, AP / AP50 / AP75 before and after, mean
mask IoU with the matching GT; per band width: the pixels replaced and the same AP columns)
and exits non-zero when the oracle refinement does not raise the AP at every NMS threshold
or the boundary band does not at every width.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import sys
import time
from typing import Dict, List, Tuple

import numpy as np
import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)

try:
    import segops
except ImportError:  # run from a checkout without an installed segops
    sys.path.insert(0, REPO_ROOT)
    import segops

from pycocotools import mask as mask_utils  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from cases.patches import random_shapes  # noqa: E402
from segops.models.bpr import (INFERENCE_IOU_THRESHOLD, TRAINING_IOU_THRESHOLD,  # noqa: E402
                               BPRRefiner)
from segops.models.bpr_train import boundary_band  # noqa: E402

IMAGE_HW = (256, 512)
INSTANCES = (5, 10)  # per image, inclusive
AREAS = (500.0, 40e3)  # log-uniform instance areas before occlusion (px)
THIN_PARTS = (1, 4)  # strokes per instance, inclusive
THIN_WIDTH = (1.5, 5.0)  # stroke width (px)
MIN_AREA = 100  # instances left smaller than this after occlusion are dropped
MASK_SIZE = 28  # Mask R-CNN's mask head resolution
PATCH_SIZE = 64
THRESHOLDS = (TRAINING_IOU_THRESHOLD, INFERENCE_IOU_THRESHOLD)  # 0.25, 0.55
BAND_WIDTHS = (1, 2, 3)  # px, the paper's upper-bound analysis


# --------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------


def add_thin_parts(shapes: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """``shapes`` (bool ``[N, H, W]``) with ``THIN_PARTS`` strokes added to each: segments
    from the shape's centroid in a random direction, ``1.2..2 * sqrt(area / pi)`` long and
    ``THIN_WIDTH`` wide (pixels whose centre lies within half the width of the segment)."""
    out = shapes.clone()
    h, w = shapes.shape[1:]
    for i in range(shapes.size(0)):
        yy, xx = torch.nonzero(shapes[i], as_tuple=True)
        if yy.numel() == 0:
            continue
        cy, cx = float(yy.double().mean()) + 0.5, float(xx.double().mean()) + 0.5
        radius = math.sqrt(yy.numel() / math.pi)
        k = int(torch.randint(THIN_PARTS[0], THIN_PARTS[1] + 1, (1,), generator=g))
        for _ in range(k):
            u = torch.rand(3, generator=g, dtype=torch.float64).tolist()
            angle = 2 * math.pi * u[0]
            length = radius * (1.2 + 0.8 * u[1])
            half = (THIN_WIDTH[0] + (THIN_WIDTH[1] - THIN_WIDTH[0]) * u[2]) / 2
            dx, dy = length * math.cos(angle), length * math.sin(angle)
            x0 = max(0, int(min(cx, cx + dx) - half) - 1)
            x1 = min(w, int(max(cx, cx + dx) + half) + 2)
            y0 = max(0, int(min(cy, cy + dy) - half) - 1)
            y1 = min(h, int(max(cy, cy + dy) + half) + 2)
            if x1 <= x0 or y1 <= y0:
                continue
            ys = torch.arange(y0, y1, dtype=torch.float64).view(-1, 1) + 0.5 - cy
            xs = torch.arange(x0, x1, dtype=torch.float64).view(1, -1) + 0.5 - cx
            t = ((xs * dx + ys * dy) / (dx * dx + dy * dy)).clamp(0, 1)
            near = (xs - t * dx) ** 2 + (ys - t * dy) ** 2 < half * half
            out[i, y0:y1, x0:x1] |= near
    return out


def make_scene(seed: int) -> torch.Tensor:
    """Ground-truth masks ``bool [N, H, W]`` of one image: random shapes with thin parts,
    later ones occluding earlier ones, small leftovers dropped."""
    g = torch.Generator().manual_seed(1000 + seed)
    n = int(torch.randint(INSTANCES[0], INSTANCES[1] + 1, (1,), generator=g))
    lo, hi = math.log(AREAS[0]), math.log(AREAS[1])
    areas = torch.exp(lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64))
    shapes = add_thin_parts(random_shapes(IMAGE_HW, areas.tolist(), seed=seed), g)
    # occlusion: instance i loses the pixels of every later instance
    later = torch.zeros(IMAGE_HW, dtype=torch.bool)
    visible = torch.empty_like(shapes)
    for i in range(n - 1, -1, -1):
        visible[i] = shapes[i] & ~later
        later |= shapes[i]
    keep = visible.sum(dim=(1, 2)) >= MIN_AREA
    return visible[keep]


def tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    """``float32 [N, 4]`` (x1, y1, x2, y2) pixel-edge boxes of non-empty masks ``[N, H, W]``."""
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    h, w = masks.shape[1:]
    y1 = rows.float().argmax(dim=1)
    y2 = h - rows.flip(1).float().argmax(dim=1)
    x1 = cols.float().argmax(dim=1)
    x2 = w - cols.flip(1).float().argmax(dim=1)
    return torch.stack([x1, y1, x2, y2], dim=1).float()


def coarse_masks(gt: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """GT masks at ``MASK_SIZE`` inside their boxes (RoIAlign, detectron2's mask-target
    settings), pasted back at 0.5: what a perfect Mask R-CNN mask head outputs."""
    n = gt.size(0)
    rois = torch.cat([torch.arange(n, dtype=torch.float32)[:, None], boxes], dim=1)
    small = segops.roi_align(gt[:, None].float(), rois, MASK_SIZE, 1.0, 0, True)[:, 0]
    return segops.paste_masks(small, boxes, tuple(gt.shape[1:]), threshold=0.5)


def gt_oracle(gt: torch.Tensor):
    """Oracle for :class:`BPRRefiner`: the GT masks' crops at each patch box, as floats
    (``segops.crop_patches`` at the box size: the nearest resampling is the identity)."""
    canvas = torch.zeros((1, 1, *gt.shape[1:]))
    batch_index = torch.zeros(gt.size(0), dtype=torch.int64)

    def oracle(boxes: torch.Tensor, instance_index: torch.Tensor) -> torch.Tensor:
        # every box has one size: the patch size (or the whole axis of a smaller image)
        bh = int(boxes[0, 3] - boxes[0, 1])
        bw = int(boxes[0, 2] - boxes[0, 0])
        _, crops = segops.crop_patches(canvas, gt, boxes, instance_index, batch_index,
                                       output_size=(bh, bw))
        return crops.float()

    return oracle


# --------------------------------------------------------------------------------------
# COCO evaluation
# --------------------------------------------------------------------------------------


def rle(mask: torch.Tensor) -> Dict:
    enc = mask_utils.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
    enc["counts"] = enc["counts"].decode("ascii")
    return enc


def coco_ground_truth(gts: List[torch.Tensor]) -> COCO:
    images, anns = [], []
    for img_id, gt in enumerate(gts, start=1):
        h, w = gt.shape[1:]
        images.append({"id": img_id, "height": int(h), "width": int(w)})
        boxes = tight_boxes(gt)
        for m, b in zip(gt, boxes.tolist()):
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": 1,
                         "segmentation": rle(m), "area": float(m.sum()),
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "iscrowd": 0})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": 1, "name": "object"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def detections(all_masks: List[torch.Tensor], all_scores: List[torch.Tensor]) -> List[Dict]:
    dets = []
    for img_id, (masks, scores) in enumerate(zip(all_masks, all_scores), start=1):
        for m, s in zip(masks, scores.tolist()):
            dets.append({"image_id": img_id, "category_id": 1, "segmentation": rle(m),
                         "score": float(s)})
    return dets


def mask_ap(coco_gt: COCO, dets: List[Dict]) -> Tuple[float, float, float]:
    """(AP, AP50, AP75) of segm detections, COCOeval's stats[0:3]."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1]), float(ev.stats[2])


def area_rank_scores(boxes: torch.Tensor) -> torch.Tensor:
    """Scores in (0, 1] by box area rank (largest first); distinct, so the order is fixed."""
    n = boxes.size(0)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    rank = torch.empty(n, dtype=torch.int64)
    rank[torch.sort(area, descending=True, stable=True).indices] = torch.arange(n)
    return 1.0 - rank.double() / max(n, 1)


def mean_iou(pred: List[torch.Tensor], gt: List[torch.Tensor]) -> float:
    """Mean IoU of each mask with its own GT instance (they are paired by index)."""
    ious = []
    for p, g in zip(pred, gt):
        inter = (p & g).sum(dim=(1, 2)).double()
        union = (p | g).sum(dim=(1, 2)).double()
        ious.append(inter / union.clamp(min=1))
    return float(torch.cat(ious).mean())


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 images instead of 8")
    p.add_argument("--images", type=int, default=None, help="number of images (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = p.parse_args(argv)
    if args.images is None:
        args.images = 3 if args.quick else 8
    if args.images < 1:
        p.error("--images must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    gts = [make_scene(args.seed + k) for k in range(args.images)]
    boxes = [tight_boxes(gt) for gt in gts]
    coarse = [coarse_masks(gt, b) for gt, b in zip(gts, boxes)]
    scores = [area_rank_scores(b) for b in boxes]
    coco_gt = coco_ground_truth(gts)
    before = mask_ap(coco_gt, detections(coarse, scores))
    iou_before = mean_iou(coarse, gts)
    n_inst = sum(gt.size(0) for gt in gts)
    wrong = sum(int((c != g).sum()) for c, g in zip(coarse, gts))
    print(f"BPR oracle experiment: {args.images} images of {IMAGE_HW[0]}x{IMAGE_HW[1]}, "
          f"{n_inst} instances; coarse = GT at {MASK_SIZE}x{MASK_SIZE} in its box, pasted "
          f"back ({wrong} wrong pixels); {PATCH_SIZE}x{PATCH_SIZE} patches, oracle = GT crops")

    rows = []
    for thr in THRESHOLDS:
        refiner = BPRRefiner(None, patch_size=PATCH_SIZE, iou_threshold=thr)
        results = [refiner.refine(None, c, oracle=gt_oracle(g)) for c, g in zip(coarse, gts)]
        refined = [r.masks for r in results]
        patches = sum(int(r.boxes.size(0)) for r in results)
        after = mask_ap(coco_gt, detections(refined, scores))
        wrong_after = sum(int((r != g).sum()) for r, g in zip(refined, gts))
        rows.append((thr, patches, before, after, iou_before, mean_iou(refined, gts),
                     wrong_after))

    head = (f"{'NMS thr':>7}  {'patches':>7}  {'AP before':>9}  {'AP after':>8}  "
            f"{'AP50 bef':>8}  {'AP50 aft':>8}  {'AP75 bef':>8}  {'AP75 aft':>8}  "
            f"{'mIoU bef':>8}  {'mIoU aft':>8}  {'wrong px aft':>12}")
    print(head)
    print("-" * len(head))
    for thr, patches, b, a, ib, ia, wa in rows:
        print(f"{thr:>7.2f}  {patches:>7d}  {100 * b[0]:>9.1f}  {100 * a[0]:>8.1f}  "
              f"{100 * b[1]:>8.1f}  {100 * a[1]:>8.1f}  {100 * b[2]:>8.1f}  {100 * a[2]:>8.1f}  "
              f"{100 * ib:>8.2f}  {100 * ia:>8.2f}  {wa:>12d}")

    # the upper bound: predictions within `width` px of the boundary replaced by the GT
    bands = []
    for width in BAND_WIDTHS:
        replaced = [torch.where(boundary_band(c, width), g, c) for c, g in zip(coarse, gts)]
        n_band = sum(int(boundary_band(c, width).sum()) for c in coarse)
        after = mask_ap(coco_gt, detections(replaced, scores))
        bands.append((width, n_band, before, after, iou_before, mean_iou(replaced, gts)))
    head = (f"{'band px':>7}  {'pixels':>8}  {'AP before':>9}  {'AP after':>8}  "
            f"{'AP50 bef':>8}  {'AP50 aft':>8}  {'AP75 bef':>8}  {'AP75 aft':>8}  "
            f"{'mIoU bef':>8}  {'mIoU aft':>8}")
    print("\nupper bound: predictions within the band replaced by the ground truth")
    print(head)
    print("-" * len(head))
    for width, n_band, b, a, ib, ia in bands:
        print(f"{width:>7d}  {n_band:>8d}  {100 * b[0]:>9.1f}  {100 * a[0]:>8.1f}  "
              f"{100 * b[1]:>8.1f}  {100 * a[1]:>8.1f}  {100 * b[2]:>8.1f}  {100 * a[2]:>8.1f}  "
              f"{100 * ib:>8.2f}  {100 * ia:>8.2f}")
    print(f"({time.perf_counter() - t0:.1f} s)")

    status = 0
    failed = [thr for thr, _, b, a, *_ in rows if not a[0] > b[0]]
    if failed:
        print(f"FAIL: the refinement did not raise the mask AP at NMS threshold(s) {failed}",
              file=sys.stderr)
        status = 1
    failed = [width for width, _, b, a, *_ in bands if not a[0] > b[0]]
    if failed:
        print(f"FAIL: the boundary band did not raise the mask AP at width(s) {failed}",
              file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
