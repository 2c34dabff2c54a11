"""Suppression (SPEC §2): nms, batched_nms, fast_nms (YOLACT), matrix_nms (SOLOv2).

Layout of this file:
  1. problem generation (hypothesis strategies) and helpers
  2. the reference against naive scalar transliterations of the spec
  3. the kernels against the reference: every dtype, every device, exact and padded forms
  4. hand-built cases: the Fast NMS chain, IoU exactly at / just above the threshold, the
     threshold comparisons, non-finite boxes, NaN scores, ties, class handling
  5. empty inputs, the bad-input table
  6. opcheck, torch.compile
  7. CUDA only: parity with CPU, no host synchronisation in the padded forms
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
import pytest
import torch
from hypothesis import given, note
from hypothesis import strategies as st

import segops

# the module (segops.reference re-exports its functions, `nms` among them)
ref = importlib.import_module("segops.reference.nms")

ALL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
HALF_DTYPES = (torch.float16, torch.bfloat16)
INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
NONFINITE = (math.nan, math.inf, -math.inf)
BOX_KINDS = ("random", "dup", "nested", "shifted", "zero", "inverted", "nonfinite", "large")

# matrix_nms: the kernels' exp may differ from torch's by an ulp or two; the half types round
# a float32 product once.
MATRIX_TOL = {
    torch.float64: dict(rtol=1e-12, atol=1e-14),
    torch.float32: dict(rtol=4e-6, atol=1e-7),
    torch.float16: dict(rtol=1e-3, atol=1e-6),
    torch.bfloat16: dict(rtol=8e-3, atol=1e-6),
}


# ======================================================================================
# 1. Problems
# ======================================================================================


def _coord(lo: float, hi: float):
    """Whole, half and arbitrary coordinates: exact ties in IoU and in the IoU threshold."""
    options = [st.integers(math.ceil(lo), math.floor(hi)).map(float),
               st.integers(math.ceil(2 * lo), math.floor(2 * hi)).map(lambda v: v / 2),
               st.floats(lo, hi, allow_nan=False, allow_infinity=False, width=32)]
    return st.one_of(options)


@st.composite
def box_list(draw, min_n: int = 0, max_n: int = 12, kinds: Sequence[str] = BOX_KINDS,
             extent: float = 24.0) -> List[Tuple[float, float, float, float]]:
    """Boxes that overlap a lot: duplicates, nested and shifted copies of earlier boxes,
    zero-area, inverted, non-finite and far-away large boxes."""
    n = draw(st.integers(min_n, max_n))
    boxes: List[Tuple[float, float, float, float]] = []
    for _ in range(n):
        kind = draw(st.sampled_from(kinds))
        if kind in ("dup", "nested", "shifted") and not boxes:
            kind = "random"
        if kind == "random":
            x1, y1 = draw(_coord(0, extent)), draw(_coord(0, extent))
            box = (x1, y1, x1 + draw(_coord(0.5, extent / 2)), y1 + draw(_coord(0.5, extent / 2)))
        elif kind == "dup":
            box = draw(st.sampled_from(boxes))
        elif kind == "nested":
            x1, y1, x2, y2 = draw(st.sampled_from(boxes))
            fx = sorted(draw(st.lists(st.sampled_from([0, 0.25, 0.5, 0.75, 1]), min_size=2,
                                      max_size=2)))
            fy = sorted(draw(st.lists(st.sampled_from([0, 0.25, 0.5, 0.75, 1]), min_size=2,
                                      max_size=2)))
            box = (x1 + fx[0] * (x2 - x1), y1 + fy[0] * (y2 - y1),
                   x1 + fx[1] * (x2 - x1), y1 + fy[1] * (y2 - y1))
        elif kind == "shifted":
            x1, y1, x2, y2 = draw(st.sampled_from(boxes))
            dx, dy = draw(_coord(-3, 3)), draw(_coord(-3, 3))
            box = (x1 + dx, y1 + dy, x2 + dx + draw(_coord(-1, 1)), y2 + dy)
        elif kind == "zero":
            x1, y1 = draw(_coord(0, extent)), draw(_coord(0, extent))
            which = draw(st.sampled_from(["w", "h", "both"]))
            box = (x1, y1, x1 if which != "h" else x1 + draw(_coord(0.5, extent / 2)),
                   y1 if which != "w" else y1 + draw(_coord(0.5, extent / 2)))
        elif kind == "inverted":
            x1, y1 = draw(_coord(0, extent)), draw(_coord(0, extent))
            w, h = draw(_coord(0.5, extent / 2)), draw(_coord(0.5, extent / 2))
            which = draw(st.sampled_from(["x", "y", "both"]))
            box = (x1, y1, x1 - w if which != "y" else x1 + w, y1 - h if which != "x" else y1 + h)
        elif kind == "nonfinite":
            base = list(boxes[-1]) if boxes and draw(st.booleans()) else [1.0, 2.0, 9.0, 8.0]
            for i in draw(st.sets(st.integers(0, 3), min_size=1)):
                base[i] = draw(st.sampled_from(NONFINITE))
            box = tuple(base)
        else:  # large: far from the origin (float16's range ends at 65504)
            x1, y1 = draw(_coord(30000, 60000)), draw(_coord(30000, 60000))
            box = (x1, y1, x1 + draw(_coord(1, 4000)), y1 + draw(_coord(1, 4000)))
        boxes.append(tuple(float(v) for v in box))
    return boxes


def score_values(allow_nan: bool = True):
    """Scores with ties (a few distinct values, +-0), arbitrary values, and specials."""
    special = [0.0, -0.0, 1.0, -1.0, math.inf, -math.inf] + ([math.nan] if allow_nan else [])
    return st.one_of(
        st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]),
        st.floats(-1, 2, allow_nan=False, width=32),
        st.sampled_from(special),
    )


def thresholds():
    return st.one_of(st.sampled_from([0.0, 0.25, 0.3, 0.5, 0.7, 1.0]),
                     st.floats(0, 1, allow_nan=False))


def as_tensor(values, dtype: torch.dtype, layout: str = "contiguous") -> torch.Tensor:
    """Exact float64 values rounded once to ``dtype``, in a given memory layout."""
    t = torch.tensor(values, dtype=torch.float64).to(dtype)
    if layout == "strided" and t.numel() > 0:  # every other element of a larger tensor
        big = torch.zeros((2 * t.shape[0],) + tuple(t.shape[1:]), dtype=dtype)
        big[::2] = t
        return big[::2]
    if layout == "transposed" and t.dim() == 2:
        return t.T.contiguous().T
    return t


@dataclass
class NmsProblem:
    boxes: torch.Tensor  # [N, 4]
    scores: torch.Tensor  # [N]
    idxs: torch.Tensor  # [N] integers (batched_nms)
    threshold: float
    max_out: int


@st.composite
def nms_problems(draw, dtypes=ALL_DTYPES, max_n: int = 14, kinds=BOX_KINDS, allow_nan=True,
                 max_classes: int = 4):
    boxes = draw(box_list(max_n=max_n, kinds=kinds))
    n = len(boxes)
    box_dtype = draw(st.sampled_from(dtypes))
    score_dtype = draw(st.sampled_from([box_dtype, box_dtype, *dtypes]))
    layout = draw(st.sampled_from(["contiguous", "strided", "transposed"]))
    scores = draw(st.lists(score_values(allow_nan), min_size=n, max_size=n))
    idx_dtype = draw(st.sampled_from(INT_DTYPES))
    lo = 0 if idx_dtype == torch.uint8 else -2
    hi = min(lo + max_classes - 1, torch.iinfo(idx_dtype).max)
    idxs = draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n))
    p = NmsProblem(
        boxes=as_tensor(boxes, box_dtype, layout).reshape(n, 4),
        scores=as_tensor(scores, score_dtype, layout if layout != "transposed" else "strided"),
        idxs=torch.tensor(idxs, dtype=idx_dtype),
        threshold=draw(thresholds()),
        max_out=draw(st.integers(0, n + 2)),
    )
    note(repr(p))
    return p


@dataclass
class FastProblem:
    boxes: torch.Tensor  # [N, 4]
    scores: torch.Tensor  # [C, N]
    kwargs: dict


@st.composite
def fast_problems(draw, dtypes=ALL_DTYPES, max_n: int = 14, max_classes: int = 5,
                  kinds=BOX_KINDS, allow_nan=True):
    boxes = draw(box_list(max_n=max_n, kinds=kinds))
    n = len(boxes)
    many = draw(st.integers(0, 9)) == 0  # sometimes many classes (over fewer boxes)
    C = draw(st.integers(0, 60 if many else max_classes))
    box_dtype = draw(st.sampled_from(dtypes))
    score_dtype = draw(st.sampled_from([box_dtype, box_dtype, *dtypes]))
    value = st.one_of(
        st.sampled_from([0.0, 0.03, 0.05, 0.1, 0.3, 0.5, 0.9]),
        st.floats(0, 1, width=32),
        st.sampled_from([-0.0, -0.5, math.inf] + ([math.nan] if allow_nan else [])),
    )
    rows = draw(st.lists(st.lists(value, min_size=n, max_size=n), min_size=C, max_size=C))
    scores = torch.tensor(rows, dtype=torch.float64).reshape(C, n).to(score_dtype)
    if draw(st.booleans()) and C > 0 and n > 0:  # a transposed [N, C] buffer, as YOLACT has
        scores = scores.T.contiguous().T
    kwargs = dict(
        iou_threshold=draw(thresholds()),
        top_k=draw(st.one_of(st.sampled_from([0, 1, 2, 3, 200]), st.integers(0, n + 1))),
        score_threshold=draw(st.one_of(st.sampled_from([0.05, 0.0, -1.0, 0.3]),
                                       st.floats(0, 1, width=32))),
        max_detections=draw(st.one_of(st.sampled_from([0, 1, 3, 100]),
                                      st.integers(0, 2 * n + 1))),
        cross_class=draw(st.booleans()),
        second_threshold=draw(st.booleans()),
    )
    p = FastProblem(as_tensor(boxes, box_dtype, draw(st.sampled_from(["contiguous", "strided"])))
                    .reshape(n, 4), scores, kwargs)
    note(repr(p))
    return p


@dataclass
class MatrixProblem:
    masks: torch.Tensor  # [N, H, W]
    labels: torch.Tensor  # [N]
    scores: torch.Tensor  # [N]
    kernel: str
    sigma: float


@st.composite
def matrix_problems(draw, dtypes=ALL_DTYPES, max_n: int = 10, max_hw: int = 7):
    n = draw(st.integers(0, max_n))
    H, W = draw(st.integers(1, max_hw)), draw(st.integers(1, max_hw))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    density = draw(st.sampled_from([0.2, 0.5, 0.8]))
    masks = torch.rand(n, H, W, generator=g) < density
    for i in range(n):  # duplicates, near-duplicates, empty and full masks
        kind = draw(st.sampled_from(["random", "random", "dup", "dup", "grow", "empty", "full"]))
        if kind == "dup" and i > 0:
            masks[i] = masks[draw(st.integers(0, i - 1))]
        elif kind == "grow" and i > 0:
            masks[i] = masks[draw(st.integers(0, i - 1))] | (torch.rand(H, W, generator=g) < 0.2)
        elif kind == "empty":
            masks[i] = False
        elif kind == "full":
            masks[i] = True
    mask_dtype = draw(st.sampled_from([torch.bool, torch.uint8, torch.float32, torch.float64,
                                       torch.float16, torch.int32]))
    score_dtype = draw(st.sampled_from(dtypes))
    label_dtype = draw(st.sampled_from([torch.int64, torch.int32, torch.uint8]))
    scores = draw(st.lists(st.one_of(st.sampled_from([0.1, 0.5, 0.9, 1.0]),
                                     st.floats(0, 1, width=32)), min_size=n, max_size=n))
    labels = draw(st.lists(st.integers(0, draw(st.integers(0, 3))), min_size=n, max_size=n))
    p = MatrixProblem(
        masks=masks.to(mask_dtype),
        labels=torch.tensor(labels, dtype=label_dtype),
        scores=torch.tensor(scores, dtype=torch.float64).to(score_dtype),
        kernel=draw(st.sampled_from(["gaussian", "linear"])),
        sigma=draw(st.sampled_from([2.0, 0.5, 3.7])),
    )
    note(repr(p))
    return p


def to(device, *ts):
    return tuple(t.to(device) for t in ts)


def assert_keep_equal(actual: torch.Tensor, expected: torch.Tensor):
    assert actual.dtype == torch.int64
    assert torch.equal(actual.cpu(), expected.cpu()), f"{actual.tolist()} != {expected.tolist()}"


def assert_tuple_equal(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.dtype == e.dtype, (a.dtype, e.dtype)
        assert a.shape == e.shape, (a.shape, e.shape)
        # scores: equal values (also -0.0 vs 0.0 for padding is fine: torch.equal is ==)
        assert torch.equal(a.cpu(), e.cpu()), f"{a.tolist()} != {e.tolist()}"


# ======================================================================================
# 2. The reference against naive scalar transliterations of the spec
# ======================================================================================


def _np(dtype):
    return np.float64 if dtype == torch.float64 else np.float32


def naive_iou(a, b, f) -> float:
    """SPEC §2 IoU of two boxes, one scalar operation at a time in numpy type ``f``."""
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
    """YOLACT's fast_nms / cc_fast_nms in scalar Python (SPEC §2 steps 1-4)."""
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
    """SOLOv2's matrix_nms in float64 scalars, SPEC §2's fixes, input order."""
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


