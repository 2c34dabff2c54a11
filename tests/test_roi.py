"""roi_align and roi_pool (SPEC §1): kernels vs the pure-PyTorch reference, and the
reference vs a scalar transliteration of torchvision's CPU kernel.

Layout of this file:
  1. problem generation (hypothesis strategies) and helpers
  2. the reference against a naive scalar implementation (bitwise)
  3. forward and backward property tests against the reference, every dtype and device
  4. exactness probes (float64 geometry, float32 geometry for half types)
  5. NaN/inf boxes, empty inputs, the bad-input table
  6. gradcheck, opcheck, torch.compile, autocast
  7. CUDA only: parity with CPU, deterministic backward
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import pytest
import torch
from hypothesis import given, note
from hypothesis import strategies as st

import segops
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
# 1. Problems
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


# ======================================================================================
# 2. The reference against a scalar transliteration of torchvision's CPU kernels
# ======================================================================================


def _np_dtype(dtype):
    return np.float64 if dtype == torch.float64 else np.float32


def naive_roi_align(x: torch.Tensor, rois: torch.Tensor, pooled, scale, sampling_ratio,
                    aligned):
    """torchvision's roi_align_forward_kernel_impl, one scalar at a time, in numpy scalars
    of the geometry dtype (float32 for half types, as segops specifies)."""
    dt = _np_dtype(x.dtype)
    xs = x.to(torch.float64 if dt == np.float64 else torch.float32).numpy()
    rs = rois.to(torch.float64 if dt == np.float64 else torch.float32).numpy()
    _, C, H, W = xs.shape
    PH, PW = pooled
    out = np.zeros((rs.shape[0], C, PH, PW), dtype=dt)
    S = dt(scale)
    with np.errstate(all="ignore"):
        for k, r in enumerate(rs):
            b = int(r[0])
            off = dt(0.5) if aligned else dt(0)
            sw, sh, ew, eh = (r[i] * S - off for i in (1, 2, 3, 4))
            if not all(np.isfinite(v) for v in (sw, sh, ew, eh)):
                continue
            rw, rh = ew - sw, eh - sh
            if not aligned:
                rw, rh = max(rw, dt(1)), max(rh, dt(1))
            bh, bw = rh / dt(PH), rw / dt(PW)
            gh = sampling_ratio if sampling_ratio > 0 else int(math.ceil(rh / dt(PH)))
            gw = sampling_ratio if sampling_ratio > 0 else int(math.ceil(rw / dt(PW)))
            count = dt(max(gh * gw, 1))
            for c in range(C):
                plane = xs[b, c]
                for ph in range(PH):
                    for pw in range(PW):
                        acc = dt(0)
                        for iy in range(gh):
                            y0 = sh + dt(ph) * bh + dt(iy + 0.5) * bh / dt(gh)
                            for ix in range(gw):
                                xx = sw + dt(pw) * bw + dt(ix + 0.5) * bw / dt(gw)
                                y = y0
                                if not (y >= -1 and y <= H and xx >= -1 and xx <= W):
                                    continue
                                y = dt(0) if y <= 0 else y
                                xx = dt(0) if xx <= 0 else xx
                                yl, xl = int(y), int(xx)
                                if yl >= H - 1:
                                    yl = yh = H - 1
                                    y = dt(yl)
                                else:
                                    yh = yl + 1
                                if xl >= W - 1:
                                    xl = xh = W - 1
                                    xx = dt(xl)
                                else:
                                    xh = xl + 1
                                ly, lx = y - dt(yl), xx - dt(xl)
                                hy, hx = dt(1) - ly, dt(1) - lx
                                acc = acc + (hy * hx * plane[yl, xl] + hy * lx * plane[yl, xh]
                                             + ly * hx * plane[yh, xl] + ly * lx * plane[yh, xh])
                        out[k, c, ph, pw] = acc / count
    return torch.from_numpy(out)


def _c_round(v: float) -> int:
    return int(math.floor(v + 0.5)) if v >= 0 else -int(math.floor(-v + 0.5))


def naive_roi_pool(x: torch.Tensor, rois: torch.Tensor, pooled, scale):
    """torchvision's roi_pool_forward_kernel_impl, one scalar at a time."""
    dt = _np_dtype(x.dtype)
    xs = x.to(torch.float64 if dt == np.float64 else torch.float32).numpy()
    rs = rois.to(torch.float64 if dt == np.float64 else torch.float32).numpy()
    _, C, H, W = xs.shape
    PH, PW = pooled
    out = np.zeros((rs.shape[0], C, PH, PW), dtype=dt)
    arg = np.full((rs.shape[0], C, PH, PW), -1, dtype=np.int64)
    S = dt(scale)
    with np.errstate(all="ignore"):
        for k, r in enumerate(rs):
            b = int(r[0])
            sc = [r[i] * S for i in (1, 2, 3, 4)]
            if not all(np.isfinite(v) for v in sc):
                continue
            # math.floor(v + 0.5) is exact here: v + 0.5 is computed in float64 from a
            # float32/float64 value far below 2**52.
            x1, y1, x2, y2 = (_c_round(float(v)) if abs(float(v)) < 2**50 else 0 for v in sc)
            rw, rh = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
            bh, bw = dt(rh) / dt(PH), dt(rw) / dt(PW)
            for ph in range(PH):
                for pw in range(PW):
                    hs = min(max(int(math.floor(dt(ph) * bh)) + y1, 0), H)
                    he = min(max(int(math.ceil(dt(ph + 1) * bh)) + y1, 0), H)
                    ws = min(max(int(math.floor(dt(pw) * bw)) + x1, 0), W)
                    we = min(max(int(math.ceil(dt(pw + 1) * bw)) + x1, 0), W)
                    empty = he <= hs or we <= ws
                    for c in range(C):
                        best, best_i = (dt(0) if empty else dt(-3.4028234663852886e38)), -1
                        for h in range(hs, he):
                            for w in range(ws, we):
                                if xs[b, c, h, w] > best:
                                    best, best_i = xs[b, c, h, w], h * W + w
                        out[k, c, ph, pw], arg[k, c, ph, pw] = best, best_i
    return torch.from_numpy(out), torch.from_numpy(arg)


