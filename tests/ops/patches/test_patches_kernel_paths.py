"""The patches ops on inputs that take every code path of their kernels
(docs/cost_model/patches.md), and their extreme inputs: boxes 2**63 and 2**64 - 1 wide,
patch sizes up to 2**30 (whose cost follows the mask, not the patch). On the CPU each is
checked against the reference or a hand-derived result; under SEGOPS_CUDA_EMU the shadow
also compares the emulated CUDA kernels with the CPU bit for bit.
"""

from __future__ import annotations

import pytest
import torch

import segops
from segops.reference.roi import roi_align

from helpers.patches import assert_bits_equal, ellipses_mask, ref

BIG = 2**62
# x extents of 2**63 (int64 subtraction overflows) and 2**64 - 1 (the largest)
WIDE_X = [(-BIG, BIG), (-(2**63), 2**63 - 1)]


def _masks(H, W, n=3):
    m = torch.zeros(n, H, W, dtype=torch.bool)
    m[0] = ellipses_mask(H, W, [(W * 0.45, H * 0.5, W * 0.35, H * 0.3, 0.3)])
    m[1] = ellipses_mask(H, W, [(W * 0.3, H * 0.3, 5.0, 3.0, 0.0), (W * 0.7, H * 0.6, 4.0, 6.0, 1.0)])
    if n > 2:
        m[2, 0] = True  # a border row
    return m


@pytest.mark.parametrize("thr", [0.25, 0.55, 1.0, -0.5])
@pytest.mark.parametrize("hw", [(80, 96), (83, 37)])
def test_boundary_regions_over_one_chunk(device, hw, thr):
    """Candidate regions of several 4096-pixel chunks; planes whose size is and is not a
    multiple of 16 bytes; every candidate kept (threshold 1) and one kept (< 0)."""
    masks = _masks(*hw)
    expected = ref.boundary_patches(masks, 8, thr)
    got = segops.boundary_patches(masks.to(device), 8, thr)
    for g, e, what in zip(got, expected, ("boxes", "instance_index", "scores")):
        assert_bits_equal(g, e, what)
    if thr == 1.0:  # no two patches suppress each other: every candidate is kept
        assert got[0].shape[0] == int((ref.boundary_scores(masks) > 0).sum())
    if thr < 0:
        assert got[1].tolist() == [0, 1, 2]
    padded = segops.boundary_patches(masks.to(device), 8, thr, max_out=7)
    n = min(7, expected[0].shape[0])
    assert int(padded[3]) == n
    assert_bits_equal(padded[0][:n], expected[0][:n], "padded boxes")


@pytest.mark.parametrize("p", [2**20, 2**30])
def test_boundary_huge_patch_size_follows_the_mask(device, p):
    """patch_size 2**20 used to cost O(p**2) (minutes on a 16x16 mask) and 2**40 to end in
    std::bad_alloc; now the work is bounded by the mask's box, and the patch spans the image."""
    masks = _masks(16, 16)
    expected = ref.boundary_patches(masks, p, 0.25)
    got = segops.boundary_patches(masks.to(device), p, 0.25)
    for g, e, what in zip(got, expected, ("boxes", "instance_index", "scores")):
        assert_bits_equal(g, e, what)
    assert got[0].tolist() == [[0, 0, 16, 16]] * 3


def test_boundary_patch_size_bound(device):
    with pytest.raises(ValueError, match="`patch_size` must be an even int in"):
        torch.ops.segops.boundary_patches(_masks(8, 8).to(device), 2**30 + 2, 0.25, -1)
    with pytest.raises(ValueError, match="`patch_size`"):
        torch.ops.segops.boundary_patches(_masks(8, 8).to(device), 2**40, 0.25, -1)


