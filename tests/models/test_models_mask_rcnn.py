"""Mask R-CNN heads (models/mask_rcnn.py, docs/models.md): head shapes, FPN pooling against
segops.roi_align on the LevelMapper's level, the two flavours, mask targets derived from
roi_align's definition, the mask loss against an explicit BCE, box coding, post-processing and
the pasted masks. Small channel counts keep the suite to a few seconds on CPU.
"""

from __future__ import annotations

import math

import pytest
import torch

import segops
from segops.models import mask_rcnn as MR

from helpers.fpn import pyramid, training_scene

SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
FLAVOURS = ["torchvision", "detectron2"]
SETTINGS = {"torchvision": (2, False), "detectron2": (0, True)}


def _level(side: float) -> int:
    """torchvision's LevelMapper for a box of sqrt(area) = side: P2..P5."""
    return min(max(math.floor(4 + math.log2(side / 224) + 1e-6), 2), 5)


# ---------------------------------------------------------------------------------------
# heads
# ---------------------------------------------------------------------------------------


def test_default_head_shapes():
    feats = pyramid(channels=256, size=64)
    rois = torch.tensor([[0, 2.0, 3.0, 40.0, 50.0], [0, 10.0, 0.0, 20.0, 60.0]])
    cls, box = MR.BoxHead(5)(feats, rois)
    assert cls.shape == (2, 6) and box.shape == (2, 20)
    head = MR.MaskHead(5)
    assert [c.out_channels for c in head.convs] == [256] * 4
    assert head.deconv.stride == (2, 2) and head.deconv.kernel_size == (2, 2)
    assert head(feats, rois).shape == (2, 5, 28, 28)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_head_dtypes(dtype, flavour):
    feats = pyramid(dtype=dtype, batch=2)
    rois = torch.tensor([[0, 2.0, 3.0, 40.0, 50.0], [1, 10.0, 0.0, 127.0, 90.0],
                         [1, 5.0, 5.0, 6.0, 6.0]], dtype=dtype)
    box = MR.BoxHead(3, 8, 16, flavour=flavour).to(dtype)
    mask = MR.MaskHead(3, 8, 12, flavour=flavour).to(dtype)
    cls, deltas = box(feats, rois)
    logits = mask(feats, rois)
    assert (cls.shape, deltas.shape, logits.shape) == ((3, 4), (3, 12), (3, 3, 28, 28))
    assert cls.dtype == deltas.dtype == logits.dtype == dtype
    empty = rois[:0]
    assert box(feats, empty)[0].shape == (0, 4) and mask(feats, empty).shape == (0, 3, 28, 28)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_pooling_is_roi_align_on_the_assigned_level(flavour):
    feats = pyramid(size=512, seed=1)
    # sides chosen at known levels: 224 -> P4, 112 -> P3, 448 -> P5, 56 and 20 -> P2 (clamped),
    # 1000 -> P5 (clamped); 112 x 448 has sqrt(area) 224 -> P4
    sizes = [(224, 224), (112, 112), (448, 448), (56, 56), (20, 20), (1000, 1000), (112, 448),
             (150, 150), (300, 300)]
    assert [_level(math.sqrt(w * h)) for w, h in sizes[:7]] == [4, 3, 5, 2, 2, 5, 4]
    rois = torch.tensor([[0, 30.0, 20.0, 30.0 + w, 20.0 + h] for w, h in sizes])
    sr, aligned = SETTINGS[flavour]
    pooler = MR.FPNRoIAlign(7, 8, flavour)
    assert (pooler.sampling_ratio, pooler.aligned) == (sr, aligned)
    got = pooler(feats, rois)
    assert got.shape == (len(sizes), 8, 7, 7)
    for k, (w, h) in enumerate(sizes):
        lvl = _level(math.sqrt(w * h))
        want = segops.roi_align(feats[lvl - 2], rois[k:k + 1], 7, 2.0**-lvl, sr, aligned)
        assert torch.equal(got[k:k + 1], want), (k, lvl)
        other = 3 if lvl != 3 else 4  # the level matters
        wrong = segops.roi_align(feats[other - 2], rois[k:k + 1], 7, 2.0**-other, sr, aligned)
        assert not torch.allclose(got[k:k + 1], wrong)