_NAIVE_KINDS = ("inside", "any", "zero", "outside", "nonfinite")
_NAIVE_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


@given(p=problems(dtypes=_NAIVE_DTYPES, max_hw=7, max_boxes=4, kinds=_NAIVE_KINDS))
def test_reference_roi_align_matches_naive(p):
    out, _ = reference_align(p)
    rois = p.rois(dtype=ref_dtype(p.box_dtype))
    expected = naive_roi_align(p.features(dtype=ref_dtype(p.dtype)), rois, p.pooled, p.scale,
                               p.sampling_ratio, p.aligned)
    assert_nonzero(expected)
    assert torch.equal(out, expected)  # same operations in the same order: bit for bit
    # The reference's own half path: float32 geometry and accumulation, rounded once.
    native = ref.roi_align(p.features(), p.boxes_arg(), *align_args(p))
    assert native.dtype == p.dtype
    assert torch.equal(native, expected.to(p.dtype))


@given(p=problems(dtypes=_NAIVE_DTYPES, op="pool", max_hw=7, max_boxes=4))
def test_reference_roi_pool_matches_naive(p):
    out, arg, _ = reference_pool(p)
    rois = p.rois(dtype=ref_dtype(p.box_dtype))
    expected, expected_arg = naive_roi_pool(p.features(dtype=ref_dtype(p.dtype)), rois,
                                            p.pooled, p.scale)
    assert_nonzero(expected)
    assert torch.equal(out, expected)
    assert torch.equal(arg, expected_arg)


def test_reference_round_is_half_away_from_zero():
    v = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 0.49999997, -2.4999998, 3.0], dtype=torch.float32)
    expected = torch.tensor([1.0, 2.0, 3.0, -1.0, -2.0, 0.0, -2.0, 3.0])
    assert torch.equal(ref._round_half_away(v), expected)


# ======================================================================================
# 3. Property tests against the reference
# ======================================================================================


@given(p=problems())
def test_roi_align_forward(device, p):
    out = segops.roi_align(p.features(device), p.boxes_arg(device), *align_args(p))
    expected, _ = reference_align(p)
    assert out.dtype == p.dtype and out.device.type == device
    assert_nonzero(expected)
    assert_close(out, expected, p.dtype)
    # NaN/inf boxes pool exact zeros (SPEC §0).
    assert (out.cpu()[nonfinite_rows(p)] == 0).all()


@given(p=problems(op="pool"))
def test_roi_pool_forward(device, p):
    x, boxes = p.features(device), p.boxes_arg(device)
    out = segops.roi_pool(x, boxes, p.output_size, p.scale)
    expected, expected_arg, _ = reference_pool(p)
    assert out.dtype == p.dtype and out.device.type == device
    assert_nonzero(expected)
    # A maximum is one of the inputs: exact in every dtype.
    assert torch.equal(out.cpu().to(expected.dtype), expected)
    assert (out.cpu()[nonfinite_rows(p)] == 0).all()
    raw, arg = torch.ops.segops.roi_pool(x, p.rois(device), p.scale, *p.pooled)
    assert torch.equal(raw, out)
    assert arg.dtype == torch.int64
    assert torch.equal(arg.cpu(), expected_arg)


def _grad_output(p: Problem, shape, device):
    g = torch.Generator().manual_seed(p.seed + 1)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(p.dtype).to(device)