# ======================================================================================
# 3. Kernels against the reference
# ======================================================================================


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


@given(p=matrix_problems())
def test_matrix_nms_matches_reference(device, p):
    out = segops.matrix_nms(*to(device, p.masks, p.labels, p.scores), kernel=p.kernel,
                            sigma=p.sigma)
    assert out.dtype == p.scores.dtype and out.shape == p.scores.shape
    expected = ref.matrix_nms(p.masks, p.labels, p.scores, p.kernel, p.sigma)
    torch.testing.assert_close(out.cpu(), expected, **MATRIX_TOL[p.scores.dtype])
    assert torch.all(out.cpu().double() <= p.scores.double())  # decays are <= 1


def _clustered_boxes(n: int, clusters: int, seed: int, spread: float = 4.0,
                     size_range: float = 20.0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(clusters, 2, generator=g) * 1000
    c = centres[torch.randint(0, clusters, (n,), generator=g)]
    xy = c + torch.randn(n, 2, generator=g) * spread
    wh = 30 + torch.rand(n, 2, generator=g) * size_range
    return torch.cat([xy, xy + wh], 1), torch.rand(n, generator=g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_nms_large(device, dtype):
    """Many boxes (the kernels' blocked / parallel paths) against the reference."""
    # tight clusters: few boxes kept, so the reference's loop stays short
    boxes, scores = _clustered_boxes(70000, 300, seed=1, spread=1.0, size_range=5.0)
    boxes, scores = boxes.to(dtype), scores.to(dtype)
    expected = ref.nms(boxes, scores, 0.5)
    assert 250 <= expected.numel() < 5000
    assert_keep_equal(segops.nms(*to(device, boxes, scores), 0.5), expected)
    if dtype != torch.float32:
        return  # (the reference's batched loop is the slow part of this file)
    idxs = torch.arange(70000) % 7
    expected = ref.batched_nms(boxes, scores, idxs, 0.5)
    assert_keep_equal(segops.batched_nms(*to(device, boxes, scores, idxs), 0.5), expected)
    keep, count = segops.batched_nms(*to(device, boxes, scores, idxs), 0.5, max_out=100)
    assert int(count) == 100 and torch.equal(keep.cpu(), expected[:100])


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
# 4. Hand-built cases
# ======================================================================================

# IoU(A, B) = 70/130, IoU(B, C) = 70/130 (both > 0.5), IoU(A, C) = 40/160 = 0.25.
CHAIN = [[0.0, 0.0, 10.0, 10.0], [3.0, 0.0, 13.0, 10.0], [6.0, 0.0, 16.0, 10.0]]


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


# matrix_nms: hand-computed decays ------------------------------------------------------


def _rect_masks(rects, H=4, W=8):
    m = torch.zeros(len(rects), H, W, dtype=torch.bool)
    for i, (x1, y1, x2, y2) in enumerate(rects):
        m[i, y1:y2, x1:x2] = True
    return m


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


# ======================================================================================
# 5. Empty inputs, bad input
# ======================================================================================


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_empty_inputs(device, dtype):
    b = torch.zeros(0, 4, dtype=dtype, device=device)
    s = torch.zeros(0, dtype=dtype, device=device)
    i = torch.zeros(0, dtype=torch.int64, device=device)
    for keep in (segops.nms(b, s, 0.5), segops.batched_nms(b, s, i, 0.5)):
        assert keep.shape == (0,) and keep.dtype == torch.int64 and keep.device.type == device
    for keep, count in (segops.nms(b, s, 0.5, max_out=3), segops.batched_nms(b, s, i, 0.5, 3)):
        assert keep.tolist() == [-1, -1, -1] and int(count) == 0 and count.dtype == torch.int64
    for C, N in ((0, 0), (3, 0), (0, 5)):
        boxes = torch.rand(N, 4, dtype=torch.float64).to(dtype).to(device)
        scores = torch.ones(C, N, dtype=dtype, device=device)
        for cc in (False, True):
            idx, cls, sc = segops.fast_nms(boxes, scores, cross_class=cc)
            assert idx.shape == cls.shape == sc.shape == (0,)
            assert idx.dtype == cls.dtype == torch.int64 and sc.dtype == dtype
            idx, cls, sc, count = segops.fast_nms(boxes, scores, cross_class=cc, padded=True,
                                                  top_k=4, max_detections=4)
            assert idx.tolist() == cls.tolist() == [-1] * 4 and sc.tolist() == [0.0] * 4
            assert int(count) == 0 and sc.dtype == dtype
    # top_k = 0 or max_detections = 0 with inputs
    boxes = torch.tensor([[0.0, 0, 1, 1]], dtype=dtype, device=device)
    scores = torch.ones(2, 1, dtype=dtype, device=device)
    assert segops.fast_nms(boxes, scores, top_k=0)[0].numel() == 0
    assert segops.fast_nms(boxes, scores, max_detections=0)[0].numel() == 0
    assert segops.fast_nms(boxes, scores)[0].numel() == 2
    out = segops.matrix_nms(torch.zeros(0, 3, 3, dtype=torch.bool, device=device),
                            torch.zeros(0, dtype=torch.int64, device=device), s)
    assert out.shape == (0,) and out.dtype == dtype
    # zero-size masks: every IoU is 0, nothing decays
    sc = torch.tensor([0.5, 0.75], dtype=dtype, device=device)
    out = segops.matrix_nms(torch.zeros(2, 0, 4, dtype=torch.bool, device=device),
                            torch.zeros(2, dtype=torch.int64, device=device), sc)
    assert torch.equal(out, sc)


_B = torch.tensor([[0.0, 0, 4, 4], [1.0, 1, 5, 5]])
_S = torch.tensor([0.9, 0.8])
_I = torch.tensor([0, 1])
_M = torch.ones(2, 3, 3, dtype=torch.bool)


def _meta(t):
    return t.to("meta")


# (function, args, kwargs, exception, message regex)
BAD_INPUTS = [
    # nms
    (segops.nms, (_B[:, :3], _S, 0.5), {}, ValueError, "boxes", "nms-boxes-Nx3"),
    (segops.nms, (_B[0], _S[:1], 0.5), {}, ValueError, "boxes", "nms-boxes-1d"),
    (segops.nms, (_B[None], _S, 0.5), {}, ValueError, "boxes", "nms-boxes-3d"),
    (segops.nms, (_B.long(), _S, 0.5), {}, TypeError, "boxes", "nms-int-boxes"),
    (segops.nms, (_B.bool(), _S, 0.5), {}, TypeError, "boxes", "nms-bool-boxes"),
    (segops.nms, (_B, _S.long(), 0.5), {}, TypeError, "scores", "nms-int-scores"),
    (segops.nms, (_B, _S[:1], 0.5), {}, ValueError, "scores", "nms-scores-length"),
    (segops.nms, (_B, _S[None], 0.5), {}, ValueError, "scores", "nms-scores-2d"),
    (segops.nms, (_B, _S, 0.5), {"max_out": -1}, ValueError, "max_out", "nms-max-out"),
    (segops.nms, (_B, _meta(_S), 0.5), {}, ValueError, "device", "nms-device"),
    (segops.nms, (_B.tolist(), _S, 0.5), {}, TypeError, "boxes", "nms-list-boxes"),
    # batched_nms
    (segops.batched_nms, (_B[:, :3], _S, _I, 0.5), {}, ValueError, "boxes", "b-boxes"),
    (segops.batched_nms, (_B.int(), _S, _I, 0.5), {}, TypeError, "boxes", "b-int-boxes"),
    (segops.batched_nms, (_B, _S.int(), _I, 0.5), {}, TypeError, "scores", "b-int-scores"),
    (segops.batched_nms, (_B, _S[:1], _I, 0.5), {}, ValueError, "scores", "b-scores"),
    (segops.batched_nms, (_B, _S, _I[:1], 0.5), {}, ValueError, "idxs", "b-idxs-length"),
    (segops.batched_nms, (_B, _S, _I[None], 0.5), {}, ValueError, "idxs", "b-idxs-2d"),
    (segops.batched_nms, (_B, _S, _I, 0.5), {"max_out": -2}, ValueError, "max_out",
     "b-max-out"),
    (segops.batched_nms, (_B, _S, _meta(_I), 0.5), {}, ValueError, "device", "b-device-idxs"),
    (segops.batched_nms, (_meta(_B), _S, _I, 0.5), {}, ValueError, "device", "b-device-boxes"),
    # fast_nms
    (segops.fast_nms, (_B[:, :2], _S[None]), {}, ValueError, "boxes", "f-boxes"),
    (segops.fast_nms, (_B.long(), _S[None]), {}, TypeError, "boxes", "f-int-boxes"),
    (segops.fast_nms, (_B, _S), {}, ValueError, "scores", "f-scores-1d"),
    (segops.fast_nms, (_B, _S[None, :1]), {}, ValueError, "scores", "f-scores-length"),
    (segops.fast_nms, (_B, _S[None, None]), {}, ValueError, "scores", "f-scores-3d"),
    (segops.fast_nms, (_B, _S[None].long()), {}, TypeError, "scores", "f-int-scores"),
    (segops.fast_nms, (_B, _S[None]), {"top_k": -1}, ValueError, "top_k", "f-top-k"),
    (segops.fast_nms, (_B, _S[None]), {"max_detections": -1}, ValueError, "max_detections",
     "f-max-det"),
    (segops.fast_nms, (_B, _meta(_S[None])), {}, ValueError, "device", "f-device"),
    # matrix_nms
    (segops.matrix_nms, (_M[0], _I, _S), {}, ValueError, "masks", "m-masks-2d"),
    (segops.matrix_nms, (_M[None], _I, _S), {}, ValueError, "masks", "m-masks-4d"),
    (segops.matrix_nms, (_M, _I[:1], _S), {}, ValueError, "labels", "m-labels-length"),
    (segops.matrix_nms, (_M, _I, _S[:1]), {}, ValueError, "scores", "m-scores-length"),
    (segops.matrix_nms, (_M, _I, _S.long()), {}, TypeError, "scores", "m-int-scores"),
    (segops.matrix_nms, (_M, _I, _S), {"kernel": "box"}, ValueError, "kernel", "m-kernel"),
    (segops.matrix_nms, (_M, _I, _meta(_S)), {}, ValueError, "device", "m-device"),
]


@pytest.mark.parametrize("fn,args,kwargs,exc,match",
                         [pytest.param(*c[:5], id=c[5]) for c in BAD_INPUTS])
def test_bad_input(fn, args, kwargs, exc, match):
    with pytest.raises(exc, match=f"(?i){match}"):
        fn(*args, **kwargs)


@pytest.mark.parametrize("fn,args,kwargs,exc,match",
                         [pytest.param(*c[:5], id=c[5]) for c in BAD_INPUTS])
def test_bad_input_reference(fn, args, kwargs, exc, match):
    """The references validate as the ops do (they run where the ops are benchmarked)."""
    fn = getattr(ref, fn.__name__)
    with pytest.raises(exc, match=f"(?i){match}"):
        fn(*args, **kwargs)


# ======================================================================================
# 6. opcheck, torch.compile
# ======================================================================================


def _small(device, dtype=torch.float32):
    boxes = torch.tensor(CHAIN + [[40.0, 40, 50, 50], [41.0, 41, 50, 50]], dtype=dtype,
                         device=device)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95, 0.6], dtype=dtype, device=device)
    return boxes, scores


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck(device, dtype):
    boxes, scores = _small(device, dtype)
    idxs = torch.tensor([0, 0, 1, 1, 1], device=device)
    cs = torch.stack([scores, scores.flip(0)])
    for max_out in (-1, 3):
        torch.library.opcheck(torch.ops.segops.nms.default, (boxes, scores, 0.5, max_out))
        torch.library.opcheck(torch.ops.segops.batched_nms.default,
                              (boxes, scores, idxs, 0.5, max_out))
    for cc in (False, True):
        torch.library.opcheck(torch.ops.segops.fast_nms.default,
                              (boxes, cs, 0.5, 4, 0.05, 3, cc, False))
    masks = _rect_masks([(0, 0, 4, 4), (1, 0, 4, 4), (2, 0, 6, 4), (0, 0, 0, 0), (0, 0, 8, 4)])
    labels = torch.tensor([0, 0, 0, 1, 0])
    for kernel in ("gaussian", "linear"):
        torch.library.opcheck(torch.ops.segops.matrix_nms.default,
                              (masks.to(device), labels.to(device), scores, kernel, 2.0))


