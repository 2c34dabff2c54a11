"""ONNX translations of the mask ops.

``assemble_masks``: MatMul, ``1 / (1 + Exp(-z))`` (segops' sigmoid), and YOLACT's crop as
comparisons of the integer pixel indices with the crop bounds, computed in segops' dtype and
order (``min(b1, b2) * S - padding`` clamped at 0, ``max(b1, b2) * S + padding`` clamped at
S); a box with a non-finite coordinate is empty. The fused form composes the bilinear
upsample (``align_corners=False``) from Gather and arithmetic with segops' tap arithmetic
(source ``scale * (o + 0.5) - 0.5`` clamped at 0, ``scale = in / out``, the high tap clamped
to the last pixel), so the only differences from eager are the MatMul's summation order and
onnxruntime's Exp: a few ulps of a value, which flips a mask pixel only where that value
lies within the rounding band of the threshold.

``paste_masks`` (detectron2 mode): GridSample (bilinear, zero padding, ``align_corners=0``)
on the grid ``gx = ((x + 0.5) - x0) / (x1 - x0) * 2 - 1`` (clamped to [-3, 3], as segops),
i.e. detectron2's GPU path; boxes with ``x1 <= x0``, ``y1 <= y0`` or a non-finite coordinate
paste nothing. torchvision mode (integer boxes, a resize per box to a data-dependent size)
has no standard-ONNX form and raises.
"""

from __future__ import annotations

from onnxscript import opset18 as op
from onnxscript import opset20

from ._common import (
    INT64, UnsupportedExportError, arange, col, compare, compute_dtype, const, finite_rows,
    ints, opset_version, to)


def _logits_masks(protos, coeffs, boxes, padding: int):
    """The cropped masks [N, H, W] in the accumulation dtype (not yet rounded)."""
    acc = compute_dtype(protos)
    p, c = to(protos, acc), to(coeffs, acc)
    shape = op.Shape(p)  # [H, W, k]
    h, w = op.Shape(p, start=0, end=1), op.Shape(p, start=1, end=2)
    flat = op.Reshape(p, op.Concat(ints(-1), op.Shape(p, start=2, end=3), axis=0))  # [HW, k]
    z = op.MatMul(c, op.Transpose(flat, perm=[1, 0]))  # [N, HW]
    z = op.Reshape(z, op.Concat(ints(-1), op.Slice(shape, ints(0), ints(2)), axis=0))
    # 1 / (1 + exp(-z)), segops' formula: onnxruntime's Sigmoid is accurate to about 1e-7
    # absolute, which is far from 1e-5 relative for the small values of a mask's background
    one = const(1, acc)
    sig = op.Div(one, op.Add(one, op.Exp(op.Neg(z))))  # [N, H, W]

    geo = compute_dtype(boxes)
    b = to(boxes, geo)

    def bounds(i1: int, i2: int, size):
        s = op.Cast(size, to=geo)  # [1]
        v1, v2 = op.Mul(col(b, i1), s), op.Mul(col(b, i2), s)
        lo = op.Max(op.Sub(op.Min(v1, v2), const(padding, geo)), const(0, geo))
        hi = op.Min(op.Add(op.Max(v1, v2), const(padding, geo)), s)
        idx = op.Unsqueeze(arange(size, geo), ints(0))  # [1, S]
        lo, hi = op.Unsqueeze(lo, ints(1)), op.Unsqueeze(hi, ints(1))
        return op.And(op.GreaterOrEqual(idx, lo), op.Less(idx, hi))  # [N, S]

    keep_x = op.Unsqueeze(bounds(0, 2, w), ints(1))  # [N, 1, W]
    keep_y = op.Unsqueeze(bounds(1, 3, h), ints(2))  # [N, H, 1]
    keep = op.And(op.And(keep_x, keep_y), op.Unsqueeze(finite_rows(b, geo), ints(1, 2)))
    return op.Where(keep, sig, const(0, acc))


def assemble_masks(protos, coeffs, boxes, padding):
    return to(_logits_masks(protos, coeffs, boxes, padding), protos.dtype)


