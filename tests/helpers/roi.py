"""Shared helpers for the roi_align / roi_pool tests (docs/ops/roi.md): dtypes and tolerances,
the `Problem` description and its hypothesis strategies, the reference runners and the
assertions. Imported by tests/ops/roi/ as ``helpers.roi`` (conftest puts tests/ on sys.path).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from hypothesis import note
from hypothesis import strategies as st

from segops.reference import roi as ref


HALF_DTYPES = (torch.float16, torch.bfloat16)
ALL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
FULL_DTYPES = (torch.float32, torch.float64)
LAYOUTS = ("contiguous", "channels_last", "transposed", "strided")
BOX_KINDS = ("inside", "any", "zero", "outside", "nonfinite", "large")
SCALES = (1.0, 0.5, 0.25, 2.0, 1.0 / 3.0, 0.7)
SAMPLING_RATIOS = (-1, 0, 1, 2, 3)

# Forward/backward tolerances against the reference. float32/float64: the kernels follow
# the reference's order of operations, so only a rounding or two separates them. Half
# types: the kernel rounds the float32 result once; the reference is left in float32.
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}


def ref_dtype(dtype: torch.dtype) -> torch.dtype:
    """The reference runs half-type problems in float32 on the upcast inputs."""
    return torch.float32 if dtype in HALF_DTYPES else dtype


@contextlib.contextmanager
def deterministic(on: bool):
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(on)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


# ======================================================================================
# Problems
# ======================================================================================


@dataclass
class Problem:
    dtype: torch.dtype  # of the features
    box_dtype: torch.dtype  # of the boxes (the feature dtype, or float32 for half types)
    shape: Tuple[int, int, int, int]
    output_size: object  # int or (h, w)
    scale: float
    sampling_ratio: int
    aligned: bool
    boxes: List[Tuple[float, float, float, float]]  # image coordinates
    batch: List[int]
    fmt: str  # "tensor" ([K, 5]) or "list" (list[Tensor[L_i, 4]])
    layout: str
    seed: int

    @property
    def pooled(self) -> Tuple[int, int]:
        o = self.output_size
        return (o, o) if isinstance(o, int) else tuple(o)

    def features(self, device="cpu", dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Random features with the problem's memory layout; `dtype` converts after
        rounding to the problem's dtype (so a half problem upcasts exactly)."""
        N, C, H, W = self.shape
        g = torch.Generator().manual_seed(self.seed)
        dims = {"transposed": (N, C, W, H), "strided": (N, C, H, 2 * W)}.get(self.layout,
                                                                             (N, C, H, W))
        base = torch.randn(dims, generator=g, dtype=torch.float64).to(self.dtype)
        base = base.to(dtype or self.dtype).to(device)
        if self.layout == "transposed":
            return base.transpose(2, 3)
        if self.layout == "strided":
            return base[..., ::2]
        if self.layout == "channels_last":
            return base.contiguous(memory_format=torch.channels_last)
        return base

    def _box_table(self, dtype) -> torch.Tensor:
        t = torch.tensor(self.boxes, dtype=torch.float64).reshape(-1, 4).to(self.box_dtype)
        return t.to(dtype or self.box_dtype)

    def boxes_arg(self, device="cpu", dtype: Optional[torch.dtype] = None):
        """The boxes in the problem's format (what the public functions take)."""
        t = self._box_table(dtype).to(device)
        if self.fmt == "list":
            b = torch.tensor(self.batch, dtype=torch.int64)
            return [t[(b == i).nonzero().flatten().to(device)] for i in range(self.shape[0])]
        return torch.cat([torch.tensor(self.batch, dtype=t.dtype, device=device)[:, None], t], 1)

    def rois(self, device="cpu", dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """[K, 5] in the row order of the output (what the raw ops take)."""
        return ref.convert_boxes_to_rois(self.boxes_arg(device, dtype), dtype or self.box_dtype,
                                         torch.device(device))


def _coord(lo: float, hi: float):
    """Whole, half and arbitrary coordinates: samples land on pixel edges and borders."""
    hi = max(lo, hi)
    options = [st.floats(lo, hi, allow_nan=False, allow_infinity=False)]
    if math.ceil(2 * lo) <= math.floor(2 * hi):
        options.insert(0, st.integers(math.ceil(2 * lo), math.floor(2 * hi)).map(lambda v: v / 2))
    if math.ceil(lo) <= math.floor(hi):
        options.insert(0, st.integers(math.ceil(lo), math.floor(hi)).map(float))
    return st.one_of(options)


@st.composite
def box_strategy(draw, H: int, W: int, scale: float, kind: str):
    """One box (x1, y1, x2, y2) in image coordinates (feature coordinates / scale)."""
    fw, fh = W / scale, H / scale
    m = 3 / scale
    if kind == "inside":  # non-empty, within the feature map: pools non-zero values
        x1, y1 = draw(_coord(0, (W - 1) / 2 / scale)), draw(_coord(0, (H - 1) / 2 / scale))
        x2 = x1 + draw(_coord(0.5 / scale, fw / 2))
        y2 = y1 + draw(_coord(0.5 / scale, fh / 2))
        return (x1, y1, x2, y2)
    if kind in ("any", "nonfinite"):  # may be inverted, partly outside
        box = [draw(_coord(-m, fw + m)), draw(_coord(-m, fh + m)),
               draw(_coord(-m, fw + m)), draw(_coord(-m, fh + m))]
        if kind == "nonfinite":
            i = draw(st.integers(0, 3))
            box[i] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        return tuple(box)
    if kind == "zero":  # zero width and/or height
        x1, y1 = draw(_coord(-m, fw + m)), draw(_coord(-m, fh + m))
        which = draw(st.sampled_from(["w", "h", "both"]))
        x2 = x1 if which in ("w", "both") else x1 + draw(_coord(0, fw))
        y2 = y1 if which in ("h", "both") else y1 + draw(_coord(0, fh))
        return (x1, y1, x2, y2)
    if kind == "outside":  # wholly outside on one side
        side = draw(st.sampled_from(["left", "right", "top", "bottom"]))
        gap = draw(_coord(1.5 / scale, 4 / scale))
        w, h = draw(_coord(0, fw)), draw(_coord(0, fh))
        x1, y1 = draw(_coord(0, fw)), draw(_coord(0, fh))
        if side == "left":
            x2 = -gap
            x1 = x2 - w
        elif side == "right":
            x1 = fw + gap
            x2 = x1 + w
        elif side == "top":
            y2 = -gap
            y1 = y2 - h
            x2 = x1 + w
        else:
            y1 = fh + gap
            y2 = y1 + h
            x2 = x1 + w
        if side in ("left", "right"):
            y2 = y1 + h
        return (x1, y1, x2, y2)
    assert kind == "large"  # much larger than the feature map
    m = 40 / scale
    return (draw(_coord(-m, 0)), draw(_coord(-m, 0)), draw(_coord(fw, fw + m)),
            draw(_coord(fh, fh + m)))


@st.composite
def problems(draw, dtypes=ALL_DTYPES, op="align", max_hw=10, max_boxes=6, kinds=BOX_KINDS):
    dtype = draw(st.sampled_from(dtypes))
    box_dtype = draw(st.sampled_from([torch.float32, dtype])) if dtype in HALF_DTYPES else dtype
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    H, W = draw(st.integers(1, max_hw)), draw(st.integers(1, max_hw))
    oh, ow = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    output_size = oh if oh == ow and draw(st.booleans()) else (oh, ow)
    scale = draw(st.sampled_from(SCALES))
    sr = draw(st.sampled_from(SAMPLING_RATIOS)) if op == "align" else -1
    aligned = draw(st.booleans()) if op == "align" else False
    # Huge boxes with an adaptive sample count are slow for the reference: keep them to
    # a fixed sampling ratio (roi_pool has no samples).
    kinds = [k for k in kinds if k != "large" or op != "align" or sr > 0]
    box_kinds = ["inside"] + draw(st.lists(st.sampled_from(kinds), max_size=max_boxes - 1))
    box_kinds = draw(st.permutations(box_kinds))
    boxes = [draw(box_strategy(H, W, scale, k)) for k in box_kinds]
    batch = draw(st.lists(st.integers(0, N - 1), min_size=len(boxes), max_size=len(boxes)))
    p = Problem(
        dtype=dtype, box_dtype=box_dtype, shape=(N, C, H, W), output_size=output_size,
        scale=scale, sampling_ratio=sr, aligned=aligned, boxes=boxes, batch=batch,
        fmt=draw(st.sampled_from(["tensor", "list"])), layout=draw(st.sampled_from(LAYOUTS)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )
    note(repr(p))
    return p


# ======================================================================================
# Reference runners and assertions
# ======================================================================================


def align_args(p: Problem):
    return (p.output_size, p.scale, p.sampling_ratio, p.aligned)


def reference_align(p: Problem, requires_grad=False):
    """(reference output, its input) in the reference dtype."""
    x = p.features(dtype=ref_dtype(p.dtype)).requires_grad_(requires_grad)
    return ref.roi_align(x, p.boxes_arg(dtype=ref_dtype(p.box_dtype)), *align_args(p)), x


def reference_pool(p: Problem, requires_grad=False):
    x = p.features(dtype=ref_dtype(p.dtype)).requires_grad_(requires_grad)
    out, arg = ref.roi_pool_with_argmax(x, p.boxes_arg(dtype=ref_dtype(p.box_dtype)),
                                        p.output_size, p.scale)
    return out, arg, x


def nonfinite_rows(p: Problem) -> torch.Tensor:
    return ~torch.isfinite(p.rois(dtype=torch.float64)[:, 1:]).all(1)


def assert_close(actual, expected, dtype, **kw):
    tol = dict(TOL[dtype])
    tol.update(kw)
    torch.testing.assert_close(actual.cpu().to(expected.dtype), expected, **tol)


def assert_nonzero(t: torch.Tensor):
    """Guards against vacuous comparisons (an op replaced by zeros_like would pass them)."""
    assert t.abs().max() > 0


def _grad_output(p: Problem, shape, device):
    g = torch.Generator().manual_seed(p.seed + 1)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(p.dtype).to(device)


# ======================================================================================
# Small fixed inputs (the bad-input table, the CUDA device checks)
# ======================================================================================


def _x(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


_ROIS = torch.tensor([[0, 1.0, 1.0, 4.0, 4.0]])


# ======================================================================================
# multilevel_roi_align problems
# ======================================================================================


@dataclass
class MLProblem:
    """A pyramid of levels [N, C, H_l, W_l] at scales 2**-(k_min + l) of an image, boxes in
    image coordinates, and the op's arguments."""

    dtype: torch.dtype
    box_dtype: torch.dtype
    batch: int  # N
    channels: int  # C
    sizes: List[Tuple[int, int]]  # (H_l, W_l)
    scales: List[float]
    output_size: object
    sampling_ratio: int
    aligned: bool
    canonical_scale: float
    canonical_level: int
    mode: str
    boxes: List[Tuple[float, float, float, float]]
    batch_index: List[int]
    fmt: str
    seed: int

    @property
    def pooled(self) -> Tuple[int, int]:
        o = self.output_size
        return (o, o) if isinstance(o, int) else tuple(o)

    @property
    def levels(self) -> int:
        return len(self.sizes)

    def features(self, device="cpu", dtype: Optional[torch.dtype] = None) -> List[torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        out = []
        for h, w in self.sizes:
            f = torch.randn(self.batch, self.channels, h, w, generator=g, dtype=torch.float64)
            out.append(f.to(self.dtype).to(dtype or self.dtype).to(device))
        return out

    def boxes_arg(self, device="cpu", dtype: Optional[torch.dtype] = None):
        t = torch.tensor(self.boxes, dtype=torch.float64).reshape(-1, 4).to(self.box_dtype)
        t = t.to(dtype or self.box_dtype).to(device)
        if self.fmt == "list":
            b = torch.tensor(self.batch_index, dtype=torch.int64)
            return [t[(b == i).nonzero().flatten().to(device)] for i in range(self.batch)]
        idx = torch.tensor(self.batch_index, dtype=t.dtype, device=device)[:, None]
        return torch.cat([idx, t], 1)

    def rois(self, device="cpu", dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        return ref.convert_boxes_to_rois(self.boxes_arg(device, dtype), dtype or self.box_dtype,
                                         torch.device(device))

    def kwargs(self, mode: Optional[str] = None) -> dict:
        return dict(output_size=self.output_size, spatial_scales=self.scales,
                    sampling_ratio=self.sampling_ratio, aligned=self.aligned,
                    canonical_scale=self.canonical_scale,
                    canonical_level=self.canonical_level, mode=mode or self.mode)

    def geometry_rois(self) -> torch.Tensor:
        """The rois in the dtype the box geometry (and the level decision) uses."""
        return self.rois(dtype=ref_dtype(self.dtype))


@st.composite
def ml_problems(draw, dtypes=ALL_DTYPES, modes=("assign", "all"), max_levels=5, max_boxes=6,
                kinds=BOX_KINDS + ("boundary",)):
    """Random pyramids of 1..max_levels levels with scales in 1/4 .. 1/64, boxes of every
    kind plus squares exactly at level boundaries."""
    dtype = draw(st.sampled_from(dtypes))
    box_dtype = draw(st.sampled_from([torch.float32, dtype])) if dtype in HALF_DTYPES else dtype
    L = draw(st.integers(1, max_levels))
    k_min = draw(st.integers(2, 7 - L))
    scales = [2.0 ** -(k_min + l) for l in range(L)]
    ih, iw = draw(st.integers(8, 96)), draw(st.integers(8, 96))
    sizes = [(max(1, math.ceil(ih * s)), max(1, math.ceil(iw * s))) for s in scales]
    oh, ow = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    output_size = oh if oh == ow and draw(st.booleans()) else (oh, ow)
    sr = draw(st.sampled_from([-1, 0, 1, 2]))
    # Canonical scales that spread image-sized boxes over the levels (224 would put them all
    # on the lowest), and torchvision's own.
    cs = draw(st.sampled_from([224.0, 32.0, 16.0, 11.3, 8.0, 4.0]))
    cl = draw(st.sampled_from([4, k_min, k_min + 1]))
    kinds = [k for k in kinds if k != "large" or sr > 0]
    box_kinds = ["inside"] + draw(st.lists(st.sampled_from(kinds), max_size=max_boxes - 1))
    box_kinds = draw(st.permutations(box_kinds))
    H0, W0 = sizes[0]
    boxes = []
    for k in box_kinds:
        if k == "boundary":  # a square whose area is exactly a level's threshold
            side = cs * 2.0 ** draw(st.integers(-3, 2))
            x1, y1 = draw(_coord(0, iw / 2)), draw(_coord(0, ih / 2))
            boxes.append((x1, y1, x1 + side, y1 + side))
        else:
            boxes.append(draw(box_strategy(H0, W0, scales[0], k)))
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    batch_index = draw(st.lists(st.integers(0, N - 1), min_size=len(boxes), max_size=len(boxes)))
    p = MLProblem(
        dtype=dtype, box_dtype=box_dtype, batch=N, channels=C, sizes=sizes, scales=scales,
        output_size=output_size, sampling_ratio=sr, aligned=draw(st.booleans()),
        canonical_scale=cs, canonical_level=cl, mode=draw(st.sampled_from(modes)),
        boxes=boxes, batch_index=batch_index, fmt=draw(st.sampled_from(["tensor", "list"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )
    note(repr(p))
    return p


def op_levels(p: MLProblem) -> torch.Tensor:
    """The levels the op documents (csrc/common/roi_levels.h): how many of the precomputed
    level areas the RoI's area (in the geometry dtype, compared in float64) reaches."""
    from segops.ops.roi import _level_areas

    r = p.geometry_rois()
    area = ((r[:, 3] - r[:, 1]) * (r[:, 4] - r[:, 2])).double()
    t = torch.tensor(_level_areas(p.scales, p.canonical_scale, p.canonical_level),
                     dtype=torch.float64)
    return (area[:, None] >= t[None, :]).sum(1)


KNIFE_EDGE = 1e-5


def reference_level_candidates(p: MLProblem) -> Tuple[torch.Tensor, torch.Tensor]:
    """(reference levels, alternative levels) per RoI: the alternative differs only on a
    knife edge, where the reference's level value lies within 1e-5 of an integer and the op
    may take the adjacent level."""
    r = p.geometry_rois()
    levels = ref.map_levels(r, p.scales, p.canonical_scale, p.canonical_level)
    v = ref.level_values(r, p.canonical_scale, p.canonical_level).double()
    m = torch.round(v)
    knife = (v - m).abs() < KNIFE_EDGE  # False for NaN and inf
    k_min = round(-math.log2(p.scales[0]))
    other = torch.where(torch.floor(v) == m, m - 1, m).clamp(k_min, k_min + p.levels - 1)
    other = torch.where(knife, other.to(torch.int64) - k_min, levels)
    return levels, other


def reference_multilevel(p: MLProblem, mode: str, requires_grad=False):
    """(reference output, its features) in the reference dtype."""
    xs = [x.requires_grad_(requires_grad) for x in p.features(dtype=ref_dtype(p.dtype))]
    out = ref.multilevel_roi_align(xs, p.boxes_arg(dtype=ref_dtype(p.box_dtype)),
                                   **p.kwargs(mode))
    return out, xs


def chosen_levels(p: MLProblem, out: torch.Tensor, per_level: torch.Tensor) -> torch.Tensor:
    """The level of each assign-mode row: the reference's, or on a knife edge the
    alternative where the op's row matches the reference pooled there (and not at the
    reference's level)."""
    levels, other = reference_level_candidates(p)
    k = torch.arange(levels.numel())
    out = out.cpu().to(per_level.dtype)
    tol = TOL[p.dtype]

    def rows_close(a):
        return torch.isclose(out, a, **tol).flatten(1).all(1)

    use_other = (other != levels) & rows_close(per_level[other, k]) & ~rows_close(
        per_level[levels, k])
    note(f"knife-edge rows: {(other != levels).nonzero().flatten().tolist()}, "
         f"taken at the adjacent level: {use_other.nonzero().flatten().tolist()}")
    return torch.where(use_other, other, levels)
