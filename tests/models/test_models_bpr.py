"""BPR model (models/bpr.py, docs/models.md "BPR"): the refinement net's shapes and
gradients, and the refiner's pipeline through `segops.boundary_patches`,
`segops.crop_patches` and `segops.reassemble_patches` -- with the net, and with an oracle that
returns the ground-truth patches. Small widths, patches and images keep the suite at a few
seconds on CPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import segops
from segops.models import bpr as B

H, W = 64, 96
P_SIZE, S = 16, 32  # patch side in the image, the net's input side


def small_net(seed: int = 0) -> B.BPRNet:
    torch.manual_seed(seed)
    return B.BPRNet(width=4, stem_channels=8, num_modules=1, num_blocks=1)


def ellipses(shapes, h: int = H, w: int = W) -> torch.Tensor:
    """bool [N, h, w]: one filled ellipse (cx, cy, rx, ry) per instance."""
    ys = torch.arange(h, dtype=torch.float32).view(-1, 1) + 0.5
    xs = torch.arange(w, dtype=torch.float32).view(1, -1) + 0.5
    out = [((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 < 1 for cx, cy, rx, ry in shapes]
    return torch.stack(out) if out else torch.zeros((0, h, w), dtype=torch.bool)


def scene(seed: int = 0):
    """(image [3, H, W] in [0, 1], gt bool [3, H, W], coarse bool [3, H, W]): the coarse
    masks are the GT downsampled 4x (nearest) and upsampled back: blocky boundaries. The
    third instance touches the image's right border."""
    g = torch.Generator().manual_seed(seed)
    gt = ellipses([(30, 30, 20, 14), (62, 40, 12, 18), (88, 20, 14, 10)])
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


# ======================================================================================
# the net
# ======================================================================================


@pytest.mark.parametrize("size", [(32, 32), (33, 47)])
def test_net_output_shape(size):
    net = small_net().eval()
    p = 3
    image = torch.randn(p, 3, *size)
    with torch.no_grad():
        out = net(image, torch.randn(p, 1, *size))
        out3 = net(image, torch.randn(p, *size))  # [P, s, s] masks too
    assert out.shape == (p, 2, *size) and out3.shape == (p, 2, *size)
    assert torch.isfinite(out).all()
    # the mask stem matters: a different mask changes the logits
    with torch.no_grad():
        a = net(image, -torch.ones(p, 1, *size))
        b = net(image, torch.ones(p, 1, *size))
    assert (a - b).abs().max() > 1e-4
    with pytest.raises(ValueError, match="image"):
        net(torch.randn(p, 4, *size), torch.randn(p, 1, *size))
    with pytest.raises(ValueError, match="mask"):
        net(image, torch.randn(p, 2, *size))


def test_net_width_is_configurable_and_stems_are_summed():
    net = B.BPRNet(width=6, stem_channels=10, num_modules=2, num_blocks=1)
    assert net.conv_image.weight.shape == (10, 3, 3, 3)
    assert net.conv_mask.weight.shape == (10, 1, 3, 3)
    assert net.classifier.weight.shape == (2, 18, 1, 1)
    assert len(net.stages) == 2
    # with a zero mask stem, the mask has no effect (stems are summed before the first BN)
    net.eval()
    with torch.no_grad():
        net.conv_mask.weight.zero_()
        x = torch.randn(2, 3, 24, 24)
        assert torch.equal(net(x, torch.ones(2, 1, 24, 24)), net(x, -torch.ones(2, 1, 24, 24)))
    with pytest.raises(ValueError, match="width"):
        B.BPRNet(width=0)


def test_net_gradients_flow_to_every_parameter():
    net = small_net().train()
    g = torch.Generator().manual_seed(2)
    image = torch.randn(4, 3, S, S, generator=g)
    mask = torch.randint(0, 2, (4, 1, S, S), generator=g).float() * 2 - 1
    target = (mask[:, 0] > 0).long()
    loss = F.cross_entropy(net(image, mask), target)
    loss.backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


# ======================================================================================
# the refiner
# ======================================================================================


