"""Masks (docs/ops/masks.md): the pure-PyTorch references on hand-computed cases and against literal
transliterations of YOLACT's crop, detectron2's `_do_paste_mask`, torchvision's
`paste_masks_in_image` and the contract's resize formula.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from helpers.masks import (
    ALL_DTYPES, abs_box, assemble_problems, contract_resize, paste_problems, ref,
)


def _ones_protos(H, W, dtype=torch.float32):
    """Protos whose sigmoid is 0.5 everywhere (k=1, coefficient 0)."""
    return torch.zeros(H, W, 1, dtype=dtype), torch.zeros(1, 1, dtype=dtype)


def _kept(H, W, box, padding=1, box_dtype=torch.float32):
    """The crop of one relative box as a [H, W] bool mask (through assemble_masks)."""
    protos, coeffs = _ones_protos(H, W)
    out = ref.assemble_masks(protos, coeffs, torch.tensor([box], dtype=box_dtype), padding)
    assert set(out.unique().tolist()) <= {0.0, 0.5}
    return out[0] == 0.5


def _block(H, W, rows, cols):
    m = torch.zeros(H, W, dtype=torch.bool)
    m[rows[0]:rows[1], cols[0]:cols[1]] = True
    return m


# ======================================================================================
# assemble_masks: the crop rule
# ======================================================================================


def test_crop_s13_float32_rounding():
    """docs/ops/masks.md: S=13, b1=float32(11/13): b1*13 rounds to 11 in float32, so lo = 10 and
    column 10 is kept; float64 boxes holding the same value give lo = 10.0000001."""
    b1 = float(torch.tensor(11 / 13, dtype=torch.float32))
    box = (b1, 0.0, 1.0, 1.0)
    kept32 = _kept(13, 13, box, box_dtype=torch.float32)
    kept64 = _kept(13, 13, box, box_dtype=torch.float64)
    assert torch.equal(kept32, _block(13, 13, (0, 13), (10, 13)))
    assert torch.equal(kept64, _block(13, 13, (0, 13), (11, 13)))
    # half boxes are promoted to float32 (not computed in half precision)
    for dt in (torch.float16, torch.bfloat16):
        b = torch.tensor([box], dtype=dt)
        assert torch.equal(_kept(13, 13, b[0].tolist(), box_dtype=dt),
                           _kept(13, 13, b[0].tolist(), box_dtype=torch.float32))


@pytest.mark.parametrize("H,W,box,padding,rows,cols", [
    # x: 0.25*8 = 2 -> lo 1, 0.5*8 = 4 -> hi 5; y: 0.25*4 = 1 -> lo 0, 0.75*4 = 3 -> hi 4
    (4, 8, (0.25, 0.25, 0.5, 0.75), 1, (0, 4), (1, 5)),
    (4, 8, (0.25, 0.25, 0.5, 0.75), 0, (1, 3), (2, 4)),
    (4, 8, (0.25, 0.25, 0.5, 0.75), 2, (0, 4), (0, 6)),
    # x: lo = 3.3 - 1 = 2.3 -> first kept 3; hi = 6.1 + 1 = 7.1 -> last kept 7
    # y: lo = 0.75 - 1 -> 0; hi = 4.25 + 1 -> clamped to 5
    (5, 10, (0.33, 0.15, 0.61, 0.85), 1, (0, 5), (3, 8)),
    (5, 10, (0.33, 0.15, 0.61, 0.85), 0, (1, 5), (4, 7)),
    # the integer index, not the centre: hi = 0.5*4 = 2 exactly excludes index 2
    (4, 4, (0.0, 0.0, 0.5, 0.5), 0, (0, 2), (0, 2)),
    # a zero-width box keeps the padding around it; without padding nothing
    (6, 6, (0.5, 0.5, 0.5, 0.5), 1, (2, 4), (2, 4)),
    (6, 6, (0.5, 0.5, 0.5, 0.5), 0, (0, 0), (0, 0)),
    # partly outside: clamped; wholly outside (beyond the padding): empty
    (6, 6, (-0.5, 0.5, 0.25, 1.5), 1, (2, 6), (0, 3)),
    (6, 6, (1.5, 0.0, 2.0, 1.0), 1, (0, 0), (0, 0)),
    (6, 6, (1.0, 0.0, 2.0, 1.0), 1, (0, 6), (5, 6)),  # lo = 6 - 1 = 5
])
def test_crop_hand_worked(H, W, box, padding, rows, cols):
    assert torch.equal(_kept(H, W, box, padding), _block(H, W, rows, cols))


def test_crop_reversed_nan_inf():
    box = (0.33, 0.15, 0.61, 0.85)
    expected = _kept(5, 10, box)
    assert torch.equal(_kept(5, 10, (box[2], box[3], box[0], box[1])), expected)
    assert torch.equal(_kept(5, 10, (box[2], box[1], box[0], box[3])), expected)
    for i in range(4):
        nan_box = list(box)
        nan_box[i] = math.nan
        assert not _kept(5, 10, nan_box).any()
    # docs/ops/conventions.md: an infinite coordinate makes the box empty too (YOLACT's arithmetic would
    # crop (-inf, +inf) to the full width)
    assert not _kept(5, 10, (-math.inf, 0.15, math.inf, 0.85)).any()
    assert not _kept(5, 10, (math.inf, 0.15, math.inf, 0.85)).any()


def _yolact_literal(protos, coeffs, boxes, padding=1):
    """YOLACT's postprocess, literally: matmul, sigmoid, crop (multiply by the float crop
    mask), permute."""
    masks = torch.sigmoid(protos @ coeffs.t())
    h, w, n = masks.size()
    x1, x2 = ref.sanitize_coordinates(boxes[:, 0], boxes[:, 2], w, padding)
    y1, y2 = ref.sanitize_coordinates(boxes[:, 1], boxes[:, 3], h, padding)
    rows = torch.arange(w, device=masks.device, dtype=x1.dtype).view(1, -1, 1).expand(h, w, n)
    cols = torch.arange(h, device=masks.device, dtype=x1.dtype).view(-1, 1, 1).expand(h, w, n)
    crop_mask = ((rows >= x1.view(1, 1, -1)) * (rows < x2.view(1, 1, -1))
                 * (cols >= y1.view(1, 1, -1)) * (cols < y2.view(1, 1, -1)))
    return (masks * crop_mask.float()).permute(2, 0, 1).contiguous()


@given(p=assemble_problems(dtypes=(torch.float32,), fused=False))
def test_assemble_equals_yolact_literal(p):
    protos, coeffs, boxes = p.protos(), p.coeffs(), p.boxes_t(dtype=torch.float32)
    out = ref.assemble_masks(protos, coeffs, boxes, p.padding)
    assert out.abs().max() > 0
    expected = _yolact_literal(protos, coeffs, boxes, p.padding)
    # The one documented difference: a box with an infinite coordinate is empty (docs/ops/conventions.md).
    expected[~torch.isfinite(boxes).all(1)] = 0
    assert torch.equal(out, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_assemble_half_is_float32_rounded_once(dtype):
    g = torch.Generator().manual_seed(1)
    protos = torch.randn(6, 7, 4, generator=g).to(dtype)
    coeffs = torch.randn(3, 4, generator=g).to(dtype)
    boxes = torch.tensor([[0.1, 0.2, 0.8, 0.9], [0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.2, 0.1]])
    out = ref.assemble_masks(protos, coeffs, boxes)
    assert out.dtype == dtype
    assert torch.equal(out, ref.assemble_masks(protos.float(), coeffs.float(), boxes).to(dtype))
    fused = ref.assemble_masks(protos, coeffs, boxes, image_size=(9, 5), threshold=0.5)
    up = F.interpolate(out[None], (9, 5), mode="bilinear", align_corners=False)[0]
    assert torch.equal(fused, up > 0.5) and fused.any()


def test_assemble_gradient_is_zero_outside_the_crop():
    g = torch.Generator().manual_seed(2)
    protos = torch.randn(6, 7, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    coeffs = torch.randn(2, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    boxes = torch.tensor([[0.3, 0.2, 0.6, 0.5], [math.nan, 0.0, 1.0, 1.0]])
    out = ref.assemble_masks(protos, coeffs, boxes, 0)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    out.backward(grad)
    s = torch.sigmoid(protos.detach() @ coeffs.detach().t()).permute(2, 0, 1)
    gl = grad * s * (1 - s) * (out.detach() != 0)  # d logits
    torch.testing.assert_close(protos.grad, torch.einsum("nhw,nk->hwk", gl, coeffs.detach()))
    torch.testing.assert_close(coeffs.grad, torch.einsum("nhw,hwk->nk", gl, protos.detach()))
    assert (coeffs.grad[1] == 0).all() and (coeffs.grad[0] != 0).all()


def test_fused_strict_threshold_in_dtype():
    """``> threshold`` strictly, compared in protos' dtype: sigmoid(0) = 0.5 is not > 0.5;
    a bfloat16 value equal to bfloat16(0.3) is not > 0.3 (0.3 rounds up to it)."""
    protos, coeffs = _ones_protos(4, 5)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert not ref.assemble_masks(protos, coeffs, boxes, image_size=(4, 5)).any()
    assert ref.assemble_masks(protos, coeffs, boxes, image_size=(4, 5), threshold=0.49).all()
    v = torch.tensor(0.3, dtype=torch.bfloat16)  # 0.30078125
    logit = math.log(float(v) / (1 - float(v)))
    protos = torch.full((4, 5, 1), logit).to(torch.bfloat16)
    coeffs = torch.ones(1, 1, dtype=torch.bfloat16)
    cropped = ref.assemble_masks(protos, coeffs, boxes)
    assert (cropped == v).all()
    assert not ref.assemble_masks(protos, coeffs, boxes, image_size=(4, 5), threshold=0.3).any()
    assert ref.assemble_masks(protos, coeffs, boxes, image_size=(4, 5), threshold=0.299).all()


# ======================================================================================
# The resize formula of the contract is torch's bilinear
# ======================================================================================


@pytest.mark.parametrize("n_in,n_out", [(1, 1), (1, 5), (3, 7), (7, 3), (13, 13), (5, 16),
                                        (16, 5), (6, 4), (2, 9), (9, 2), (11, 1)])
def test_contract_resize_is_torch_bilinear(n_in, n_out):
    g = torch.Generator().manual_seed(n_in * 31 + n_out)
    v = torch.rand(2, n_in, n_in + 2, generator=g, dtype=torch.float64)
    expected = F.interpolate(v[None], (n_out, n_out + 1), mode="bilinear",
                             align_corners=False)[0]
    torch.testing.assert_close(contract_resize(v, n_out, n_out + 1), expected, rtol=1e-13,
                               atol=1e-13)


# ======================================================================================
# paste_masks, detectron2 mode
# ======================================================================================


def _naive_d2(masks, boxes, H, W):
    """The documented formula (docs/ops/masks.md), one pixel at a time in float64: grid_sample's bilinear rule with
    align_corners=False and zero padding."""
    masks, boxes = masks.double().numpy(), boxes.double().numpy()
    N, Mh, Mw = masks.shape
    out = np.zeros((N, H, W))

    def tap(m, yy, xx):
        return m[yy, xx] if 0 <= yy < Mh and 0 <= xx < Mw else 0.0

    for n in range(N):
        x0, y0, x1, y1 = boxes[n]
        if not np.isfinite(boxes[n]).all() or x1 <= x0 or y1 <= y0:
            continue
        for y in range(H):
            for x in range(W):
                gx = ((x + 0.5) - x0) / (x1 - x0) * 2 - 1
                gy = ((y + 0.5) - y0) / (y1 - y0) * 2 - 1
                ix, iy = ((gx + 1) * Mw - 1) / 2, ((gy + 1) * Mh - 1) / 2
                jx, jy = math.floor(ix), math.floor(iy)
                fx, fy = ix - jx, iy - jy
                m = masks[n]
                out[n, y, x] = ((1 - fy) * ((1 - fx) * tap(m, jy, jx) + fx * tap(m, jy, jx + 1))
                                + fy * ((1 - fx) * tap(m, jy + 1, jx)
                                        + fx * tap(m, jy + 1, jx + 1)))
    return torch.from_numpy(out)


def test_detectron2_equals_per_pixel_formula():
    g = torch.Generator().manual_seed(3)
    masks = torch.rand(6, 3, 4, generator=g, dtype=torch.float64)
    boxes = torch.tensor([[1.3, 0.7, 5.2, 4.9], [-2.0, 1.0, 3.0, 8.0], [0.0, 0.0, 7.0, 6.0],
                          [2.0, 2.0, 2.0, 5.0], [4.0, 1.0, 1.0, 3.0], [math.nan, 1, 3, 4]],
                         dtype=torch.float64)
    out = ref.paste_masks(masks, boxes, (6, 7), threshold=None)
    expected = _naive_d2(masks, boxes, 6, 7)
    assert out[:3].abs().amax((1, 2)).gt(0).all()
    assert (out[3:] == 0).all()  # zero width, reversed, NaN
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    # every pixel follows the formula, beyond the box +-1 px too (a mask cell is 6 px here):
    # x = 8: gx = -1.25, ix = -0.75; x = 7: ix = -0.92; x = 6: ix = -1.08; y = 14: iy = 0.25
    m = torch.ones(1, 2, 2, dtype=torch.float64)
    out = ref.paste_masks(m, torch.tensor([[10.0, 10.0, 22.0, 22.0]], dtype=torch.float64),
                          (30, 30), None)
    assert out[0, 14, 8] == 0.25 and out[0, 14, 7] > 0 and out[0, 14, 6] == 0


def _d2_literal(masks, boxes, img_h, img_w):
    """detectron2's `_do_paste_mask(skip_empty=False)` (its GPU path), literally."""
    x0, y0, x1, y1 = torch.split(boxes, 1, dim=1)
    N = masks.shape[0]
    img_y = torch.arange(0, img_h, dtype=torch.float32) + 0.5
    img_x = torch.arange(0, img_w, dtype=torch.float32) + 0.5
    img_y = (img_y - y0) / (y1 - y0) * 2 - 1
    img_x = (img_x - x0) / (x1 - x0) * 2 - 1
    gx = img_x[:, None, :].expand(N, img_y.size(1), img_x.size(1))
    gy = img_y[:, :, None].expand(N, img_y.size(1), img_x.size(1))
    grid = torch.stack([gx, gy], dim=3)
    return F.grid_sample(masks[:, None], grid.to(masks.dtype), align_corners=False)[:, 0]


