"""YOLACT model (models/yolact*.py, docs/models.md) with a small backbone: anchors, box
coding, matching, inference through `segops.fast_nms` + `segops.assemble_masks` and the
training loss, checked against our transcription of dbolya/yolact's released arithmetic
(tests/helpers/yolact_release*.py). The released architectures are tested in
test_models_yolact_release.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import yolact_release as R
from helpers.yolact_release_post import released_detect, released_postprocess
from helpers.yolact_scenes import (
    SIZES_550,
    as_release,
    assert_detections_match_release,
    detector_like_preds,
    small_model,
)
from torch import nn

from segops.models import yolact as Y

@pytest.fixture(scope="module")
def model_550():
    """A small YOLACT in eval mode and its raw predictions for one random 550x550 image."""
    model = small_model().eval()
    image = torch.randn(1, 3, 550, 550, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        preds = model(image)
    return model, image, preds


# ======================================================================================
# anchors and box coding
# ======================================================================================


def test_priors_match_the_release_at_550(model_550):
    _, _, preds = model_550
    priors = preds["priors"]
    assert 3 * sum(h * w for h, w in SIZES_550) == 19248
    assert priors.shape == (19248, 4) and priors.dtype == torch.float32
    expected = torch.cat([R.released_priors(h, w, s)
                          for (h, w), s in zip(SIZES_550, (24, 48, 96, 192, 384))])
    assert torch.equal(priors, expected)
    # square anchors: the three ratios only change the side (24, 24/sqrt2, 24*sqrt2 px)
    assert torch.equal(priors[:, 2], priors[:, 3])
    assert torch.allclose(priors[:3, 2] * 550, torch.tensor([24, 24 * 0.5 ** 0.5, 24 * 2 ** 0.5]))
    assert torch.allclose(priors[-1] * 550, torch.tensor([495, 495, 384 * 2 ** 0.5,
                                                          384 * 2 ** 0.5]))


@pytest.mark.no_cuda_emu  # dynamo does not trace under the emulator's dispatch mode
def test_priors_traced_first_are_not_cached():
    """A trace (torch.compile here, torch.export alike) must not leave its fake priors in the
    cache for later eager calls."""
    model = small_model().eval()
    sizes = [(69, 69), (35, 35), (18, 18), (9, 9), (5, 5)]
    torch._dynamo.reset()
    traced = torch.compile(model.priors, backend="eager", fullgraph=True)(sizes, "cpu")
    assert not model._prior_cache
    eager = model.priors(sizes, "cpu")
    assert type(eager) is torch.Tensor and torch.equal(eager, traced)
    torch._dynamo.reset()


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
    assert preds["conf"].shape == (1, 19248, 4)  # num_classes includes the background
    assert preds["coeffs"].shape == (1, 19248, 32)
    assert preds["coeffs"].abs().max() <= 1  # tanh
    assert preds["coeffs"].std() > 0.05
    assert "segm" not in preds  # training mode only
    with torch.no_grad():  # a fresh model: training mode would update the fixture's BN stats
        assert small_model().train()(image[..., :128, :128])["segm"].shape == (1, 3, 16, 16)


def test_decode_encode_match_the_release(model_550):
    _, _, preds = model_550
    priors, loc = preds["priors"], preds["loc"][0]
    assert loc.abs().max() > 0.5  # non-trivial regressions
    boxes = Y.decode(loc, priors)
    assert torch.equal(boxes, R.decode(loc, priors.clone()))
    assert torch.isfinite(boxes).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert torch.allclose(Y.decode(torch.zeros_like(loc), priors), Y.point_form(priors),
                          atol=1e-7)
    assert torch.equal(Y.encode(boxes, priors), R.encode(boxes, priors))
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
    for got, want in zip((conf, idx, loc), R.match(0.5, 0.4, gt, priors, labels, None, 0.7)):
        assert torch.equal(got, want)
    empty = Y.match(gt[:0], labels[:0], priors)
    assert (empty[0] == 0).all()


def test_match_neutralises_priors_inside_crowds():
    priors = Y.make_priors(SIZES_550)
    gt = torch.tensor([[0.1, 0.1, 0.3, 0.4]])
    crowd = torch.tensor([[0.5, 0.5, 0.95, 0.9], [0.0, 0.6, 0.2, 1.0]])
    conf, idx, loc = Y.match(gt, torch.tensor([2]), priors, crowd_boxes=crowd)
    plain = Y.match(gt, torch.tensor([2]), priors)[0]
    for got, want in zip((conf, idx, loc),
                         R.match(0.5, 0.4, gt, priors, torch.tensor([2]), crowd, 0.7)):
        assert torch.equal(got, want)
    newly = (conf == -1) & (plain == 0)
    assert newly.sum() > 100  # background priors inside the crowds became neutral
    assert torch.equal(conf[plain > 0], plain[plain > 0])  # positives untouched
    assert torch.equal(Y.match(gt, torch.tensor([2]), priors, crowd_boxes=crowd,
                               crowd_iou_threshold=1.0)[0], plain)
    inside = R.jaccard(R.point_form(priors), crowd, iscrowd=True).max(1).values > 0.7
    assert torch.equal(newly, inside & (plain == 0))
    only_crowd = Y.match(gt[:0], torch.tensor([], dtype=torch.int64), priors, crowd_boxes=crowd)
    assert torch.equal(only_crowd[0] == -1, inside)


# ======================================================================================
# inference
# ======================================================================================


def test_inference_at_550_matches_the_release(model_550):
    model, image, preds = model_550
    (det,) = model.predict(image)
    d = det["boxes"].shape[0]
    assert 0 < d <= 100
    assert det["masks"].shape == (d, 550, 550) and det["masks"].dtype == torch.bool
    assert ((det["classes"] >= 0) & (det["classes"] < 3)).all()
    s = det["scores"]
    assert (s[:-1] >= s[1:]).all() and (s > 0.05).any() and (s <= 1).all()
    assert det["masks"].any(dim=(1, 2)).sum() > 0
    rdet = released_detect(as_release(preds))
    assert_detections_match_release(det, rdet, 550, 550)
    # the anchors: the kept boxes are those anchors' decoded boxes
    assert torch.equal(det["relative_boxes"], Y.decode(preds["loc"][0], preds["priors"])[
        det["indices"]])


SIZES_300 = [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3)]  # a 300x300 input: 5817 anchors


@pytest.mark.parametrize("nms", ["fast", "cc", "traditional"])
@pytest.mark.parametrize("size", [(300, 300), (240, 320)])
def test_detect_variants_match_the_release(nms, size):
    """Fast, cross-class and traditional NMS, at the network's size and at an original
    image's size, on detector-like random predictions (21 classes, 300x300 anchors: the
    transcribed traditional NMS is a Python loop)."""
    preds = detector_like_preds(SIZES_300, num_classes=21, seed=3)
    detect = Y.Detect(nms="traditional" if nms == "traditional" else "fast",
                      cross_class=nms == "cc", max_size=300)
    (det,) = detect(preds, size)
    rdet = released_detect(as_release(preds), nms=nms, max_size=300)
    assert det["classes"].shape[0] == rdet["class"].shape[0] >= (100 if nms != "cc" else 50)
    assert det["masks"].any(dim=(1, 2)).sum() > 10
    assert_detections_match_release(det, rdet, *size)


def test_detect_options_match_the_release():
    preds = detector_like_preds(SIZES_300, num_classes=21, seed=4)
    rdet = released_detect(as_release(preds))
    threshold = float(rdet["score"][40])  # keeps 40 of 100
    (det,) = Y.Detect(crop_masks=False, score_threshold=threshold)(preds, (300, 400))
    classes, scores, boxes, binary, up = released_postprocess(rdet, 400, 300, crop_masks=False,
                                                              score_threshold=threshold)
    assert scores.shape[0] == 40
    assert torch.equal(det["classes"], classes) and torch.equal(det["scores"], scores)
    assert torch.equal(det["boxes"], boxes)
    differ = det["masks"] != binary.bool()
    assert int(differ.sum()) <= 10 and ((up[differ] - 0.5).abs() <= 1e-5).all()
    # an uncropped mask reaches outside its box
    b = boxes[0]
    outside = det["masks"][0].clone()
    outside[b[1]:b[3], b[0]:b[2]] = False
    assert outside.any()


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
    # pixel boxes (0, 0, 27, 20) and (46.5, 10, 61.5 -> 60, 30), truncated to int64
    assert det["boxes"].tolist() == [[0, 0, 27, 20], [46, 10, 60, 30]]
    masks = det["masks"]
    # box 0 spans proto cols [-0.5, 4.5), rows [0, 5) + 1 px padding -> cols/rows 0..5 kept
    pm = det["proto_masks"]
    assert pm.shape == (2, 10, 10)
    assert (pm[0, :6, :6] > 0.9).all() and (pm[0, 6:] == 0).all() and (pm[0, :, 6:] == 0).all()
    assert masks[0, :20, :30].all() and not masks[0, 26:].any() and not masks[0, :, 39:].any()
    # traditional NMS: anchor 1 (IoU 1 with anchor 0) is suppressed in class 0 and, scoring
    # under conf_thresh in class 1, is no candidate there
    (trad,) = Y.Detect(nms="traditional")(preds, (40, 60))
    assert trad["indices"].tolist() == [0, 2] and trad["classes"].tolist() == [0, 1]
    # all background -> zero detections of the right shapes
    preds["conf"] = torch.zeros(1, 4, 3)
    preds["conf"][..., 0] = 10.0
    for detect in (Y.Detect(), Y.Detect(nms="traditional"), Y.Detect(cross_class=True)):
        (none,) = detect(preds, (40, 60))
        assert none["boxes"].shape == (0, 4) and none["masks"].shape == (0, 40, 60)
        assert none["masks"].dtype == torch.bool and none["classes"].shape == (0,)


def test_detect_rejects_bad_options():
    with pytest.raises(ValueError, match="Detect: `nms`"):
        Y.Detect(nms="soft")
    with pytest.raises(ValueError, match="cross_class"):
        Y.Detect(nms="traditional", cross_class=True)
    with pytest.raises(ValueError, match="nms_thresh"):
        Y.Detect(nms_thresh=0.0)


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
    model = Y.Yolact(3, backbone=Tiny(), fpn_channels=16).eval()
    images = torch.randn(2, 3, 128, 128)
    preds = model(images)
    n = 3 * (16 * 16 + 8 * 8 + 4 * 4 + 2 * 2 + 1 * 1)
    assert preds["priors"].shape == (n, 4) and preds["loc"].shape == (2, n, 4)
    assert preds["protos"].shape == (2, 32, 32, 32)
    dets = model.detect(preds, (128, 128))
    assert len(dets) == 2
    for i, det in enumerate(dets):
        d = det["scores"].shape[0]
        assert 0 < d <= 100 and det["masks"].shape == (d, 128, 128)
        assert_detections_match_release(det, released_detect(as_release(preds), image=i),
                                        128, 128)

    class NoChannels(nn.Module):
        def forward(self, x):
            return [x, x, x]

    with pytest.raises(ValueError, match="channels"):
        Y.Yolact(3, backbone=NoChannels())
    with pytest.raises(ValueError, match="num_classes"):
        Y.Yolact(1, backbone=Tiny())
    with pytest.raises(TypeError):
        Y.Yolact(3, backbone=Tiny(), no_such_field=1)