def test_flavours_pool_differently():
    feats = pyramid(seed=2)
    rois = torch.tensor([[0, 3.3, 7.1, 60.2, 41.9], [0, 20.0, 20.0, 120.0, 100.0]])
    tv = MR.BoxHead(2, 8, 16, flavour="torchvision").pooler(feats, rois)
    d2 = MR.BoxHead(2, 8, 16, flavour="detectron2").pooler(feats, rois)
    assert not torch.allclose(tv, d2, atol=1e-3)
    with pytest.raises(ValueError, match="`flavour`"):
        MR.BoxHead(2, 8, flavour="mmdet")


# ---------------------------------------------------------------------------------------
# mask targets and loss
# ---------------------------------------------------------------------------------------


def _bilinear_1d(x: float, lo: int, hi: int, size: int) -> float:
    """Linear interpolation of the indicator of pixels lo..hi-1 on an axis of `size` pixels,
    with roi_align's border rules (docs/ops/roi.md)."""
    if x < -1 or x > size:
        return 0.0
    x = max(x, 0.0)
    i = int(math.floor(x))
    if i >= size - 1:
        i0 = i1 = size - 1
        t = 0.0
    else:
        i0, i1, t = i, i + 1, x - i

    def v(j):
        return 1.0 if lo <= j < hi else 0.0

    return (1 - t) * v(i0) + t * v(i1)


def _axis_profile(start: float, end: float, size: int, m: int, aligned: bool,
                  sampling_ratio: int, mask: tuple[int, int] | None = None) -> list[float]:
    """Per bin of the RoI [start, end), the mean over its samples of the 1-D interpolated
    indicator of the mask's pixels `mask` (default: the RoI's own pixels)."""
    off = 0.5 if aligned else 0.0
    x0, length = start - off, end - start
    if not aligned:
        length = max(length, 1.0)
    bin_ = length / m
    grid = sampling_ratio if sampling_ratio > 0 else math.ceil(length / m)
    lo, hi = mask if mask is not None else (int(start), int(end))
    return [sum(_bilinear_1d(x0 + j * bin_ + (g + 0.5) * bin_ / grid, lo, hi, size)
                for g in range(grid)) / grid for j in range(m)]


def test_mask_targets_torchvision_soft():
    # a rectangle mask of rows 8..23, columns 4..31, and a box exactly on it
    gt = torch.zeros(1, 40, 48, dtype=torch.bool)
    gt[0, 8:24, 4:32] = True
    box = torch.tensor([[4.0, 8.0, 32.0, 24.0]], dtype=torch.float64)
    got = MR.mask_targets(gt, box, torch.tensor([0]), 28, "torchvision")
    assert got.shape == (1, 28, 28) and got.dtype == torch.float64
    # roi_align's defaults: not aligned (pixel i sampled at x = i), adaptive sampling; the
    # rectangle is separable, so is the target
    ry = _axis_profile(8, 24, 40, 28, False, 0)
    rx = _axis_profile(4, 32, 48, 28, False, 0)
    want = torch.tensor(ry, dtype=torch.float64)[:, None] * torch.tensor(rx, dtype=torch.float64)
    torch.testing.assert_close(got[0], want, rtol=0, atol=1e-12)
    # interior ones; the last column samples x = 31.5, halfway to the empty column 32
    assert torch.equal(got[0, :20, :27], torch.ones(20, 27, dtype=torch.float64))
    assert rx[-1] == 0.5 and got[0, 0, 27] == 0.5
    assert 0 < got.min() < 0.5  # soft, not thresholded
    # boxes off the rectangle, 1 x 2 and 3 x 2 samples per bin under adaptive sampling
    for x0, y0, x1, y1 in [(2.3, 5.7, 41.1, 30.2), (1.7, 0.4, 43.9, 39.6)]:
        got = MR.mask_targets(gt, torch.tensor([[x0, y0, x1, y1]], dtype=torch.float64),
                              torch.tensor([0]), 28, "torchvision")
        ry = torch.tensor(_axis_profile(y0, y1, 40, 28, False, 0, (8, 24)), dtype=torch.float64)
        rx = torch.tensor(_axis_profile(x0, x1, 48, 28, False, 0, (4, 32)), dtype=torch.float64)
        torch.testing.assert_close(got[0], ry[:, None] * rx, rtol=0, atol=1e-12)