@given(data=st.data(), H=st.integers(1, 16), W=st.integers(1, 16), Mh=st.integers(1, 8),
       Mw=st.integers(1, 8))
def test_detectron2_equals_literal(data, H, W, Mh, Mw):
    kinds = ["inside"] + data.draw(st.lists(st.sampled_from(["any", "large", "tiny"]),
                                            max_size=3))
    boxes = torch.tensor([data.draw(abs_box(H, W, k)) for k in kinds], dtype=torch.float32)
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    masks = torch.rand(boxes.size(0), Mh, Mw, generator=torch.Generator().manual_seed(H * W))
    out = ref.paste_masks(masks, boxes, (H, W), threshold=None)
    assert out[0].abs().max() > 0
    assert torch.equal(out, _d2_literal(masks, boxes, H, W))


# ======================================================================================
# paste_masks, torchvision mode
# ======================================================================================


def _tv_literal(masks, boxes, img_shape, padding=1):
    """torchvision.models.detection.roi_heads.paste_masks_in_image, literally (its slicing
    is only valid for boxes inside the image)."""
    M = masks.shape[-1]
    scale = float(M + 2 * padding) / M
    masks = F.pad(masks[:, None], (padding,) * 4)
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    w_half *= scale
    h_half *= scale
    boxes_exp = torch.zeros_like(boxes)
    boxes_exp[:, 0] = x_c - w_half
    boxes_exp[:, 2] = x_c + w_half
    boxes_exp[:, 1] = y_c - h_half
    boxes_exp[:, 3] = y_c + h_half
    boxes = boxes_exp.to(dtype=torch.int64)
    im_h, im_w = img_shape
    res = []
    for mask, box in zip(masks, boxes):
        mask = mask[0]
        w = max(int(box[2] - box[0] + 1), 1)
        h = max(int(box[3] - box[1] + 1), 1)
        mask = F.interpolate(mask.expand((1, 1, -1, -1)), size=(h, w), mode="bilinear",
                             align_corners=False)[0][0]
        im_mask = torch.zeros((im_h, im_w), dtype=mask.dtype)
        x_0, x_1 = max(box[0], 0), min(box[2] + 1, im_w)
        y_0, y_1 = max(box[1], 0), min(box[3] + 1, im_h)
        im_mask[y_0:y_1, x_0:x_1] = mask[(y_0 - box[1]):(y_1 - box[1]),
                                         (x_0 - box[0]):(x_1 - box[0])]
        res.append(im_mask)
    return torch.stack(res)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@given(data=st.data(), H=st.integers(4, 24), W=st.integers(4, 24), Mh=st.integers(1, 9),
       Mw=st.integers(1, 9))
