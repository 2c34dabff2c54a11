"""BPR's refiner (models/bpr.py, docs/models.md "BPR"): the pipeline through
`segops.boundary_patches`, `segops.crop_patches` and `segops.reassemble_patches` against the
released inference written out step by step (crop at the box size with zero padding, resize
to the net's input, normalise, net, logits resized to the padded patch size, softmax, padding
cut off, averaged reassembly), the presets, and the oracle refinement. A small HRNet
(helpers.bpr.TINY_SPEC, 32 px input) and small images keep it at a few seconds on CPU.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers.bpr import tiny_net
from torch import nn

import segops
from segops.models import bpr as B

H, W = 64, 96
P_SIZE, S = 16, 32  # patch side in the image, the net's input side


def ellipses(shapes, h: int = H, w: int = W) -> torch.Tensor:
    """bool [N, h, w]: one filled ellipse (cx, cy, rx, ry) per instance."""
    ys = torch.arange(h, dtype=torch.float32).view(-1, 1) + 0.5
    xs = torch.arange(w, dtype=torch.float32).view(1, -1) + 0.5
    out = [((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 < 1 for cx, cy, rx, ry in shapes]
    return torch.stack(out) if out else torch.zeros((0, h, w), dtype=torch.bool)


def scene(seed: int = 0):
    """(image [3, H, W] in [0, 1], gt bool [3, H, W], coarse bool [3, H, W]): the coarse
    masks are the GT downsampled 4x (nearest) and upsampled back: blocky boundaries. The
    first instance touches the top border, the third the right border."""
    g = torch.Generator().manual_seed(seed)
    gt = ellipses([(30, 12, 20, 14), (62, 40, 12, 18), (88, 20, 14, 10)])
    small = F.interpolate(gt[:, None].float(), scale_factor=0.25, mode="area")
    coarse = F.interpolate(small, size=(H, W), mode="nearest")[:, 0] > 0.5
    image = torch.rand(3, H, W, generator=g)
    return image, gt, coarse


def gt_oracle(gt: torch.Tensor):
    """Returns the ground-truth crop of every patch at its box size, as float."""

    def oracle(boxes, instance_index):
        return torch.stack([gt[i, y1:y2, x1:x2].float() for (x1, y1, x2, y2), i
                            in zip(boxes.tolist(), instance_index.tolist())])

    return oracle


def coverage(boxes, instance_index, n, h=H, w=W) -> torch.Tensor:
    cov = torch.zeros((n, h, w), dtype=torch.bool)
    for (x1, y1, x2, y2), i in zip(boxes.tolist(), instance_index.tolist()):
        cov[i, y1:y2, x1:x2] = True
    return cov


def released_pipeline(net, image, masks, patch_size, iou, s, pad):
    """The released inference written out (tools/split_patches.py crop with np.pad, the data
    pipeline's Resize (bilinear image, nearest mask) and Normalize, the net, whole_inference's
    rescale to the padded patch size, the softmax, merge_patches' cut and average), on segops'
    boxes: (boxes, instance_index, probs [P, p, p], refined masks, mean probability where
    covered (NaN elsewhere))."""
    boxes, index, _ = segops.boundary_patches(masks, patch_size, iou)
    img = F.pad(image, (pad,) * 4)
    msk = F.pad(masks.float(), (pad,) * 4)
    mean = torch.tensor(B.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(B.IMAGENET_STD).view(1, 3, 1, 1)
    probs = []
    for (x1, y1, x2, y2), i in zip(boxes.tolist(), index.tolist()):
        ip = img[:, y1:y2 + 2 * pad, x1:x2 + 2 * pad][None]
        mp = msk[i, y1:y2 + 2 * pad, x1:x2 + 2 * pad][None, None]
        ip = F.interpolate(ip, size=(s, s), mode="bilinear", align_corners=False)
        mp = F.interpolate(mp, size=(s, s), mode="nearest")
        with torch.no_grad():
            logits = net((ip - mean) / std, (mp - 0.5) / 0.5)
        logits = F.interpolate(logits, size=(y2 - y1 + 2 * pad, x2 - x1 + 2 * pad),
                               mode="bilinear", align_corners=False)
        prob = logits.softmax(dim=1)[0, 1]
        probs.append(prob[pad:pad + y2 - y1, pad:pad + x2 - x1])
    acc = torch.zeros(masks.shape)
    cnt = torch.zeros(masks.shape)
    for (x1, y1, x2, y2), i, prob in zip(boxes.tolist(), index.tolist(), probs):
        acc[i, y1:y2, x1:x2] += prob
        cnt[i, y1:y2, x1:x2] += 1
    refined = masks.clone()
    cov = cnt > 0
    mean_prob = acc / cnt
    refined[cov] = mean_prob[cov] > 0.5
    return boxes, index, torch.stack(probs), refined, mean_prob


# ======================================================================================
# the pipeline against the released inference
# ======================================================================================


@pytest.mark.parametrize("pad", [0, 4])
def test_refiner_is_the_released_inference(pad):
    image, _, coarse = scene()
    net = tiny_net().eval()
    refiner = B.BPRRefiner(net, patch_size=P_SIZE, padding=pad)
    assert refiner.input_size == S and refiner.iou_threshold == B.INFERENCE_IOU_THRESHOLD
    with torch.no_grad():
        res = refiner.refine(image, coarse)
        out = refiner(image, coarse)
    assert out.dtype == torch.bool and torch.equal(out, res.masks)
    boxes, index, probs, refined, mean_prob = released_pipeline(net, image, coarse, P_SIZE,
                                                                0.55, S, pad)
    assert boxes.size(0) > 3 and (boxes[:, 1] == 0).any()  # a box at the top border
    assert torch.equal(res.boxes, boxes) and torch.equal(res.instance_index, index)
    assert res.patch_probs.shape == (boxes.size(0), P_SIZE, P_SIZE)
    torch.testing.assert_close(res.patch_probs, probs, rtol=0, atol=2e-6)
    # the masks agree except where the mean lies within rounding of the threshold
    differ = res.masks != refined
    assert ((mean_prob[differ] - 0.5).abs() < 1e-5).all()
    assert differ.sum() <= 2
    # uncovered pixels keep the coarse mask
    cov = coverage(boxes, index, 3)
    assert torch.equal(out[~cov], coarse[~cov])


def test_padding_crops_zeros_beyond_the_image_and_cuts_the_probabilities():
    image, _, coarse = scene()
    # patch 16 + 2 * 8 = 32 = the input size: no resize, the crops are exact
    refiner = B.BPRRefiner(tiny_net().eval(), patch_size=P_SIZE, padding=8)
    boxes, index, _ = refiner.extract(coarse)
    img_p, mask_p = refiner.net_inputs(image, coarse, boxes, index)
    top = int(torch.nonzero(boxes[:, 1] == 0)[0])
    x1 = int(boxes[top, 0])
    zero = (-torch.tensor(B.IMAGENET_MEAN) / torch.tensor(B.IMAGENET_STD)).view(3, 1, 1)
    assert torch.allclose(img_p[top, :, :8], zero.expand(3, 8, S))  # above the image
    expected = (image[:, :24, max(x1 - 8, 0):x1 + 24] - torch.tensor(B.IMAGENET_MEAN)
                .view(3, 1, 1)) / torch.tensor(B.IMAGENET_STD).view(3, 1, 1)
    lo = 8 - min(x1, 8)
    assert torch.allclose(img_p[top, :, 8:, lo:lo + expected.shape[-1]], expected, atol=1e-6)
    assert (mask_p[top, 0, :8] == -1).all()
    # the probabilities: logits at the padded size, softmax, the centre p x p
    logits = torch.randn(2, 2, 37, 29)
    probs = refiner.probabilities(logits, (P_SIZE, P_SIZE))
    full = F.interpolate(logits, size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.equal(probs, full.softmax(1)[:, 1, 8:24, 8:24])


class TiledLogits(nn.Module):
    """A stand-in net: logits 0 (background) and, for the foreground, the 2x2 tile
    [[10, -1], [-1, -1]] repeated over the input."""

    input_size = S

    def forward(self, image, mask):
        tile = torch.tensor([[10.0, -1.0], [-1.0, -1.0]])
        fg = tile.repeat(image.shape[-2] // 2, image.shape[-1] // 2)
        return torch.stack([torch.zeros_like(fg), fg]).expand(image.size(0), 2, *fg.shape)


def test_logits_are_resized_before_the_softmax():
    image, _, coarse = scene()
    refiner = B.BPRRefiner(TiledLogits(), patch_size=P_SIZE)
    res = refiner.refine(image, coarse)
    # 32 -> 16 bilinear (align_corners=False) averages each 2x2 block: logit 7/4 everywhere,
    # so the probability is sigmoid(1.75) (softmax then resize would give
    # (sigmoid(10) + 3 sigmoid(-1)) / 4 = 0.452, and background masks)
    resize_then_softmax = 1 / (1 + math.exp(-1.75))
    softmax_then_resize = (1 / (1 + math.exp(-10)) + 3 / (1 + math.exp(1))) / 4
    assert softmax_then_resize < 0.5 < resize_then_softmax
    assert torch.allclose(res.patch_probs, torch.full_like(res.patch_probs,
                                                           resize_then_softmax), atol=1e-6)
    # the explicit composition on the net's logits
    img_p, mask_p = refiner.net_inputs(image, coarse, res.boxes, res.instance_index)
    logits = TiledLogits()(img_p, mask_p)
    explicit = F.interpolate(logits, size=(P_SIZE, P_SIZE), mode="bilinear",
                             align_corners=False).softmax(dim=1)[:, 1]
    assert torch.equal(res.patch_probs, explicit)
    cov = coverage(res.boxes, res.instance_index, 3)
    assert res.masks[cov].all()


@pytest.mark.parametrize("resample", ["released", "direct"])
def test_net_inputs_and_targets(resample):
    image, gt, coarse = scene(1)
    refiner = B.BPRRefiner(tiny_net(), patch_size=P_SIZE, resample=resample)
    boxes, index, _ = refiner.extract(coarse)
    img_p, mask_p = refiner.net_inputs(image, coarse, boxes, index)
    p = boxes.size(0)
    assert img_p.shape == (p, 3, S, S) and mask_p.shape == (p, 1, S, S)
    assert set(mask_p.unique().tolist()) == {-1.0, 1.0}
    mean = torch.tensor(B.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(B.IMAGENET_STD).view(1, 3, 1, 1)
    zeros = torch.zeros(3, dtype=torch.int64)
    if resample == "direct":  # one roi_align sampling at the input size
        ci, cm = segops.crop_patches(image[None], coarse, boxes, index, zeros, output_size=S)
        _, ct = segops.crop_patches(image[None], gt, boxes, index, zeros, output_size=S)
    else:  # exact crops, resized
        crops = torch.stack([image[:, y1:y2, x1:x2] for x1, y1, x2, y2 in boxes.tolist()])
        ci = F.interpolate(crops, size=(S, S), mode="bilinear", align_corners=False)
        cm, ct = (torch.stack([F.interpolate(m[i, y1:y2, x1:x2][None, None].float(), size=(S, S),
                                             mode="nearest")[0, 0] > 0.5
                               for (x1, y1, x2, y2), i in zip(boxes.tolist(), index.tolist())])
                  for m in (coarse, gt))
    torch.testing.assert_close(img_p, (ci - mean) / std, rtol=0, atol=1e-5)
    assert torch.equal(mask_p[:, 0] > 0, cm)
    targets = refiner.targets(gt, boxes, index)
    assert targets.dtype == torch.int64 and torch.equal(targets, ct.long())
    # [0, 255] images with pixel_max=255 give the same inputs
    r255 = B.BPRRefiner(tiny_net(), patch_size=P_SIZE, resample=resample, pixel_max=255.0)
    img255, _ = r255.net_inputs(image * 255, coarse, boxes, index)
    assert torch.allclose(img255, img_p, atol=1e-4)


def test_presets():
    net = B.BPRRefineNet("hrnet18s_128")
    assert B.INFERENCE_IOU_THRESHOLD == 0.55 and B.TRAINING_IOU_THRESHOLD == 0.25
    assert B.PATCH_SIZE == 64 and B.PADDING == 0
    for r, iou in ((B.BPRRefiner(net), 0.55), (B.BPRRefiner.for_inference(net), 0.55),
                   (B.BPRRefiner.for_training(net), 0.25)):
        assert (r.iou_threshold, r.patch_size, r.padding, r.input_size, r.resample) == \
            (iou, 64, 0, 128, "released")
    assert B.BPRRefiner.for_inference(net, iou_threshold=0.3, padding=2).padding == 2
    assert B.BPRRefiner.for_training(net, input_size=64).input_size == 64
    # more patches at the inference threshold
    _, _, coarse = scene()
    counts = [B.BPRRefiner(None, patch_size=P_SIZE, iou_threshold=t).extract(coarse)[0].size(0)
              for t in (B.TRAINING_IOU_THRESHOLD, B.INFERENCE_IOU_THRESHOLD)]
    assert counts[1] > counts[0] > 0


def test_chunked_batches_change_nothing_in_eval_mode():
    image, _, coarse = scene()
    net = tiny_net().eval()
    with torch.no_grad():
        a = B.BPRRefiner(net, patch_size=P_SIZE, max_batch=None).refine(image, coarse)
        b = B.BPRRefiner(net, patch_size=P_SIZE, max_batch=3).refine(image, coarse)
    assert torch.allclose(a.patch_probs, b.patch_probs, atol=1e-6)


def test_gradients_flow_through_the_net_in_the_pipeline():
    image, gt, coarse = scene()
    net = tiny_net().train()
    refiner = B.BPRRefiner(net, patch_size=P_SIZE)
    res = refiner.refine(image, coarse)
    assert res.patch_probs.requires_grad
    target = torch.stack([gt[i, y1:y2, x1:x2] for (x1, y1, x2, y2), i
                          in zip(res.boxes.tolist(), res.instance_index.tolist())]).float()
    F.binary_cross_entropy(res.patch_probs.clamp(1e-6, 1 - 1e-6), target).backward()
    for name in ["backbone.conv1.weight", "backbone.conv_mask.weight",
                 "backbone.stage4.0.branches.3.0.conv1.weight", "decode_head.conv_seg.weight"]:
        grad = net.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


# ======================================================================================
# the oracle refinement
# ======================================================================================


@pytest.mark.parametrize("iou_threshold", [0.25, 0.55])
def test_oracle_refinement_recovers_ground_truth_where_patches_cover(iou_threshold):
    image, gt, coarse = scene()
    assert (coarse != gt).sum() > 50  # the blocky masks are off along the boundaries
    refiner = B.BPRRefiner(None, patch_size=P_SIZE, iou_threshold=iou_threshold)
    res = refiner.refine(image, coarse, oracle=gt_oracle(gt))
    assert res.masks.dtype == torch.bool and res.masks.shape == gt.shape
    cov = coverage(res.boxes, res.instance_index, 3)
    assert torch.equal(res.masks[cov], gt[cov])
    assert torch.equal(res.masks[~cov], coarse[~cov])
    # patches cover the boundary: the refinement fixes most wrong pixels
    assert (res.masks != gt).sum() < 0.2 * (coarse != gt).sum()
    # the image is not needed with an oracle; the boxes come from the coarse masks
    assert torch.equal(refiner(None, coarse, oracle=gt_oracle(gt)), res.masks)


def test_oracle_probabilities_at_another_size_are_resampled_to_the_box():
    _, gt, coarse = scene()
    refiner = B.BPRRefiner(None, patch_size=P_SIZE)

    def upsampled(boxes, index):  # the GT crop, nearest-upsampled 2x: bilinear back is exact
        crops = gt_oracle(gt)(boxes, index)
        return F.interpolate(crops[:, None], scale_factor=2, mode="nearest")[:, 0]

    res = refiner.refine(None, coarse, oracle=upsampled)
    assert res.patch_probs.shape[-2:] == (2 * P_SIZE, 2 * P_SIZE)
    expected = refiner.refine(None, coarse, oracle=gt_oracle(gt)).masks
    assert torch.equal(res.masks, expected)


def test_empty_masks_give_no_patches_and_the_coarse_masks_back():
    image, _, _ = scene()
    refiner = B.BPRRefiner(tiny_net().eval(), patch_size=P_SIZE)
    calls = []

    def oracle(boxes, index):
        calls.append(boxes)
        return torch.zeros(boxes.size(0), P_SIZE, P_SIZE)

    for coarse in (torch.zeros(2, H, W, dtype=torch.bool), torch.zeros(0, H, W, dtype=torch.bool)):
        with torch.no_grad():
            res = refiner.refine(image, coarse)
        assert res.boxes.shape == (0, 4) and res.instance_index.shape == (0,)
        assert res.patch_probs.shape == (0, P_SIZE, P_SIZE)
        assert torch.equal(res.masks, coarse) and res.masks is not coarse
        assert torch.equal(refiner(image, coarse, oracle=oracle), coarse)
    assert not calls  # the oracle is not called without patches
    _, _, coarse = scene()
    mixed = torch.cat([torch.zeros(1, H, W, dtype=torch.bool), coarse[:1]])
    res = refiner.refine(None, mixed, oracle=oracle)
    assert res.boxes.size(0) > 0 and (res.instance_index == 1).all()
    assert not res.masks[0].any()


def test_refiner_validation():
    image, _, coarse = scene()
    for kwargs, match in (({"patch_size": 15}, "patch_size"), ({"padding": -1}, "padding"),
                          ({"resample": "nearest"}, "resample"), ({"input_size": 0}, "input_size"),
                          ({"max_batch": 0}, "max_batch"), ({"pixel_max": 0.0}, "pixel_max")):
        with pytest.raises(ValueError, match=match):
            B.BPRRefiner(None, **kwargs)
    with pytest.raises(ValueError, match="net"):
        B.BPRRefiner(None, patch_size=P_SIZE, input_size=S).refine(image, coarse)
    with pytest.raises(ValueError, match="input_size"):  # a net without an input size
        B.BPRRefiner(nn.Identity(), patch_size=P_SIZE).refine(image, coarse)
    refiner = B.BPRRefiner(tiny_net(), patch_size=P_SIZE)
    with pytest.raises(ValueError, match="image"):
        refiner.refine(image[:, :10], coarse)
    with pytest.raises(ValueError, match="image"):
        refiner.refine(None, coarse)
    with pytest.raises(ValueError, match="masks"):
        refiner.refine(image, coarse[0])
    with pytest.raises(ValueError, match="oracle"):
        refiner.refine(image, coarse, oracle=lambda b, i: torch.zeros(1, 4, 4))
    boxes = torch.tensor([[0, 0, 16, 16], [0, 0, 8, 16]])
    with pytest.raises(ValueError, match="same size"):
        refiner.net_inputs(image, coarse, boxes, torch.zeros(2, dtype=torch.int64))