def test_refiner_returns_bool_masks_and_follows_the_pipeline():
    image, _, coarse = scene()
    net = small_net().eval()
    refiner = B.BPRRefiner(net, patch_size=P_SIZE, iou_threshold=0.25, input_size=S)
    with torch.no_grad():
        res = refiner.refine(image, coarse)
        out = refiner(image, coarse)
    assert out.shape == coarse.shape and out.dtype == torch.bool
    assert torch.equal(out, res.masks)
    p = res.boxes.size(0)
    assert p > 3 and res.boxes.dtype == torch.int64 and res.instance_index.shape == (p,)
    assert res.patch_probs.shape == (p, S, S)
    assert ((res.patch_probs >= 0) & (res.patch_probs <= 1)).all()

    # the same pipeline written out
    boxes, index, scores = segops.boundary_patches(coarse, P_SIZE, 0.25)
    assert torch.equal(boxes, res.boxes) and torch.equal(index, res.instance_index)
    assert torch.equal(scores, res.scores)
    img_p, mask_p = segops.crop_patches(image[None], coarse, boxes, index,
                                        torch.zeros(3, dtype=torch.int64), output_size=S)
    mean = torch.tensor(B.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(B.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = net((img_p - mean) / std, mask_p[:, None].float() * 2 - 1)
    probs = logits.softmax(1)[:, 1]
    assert torch.allclose(probs, res.patch_probs, atol=1e-6)
    assert torch.equal(res.masks, segops.reassemble_patches(coarse, res.patch_probs, boxes,
                                                            index, 0.5))
    # uncovered pixels keep the coarse mask
    cov = coverage(boxes, index, 3)
    assert torch.equal(out[~cov], coarse[~cov])

    # chunking the net's batch changes nothing in eval mode
    chunked = B.BPRRefiner(net, patch_size=P_SIZE, input_size=S, max_batch=2)
    with torch.no_grad():
        res2 = chunked.refine(image, coarse)
    assert torch.allclose(res2.patch_probs, res.patch_probs, atol=1e-6)


def test_net_inputs_normalisation_and_pixel_range():
    image, _, coarse = scene(1)
    refiner = B.BPRRefiner(small_net(), patch_size=P_SIZE, input_size=S)
    boxes, index, _ = refiner.extract(coarse)
    img_p, mask_p = refiner.net_inputs(image, coarse, boxes, index)
    assert img_p.shape == (boxes.size(0), 3, S, S) and mask_p.shape == (boxes.size(0), 1, S, S)
    assert set(mask_p.unique().tolist()) <= {-1.0, 1.0} and (mask_p == 1).any()
    # normalising after the crop = cropping the normalised image (weights sum to one)
    mean = torch.tensor(B.IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(B.IMAGENET_STD).view(3, 1, 1)
    rois = torch.cat([torch.zeros(boxes.size(0), 1), boxes.float()], 1)
    expected = segops.roi_align(((image - mean) / std)[None], rois, (S, S), 1.0, 1, True)
    assert torch.allclose(img_p, expected, atol=1e-5)
    # the mask patches are the coarse masks' nearest crops, as +-1
    _, m = segops.crop_patches(image[None], coarse, boxes, index,
                               torch.zeros(3, dtype=torch.int64), output_size=S)
    assert torch.equal(mask_p[:, 0] > 0, m)
    # [0, 255] images with pixel_max=255 give the same inputs
    r255 = B.BPRRefiner(small_net(), patch_size=P_SIZE, input_size=S, pixel_max=255.0)
    img255, _ = r255.net_inputs(image * 255, coarse, boxes, index)
    assert torch.allclose(img255, img_p, atol=1e-4)


@pytest.mark.parametrize("iou_threshold", [0.25, 0.55])
def test_oracle_refinement_recovers_ground_truth_where_patches_cover(iou_threshold):
    image, gt, coarse = scene()
    assert (coarse != gt).sum() > 50  # the blocky masks are off along the boundaries
    refiner = B.BPRRefiner(None, patch_size=P_SIZE, iou_threshold=iou_threshold, input_size=S)
    res = refiner.refine(image, coarse, oracle=gt_oracle(gt))
    assert res.masks.dtype == torch.bool and res.masks.shape == gt.shape
    cov = coverage(res.boxes, res.instance_index, 3)
    assert torch.equal(res.masks[cov], gt[cov])
    assert torch.equal(res.masks[~cov], coarse[~cov])
    # patches cover the boundary: the refinement fixes most wrong pixels
    assert (res.masks != gt).sum() < 0.2 * (coarse != gt).sum()
    # the image is not needed with an oracle; the boxes come from the coarse masks
    same = refiner(None, coarse, oracle=gt_oracle(gt))
    assert torch.equal(same, res.masks)


def test_more_patches_at_the_higher_nms_threshold():
    _, gt, coarse = scene()
    counts = [B.BPRRefiner(None, patch_size=P_SIZE, iou_threshold=t).extract(coarse)[0].size(0)
              for t in (0.25, 0.55)]
    assert counts[1] > counts[0] > 0


def test_oracle_probabilities_at_another_size_are_resampled_to_the_box():
    _, gt, coarse = scene()
    refiner = B.BPRRefiner(None, patch_size=P_SIZE, input_size=S)

    def upsampled(boxes, index):  # the GT crop, nearest-upsampled 2x: bilinear back is exact
        crops = gt_oracle(gt)(boxes, index)
        return F.interpolate(crops[:, None], scale_factor=2, mode="nearest")[:, 0]

    res = refiner.refine(None, coarse, oracle=upsampled)
    assert res.patch_probs.shape[-2:] == (2 * P_SIZE, 2 * P_SIZE)
    expected = refiner.refine(None, coarse, oracle=gt_oracle(gt)).masks
    # 2x bilinear downsampling of a 2x nearest upsampling is the identity (up to rounding
    # of 0/1 values: exact)
    assert torch.equal(res.masks, expected)


def test_gradients_flow_through_the_net_in_the_pipeline():
    image, gt, coarse = scene()
    net = small_net().train()
    refiner = B.BPRRefiner(net, patch_size=P_SIZE, input_size=S)
    res = refiner.refine(image, coarse)
    assert res.patch_probs.requires_grad
    # BPR's training loss: 2-class cross-entropy against the GT patches at input size
    target = segops.crop_patches(image[None], gt, res.boxes, res.instance_index,
                                 torch.zeros(3, dtype=torch.int64), output_size=S)[1]
    prob = res.patch_probs.clamp(1e-6, 1 - 1e-6)
    loss = F.binary_cross_entropy(prob, target.float())
    loss.backward()
    for name in ["conv_image.weight", "conv_mask.weight", "stages.0.high.0.conv1.weight",
                 "stages.0.low.0.conv1.weight", "head.0.weight", "classifier.weight"]:
        grad = net.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_empty_masks_give_no_patches_and_the_coarse_masks_back():
    image, _, _ = scene()
    net = small_net().eval()
    refiner = B.BPRRefiner(net, patch_size=P_SIZE, input_size=S)
    calls = []

    def oracle(boxes, index):
        calls.append(boxes)
        return torch.zeros(boxes.size(0), P_SIZE, P_SIZE)

    # all-empty masks, and no instance at all
    for coarse in (torch.zeros(2, H, W, dtype=torch.bool), torch.zeros(0, H, W, dtype=torch.bool)):
        with torch.no_grad():
            res = refiner.refine(image, coarse)
        assert res.boxes.shape == (0, 4) and res.instance_index.shape == (0,)
        assert res.patch_probs.shape == (0, S, S)
        assert torch.equal(res.masks, coarse) and res.masks is not coarse
        assert torch.equal(refiner(image, coarse, oracle=oracle), coarse)
    assert not calls  # the oracle is not called without patches
    # an empty instance next to a non-empty one: only the latter gets patches
    _, _, coarse = scene()
    mixed = torch.cat([torch.zeros(1, H, W, dtype=torch.bool), coarse[:1]])
    res = refiner.refine(None, mixed, oracle=oracle)
    assert res.boxes.size(0) > 0 and (res.instance_index == 1).all()
    assert not res.masks[0].any()


def test_refiner_validation():
    image, gt, coarse = scene()
    with pytest.raises(ValueError, match="patch_size"):
        B.BPRRefiner(None, patch_size=15)
    with pytest.raises(ValueError, match="net"):
        B.BPRRefiner(None, patch_size=P_SIZE).refine(image, coarse)
    refiner = B.BPRRefiner(small_net(), patch_size=P_SIZE, input_size=S)
    with pytest.raises(ValueError, match="image"):
        refiner.refine(image[:, :10], coarse)
    with pytest.raises(ValueError, match="image"):
        refiner.refine(None, coarse)
    with pytest.raises(ValueError, match="masks"):
        refiner.refine(image, coarse[0])
    with pytest.raises(ValueError, match="oracle"):
        refiner.refine(image, coarse, oracle=lambda b, i: torch.zeros(1, 4, 4))