def test_torchvision_equals_literal_inside_the_image(dtype, data, H, W, Mh, Mw):
    n = data.draw(st.integers(1, 4))
    boxes = []
    for _ in range(n):  # torchvision slices validly: bx1 + 1 > 0 and bx0 < W
        x0 = data.draw(st.floats(1, W / 2 - 1))
        y0 = data.draw(st.floats(1, H / 2 - 1))
        x1 = x0 + data.draw(st.floats(0, W / 4 - 0.5))
        y1 = y0 + data.draw(st.floats(0, H / 4 - 0.5))
        boxes.append((x0, y0, x1, y1))
    boxes = torch.tensor(boxes, dtype=dtype)
    masks = torch.rand(n, Mh, Mw, generator=torch.Generator().manual_seed(H + W), dtype=dtype)
    out = ref.paste_masks(masks, boxes, (H, W), threshold=None, mode="torchvision")
    assert out[0].abs().max() > 0
    assert torch.equal(out, _tv_literal(masks, boxes, (H, W)))


def test_torchvision_per_pixel_rule_hand_worked():
    m = torch.ones(3, 2, 2)
    # zero width at x = 3: scale 2, no expansion of 0; bx0 = bx1 = 3, w = 1: one column
    # reversed: bx1 < bx0, nothing; beyond the left edge (torchvision would slice with a
    # negative index): nothing
    boxes = torch.tensor([[3.0, 2.0, 3.0, 4.0], [5.0, 2.0, 2.0, 4.0], [-9.0, 1.0, -5.0, 4.0]])
    out = ref.paste_masks(m, boxes, (6, 8), None, "torchvision")
    # y: centre 3, half 1 * 2 = 2: rows 1..5 of a 5-row resize of the padded 4x4 mask
    col = F.interpolate(F.pad(m[:1, None], (1, 1, 1, 1)), (5, 1), mode="bilinear",
                        align_corners=False)[0, 0, :, 0]
    expected = torch.zeros(6, 8)
    expected[1:6, 3] = col
    assert col.max() > 0
    assert torch.equal(out[0], expected)
    assert (out[1:] == 0).all()
    # partly outside (left/top): the per-pixel rule keeps the part inside the image
    box = torch.tensor([[-2.0, -1.0, 3.0, 2.0]])
    out = ref.paste_masks(m[:1], box, (6, 8), None, "torchvision")
    # x: centre 0.5, half 2.5 * 2 = 5 -> (-4.5, 5.5) -> (-4, 5); y: 0.5 +- 3 -> (-2, 3)
    assert ref.torchvision_boxes(box, 2)[0][0].tolist() == [-4, -2, 5, 3]
    resized = F.interpolate(F.pad(m[:1, None], (1, 1, 1, 1)), (6, 10), mode="bilinear",
                            align_corners=False)[0, 0]
    expected = torch.zeros(6, 8)
    expected[0:4, 0:6] = resized[2:6, 4:10]
    assert torch.equal(out[0], expected)