@pytest.mark.parametrize("det", [False, True], ids=["default", "deterministic"])
@given(p=problems())
def test_roi_align_backward(device, det, p):
    expected, x_ref = reference_align(p, requires_grad=True)
    grad = _grad_output(p, expected.shape, device)
    expected.backward(grad.cpu().to(expected.dtype))
    assert_nonzero(x_ref.grad)

    x = p.features(device).requires_grad_(True)
    with deterministic(det):
        out = segops.roi_align(x, p.boxes_arg(device), *align_args(p))
        out.backward(grad)
    assert x.grad.dtype == p.dtype and x.grad.shape == x.shape
    assert_close(x.grad, x_ref.grad, p.dtype)


@pytest.mark.parametrize("det", [False, True], ids=["default", "deterministic"])
@given(p=problems(op="pool"))
def test_roi_pool_backward(device, det, p):
    expected, _, x_ref = reference_pool(p, requires_grad=True)
    grad = _grad_output(p, expected.shape, device)
    expected.backward(grad.cpu().to(expected.dtype))
    assert_nonzero(x_ref.grad)

    x = p.features(device).requires_grad_(True)
    with deterministic(det):
        out = segops.roi_pool(x, p.boxes_arg(device), p.output_size, p.scale)
        out.backward(grad)
    assert x.grad.dtype == p.dtype
    assert_close(x.grad, x_ref.grad, p.dtype)


@pytest.mark.parametrize("op", ["align", "pool"])
@given(p=problems(dtypes=FULL_DTYPES))
def test_backward_deterministic_mode_agrees_with_default(device, op, p):
    """Both backward algorithms (scatter and gather) on the same problem: close, and the
    deterministic one is bitwise reproducible."""
    fn = ((lambda x, b: segops.roi_align(x, b, *align_args(p))) if op == "align" else
          (lambda x, b: segops.roi_pool(x, b, p.output_size, p.scale)))
    grads = []
    for det in (False, True, True):
        x = p.features(device).requires_grad_(True)
        with deterministic(det):
            out = fn(x, p.boxes_arg(device))
            out.backward(_grad_output(p, out.shape, device))
        grads.append(x.grad)
    assert_nonzero(grads[0])
    assert_close(grads[1], grads[0].cpu(), p.dtype)
    assert torch.equal(grads[1], grads[2])


# ======================================================================================
# 4. Exactness probes
# ======================================================================================