def test_torch_compile_fullgraph_padded_forms(device):
    """The padded forms trace into one graph (no data-dependent shapes, no graph break)."""

    def f(boxes, scores, idxs, cs, masks, labels):
        k1, n1 = segops.nms(boxes, scores, 0.5, max_out=4)
        k2, n2 = segops.batched_nms(boxes, scores, idxs, 0.5, max_out=4)
        fi, fc, fs, fn = segops.fast_nms(boxes, cs, 0.5, 4, 0.05, 3, padded=True)
        gi, gc, gs, gn = segops.fast_nms(boxes, cs, 0.5, 4, 0.05, 3, cross_class=True,
                                         padded=True)
        d = segops.matrix_nms(masks, labels, scores, "linear")
        return k1 + 1, n1 * 2, k2, n2, fi, fc, fs * 2, fn, gi, gc, gs, gn, d * 3

    boxes, scores = _small(device)
    idxs = torch.tensor([0, 0, 1, 1, 1], device=device)
    cs = torch.stack([scores, scores.flip(0)])
    masks = _rect_masks([(0, 0, 4, 4), (1, 0, 4, 4), (2, 0, 6, 4), (0, 0, 0, 0),
                         (0, 0, 8, 4)]).to(device)
    labels = torch.tensor([0, 0, 0, 1, 0], device=device)
    args = (boxes, scores, idxs, cs, masks, labels)
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    eager, traced = f(*args), compiled(*args)
    assert eager[0].tolist() == [4, 1, 3, 0]  # keep [3, 0, 2] + 1, padding -1 + 1
    assert int(eager[1]) == 6
    assert int(eager[7]) > 0 and (eager[12] < scores * 3).any()
    for a, b in zip(traced, eager):
        assert a.dtype == b.dtype and torch.equal(a, b)
    # a second problem of another size goes through the compiled function too
    args2 = (boxes[:4], scores[:4], idxs[:4], cs[:, :4], masks[:4], labels[:4])
    for a, b in zip(compiled(*args2), f(*args2)):
        assert torch.equal(a, b)


