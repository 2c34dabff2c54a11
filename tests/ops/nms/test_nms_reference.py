"""Suppression (docs/ops/nms.md): the references against naive scalar transliterations of the
spec, and the reference nms's speed.
"""

from __future__ import annotations

import math
from typing import List

import numpy as np
import torch
from hypothesis import given

from helpers.nms import fast_problems, matrix_problems, nms_problems, ref


def _np(dtype):
    return np.float64 if dtype == torch.float64 else np.float32


def naive_iou(a, b, f) -> float:
    """docs/ops/nms.md IoU of two boxes, one scalar operation at a time in numpy type ``f``."""
    if not all(math.isfinite(float(v)) for v in (*a, *b)):
        return f(0)
    ax1, ay1, ax2, ay2 = (f(v) for v in a)
    bx1, by1, bx2, by2 = (f(v) for v in b)
    area_a = (ax2 - ax1) * (ay2 - ay1)
    area_b = (bx2 - bx1) * (by2 - by1)
    w = max(min(ax2, bx2) - max(ax1, bx1), f(0))
    h = max(min(ay2, by2) - max(ay1, by1), f(0))
    inter = w * h
    union = area_a + area_b - inter
    return inter / union if union > 0 else f(0)


def naive_greedy(boxes: torch.Tensor, scores: torch.Tensor, t: float, idxs=None) -> List[int]:
    """torchvision's CPU nms kernel, with non-finite boxes and NaN scores absent."""
    f = _np(boxes.dtype)
    b = boxes.to(torch.float64).tolist()
    s = scores.to(torch.float64).tolist()
    c = idxs.tolist() if idxs is not None else [0] * len(b)
    order = [i for i in range(len(b)) if all(math.isfinite(v) for v in b[i]) and s[i] == s[i]]
    order.sort(key=lambda i: (-s[i], i))
    keep, suppressed = [], set()
    with np.errstate(all="ignore"):
        for p, i in enumerate(order):
            if i in suppressed:
                continue
            keep.append(i)
            for j in order[p + 1:]:
                if c[j] == c[i] and float(naive_iou(b[i], b[j], f)) > t:
                    suppressed.add(j)
    return keep


def naive_fast_nms(boxes, scores, iou_threshold, top_k, score_threshold, max_detections,
                   cross_class, second_threshold):
    """YOLACT's fast_nms / cc_fast_nms in scalar Python (docs/ops/nms.md steps 1-4)."""
    f = _np(boxes.dtype)
    C, N = scores.shape
    b = boxes.to(torch.float64).tolist()
    s = scores.to(torch.float64).tolist()
    iou_t = float(f(iou_threshold))  # YOLACT compares tensors: the threshold in their dtype
    st_ = float(torch.tensor(score_threshold, dtype=torch.float64).to(scores.dtype))
    if C == 0 or N == 0:
        return [], [], []

    def best(n):
        col = [s[c][n] for c in range(C)]
        if any(v != v for v in col):
            return math.nan, 0
        m = max(col)
        return m, col.index(m)

    pre = [n for n in range(N) if best(n)[0] > st_ and all(math.isfinite(v) for v in b[n])]

    def column_max(ranked, j):
        m = f(0)
        for i in range(j):
            m = max(m, naive_iou(b[ranked[i]], b[ranked[j]], f))
        return float(m)

    with np.errstate(all="ignore"):
        if cross_class:
            ranked = sorted(pre, key=lambda n: (-best(n)[0], n))[:top_k]
            out = []
            for j, n in enumerate(ranked):
                if j > 0 and column_max(ranked, j) > iou_t:
                    continue
                if second_threshold and not best(n)[0] > st_:
                    continue
                out.append((n, best(n)[1], best(n)[0]))
        else:
            D = min(top_k, len(pre))
            dets = []
            for c in range(C):
                ranked = sorted(pre, key=lambda n: (-s[c][n], n))[:D]
                for j, n in enumerate(ranked):
                    if j > 0 and column_max(ranked, j) > iou_t:
                        continue
                    if second_threshold and not s[c][n] > st_:
                        continue
                    dets.append((n, c, s[c][n]))
            out = sorted(dets, key=lambda d: -d[2])[:max_detections]  # stable: class-major
    return [d[0] for d in out], [d[1] for d in out], [d[2] for d in out]


def naive_matrix_nms(masks, labels, scores, kernel, sigma) -> List[float]:
    """SOLOv2's matrix_nms in float64 scalars, docs/ops/nms.md's fixes, input order."""
    N = masks.shape[0]
    m = [set(torch.nonzero(masks[i].reshape(-1) != 0).flatten().tolist()) for i in range(N)]
    s = scores.to(torch.float64).tolist()
    lab = labels.tolist()
    order = sorted(range(N), key=lambda i: (-s[i], i))

    def iou(p, q):  # ranks
        a, b = m[order[p]], m[order[q]]
        union = len(a | b)
        return len(a & b) / union if union else 0.0

    def L(p, q):
        return lab[order[p]] == lab[order[q]]

    comp = [max([iou(k, i) for k in range(i) if L(k, i)], default=0.0) for i in range(N)]
    out = [0.0] * N
    for j in range(N):
        terms = []
        for i in range(N):
            x = iou(i, j) if i < j and L(i, j) else 0.0
            if kernel == "gaussian":
                terms.append(math.exp(-sigma * x * x) / math.exp(-sigma * comp[i] ** 2))
            elif comp[i] != 1:
                terms.append((1 - x) / (1 - comp[i]))
        out[order[j]] = s[order[j]] * min(terms)
    return out


@given(p=nms_problems(max_n=10))
def test_reference_nms_matches_naive(p):
    expected = naive_greedy(p.boxes, p.scores, p.threshold)
    assert ref.nms(p.boxes, p.scores, p.threshold).tolist() == expected
    expected = naive_greedy(p.boxes, p.scores, p.threshold, p.idxs)
    assert ref.batched_nms(p.boxes, p.scores, p.idxs, p.threshold).tolist() == expected


@given(p=fast_problems(max_n=10))
def test_reference_fast_nms_matches_naive(p):
    kw = dict(p.kwargs)
    idx, cls, sc = ref.fast_nms(p.boxes, p.scores, **kw)
    e_idx, e_cls, e_sc = naive_fast_nms(p.boxes, p.scores, **kw)
    assert idx.tolist() == e_idx
    assert cls.tolist() == e_cls
    assert sc.to(torch.float64).tolist() == e_sc


@given(p=matrix_problems(dtypes=(torch.float64,)))
def test_reference_matrix_nms_matches_naive(p):
    out = ref.matrix_nms(p.masks, p.labels, p.scores, p.kernel, p.sigma)
    expected = torch.tensor(naive_matrix_nms(p.masks, p.labels, p.scores, p.kernel, p.sigma),
                            dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-14)


def test_reference_nms_is_fast_enough():
    """The benchmarks time the reference: 10k boxes must take seconds, not minutes."""
    import time

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(10000, 2, generator=g) * 1000
    boxes = torch.cat([xy, xy + torch.rand(10000, 2, generator=g) * 100], 1)
    t0 = time.perf_counter()
    keep = ref.nms(boxes, torch.rand(10000, generator=g), 0.5)
    assert time.perf_counter() - t0 < 30
    assert 0 < keep.numel() < 10000
