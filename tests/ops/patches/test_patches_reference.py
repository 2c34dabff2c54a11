"""The BPR patch references (docs/ops/patches.md) on their own, no build needed: the boundary band and
its scores on hand-drawn masks, the NMS order, ties and strict threshold, the shift rule,
crop_patches' two resamplings, reassembly's float32 rule and bookkeeping, and the reference
against a literal transcription of BPR's released code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from helpers.patches import (
    bpr_find_float_boundary, bpr_force_move_back, bpr_get_dets, bpr_merge, mask_problems,
    mmcv_nms, ref, render_masks, Instance,
)


def _s(k: int) -> float:
    """The contract's score of a pixel whose 3x3 sum is k: float32(min(k, 9 - k)) / 4.5f."""
    return float(np.float32(min(k, 9 - k)) / np.float32(4.5))


def _square(H=7, W=7) -> torch.Tensor:
    m = torch.zeros(1, H, W, dtype=torch.bool)
    m[0, 2:5, 2:5] = True
    return m


# 3x3 sums of the 3x3 square at rows/columns 2..4 of a 7x7 image, worked by hand: the row
# pattern (0, 1, 2, 3, 2, 1, 0) times the number of mask rows in each 3-row window.
SQUARE_S = [
    [0, 0, 0, 0, 0, 0, 0],
    [0, 1, 2, 3, 2, 1, 0],
    [0, 2, 4, 6, 4, 2, 0],
    [0, 3, 6, 9, 6, 3, 0],
    [0, 2, 4, 6, 4, 2, 0],
    [0, 1, 2, 3, 2, 1, 0],
    [0, 0, 0, 0, 0, 0, 0],
]


# ======================================================================================
# The boundary band and its scores
# ======================================================================================


def test_square_band_and_scores():
    scores = ref.boundary_scores(_square())[0]
    expected = torch.tensor([[_s(k) for k in row] for row in SQUARE_S], dtype=torch.float32)
    assert scores.dtype == torch.float32
    assert torch.equal(scores, expected)
    # the band: the 5x5 block around the square, both sides of the edge, minus the centre
    band = torch.zeros(7, 7, dtype=torch.bool)
    band[1:6, 1:6] = True
    band[3, 3] = False
    assert torch.equal(scores > 0, band) and int(band.sum()) == 24


def test_square_candidate_order():
    """Score descending (inner corners 4, then 3: edge centres inside and outside, then 2,
    then the outer corners 1), ties in raster order of the pixel."""
    xs, ys, s = ref.candidates(ref.boundary_scores(_square())[0])
    got = list(zip(ys.tolist(), xs.tolist()))
    expected = (
        [(2, 2), (2, 4), (4, 2), (4, 4)]
        + [(1, 3), (2, 3), (3, 1), (3, 2), (3, 4), (3, 5), (4, 3), (5, 3)]
        + [(1, 2), (1, 4), (2, 1), (2, 5), (4, 1), (4, 5), (5, 2), (5, 4)]
        + [(1, 1), (1, 5), (5, 1), (5, 5)]
    )
    assert got == expected
    assert s.tolist() == [_s(4)] * 4 + [_s(3)] * 8 + [_s(2)] * 8 + [_s(1)] * 4