def _taps(n_in, n_out: int, dt):
    """Per-axis bilinear taps (i0, i1 int64 [n_out], l0, l1 [n_out]) of segops' resize."""
    o = arange(ints(n_out), dt)
    scale = op.Div(op.Cast(n_in, to=dt), const(float(n_out), dt))
    src = op.Max(op.Sub(op.Mul(scale, op.Add(o, const(0.5, dt))), const(0.5, dt)),
                 const(0, dt))
    last = op.Sub(n_in, ints(1))
    i0 = op.Min(op.Cast(op.Floor(src), to=INT64), last)
    l1 = op.Clip(op.Sub(src, op.Cast(i0, to=dt)), const(0, dt), const(1, dt))
    i1 = op.Add(i0, op.Cast(op.Less(i0, last), to=INT64))
    return i0, i1, op.Sub(const(1, dt), l1), l1


def assemble_masks_upsampled(protos, coeffs, boxes, padding, height, width, threshold):
    acc = compute_dtype(protos)
    v = to(to(_logits_masks(protos, coeffs, boxes, padding), protos.dtype), acc)
    y0, y1, ly0, ly1 = _taps(op.Shape(v, start=1, end=2), height, acc)
    x0, x1, lx0, lx1 = _taps(op.Shape(v, start=2, end=3), width, acc)
    r0, r1 = op.Gather(v, y0, axis=1), op.Gather(v, y1, axis=1)  # [N, h, W]
    ly0, ly1 = op.Unsqueeze(ly0, ints(1)), op.Unsqueeze(ly1, ints(1))

    def across(r):
        return op.Add(op.Mul(op.Gather(r, x0, axis=2), lx0),
                      op.Mul(op.Gather(r, x1, axis=2), lx1))

    up = op.Add(op.Mul(across(r0), ly0), op.Mul(across(r1), ly1))
    # compared in protos' dtype (the threshold rounded to it)
    return compare(op.Greater, up, threshold, protos.dtype)


def paste_masks(masks, boxes, height, width, threshold, mode):
    if mode != "detectron2":
        raise UnsupportedExportError(
            f"segops.onnx: `segops.paste_masks` with mode={mode!r} has no standard-ONNX form "
            f"(each box is resized to its own integer size); export with "
            f"mode='detectron2'")
    dt = compute_dtype(masks, boxes)
    m = op.Unsqueeze(to(masks, dt), ints(1))  # [N, 1, Mh, Mw]
    b = to(boxes, dt)
    x0, y0, x1, y1 = (op.Unsqueeze(col(b, i), ints(1)) for i in range(4))  # [N, 1]

    def axis(size: int, lo, hi):
        centres = op.Unsqueeze(op.Add(arange(ints(size), dt), const(0.5, dt)), ints(0))
        g = op.Sub(op.Mul(op.Div(op.Sub(centres, lo), op.Sub(hi, lo)), const(2, dt)),
                   const(1, dt))
        return op.Clip(g, const(-3, dt), const(3, dt))  # [N, size]

    gx = op.Unsqueeze(axis(width, x0, x1), ints(1))  # [N, 1, W]
    gy = op.Unsqueeze(axis(height, y0, y1), ints(2))  # [N, H, 1]
    full = op.Concat(op.Shape(m, start=0, end=1), ints(height, width), axis=0)
    grid = op.Concat(op.Unsqueeze(op.Expand(gx, full), ints(3)),
                     op.Unsqueeze(op.Expand(gy, full), ints(3)), axis=3)  # [N, H, W, 2]
    if opset_version() >= 20:
        sampled = opset20.GridSample(m, grid, mode="linear", padding_mode="zeros",
                                     align_corners=0)
    else:
        sampled = op.GridSample(m, grid, mode="bilinear", padding_mode="zeros",
                                align_corners=0)
    values = op.Squeeze(sampled, ints(1))  # [N, H, W]
    ok = op.And(finite_rows(b, dt), op.And(op.Greater(col(b, 2), col(b, 0)),
                                       op.Greater(col(b, 3), col(b, 1))))
    values = op.Where(op.Unsqueeze(ok, ints(1, 2)), values, const(0, dt))
    values = to(values, masks.dtype)
    if threshold is None:
        return values
    return compare(op.GreaterOrEqual, values, threshold, masks.dtype)