@pytest.mark.parametrize("aligned,output_size", [(True, 4), (False, 2)])
def test_roi_align_geometry_in_input_dtype(device, aligned, output_size):
    """SPEC §1: width 4.0000002 is 4.0000002 in float64 (ceil(1.00000005) = 2 samples per
    bin with 4 bins) but 4.0 in float32 (1 sample). Each dtype must follow its own."""
    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(1, 3, 8, 8, generator=g, dtype=torch.float64)
    rois64 = torch.tensor([[0.0, 0.0, 0.0, 4.0000002, 4.0000002]], dtype=torch.float64)
    args = (output_size, 1.0, -1, aligned)
    ref64 = ref.roi_align(x64, rois64, *args)
    ref32 = ref.roi_align(x64.float(), rois64.float(), *args)
    # The probe discriminates: the two sample counts give clearly different values.
    assert (ref64.float() - ref32).abs().max() > 1e-2
    out64 = segops.roi_align(x64.to(device), rois64.to(device), *args)
    out32 = segops.roi_align(x64.float().to(device), rois64.float().to(device), *args)
    torch.testing.assert_close(out64.cpu(), ref64, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out32.cpu(), ref32, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_roi_align_half_geometry_in_float32(device, dtype):
    """Half inputs with float32 boxes: the geometry is float32 (width 4.001 -> 2 samples
    per bin), not half precision (4.001 rounds to 4.0 -> 1 sample) as torchvision does."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 8, 8, generator=g).to(dtype)
    rois = torch.tensor([[0.0, 0.0, 0.0, 4.001, 4.001]])
    args = (4, 1.0, -1, True)
    good = ref.roi_align(x.float(), rois, *args)
    torchvision_like = ref.roi_align(x.float(), rois.to(dtype).float(), *args)
    assert (good - torchvision_like).abs().max() > 0.1
    out = segops.roi_align(x.to(device), rois.to(device), *args)
    assert out.dtype == dtype
    assert_close(out, good, dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_roi_align_half_accumulates_in_float32(device, dtype):
    """256 samples of v = 1 + 3 eps, each exactly on a pixel: a half-precision running sum
    stalls (at 256 its ulp exceeds v / 2), a float32 one gives the mean v exactly."""
    v = 1.0 + 3 * torch.finfo(dtype).eps
    x = torch.full((1, 2, 16, 16), v, dtype=dtype)
    rois = torch.tensor([[0.0, 0.0, 0.0, 16.0, 16.0]])
    out = segops.roi_align(x.to(device), rois.to(device), 1, 1.0, 16, True)
    assert (out == v).all()
    x.requires_grad_(True)
    out = segops.roi_align(x.to(device), rois.to(device), 1, 1.0, 16, True)
    out.backward(torch.full_like(out, 256.0))
    assert (x.grad == 1).all()


@pytest.mark.parametrize("det", [False, True], ids=["default", "deterministic"])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_roi_align_inverted_aligned_boxes(device, det, sampling_ratio, dtype):
    """aligned=True does not clamp the RoI size, so x2 < x1 gives a negative bin and, with
    a fixed sampling ratio, samples that walk backwards from x1 (torchvision samples them).
    The first of them may lie beyond the image while later ones are inside."""
    x = torch.arange(1.0, 17.0, dtype=dtype).reshape(1, 1, 4, 4).to(device)
    rois = torch.tensor([
        [0, 1.0, 5.0, 1.0, 4.0],   # y: 4.5 -> 3.5, first sample at y = 4.25 > H
        [0, 5.0, 1.0, 4.0, 1.0],   # the same along x
        [0, 6.0, 6.0, 0.5, 0.5],   # both axes, from far outside to inside
        [0, 1.0, 0.0, 1.0, -1.0],  # walking out of the image through y = -1
    ], dtype=dtype)
    args = ((2, 1), 1.0, sampling_ratio, True)
    xr = x.cpu().clone().requires_grad_(True)
    expected = ref.roi_align(xr, rois, *args)
    assert (expected.flatten(1) != 0).any(1).all()
    grad = torch.linspace(-1, 2, expected.numel(), dtype=dtype).reshape(expected.shape)
    expected.backward(grad)
    xs = x.clone().requires_grad_(True)
    with deterministic(det):
        out = segops.roi_align(xs, rois.to(device), *args)
        out.backward(grad.to(device))
    assert_close(out, expected, dtype)
    assert_close(xs.grad, xr.grad, dtype)


def test_roi_pool_rounds_half_away_from_zero(device):
    """C round(): 0.5 -> 1, 1.5 -> 2, 2.5 -> 3 (torch.round would give 0, 2, 2)."""
    x = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8)
    rois = torch.tensor([[0, 0.5, 0.5, 2.5, 2.5], [0, 1.5, 2.5, 4.5, 5.5]])
    out, arg = torch.ops.segops.roi_pool(x.to(device), rois.to(device), 1.0, 1, 1)
    exp, exp_arg = ref.roi_pool_with_argmax(x, rois, 1)
    assert torch.equal(out.cpu(), exp) and torch.equal(arg.cpu(), exp_arg)
    # Bottom-right corners after rounding: (3, 3) and (5, 6).
    assert exp.flatten().tolist() == [3 * 8 + 3, 6 * 8 + 5]


# ======================================================================================
# 5. NaN/inf boxes, empty inputs, bad inputs
# ======================================================================================


@pytest.mark.parametrize("op", ["align", "pool"])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_nonfinite_boxes_give_zero_rows_and_no_gradient(device, op, dtype):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 9, 9, generator=g).to(dtype).to(device).requires_grad_(True)
    nan, inf = math.nan, math.inf
    rois = torch.tensor([
        [0, 1.0, 1.0, 6.0, 7.0],
        [1, nan, 1.0, 6.0, 7.0],
        [0, 1.0, inf, 6.0, 7.0],
        [1, 1.0, 1.0, -inf, 7.0],
        [0, -inf, -inf, inf, inf],
        [1, 2.0, 0.0, 8.0, 5.0],
    ]).to(dtype).to(device)
    fn = ((lambda x, r: segops.roi_align(x, r, 3, 1.0, 2, False)) if op == "align" else
          (lambda x, r: segops.roi_pool(x, r, 3, 1.0)))
    out = fn(x, rois)
    assert (out[1:5] == 0).all()
    assert (out[[0, 5]] != 0).any(dim=(1, 2, 3)).all()
    out.sum().backward()
    # The gradient is exactly that of the finite boxes alone.
    x2 = x.detach().clone().requires_grad_(True)
    fn(x2, rois[[0, 5]]).sum().backward()
    assert_nonzero(x2.grad)
    torch.testing.assert_close(x.grad, x2.grad, rtol=0, atol=0)


def _empty_cases():
    # (input shape, boxes builder, expected K)
    return [
        pytest.param((2, 3, 5, 6), lambda d, t: torch.zeros(0, 5, dtype=t, device=d), 0,
                     id="K=0"),
        pytest.param((2, 3, 5, 6), lambda d, t: [torch.zeros(0, 4, dtype=t, device=d)] * 2, 0,
                     id="K=0-list"),
        pytest.param((2, 3, 5, 6), lambda d, t: [], 0, id="empty-list"),
        pytest.param((0, 3, 5, 6), lambda d, t: torch.zeros(0, 5, dtype=t, device=d), 0,
                     id="N=0"),
        pytest.param((1, 3, 0, 6), lambda d, t: torch.tensor([[0, 0, 0, 4.0, 4.0]] * 2,
                                                             dtype=t, device=d), 2, id="H=0"),
        pytest.param((1, 3, 5, 0), lambda d, t: torch.tensor([[0, 0, 0, 4.0, 4.0]] * 2,
                                                             dtype=t, device=d), 2, id="W=0"),
    ]


@pytest.mark.parametrize("op", ["align", "pool"])
@pytest.mark.parametrize("shape,make_boxes,K", _empty_cases())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_empty_inputs(device, op, shape, make_boxes, K, dtype):
    x = torch.randn(shape).to(dtype).to(device).requires_grad_(True)
    boxes = make_boxes(device, dtype)
    if op == "align":
        out = segops.roi_align(x, boxes, (2, 3), 0.5, 2, True)
    else:
        out = segops.roi_pool(x, boxes, (2, 3), 0.5)
    assert out.shape == (K, shape[1], 2, 3)
    assert out.dtype == dtype and out.device.type == device
    assert (out == 0).all()  # nothing to pool
    out.sum().backward()
    assert x.grad.shape == x.shape and (x.grad == 0).all()


@pytest.mark.parametrize("op", ["align", "pool"])
def test_zero_output_size(device, op):
    x = torch.randn(2, 3, 5, 6, device=device)
    rois = torch.tensor([[0, 0, 0, 4.0, 4.0], [1, 1, 1, 3.0, 3.0]], device=device)
    fn = segops.roi_align if op == "align" else segops.roi_pool
    assert fn(x, rois, (0, 3)).shape == (2, 3, 0, 3)
    assert fn(x, rois, (2, 0)).shape == (2, 3, 2, 0)


def _x(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


_ROIS = torch.tensor([[0, 1.0, 1.0, 4.0, 4.0]])
nan = math.nan

# (input, boxes, kwargs, exception, message regex)
BAD_INPUTS = [
    pytest.param(_x(1, 2, 6, 6).long(), _ROIS, {}, TypeError, "input", id="int-input"),
    pytest.param(_x(1, 2, 6, 6).bool(), _ROIS, {}, TypeError, "input", id="bool-input"),
    pytest.param(_x(2, 6, 6), _ROIS, {}, ValueError, "input", id="3d-input"),
    pytest.param(_x(1, 1, 2, 6, 6), _ROIS, {}, ValueError, "input", id="5d-input"),
    pytest.param(_x(1, 2, 6, 6), _ROIS[:, 1:], {}, ValueError, "boxes", id="boxes-Kx4"),
    pytest.param(_x(1, 2, 6, 6), _ROIS[0], {}, ValueError, "boxes", id="boxes-1d"),
    pytest.param(_x(1, 2, 6, 6), _ROIS[None], {}, ValueError, "boxes", id="boxes-3d"),
    pytest.param(_x(1, 2, 6, 6), _ROIS.long(), {}, TypeError, "boxes", id="int-boxes"),
    pytest.param(_x(1, 2, 6, 6), [_ROIS], {}, ValueError, "boxes", id="list-Lx5"),
    pytest.param(_x(1, 2, 6, 6), [_ROIS[0, 1:]], {}, ValueError, "boxes", id="list-1d"),
    pytest.param(_x(2, 2, 6, 6), [_ROIS[:, 1:], _ROIS[:, 1:, None]], {}, ValueError, "boxes",
                 id="list-second-3d"),
    pytest.param(_x(1, 2, 6, 6), torch.tensor([[1, 1.0, 1, 4, 4]]), {}, ValueError,
                 "batch index", id="batch-index-N"),
    pytest.param(_x(2, 2, 6, 6), torch.tensor([[0, 1.0, 1, 4, 4], [-1, 1, 1, 4, 4]]), {},
                 ValueError, "batch index", id="batch-index-negative"),
    pytest.param(_x(2, 2, 6, 6), torch.tensor([[0, 1.0, 1, 4, 4], [7, 1, 1, 4, 4]]), {},
                 ValueError, "batch index", id="batch-index-large"),
    pytest.param(_x(2, 2, 6, 6), torch.tensor([[nan, 1.0, 1, 4, 4]]), {}, ValueError,
                 "batch index", id="batch-index-nan"),
    pytest.param(_x(0, 2, 6, 6), _ROIS, {}, ValueError, "batch index", id="batch-index-N=0"),
    pytest.param(_x(1, 2, 6, 6), _ROIS.to("meta"), {}, ValueError, "device", id="meta-boxes"),
    pytest.param(_x(1, 2, 6, 6), [_ROIS[:, 1:].to("meta")], {}, ValueError, "device",
                 id="meta-list"),
    pytest.param(_x(1, 2, 6, 6), _ROIS, {"output_size": -1}, ValueError, "output_size",
                 id="output-size-negative"),
    pytest.param(_x(1, 2, 6, 6), _ROIS, {"output_size": (2, -3)}, ValueError, "output_size",
                 id="output-size-negative-w"),
    pytest.param(_x(1, 2, 6, 6), _ROIS, {"spatial_scale": nan}, ValueError, "spatial_scale",
                 id="scale-nan"),
    pytest.param(_x(1, 2, 6, 6), _ROIS, {"spatial_scale": math.inf}, ValueError,
                 "spatial_scale", id="scale-inf"),
]


@pytest.mark.parametrize("op", ["align", "pool"])
@pytest.mark.parametrize("x,boxes,kwargs,exc,match", BAD_INPUTS)
def test_bad_input(op, x, boxes, kwargs, exc, match):
    kwargs = {"output_size": 2, **kwargs}
    fn = segops.roi_align if op == "align" else segops.roi_pool
    with pytest.raises(exc, match=f"(?i){match}"):
        fn(x, boxes, **kwargs)


@pytest.mark.parametrize("op", ["align", "pool"])
def test_bad_input_modules(op):
    m = segops.RoIAlign(2, 1.0, 2) if op == "align" else segops.RoIPool(2, 1.0)
    with pytest.raises(ValueError, match="(?i)batch index"):
        m(_x(1, 2, 6, 6), torch.tensor([[3, 1.0, 1, 4, 4]]))
    with pytest.raises(ValueError, match="boxes"):
        m(_x(1, 2, 6, 6), _ROIS[:, :4])


@pytest.mark.parametrize("op", ["align", "pool"])
def test_modules_match_functions(device, op):
    p = Problem(torch.float32, torch.float32, (2, 3, 9, 11), (3, 2), 0.5, 2, True,
                [(1.0, 2.0, 13.0, 15.0), (0.0, 0.0, 21.0, 17.0), (4.5, 3.0, 9.0, 8.5)],
                [0, 1, 1], "list", "contiguous", 3)
    x, b = p.features(device), p.boxes_arg(device)
    if op == "align":
        m = segops.RoIAlign(p.output_size, p.scale, p.sampling_ratio, p.aligned)
        out, exp = m(x, b), segops.roi_align(x, b, *align_args(p))
        assert "sampling_ratio=2" in repr(m) and "aligned=True" in repr(m)
    else:
        m = segops.RoIPool(p.output_size, p.scale)
        out, exp = m(x, b), segops.roi_pool(x, b, p.output_size, p.scale)
        assert "spatial_scale=0.5" in repr(m)
    assert_nonzero(exp)
    assert torch.equal(out, exp)


# ======================================================================================
# 6. gradcheck, opcheck, torch.compile, autocast
# ======================================================================================


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_roi_align_gradcheck(device, aligned, sampling_ratio):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 2, 7, 8, generator=g, dtype=torch.float64).to(device)
    x.requires_grad_(True)
    rois = torch.tensor([[0, 0.3, 1.2, 5.1, 6.3], [1, -1.7, 2.2, 9.4, 5.6],
                         [1, 2.5, 2.5, 2.5, 4.5], [0, 4.1, 0.2, 7.9, 7.3]],
                        dtype=torch.float64, device=device)

    def fn(x):
        return segops.roi_align(x, rois, (3, 2), 0.9, sampling_ratio, aligned)

    assert_nonzero(fn(x))
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_roi_pool_gradcheck(device):
    # Distinct values 1 apart: the argmax does not move under gradcheck's perturbation.
    g = torch.Generator().manual_seed(5)
    x = torch.randperm(2 * 2 * 7 * 8, generator=g).to(torch.float64).reshape(2, 2, 7, 8)
    x = x.to(device).requires_grad_(True)
    rois = torch.tensor([[0, 0.3, 1.2, 5.1, 6.3], [1, -1.7, 2.2, 9.4, 5.6],
                         [1, 2.5, 2.5, 2.5, 4.5], [0, 4.1, 0.2, 7.9, 7.3]],
                        dtype=torch.float64, device=device)

    def fn(x):
        return segops.roi_pool(x, rois, (3, 2), 0.9)

    assert_nonzero(fn(x))
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def _opcheck_problem(device, dtype=torch.float32):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 7, 8, generator=g).to(dtype).to(device)
    rois = torch.tensor([[0, 0.3, 1.2, 5.1, 6.3], [1, -1.7, 2.2, 9.4, 5.6],
                         [1, 2.5, 2.5, 2.5, 4.5]]).to(dtype).to(device)
    return x, rois


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck_roi_align(device, dtype):
    x, rois = _opcheck_problem(device, dtype)
    args = (0.5, 3, 2, 2, True)
    torch.library.opcheck(torch.ops.segops.roi_align.default, (x.requires_grad_(True), rois,
                                                               *args))
    grad = torch.randn(3, 3, 3, 2).to(dtype).to(device).requires_grad_(True)
    torch.library.opcheck(torch.ops.segops._roi_align_backward.default,
                          (grad, rois, 0.5, 3, 2, 2, 3, 7, 8, 2, True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck_roi_pool(device, dtype):
    x, rois = _opcheck_problem(device, dtype)
    torch.library.opcheck(torch.ops.segops.roi_pool.default,
                          (x.requires_grad_(True), rois, 0.5, 3, 2))
    _, argmax = torch.ops.segops.roi_pool(x, rois, 0.5, 3, 2)
    assert (argmax >= 0).any()
    grad = torch.randn(3, 3, 3, 2).to(dtype).to(device).requires_grad_(True)
    torch.library.opcheck(torch.ops.segops._roi_pool_backward.default,
                          (grad, rois, argmax, 0.5, 3, 2, 2, 3, 7, 8))


def test_torch_compile_fullgraph(device):
    def f(x, rois, boxes_list):
        a = segops.roi_align(x, rois, (3, 2), 0.5, -1, True)
        b = segops.roi_pool(x, boxes_list, 3, 0.5)
        return a * 2, b.relu()

    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 9, 10, generator=g).to(device)
    rois = torch.tensor([[0, 1.0, 2.0, 15.0, 13.0], [1, 0.0, 0.5, 7.0, 17.0]], device=device)
    boxes_list = [rois[:1, 1:], rois[1:, 1:]]

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    outs, grads = [], []
    for fn in (f, compiled):
        xi = x.clone().requires_grad_(True)
        a, b = fn(xi, rois, boxes_list)
        (a.sum() + (b * b).sum()).backward()
        outs.append((a, b))
        grads.append(xi.grad)
    assert_nonzero(outs[0][0])
    assert_nonzero(outs[0][1])
    assert_nonzero(grads[0])
    torch.testing.assert_close(outs[1], outs[0])
    torch.testing.assert_close(grads[1], grads[0])


def _autocast_check(device, autocast_dtype):
    p = Problem(torch.float32, torch.float32, (2, 3, 9, 11), (3, 2), 0.5, 2, False,
                [(1.0, 2.0, 13.0, 15.0), (0.0, 0.0, 21.0, 17.0), (4.5, 3.0, 9.0, 8.5)],
                [0, 1, 1], "tensor", "contiguous", 8)
    x32, rois32 = p.features(device), p.boxes_arg(device)
    xh = x32.to(autocast_dtype)
    expected_align = ref.roi_align(xh.float().cpu(), rois32.cpu(), *align_args(p))
    expected_pool = ref.roi_pool(xh.float().cpu(), rois32.cpu(), p.output_size, p.scale)
    assert_nonzero(expected_align)
    with torch.autocast(device, dtype=autocast_dtype):
        assert (x32 @ x32.transpose(2, 3)).dtype == autocast_dtype  # autocast is on
        # float32 input: float32 output, computed in float32.
        xg = x32.clone().requires_grad_(True)
        a32 = segops.roi_align(xg, rois32, *align_args(p))
        p32 = segops.roi_pool(x32, rois32, p.output_size, p.scale)
        # half input (with float32 or half boxes): the input's dtype out.
        ah = segops.roi_align(xh, rois32, *align_args(p))
        ah2 = segops.roi_align(xh, rois32.to(autocast_dtype), *align_args(p))
        ph = segops.roi_pool(xh, rois32, p.output_size, p.scale)
    assert a32.dtype == torch.float32 and p32.dtype == torch.float32
    assert ah.dtype == autocast_dtype and ah2.dtype == autocast_dtype
    assert ph.dtype == autocast_dtype
    torch.testing.assert_close(a32, segops.roi_align(x32, rois32, *align_args(p)))
    torch.testing.assert_close(p32, segops.roi_pool(x32, rois32, p.output_size, p.scale))
    assert_close(ah, expected_align, autocast_dtype)
    assert_close(ph, expected_pool, autocast_dtype, rtol=0, atol=0)
    a32.sum().backward()
    assert xg.grad.dtype == torch.float32
    assert_nonzero(xg.grad)


def test_autocast_cpu():
    _autocast_check("cpu", torch.bfloat16)


@pytest.mark.cuda
def test_autocast_cuda():
    _autocast_check("cuda", torch.float16)


# ======================================================================================
# 7. CUDA only
# ======================================================================================


@pytest.mark.cuda
@given(p=problems(max_hw=16))
def test_cuda_matches_cpu(p):
    xc, bc = p.features("cpu"), p.boxes_arg("cpu")
    xg, bg = p.features("cuda"), p.boxes_arg("cuda")
    tol = TOL[p.dtype]
    a_cpu = segops.roi_align(xc, bc, *align_args(p))
    a_gpu = segops.roi_align(xg, bg, *align_args(p))
    assert_nonzero(a_cpu)
    torch.testing.assert_close(a_gpu.cpu(), a_cpu, **tol)
    r_cpu, arg_cpu = torch.ops.segops.roi_pool(xc, p.rois("cpu"), p.scale, *p.pooled)
    r_gpu, arg_gpu = torch.ops.segops.roi_pool(xg, p.rois("cuda"), p.scale, *p.pooled)
    assert torch.equal(r_gpu.cpu(), r_cpu)
    assert torch.equal(arg_gpu.cpu(), arg_cpu)  # index outputs: exactly equal
    for det in (False, True):
        grads = []
        for x, b in ((xc, bc), (xg, bg)):
            x = x.clone().requires_grad_(True)
            with deterministic(det):
                out = segops.roi_align(x, b, *align_args(p))
                out.backward(_grad_output(p, out.shape, x.device))
                x2 = x.detach().clone().requires_grad_(True)
                out = segops.roi_pool(x2, b, p.output_size, p.scale)
                out.backward(_grad_output(p, out.shape, x.device))
            grads.append((x.grad.cpu(), x2.grad.cpu()))
        torch.testing.assert_close(grads[1][0], grads[0][0], **tol)
        torch.testing.assert_close(grads[1][1], grads[0][1], **tol)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_cuda_deterministic_backward_is_bitwise_reproducible(dtype):
    """Many overlapping RoIs on one image: an atomic scatter would vary run to run."""
    g = torch.Generator().manual_seed(9)
    N, C, H, W = 2, 16, 40, 48
    x = torch.randn(N, C, H, W, generator=g).to(dtype).cuda()
    xy = torch.rand(600, 2, generator=g) * 30
    wh = torch.rand(600, 2, generator=g) * 20 + 1
    rois = torch.cat([torch.randint(0, N, (600, 1), generator=g).float(), xy, xy + wh], 1)
    rois = rois.cuda()
    grad = torch.randn(600, C, 7, 7, generator=g).to(dtype).cuda()
    for op in ("align", "pool"):
        results = []
        for _ in range(3):
            xi = x.clone().requires_grad_(True)
            with deterministic(True):
                if op == "align":
                    out = segops.roi_align(xi, rois, 7, 1.0, 2, True)
                else:
                    out = segops.roi_pool(xi, rois, 7, 1.0)
                out.backward(grad)
            results.append(xi.grad)
        assert_nonzero(results[0])
        assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


@pytest.mark.cuda
@pytest.mark.parametrize("op", ["align", "pool"])
def test_cuda_device_mismatch(op):
    fn = segops.roi_align if op == "align" else segops.roi_pool
    x = torch.randn(1, 2, 6, 6, device="cuda")
    with pytest.raises(ValueError, match="device"):
        fn(x, _ROIS, 2)
    with pytest.raises(ValueError, match="device"):
        fn(x, [_ROIS[:, 1:]], 2)
    with pytest.raises(ValueError, match="device"):
        fn(x.cpu(), _ROIS.cuda(), 2)


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("det", [False, True], ids=["default", "deterministic"])
def test_cuda_64bit_indexing(det):
    """An input of more than 2**31 elements, a RoI in the last plane (offset > 2**31)."""
    N, C, H, W = 2, 1025, 1024, 1024
    assert N * C * H * W > 2**31
    x = torch.zeros(N, C, H, W, dtype=torch.bfloat16, device="cuda")
    g = torch.Generator().manual_seed(10)
    x[1, C - 1, H - 16:, W - 16:] = torch.randn(16, 16, generator=g).bfloat16().cuda()
    rois = torch.tensor([[1, W - 14.5, H - 13.0, W - 2.5, H - 1.5]], device="cuda")
    shift = torch.tensor([1.0, W - 16, H - 16, W - 16, H - 16])
    sub = x[1:2, C - 1:, H - 16:, W - 16:].float().cpu().requires_grad_(True)
    sub_rois = rois.cpu() - shift  # the same box in the 16 x 16 corner window, batch 0
    for op in ("align", "pool"):
        xg = x.detach().requires_grad_(True)
        sg = sub.detach().clone().requires_grad_(True)
        if op == "align":
            expected = ref.roi_align(sg, sub_rois, 4, 1.0, 2, True)
        else:
            expected = ref.roi_pool(sg, sub_rois, 4, 1.0)
        grad = torch.linspace(-1, 2, 16).reshape(1, 1, 4, 4)
        expected.backward(grad)
        assert_nonzero(expected)
        with deterministic(det):
            if op == "align":
                out = segops.roi_align(xg, rois, 4, 1.0, 2, True)
            else:
                out = segops.roi_pool(xg, rois, 4, 1.0)
            full_grad = torch.zeros_like(out)  # only the last plane sends a gradient
            full_grad[:, C - 1:] = grad.to(full_grad)
            out.backward(full_grad)
        assert out.shape == (1, C, 4, 4)
        assert (out[:, : C - 1] == 0).all()
        assert_close(out[:, C - 1:], expected, torch.bfloat16)
        window = xg.grad[1, C - 1, H - 16:, W - 16:]
        assert_close(window, sg.grad[0, 0], torch.bfloat16)
        assert_nonzero(window)
        window.zero_()
        assert not xg.grad.any()  # nothing lands outside the window
        del xg, out, window
