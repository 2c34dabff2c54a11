"""Shapes that take every code path of the CUDA mask kernels (docs/cost_model/masks.md):
more than one staged channel chunk (k > 32; > 16 for float64) and mask group (N > 16) in the
assembly, more than one column pass (width > 1024) in the row kernels, rows that allow the
4-byte bool stores (width % 4 == 0) and rows that do not, and torchvision boxes whose
expansion is NaN. On the CPU each is checked against the reference; under SEGOPS_CUDA_EMU the
shadow also compares the emulated CUDA kernels with the CPU bit for bit.
"""

from __future__ import annotations

import pytest
import torch

import segops

from helpers.masks import ALL_DTYPES, HALF_DTYPES, assert_close, check_bool_band, ref, upsample

WIDTHS = (1030, 1032)  # two column passes; scalar stores (1030 % 4 = 2), vector stores


def _assembly(dtype, n=17, k=40, hw=(9, 11), seed=0):
    g = torch.Generator().manual_seed(seed)
    protos = torch.relu(torch.randn(*hw, k, generator=g)).to(dtype)
    coeffs = (0.5 * torch.randn(n, k, generator=g)).to(dtype)
    xy = torch.rand(n, 2, generator=g) * 0.6
    boxes = torch.cat([xy, xy + 0.1 + torch.rand(n, 2, generator=g) * 0.3], 1)
    boxes[3] = torch.tensor([0.5, 0.5, 0.5, 0.5])  # an empty crop (padding 0)
    return protos, coeffs, boxes


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_assemble_chunks_and_groups(dtype):
    protos, coeffs, boxes = _assembly(dtype)
    out = segops.assemble_masks(protos, coeffs, boxes, padding=0)
    expected = ref.assemble_masks(protos, coeffs, boxes, padding=0)
    assert_close(out, expected, dtype)
    assert (out[3] == 0).all()


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_assemble_fused_wide_rows(dtype, width):
    protos, coeffs, boxes = _assembly(dtype, n=5, k=8)
    size = (12, width)
    values = upsample(ref.assemble_masks(protos, coeffs, boxes, padding=0), size)
    out = segops.assemble_masks(protos, coeffs, boxes, padding=0, image_size=size)
    differ = check_bool_band(out, values, 0.5, True, dtype)
    assert differ <= 0.001 * values.numel()
    assert not out[3].any()  # the empty crop: background, never evaluated


@pytest.mark.parametrize("mode", ["detectron2", "torchvision"])
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_paste_wide_rows(dtype, width, mode):
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(4, 7, 5, generator=g).to(dtype)
    boxes = torch.tensor([[-30.0, 2.0, 1100.0, 15.0],   # wider than the image: both passes
                          [1000.0, 0.0, 1040.0, 9.0],   # across the pass boundary (1024)
                          [3.0, 4.0, 10.5, 30.0],       # below the image's last row
                          [5.0, 5.0, 5.0, 9.0]])        # zero width
    values = ref.paste_masks(masks, boxes, (20, width), None, mode)
    out = segops.paste_masks(masks, boxes, (20, width), None, mode)
    assert_close(out, values, dtype)
    tiny = 5e-3 if dtype in HALF_DTYPES else 1e-5
    binary = segops.paste_masks(masks, boxes, (20, width), 0.5, mode)
    differ = check_bool_band(binary, values, 0.5, False, dtype)
    assert differ <= tiny * values.numel()
    assert torch.equal(binary, out >= torch.tensor(0.5, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_paste_torchvision_nan_expansion_pastes_nothing(dtype):
    """Finite corners whose expansion by (mw + 2) / mw = 3 (one-cell-wide masks) is
    inf - inf (NaN): the box pastes nothing on every device (the int64 conversion of a NaN
    is undefined: x86 gives INT64_MIN, PTX 0)."""
    mw = 1
    big = float(torch.finfo(dtype).max)
    x0, x1 = 0.15 * big, 0.97 * big  # x1 + x0 overflows; (x1 - x0) / 2 * scale too
    boxes = torch.tensor([[x0, 1.0, x1, 3.0], [1.0, 1.0, 3.0, 3.0]], dtype=dtype)
    masks = torch.ones(2, 2, mw, dtype=dtype)
    expanded, valid = ref.torchvision_boxes(boxes, mw)
    assert valid.tolist() == [False, True]
    out = segops.paste_masks(masks, boxes, (5, 6), None, "torchvision")
    assert_close(out, ref.paste_masks(masks, boxes, (5, 6), None, "torchvision"), dtype)
    assert (out[0] == 0).all() and out[1].sum() > 0
    assert not segops.paste_masks(masks, boxes, (5, 6), 0.5, "torchvision")[0].any()
