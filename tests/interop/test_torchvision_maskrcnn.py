"""torchvision's whole maskrcnn_resnet50_fpn (random weights) with and without
segops.patch_torchvision: eval-mode detections and training-mode losses and gradients; and
with segops.MultiScaleRoIAlign assigned as its poolers (docs/torchvision.md).

Eval: boxes, labels and scores bit for bit; the pasted masks to segops' paste tolerance, the
pasted rectangles exactly, and the thresholded masks exactly except where torchvision's value
lies within that tolerance of the threshold. Training: every loss and every gradient bit for
bit (the proposal sampler's RNG is seeded alike). The images are small, the RoI counts lower
than the defaults (MODEL_KW) and the backbone body frozen in training, to keep the CPU time
low; the FPN, RPN and heads train.

Needs torchvision (skipped without it; SEGOPS_REQUIRE_TORCHVISION=1 makes that a failure)."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import segops

from helpers.interop import import_torchvision, pasted_rect

torchvision = import_torchvision()
from torchvision.models.detection import maskrcnn_resnet50_fpn  # noqa: E402

# Small images and fewer RoIs than the defaults (the same code paths, a fifth of the CPU
# time); box_score_thresh 0 so that random weights give detections.
MODEL_KW = dict(min_size=224, max_size=320, box_score_thresh=0.0, box_detections_per_img=40,
                rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=250,
                rpn_pre_nms_top_n_train=500, rpn_post_nms_top_n_train=250,
                box_batch_size_per_image=128)
PASTE_ATOL = 1e-5  # tests/helpers/masks.py's float32 paste tolerance


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, **MODEL_KW)


@pytest.fixture(scope="module")
def eval_reference(model):
    """torchvision's own detections on _images()."""
    model.eval()
    with torch.no_grad():
        return model(_images())


def _images():
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 224, 300, generator=g), torch.rand(3, 200, 280, generator=g)]


def _targets(images):
    """Two or three objects per image: a box, a label in 1..90, its filled ellipse mask."""
    g = torch.Generator().manual_seed(2)
    targets = []
    for img in images:
        h, w = img.shape[1:]
        n = int(torch.randint(2, 4, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = (torch.rand(n, 2, generator=g) * 0.35 + 0.1) * torch.tensor([w, h])
        boxes = torch.cat([xy, xy + wh], dim=1)
        ys, xs = torch.arange(h)[:, None] + 0.5, torch.arange(w)[None, :] + 0.5
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        rx, ry = wh[:, 0] / 2, wh[:, 1] / 2
        masks = (((xs - cx[:, None, None]) / rx[:, None, None]) ** 2
                 + ((ys - cy[:, None, None]) / ry[:, None, None]) ** 2 <= 1).to(torch.uint8)
        labels = torch.randint(1, 91, (n,), generator=g)
        targets.append({"boxes": boxes, "labels": labels, "masks": masks})
    return targets


def _dispatcher_ops(prof) -> set[str]:
    return {e.key for e in prof.key_averages() if e.key.startswith(("segops::", "torchvision::"))}


def test_eval_detections_identical(model, eval_reference):
    model.eval()
    images = _images()
    want = eval_reference
    with torch.no_grad():
        with segops.patch_torchvision():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                got = model(images)
    assert _dispatcher_ops(prof) == {"segops::multilevel_roi_align", "segops::batched_nms",
                                     "segops::paste_masks"}
    assert sum(int((w["masks"] > 0.5).sum()) for w in want) > 0
    for i, (w, o) in enumerate(zip(want, got)):
        assert len(w["boxes"]) == 40, i  # box_detections_per_img, with box_score_thresh=0
        for key in ("boxes", "labels", "scores"):
            assert torch.equal(o[key], w[key]), (i, key)
        wm, om = w["masks"], o["masks"]
        assert om.shape == wm.shape == (40, 1) + tuple(images[i].shape[1:])
        rect = pasted_rect(w["boxes"], 28, *images[i].shape[1:])
        assert rect.any() and (wm[~rect] == 0).all() and (om[~rect] == 0).all()
        torch.testing.assert_close(om, wm, rtol=0, atol=PASTE_ATOL)
        differ = (om > 0.5) != (wm > 0.5)
        assert not (differ & ((wm - 0.5).abs() > PASTE_ATOL)).any()
        print(f"image {i}: {len(w['boxes'])} detections, {int((wm > 0.5).sum())} mask pixels "
              f"> 0.5, {int(differ.sum())} differ; max |mask diff| "
              f"{(om - wm).abs().max().item():.3g}")


def test_eval_with_segops_poolers_assigned_identical(model, eval_reference):
    """segops.MultiScaleRoIAlign assigned in place of the model's two poolers (torchvision's
    constructors accept only their own class), without the patch: the same detections and
    masks, bit for bit."""
    model.eval()
    images = _images()
    heads = model.roi_heads
    saved = heads.box_roi_pool, heads.mask_roi_pool
    want = eval_reference
    with torch.no_grad():
        try:
            for name, tv in (("box_roi_pool", saved[0]), ("mask_roi_pool", saved[1])):
                setattr(heads, name, segops.MultiScaleRoIAlign(
                    tv.featmap_names, tv.output_size, tv.sampling_ratio,
                    canonical_scale=tv.canonical_scale, canonical_level=tv.canonical_level))
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                got = model(images)
        finally:
            heads.box_roi_pool, heads.mask_roi_pool = saved
    assert "segops::multilevel_roi_align" in _dispatcher_ops(prof)
    assert "torchvision::roi_align" not in _dispatcher_ops(prof)
    for w, o in zip(want, got):
        assert len(w["boxes"]) == 40
        for key in ("boxes", "labels", "scores", "masks"):
            assert torch.equal(o[key], w[key]), key


def test_train_losses_and_gradients_identical(model):
    model.train()
    model.backbone.body.requires_grad_(False)
    images = _images()
    targets = _targets(images)
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        model.zero_grad(set_to_none=True)
        torch.manual_seed(3)  # the RPN's and heads' positive/negative samplers
        losses = model(images, targets)
        sum(losses.values()).backward()
        return losses, [p.grad.clone() for p in params]

    try:
        want, want_grads = step()
        with segops.patch_torchvision():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                got, got_grads = step()
    finally:
        model.backbone.body.requires_grad_(True)
        model.eval()
    ops = _dispatcher_ops(prof)
    assert not any(k.startswith("torchvision::") for k in ops)
    assert {"segops::multilevel_roi_align", "segops::_multilevel_roi_align_backward",
            "segops::roi_align", "segops::batched_nms"} <= ops
    assert set(got) == set(want) == {"loss_classifier", "loss_box_reg", "loss_mask",
                                     "loss_objectness", "loss_rpn_box_reg"}
    for key in want:
        assert want[key] > 0, key
        assert torch.equal(got[key], want[key]), key
    assert sum(int((g != 0).sum()) for g in want_grads) > 0
    for i, (g_got, g_want) in enumerate(zip(got_grads, want_grads)):
        assert torch.equal(g_got, g_want), i
    print("losses: " + ", ".join(f"{k} {v.item():.6g}" for k, v in want.items())
          + f"; {len(params)} gradients bit-equal")