# ======================================================================================
# paste_masks: thresholds, dtypes, chunking
# ======================================================================================


@pytest.mark.parametrize("mode", ["detectron2", "torchvision"])
def test_paste_threshold_rules(mode):
    """``>= threshold`` in masks' dtype; a box exactly on the mask cells reproduces the
    mask's values (detectron2); NaN and inf boxes give nothing; threshold None: floats."""
    m = torch.tensor([[[0.5, 0.25], [1.0, 0.0]]])
    box = torch.tensor([[2.0, 1.0, 4.0, 3.0]])
    vals = ref.paste_masks(m, box, (4, 6), None, mode)
    assert vals.dtype == torch.float32 and vals.max() > 0.5
    if mode == "detectron2":
        assert torch.equal(vals[0, 1:3, 2:4], m[0])
        bf = torch.tensor([[[0.298828125, 0.0], [0.0, 0.0]]], dtype=torch.bfloat16)
        # 0.2995 rounds to bfloat16 0.298828125: the value equals the threshold in bfloat16
        assert ref.paste_masks(bf, box, (4, 6), 0.2995, mode).sum() == 1
    assert torch.equal(ref.paste_masks(m, box, (4, 6), 0.5, mode), vals >= 0.5)
    assert ref.paste_masks(m, box, (4, 6), 0.0, mode).all()  # 0 >= 0 everywhere
    for bad in (math.nan, math.inf, -math.inf):
        b = box.clone()
        b[0, 2] = bad
        assert (ref.paste_masks(m, b, (4, 6), None, mode) == 0).all()


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_paste_dtype_rules(dtype):
    g = torch.Generator().manual_seed(4)
    m = torch.rand(3, 5, 4, generator=g).to(dtype)
    boxes = torch.tensor([[1.3, 0.7, 6.2, 5.9], [0.0, 2.0, 3.5, 9.0], [2.0, 1.0, 8.0, 4.0]])
    for mode in ("detectron2", "torchvision"):
        out = ref.paste_masks(m, boxes, (7, 9), None, mode)
        assert out.dtype == dtype and out.abs().max() > 0
        geo = torch.float64 if dtype == torch.float64 else torch.float32
        expected = ref.paste_masks(m.to(geo), boxes.to(geo), (7, 9), None, mode).to(dtype)
        assert torch.equal(out, expected)
        assert torch.equal(ref.paste_masks(m[:, None], boxes, (7, 9), None, mode), out)


