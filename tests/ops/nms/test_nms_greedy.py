"""Greedy suppression (docs/ops/nms.md): nms and batched_nms against the reference (every dtype,
every device, exact and padded forms), large inputs, and hand-built cases.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

import segops

from helpers.nms import (
    CHAIN, _clustered_boxes, assert_keep_equal, assert_tuple_equal, nms_problems, ref, to,
)


@given(p=nms_problems())
def test_nms_matches_reference(device, p):
    boxes, scores = to(device, p.boxes, p.scores)
    expected = ref.nms(p.boxes, p.scores, p.threshold)
    keep = segops.nms(boxes, scores, p.threshold)
    assert keep.device.type == device
    assert_keep_equal(keep, expected)
    # the padded form: the exact result's first max_out entries, -1 after, and the count
    padded, count = segops.nms(boxes, scores, p.threshold, max_out=p.max_out)
    assert padded.shape == (p.max_out,) and count.shape == () and count.dtype == torch.int64
    assert_tuple_equal((padded, count), ref.nms(p.boxes, p.scores, p.threshold, p.max_out))


@given(p=nms_problems(max_classes=6))
def test_batched_nms_matches_reference(device, p):
    boxes, scores, idxs = to(device, p.boxes, p.scores, p.idxs)
    expected = ref.batched_nms(p.boxes, p.scores, p.idxs, p.threshold)
    assert_keep_equal(segops.batched_nms(boxes, scores, idxs, p.threshold), expected)
    out = segops.batched_nms(boxes, scores, idxs, p.threshold, max_out=p.max_out)
    assert_tuple_equal(out, ref.batched_nms(p.boxes, p.scores, p.idxs, p.threshold, p.max_out))


@given(p=nms_problems(kinds=("random", "dup", "shifted", "nested"), allow_nan=False,
                      max_classes=1000, max_n=30))
def test_batched_nms_equals_nms_per_class(device, p):
    """Suppression within classes only: the union of per-class nms, merged by score."""
    boxes, scores, idxs = to(device, p.boxes, p.scores, p.idxs)
    keep = segops.batched_nms(boxes, scores, idxs, p.threshold).cpu()
    parts = []
    for c in p.idxs.unique().tolist():
        sel = torch.nonzero(p.idxs == c).flatten()
        parts.append(sel[segops.nms(boxes[sel.to(device)], scores[sel.to(device)],
                                    p.threshold).cpu()])
    merged = torch.cat(parts).tolist() if parts else []
    # merged by score; equal scores across classes: the lower index first
    merged.sort(key=lambda i: (-float(p.scores[i]), i))
    assert keep.tolist() == merged
    assert len(merged) > 0 or p.boxes.numel() == 0 or torch.isnan(p.scores).all()


@pytest.mark.parametrize(
    "n, clusters, kept",
    [
        # 70000: the GPU's chunked mask (over 32768 boxes); O(n^2) IoUs take minutes emulated
        pytest.param(70000, 300, (250, 5000), marks=pytest.mark.no_cuda_emu),
        # 3000: the CUDA emulator's build (tools/cuda_emu) shrinks the mask budget, so this
        # takes the chunked path there
        (3000, 40, (30, 300)),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_nms_large(device, dtype, n, clusters, kept):
    """Many boxes (the kernels' blocked / parallel paths) against the reference."""
    # tight clusters: few boxes kept, so the reference's loop stays short
    boxes, scores = _clustered_boxes(n, clusters, seed=1, spread=1.0, size_range=5.0)
    boxes, scores = boxes.to(dtype), scores.to(dtype)
    expected = ref.nms(boxes, scores, 0.5)
    assert kept[0] <= expected.numel() < kept[1]
    assert_keep_equal(segops.nms(*to(device, boxes, scores), 0.5), expected)
    if dtype != torch.float32:
        return  # (the reference's batched loop is the slow part of this file)
    idxs = torch.arange(n) % 7
    expected = ref.batched_nms(boxes, scores, idxs, 0.5)
    assert_keep_equal(segops.batched_nms(*to(device, boxes, scores, idxs), 0.5), expected)
    keep, count = segops.batched_nms(*to(device, boxes, scores, idxs), 0.5, max_out=100)
    assert int(count) == 100 and torch.equal(keep.cpu(), expected[:100])


# ======================================================================================
# Hand-built cases
# ======================================================================================


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_batched_nms_without_offset_trick(device, dtype):
    """Identical boxes near float16's limit in different classes: never suppress each other
    (an offset by class * (max + 1) overflows in float16 / rounds away in float32)."""
    hi = 59968.0 if dtype == torch.float16 else 3.0e7
    box = [hi - 64, hi - 64, hi, hi]
    # the fourth box: IoU 0.5 with the first (same class)
    boxes = torch.tensor([box, box, box, [hi - 32, hi - 64, hi, hi]], dtype=dtype, device=device)
    assert torch.equal(boxes.double()[:, 2:] - boxes.double()[:, :2],
                       torch.tensor([[64.0, 64]] * 3 + [[32.0, 64]], device=device))
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6], dtype=dtype, device=device)
    idxs = torch.tensor([0, 1, 2, 0], device=device)
    assert segops.batched_nms(boxes, scores, idxs, 0.4).tolist() == [0, 1, 2]
    assert segops.batched_nms(boxes, scores, idxs, 0.5).tolist() == [0, 1, 2, 3]
    assert segops.batched_nms(boxes, scores, torch.zeros_like(idxs), 0.5).tolist() == [0, 3]


