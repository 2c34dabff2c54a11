"""BPR patches (docs/ops/patches.md): ``segops.boundary_patches``, ``crop_patches`` and
``reassemble_patches`` against the references EXACTLY (boxes, instance indices, scores;
image patches bit for bit, equal to ``segops.roi_align``; mask patches; reassembled masks,
exactly when the patches have the box size and within the rounding band when they are
resampled) on random instance masks, hand-built cases, every device; the padded form;
empty inputs; determinism; CUDA == CPU. (Bad input, opcheck and torch.compile are the
registry's: tests/ops/test_contract.py.)
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import segops

from helpers.masks import relayout
from helpers.patches import (
    ALL_DTYPES, BAND, INT_MASK_DTYPES, Instance, assert_bits_equal, assert_patches_equal,
    check_reassembly_band, crop_problems, mask_problems, reassemble_problems, ref,
    render_masks,
)


def _rois(boxes: torch.Tensor, instance_index: torch.Tensor, batch_index: torch.Tensor,
          dtype: torch.dtype) -> torch.Tensor:
    """(batch_index of the instance, x1, y1, x2, y2) rows for roi_align."""
    rd = torch.float64 if dtype == torch.float64 else torch.float32
    b = batch_index[instance_index].to(rd)[:, None]
    return torch.cat([b, boxes.to(rd)], 1)


def _nonempty(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


# ======================================================================================
# boundary_patches
# ======================================================================================


@given(mp=mask_problems(), data=st.data())
def test_boundary_matches_reference(device, mp, data):
    """Exactly the reference's boxes, instances and scores (in order), for bool and integer
    masks; the padded form is the unpadded prefix plus the count."""
    expected = mp.reference()
    P = expected[0].size(0)
    assert P > 0  # every problem has a non-empty instance, so boundary pixels
    dtype = data.draw(st.sampled_from((torch.bool, torch.bool) + INT_MASK_DTYPES), "dtype")
    masks = mp.masks(device, dtype)
    got = segops.boundary_patches(masks, mp.patch_size, mp.iou_threshold)
    assert all(t.device.type == device for t in got)
    assert_patches_equal(got, expected)
    cap = data.draw(st.sampled_from(sorted({0, 1, max(P - 1, 0), P, P + 3})), "max_out")
    padded = segops.boundary_patches(masks, mp.patch_size, mp.iou_threshold, max_out=cap)
    assert all(t.device.type == device for t in padded)
    assert_patches_equal(padded, mp.reference(max_out=cap))
    n = min(P, cap)
    assert int(padded[3]) == n
    assert torch.equal(padded[0][:n].cpu(), expected[0][:n])


@pytest.mark.parametrize("layout", ["transposed", "strided"])
def test_boundary_layouts(device, layout):
    m = render_masks(40, 56, [Instance("blob", [(20.0, 18.0, 12.0, 7.0, 0.5)]),
                              Instance("pixel", at=(39, 0)), Instance("full")])
    expected = ref.boundary_patches(m, 16, 0.25)
    m2 = relayout(m.to(device), layout)
    assert not m2.is_contiguous()
    assert_patches_equal(segops.boundary_patches(m2, 16, 0.25), expected)
    assert_patches_equal(segops.boundary_patches(m2[1:], 16, 0.25),
                         ref.boundary_patches(m[1:], 16, 0.25))


def test_boundary_hand_cases(device):
    # a one-pixel mask (p = 2): an X of five patches; p = 8: one patch, shifted down to 0
    m = torch.zeros(1, 10, 12, dtype=torch.bool)
    m[0, 3, 5] = True
    boxes, index, scores = segops.boundary_patches(m.to(device), 2, 0.25)
    centres = [(2, 4), (2, 6), (3, 5), (4, 4), (4, 6)]
    assert boxes.tolist() == [[x - 1, y - 1, x + 1, y + 1] for y, x in centres]
    s1 = float(torch.tensor(1.0) / torch.tensor(4.5))
    assert index.tolist() == [0] * 5 and scores.tolist() == [s1] * 5
    boxes, _, _ = segops.boundary_patches(m.to(device), 8, 0.25)
    assert boxes.tolist() == [[0, 0, 8, 8]]
    # a full 20x20 mask: the corners first, in raster order, then the edges
    boxes, _, scores = segops.boundary_patches(torch.ones(1, 20, 20, dtype=torch.bool,
                                                          device=device), 8, 0.25)
    assert boxes[:6].tolist() == [[0, 0, 8, 8], [12, 0, 20, 8], [0, 12, 8, 20],
                                  [12, 12, 20, 20], [1, 0, 9, 8], [6, 0, 14, 8]]
    s4, s3 = (float(torch.tensor(k) / torch.tensor(4.5)) for k in (4.0, 3.0))
    assert scores[:4].tolist() == [s4] * 4 and (scores[4:] == s3).all()
    # the bottom-right pixel: its patch reaches the last row and column
    m = torch.zeros(1, 10, 12, dtype=torch.bool, device=device)
    m[0, 9, 11] = True
    assert segops.boundary_patches(m, 8, 0.25)[0].tolist() == [[4, 2, 12, 10]]
    # an image smaller than the patch: the whole axis
    m = torch.zeros(1, 5, 30, dtype=torch.bool, device=device)
    m[0, 2, 20] = True
    assert segops.boundary_patches(m, 8, 0.25)[0].tolist() == [[15, 0, 23, 5]]
    # IoU exactly on the threshold is kept (strict): p = 10, one row, pixels at x = 1 and 7:
    # candidates x = 0, 1, 2 and 6, 7, 8 (all S = 1). x = 0 is kept; x = 6 has IoU
    # 40/160 = 0.25 with it: kept (IoU >= 0.25 would suppress it and keep x = 7 instead)
    m = torch.zeros(1, 1, 20, dtype=torch.bool, device=device)
    m[0, 0, 1] = m[0, 0, 7] = True
    got = segops.boundary_patches(m, 10, 0.25)
    assert got[0].tolist() == [[0, 0, 10, 1], [1, 0, 11, 1]]
    assert_patches_equal(got, ref.boundary_patches(m.cpu(), 10, 0.25))


def test_boundary_integer_masks_nonzero_is_foreground(device):
    m = render_masks(24, 30, [Instance("blob", [(12.0, 10.0, 8.0, 5.0, 1.0)]),
                              Instance("rect", rect=(3, 4, 20, 9))])
    expected = ref.boundary_patches(m, 8, 0.15)
    for dtype in INT_MASK_DTYPES:
        got = segops.boundary_patches((m.to(dtype) * 7).to(device), 8, 0.15)
        assert_patches_equal(got, expected)


# ======================================================================================
# crop_patches
# ======================================================================================


@given(p=crop_problems())
def test_crop_matches_reference(device, p):
    """Image patches bit for bit (the reference's roi_align path), mask patches exactly,
    and the image patches equal segops.roi_align(aligned=True, sampling_ratio=1) on the same
    device, bit for bit."""
    e_img, e_msk = p.reference()
    images, masks, boxes, index, bi = p.args(device)
    g_img, g_msk = segops.crop_patches(images, masks, boxes, index, bi, p.output_size)
    P = boxes.size(0)
    assert P > 0 and (e_img != 0).any()
    assert g_img.device.type == device and g_msk.device.type == device
    assert_bits_equal(g_img, e_img, "image_patches")
    assert_bits_equal(g_msk, e_msk, "mask_patches")
    via_roi = segops.roi_align(images, _rois(boxes, index, bi, p.dtype), p.output_size, 1.0,
                               1, True)
    assert_bits_equal(g_img, via_roi.cpu(), "roi_align")
    assert not g_msk[~_nonempty(p.ps.boxes).to(device)].any()  # empty boxes: all False


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_crop_hand_case(device, dtype):
    g = torch.Generator().manual_seed(4)
    images = torch.randn(2, 3, 12, 14, generator=g).to(dtype).to(device)
    masks = torch.zeros(2, 12, 14, dtype=torch.bool)
    masks[0, 2:7, 3:9] = True
    masks[1, 5:, 6:] = True
    masks = masks.to(device)
    bi = torch.tensor([1, 0], device=device)
    boxes = torch.tensor([[1, 1, 9, 9], [6, 4, 14, 12], [-4, -4, 4, 4], [10, 8, 18, 16],
                          [3, 3, 3, 9]], device=device)
    index = torch.tensor([0, 1, 0, 1, 1], device=device)
    img, msk = segops.crop_patches(images, masks, boxes, index, bi, 8)  # box size: crops
    assert torch.equal(img[0], images[1, :, 1:9, 1:9])
    assert torch.equal(img[1], images[0, :, 4:12, 6:14])
    assert torch.equal(msk[0], masks[0, 1:9, 1:9]) and torch.equal(msk[1], masks[1, 4:12, 6:14])
    assert msk[0].any() and not msk[0].all()
    e = torch.zeros(8, 8, dtype=torch.bool, device=device)
    e[4:, 4:] = masks[0, :4, :4]
    assert torch.equal(msk[2], e)
    e = torch.zeros(8, 8, dtype=torch.bool, device=device)
    e[:4, :4] = masks[1, 8:, 10:]
    assert torch.equal(msk[3], e) and msk[3].any()
    assert not msk[4].any()  # an empty box
    # (16, 4): nearest doubles the rows, takes every other column
    img2, msk2 = segops.crop_patches(images, masks, boxes[:1], index[:1], bi, (16, 4))
    assert torch.equal(msk2[0], masks[0, 1:9, 1:9].repeat_interleave(2, 0)[:, ::2])
    e_img, e_msk = ref.crop_patches(images.cpu(), masks.cpu(), boxes.cpu(), index.cpu(),
                                    bi.cpu(), (5, 11))
    got = segops.crop_patches(images, masks, boxes, index, bi, (5, 11))
    assert_bits_equal(got[0], e_img)
    assert_bits_equal(got[1], e_msk)


@pytest.mark.parametrize("layout", ["transposed", "strided"])
def test_crop_layouts(device, layout):
    g = torch.Generator().manual_seed(8)
    images = torch.randn(2, 3, 20, 24, generator=g).to(device)
    masks = (torch.rand(3, 20, 24, generator=g) > 0.4).to(device)
    boxes = torch.tensor([[0, 0, 8, 8], [10, 5, 18, 13], [16, 12, 24, 20]], device=device)
    index = torch.tensor([2, 0, 1], device=device)
    bi = torch.tensor([0, 1, 1], device=device)
    expected = segops.crop_patches(images, masks, boxes, index, bi, (6, 10))
    args = [relayout(t, layout) for t in (images, masks, boxes, index, bi)]
    assert not args[0].is_contiguous() and not args[1].is_contiguous()
    got = segops.crop_patches(*args, (6, 10))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert expected[1].any() and (expected[0] != 0).any()


# ======================================================================================
# reassemble_patches
# ======================================================================================


@given(p=reassemble_problems(resample=False))
def test_reassemble_matches_reference_exactly(device, p):
    """Patches of the box size: exactly the reference (no resampling)."""
    expected = p.reference()
    means, covered = p.reference_means()
    assert covered.any()
    got = segops.reassemble_patches(*p.args(device), p.threshold)
    assert got.device.type == device and got.dtype == torch.bool
    assert_bits_equal(got, expected, "masks")


@given(p=reassemble_problems(resample=True))
def test_reassemble_resampled_within_band(device, p):
    """Patches of another size (bilinear resampling): the reference except where its mean
    lies within the rounding band of the threshold."""
    means, covered = p.reference_means()
    masks = p.mp.masks()
    got = segops.reassemble_patches(*p.args(device), p.threshold)
    assert got.device.type == device and got.shape == masks.shape
    differ = check_reassembly_band(got, means, covered, masks, p.threshold, p.dtype)
    assert differ <= max(2, 0.01 * int(covered.sum())), f"{differ} band pixels differ"


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_reassemble_resampled_band_is_tiny(device, dtype):
    """Refinement outputs at the network's 128x128 resampled onto 40 boxes of 64x64 (BPR
    resamples them itself; here the op does): the means within the rounding band of 0.5
    are a tiny fraction of the covered pixels, and fewer still differ."""
    g = torch.Generator().manual_seed(4)
    N, H, W, P = 3, 160, 200, 40
    masks = torch.rand(N, H, W, generator=g) > 0.5
    xy = torch.stack([torch.randint(-8, W - 56, (P,), generator=g),
                      torch.randint(-8, H - 56, (P,), generator=g)], 1)
    boxes = torch.cat([xy, xy + 64], 1)
    index = torch.randint(0, N, (P,), generator=g)
    probs = torch.sigmoid(4 * torch.randn(P, 16, 16, generator=g))
    probs = F.interpolate(probs[:, None], (128, 128), mode="bilinear")[:, 0].to(dtype)
    means, covered = ref.patch_means(masks, probs, boxes, index)
    got = segops.reassemble_patches(masks.to(device), probs.to(device), boxes.to(device),
                                    index.to(device))
    differ = check_reassembly_band(got, means, covered, masks, 0.5, dtype)
    band = covered & ((means.double() - 0.5).abs() <= BAND[dtype])
    assert int(band.sum()) <= 1e-3 * int(covered.sum())
    assert differ <= max(1, 1e-4 * int(covered.sum()))


def test_reassemble_float32_rule(device):
    """0.4f + 0.6f == 1 in float32: a mean of exactly 0.5, background (strict >)."""
    coarse = torch.tensor([[[False, True, False, True]]], device=device)
    probs = torch.tensor([[[0.4, 0.4]], [[0.6, 0.6]]], device=device)
    boxes = torch.tensor([[0, 0, 2, 1], [1, 0, 3, 1]], device=device)
    index = torch.tensor([0, 0], device=device)
    out = segops.reassemble_patches(coarse, probs, boxes, index)
    assert out.tolist() == [[[False, False, True, True]]]
    out = segops.reassemble_patches(coarse, probs.double(), boxes, index)  # 0.4f, 0.6f in f64
    assert out.tolist() == [[[False, True, True, True]]]
    p64 = torch.tensor([[[0.4, 0.4]], [[0.6, 0.6]]], dtype=torch.float64, device=device)
    assert segops.reassemble_patches(coarse, p64, boxes, index).tolist() == [
        [[False, False, True, True]]]
    # the threshold is rounded to the accumulation dtype: float32(0.3) > 0.3 is False there
    c = torch.zeros(1, 1, 3, dtype=torch.bool, device=device)
    for dtype in (torch.float32, torch.float64):
        pr = torch.full((1, 1, 3), 0.3, dtype=dtype, device=device)
        b, i = torch.tensor([[0, 0, 3, 1]], device=device), torch.tensor([0], device=device)
        assert not segops.reassemble_patches(c, pr, b, i, 0.3).any()
        assert segops.reassemble_patches(c, pr, b, i, 0.2999).all()


def test_reassemble_bookkeeping(device):
    """The coarse mask where no patch covers; instances never interact; pixels outside the
    image and empty boxes add nothing; the patch's offset inside a box cut by the border."""
    coarse = torch.zeros(2, 6, 7, dtype=torch.bool)
    coarse[0, :, :3] = True
    coarse[1, 3:, :] = True
    boxes = torch.tensor([[1, 1, 4, 4], [1, 1, 4, 4], [4, 3, 8, 6], [2, 2, 2, 5],
                          [9, 0, 12, 3]])
    probs = torch.zeros(5, 3, 4)
    probs[0] = 0.9
    probs[1] = 0.1
    probs[2] = torch.arange(12.0).reshape(3, 4) / 12  # box 4x3, one column beyond the image
    probs[3:] = 1.0
    index = torch.tensor([0, 1, 0, 1, 0])
    expected = ref.reassemble_patches(coarse, probs, boxes, index, 0.3)
    got = segops.reassemble_patches(coarse.to(device), probs.to(device), boxes.to(device),
                                    index.to(device), 0.3)
    assert_bits_equal(got, expected)
    e0 = coarse[0].clone()
    e0[1:4, 1:4] = True  # 0.9 (resampled from 3x4 to 3x3: constant)
    e0[3:6, 4:7] = (torch.arange(12.0).reshape(3, 4) / 12)[:, :3] > 0.3
    e1 = coarse[1].clone()
    e1[1:4, 1:4] = False
    assert torch.equal(expected[0], e0) and torch.equal(expected[1], e1)


