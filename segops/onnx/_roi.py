"""ONNX translations of the RoI pooling ops: RoiAlign and MaxRoiPool.

ONNX's RoiAlign (opset 16) is torchvision's: ``coordinate_transformation_mode``
"output_half_pixel" is ``aligned=False`` (sizes clamped to >= 1), "half_pixel" is
``aligned=True``; ``sampling_ratio = 0`` is the adaptive ``ceil(size / bins)``; the bilinear
rule (samples outside ``[-1, size]`` contribute 0, clamping at the border) and the mean over
``max(grid_h * grid_w, 1)`` samples are the same, so onnxruntime's kernel computes segops'
numbers up to the order of the four bilinear products (a few ulps). What it lacks is done
around it: the boxes are scaled by ``spatial_scale`` before the op, in the input's dtype as
segops does (the attribute is a float32, which would round a float64 scale), and a box with
a non-finite coordinate is replaced by a harmless one whose output is then zeroed (segops
pools zeros there; onnxruntime would read undefined memory).
"""

from __future__ import annotations

from onnxscript import ir
from onnxscript import opset18 as op

from ._common import DOUBLE, FLOAT, HALF, INT64, col, compute_dtype, const, finite_rows, ints, to


def _split_rois(rois: ir.Value, dtype: ir.DataType):
    """(boxes [K, 4] in `dtype` with non-finite rows zeroed, batch int64 [K], finite [K])."""
    r = to(rois, dtype)
    boxes = op.Slice(r, ints(1), ints(5), ints(1))
    finite = finite_rows(boxes, dtype)
    boxes = op.Where(op.Unsqueeze(finite, ints(1)), boxes, const(0, dtype))
    batch = op.Cast(col(r, 0), to=INT64)
    return boxes, batch, finite


def _zero_rows(out: ir.Value, finite: ir.Value, dtype: ir.DataType) -> ir.Value:
    return op.Where(op.Unsqueeze(finite, ints(1, 2, 3)), out, const(0, dtype))


def _align(x, boxes, batch, scale: float, ph: int, pw: int, sampling_ratio: int,
           aligned: bool, dtype: ir.DataType):
    scaled = op.Mul(boxes, const(scale, dtype))
    return op.RoiAlign(
        x, scaled, batch, mode="avg", output_height=ph, output_width=pw,
        sampling_ratio=max(int(sampling_ratio), 0), spatial_scale=1.0,
        coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel")


def roi_align(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    dt = compute_dtype(input)
    x = to(input, dt)
    boxes, batch, finite = _split_rois(rois, dt)
    out = _align(x, boxes, batch, spatial_scale, pooled_height, pooled_width, sampling_ratio,
                 aligned, dt)
    return to(_zero_rows(out, finite, dt), input.dtype)


def roi_pool(input, rois, spatial_scale, pooled_height, pooled_width):
    # MaxRoiPool rounds the scaled corners with std::round and quantises bins with
    # floor/ceil, as torchvision; it computes in the input's dtype (float32 for half
    # types here, where segops also uses float32 geometry). onnxruntime implements it for
    # float32 only: a float64 graph is valid ONNX that onnxruntime cannot run.
    dt = FLOAT if input.dtype in HALF else input.dtype
    x = to(input, dt)
    boxes, batch, finite = _split_rois(rois, dt)
    r = op.Concat(op.Unsqueeze(op.Cast(batch, to=dt), ints(1)), boxes, axis=1)
    out = op.MaxRoiPool(x, r, pooled_shape=[pooled_height, pooled_width],
                        spatial_scale=float(spatial_scale))
    out = to(_zero_rows(out, finite, dt), input.dtype)
    # argmax (the backward's bookkeeping) has no ONNX counterpart; inference does not read
    # it (segops.roi_pool returns the values only).
    argmax = op.Expand(const(-1, INT64), op.Shape(out))
    return out, argmax


def multilevel_roi_align(features, rois, spatial_scales, pooled_height, pooled_width,
                         sampling_ratio, aligned, level_areas, all_levels):
    dtype = features[0].dtype
    dt = compute_dtype(features[0])
    boxes, batch, finite = _split_rois(rois, dt)
    outs = [_align(to(f, dt), boxes, batch, s, pooled_height, pooled_width, sampling_ratio,
                   aligned, dt) for f, s in zip(features, spatial_scales)]
    if all_levels:
        out = op.Concat(*[op.Unsqueeze(_zero_rows(o, finite, dt), ints(0)) for o in outs],
                        axis=0)
        return to(out, dtype)
    # The level: how many of the ascending thresholds the area (in the geometry dtype,
    # compared in float64) reaches, as csrc/common/roi_levels.h; NaN reaches none.
    r = to(rois, dt)
    area = op.Mul(op.Sub(col(r, 3), col(r, 1)), op.Sub(col(r, 4), col(r, 2)))
    area = op.Cast(area, to=DOUBLE)
    level = const(0, INT64)
    for threshold in level_areas:
        level = op.Add(level, op.Cast(op.GreaterOrEqual(area, const(threshold, DOUBLE)),
                                      to=INT64))
    level = op.Unsqueeze(level, ints(1, 2, 3))
    out = outs[0]
    for i in range(1, len(outs)):
        out = op.Where(op.Equal(level, const(i, INT64)), outs[i], out)
    return to(_zero_rows(out, finite, dt), dtype)