def test_nms_zero_area_and_inverted(device):
    boxes = torch.tensor([[5.0, 5, 5, 5], [5.0, 5, 5, 5], [0.0, 0, 10, 0], [0.0, 0, 10, 0],
                          [10.0, 10, 0, 0], [10.0, 10, 0, 0], [0.0, 0, 10, 10]], device=device)
    scores = torch.linspace(1, 0.4, 7, device=device)
    # zero-area and inverted boxes overlap nothing (IoU 0, not NaN): all kept
    assert segops.nms(boxes, scores, 0.0).tolist() == list(range(7))
    assert segops.fast_nms(boxes, scores[None], 0.0, score_threshold=0.0)[0].tolist() == \
        list(range(7))
    assert ref.nms(boxes.cpu(), scores.cpu(), 0.0).tolist() == list(range(7))


def test_nms_threshold_extremes(device):
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10], [5.0, 0, 15, 10],
                          [20.0, 0, 30, 10]], device=device)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6], device=device)
    assert segops.nms(boxes, scores, 1.0).tolist() == [0, 1, 2, 3]  # IoU 1 is not > 1
    assert segops.nms(boxes, scores, 0.0).tolist() == [0, 3]  # any overlap suppresses
    assert segops.fast_nms(boxes, scores[None], 1.0)[0].tolist() == [0, 1, 2, 3]
    assert segops.fast_nms(boxes, scores[None], 0.0)[0].tolist() == [0, 3]


@pytest.mark.parametrize("max_out", [0, 1, 2, 3, 5])
def test_nms_max_out(device, max_out):
    boxes = torch.tensor(CHAIN + [[40.0, 40, 50, 50]], device=device)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95], device=device)
    exact = [3, 0, 2]
    for out in (segops.nms(boxes, scores, 0.5, max_out=max_out),
                segops.batched_nms(boxes, scores, torch.zeros(4, dtype=torch.int64,
                                                              device=device), 0.5,
                                   max_out=max_out)):
        keep, count = out
        n = min(3, max_out)
        assert keep.dtype == torch.int64 and keep.device.type == device
        assert keep.tolist() == exact[:n] + [-1] * (max_out - n)
        assert count.shape == () and count.dtype == torch.int64 and int(count) == n