def test_mask_targets_detectron2_all_ones():
    gt = torch.zeros(2, 40, 48)
    gt[1, 8:24, 4:32] = 1
    box = torch.tensor([[4.0, 8.0, 32.0, 24.0]])
    got = MR.mask_targets(gt, box, torch.tensor([1]), 28, "detectron2")
    assert torch.equal(got, torch.ones(1, 28, 28))
    # the soft values at the border are below 1: the >= 0.5 threshold is what makes them 1
    soft = segops.roi_align(gt[1:, None], torch.tensor([[0, 4.0, 8.0, 32.0, 24.0]]), 28, 1.0,
                            0, True)
    ry = _axis_profile(8, 24, 40, 28, True, 0)
    assert min(ry) > 0.5 and soft.min() < 1
    torch.testing.assert_close(soft[0, 0, :, 0], torch.tensor(ry, dtype=torch.float32) *
                               _axis_profile(4, 32, 48, 28, True, 0)[0])
    # a box hanging 8 px off the mask's left edge: the first columns are background
    off = MR.mask_targets(gt, torch.tensor([[-4.0, 8.0, 32.0, 24.0]]), torch.tensor([1]), 28,
                          "detectron2")
    assert off[0, :, 0].eq(0).all() and off[0, :, -1].eq(1).all()


def test_mask_loss_reads_only_gt_channel_and_is_bce():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 5, 28, 28, dtype=torch.float64, generator=g)
    labels = torch.tensor([1, 5, 3, 3])
    targets = torch.rand(4, 28, 28, dtype=torch.float64, generator=g)
    loss = MR.mask_loss(logits, labels, targets)
    x = logits[torch.arange(4), labels - 1]
    p = torch.sigmoid(x)
    explicit = -(targets * torch.log(p) + (1 - targets) * torch.log1p(-p)).mean()
    torch.testing.assert_close(loss, explicit, rtol=1e-12, atol=1e-12)
    other = logits.clone()
    keep = torch.zeros_like(other, dtype=torch.bool)
    keep[torch.arange(4), labels - 1] = True
    other[~keep] = torch.randn(int((~keep).sum()), dtype=torch.float64, generator=g) * 10
    assert torch.equal(MR.mask_loss(other, labels, targets), loss)
    other[0, 0] += 1  # the GT channel of RoI 0 does change it
    assert not torch.equal(MR.mask_loss(other, labels, targets), loss)


def test_mask_loss_zero_positives():
    logits = torch.zeros(0, 3, 28, 28, requires_grad=True)
    loss = MR.mask_loss(logits, torch.zeros(0, dtype=torch.int64), torch.zeros(0, 28, 28))
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    assert logits.grad.shape == logits.shape


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_training_losses_and_gradients(flavour):
    torch.manual_seed(0)
    heads = MR.MaskRCNNHeads(3, flavour, in_channels=8, representation_size=16,
                             mask_channels=8).train()
    feats = [f.requires_grad_() for f in pyramid(batch=2, seed=4)]
    targets, proposals = training_scene()
    losses = heads(feats, proposals, targets=targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    losses["loss_mask"].backward()
    # the positives (IoU >= 0.5 with the GT, and the appended GT boxes) are P2/P3-sized
    assert feats[0].grad.abs().sum() > 0
    assert heads.mask_head.predictor.weight.grad.abs().sum() > 0
    assert heads.box_head.fc6.weight.grad is None  # the mask loss does not touch the box head

    # no positive anywhere: the mask loss is 0 and still has a graph
    far = [{"boxes": torch.tensor([[100.0, 0.0, 127.0, 20.0]]), "labels": torch.tensor([1]),
            "masks": targets[0]["masks"]}] * 2
    heads.append_gt = False
    losses = heads(feats, proposals, targets=far)
    assert losses["loss_mask"].item() == 0 and losses["loss_box_reg"].item() == 0
    sum(losses.values()).backward()


def test_images_without_gt_or_proposals():
    heads = MR.MaskRCNNHeads(3, in_channels=8, representation_size=16, mask_channels=8)
    feats = [f.requires_grad_() for f in pyramid(batch=2, seed=7)]
    none = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros(0, 128, 128)}
    proposals = [torch.tensor([[0.0, 0.0, 50.0, 50.0]]), torch.zeros(0, 4)]
    losses = heads.train()(feats, proposals, targets=[none, none])
    assert losses["loss_mask"].item() == 0 and losses["loss_box_reg"].item() == 0
    sum(losses.values()).backward()
    with torch.no_grad():
        dets = heads.eval()(feats, proposals[::-1], [(128, 128), (64, 96)])
    assert dets[0]["boxes"].shape == (0, 4) and dets[0]["masks"].shape == (0, 128, 128)
    assert dets[1]["masks"].shape[1:] == (64, 96)


