"""Suppression (docs/ops/nms.md): hand-built cases that compare the algorithms on the same input.
The Fast NMS chain, IoU exactly at / just above the threshold, the threshold comparisons,
non-finite boxes, NaN scores, ties.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import segops

from helpers.nms import ALL_DTYPES, CHAIN, NONFINITE, ref, to


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_chain_separates_fast_nms_from_greedy(device, dtype):
    boxes = torch.tensor(CHAIN, dtype=dtype, device=device)
    scores = torch.tensor([0.9, 0.8, 0.7], dtype=dtype, device=device)
    assert segops.nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert segops.batched_nms(boxes, scores, torch.zeros(3, dtype=torch.int64, device=device),
                              0.5).tolist() == [0, 2]
    idx, cls, sc = segops.fast_nms(boxes, scores[None], 0.5, score_threshold=0.05)
    assert idx.tolist() == [0] and cls.tolist() == [0]
    assert sc.dtype == dtype and sc.tolist() == [scores[0].item()]
    idx, cls, sc = segops.fast_nms(boxes, scores[None], 0.5, cross_class=True)
    assert idx.tolist() == [0]
    # The chain in class 1, presented out of order: (C, A, B). Class 0's scores are all
    # 0.01, below the prefilter, but the anchors pass through class 1, so class 0 ranks
    # them too (ties by index: C, A, B) and keeps C and A (B overlaps both), as YOLACT
    # does with second_threshold off.
    perm = [2, 0, 1]
    s2 = torch.stack([torch.full((3,), 0.01, dtype=dtype), torch.tensor([0.7, 0.9, 0.8],
                                                                         dtype=dtype)])
    idx, cls, _ = segops.fast_nms(boxes[perm], s2.to(device), 0.5)
    assert idx.tolist() == [1, 0, 1] and cls.tolist() == [1, 0, 0]
    idx, cls, _ = segops.fast_nms(boxes[perm], s2.to(device), 0.5, second_threshold=True)
    assert idx.tolist() == [1] and cls.tolist() == [1]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_iou_exactly_at_and_just_above_threshold(device, dtype):
    """IoU 128/256 = 0.5 exactly (kept by both: greedy suppresses on >, fast keeps on <=);
    129/256 just above (suppressed by both); 127/256 just below (kept by both)."""
    top = [0.0, 0.0, 16.0, 16.0]
    cases = {8.0: True, 8.0625: False, 7.9375: True}
    for y2, kept in cases.items():
        boxes = torch.tensor([top, [0.0, 0.0, 16.0, y2]], dtype=dtype, device=device)
        scores = torch.tensor([0.9, 0.8], dtype=dtype, device=device)
        expected = [0, 1] if kept else [0]
        assert segops.nms(boxes, scores, 0.5).tolist() == expected, y2
        assert segops.fast_nms(boxes, scores[None], 0.5)[0].tolist() == expected, y2
        assert segops.fast_nms(boxes, scores[None], 0.5, cross_class=True)[0].tolist() \
            == expected, y2
    # at 0.5 exactly: a threshold just below the IoU suppresses
    boxes = torch.tensor([top, [0.0, 0.0, 16.0, 8.0]], dtype=dtype, device=device)
    scores = torch.tensor([0.9, 0.8], dtype=dtype, device=device)
    below = float(np.nextafter(0.5, 0.0))
    assert segops.nms(boxes, scores, below).tolist() == [0]
    assert segops.fast_nms(boxes, scores[None], float(np.nextafter(np.float32(0.5),
                                                                   np.float32(0))))[0].tolist() \
        == [0]
    # [0, 0, 10, 10] and [0, 0, 10, 5]: 0.5 exactly too
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 5]], dtype=dtype, device=device)
    assert segops.nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert segops.nms(boxes, scores, 0.49).tolist() == [0]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_threshold_comparison_precision(device, dtype):
    """IoU 3/10: float32(0.3) = 0.30000001 > 0.3. nms compares the float32 IoU with the
    threshold exactly (torchvision): suppressed; fast_nms compares in float32 (YOLACT's
    tensor comparison): kept. With float64 boxes the IoU is 0.3 itself: kept by both."""
    boxes = torch.tensor([[0.0, 0, 10, 1], [0.0, 0, 3, 1]], dtype=dtype, device=device)
    scores = torch.tensor([0.9, 0.8], dtype=dtype, device=device)
    greedy = [0, 1] if dtype == torch.float64 else [0]
    assert segops.nms(boxes, scores, 0.3).tolist() == greedy
    assert ref.nms(boxes.cpu(), scores.cpu(), 0.3).tolist() == greedy
    assert segops.fast_nms(boxes, scores[None], 0.3)[0].tolist() == [0, 1]
    assert segops.fast_nms(boxes, scores[None], 0.3, cross_class=True)[0].tolist() == [0, 1]


@pytest.mark.parametrize("bad", NONFINITE)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_nonfinite_boxes_are_absent(device, dtype, bad):
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10], [1.0, 1, 11, 11],
                          [30.0, 30, 40, 40]], dtype=dtype)
    boxes[0, 2] = bad  # the best box is non-finite: it neither survives nor suppresses
    boxes[3, 0] = bad
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95], dtype=dtype)
    b, s = to(device, boxes, scores)
    assert segops.nms(b, s, 0.5).tolist() == [1]
    assert segops.nms(b, s, 0.5, max_out=3)[0].tolist() == [1, -1, -1]
    assert segops.batched_nms(b, s, torch.zeros(4, dtype=torch.int64, device=device),
                              0.5).tolist() == [1]
    for cc in (False, True):
        assert segops.fast_nms(b, s[None], 0.5, cross_class=cc)[0].tolist() == [1]
    # top_k counts present anchors only: top_k=1 still finds box 1
    assert segops.fast_nms(b, s[None], 0.5, top_k=1)[0].tolist() == [1]
    assert ref.fast_nms(boxes, scores[None], 0.5, top_k=1)[0].tolist() == [1]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_nan_scores(device, dtype):
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10], [20.0, 20, 30, 30]],
                         dtype=dtype, device=device)
    scores = torch.tensor([math.nan, 0.5, 0.7], dtype=dtype, device=device)
    # nms: a NaN score is absent (it would sort first in a descending torch.sort)
    assert segops.nms(boxes, scores, 0.5).tolist() == [2, 1]
    assert segops.batched_nms(boxes, scores, torch.tensor([0, 0, 1], device=device),
                              0.5).tolist() == [2, 1]
    # fast_nms: a NaN among an anchor's class scores drops the anchor (torch.max is NaN)
    cs = torch.tensor([[0.9, 0.5, 0.7], [math.nan, 0.6, 0.1]], dtype=dtype, device=device)
    for cc in (False, True):
        idx, cls, _ = segops.fast_nms(boxes, cs, 0.5, cross_class=cc)
        assert 0 not in idx.tolist()
    idx, cls, _ = segops.fast_nms(boxes, cs, 0.5)
    assert list(zip(idx.tolist(), cls.tolist())) == [(2, 0), (1, 1), (1, 0), (2, 1)]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_ties_broken_by_lower_index(device, dtype):
    g = torch.Generator().manual_seed(11)
    n = 300
    xy = torch.arange(n, dtype=torch.float64).unsqueeze(1) * 20  # disjoint boxes
    boxes = torch.cat([xy, xy, xy + 10, xy + 10], 1).to(dtype).to(device)
    # +-0 are the same score; a radix sort on the bit pattern would order them apart
    values = torch.tensor([0.0, -0.0, 0.5, 1.0, -0.0])
    scores = values[torch.randint(0, len(values), (n,), generator=g)].to(dtype)
    expected = sorted(range(n), key=lambda i: (-float(scores[i]), i))
    assert segops.nms(boxes, scores.to(device), 0.5).tolist() == expected
    assert segops.batched_nms(boxes, scores.to(device),
                              torch.randint(0, 5, (n,), generator=g).to(device),
                              0.5).tolist() == expected
    idx, _, _ = segops.fast_nms(boxes, scores[None].to(device), 0.5, top_k=n,
                                score_threshold=-1.0, max_detections=n)
    assert idx.tolist() == expected
    idx, _, _ = segops.fast_nms(boxes, scores[None].to(device), 0.5, top_k=n,
                                score_threshold=-1.0, cross_class=True)
    assert idx.tolist() == expected
    # identical boxes, equal scores: the lowest index survives
    same = torch.tensor([[1.0, 1, 5, 5]] * 5, dtype=dtype, device=device)
    eq = torch.full((5,), 0.5, dtype=dtype, device=device)
    assert segops.nms(same, eq, 0.5).tolist() == [0]
    assert segops.fast_nms(same, eq[None], 0.5)[0].tolist() == [0]
