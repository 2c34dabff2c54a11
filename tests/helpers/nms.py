"""Shared helpers for the suppression tests (docs/ops/nms.md: nms, batched_nms, fast_nms,
matrix_nms): dtypes and tolerances, hypothesis strategies for the three problem kinds,
assertions, and small fixed inputs. Imported by tests/ops/nms/ as ``helpers.nms`` (conftest
puts tests/ on sys.path).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
from hypothesis import note
from hypothesis import strategies as st


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
# Problems
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


# ======================================================================================
# Assertions and fixed inputs
# ======================================================================================


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


def _clustered_boxes(n: int, clusters: int, seed: int, spread: float = 4.0,
                     size_range: float = 20.0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(clusters, 2, generator=g) * 1000
    c = centres[torch.randint(0, clusters, (n,), generator=g)]
    xy = c + torch.randn(n, 2, generator=g) * spread
    wh = 30 + torch.rand(n, 2, generator=g) * size_range
    return torch.cat([xy, xy + wh], 1), torch.rand(n, generator=g)


# IoU(A, B) = 70/130, IoU(B, C) = 70/130 (both > 0.5), IoU(A, C) = 40/160 = 0.25.
CHAIN = [[0.0, 0.0, 10.0, 10.0], [3.0, 0.0, 13.0, 10.0], [6.0, 0.0, 16.0, 10.0]]


def _rect_masks(rects, H=4, W=8):
    m = torch.zeros(len(rects), H, W, dtype=torch.bool)
    for i, (x1, y1, x2, y2) in enumerate(rects):
        m[i, y1:y2, x1:x2] = True
    return m


def _small(device, dtype=torch.float32):
    boxes = torch.tensor(CHAIN + [[40.0, 40, 50, 50], [41.0, 41, 50, 50]], dtype=dtype,
                         device=device)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95, 0.6], dtype=dtype, device=device)
    return boxes, scores


_B = torch.tensor([[0.0, 0, 4, 4], [1.0, 1, 5, 5]])
_S = torch.tensor([0.9, 0.8])
_I = torch.tensor([0, 1])
_M = torch.ones(2, 3, 3, dtype=torch.bool)