# ======================================================================================
# 7. CUDA only
# ======================================================================================


@pytest.mark.cuda
@given(p=nms_problems(max_n=30))
def test_cuda_nms_matches_cpu(p):
    args = (p.boxes, p.scores)
    assert_keep_equal(segops.nms(*to("cuda", *args), p.threshold),
                      segops.nms(*args, p.threshold))
    assert_tuple_equal(segops.nms(*to("cuda", *args), p.threshold, p.max_out),
                       segops.nms(*args, p.threshold, p.max_out))
    args = (p.boxes, p.scores, p.idxs)
    assert_keep_equal(segops.batched_nms(*to("cuda", *args), p.threshold),
                      segops.batched_nms(*args, p.threshold))
    assert_tuple_equal(segops.batched_nms(*to("cuda", *args), p.threshold, p.max_out),
                       segops.batched_nms(*args, p.threshold, p.max_out))


@pytest.mark.cuda
@given(p=fast_problems(max_n=30))
def test_cuda_fast_nms_matches_cpu(p):
    for padded in (False, True):
        cpu = segops.fast_nms(p.boxes, p.scores, **p.kwargs, padded=padded)
        gpu = segops.fast_nms(*to("cuda", p.boxes, p.scores), **p.kwargs, padded=padded)
        assert_tuple_equal(gpu, cpu)


