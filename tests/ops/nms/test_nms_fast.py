"""Fast NMS (YOLACT, docs/ops/nms.md): fast_nms against the reference (every dtype, every device,
exact and padded forms), YOLACT's sizes, and hand-built cases.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

import segops

from helpers.nms import ALL_DTYPES, CHAIN, assert_tuple_equal, fast_problems, ref, to


@given(p=fast_problems())
def test_fast_nms_matches_reference(device, p):
    boxes, scores = to(device, p.boxes, p.scores)
    out = segops.fast_nms(boxes, scores, **p.kwargs)
    assert len(out) == 3 and all(t.device.type == device for t in out)
    expected = ref.fast_nms(p.boxes, p.scores, **p.kwargs)
    assert_tuple_equal(out, expected)
    padded = segops.fast_nms(boxes, scores, **p.kwargs, padded=True)
    assert_tuple_equal(padded, ref.fast_nms(p.boxes, p.scores, **p.kwargs, padded=True))
    cap = p.kwargs["top_k"] if p.kwargs["cross_class"] else p.kwargs["max_detections"]
    n = int(padded[3])
    assert padded[0].shape == (cap,) and n == expected[0].numel()
    assert_tuple_equal([t[:n] for t in padded[:3]], out)


@given(p=fast_problems(max_n=40, max_classes=3, kinds=("random", "shifted", "dup", "nested"),
                       allow_nan=False))
def test_fast_nms_matches_reference_dense(device, p):
    """More boxes per class: long columns for the column-max rule."""
    out = segops.fast_nms(*to(device, p.boxes, p.scores), **p.kwargs)
    assert_tuple_equal(out, ref.fast_nms(p.boxes, p.scores, **p.kwargs))


def test_fast_nms_yolact_size(device):
    """YOLACT's sizes: 19248 anchors x 80 classes, top_k 200, 100 detections."""
    g = torch.Generator().manual_seed(2)
    xy = torch.rand(19248, 2, generator=g) * 500
    boxes = torch.cat([xy, xy + 10 + torch.rand(19248, 2, generator=g) * 120], 1)
    scores = torch.rand(80, 19248, generator=g) ** 6
    for cc in (False, True):
        expected = ref.fast_nms(boxes, scores, 0.5, 200, 0.05, 100, cross_class=cc)
        assert expected[0].numel() > 50
        assert_tuple_equal(segops.fast_nms(*to(device, boxes, scores), 0.5, 200, 0.05, 100,
                                           cross_class=cc), expected)


# ======================================================================================
# Hand-built cases
# ======================================================================================


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_fast_nms_score_threshold_is_strict_in_scores_dtype(device, dtype):
    """A score equal to score_threshold rounded to the scores' dtype is dropped (YOLACT's
    `scores > thresh` on the tensor); the next value up passes."""
    at = torch.tensor(0.3, dtype=torch.float64).to(dtype)
    up = torch.nextafter(at, torch.tensor(1.0, dtype=dtype))
    boxes = torch.tensor([[0.0, 0, 4, 4], [10.0, 10, 14, 14]], device=device)
    scores = torch.stack([at, up])[None].to(device)
    for cc in (False, True):
        idx, cls, sc = segops.fast_nms(boxes, scores, 0.5, score_threshold=0.3, cross_class=cc)
        assert idx.tolist() == [1] and sc.tolist() == [up.item()]
    # second_threshold applies the same comparison to the class score
    scores = torch.stack([torch.stack([up, up]), torch.stack([at, at])]).to(device)  # [2, 2]
    idx, cls, _ = segops.fast_nms(boxes, scores, 0.5, score_threshold=0.3)
    assert sorted(zip(idx.tolist(), cls.tolist())) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    idx, cls, _ = segops.fast_nms(boxes, scores, 0.5, score_threshold=0.3,
                                  second_threshold=True)
    assert idx.tolist() == [0, 1] and cls.tolist() == [0, 0]


