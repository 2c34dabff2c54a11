"""YOLACT model (models/yolact.py, docs/models.md): anchors, box coding, matching, inference through
`segops.fast_nms` + `segops.assemble_masks`, and the mask loss through the differentiable
`segops.assemble_masks`, checked against literal transcriptions of dbolya/yolact's code.
Small widths keep the suite at a few seconds on CPU.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import segops
from segops.models import yolact as Y
from segops.reference.nms import fast_nms as ref_fast_nms

SIZES_550 = [(69, 69), (35, 35), (18, 18), (9, 9), (5, 5)]


def small_model(num_classes: int = 3, seed: int = 0) -> Y.Yolact:
    torch.manual_seed(seed)
    backbone = Y.ResNetBackbone(layers=(1, 1, 1, 1), widths=(8, 16, 32, 64))
    return Y.Yolact(num_classes, backbone=backbone, fpn_channels=32, num_prototypes=32)


@pytest.fixture(scope="module")
def model_550():
    """A small YOLACT in eval mode and its raw predictions for one random 550x550 image."""
    model = small_model().eval()
    image = torch.randn(1, 3, 550, 550, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        preds = model(image)
    return model, image, preds


# ======================================================================================
# literal transcriptions of dbolya/yolact (the oracle)
# ======================================================================================


def yolact_make_priors(sizes, scales=(24, 48, 96, 192, 384), ars=(1, 1 / 2, 2), max_size=550):
    """yolact.py PredictionModule.make_priors (use_pixel_scales, preapply_sqrt=False,
    use_square_anchors), concatenated over the levels."""
    out = []
    for (conv_h, conv_w), scale in zip(sizes, scales):
        prior_data = []
        for j, i in itertools.product(range(conv_h), range(conv_w)):
            x = (i + 0.5) / conv_w
            y = (j + 0.5) / conv_h
            for ar in ars:
                ar = math.sqrt(ar)
                w = scale * ar / max_size
                h = scale / ar / max_size
                h = w  # use_square_anchors
                prior_data += [x, y, w, h]
        out.append(torch.tensor(prior_data, dtype=torch.float32).view(-1, 4))
    return torch.cat(out)


def yolact_decode(loc, priors):
    """layers/box_utils.py decode (use_yolo_regressors=False)."""
    variances = [0.1, 0.2]
    boxes = torch.cat((
        priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:],
        priors[:, 2:] * torch.exp(loc[:, 2:] * variances[1])), 1)
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def yolact_sanitize(_x1, _x2, img_size, padding=0):
    _x1 = _x1 * img_size
    _x2 = _x2 * img_size
    x1 = torch.min(_x1, _x2)
    x2 = torch.max(_x1, _x2)
    return torch.clamp(x1 - padding, min=0), torch.clamp(x2 + padding, max=img_size)


def yolact_crop(masks, boxes, padding=1):
    """layers/box_utils.py crop: masks [h, w, n], boxes [n, 4] relative."""
    h, w, n = masks.size()
    x1, x2 = yolact_sanitize(boxes[:, 0], boxes[:, 2], w, padding)
    y1, y2 = yolact_sanitize(boxes[:, 1], boxes[:, 3], h, padding)
    rows = torch.arange(w, dtype=x1.dtype).view(1, -1, 1).expand(h, w, n)
    cols = torch.arange(h, dtype=x1.dtype).view(-1, 1, 1).expand(h, w, n)
    keep = (rows >= x1.view(1, 1, -1)) & (rows < x2.view(1, 1, -1)) \
        & (cols >= y1.view(1, 1, -1)) & (cols < y2.view(1, 1, -1))
    return masks * keep.float()


def yolact_lincomb_mask_loss(protos, coeffs, gt_boxes, gt_masks, selects=None,
                             mask_alpha=6.125):
    """layers/modules/multibox_loss.py lincomb_mask_loss for yolact_base_config
    (sigmoid masks, mask_proto_crop, binarized downsampled GT,
    mask_proto_normalize_emulate_roi_pooling), divided by the batch's positive count.
    Per image i: protos[i] [h, w, k], coeffs[i] [P, k], gt_boxes[i] [P, 4],
    gt_masks[i] [P, H, W]; selects[i] the masks_to_train subsample (or None)."""
    mask_h, mask_w = protos.shape[1], protos.shape[2]
    loss_m = 0
    total_pos = 0
    for idx in range(protos.shape[0]):
        down = F.interpolate(gt_masks[idx][None].float(), (mask_h, mask_w), mode="bilinear",
                             align_corners=False).squeeze(0)
        down = down.permute(1, 2, 0).contiguous().gt(0.5).float()
        proto_coef, pos_gt_box_t, mask_t = coeffs[idx], gt_boxes[idx], down
        old_num_pos = proto_coef.size(0)
        total_pos += old_num_pos
        if selects is not None and selects[idx] is not None:
            s = selects[idx]
            proto_coef, pos_gt_box_t, mask_t = proto_coef[s], pos_gt_box_t[s], mask_t[:, :, s]
        num_pos = proto_coef.size(0)
        pred_masks = torch.sigmoid(protos[idx] @ proto_coef.t())
        pred_masks = yolact_crop(pred_masks, pos_gt_box_t)
        pre_loss = F.binary_cross_entropy(torch.clamp(pred_masks, 0, 1), mask_t,
                                          reduction="none")
        weight = mask_h * mask_w
        gt_box_width = (pos_gt_box_t[:, 2] - pos_gt_box_t[:, 0]) * mask_w
        gt_box_height = (pos_gt_box_t[:, 3] - pos_gt_box_t[:, 1]) * mask_h
        pre_loss = pre_loss.sum(dim=(0, 1)) / gt_box_width / gt_box_height * weight
        if old_num_pos > num_pos:
            pre_loss *= old_num_pos / num_pos
        loss_m += torch.sum(pre_loss)
    return loss_m * mask_alpha / mask_h / mask_w / total_pos


def ellipse_masks(boxes_px, h, w):
    """Filled ellipses inscribed in pixel boxes [G, 4] -> float [G, h, w]."""
    ys = torch.arange(h, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float32)[None, :] + 0.5
    out = []
    for x1, y1, x2, y2 in boxes_px.tolist():
        cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
        out.append((((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1).float())
    return torch.stack(out)


# ======================================================================================
# anchors and box coding
# ======================================================================================


def test_priors_match_yolact_make_priors_at_550(model_550):
    _, _, preds = model_550
    priors = preds["priors"]
    assert 3 * sum(h * w for h, w in SIZES_550) == 19248
    assert priors.shape == (19248, 4) and priors.dtype == torch.float32
    expected = yolact_make_priors(SIZES_550)
    assert torch.equal(priors, expected)
    assert torch.equal(Y.make_priors(SIZES_550), expected)
    # square anchors: the three ratios only change the side (24, 24/sqrt2, 24*sqrt2 px)
    assert torch.equal(priors[:, 2], priors[:, 3])
    sides = priors[:3, 2] * 550
    assert torch.allclose(sides, torch.tensor([24, 24 * 0.5 ** 0.5, 24 * 2 ** 0.5]))
    assert torch.allclose(priors[-1] * 550, torch.tensor([495, 495, 384 * 2 ** 0.5,
                                                          384 * 2 ** 0.5]))


def test_feature_and_prediction_shapes_at_550(model_550):
    model, image, preds = model_550
    feats = model.backbone(image)
    assert [tuple(f.shape[-2:]) for f in feats] == SIZES_550[:3]
    pyramid = model.fpn(feats)
    assert [tuple(p.shape[-2:]) for p in pyramid] == SIZES_550
    assert all(p.shape[1] == 32 for p in pyramid)
    assert preds["protos"].shape == (1, 138, 138, 32)
    assert preds["protos"].min() >= 0  # ReLU'd prototypes
    assert preds["loc"].shape == (1, 19248, 4)
    assert preds["conf"].shape == (1, 19248, 4)  # 3 classes + background
    assert preds["coeffs"].shape == (1, 19248, 32)
    assert preds["coeffs"].abs().max() <= 1  # tanh
    assert preds["coeffs"].std() > 0.05


def test_decode_matches_yolact_and_gives_valid_boxes(model_550):
    _, _, preds = model_550
    priors, loc = preds["priors"], preds["loc"][0]
    assert loc.abs().max() > 0.5  # non-trivial regressions
    boxes = Y.decode(loc, priors)
    assert torch.allclose(boxes, yolact_decode(loc, priors.clone()), rtol=0, atol=1e-6)
    assert torch.isfinite(boxes).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    # zero regressions decode to the anchors themselves; encode inverts decode
    assert torch.allclose(Y.decode(torch.zeros_like(loc), priors), Y.point_form(priors),
                          atol=1e-7)
    assert torch.allclose(Y.encode(boxes, priors), loc, atol=2e-4)
    batched = Y.decode(preds["loc"], priors)
    assert batched.shape == (1, 19248, 4) and torch.equal(batched[0], boxes)


def test_match_forces_every_gt_onto_a_prior_and_applies_thresholds():
    priors = Y.make_priors(SIZES_550)
    pf = Y.point_form(priors)
    gt = torch.stack([pf[100], torch.tensor([0.30, 0.30, 0.30 + 0.011, 0.30 + 0.5]),
                      torch.tensor([0.55, 0.1, 0.9, 0.7])])
    labels = torch.tensor([4, 7, 0])
    conf, idx, loc = Y.match(gt, labels, priors)
    assert conf.shape == idx.shape == (19248,) and loc.shape == (19248, 4)
    assert conf[100] == 5 and idx[100] == 0
    assert torch.allclose(loc[100], torch.zeros(4), atol=1e-4)
    # the thin box overlaps no prior by 0.4 yet is forced onto its best prior
    iou = Y.box_iou(gt, pf)
    assert iou[1].max() < 0.4
    best = int(iou[1].argmax())
    assert conf[best] == 8 and idx[best] == 1
    assert set(conf.unique().tolist()) == {-1, 0, 1, 5, 8}
    ious_best = iou.max(0).values
    others = torch.ones(19248, dtype=torch.bool)
    others[[100, best]] = False
    assert ((conf[others] > 0) == (ious_best[others] >= 0.5)).all()
    assert ((conf[others] == 0) == (ious_best[others] < 0.4)).all()
    assert (conf == 1).sum() == (iou[2] >= 0.5).sum() > 1 and (conf == -1).sum() > 1
    empty = Y.match(gt[:0], labels[:0], priors)
    assert (empty[0] == 0).all()


# ======================================================================================
# inference
# ======================================================================================


def test_inference_at_550_returns_consistent_detections(model_550):
    model, image, preds = model_550
    torch.manual_seed(0)
    (det,) = model.predict(image)
    d = det["boxes"].shape[0]
    assert 0 < d <= 100
    assert det["boxes"].shape == (d, 4) and det["boxes"].dtype == torch.float32
    assert det["classes"].shape == (d,) and det["classes"].dtype == torch.int64
    assert det["scores"].shape == (d,)
    assert det["masks"].shape == (d, 550, 550) and det["masks"].dtype == torch.bool
    assert det["indices"].shape == (d,)
    b = det["boxes"]
    assert torch.isfinite(b).all() and (b >= 0).all() and (b <= 550).all()
    assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
    assert ((det["classes"] >= 0) & (det["classes"] < 3)).all()
    s = det["scores"]
    assert (s[:-1] >= s[1:]).all() and (s > 0).all() and (s <= 1).all()
    assert det["masks"].any(dim=(1, 2)).sum() > 0

    # the plumbing: Fast NMS on the softmax scores (background dropped) and decoded boxes
    boxes = Y.decode(preds["loc"][0], preds["priors"])
    scores = F.softmax(preds["conf"][0], -1)[:, 1:].t().contiguous()
    idx, cls, sc = ref_fast_nms(boxes, scores, 0.5, 200, 0.05, 100)
    assert torch.equal(det["indices"], idx) and torch.equal(det["classes"], cls)
    assert torch.equal(det["scores"], sc)
    assert torch.equal(det["boxes"], torch.stack([
        (boxes[idx, 0] * 550).clamp(min=0), (boxes[idx, 1] * 550).clamp(min=0),
        (boxes[idx, 2] * 550).clamp(max=550), (boxes[idx, 3] * 550).clamp(max=550)], 1))

    # masks: YOLACT's postprocess (lincomb, sigmoid, crop, upsample, > 0.5)
    lin = torch.sigmoid(preds["protos"][0] @ preds["coeffs"][0, idx].t())
    cropped = yolact_crop(lin, boxes[idx]).permute(2, 0, 1)
    up = F.interpolate(cropped[None], (550, 550), mode="bilinear", align_corners=False)[0]
    differ = det["masks"] != (up > 0.5)
    assert int(differ.sum()) <= 10
    assert ((up[differ] - 0.5).abs() <= 1e-5).all()


def test_detect_on_handcrafted_predictions():
    """Two confident anchors (one per class), a suppressed duplicate and a background
    anchor: exact boxes, scores and masks."""
    # boxes (-0.05, 0, 0.45, 0.5) twice and (0.775, 0.25, 1.025, 0.75): both cross the
    # image border, so the pixel boxes are clipped
    priors = torch.tensor([[0.2, 0.25, 0.5, 0.5], [0.2, 0.25, 0.5, 0.5],
                           [0.9, 0.5, 0.25, 0.5], [0.5, 0.5, 1.0, 1.0]])
    conf = torch.full((1, 4, 3), -10.0)
    conf[0, 0, 1] = 5.0  # anchor 0: class 0, best
    conf[0, 1, 1] = 4.0  # anchor 1: class 0, same box -> suppressed
    conf[0, 2, 2] = 3.0  # anchor 2: class 1
    conf[0, 3, 0] = 10.0  # anchor 3: background
    k = 4
    protos = torch.zeros(1, 10, 10, k)
    protos[..., 0] = 1.0
    coeffs = torch.zeros(1, 4, k)
    coeffs[0, :, 0] = 3.0  # sigmoid(3) > 0.5 inside the crop
    preds = {"loc": torch.zeros(1, 4, 4), "conf": conf, "coeffs": coeffs, "priors": priors,
             "protos": protos}
    p = F.softmax(conf[0], -1)
    # YOLACT's semantics: the prefilter looks at each anchor's best class, then every
    # class keeps its own survivors whatever their score: anchor 2 also survives in class 0
    # (IoU 0 with anchor 0) and anchor 1 in class 1 (only anchor 0, ranked below it there,
    # overlaps it). Anchor 3 (background) never passes the prefilter.
    (full,) = Y.Detect()(preds, (40, 60))
    assert full["indices"].tolist() == [0, 2, 2, 1]
    assert full["classes"].tolist() == [0, 1, 0, 1]
    assert torch.equal(full["scores"], torch.stack([p[0, 1], p[2, 2], p[2, 1], p[1, 2]]))
    assert full["masks"].shape == (4, 40, 60)
    (det,) = Y.Detect(second_threshold=True)(preds, (40, 60), return_proto_masks=True)
    assert det["indices"].tolist() == [0, 2]
    assert det["classes"].tolist() == [0, 1]
    assert torch.equal(det["scores"], torch.stack([p[0, 1], p[2, 2]]))
    assert torch.equal(det["masks"], full["masks"][:2])
    assert torch.allclose(det["boxes"], torch.tensor([[0.0, 0, 27, 20], [46.5, 10, 60, 30]]))
    masks = det["masks"]
    assert masks.shape == (2, 40, 60)
    # box 0 spans proto cols [-0.5, 4.5), rows [0, 5) + 1 px padding -> cols/rows 0..5 kept
    pm = det["proto_masks"]
    assert pm.shape == (2, 10, 10)
    assert (pm[0, :6, :6] > 0.9).all() and (pm[0, 6:] == 0).all() and (pm[0, :, 6:] == 0).all()
    assert masks[0, :20, :30].all() and not masks[0, 26:].any() and not masks[0, :, 39:].any()
    # all background -> zero detections of the right shapes
    preds["conf"] = torch.zeros(1, 4, 3)
    preds["conf"][..., 0] = 10.0
    (none,) = Y.Detect()(preds, (40, 60))
    assert none["boxes"].shape == (0, 4) and none["masks"].shape == (0, 40, 60)
    assert none["masks"].dtype == torch.bool and none["classes"].shape == (0,)


def test_pluggable_backbone_and_batch():
    class Tiny(nn.Module):
        channels = [8, 12, 16]

        def __init__(self):
            super().__init__()
            self.c3 = nn.Conv2d(3, 8, 8, stride=8)
            self.c4 = nn.Conv2d(8, 12, 2, stride=2)
            self.c5 = nn.Conv2d(12, 16, 2, stride=2)

        def forward(self, x):
            c3 = self.c3(x)
            c4 = self.c4(c3)
            return [c3, c4, self.c5(c4)]

    torch.manual_seed(0)
    model = Y.Yolact(2, backbone=Tiny(), fpn_channels=16).eval()
    images = torch.randn(2, 3, 128, 128)
    preds = model(images)
    n = 3 * (16 * 16 + 8 * 8 + 4 * 4 + 2 * 2 + 1 * 1)
    assert preds["priors"].shape == (n, 4) and preds["loc"].shape == (2, n, 4)
    assert preds["protos"].shape == (2, 32, 32, 32)
    dets = model.detect(preds, (128, 128))
    assert len(dets) == 2
    for det in dets:
        d = det["scores"].shape[0]
        assert 0 < d <= 100 and det["masks"].shape == (d, 128, 128)

    class NoChannels(nn.Module):
        def forward(self, x):
            return [x, x, x]

    with pytest.raises(ValueError, match="channels"):
        Y.Yolact(2, backbone=NoChannels())


# ======================================================================================
# mask loss
# ======================================================================================


def _targets():
    gt_px = torch.tensor([[60.0, 80.0, 300.0, 260.0], [320.0, 200.0, 500.0, 530.0],
                          [100.0, 330.0, 180.0, 400.0]])
    return gt_px / 550, torch.tensor([0, 2, 1]), ellipse_masks(gt_px, 550, 550)


def test_mask_loss_backpropagates_into_protonet_and_head():
    model = small_model().train()
    image = torch.randn(1, 3, 550, 550, generator=torch.Generator().manual_seed(3))
    preds = model(image)
    gt_boxes, gt_labels, gt_masks = _targets()
    conf_t, idx_t, _ = Y.match(gt_boxes, gt_labels, preds["priors"])
    pos = conf_t > 0
    assert pos.sum() >= 3
    loss = Y.YolactMaskLoss()(preds["protos"], [preds["coeffs"][0, pos]],
                              [gt_boxes[idx_t[pos]]], [gt_masks], gt_index=[idx_t[pos]])
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    for name in ["proto_net.out_conv.weight", "proto_net.convs.0.weight",
                 "head.mask_layer.weight", "head.mask_layer.bias", "head.upfeature.weight",
                 "fpn.pred_layers.0.weight", "backbone.stem.0.weight"]:
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, name
    # the mask loss does not reach the box and class branches
    for name in ["head.bbox_layer.weight", "head.conf_layer.weight"]:
        grad = model.get_parameter(name).grad
        assert grad is None or not grad.any(), name


def test_mask_loss_matches_yolact_lincomb_mask_loss():
    """Value and gradients against the transcription, batch of 2, with the masks_to_train
    subsample in one image."""
    g = torch.Generator().manual_seed(5)
    protos = torch.rand(2, 138, 138, 32, generator=g).requires_grad_()
    gt_boxes, _, gt_masks = _targets()
    pos_gt = [torch.tensor([0, 0, 1, 2, 1]), torch.tensor([2, 1])]
    coeffs = [(torch.rand(len(p), 32, generator=g) * 2 - 1).requires_grad_() for p in pos_gt]
    boxes = [gt_boxes[p] for p in pos_gt]
    masks = [gt_masks[p] for p in pos_gt]

    loss_fn = Y.YolactMaskLoss(masks_to_train=3)
    loss = loss_fn(protos, coeffs, boxes, masks, generator=torch.Generator().manual_seed(9))
    select = torch.randperm(5, generator=torch.Generator().manual_seed(9))[:3]
    expected = yolact_lincomb_mask_loss(protos, coeffs, boxes, masks, selects=[select, None])
    assert torch.allclose(loss, expected, rtol=1e-5, atol=0)
    grads = torch.autograd.grad(loss, [protos, *coeffs])
    expected_grads = torch.autograd.grad(expected, [protos, *coeffs])
    for a, b in zip(grads, expected_grads):
        assert b.abs().sum() > 0
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    # the gt_index form (masks downsampled once per GT) gives the same loss
    loss_idx = loss_fn(protos, coeffs, boxes, [gt_masks, gt_masks], gt_index=pos_gt,
                       generator=torch.Generator().manual_seed(9))
    assert torch.allclose(loss_idx, loss, rtol=1e-6, atol=0)
    # no positives: a zero loss that still backpropagates (zero gradients)
    empty = loss_fn(protos[:1], [coeffs[0][:0]], [boxes[0][:0]], [masks[0][:0]])
    assert empty == 0
    empty.backward()