@pytest.mark.cuda
@given(p=matrix_problems(max_n=20, max_hw=12))
def test_cuda_matrix_nms_matches_cpu(p):
    cpu = segops.matrix_nms(p.masks, p.labels, p.scores, p.kernel, p.sigma)
    gpu = segops.matrix_nms(*to("cuda", p.masks, p.labels, p.scores), p.kernel, p.sigma)
    torch.testing.assert_close(gpu.cpu(), cpu, **MATRIX_TOL[p.scores.dtype])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_cuda_large_matches_cpu(dtype):
    boxes, scores = _clustered_boxes(20000, 200, seed=7)
    boxes, scores = boxes.to(dtype), scores.to(dtype)
    idxs = torch.arange(20000) % 13
    assert torch.equal(segops.nms(*to("cuda", boxes, scores), 0.6).cpu(),
                       segops.nms(boxes, scores, 0.6))
    assert torch.equal(segops.batched_nms(*to("cuda", boxes, scores, idxs), 0.6).cpu(),
                       segops.batched_nms(boxes, scores, idxs, 0.6))
    g = torch.Generator().manual_seed(8)
    cs = (torch.rand(80, 20000, generator=g) ** 4).to(dtype)
    for cc in (False, True):
        assert_tuple_equal(segops.fast_nms(*to("cuda", boxes, cs), cross_class=cc),
                           segops.fast_nms(boxes, cs, cross_class=cc))


