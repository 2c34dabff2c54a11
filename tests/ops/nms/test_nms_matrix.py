"""Matrix NMS (SOLOv2, docs/ops/nms.md): matrix_nms against the reference, SOLO's sizes, and
hand-computed decays.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given

import segops

from helpers.nms import ALL_DTYPES, HALF_DTYPES, MATRIX_TOL, _rect_masks, matrix_problems, ref, to


@given(p=matrix_problems())
def test_matrix_nms_matches_reference(device, p):
    out = segops.matrix_nms(*to(device, p.masks, p.labels, p.scores), kernel=p.kernel,
                            sigma=p.sigma)
    assert out.dtype == p.scores.dtype and out.shape == p.scores.shape
    expected = ref.matrix_nms(p.masks, p.labels, p.scores, p.kernel, p.sigma)
    torch.testing.assert_close(out.cpu(), expected, **MATRIX_TOL[p.scores.dtype])
    assert torch.all(out.cpu().double() <= p.scores.double())  # decays are <= 1


def test_matrix_nms_solo_size(device):
    g = torch.Generator().manual_seed(3)
    n, H, W = 120, 50, 70
    y = torch.arange(H).view(1, H, 1)
    x = torch.arange(W).view(1, 1, W)
    cy = torch.randint(0, H, (n, 1, 1), generator=g)
    cx = torch.randint(0, W, (n, 1, 1), generator=g)
    r = torch.randint(3, 20, (n, 1, 1), generator=g)
    masks = (y - cy) ** 2 + (x - cx) ** 2 < r ** 2
    labels = torch.randint(0, 4, (n,), generator=g)
    scores = torch.rand(n, generator=g)
    for kernel in ("gaussian", "linear"):
        expected = ref.matrix_nms(masks, labels, scores, kernel, 2.0)
        assert (expected < scores).sum() > n // 4
        out = segops.matrix_nms(*to(device, masks, labels, scores), kernel=kernel)
        torch.testing.assert_close(out.cpu(), expected, **MATRIX_TOL[torch.float32])


# ======================================================================================
# Hand-computed decays
# ======================================================================================


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_matrix_nms_hand_computed(device, dtype):
    # A = 4x4 at x 0..4, B = A shifted by 2 (IoU 8/24 = 1/3), C duplicates A (IoU 1),
    # D is empty, E = B in another class. Sorted: A (0.9), B (0.8), C (0.7), D (0.6), E (0.5).
    masks = _rect_masks([(0, 0, 4, 4), (2, 0, 6, 4), (0, 0, 4, 4), (0, 0, 0, 0), (2, 0, 6, 4)])
    labels = torch.tensor([0, 0, 0, 0, 1])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5], dtype=torch.float64)
    perm = torch.tensor([3, 0, 4, 2, 1])  # presented out of order
    m, l, s = masks[perm], labels[perm], scores[perm].to(dtype)
    scores = scores.to(dtype).double()  # the expected values from the rounded scores
    third = 1 / 3
    # gaussian: decay_j = min_i exp(-2 iou_ij^2) / exp(-2 comp_i^2); comp = [0, 1/3, 1, 0, 0]
    g_c = min(math.exp(-2 * 1.0), math.exp(-2 * third**2) / math.exp(-2 * third**2))
    sv = scores.tolist()
    gauss = [sv[0], sv[1] * math.exp(-2 * third**2), sv[2] * g_c, sv[3], sv[4]]
    # linear: B: 1 - 1/3; C: min(1 - 1, (1 - 1/3) / (1 - 1/3)) = 0; D: the C row is left out
    # (denominator 0), others give 1 / (1 - comp) >= 1 -> 1
    lin = [sv[0], sv[1] * (1 - third), 0.0, sv[3], sv[4]]
    for kernel, expected in (("gaussian", gauss), ("linear", lin)):
        out = segops.matrix_nms(*to(device, m, l, s), kernel=kernel, sigma=2.0)
        assert out.dtype == dtype
        exp_t = torch.tensor(expected, dtype=torch.float64)[perm]
        tol = MATRIX_TOL[dtype] if dtype in HALF_DTYPES else dict(rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(out.cpu().double(), exp_t, rtol=tol["rtol"],
                                   atol=max(tol["atol"], 1e-7))
        assert torch.isfinite(out).all()  # the original: NaN for D (empty mask)
        ro = ref.matrix_nms(m, l, s, kernel, 2.0)
        torch.testing.assert_close(ro.double(), exp_t, rtol=tol["rtol"], atol=max(tol["atol"],
                                                                                  1e-7))


def test_matrix_nms_duplicates_and_ties(device):
    """Equal scores: the lower index is the higher-ranked one; its duplicate decays."""
    masks = _rect_masks([(0, 0, 4, 4)] * 3)
    labels = torch.zeros(3, dtype=torch.int64)
    scores = torch.full((3,), 0.5)
    out = segops.matrix_nms(*to(device, masks, labels, scores), kernel="linear")
    # mask 2: row 0 gives (1 - 1) / 1 = 0; row 1 (comp 1) would be 0/0 and is left out
    assert out.tolist() == [0.5, 0.0, 0.0]
    out = segops.matrix_nms(*to(device, masks, labels, scores), kernel="gaussian", sigma=2.0)
    torch.testing.assert_close(out.cpu(), torch.tensor([0.5, 0.5 * math.exp(-2.0),
                                                        0.5 * math.exp(-2.0)]))
    # a different label: no decay at all
    out = segops.matrix_nms(*to(device, masks, torch.tensor([0, 1, 2]), scores))
    assert out.tolist() == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.uint8, torch.float32, torch.float16])
def test_matrix_nms_mask_dtypes_agree(device, mask_dtype):
    g = torch.Generator().manual_seed(5)
    masks = torch.rand(12, 9, 11, generator=g) < 0.5
    masks[3] = masks[1]
    labels = torch.randint(0, 2, (12,), generator=g)
    scores = torch.rand(12, generator=g)
    expected = segops.matrix_nms(*to(device, masks, labels, scores))
    assert (expected < scores.to(device)).any()
    out = segops.matrix_nms(*to(device, masks.to(mask_dtype), labels.int(), scores))
    assert torch.equal(out, expected)