@pytest.mark.parametrize("layout", ["transposed", "strided"])
def test_reassemble_layouts(device, layout):
    g = torch.Generator().manual_seed(2)
    masks = (torch.rand(2, 20, 24, generator=g) > 0.5).to(device)
    probs = torch.rand(3, 8, 8, generator=g).to(device)
    boxes = torch.tensor([[0, 0, 8, 8], [4, 3, 12, 11], [16, 12, 24, 20]], device=device)
    index = torch.tensor([1, 1, 0], device=device)
    expected = segops.reassemble_patches(masks, probs, boxes, index)
    args = [relayout(t, layout) for t in (masks, probs, boxes, index)]
    assert not args[0].is_contiguous() and not args[1].is_contiguous()
    assert torch.equal(segops.reassemble_patches(*args), expected)
    assert not torch.equal(expected, masks)


# ======================================================================================
# Empty inputs
# ======================================================================================


@pytest.mark.parametrize("N,H,W,P", [(0, 8, 9, 0), (3, 8, 9, 0), (2, 0, 9, 2), (2, 8, 0, 2),
                                     (0, 0, 0, 0)])
def test_empty_inputs(device, N, H, W, P):
    masks = torch.zeros(N, H, W, dtype=torch.bool, device=device)
    out = segops.boundary_patches(masks, 8)
    assert [tuple(t.shape) for t in out] == [(0, 4), (0,), (0,)]
    assert [t.dtype for t in out] == [torch.int64, torch.int64, torch.float32]
    assert all(t.device.type == device for t in out)
    b, i, s, c = segops.boundary_patches(masks, 8, max_out=5)
    assert int(c) == 0 and (i == -1).all() and b.shape == (5, 4)
    boxes = torch.tensor([[0, 0, 4, 4]] * P, dtype=torch.int64, device=device).reshape(P, 4)
    index = torch.zeros(P, dtype=torch.int64, device=device)
    images = torch.randn(2, 3, H, W, device=device)
    bi = torch.zeros(N, dtype=torch.int64, device=device)
    img, msk = segops.crop_patches(images, masks, boxes, index, bi, (4, 5))
    assert img.shape == (P, 3, 4, 5) and msk.shape == (P, 4, 5) and msk.dtype == torch.bool
    assert (img == 0).all() and not msk.any()  # zero-size images: nothing to sample
    e = ref.crop_patches(images.cpu(), masks.cpu(), boxes.cpu(), index.cpu(), bi.cpu(), (4, 5))
    assert_bits_equal(img, e[0])
    assert_bits_equal(msk, e[1])
    out = segops.reassemble_patches(masks, torch.rand(P, 4, 4, device=device), boxes, index)
    assert out.shape == (N, H, W) and out.dtype == torch.bool and out.device.type == device