@pytest.mark.cuda
def test_cuda_padded_forms_do_not_synchronize():
    boxes, scores = _clustered_boxes(3000, 50, seed=9)
    boxes, scores = boxes.cuda(), scores.cuda()
    idxs = (torch.arange(3000) % 5).cuda()
    cs = torch.stack([scores, scores.flip(0)])
    masks = _rect_masks([(0, 0, 4, 4), (1, 0, 4, 4), (2, 0, 6, 4)]).cuda()
    labels = torch.zeros(3, dtype=torch.int64, device="cuda")
    torch.cuda.synchronize()
    prev = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = (segops.nms(boxes, scores, 0.5, max_out=100),
               segops.batched_nms(boxes, scores, idxs, 0.5, max_out=100),
               segops.fast_nms(boxes, cs, padded=True),
               segops.fast_nms(boxes, cs, cross_class=True, padded=True),
               segops.matrix_nms(masks, labels, scores[:3]))
    finally:
        torch.cuda.set_sync_debug_mode(prev)
    assert int(out[0][1]) > 0 and int(out[2][3]) > 0
    assert torch.equal(out[0][0].cpu(), segops.nms(boxes.cpu(), scores.cpu(), 0.5, 100)[0])


@pytest.mark.cuda
def test_cuda_device_mismatch():
    b, s = _B.cuda(), _S.cuda()
    with pytest.raises(ValueError, match="device"):
        segops.nms(b, _S, 0.5)
    with pytest.raises(ValueError, match="device"):
        segops.batched_nms(b, s, _I, 0.5)
    with pytest.raises(ValueError, match="device"):
        segops.fast_nms(_B, s[None])
    with pytest.raises(ValueError, match="device"):
        segops.matrix_nms(_M.cuda(), _I, s)
