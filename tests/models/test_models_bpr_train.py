"""BPR's training-side helpers and boundary band (models/bpr_train.py) on hand-built cases
whose expected values are derived in the comments."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers.bpr import tiny_net

from segops.models import bpr as B
from segops.models import bpr_train as T


def strip(*spans, width: int = 10) -> torch.Tensor:
    """bool [N, 1, width]: mask n covers columns [a, b) of a one-row image."""
    out = torch.zeros(len(spans), 1, width, dtype=torch.bool)
    for n, (a, b) in enumerate(spans):
        out[n, 0, a:b] = True
    return out


def grid(rows: str) -> torch.Tensor:
    """bool [H, W] from lines of '#' (True) and '.' (False)."""
    return torch.tensor([[c == "#" for c in r] for r in rows.split()], dtype=torch.bool)


def test_mask_iou():
    # 4x4: left half (8 px) vs top half (8 px): intersection 4, union 12
    left = torch.zeros(4, 4, dtype=torch.bool)
    left[:, :2] = True
    top = torch.zeros(4, 4, dtype=torch.bool)
    top[:2] = True
    empty = torch.zeros(4, 4, dtype=torch.bool)
    iou = T.mask_iou(torch.stack([left, empty]), torch.stack([top, left, empty]).to(torch.uint8))
    assert iou.dtype == torch.float64
    assert torch.equal(iou, torch.tensor([[1 / 3, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="mask_iou"):
        T.mask_iou(left[None], top[None, :2])


# predictions and ground truth on a one-row image of 10 columns:
#   pred0 [0, 6) class 1: g0 [0, 5) and g1 [1, 6) both give 5/6, g2 [0, 6) (crowd) gives 1
#   pred1 [4, 10) class 2: g3 [5, 10) gives 5/6, g4 [0, 4) gives 0
#   pred2 [2, 8) class 3: no ground truth of class 3
#   pred3 [8, 10) class 1: IoU 0 with g0, g1, g2: the first of its class, g0
PRED = strip((0, 6), (4, 10), (2, 8), (8, 10))
LABELS = torch.tensor([1, 2, 3, 1])
GT = strip((0, 5), (1, 6), (0, 6), (5, 10), (0, 4))
GT_LABELS = torch.tensor([1, 1, 1, 2, 2])
CROWD = torch.tensor([False, False, True, False, False])


def test_match_ground_truth():
    index, iou = T.match_ground_truth(PRED, LABELS, GT, GT_LABELS, CROWD)
    assert torch.equal(index, torch.tensor([0, 3, -1, 0]))  # g0 over g1 on the tie
    assert torch.allclose(iou, torch.tensor([5 / 6, 5 / 6, 0.0, 0.0], dtype=torch.float64))
    # without the crowd flags, the exact match g2 wins
    index, iou = T.match_ground_truth(PRED, LABELS, GT, GT_LABELS)
    assert torch.equal(index, torch.tensor([2, 3, -1, 0]))
    assert iou[0] == 1.0
    # no ground truth at all
    index, iou = T.match_ground_truth(PRED, LABELS, GT[:0], GT_LABELS[:0])
    assert torch.equal(index, torch.full((4,), -1)) and torch.equal(iou, torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="labels"):
        T.match_ground_truth(PRED, LABELS[:2], GT, GT_LABELS)


def test_select_training_instances_keeps_iou_above_one_half_strictly():
    keep, index = T.select_training_instances(PRED, LABELS, GT, GT_LABELS, CROWD)
    assert torch.equal(keep, torch.tensor([True, True, False, False]))
    assert torch.equal(index, torch.tensor([0, 3, -1, 0]))
    # IoU exactly 0.5 ([0, 4) vs [0, 2)) is dropped, 0.75 ([0, 4) vs [0, 3)) kept
    keep, _ = T.select_training_instances(strip((0, 4), (0, 4)), torch.tensor([1, 2]),
                                          strip((0, 2), (0, 3)), torch.tensor([1, 2]))
    assert torch.equal(keep, torch.tensor([False, True]))


def test_patch_loss_is_the_mean_cross_entropy_over_every_pixel():
    # pixel 0: logits (0, 0), label 1 -> ln 2; pixel 1: logits (0, ln 3) -> p = (1/4, 3/4),
    # label 0 -> ln 4
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, math.log(3.0)]]]])  # [1, 2, 1, 2]
    targets = torch.tensor([[[1, 0]]])
    assert math.isclose(float(T.patch_loss(logits, targets)), 1.5 * math.log(2), rel_tol=1e-6)
    assert math.isclose(float(T.patch_loss(logits, targets.bool())), 1.5 * math.log(2),
                        rel_tol=1e-6)
    # an ignored pixel counts as 0 in a mean over both pixels (mmseg), not over one
    ignored = torch.tensor([[[255, 0]]])
    assert math.isclose(float(T.patch_loss(logits, ignored)), math.log(4) / 2, rel_tol=1e-6)
    assert math.isclose(float(F.cross_entropy(logits, ignored, ignore_index=255)), math.log(4),
                        rel_tol=1e-6)
    # logits at another size are resized first: a 1x1 map resizes to a constant
    small = torch.tensor([[[[0.0]], [[math.log(3.0)]]]])  # [1, 2, 1, 1]
    expected = (-math.log(0.75) + math.log(4)) / 2
    assert math.isclose(float(T.patch_loss(small, targets)), expected, rel_tol=1e-6)
    with pytest.raises(TypeError, match="targets"):
        T.patch_loss(logits, targets.float())
    with pytest.raises(ValueError, match="logits"):
        T.patch_loss(logits[0], targets)


def test_boundary_band_by_hand():
    square = grid("""
        .......
        .......
        ..###..
        ..###..
        ..###..
        .......
        .......""")
    # width 1: the pixels with a 4-neighbour of the other label (the centre and the
    # diagonal corners are not)
    assert torch.equal(T.boundary_band(square[None], 1)[0], grid("""
        .......
        ..###..
        .#####.
        .##.##.
        .#####.
        ..###..
        ......."""))
    # width 2: within distance 2 (offsets (0, 2), (1, 1), ...; not (1, 2): sqrt 5 > 2)
    assert torch.equal(T.boundary_band(square[None], 2)[0], grid("""
        ..###..
        .#####.
        #######
        #######
        #######
        .#####.
        ..###.."""))
    # the image border is no boundary; empty and full masks have no band; width 0 is empty
    left = grid("""
        ###..
        ###..
        ###..""")
    assert torch.equal(T.boundary_band(left[None], 1)[0], grid("""
        ..##.
        ..##.
        ..##."""))
    none = torch.stack([torch.zeros(3, 5, dtype=torch.bool), torch.ones(3, 5, dtype=torch.bool)])
    assert not T.boundary_band(none, 2).any()
    assert not T.boundary_band(square[None], 0).any()
    with pytest.raises(ValueError, match="width"):
        T.boundary_band(square[None], -1)