# ======================================================================================
# torch.compile, opcheck
# ======================================================================================



# ======================================================================================
# Bad input
# ======================================================================================

_M = torch.zeros(2, 6, 8, dtype=torch.bool)
_BOX = torch.tensor([[1, 1, 5, 5]])
_IDX = torch.tensor([0])
_BI = torch.tensor([0, 0])
_IMG = torch.zeros(1, 3, 6, 8)
_PR = torch.zeros(1, 4, 4)
_EITHER = (TypeError, ValueError)


# ======================================================================================
# Determinism, CUDA == CPU
# ======================================================================================


def _big_case(device):
    g = torch.Generator().manual_seed(11)
    insts = [Instance("blob", [tuple(float(v) for v in torch.rand(5, generator=g) *
                                     torch.tensor([200.0, 150.0, 40.0, 30.0, 3.0]) + 1)
                               for _ in range(3)]) for _ in range(5)]
    insts.append(Instance("noise", density=0.1, seed=3))
    masks = render_masks(150, 200, insts).to(device)
    images = torch.randn(2, 3, 150, 200, generator=g).to(device)
    return masks, images


def test_deterministic_across_runs(device):
    masks, images = _big_case(device)
    runs = []
    for _ in range(2):
        boxes, index, scores = segops.boundary_patches(masks, 32, 0.25)
        bi = torch.tensor([0, 1, 0, 1, 0, 1], device=device)
        img, msk = segops.crop_patches(images, masks, boxes, index, bi, (16, 16))
        probs = torch.sigmoid(img.float().mean(1))  # [P, 16, 16]: resampled to 32x32
        out = segops.reassemble_patches(masks, probs, boxes, index)
        runs.append([boxes, index, scores, img, msk, out])
    assert runs[0][0].size(0) > 20
    for a, b in zip(*runs):
        assert_bits_equal(a, b.cpu())


