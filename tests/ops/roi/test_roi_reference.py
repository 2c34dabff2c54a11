"""roi_align and roi_pool (docs/ops/roi.md): the pure-PyTorch reference against a scalar
transliteration of torchvision's CPU kernels (bitwise).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given

from segops.reference import roi as ref

from helpers.roi import (
    align_args, assert_nonzero, problems, ref_dtype, reference_align, reference_pool,
)


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