def test_training_patches_filters_matches_and_crops():
    h, w = 48, 64
    ys = torch.arange(h).view(-1, 1) + 0.5
    xs = torch.arange(w).view(1, -1) + 0.5
    gt = torch.stack([((xs - 20) / 14) ** 2 + ((ys - 24) / 12) ** 2 < 1,
                      ((xs - 48) / 10) ** 2 + ((ys - 20) / 14) ** 2 < 1])
    # instance 0: gt 0 shifted by 2 px (IoU > 0.5); instance 1: a small square inside
    # gt 1 (IoU < 0.5)
    pred = torch.stack([torch.roll(gt[0], 2, dims=1), torch.zeros(h, w, dtype=torch.bool)])
    pred[1, 16:22, 45:51] = True
    labels, gt_labels = torch.tensor([1, 1]), torch.tensor([1, 1])
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))
    refiner = B.BPRRefiner.for_training(tiny_net(), patch_size=16)
    out = T.training_patches(refiner, image, pred, labels, gt, gt_labels)
    assert torch.equal(out.keep, torch.tensor([True, False]))
    assert torch.equal(out.gt_index, torch.tensor([0, 1]))
    p = out.boxes.size(0)
    assert p > 0 and (out.instance_index == 0).all()  # no patch of the dropped instance
    boxes, index, _ = refiner.extract(pred[:1])
    assert torch.equal(out.boxes, boxes) and torch.equal(out.instance_index, index)
    img_p, mask_p = refiner.net_inputs(image, pred[:1], boxes, index)
    assert torch.equal(out.image_patches, img_p) and torch.equal(out.mask_patches, mask_p)
    assert torch.equal(out.targets, refiner.targets(gt[:1], boxes, index))
    assert out.targets.shape == (p, 32, 32) and out.targets.dtype == torch.int64
    # the targets differ from the coarse mask patches (the shift) and the loss trains
    assert (out.targets != (mask_p[:, 0] > 0).long()).any()
    net = refiner.net.train()
    loss = T.patch_loss(net(out.image_patches, out.mask_patches), out.targets)
    loss.backward()
    assert torch.isfinite(loss) and net.decode_head.conv_seg.weight.grad.abs().sum() > 0