# ---------------------------------------------------------------------------------------
# boxes and post-processing
# ---------------------------------------------------------------------------------------


def test_box_coder():
    coder = MR.BoxCoder()
    p = torch.tensor([[10.0, 20.0, 50.0, 100.0]])  # centre (30, 60), 40 x 80
    d = torch.tensor([[10 * 0.25, 10 * -0.5, 5 * math.log(2), 0.0,  # class 1
                       0.0, 0.0, 5 * 10.0, 0.0]])  # class 2: dw clamped at log(1000/16)
    out = coder.decode(d, p)
    assert out.shape == (1, 2, 4)
    torch.testing.assert_close(out[0, 0], torch.tensor([0.0, -20.0, 80.0, 60.0]))
    torch.testing.assert_close(out[0, 1], torch.tensor([30 - 1250.0, 20.0, 30 + 1250.0, 100.0]))
    gt = torch.tensor([[0.0, 5.0, 33.0, 90.0]])
    torch.testing.assert_close(coder.decode(coder.encode(gt, p), p)[:, 0], gt)


def test_postprocess_detections():
    # A and B overlap (IoU 0.82), C is background
    props = torch.tensor([[10.0, 10.0, 50.0, 50.0], [12.0, 12.0, 52.0, 52.0],
                          [80.0, 80.0, 120.0, 120.0], [-5.0, 90.0, 30.0, 140.0]])
    logits = torch.tensor([[0.0, 3.0, 0.0], [0.0, 2.0, 1.0], [5.0, 0.0, 0.0],
                           [0.0, 0.0, 4.0]])
    scores = torch.softmax(logits, -1)
    assert scores[0, 2] < 0.05 and scores[2, 1:].max() < 0.05  # dropped by the threshold
    deltas = torch.zeros(4, 8)
    (det,) = MR.postprocess_detections(logits, deltas, [props], [(100, 128)])
    # class 1: A kept, B suppressed by A; class 2: D (clipped to the image), then B
    assert det["labels"].tolist() == [2, 1, 2]
    torch.testing.assert_close(det["scores"], scores[[3, 0, 1], [2, 1, 2]])
    torch.testing.assert_close(det["boxes"], torch.tensor(
        [[0.0, 90.0, 30.0, 100.0], [10.0, 10.0, 50.0, 50.0], [12.0, 12.0, 52.0, 52.0]]))
    (top,) = MR.postprocess_detections(logits, deltas, [props], [(100, 128)],
                                       detections_per_image=1)
    assert top["labels"].tolist() == [2] and top["boxes"].shape == (1, 4)
    # two images split the proposals
    dets = MR.postprocess_detections(logits, deltas, [props[:2], props[2:]],
                                     [(100, 128), (200, 200)])
    assert [d["labels"].tolist() for d in dets] == [[1, 2], [2]]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_inference_outputs_and_pasted_masks(flavour):
    torch.manual_seed(1)
    heads = MR.MaskRCNNHeads(3, flavour, in_channels=8, representation_size=16,
                             mask_channels=8, detections_per_image=7).eval()
    with torch.no_grad():
        heads.mask_head.predictor.bias.fill_(4.0)  # confident foreground masks
    feats = pyramid(batch=2, seed=5)
    g = torch.Generator().manual_seed(6)
    xy = torch.rand(12, 2, generator=g) * 90
    proposals = [torch.cat([xy, xy + 4 + torch.rand(12, 2, generator=g) * 40], 1)[:8],
                 torch.cat([xy, xy + 4 + torch.rand(12, 2, generator=g) * 40], 1)[8:]]
    sizes = [(128, 120), (100, 128)]
    with torch.no_grad():
        dets = heads(feats, proposals, sizes)
    assert len(dets) == 2 and sum(len(d["labels"]) for d in dets) > 0
    for d, (h, w) in zip(dets, sizes):
        n = d["labels"].shape[0]
        assert n <= 7 and d["boxes"].shape == (n, 4) and d["scores"].shape == (n,)
        assert d["labels"].dtype == torch.int64 and d["labels"].ge(1).all()
        assert d["labels"].le(3).all() and (d["scores"].diff() <= 0).all()
        assert d["mask_probs"].shape == (n, 28, 28)
        assert d["masks"].shape == (n, h, w) and d["masks"].dtype == torch.bool
        assert torch.equal(d["masks"], segops.paste_masks(d["mask_probs"], d["boxes"], (h, w),
                                                          0.5, mode=flavour))
        # False outside the box (pixel centres; torchvision's integer box may reach 1 px out)
        grow = 0.0 if flavour == "detectron2" else 1.0
        cy = torch.arange(h)[:, None] + 0.5
        cx = torch.arange(w)[None] + 0.5
        for box, m in zip(d["boxes"], d["masks"]):
            inside = ((cx >= box[0] - grow) & (cx <= box[2] + grow) & (cy >= box[1] - grow) &
                      (cy <= box[3] + grow))
            assert not m[~inside].any()
            if (box[2:] - box[:2]).min() > 4:
                assert m.any()


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------


