"""Shared helpers for the mask tests (docs/ops/masks.md: assemble_masks, paste_masks): dtypes and
tolerances, the problem descriptions and their hypothesis strategies, the contract's
resize arithmetic, and the assertions (the rounding band of the bool outputs). Imported by
tests/ops/masks/ as ``helpers.masks`` (conftest puts tests/ on sys.path).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from hypothesis import note
from hypothesis import strategies as st

# the module (segops.reference re-exports its functions)
ref = importlib.import_module("segops.reference.masks")

ALL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
HALF_DTYPES = (torch.float16, torch.bfloat16)
FULL_DTYPES = (torch.float32, torch.float64)
NONFINITE = (math.nan, math.inf, -math.inf)
LAYOUTS = ("contiguous", "transposed", "strided")

# Float outputs against the reference. The kernels' sums run in another order than torch's
# matmul / grid_sample / interpolate, so float32 differs by a few ulps; half types may round
# the other way: one or two ulps of a value in [0, 1].
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=0, atol=1e-3),
    torch.bfloat16: dict(rtol=0, atol=8e-3),
}
# Bool outputs: the op and the reference may disagree only where the reference's value lies
# within BAND of the threshold (the contract's rounding band).
BAND = {torch.float64: 1e-5, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def relayout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout (non-contiguous unless "contiguous")."""
    if layout == "contiguous" or t.numel() == 0:
        return t
    if layout == "transposed":  # every dimension reversed in memory
        dims = list(range(t.dim()))[::-1]
        return t.permute(dims).contiguous().permute(dims)
    assert layout == "strided"  # every other element of a buffer twice as wide
    buf = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    buf[..., ::2] = t
    return buf[..., ::2]