def test_fast_nms_merge_is_class_major_on_ties(device):
    boxes = torch.tensor([[0.0, 0, 4, 4], [10.0, 10, 14, 14]], device=device)
    scores = torch.tensor([[0.5, 0.7], [0.7, 0.5], [0.7, 0.7]], device=device)
    idx, cls, sc = segops.fast_nms(boxes, scores, 0.5)
    assert list(zip(cls.tolist(), idx.tolist())) == [(0, 1), (1, 0), (2, 0), (2, 1), (0, 0),
                                                     (1, 1)]
    idx, cls, sc = segops.fast_nms(boxes, scores, 0.5, max_detections=3)
    assert list(zip(cls.tolist(), idx.tolist())) == [(0, 1), (1, 0), (2, 0)]
    # cross_class: class = argmax over classes, the first maximum on ties
    idx, cls, sc = segops.fast_nms(boxes, scores, 0.5, cross_class=True)
    assert idx.tolist() == [0, 1] and cls.tolist() == [1, 0] and sc.tolist() == [
        pytest.approx(0.7)] * 2


def test_fast_nms_same_depth_for_every_class(device):
    """D = min(top_k, #prefiltered) for every class, as YOLACT: a class whose scores are low
    still ranks D anchors (kept unless second_threshold)."""
    boxes = torch.tensor([[0.0, 0, 4, 4], [10.0, 10, 14, 14], [20.0, 0, 24, 4]],
                         device=device)
    scores = torch.tensor([[0.9, 0.8, 0.01], [0.0, 0.01, 0.02]], device=device)
    idx, cls, _ = segops.fast_nms(boxes, scores, 0.5, score_threshold=0.05)
    assert list(zip(idx.tolist(), cls.tolist())) == [(0, 0), (1, 0), (1, 1), (0, 1)]
    idx, cls, _ = segops.fast_nms(boxes, scores, 0.5, score_threshold=0.05, top_k=1)
    assert list(zip(idx.tolist(), cls.tolist())) == [(0, 0), (1, 1)]
    idx, cls, _ = segops.fast_nms(boxes, scores, 0.5, score_threshold=0.05,
                                  second_threshold=True)
    assert list(zip(idx.tolist(), cls.tolist())) == [(0, 0), (1, 0)]


def test_fast_nms_suppressed_boxes_still_suppress(device):
    """m_j is over every higher-ranked box, suppressed or not, in every class separately."""
    boxes = torch.tensor(CHAIN + [[100.0, 100, 110, 110]], device=device)
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.6, 0.7, 0.8, 0.9]], device=device)
    idx, cls, sc = segops.fast_nms(boxes, scores, 0.5)
    assert list(zip(idx.tolist(), cls.tolist())) == [(0, 0), (3, 1), (2, 1), (3, 0)]
    # greedy NMS on the same classes keeps C in class 0 and A in class 1
    keep = segops.batched_nms(boxes.repeat(2, 1), scores.reshape(-1),
                              torch.tensor([0] * 4 + [1] * 4, device=device), 0.5)
    assert sorted(keep.tolist()) == [0, 2, 3, 4, 6, 7]


@pytest.mark.parametrize("cc", [False, True])
def test_fast_nms_padded(device, cc):
    boxes = torch.tensor(CHAIN + [[40.0, 40, 50, 50]], device=device, dtype=torch.float64)
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.95]], device=device,
                          dtype=torch.float64)
    idx, cls, sc = segops.fast_nms(boxes, scores, 0.5, cross_class=cc)
    n = idx.numel()
    assert n == (2 if cc else 4)
    for cap in (0, 1, n, n + 3):
        kw = dict(top_k=cap) if cc else dict(max_detections=cap)
        if cc and cap < n:
            continue  # with cross_class, top_k also limits the candidates
        out = segops.fast_nms(boxes, scores, 0.5, cross_class=cc, padded=True, **kw)
        assert len(out) == 4
        p_idx, p_cls, p_sc, count = out
        m = min(n, cap)
        assert p_idx.shape == p_cls.shape == p_sc.shape == (cap,)
        assert p_sc.dtype == torch.float64 and count.dtype == torch.int64 and count.shape == ()
        assert int(count) == m
        assert p_idx[:m].tolist() == idx[:m].tolist() and p_idx[m:].tolist() == [-1] * (cap - m)
        assert p_cls[:m].tolist() == cls[:m].tolist() and p_cls[m:].tolist() == [-1] * (cap - m)
        assert p_sc[:m].tolist() == sc[:m].tolist() and p_sc[m:].tolist() == [0.0] * (cap - m)