def test_bad_input_names_the_argument():
    feats = pyramid()
    head = MR.BoxHead(2, 8, 16)
    rois = torch.tensor([[0, 1.0, 1.0, 20.0, 20.0]])
    with pytest.raises(ValueError, match="`features` must hold 4 levels"):
        head(feats[:3], rois)
    with pytest.raises(ValueError, match=r"`features\[1\]` must have 8 channels"):
        head([feats[0], feats[1][:, :4], *feats[2:]], rois)
    with pytest.raises(ValueError, match=r"`rois` must be a float Tensor\[R, 5\]"):
        head(feats, rois[:, 1:])
    with pytest.raises(TypeError, match="`features`"):
        head(feats[0], rois)
    with pytest.raises(ValueError, match="`num_classes`"):
        MR.MaskHead(0)
    with pytest.raises(ValueError, match="`labels` must lie in"):
        MR.mask_loss(torch.zeros(1, 3, 28, 28), torch.tensor([0]), torch.zeros(1, 28, 28))
    with pytest.raises(ValueError, match="`targets`"):
        MR.mask_loss(torch.zeros(1, 3, 28, 28), torch.tensor([1]), torch.zeros(1, 14, 14))
    with pytest.raises(ValueError, match="`matched_idxs`"):
        MR.mask_targets(torch.zeros(1, 8, 8), torch.zeros(2, 4), torch.zeros(1), 28)
    heads = MR.MaskRCNNHeads(2, in_channels=8, representation_size=16, mask_channels=8)
    with pytest.raises(ValueError, match="`targets`"):
        heads.train()(feats, [torch.zeros(1, 4)])
    with pytest.raises(ValueError, match="`image_sizes`"):
        heads.eval()(feats, [torch.zeros(1, 4)])
    with pytest.raises(ValueError, match=r"`proposals\[0\]`"):
        heads.eval()(feats, [torch.zeros(1, 5)], [(128, 128)])