def test_detectron2_chunks_do_not_change_values():
    g = torch.Generator().manual_seed(5)
    m = torch.rand(7, 4, 4, generator=g)
    boxes = torch.tensor([[1.0 + i, 2.0, 9.0 + i, 8.5] for i in range(7)])
    whole = ref._paste_detectron2(m, boxes, 11, 13)
    assert torch.equal(ref._paste_detectron2(m, boxes, 11, 13, max_grid=11 * 13 * 2), whole)
    assert whole.abs().max() > 0


@given(p=paste_problems(dtypes=(torch.float32,), thresholds=(None,)))
def test_paste_nonfinite_and_degenerate_boxes_are_zero(p):
    out = ref.paste_masks(*p.args(), threshold=None, mode=p.mode)
    b = p.boxes_t(dtype=torch.float64)
    nonfinite = ~torch.isfinite(b).all(1)
    assert (out[nonfinite] == 0).all()
    if p.mode == "detectron2":
        assert (out[(b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])] == 0).all()
        assert out.abs().max() > 0  # the "inside" box's pixel centres sample its mask
    else:
        # torchvision's box grows by a ring of padding cells: only a box wholly in the image
        # surely shows the mask's interior (a box over a 1x1 image may show only padding).
        H, W = p.image_size
        whole = ((b[:, 2] - b[:, 0] >= 2) & (b[:, 3] - b[:, 1] >= 2) & (b[:, 0] >= 0)
                 & (b[:, 1] >= 0) & (b[:, 2] <= W) & (b[:, 3] <= H))
        assert (out[whole].flatten(1).abs().amax(1) > 0).all()