@pytest.mark.parametrize("x0,x1", WIDE_X)
def test_crop_box_wider_than_int64(device, x0, x1):
    """A box 2**63 (or 2**64 - 1) pixels wide: the nearest samples of a 4-wide patch are
    x0 + floor(o * extent / 4), of which only o = 2 lands in the image, at x = 0 (it used to
    be read as an empty box: an all-False mask patch). The image patch is roi_align's."""
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(1, 8, 6, generator=g) > 0.4
    masks[0, :, 0] = torch.tensor([True, False, True, True, False, True, True, False])
    images = torch.rand(1, 2, 8, 6, generator=g)
    boxes = torch.tensor([[x0, 0, x1, 8]])
    img, msk = segops.crop_patches(images.to(device), masks.to(device), boxes.to(device),
                                   torch.tensor([0], device=device),
                                   torch.tensor([0], device=device), 4)
    expected = torch.zeros(1, 4, 4, dtype=torch.bool)
    expected[0, :, 2] = masks[0, [0, 2, 4, 6], 0]  # rows: nearest of 8 -> 4 is 2 * o
    assert expected.any()
    assert_bits_equal(msk, expected, "mask patches")
    roi = torch.tensor([[0, x0, 0, x1, 8]], dtype=torch.float64)
    assert_bits_equal(img, roi_align(images, roi, (4, 4), 1.0, 1, True), "image patches")


@pytest.mark.parametrize("x0,x1", WIDE_X)
def test_reassemble_box_wider_than_int64(device, x0, x1):
    """probs [8, 4] resampled onto a box 8 high and 2**63 (2**64 - 1) wide: every image
    column sits at source x = extent^-1 * 4 * (x - x0 + 0.5) - 0.5 = 1.5 in float32, the
    even blend of columns 1 and 2 (it used to be read as an empty box: the coarse mask)."""
    probs = torch.zeros(1, 8, 4)
    probs[0, :, 1:3] = torch.tensor([0.75, 0.25] * 4)[:, None]
    coarse = torch.zeros(1, 8, 10, dtype=torch.bool)
    coarse[0, 1::2] = True  # the opposite of the refined answer
    boxes = torch.tensor([[x0, 0, x1, 8]])
    out = segops.reassemble_patches(coarse.to(device), probs.to(device), boxes.to(device),
                                    torch.tensor([0], device=device))
    expected = torch.zeros(1, 8, 10, dtype=torch.bool)
    expected[0, 0::2] = True
    assert_bits_equal(out, expected, "masks")


def test_crop_several_row_groups_and_column_passes(device):
    """Output 20 x 300: two 16-row groups, two column passes of the 256 threads."""
    g = torch.Generator().manual_seed(1)
    masks = _masks(40, 50)
    images = torch.rand(2, 3, 40, 50, generator=g)
    boxes = torch.tensor([[2, 3, 30, 35], [-5, 10, 45, 60], [10, 10, 10, 20]])
    index, batch = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1])
    expected = ref.crop_patches(images, masks, boxes, index, batch, (20, 300))
    got = segops.crop_patches(images.to(device), masks.to(device), boxes.to(device),
                              index.to(device), batch.to(device), (20, 300))
    assert_bits_equal(got[0], expected[0], "image patches")
    assert_bits_equal(got[1], expected[1], "mask patches")


@pytest.mark.parametrize("W", [1030, 1032])
def test_reassemble_many_patches_per_row_and_wide_rows(device, W):
    """300 patches of one instance crossing the same rows (two batches of 256 in the
    kernel's shared list), rows of two 1024-column passes, rows that do (1032) and do not
    (1030) allow 4-byte stores."""
    g = torch.Generator().manual_seed(2)
    P = 300
    x = torch.randint(-10, W - 10, (P,), generator=g)
    y = torch.randint(-4, 6, (P,), generator=g)
    boxes = torch.stack([x, y, x + 16, y + 8], 1)
    index = torch.zeros(P, dtype=torch.int64)
    index[::7] = 1
    probs = torch.rand(P, 8, 16, generator=g)
    coarse = torch.rand(2, 12, W, generator=g) > 0.5
    expected = ref.reassemble_patches(coarse, probs, boxes, index)
    got = segops.reassemble_patches(coarse.to(device), probs.to(device), boxes.to(device),
                                    index.to(device))
    assert_bits_equal(got, expected, "masks")
