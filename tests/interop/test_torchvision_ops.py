"""segops against the real torchvision on random inputs (docs/torchvision.md): roi_align,
roi_pool, nms, batched_nms, MultiScaleRoIAlign and paste_masks_in_image, forward and backward
where differentiable, in float32 and float64.

What is compared how:
* roi_align, roi_pool, nms, MultiScaleRoIAlign (forward and input gradients): bit for bit.
* batched_nms: bit for bit where the scores are distinct; with equal scores the kept set
  and the score sequence are torchvision's, and segops' order is (score descending, index
  ascending) -- torchvision's per-class path (more than 1000 boxes on the CPU) sorts the kept
  indices unstably, so its order among equal scores is unspecified.
* MultiScaleRoIAlign: the inputs stay clear of the LevelMapper's knife edges, and a separate
  test sweeps areas across every level threshold and accounts for each difference there.
* paste_masks_in_image: the pasted rectangle exactly; values to segops' paste tolerance
  (segops' bilinear arithmetic is not torch's interpolate kernel, see docs/ops/masks.md).
Half types are not compared: segops computes their geometry in float32 (documented), and
torchvision has no half nms and no bfloat16 roi_align on the CPU.

Needs torchvision (skipped without it; SEGOPS_REQUIRE_TORCHVISION=1 makes that a failure)."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch

import segops

from helpers.interop import import_torchvision, pasted_rect, random_boxes, with_batch_index

torchvision = import_torchvision()
from torchvision.models.detection.roi_heads import paste_masks_in_image  # noqa: E402

DTYPES = [torch.float32, torch.float64]
PASTE_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5),  # tests/helpers/masks.py's TOL
             torch.float64: dict(rtol=1e-10, atol=1e-12)}


def _grad_pair(x: torch.Tensor):
    return x.clone().requires_grad_(), x.clone().requires_grad_()


# ---------------------------------------------------------------------------------------
# roi_align, roi_pool
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("as_list", [False, True])
def test_roi_align(dtype, sampling_ratio, aligned, as_list):
    g = torch.Generator().manual_seed(hash((sampling_ratio, aligned, as_list)) % 2**31)
    x = torch.randn(2, 3, 20, 24, generator=g, dtype=dtype)
    # boxes partly outside the map, and some smaller than a bin
    if as_list:
        boxes = [random_boxes(25, 48, 40, g, dtype, min_side=0.2) for _ in range(2)]
    else:
        boxes = with_batch_index(random_boxes(50, 48, 40, g, dtype, min_side=0.2), 2, g)
    xt, xs = _grad_pair(x)
    want = torchvision.ops.roi_align(xt, boxes, (5, 4), 0.5, sampling_ratio, aligned)
    got = segops.roi_align(xs, boxes, (5, 4), 0.5, sampling_ratio, aligned)
    assert want.abs().max() > 0
    assert got.dtype == dtype and torch.equal(got, want)
    grad = torch.randn(want.shape, generator=g, dtype=dtype)
    want.backward(grad)
    got.backward(grad)
    assert xt.grad.abs().max() > 0
    assert torch.equal(xs.grad, xt.grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_roi_pool(dtype):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 3, 20, 24, generator=g, dtype=dtype)
    rois = with_batch_index(random_boxes(50, 48, 40, g, dtype, min_side=0.2), 2, g)
    xt, xs = _grad_pair(x)
    want = torchvision.ops.roi_pool(xt, rois, (3, 4), 0.5)
    got = segops.roi_pool(xs, rois, (3, 4), 0.5)
    assert want.abs().max() > 0 and torch.equal(got, want)
    grad = torch.randn(want.shape, generator=g, dtype=dtype)
    want.backward(grad)
    got.backward(grad)
    assert xt.grad.abs().max() > 0 and torch.equal(xs.grad, xt.grad)


# ---------------------------------------------------------------------------------------
# nms, batched_nms
# ---------------------------------------------------------------------------------------


def _scores(n: int, g, dtype, ties: bool):
    s = torch.rand(n, generator=g, dtype=torch.float64)
    return ((s * 10).floor() / 10 if ties else s).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n", [300, 3000])
def test_nms(dtype, ties, n):
    g = torch.Generator().manual_seed(n + ties)
    boxes, scores = random_boxes(n, 200, 200, g, dtype, max_side=60), _scores(n, g, dtype, ties)
    for threshold in (0.3, 0.5, 0.7):
        want = torchvision.ops.nms(boxes, scores, threshold)
        got = segops.nms(boxes, scores, threshold)
        assert 0 < len(want) < n
        # both sort stably on the CPU: equal scores by lower index
        assert torch.equal(got, want)


def _assert_equal_up_to_tie_order(got, want, scores):
    assert torch.equal(got.sort().values, want.sort().values)  # the same kept set
    assert torch.equal(scores[got], scores[want])  # the same score sequence
    key = torch.stack([-scores[got].double(), got.double()], dim=1)
    order = sorted(range(len(got)), key=lambda i: tuple(key[i].tolist()))
    assert order == list(range(len(got)))  # segops: score descending, index ascending


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n", [300, 3000])  # torchvision: offset trick / per-class loop
def test_batched_nms(dtype, ties, n):
    g = torch.Generator().manual_seed(2 * n + ties)
    boxes, scores = random_boxes(n, 200, 200, g, dtype, max_side=60), _scores(n, g, dtype, ties)
    labels = torch.randint(0, 5, (n,), generator=g)
    for threshold in (0.3, 0.5, 0.7):
        want = torchvision.ops.batched_nms(boxes, scores, labels, threshold)
        got = segops.batched_nms(boxes, scores, labels, threshold)
        assert 0 < len(want) < n
        if ties and n > 1000:
            _assert_equal_up_to_tie_order(got, want, scores)
        else:
            assert torch.equal(got, want)


# ---------------------------------------------------------------------------------------
# MultiScaleRoIAlign
# ---------------------------------------------------------------------------------------


def _level_value(boxes: torch.Tensor) -> torch.Tensor:
    """torchvision's LevelMapper argument of the floor, ``4 + log2(sqrt(area) / 224) + 1e-6``,
    in float64."""
    b = boxes.double()
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return 4 + torch.log2(area.sqrt() / 224) + 1e-6


def _clear_of_knife_edges(boxes: torch.Tensor) -> torch.Tensor:
    """Drops the boxes whose level value lies within 1e-5 of an integer (where float32
    rounding may decide the level), and checks that few were dropped."""
    v = _level_value(boxes)
    keep = (v - v.round()).abs() > 1e-5
    assert keep.sum() >= 0.99 * len(boxes)
    return boxes[keep]


def _fpn_boxes(n: int, g, dtype=torch.float32) -> torch.Tensor:
    """Boxes at corners in a 256 x 320 image, sqrt(area) log-uniform in [4, 1000] and aspect
    ratios in [1/2, 2]: every level P2..P5 gets RoIs."""
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * torch.tensor([320.0, 256.0])
    side = 4 * 250 ** torch.rand(n, 1, generator=g, dtype=torch.float64)
    aspect = 2 ** (2 * torch.rand(n, 1, generator=g, dtype=torch.float64) - 1)
    wh = torch.cat([side * aspect.sqrt(), side / aspect.sqrt()], dim=1)
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


def _pyramid(g, dtype, batch=2, size=(64, 80), channels=4, levels=4):
    h, w = size
    return OrderedDict((str(k), torch.randn(batch, channels, h >> k, w >> k, generator=g,
                                            dtype=dtype)) for k in range(levels))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("levels", [1, 2, 4])
def test_multiscale_roi_align(dtype, levels):
    g = torch.Generator().manual_seed(20 + levels)
    feats = _pyramid(g, dtype, levels=levels)
    names = list(feats)
    boxes = [_clear_of_knife_edges(_fpn_boxes(n, g, dtype)) for n in (60, 45)]
    levels_hit = torch.cat([_level_value(b).floor().clamp(2, 5) for b in boxes]).unique()
    assert levels_hit.tolist() == [2.0, 3.0, 4.0, 5.0]
    shapes = [(256, 320), (250, 300)]
    ft = {k: v.clone().requires_grad_() for k, v in feats.items()}
    fs = {k: v.clone().requires_grad_() for k, v in feats.items()}
    tv = torchvision.ops.MultiScaleRoIAlign(names, (7, 6), 2)
    ours = segops.MultiScaleRoIAlign(names, (7, 6), 2)
    want, got = tv(ft, boxes, shapes), ours(fs, boxes, shapes)
    assert ours.scales == tv.scales == [1 / 4 / 2**k for k in range(levels)]
    assert want.abs().max() > 0 and torch.equal(got, want)
    grad = torch.randn(want.shape, generator=g, dtype=dtype)
    want.backward(grad)
    got.backward(grad)
    for k in names:
        assert torch.equal(fs[k].grad, ft[k].grad), k
    # the scales inferred on the first call are kept, as torchvision keeps them
    again = ours(fs, boxes, [(128, 160)])
    assert torch.equal(again, tv(ft, boxes, [(128, 160)])) and torch.equal(again, got)


def test_multiscale_roi_align_empty_and_with_canonical_settings():
    g = torch.Generator().manual_seed(30)
    feats = _pyramid(g, torch.float32)
    boxes = [random_boxes(0, 320, 256, g), _clear_of_knife_edges(_fpn_boxes(40, g))]
    kw = dict(canonical_scale=160, canonical_level=3)
    tv = torchvision.ops.MultiScaleRoIAlign(list(feats), 5, 0, **kw)
    ours = segops.MultiScaleRoIAlign(list(feats), 5, 0, **kw)
    want = tv(feats, boxes, [(256, 320)] * 2)
    assert torch.equal(ours(feats, boxes, [(256, 320)] * 2), want)
    with segops.patch_torchvision():  # torchvision's pooler on segops keeps the settings
        assert torch.equal(tv(feats, boxes, [(256, 320)] * 2), want)
    default = torchvision.ops.MultiScaleRoIAlign(list(feats), 5, 0)(feats, boxes,
                                                                    [(256, 320)] * 2)
    assert not torch.equal(default, want)  # the settings matter for these boxes
    empty = [random_boxes(0, 320, 256, g)] * 2
    got = ours(feats, empty, [(256, 320)] * 2)
    assert got.shape == (0, 4, 5, 5)


def test_multiscale_knife_edges_accounted():
    """Square boxes whose sides step through the 33 float32 values around each level
    threshold (side ``224 * 2**(k - 4 - 1e-6)``): each RoI that segops pools from another
    level than torchvision must lie on the knife edge (level value within 1e-6 of an
    integer, where float32 rounding of the area or of torchvision's log2 decides), and must
    then equal roi_align on the adjacent level."""
    g = torch.Generator().manual_seed(31)
    feats = _pyramid(g, torch.float32, size=(128, 128))
    sides = []
    for k in (3, 4, 5):  # the P2|P3, P3|P4 and P4|P5 thresholds
        t = torch.tensor(224 * 2.0 ** (k - 4 - 1e-6), dtype=torch.float32)
        up, down = [t], [t]
        for _ in range(16):
            up.append(torch.nextafter(up[-1], torch.tensor(math.inf)))
            down.append(torch.nextafter(down[-1], torch.tensor(0.0)))
        sides += down[:0:-1] + up
    side = torch.stack(sides)
    boxes = torch.stack([torch.zeros_like(side), torch.zeros_like(side), side, side], dim=1)
    tv = torchvision.ops.MultiScaleRoIAlign(list(feats), 3, 2)
    want = tv(feats, [boxes], [(512, 512)])
    tv_levels = tv.map_levels([boxes])
    for j in range(3):  # the sweep crosses each threshold: both levels occur
        assert set(tv_levels[33 * j: 33 * (j + 1)].tolist()) == {j, j + 1}
    got = segops.MultiScaleRoIAlign(list(feats), 3, 2)(feats, [boxes], [(512, 512)])
    value = _level_value(boxes)
    differ = [i for i in range(len(boxes)) if not torch.equal(got[i], want[i])]
    for i in differ:
        assert abs(value[i] - value[i].round()) < 1e-6, (i, value[i])
        roi = torch.cat([torch.zeros(1, 1), boxes[i:i + 1]], dim=1)
        pooled = [segops.roi_align(f, roi, 3, s, 2)[0] for f, s in zip(feats.values(), tv.scales)]
        ours = [lvl for lvl, p in enumerate(pooled) if torch.equal(p, got[i])]
        assert ours in ([tv_levels[i] - 1], [tv_levels[i] + 1]), (i, ours, tv_levels[i])
    print(f"knife-edge sweep: {len(differ)} of {len(boxes)} RoIs on another level")


# ---------------------------------------------------------------------------------------
# paste_masks_in_image
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_size", [28, 14])
def test_paste_masks_in_image(dtype, mask_size):
    g = torch.Generator().manual_seed(40 + mask_size)
    H, W = 120, 160
    masks = torch.rand(60, 1, mask_size, mask_size, generator=g, dtype=dtype)
    # Mask R-CNN's boxes lie in the image (some on its edges); include boxes of 0-2 pixels
    boxes = random_boxes(60, W, H, g, dtype, min_side=0.0, max_side=90.0)
    boxes = torch.minimum(boxes, torch.tensor([W, H, W, H], dtype=dtype))
    want = paste_masks_in_image(masks, boxes, (H, W))
    got = segops.paste_masks(masks, boxes, (H, W), threshold=None, mode="torchvision")[:, None]
    assert got.shape == want.shape and got.dtype == want.dtype == dtype
    rect = pasted_rect(boxes, mask_size, H, W)
    assert (want[~rect] == 0).all() and (got[~rect] == 0).all()
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, **PASTE_TOL[dtype])
    # Thresholded as a user would: equal except where torchvision's value is within the
    # tolerance of the threshold.
    differ = (got > 0.5) != (want > 0.5)
    band = (want - 0.5).abs() <= PASTE_TOL[dtype]["atol"]
    assert not (differ & ~band).any()
    exact = (got == want).double().mean().item()
    print(f"paste {dtype} M={mask_size}: max |diff| {(got - want).abs().max().item():.3g}, "
          f"{exact:.1%} of pixels bit-equal, {int(differ.sum())} thresholded pixels differ")