def _randn(seed: int, *shape, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


# ======================================================================================
# assemble_masks problems
# ======================================================================================


@dataclass
class AssembleProblem:
    dtype: torch.dtype  # protos and coeffs
    box_dtype: torch.dtype
    H: int
    W: int
    k: int
    boxes: List[Tuple[float, float, float, float]]  # relative
    padding: int
    image_size: Optional[Tuple[int, int]]
    threshold: float
    layout: str
    seed: int
    bias: List[float]  # per detection: its coefficient of the constant prototype

    @property
    def N(self) -> int:
        return len(self.boxes)

    def protos(self, device="cpu", dtype=None) -> torch.Tensor:
        """Random prototypes; prototype 0 is constant 1 (so ``bias`` shifts the logits)."""
        t = _randn(self.seed, self.H, self.W, self.k)
        t[..., 0] = 1
        return relayout(t.to(self.dtype).to(dtype or self.dtype).to(device), self.layout)

    def coeffs(self, device="cpu", dtype=None) -> torch.Tensor:
        # logits of standard deviation ~3 about the bias: values spread over (0, 1)
        t = _randn(self.seed + 1, self.N, self.k, scale=3 / math.sqrt(max(self.k - 1, 1)))
        t[:, 0] = torch.tensor(self.bias, dtype=torch.float64)
        return relayout(t.to(self.dtype).to(dtype or self.dtype).to(device), self.layout)

    def boxes_t(self, device="cpu", dtype=None) -> torch.Tensor:
        t = torch.tensor(self.boxes, dtype=torch.float64).reshape(-1, 4).to(self.box_dtype)
        return relayout(t.to(dtype or self.box_dtype).to(device), self.layout)

    def args(self, device="cpu"):
        return self.protos(device), self.coeffs(device), self.boxes_t(device), self.padding


def _rel_coord(S: int):
    """Relative coordinates on the pixel grid (k/S, (k+0.5)/S, the float32(11/13) kind of
    rounding) and arbitrary ones, a little beyond [0, 1]."""
    return st.one_of(st.integers(0, S).map(lambda k: k / S),
                     st.integers(-2, 2 * S + 2).map(lambda k: k / (2 * S)),
                     st.floats(-0.25, 1.25, allow_nan=False, width=32))


@st.composite
def rel_box(draw, H: int, W: int, kind: str):
    if kind == "big":  # ordered, covers the middle half of the image: any upsampling sees it
        return (draw(st.integers(0, W // 4)) / W, draw(st.integers(0, H // 4)) / H,
                1 - draw(st.integers(0, W // 4)) / W, 1 - draw(st.integers(0, H // 4)) / H)
    if kind == "inside":  # ordered, at least one pixel wide: a non-empty crop
        # (a quarter pixel of slack each side: a bfloat16 box still keeps pixel i)
        i, j = draw(st.integers(0, W - 1)), draw(st.integers(0, H - 1))
        x1, y1 = max(i - 0.25, 0) / W, max(j - 0.25, 0) / H
        x2 = min((i + draw(st.integers(1, W)) + 0.25) / W + draw(st.floats(0, 0.5 / W)), 1.0)
        y2 = min((j + draw(st.integers(1, H)) + 0.25) / H + draw(st.floats(0, 0.5 / H)), 1.0)
        return (x1, y1, x2, y2)
    box = [draw(_rel_coord(W)), draw(_rel_coord(H)), draw(_rel_coord(W)), draw(_rel_coord(H))]
    if kind == "reversed":
        box = [max(box[0], box[2]), max(box[1], box[3]), min(box[0], box[2]),
               min(box[1], box[3])]
    elif kind == "zero":
        i = draw(st.sampled_from([0, 1]))
        box[i + 2] = box[i]
    elif kind == "outside":  # wholly beyond one edge (by more than the padding)
        side = draw(st.sampled_from([0, 1, 2, 3]))
        S = (W, H)[side % 2]
        far = draw(st.floats(4.0 / S, 4.0 / S + 1.0))
        lo, hi = (-far - draw(st.floats(0, 1)), -far) if side < 2 else (1 + far, 1 + far + 0.5)
        box[side % 2], box[side % 2 + 2] = lo, hi
    elif kind == "nonfinite":
        box[draw(st.integers(0, 3))] = draw(st.sampled_from(NONFINITE))
    return tuple(float(v) for v in box)


ASSEMBLE_KINDS = ("inside", "any", "reversed", "zero", "outside", "nonfinite")


@st.composite
def assemble_problems(draw, dtypes=ALL_DTYPES, fused: Optional[bool] = None, max_hw=12,
                      max_boxes=4, thresholds=(0.5, 0.5, 0.3, 0.7, 0.9, 0.1, 0.0, -0.25)):
    dtype = draw(st.sampled_from(dtypes))
    H, W = draw(st.integers(1, max_hw)), draw(st.integers(1, max_hw))
    kinds = ["big"] + draw(st.lists(st.sampled_from(ASSEMBLE_KINDS), max_size=max_boxes - 1))
    kinds = draw(st.permutations(kinds))
    if fused is None:
        fused = draw(st.booleans())
    image_size = None
    if fused:  # smaller, equal and larger than the protos, not square
        h = draw(st.one_of(st.just(H), st.integers(1, 3 * max_hw)))
        w = draw(st.one_of(st.just(W), st.integers(1, 3 * max_hw)))
        image_size = (h, w)
    p = AssembleProblem(
        dtype=dtype, box_dtype=draw(st.sampled_from([dtype, *ALL_DTYPES])), H=H, W=W,
        k=draw(st.integers(2, 6)), boxes=[draw(rel_box(H, W, kd)) for kd in kinds],
        padding=draw(st.sampled_from([1, 1, 0, 2])), image_size=image_size,
        threshold=draw(st.sampled_from(thresholds)), layout=draw(st.sampled_from(LAYOUTS)),
        seed=draw(st.integers(0, 2**31 - 1)),
        # the "big" detection leans to foreground
        bias=[draw(st.floats(2, 6) if kd == "big" else st.floats(-4, 4)) for kd in kinds],
    )
    note(repr(p))
    return p


def reference_assemble(p: AssembleProblem, requires_grad=False):
    """(cropped [N, H, W] in p.dtype, protos, coeffs): the reference on the CPU inputs."""
    protos, coeffs = p.protos(), p.coeffs()
    protos.requires_grad_(requires_grad)
    coeffs.requires_grad_(requires_grad)
    return ref.assemble_masks(protos, coeffs, p.boxes_t(), p.padding), protos, coeffs


def upsample(cropped: torch.Tensor, size) -> torch.Tensor:
    """The reference composition's float values: F.interpolate in cropped's dtype."""
    h, w = size
    if cropped.numel() == 0 or h == 0 or w == 0:
        return cropped.new_zeros(cropped.size(0), h, w)
    return F.interpolate(cropped[None], (h, w), mode="bilinear", align_corners=False)[0]


# ======================================================================================
# paste_masks problems
# ======================================================================================


@dataclass
class PasteProblem:
    dtype: torch.dtype  # masks
    box_dtype: torch.dtype
    Mh: int
    Mw: int
    boxes: List[Tuple[float, float, float, float]]  # absolute pixels
    image_size: Tuple[int, int]
    threshold: Optional[float]
    mode: str
    four_d: bool  # masks as [N, 1, Mh, Mw]
    layout: str
    seed: int
    hot: List[bool]  # masks with values in [0.75, 1] (else [0, 1])

    @property
    def N(self) -> int:
        return len(self.boxes)

    def masks(self, device="cpu", dtype=None) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        t = torch.rand(self.N, self.Mh, self.Mw, generator=g, dtype=torch.float64)
        hot = torch.tensor(self.hot, dtype=torch.bool)
        t[hot] = 0.75 + 0.25 * t[hot]
        t = relayout(t.to(self.dtype).to(dtype or self.dtype).to(device), self.layout)
        return t[:, None] if self.four_d else t

    def boxes_t(self, device="cpu", dtype=None) -> torch.Tensor:
        t = torch.tensor(self.boxes, dtype=torch.float64).reshape(-1, 4).to(self.box_dtype)
        return relayout(t.to(dtype or self.box_dtype).to(device), self.layout)

    def args(self, device="cpu"):
        return self.masks(device), self.boxes_t(device), self.image_size


def _abs_coord(lo: float, hi: float):
    """Whole, half and arbitrary pixel coordinates."""
    return st.one_of(st.integers(math.ceil(lo), math.floor(hi)).map(float),
                     st.integers(math.ceil(2 * lo), math.floor(2 * hi)).map(lambda v: v / 2),
                     st.floats(lo, hi, allow_nan=False, width=32))


@st.composite
def abs_box(draw, H: int, W: int, kind: str):
    if kind == "inside":  # ordered, at least 2 pixels, mostly within the image
        x0, y0 = draw(_abs_coord(0, max(W - 1, 0))), draw(_abs_coord(0, max(H - 1, 0)))
        return (x0, y0, x0 + draw(_abs_coord(2, max(W, 2))), y0 + draw(_abs_coord(2, max(H, 2))))
    if kind == "large":  # much larger than the image
        return (draw(_abs_coord(-2 * W - 4, 0)), draw(_abs_coord(-2 * H - 4, 0)),
                draw(_abs_coord(W, 3 * W + 4)), draw(_abs_coord(H, 3 * H + 4)))
    box = [draw(_abs_coord(-3, W + 3)), draw(_abs_coord(-3, H + 3)),
           draw(_abs_coord(-3, W + 3)), draw(_abs_coord(-3, H + 3))]
    if kind == "reversed":
        box = [max(box[0], box[2]), max(box[1], box[3]), min(box[0], box[2]),
               min(box[1], box[3])]
    elif kind == "zero":
        i = draw(st.sampled_from([0, 1]))
        box[i + 2] = box[i]
    elif kind == "tiny":  # sub-pixel
        box[2] = box[0] + draw(st.floats(1e-3, 0.5))
        box[3] = box[1] + draw(st.floats(1e-3, 0.5))
    elif kind == "outside":  # wholly beyond one edge
        side = draw(st.sampled_from([0, 1, 2, 3]))
        S = (W, H)[side % 2]
        gap, size = draw(_abs_coord(1, 2 * S + 2)), draw(_abs_coord(0.5, S + 1))
        lo = -gap - size if side < 2 else S + gap
        box[side % 2], box[side % 2 + 2] = lo, lo + size
    elif kind == "nonfinite":
        box[draw(st.integers(0, 3))] = draw(st.sampled_from(NONFINITE))
    return tuple(float(v) for v in box)


PASTE_KINDS = ("inside", "any", "reversed", "zero", "tiny", "outside", "large", "nonfinite")


@st.composite
def paste_problems(draw, dtypes=ALL_DTYPES, modes=("detectron2", "torchvision"), max_m=9,
                   max_hw=20, max_boxes=4,
                   thresholds=(None, 0.5, 0.5, 0.3, 0.7, 0.1, 0.9, 0.0, -0.25)):
    dtype = draw(st.sampled_from(dtypes))
    H, W = draw(st.integers(1, max_hw)), draw(st.integers(1, max_hw))
    kinds = ["inside"] + draw(st.lists(st.sampled_from(PASTE_KINDS), max_size=max_boxes - 1))
    kinds = draw(st.permutations(kinds))
    p = PasteProblem(
        dtype=dtype, box_dtype=draw(st.sampled_from([dtype, *ALL_DTYPES])),
        Mh=draw(st.integers(1, max_m)), Mw=draw(st.integers(1, max_m)),
        boxes=[draw(abs_box(H, W, kd)) for kd in kinds],
        image_size=(H, W), threshold=draw(st.sampled_from(thresholds)),
        mode=draw(st.sampled_from(modes)), four_d=draw(st.booleans()),
        layout=draw(st.sampled_from(LAYOUTS)), seed=draw(st.integers(0, 2**31 - 1)),
        hot=[kd == "inside" and draw(st.booleans()) for kd in kinds],
    )
    if p.box_dtype == torch.float16:  # float16 holds the coordinates exactly only to 2048
        p.box_dtype = torch.float32 if max(H, W) > 64 else p.box_dtype
    note(repr(p))
    return p


def reference_paste_values(p: PasteProblem) -> torch.Tensor:
    """The reference's float values (threshold None) in the masks' dtype."""
    return ref.paste_masks(p.masks(), p.boxes_t(), p.image_size, None, p.mode)


# ======================================================================================
# The contract's resize arithmetic (docs/ops/masks.md), literally
# ======================================================================================


def axis_taps(n_in: int, n_out: int, acc: torch.dtype):
    """(i0, i1, l0, l1) of the contract's per-axis bilinear rule, each step rounded."""
    o = torch.arange(n_out, dtype=acc)
    if n_in == n_out:
        i = torch.arange(n_out)
        return i, i, torch.ones(n_out, dtype=acc), torch.zeros(n_out, dtype=acc)
    scale = torch.tensor(float(n_in), dtype=acc) / torch.tensor(float(n_out), dtype=acc)
    src = torch.clamp_min(scale * (o + 0.5) - 0.5, 0)
    i0 = torch.clamp_max(torch.floor(src).to(torch.int64), n_in - 1)
    l1 = torch.clamp(src - i0.to(acc), 0, 1)
    i1 = i0 + (i0 < n_in - 1).to(torch.int64)
    return i0, i1, 1 - l1, l1


def contract_resize(v: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``v [N, Hin, Win]`` resized to ``[N, h, w]`` by the contract's formula, in the
    accumulation dtype (float64 for float64, else float32), not rounded back."""
    acc = torch.float64 if v.dtype == torch.float64 else torch.float32
    v = v.to(acc)
    y0, y1, ly0, ly1 = axis_taps(v.size(1), h, acc)
    x0, x1, lx0, lx1 = axis_taps(v.size(2), w, acc)
    ly0, ly1 = ly0[:, None], ly1[:, None]

    def at(ys, xs):
        return v[:, ys][:, :, xs]

    return (at(y0, x0) * lx0 + at(y0, x1) * lx1) * ly0 + (at(y1, x0) * lx0 + at(y1, x1) * lx1) * ly1


# ======================================================================================
# Assertions
# ======================================================================================


def assert_close(actual, expected, dtype, **kw):
    tol = dict(TOL[dtype])
    tol.update(kw)
    torch.testing.assert_close(actual.cpu().to(expected.dtype), expected, **tol)


def band_mask(values: torch.Tensor, threshold: float, strict: bool, dtype) -> torch.Tensor:
    """Pixels whose reference value is within BAND of the threshold (rounded to dtype).
    With ``>=`` and a threshold <= 0 there is none: values are >= 0, the answer is True."""
    if not strict and threshold <= 0:
        return torch.zeros(values.shape, dtype=torch.bool)
    thr = torch.tensor(threshold, dtype=dtype).double()
    return (values.double().cpu() - thr).abs() <= BAND[dtype]


def foreground_threshold(values: torch.Tensor, threshold: float, strict: bool, dtype) -> float:
    """``threshold`` if the reference has foreground outside the band there, else half the
    largest value (a small mask or image may not reach 0.9), or -0.25 if that is tiny: no
    comparison is vacuous."""
    thr = torch.tensor(threshold, dtype=dtype)
    fg = (values > thr) if strict else (values >= thr)
    if (fg & ~band_mask(values, threshold, strict, dtype)).any():
        return threshold
    top = float(values.max())
    new = round(top / 2, 3) if top > 0.1 else -0.25  # (-0.25: all foreground)
    note(f"threshold {threshold} -> {new} (no foreground)")
    return new


def check_bool_band(out: torch.Tensor, values: torch.Tensor, threshold: float,
                    strict: bool, dtype: torch.dtype, max_band: Optional[float] = None) -> int:
    """``out`` (bool) equals ``values > threshold`` (``>=`` unless ``strict``), compared in
    ``dtype``, except where ``values`` is within BAND of the threshold. ``max_band``: the
    largest fraction of pixels the band may hold (hypothesis finds inputs whose values all
    sit near the threshold, so the property tests bound the disagreements instead). Returns
    the number of disagreements. Non-vacuous: the expected mask must have foreground
    outside the band, so an op returning zeros fails."""
    out, values = out.cpu(), values.cpu()
    thr = torch.tensor(threshold, dtype=dtype)
    expected = values > thr if strict else values >= thr
    band = band_mask(values, threshold, strict, dtype)
    assert out.dtype == torch.bool and out.shape == values.shape
    bad = (out != expected) & ~band
    if bad.any():
        i = tuple(bad.nonzero()[0].tolist())
        raise AssertionError(
            f"{int(bad.sum())} pixels differ outside the band, first at {i}: got {bool(out[i])},"
            f" reference value {float(values[i])!r} vs threshold {float(thr)!r}")
    assert (expected & ~band).any(), "vacuous: no foreground outside the band"
    if max_band is not None:
        assert int(band.sum()) <= max_band * values.numel(), \
            f"{int(band.sum())}/{values.numel()} band pixels"
    return int((out != expected).sum())