@pytest.mark.parametrize("H,W", [(6, 9), (1, 5), (4, 1), (1, 1), (2, 2)])
def test_full_image_band_is_the_border(H, W):
    """A full-image mask: zero padding makes the border pixels boundary (edges S = 6, corners
    S = 4), the interior (S = 9) is not."""
    scores = ref.boundary_scores(torch.ones(1, H, W, dtype=torch.bool))[0]
    border = torch.ones(H, W, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    assert torch.equal(scores > 0, border)
    if H >= 2 and W >= 2:
        assert scores[0, 0] == scores[-1, -1] == _s(4)
    if H >= 3 and W >= 3:
        assert scores[0, 1] == scores[1, 0] == scores[-1, 1] == _s(6)
    if H == 1 and W >= 3:  # one row: S = 2 at the ends, 3 inside; all of it is border
        assert scores[0, 0] == _s(2) and scores[0, 1] == _s(3)


def test_one_pixel_mask():
    m = torch.zeros(1, 10, 12, dtype=torch.bool)
    m[0, 3, 5] = True
    scores = ref.boundary_scores(m)[0]
    block = torch.zeros(10, 12, dtype=torch.bool)
    block[2:5, 4:7] = True  # the pixel itself (S = 1) and its 8 neighbours (S = 1)
    assert torch.equal(scores > 0, block)
    assert (scores[block] == _s(1)).all()
    # p = 8: the first of the nine ties in raster order, (y, x) = (2, 4), suppresses the rest
    # (the farthest, dx = dy = 2: IoU 36 / 92); centred box (0, -2, 8, 6) shifted down to 0
    boxes, index, sc = ref.boundary_patches(m, 8, 0.25)
    assert boxes.tolist() == [[0, 0, 8, 8]] and index.tolist() == [0] and sc.tolist() == [_s(1)]
    # p = 2 (IoU 1/3 at one pixel apart, 1/7 diagonally, 0 at two): an X of five patches
    boxes, _, _ = ref.boundary_patches(m, 2, 0.25)
    centres = [(2, 4), (2, 6), (3, 5), (4, 4), (4, 6)]  # (y, x), NMS order
    assert boxes.tolist() == [[x - 1, y - 1, x + 1, y + 1] for y, x in centres]


def test_empty_mask_and_all_values_of_s():
    assert not (ref.boundary_scores(torch.zeros(2, 5, 6, dtype=torch.bool)) > 0).any()
    out = ref.boundary_patches(torch.zeros(2, 5, 6, dtype=torch.bool), 4)
    assert [t.shape for t in out] == [(0, 4), (0,), (0,)]
    # the centre of a 3x3 image with k pixels set has S = k: every value of S
    for k in range(10):
        m = torch.zeros(1, 9, dtype=torch.bool)
        m[0, :k] = True
        m = m.reshape(1, 3, 3)
        got = ref.boundary_scores(m)[0, 1, 1]
        expected = torch.tensor(float(min(k, 9 - k)), dtype=torch.float32) / torch.tensor(
            4.5, dtype=torch.float32)
        assert got.item() == expected.item() == _s(k)
        # BPR's expression min(|S - 9|, |S|) / (9 / 2) in float32: the same bits
        assert bpr_find_float_boundary(m.float())[0, 1, 1].item() == got.item()
    assert [_s(k) for k in range(1, 5)] == [float(np.float32(k) / np.float32(4.5))
                                            for k in range(1, 5)]
    assert _s(1) != 1 / 4.5  # the float32 quotient, not the float64 one


# ======================================================================================
# NMS: order, ties, greedy, strict threshold
# ======================================================================================


def test_nms_ties_in_raster_order():
    """A full 20x20 mask: the four corners (score 4/4.5) come first, in raster order."""
    boxes, index, scores = ref.boundary_patches(torch.ones(1, 20, 20, dtype=torch.bool), 8,
                                                0.25)
    assert boxes[:4].tolist() == [[0, 0, 8, 8], [12, 0, 20, 8], [0, 12, 8, 20],
                                  [12, 12, 20, 20]]
    assert scores[:4].tolist() == [_s(4)] * 4 and (scores[4:] == _s(3)).all()
    assert (index == 0).all() and boxes.size(0) > 4
    # row 0 after the corners: x = 5 (IoU 24/104 with x = 0) and x = 10; x = 15 lies 4 from 19
    assert boxes[4:6].tolist() == [[1, 0, 9, 8], [6, 0, 14, 8]]


def test_nms_is_greedy():
    """B is suppressed by A; C overlaps B too much but not A, so C is kept."""
    xs, ys = torch.tensor([0, 3, 6]), torch.tensor([0, 0, 0])
    # IoU(A, B) = 40/88, IoU(A, C) = 16/112, IoU(B, C) = 40/88
    assert ref.patch_nms(xs, ys, 8, 0.25).tolist() == [0, 2]
    assert ref.patch_nms(xs, ys, 8, 0.5).tolist() == [0, 1, 2]
    assert ref.patch_nms(xs, ys, 8, 0.1).tolist() == [0]
    assert ref.patch_nms(xs[:0], ys[:0], 8, 0.25).tolist() == []


@pytest.mark.parametrize("p,dx,dy,iou", [(10, 6, 0, 0.25), (4, 2, 0, 1 / 3), (8, 4, 4, 1 / 7),
                                         (6, 3, 0, 1 / 3)])
def test_nms_threshold_is_strict(p, dx, dy, iou):
    """IoU exactly at the threshold is kept (segops: IoU > thr suppresses); mmcv <= 1.2
    (IoU >= thr) suppresses it."""
    inter = (p - dx) * (p - dy)
    assert inter / (2 * p * p - inter) == iou
    assert ref.patch_iou(torch.tensor(dx), torch.tensor(dy), p).item() == iou
    xs, ys = torch.tensor([0, dx]), torch.tensor([0, dy])
    assert ref.patch_nms(xs, ys, p, iou).tolist() == [0, 1]
    assert ref.patch_nms(xs, ys, p, math.nextafter(iou, 0)).tolist() == [0]
    if float(np.float32(iou)) == iou:  # representable: the float32 comparison sees equality
        boxes = torch.tensor([[0, 0, p, p], [dx, dy, dx + p, dy + p]], dtype=torch.float32)
        assert mmcv_nms(boxes, torch.tensor([1.0, 0.5]), iou).tolist() == [0]


@pytest.mark.parametrize("p", [32, 64, 128])
@pytest.mark.parametrize("thr", [0.15, 0.25, 0.55])
def test_no_iou_lands_on_bpr_thresholds(p, thr):
    """docs/ops/patches.md's claim: for p = 32/64/128 at 0.15/0.25/0.55 no pair of patches has an IoU
    exactly on the threshold, and mmcv's float32 ``IoU >= float32(thr)`` decides every pair
    as segops' float64 ``IoU > thr`` does (exhaustively over the offsets)."""
    d = torch.arange(p + 1)
    dx, dy = d[:, None].expand(p + 1, p + 1), d[None, :].expand(p + 1, p + 1)
    iou64 = ref.patch_iou(dx, dy, p)
    assert not (iou64 == thr).any()
    inter = ((p - dx) * (p - dy)).to(torch.float32)
    area = torch.tensor(float(p * p), dtype=torch.float32)
    iou32 = inter / (area + area - inter)
    assert torch.equal(iou32 >= torch.tensor(thr, dtype=torch.float32), iou64 > thr)


def test_nms_per_instance():
    """Instances never suppress each other: two identical masks give the same boxes twice."""
    m = _square(12, 12).expand(2, 12, 12).clone()
    boxes, index, scores = ref.boundary_patches(m, 4, 0.25)
    k = boxes.size(0) // 2
    assert boxes.size(0) == 2 * k and k > 1
    assert index.tolist() == [0] * k + [1] * k
    assert torch.equal(boxes[:k], boxes[k:]) and torch.equal(scores[:k], scores[k:])


# ======================================================================================
# The shift rule
# ======================================================================================


def test_shift_rule_by_hand():
    lo = torch.tensor([-30, -1, 0, 3, 4, 5, 9])
    x1, x2 = ref.shift_into_image(lo, 8, 12)  # W - p = 4
    assert x1.tolist() == [0, 0, 0, 3, 4, 4, 4] and (x2 - x1 == 8).all()
    x1, x2 = ref.shift_into_image(lo, 8, 8)  # W == p: the whole axis, shifted
    assert x1.tolist() == [0] * 7 and x2.tolist() == [8] * 7
    x1, x2 = ref.shift_into_image(lo, 8, 5)  # W < p: the whole axis
    assert x1.tolist() == [0] * 7 and x2.tolist() == [5] * 7


@pytest.mark.parametrize("p", [4, 8])
def test_last_row_and_column_are_reachable(p):
    """A pixel in the bottom-right corner: its patch ends at (W, H). BPR's _force_move_back
    ends it at (W - 1, H - 1), so its last row and column are never refined."""
    H, W = 10, 12
    m = torch.zeros(1, H, W, dtype=torch.bool)
    m[0, H - 1, W - 1] = True
    boxes, _, _ = ref.boundary_patches(m, p, 0.25)
    assert boxes.tolist()[0] == [W - p, H - p, W, H]
    # the first candidate is (y, x) = (8, 10): BPR's unshifted box, moved one pixel too far
    unshifted = torch.tensor([[10.0 - p // 2, 8.0 - p // 2, 10.0 + p // 2, 8.0 + p // 2]])
    assert bpr_force_move_back(unshifted, H, W, p).tolist() == [[W - 1 - p, H - 1 - p,
                                                                 W - 1, H - 1]]
    # the whole mask is refined by segops' patches: every pixel is covered
    cover = torch.zeros(H, W, dtype=torch.bool)
    for x1, y1, x2, y2 in boxes.tolist():
        cover[y1:y2, x1:x2] = True
    assert cover[m[0]].all()


@pytest.mark.parametrize("H,W,p", [(5, 20, 8), (20, 5, 8), (3, 3, 64), (1, 1, 2), (8, 8, 8),
                                   (9, 1, 4)])
def test_image_smaller_than_the_patch(H, W, p):
    m = torch.zeros(1, H, W, dtype=torch.bool)
    m[0, H // 2, W // 2] = True
    boxes, index, scores = ref.boundary_patches(m, p, 0.25)
    assert boxes.size(0) >= 1
    x1, y1, x2, y2 = boxes.unbind(1)
    if W <= p:
        assert (x1 == 0).all() and (x2 == W).all()
    else:
        assert (x2 - x1 == p).all() and (x1 >= 0).all() and (x2 <= W).all()
    if H <= p:
        assert (y1 == 0).all() and (y2 == H).all()
    else:
        assert (y2 - y1 == p).all() and (y1 >= 0).all() and (y2 <= H).all()


# ======================================================================================
# The padded form, validation, empty inputs
# ======================================================================================


def test_padded_form():
    m = torch.zeros(2, 16, 16, dtype=torch.bool)
    m[0, 3:9, 4:12] = True
    m[1, 10:, 10:] = True
    boxes, index, scores = ref.boundary_patches(m, 4, 0.25)
    P = boxes.size(0)
    assert P > 4 and set(index.tolist()) == {0, 1}
    for cap in (0, 3, P, P + 5):
        b, i, s, count = ref.boundary_patches(m, 4, 0.25, cap)
        n = min(P, cap)
        assert count.dtype == torch.int64 and count.dim() == 0 and int(count) == n
        assert b.shape == (cap, 4) and i.shape == (cap,) and s.shape == (cap,)
        assert torch.equal(b[:n], boxes[:n]) and torch.equal(i[:n], index[:n])
        assert torch.equal(s[:n], scores[:n])
        assert (b[n:] == 0).all() and (i[n:] == -1).all() and (s[n:] == 0).all()


def test_integer_masks():
    m = _square(9, 11)
    expected = ref.boundary_patches(m, 4, 0.25)
    for dtype in (torch.uint8, torch.int32, torch.int64):
        got = ref.boundary_patches(m.to(dtype) * 7, 4, 0.25)  # nonzero = foreground
        assert all(torch.equal(g, e) for g, e in zip(got, expected))


@pytest.mark.parametrize("N,H,W", [(0, 8, 8), (2, 0, 8), (2, 8, 0), (0, 0, 0)])
def test_empty_inputs(N, H, W):
    boxes, index, scores = ref.boundary_patches(torch.zeros(N, H, W, dtype=torch.bool), 8)
    assert boxes.shape == (0, 4) and boxes.dtype == torch.int64
    assert index.shape == (0,) and index.dtype == torch.int64
    assert scores.shape == (0,) and scores.dtype == torch.float32
    images = torch.zeros(1, 3, H, W)
    b = torch.zeros(0, 4, dtype=torch.int64)
    i = torch.zeros(0, dtype=torch.int64)
    bi = torch.zeros(N, dtype=torch.int64)
    masks = torch.zeros(N, H, W, dtype=torch.bool)
    ip, mp = ref.crop_patches(images, masks, b, i, bi, (5, 6))
    assert ip.shape == (0, 3, 5, 6) and mp.shape == (0, 5, 6) and mp.dtype == torch.bool
    out = ref.reassemble_patches(masks, torch.zeros(0, 4, 4), b, i)
    assert out.shape == (N, H, W) and out.dtype == torch.bool


_M = torch.zeros(1, 6, 6, dtype=torch.bool)


@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(masks=[[[True]]]), TypeError, "masks"),
    (dict(masks=_M.float()), TypeError, "masks"),
    (dict(masks=_M.to(torch.complex64)), TypeError, "masks"),
    (dict(masks=_M[0]), ValueError, "masks"),
    (dict(masks=_M[None]), ValueError, "masks"),
    (dict(patch_size=7), ValueError, "patch_size"),
    (dict(patch_size=0), ValueError, "patch_size"),
    (dict(patch_size=-2), ValueError, "patch_size"),
    (dict(patch_size=8.0), ValueError, "patch_size"),
    (dict(patch_size=True), ValueError, "patch_size"),
    (dict(patch_size=2**30 + 2), ValueError, "patch_size"),
    (dict(iou_threshold=math.nan), ValueError, "iou_threshold"),
    (dict(max_out=-1), ValueError, "max_out"),
])
def test_boundary_bad_input(kwargs, exc, name):
    args = dict(masks=_M, patch_size=8, iou_threshold=0.25, max_out=None)
    args.update(kwargs)
    with pytest.raises(exc, match=f"`{name}`"):
        ref.boundary_patches(**args)


# ======================================================================================
# crop_patches
# ======================================================================================


def _crop_case():
    g = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, 10, 12, generator=g)
    masks = torch.rand(3, 10, 12, generator=g) > 0.5
    return images, masks, torch.tensor([1, 0, 1])


def test_crop_box_of_the_output_size_is_the_crop():
    """aligned=True, sampling_ratio=1, one bin per pixel: the samples are the pixel centres,
    so the patch is the crop itself, exactly; the mask patch is the mask's crop."""
    images, masks, bi = _crop_case()
    boxes = torch.tensor([[2, 1, 6, 8], [0, 0, 12, 10], [7, 3, 12, 5]])
    index = torch.tensor([0, 1, 2])
    for k, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        ip, mp = ref.crop_patches(images, masks, boxes[k:k + 1], index[k:k + 1], bi,
                                  (y2 - y1, x2 - x1))
        assert torch.equal(ip[0], images[bi[k], :, y1:y2, x1:x2])
        assert torch.equal(mp[0], masks[k, y1:y2, x1:x2])


def test_crop_mask_nearest_and_outside():
    images, masks, bi = _crop_case()
    # twice the box: each mask pixel becomes 2x2 (torch's nearest: o * 0.5, floored)
    ip, mp = ref.crop_patches(images, masks, torch.tensor([[3, 2, 8, 6]]), torch.tensor([2]),
                              bi, (8, 10))
    crop = masks[2, 2:6, 3:8]
    assert torch.equal(mp[0], crop.repeat_interleave(2, 0).repeat_interleave(2, 1))
    # a box beyond the top-left and right: False outside the image
    box = torch.tensor([[-3, -2, 14, 9]])
    ip, mp = ref.crop_patches(images, masks, box, torch.tensor([0]), bi, (11, 17))
    expected = torch.zeros(11, 17, dtype=torch.bool)
    expected[2:, 3:15] = masks[0, :9, :]
    assert torch.equal(mp[0], expected)
    rois = torch.tensor([[1.0, -3, -2, 14, 9]])
    from segops.reference.roi import roi_align
    assert torch.equal(ip, roi_align(images, rois, (11, 17), 1.0, 1, True))


@pytest.mark.parametrize("n_in", list(range(1, 41)))
def test_contract_nearest_index_is_torch_nearest(n_in):
    """The contract's n(o) = o if in == out else min(floor(o * float32(in / out)), in - 1)
    is F.interpolate(mode="nearest")'s index, for every output size up to 3 * in + 5."""
    src = torch.arange(n_in, dtype=torch.float32)[None, None, None]
    for n_out in range(1, 3 * n_in + 6):
        got = F.interpolate(src, size=(1, n_out), mode="nearest")[0, 0, 0].to(torch.int64)
        o = torch.arange(n_out)
        if n_in == n_out:
            expected = o
        else:
            scale = torch.tensor(n_in, dtype=torch.float32) / torch.tensor(n_out,
                                                                           dtype=torch.float32)
            expected = torch.floor(o.to(torch.float32) * scale).to(torch.int64).clamp_max(
                n_in - 1)
        assert torch.equal(got, expected), (n_in, n_out)


def test_crop_empty_boxes_and_routing():
    images, masks, bi = _crop_case()
    masks[:] = True
    boxes = torch.tensor([[4, 4, 4, 8], [5, 3, 2, 8], [1, 6, 9, 6], [1, 1, 9, 9]])
    ip, mp = ref.crop_patches(images, masks, boxes, torch.tensor([0, 1, 2, 1]), bi, 4)
    assert not mp[:3].any()  # empty boxes: all False (the masks are all True)
    assert mp[3].all() and (ip[3] != 0).any()
    # the image patches are roi_align's all the same (it samples the corner of an empty box)
    from segops.reference.roi import roi_align
    rois = torch.cat([bi[torch.tensor([0, 1, 2, 1])][:, None], boxes], 1).float()
    assert torch.equal(ip, roi_align(images, rois, 4, 1.0, 1, True)) and (ip[:3] != 0).any()
    # instance 1 lives in image 0: the patch is image 0's
    ip0 = ref.crop_patches(images[:1], masks, boxes[3:], torch.tensor([1]),
                           torch.zeros(3, dtype=torch.int64), 4)[0]
    assert torch.equal(ip[3], ip0[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16,
                                   torch.bfloat16])
def test_crop_dtypes(dtype):
    images, masks, bi = _crop_case()
    images = images.to(dtype)
    ip, mp = ref.crop_patches(images, masks, torch.tensor([[1, 1, 7, 9]]), torch.tensor([0]),
                              bi, (4, 3))
    assert ip.dtype == dtype and ip.shape == (1, 3, 4, 3)
    from segops.reference.roi import roi_align
    assert torch.equal(ip, roi_align(images, torch.tensor([[1.0, 1, 1, 7, 9]]), (4, 3), 1.0, 1,
                                     True))


@pytest.mark.parametrize("args,exc,name", [
    (dict(instance_index=torch.tensor([3])), ValueError, "instance_index"),
    (dict(instance_index=torch.tensor([-1])), ValueError, "instance_index"),
    (dict(batch_index=torch.tensor([0, 2, 0])), ValueError, "batch_index"),
    (dict(images=torch.zeros(2, 3, 10, 12, dtype=torch.int32)), TypeError, "images"),
    (dict(masks=torch.zeros(3, 10, 11, dtype=torch.bool)), ValueError, "masks"),
    (dict(boxes=torch.zeros(1, 4)), TypeError, "boxes"),
    (dict(boxes=torch.zeros(1, 5, dtype=torch.int64)), ValueError, "boxes"),
    (dict(output_size=(2, 3, 4)), TypeError, "output_size"),
])
def test_crop_bad_input(args, exc, name):
    images, masks, bi = _crop_case()
    kw = dict(images=images, masks=masks, boxes=torch.tensor([[1, 1, 5, 5]]),
              instance_index=torch.tensor([0]), batch_index=bi, output_size=4)
    kw.update(args)
    with pytest.raises(exc, match=f"`{name}`"):
        ref.crop_patches(**kw)


# ======================================================================================
# reassemble_patches
# ======================================================================================


def _row(*values, dtype=torch.float32):
    return torch.tensor([[list(values)]], dtype=dtype)  # [1, 1, n]


def test_float32_rule_point_four_plus_point_six():
    """0.4f + 0.6f rounds to exactly 1 in float32: the mean is 0.5, not > 0.5: background
    (accumulated in float64 the mean of the same float32 values would be foreground)."""
    f32 = torch.float32
    assert (torch.tensor(0.4, dtype=f32) + torch.tensor(0.6, dtype=f32)).item() == 1.0
    assert (float(np.float32(0.4)) + float(np.float32(0.6))) / 2 > 0.5
    coarse = torch.tensor([[[False, True, False, True]]])
    probs = torch.cat([_row(0.4, 0.4), _row(0.6, 0.6)])  # [2, 1, 2]
    boxes = torch.tensor([[0, 0, 2, 1], [1, 0, 3, 1]])
    out = ref.reassemble_patches(coarse, probs, boxes, torch.tensor([0, 0]))
    # 0.4 -> F, (0.4 + 0.6) / 2 = 0.5 -> F (the coarse True is overwritten), 0.6 -> T,
    # the uncovered last pixel keeps the coarse True
    assert out.tolist() == [[[False, False, True, True]]]
    # BPR's merge (float32 accumulate-and-divide) agrees
    bpr = bpr_merge(coarse, [boxes.float()], probs)
    assert torch.equal(bpr[0], out[0])
    # float64 probabilities accumulate in float64: 0.4 + 0.6 == 1 there too ...
    f64 = torch.float64
    probs64 = torch.cat([_row(0.4, 0.4, dtype=f64), _row(0.6, 0.6, dtype=f64)])
    out64 = ref.reassemble_patches(coarse, probs64, boxes, torch.tensor([0, 0]))
    assert out64.tolist() == [[[False, False, True, True]]]
    # ... but the float32 values 0.4f and 0.6f summed in float64 exceed 1: foreground
    out64 = ref.reassemble_patches(coarse, probs.double(), boxes, torch.tensor([0, 0]))
    assert out64.tolist() == [[[False, True, True, True]]]
    # bfloat16 0.4 and 0.6 are 0.400390625 and 0.6015625: mean > 0.5
    outbf = ref.reassemble_patches(coarse, probs.bfloat16(), boxes, torch.tensor([0, 0]))
    assert outbf.tolist() == [[[False, True, True, True]]]


def test_threshold_is_rounded_to_the_accumulation_dtype():
    """float32(0.3) > 0.3 in float64, but the comparison is in float32: 0.3 > 0.3 is False."""
    assert float(np.float32(0.3)) > 0.3
    coarse = torch.zeros(1, 1, 3, dtype=torch.bool)
    boxes, index = torch.tensor([[0, 0, 3, 1]]), torch.tensor([0])
    for dtype in (torch.float32, torch.float64):
        probs = torch.full((1, 1, 3), 0.3, dtype=dtype)
        assert not ref.reassemble_patches(coarse, probs, boxes, index, 0.3).any()
        assert ref.reassemble_patches(coarse, probs, boxes, index, 0.2999).all()


def test_coarse_kept_and_instances_never_interact():
    coarse = torch.zeros(2, 6, 6, dtype=torch.bool)
    coarse[0, :, :3] = True
    coarse[1, 3:, :] = True
    boxes = torch.tensor([[1, 1, 4, 4], [1, 1, 4, 4], [2, 2, 6, 6]])
    probs = torch.zeros(3, 4, 4)
    probs[0] = 0.9  # instance 0 (resampled from 4x4 to 3x3: constant stays 0.9)
    probs[1] = 0.1  # instance 1, same box
    probs[2] = 0.7  # instance 0 again
    index = torch.tensor([0, 1, 0])
    out = ref.reassemble_patches(coarse, probs, boxes, index)
    e0 = coarse[0].clone()
    e0[1:4, 1:4] = True  # 0.9, or (0.9 + 0.7) / 2
    e0[2:6, 2:6] = True  # 0.7
    e1 = coarse[1].clone()
    e1[1:4, 1:4] = False  # 0.1 only: instance 0's patches do not count for instance 1
    assert torch.equal(out[0], e0) and torch.equal(out[1], e1)
    assert not torch.equal(out, coarse)
    # the outputs of the instances do not depend on the other instances' patches
    alone = ref.reassemble_patches(coarse[1:], probs[1:2], boxes[1:2], torch.tensor([0]))
    assert torch.equal(alone[0], out[1])


def test_outside_pixels_ignored_and_empty_boxes():
    coarse = torch.zeros(1, 4, 5, dtype=torch.bool)
    ramp = torch.arange(12, dtype=torch.float32).reshape(1, 3, 4) / 12  # 0 .. 11/12
    boxes = torch.tensor([[3, 2, 7, 5]])  # 2 columns and 1 row beyond the image
    means, covered = ref.patch_means(coarse, ramp, boxes, torch.tensor([0]))
    expected = torch.zeros(4, 5)
    expected[2:4, 3:5] = ramp[0, 0:2, 0:2]
    cover = torch.zeros(4, 5, dtype=torch.bool)
    cover[2:4, 3:5] = True
    assert torch.equal(means[0], expected) and torch.equal(covered[0], cover)
    out = ref.reassemble_patches(coarse, ramp, boxes, torch.tensor([0]), 0.2)
    assert torch.equal(out[0], cover & (expected > 0.2)) and out.any()
    # empty and inverted boxes, and a box wholly outside, add nothing and count nothing
    coarse[0, 0, 0] = True
    for box in ([0, 0, 0, 3], [0, 0, 3, 0], [3, 0, 1, 3], [5, 0, 9, 3], [-4, 0, 0, 3]):
        out = ref.reassemble_patches(coarse, torch.ones(1, 3, 4), torch.tensor([box]),
                                     torch.tensor([0]))
        assert torch.equal(out, coarse), box


def test_resampling_is_bilinear_and_matches_the_contract_arithmetic():
    from helpers.masks import contract_resize

    g = torch.Generator().manual_seed(5)
    for h, w, bh, bw in [(8, 8, 4, 4), (4, 6, 9, 13), (1, 1, 3, 2), (5, 3, 5, 7), (7, 7, 7, 7)]:
        prob = torch.rand(h, w, generator=g)
        got = ref.resize_probs(prob, bh, bw)
        assert got.shape == (bh, bw)
        expected = contract_resize(prob[None], bh, bw)[0]
        if (h, w) == (bh, bw):
            assert torch.equal(got, prob) and torch.equal(expected, prob)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_float64_probs_accumulate_in_float64():
    coarse = torch.zeros(1, 1, 1, dtype=torch.bool)
    v = 0.5 + 2.0 ** -30  # rounds to 0.5 in float32
    probs = torch.full((1, 1, 1), v, dtype=torch.float64)
    boxes, index = torch.tensor([[0, 0, 1, 1]]), torch.tensor([0])
    assert ref.reassemble_patches(coarse, probs, boxes, index).all()
    assert not ref.reassemble_patches(coarse, probs.float(), boxes, index).any()


@pytest.mark.parametrize("args,exc,name", [
    (dict(patch_probs=torch.zeros(1, 4, 4, dtype=torch.int64)), TypeError, "patch_probs"),
    (dict(patch_probs=torch.zeros(2, 4, 4)), ValueError, "patch_probs"),
    (dict(threshold=math.nan), ValueError, "threshold"),
    (dict(instance_index=torch.tensor([2])), ValueError, "instance_index"),
    (dict(masks=torch.zeros(2, 6, 6)), TypeError, "masks"),
    (dict(boxes=torch.zeros(1, 4, dtype=torch.int32)), TypeError, "boxes"),
])
def test_reassemble_bad_input(args, exc, name):
    kw = dict(masks=torch.zeros(2, 6, 6, dtype=torch.bool), patch_probs=torch.zeros(1, 4, 4),
              boxes=torch.tensor([[1, 1, 5, 5]]), instance_index=torch.tensor([0]),
              threshold=0.5)
    kw.update(args)
    with pytest.raises(exc, match=f"`{name}`"):
        ref.reassemble_patches(**kw)


# ======================================================================================
# Against BPR's released code, transcribed literally
# ======================================================================================


@given(mp=mask_problems(min_hw=16, max_hw=72, patch_sizes=(32, 64), small=False,
                        max_instances=3))
def test_reference_matches_bpr_get_dets(mp):
    """Per instance, the reference keeps the same boxes, with the same scores, in the same
    order as BPR's get_dets (find_float_boundary + mmcv's nms with a stable sort); the kept
    boxes are shifted as BPR's _force_move_back except that BPR moves boxes reaching the
    right/bottom edge one pixel too far."""
    masks = mp.masks()
    boxes, index, scores = mp.reference()
    fb = bpr_find_float_boundary(masks.float())
    p = mp.patch_size
    total = 0
    for n in range(mp.N):
        dets = bpr_get_dets(fb[n], p, mp.iou_threshold)
        mine = index == n
        assert torch.equal(scores[mine], dets[:, 4]), n
        un = dets[:, :4].to(torch.int64)  # unshifted, integers
        x1, x2 = ref.shift_into_image(un[:, 0], p, mp.W)
        y1, y2 = ref.shift_into_image(un[:, 1], p, mp.H)
        assert torch.equal(boxes[mine], torch.stack([x1, y1, x2, y2], 1)), n
        bpr = bpr_force_move_back(dets[:, :4], mp.H, mp.W, p).to(torch.int64)
        if mp.W > p and mp.H > p:
            late_x, late_y = un[:, 2] >= mp.W, un[:, 3] >= mp.H
            fix = torch.stack([late_x, late_y, late_x, late_y], 1).to(torch.int64)
            assert torch.equal(boxes[mine], bpr + fix), n
        total += dets.size(0)
    assert total == boxes.size(0) > 0


@given(mp=mask_problems(min_hw=32, max_hw=64, patch_sizes=(8, 16, 32), small=False),
       seed=st.integers(0, 2**31 - 1))
def test_reassembly_matches_bpr_merge(mp, seed):
    """With patches of the patch size (every box is p x p when the image is larger than p),
    the reference's reassembly is BPR's merge, bit for bit."""
    masks = mp.masks()
    boxes, index, _ = mp.reference()
    g = torch.Generator().manual_seed(seed)
    p = mp.patch_size
    probs = torch.rand(boxes.size(0), p, p, generator=g)
    probs[::2] = torch.floor(probs[::2] * 5) / 4  # multiples of 1/4: exact means at 0.5
    assert mp.H >= p and mp.W >= p and boxes.size(0) > 0
    out = ref.reassemble_patches(masks, probs, boxes, index)
    # BPR's merge wants the patches of each instance together, in instance order
    detss = [boxes[index == n].float() for n in range(mp.N)]
    bpr = torch.stack(bpr_merge(masks, detss, probs))
    assert torch.equal(out, bpr)
    assert not torch.equal(out, masks)


def test_bpr_transcription_sanity():
    """The transcription on a hand case: a 3x3 square, p = 64 (one patch)."""
    dets = bpr_get_dets(bpr_find_float_boundary(_square().float())[0], 64, 0.25)
    assert dets.tolist() == [[2 - 32, 2 - 32, 2 + 32, 2 + 32, _s(4)]]
    boxes, index, scores = ref.boundary_patches(_square(), 64, 0.25)
    assert boxes.tolist() == [[0, 0, 7, 7]] and scores.tolist() == [_s(4)]
    masks = render_masks(20, 20, [Instance("pixel", at=(19, 19)), Instance("empty")])
    assert masks.sum() == 1