@pytest.mark.cuda
@given(mp=mask_problems(max_hw=96), data=st.data())
def test_cuda_matches_cpu_exactly(mp, data):
    masks = mp.masks()
    cpu = segops.boundary_patches(masks, mp.patch_size, mp.iou_threshold)
    gpu = segops.boundary_patches(masks.cuda(), mp.patch_size, mp.iou_threshold)
    assert cpu[0].size(0) > 0
    assert_patches_equal(gpu, cpu)
    boxes, index, _ = cpu
    dtype = data.draw(st.sampled_from(ALL_DTYPES), "dtype")
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), "seed"))
    images = torch.randn(2, 3, mp.H, mp.W, generator=g).to(dtype)
    bi = torch.randint(0, 2, (mp.N,), generator=g)
    size = data.draw(st.sampled_from([(8, 8), (16, 24), (mp.patch_size, mp.patch_size)]))
    c = segops.crop_patches(images, masks, boxes, index, bi, size)
    d = segops.crop_patches(images.cuda(), masks.cuda(), boxes.cuda(), index.cuda(), bi.cuda(),
                            size)
    assert_bits_equal(d[0], c[0], "image_patches")
    assert_bits_equal(d[1], c[1], "mask_patches")
    hw = data.draw(st.sampled_from([(min(mp.patch_size, mp.H), min(mp.patch_size, mp.W)),
                                    (13, 7)]), "hw")
    probs = torch.rand(boxes.size(0), *hw, generator=g).to(dtype)
    thr = data.draw(st.sampled_from([0.5, 0.3]), "threshold")
    r_cpu = segops.reassemble_patches(masks, probs, boxes, index, thr)
    r_gpu = segops.reassemble_patches(masks.cuda(), probs.cuda(), boxes.cuda(), index.cuda(),
                                      thr)
    assert_bits_equal(r_gpu, r_cpu, "reassembled")
