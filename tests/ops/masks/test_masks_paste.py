"""paste_masks (docs/ops/masks.md): property tests against the reference in both modes (float
values and bool masks with the rounding band), exact hand-worked cases, the API surface
(bad inputs, empty inputs, layouts), opcheck, CUDA == CPU.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given

import segops

from helpers.masks import (
    ALL_DTYPES, HALF_DTYPES, PasteProblem, assert_close, check_bool_band,
    foreground_threshold, paste_problems, ref, reference_paste_values, relayout,
)

MODES = ("detectron2", "torchvision")


def _tv_rect(p: PasteProblem) -> torch.Tensor:
    """[N, H, W] bool: the pixels torchvision mode may write (the per-pixel rule)."""
    H, W = p.image_size
    b = p.boxes_t()
    geo = torch.float64 if torch.float64 in (p.dtype, p.box_dtype) else torch.float32
    ib, valid = ref.torchvision_boxes(b.to(geo), p.Mw)
    finite = torch.isfinite(b).all(1) & valid
    ys, xs = torch.arange(H)[:, None], torch.arange(W)[None, :]
    x0, y0, x1, y1 = (ib[:, i, None, None] for i in range(4))
    return finite[:, None, None] & (ys >= y0) & (ys <= y1) & (xs >= x0) & (xs <= x1)


# ======================================================================================
# Property tests against the reference
# ======================================================================================


@given(p=paste_problems())
def test_paste_matches_reference(device, p):
    values = reference_paste_values(p)
    masks, boxes, size = p.args(device)
    H, W = size
    out_v = segops.paste_masks(masks, boxes, size, None, p.mode)
    assert out_v.shape == (p.N, H, W) and out_v.dtype == p.dtype
    assert out_v.device.type == device
    assert values.abs().max() > 0
    assert_close(out_v, values, p.dtype)
    got = out_v.cpu()
    b = p.boxes_t(dtype=torch.float64)
    assert (got[~torch.isfinite(b).all(1)] == 0).all()
    if p.mode == "detectron2":
        assert (got[(b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])] == 0).all()
    else:
        assert (got[~_tv_rect(p)] == 0).all()  # placed by the per-pixel rule, exactly
    if p.threshold is None:
        return
    thr = foreground_threshold(values, p.threshold, False, p.dtype)
    out = segops.paste_masks(masks, boxes, size, thr, p.mode)
    assert out.device.type == device
    differ = check_bool_band(out, values, thr, False, p.dtype)
    assert differ <= max(2, 0.01 * values.numel()), f"{differ} band pixels differ"
    # the bool form is the float form compared in masks' dtype, exactly
    assert torch.equal(out.cpu(), got >= torch.tensor(thr, dtype=p.dtype))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_paste_band_is_tiny_at_mask_rcnn_scale(mode, dtype):
    """Mask R-CNN's 28x28 masks, 20 boxes on a 200x300 image: few pixels lie within the
    rounding band, fewer still differ."""
    g = torch.Generator().manual_seed(9)
    masks = torch.sigmoid(4 * torch.randn(20, 28, 28, generator=g)).to(dtype)
    xy = torch.rand(20, 2, generator=g) * torch.tensor([250.0, 160.0])
    boxes = torch.cat([xy, xy + 4 + torch.rand(20, 2, generator=g) * 80], 1)
    values = ref.paste_masks(masks, boxes, (200, 300), None, mode)
    out = segops.paste_masks(masks, boxes, (200, 300), 0.5, mode)
    tiny = 5e-3 if dtype in HALF_DTYPES else 1e-5
    differ = check_bool_band(out, values, 0.5, False, dtype, max_band=tiny)
    assert differ <= tiny / 5 * values.numel()
    assert_close(segops.paste_masks(masks, boxes, (200, 300), None, mode), values, dtype)


# ======================================================================================
# Hand-worked cases
# ======================================================================================


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_detectron2_exact_cases(device, dtype):
    m = torch.tensor([[[0.5, 0.25], [1.0, 0.0]]], dtype=dtype, device=device)
    box = torch.tensor([[2.0, 1.0, 4.0, 3.0]], device=device)
    vals = segops.paste_masks(m, box, (4, 6), None)
    # one pixel per mask cell, centred on it: the mask's values, exactly; zero elsewhere
    expected = torch.zeros(1, 4, 6, dtype=dtype)
    expected[0, 1:3, 2:4] = m[0].cpu()
    assert torch.equal(vals.cpu(), expected)
    assert torch.equal(segops.paste_masks(m, box, (4, 6), 0.25).cpu(), expected >= 0.25)
    assert segops.paste_masks(m, box, (4, 6), 0.0).all()  # 0 >= 0: every pixel
    assert not segops.paste_masks(m, box, (4, 6), 1.01).any()
    # beyond the box +-1 px (a mask cell is 6 px): x = 8: ix = -0.75; x = 7: -0.92; x = 6: out
    ones = torch.ones(1, 2, 2, dtype=dtype, device=device)
    big = torch.tensor([[10.0, 10.0, 22.0, 22.0]], device=device)
    v = segops.paste_masks(ones, big, (30, 30), None).cpu()
    assert v[0, 14, 8] == 0.25 and v[0, 14, 7] > 0 and v[0, 14, 6] == 0
    assert torch.equal(segops.paste_masks(ones, big, (30, 30), 0.05).cpu(), v >= 0.05)
    if dtype == torch.bfloat16:  # 0.2995 rounds to the mask's value 0.298828125
        m2 = torch.tensor([[[0.298828125, 0.0], [0.0, 0.0]]], dtype=dtype, device=device)
        assert segops.paste_masks(m2, box, (4, 6), 0.2995).sum() == 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_empty_and_outside_boxes(device, mode, dtype):
    """NaN/inf boxes paste nothing; reversed and (detectron2) zero-size boxes nothing;
    torchvision: a zero-width box pastes one column; boxes beyond any edge paste nothing
    (torchvision's slicing would crash or wrap around)."""
    nan, inf = math.nan, math.inf
    boxes = torch.tensor([
        [1.0, 1.0, 5.0, 6.0], [nan, 1.0, 5.0, 6.0], [1.0, inf, 5.0, 6.0], [1.0, 1.0, -inf, 6.0],
        [-inf, -inf, inf, inf], [5.0, 1.0, 1.0, 6.0], [1.0, 6.0, 5.0, 1.0],
        [-12.0, 1.0, -8.0, 6.0], [20.0, 1.0, 26.0, 6.0], [1.0, -15.0, 5.0, -9.0],
        [1.0, 12.0, 5.0, 19.0], [3.0, 1.0, 3.0, 6.0],
    ], dtype=dtype, device=device)
    masks = torch.rand(len(boxes), 3, 5).to(dtype).to(device) * 0.5 + 0.5
    out = segops.paste_masks(masks, boxes, (8, 9), None, mode).cpu()
    assert (out[0] > 0).any()
    assert (out[1:11] == 0).all()
    if mode == "detectron2":
        assert (out[11] == 0).all()
    else:
        cols = (out[11] != 0).any(0).nonzero().flatten().tolist()
        assert cols == [3]
    expected = ref.paste_masks(masks.cpu(), boxes.cpu(), (8, 9), None, mode)
    assert_close(out, expected, dtype)


def test_torchvision_partly_outside(device):
    # expanded to (-4, -2, 5, 3): the per-pixel rule writes rows 0..3 and columns 0..5 only
    m = torch.rand(1, 2, 2, generator=torch.Generator().manual_seed(1)).to(device) + 0.5
    out = segops.paste_masks(m, torch.tensor([[-2.0, -1.0, 3.0, 2.0]], device=device),
                             (6, 8), None, "torchvision").cpu()
    support = torch.zeros(6, 8, dtype=torch.bool)
    support[0:4, 0:6] = True
    assert not ((out[0] != 0) & ~support).any() and (out[0][support] != 0).any()
    expected = ref.paste_masks(m.cpu(), torch.tensor([[-2.0, -1.0, 3.0, 2.0]]), (6, 8), None,
                               "torchvision")
    assert_close(out, expected, torch.float32)


# ======================================================================================
# API surface: layouts, empty inputs, bad inputs, opcheck
# ======================================================================================


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", ["transposed", "strided"])
def test_layouts_and_4d_masks(device, mode, layout):
    p = PasteProblem(torch.float32, torch.float32, 5, 4,
                     [(1.0, 2.0, 9.5, 7.0), (0.0, 0.0, 11.0, 9.0), (4.0, 3.0, 6.0, 8.0)],
                     (9, 11), 0.5, mode, False, "contiguous", 3, [True, False, False])
    masks, boxes, size = p.args(device)
    out = segops.paste_masks(masks, boxes, size, None, mode)
    assert out.abs().max() > 0
    m2, b2 = relayout(masks, layout), relayout(boxes, layout)
    assert not m2.is_contiguous() and not b2.is_contiguous()
    assert torch.equal(segops.paste_masks(m2, b2, size, None, mode), out)
    assert torch.equal(segops.paste_masks(m2[:, None], b2, size, None, mode), out)
    assert torch.equal(segops.paste_masks(masks[:, None], boxes, size, 0.5, mode), out >= 0.5)
    sq = segops.paste_masks(masks, boxes, 10, None, mode)  # an int image size: square
    assert sq.shape == (3, 10, 10) and torch.equal(sq[:, :9, :10], segops.paste_masks(
        masks, boxes, (9, 10), None, mode))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("N,size,four_d", [(0, (7, 8), False), (0, (7, 8), True),
                                           (2, (0, 8), False), (2, (7, 0), True),
                                           (0, (0, 0), False)])
def test_empty_inputs(device, mode, dtype, N, size, four_d):
    masks = torch.rand(N, 1, 4, 5).to(dtype).to(device)
    masks = masks if four_d else masks[:, 0]
    boxes = torch.tensor([[1.0, 1.0, 5.0, 6.0]] * N, device=device).reshape(N, 4)
    out = segops.paste_masks(masks, boxes, size, None, mode)
    assert out.shape == (N, *size) and out.dtype == dtype and out.device.type == device
    out = segops.paste_masks(masks, boxes, size, 0.5, mode)
    assert out.shape == (N, *size) and out.dtype == torch.bool


def _m(*shape, dtype=torch.float32):
    return torch.rand(*shape).to(dtype)


_BX = torch.tensor([[1.0, 1.0, 5.0, 6.0]])


# ======================================================================================
# CUDA == CPU, bit for bit
# ======================================================================================


@pytest.mark.cuda
@given(p=paste_problems(max_hw=40, max_m=28))
def test_cuda_matches_cpu_exactly(p):
    outs = []
    for device in ("cpu", "cuda"):
        masks, boxes, size = p.args(device)
        outs.append([segops.paste_masks(masks, boxes, size, thr, p.mode).cpu()
                     for thr in (None, 0.5 if p.threshold is None else p.threshold)])
    assert outs[0][0].abs().max() > 0
    assert torch.equal(outs[1][0], outs[0][0])  # float values: bit for bit
    assert torch.equal(outs[1][1], outs[0][1])  # bool masks
