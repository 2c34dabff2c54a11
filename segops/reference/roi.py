"""Pure-PyTorch references for the RoI pooling ops (docs/ops/roi.md).

These are the executable form of the spec and the oracle the tests compare the kernels
against, values and (through autograd) gradients. They are written to be read:
one Python loop over the RoIs, with the work inside a RoI vectorised.

``roi_align`` reproduces torchvision's arithmetic operation by operation:

* the box geometry is computed in the input dtype for float32/float64 and in float32 for
  float16/bfloat16 (torchvision uses half precision there; segops does better);
* sample positions are ``start + p * bin + (i + 0.5) * bin / grid``, evaluated in that order;
* the samples of a bin are summed one after another, ``iy`` outer and ``ix`` inner, each
  sample adding ``w1*v1 + w2*v2 + w3*v3 + w4*v4``, and the sum is divided by
  ``max(grid_h * grid_w, 1)``. Half inputs accumulate in float32 and are rounded once,
  at the end.

``roi_pool`` is torchvision's: corners rounded (half away from zero) after scaling, RoI size
``max(end - start + 1, 1)``, bins quantised with floor/ceil and clipped to the image, the
maximum taken with a strict ``>`` starting from ``-FLT_MAX`` (so the first maximum in raster
order wins), an empty bin giving 0 and argmax -1.

``multilevel_roi_align`` is ``roi_align`` per level: in mode "assign" each RoI at the level
torchvision's LevelMapper gives it (``floor`` of the float32 ``log2`` formula; the kernel
decides by comparing areas instead, see ``segops.multilevel_roi_align``, and may differ on a
knife edge), in mode "all" at every level.

Differences from torchvision that are part of segops' spec, and so of these references:

* a box with a NaN or infinite coordinate (after scaling) is empty: its output rows are 0
  and it sends no gradient;
* a batch index outside ``[0, N)`` is an error (``ValueError``);
* a zero-size feature map gives zeros;
* multilevel: a zero, negative or NaN box area goes to the lowest level;
* roi_pool: a rounded corner beyond ``2**30`` pixels (far outside any feature map) makes the
  RoI empty instead of overflowing an ``int``.

Features are assumed finite; NaN features are skipped by roi_pool's maximum, as in the
kernel.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor

from .. import _args

__all__ = ["roi_align", "roi_pool", "roi_pool_with_argmax", "convert_boxes_to_rois",
           "multilevel_roi_align", "level_values", "map_levels"]

BoxesType = Union[Tensor, Sequence[Tensor]]

_HALF_DTYPES = (torch.float16, torch.bfloat16)
_FLT_MAX = 3.4028234663852886e38
_POOL_LIMIT = float(1 << 30)


def _pair(v: Union[int, Sequence[int]]) -> Tuple[int, int]:
    return _args.size_pair("roi_align", "output_size", v)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the box geometry and of the accumulation."""
    return torch.float32 if dtype in _HALF_DTYPES else dtype


def convert_boxes_to_rois(boxes: BoxesType, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``Tensor[K, 5]`` or ``list[Tensor[L_i, 4]]`` -> ``Tensor[K, 5]`` of ``dtype``."""
    if isinstance(boxes, Tensor):
        return boxes.to(device=device, dtype=dtype)
    parts = []
    for i, b in enumerate(boxes):
        b = b.to(device=device, dtype=dtype)
        parts.append(torch.cat([torch.full_like(b[:, :1], i), b], dim=1))
    if not parts:
        return torch.zeros(0, 5, dtype=dtype, device=device)
    return torch.cat(parts, dim=0)


def _batch_indices(rois: Tensor) -> List[int]:
    # C++ reads the index with a truncating float -> int conversion.
    return [int(v) for v in rois[:, 0].tolist()]


def _prepare(input: Tensor, boxes: BoxesType, output_size, spatial_scale: float):
    """The input in the compute dtype, rois, their batch indices, the scale as a tensor of
    the compute dtype, and the output size (arguments are not validated: the ops do that)."""
    pooled = _pair(output_size)
    dt = _compute_dtype(input.dtype)
    rois = convert_boxes_to_rois(boxes, dt, input.device)
    idx = _batch_indices(rois)
    scale = torch.tensor(float(spatial_scale), dtype=dt, device=input.device)
    return input.to(dt), rois, idx, scale, pooled


# --------------------------------------------------------------------------------------
# roi_align
# --------------------------------------------------------------------------------------


def _axis_samples(start: Tensor, end: Tensor, pooled: int, sampling_ratio: int,
                  aligned: bool) -> Tuple[Tensor, int]:
    """Sample positions ``[pooled, grid]`` along one axis, and ``grid``; all in start's dtype."""
    dt = start.dtype
    length = end - start
    if not aligned:
        length = torch.clamp_min(length, 1.0)  # malformed RoIs are forced to size >= 1
    pooled_t = torch.tensor(float(pooled), dtype=dt)
    bin_size = length / pooled_t
    if sampling_ratio > 0:
        grid = sampling_ratio
    else:
        # An inverted aligned box gives ceil(...) <= 0: no samples along this axis.
        grid = max(int(math.ceil(float(torch.ceil(length / pooled_t)))), 0)
    p = torch.arange(pooled, dtype=dt).unsqueeze(1)  # [pooled, 1]
    i = (torch.arange(grid, dtype=dt) + 0.5).unsqueeze(0)  # [1, grid]
    grid_t = torch.tensor(float(max(grid, 1)), dtype=dt)
    # start + p * bin + (i + 0.5) * bin / grid, left to right, each step rounded in dt.
    pos = (start + p * bin_size) + ((i * bin_size) / grid_t)
    return pos, grid


def _axis_interp(pos: Tensor, size: int):
    """torchvision's bilinear rule along one axis.

    Returns (valid, lo, hi, w_lo, w_hi) for each position. A position outside
    ``[-1, size]`` (NaN included) is invalid and gets zero weights on pixel 0.
    """
    valid = (pos >= -1.0) & (pos <= float(size))
    v = torch.where(valid, pos, torch.zeros_like(pos))
    v = torch.where(v <= 0, torch.zeros_like(v), v)
    lo = v.to(torch.int64)  # v >= 0: truncation is floor
    at_edge = lo >= size - 1
    lo = torch.where(at_edge, torch.full_like(lo, size - 1), lo)
    hi = torch.where(at_edge, lo, lo + 1)
    v = torch.where(at_edge, lo.to(v.dtype), v)
    l = v - lo.to(v.dtype)
    h = 1.0 - l
    zero = torch.zeros_like(l)
    w_lo = torch.where(valid, h, zero)
    w_hi = torch.where(valid, l, zero)
    lo = torch.where(valid, lo, torch.zeros_like(lo))
    hi = torch.where(valid, hi, torch.zeros_like(hi))
    return valid, lo, hi, w_lo, w_hi


def _roi_align_one(feat: Tensor, box: Tensor, scale: Tensor, pooled_h: int, pooled_w: int,
                   sampling_ratio: int, aligned: bool) -> Tensor:
    """One RoI over feat[C, H, W] (already in the compute dtype) -> [C, pooled_h, pooled_w]."""
    C, H, W = feat.shape
    dt = feat.dtype
    zeros = feat.new_zeros(C, pooled_h, pooled_w)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (box * scale - offset).unbind(0)
    # A non-finite corner, or finite corners whose difference overflows (every sample would
    # then be NaN or infinite): the RoI contributes nothing.
    if not bool(torch.isfinite(torch.stack([x1, y1, x2, y2, x2 - x1, y2 - y1])).all()) \
            or H == 0 or W == 0:
        return zeros
    ys, grid_h = _axis_samples(y1, y2, pooled_h, sampling_ratio, aligned)  # [ph, gh]
    xs, grid_w = _axis_samples(x1, x2, pooled_w, sampling_ratio, aligned)  # [pw, gw]
    if grid_h == 0 or grid_w == 0:
        return zeros
    count = torch.tensor(float(max(grid_h * grid_w, 1)), dtype=dt)

    vy, ylo, yhi, wylo, wyhi = (t.reshape(-1, 1) for t in _axis_interp(ys.reshape(-1), H))
    vx, xlo, xhi, wxlo, wxhi = (t.reshape(1, -1) for t in _axis_interp(xs.reshape(-1), W))
    valid = vy & vx  # [ph*gh, pw*gw]
    w1, w2, w3, w4 = wylo * wxlo, wylo * wxhi, wyhi * wxlo, wyhi * wxhi
    v1, v2, v3, v4 = feat[:, ylo, xlo], feat[:, ylo, xhi], feat[:, yhi, xlo], feat[:, yhi, xhi]
    term = w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4  # [C, ph*gh, pw*gw]
    term = torch.where(valid, term, torch.zeros_like(term))
    term = term.reshape(C, pooled_h, grid_h, pooled_w, grid_w).permute(0, 1, 3, 2, 4)
    term = term.reshape(C, pooled_h, pooled_w, grid_h * grid_w)
    # Sequential sum over the samples of each bin, iy outer and ix inner, like the kernels.
    acc = zeros
    for s in range(grid_h * grid_w):
        acc = acc + term[..., s]
    return acc / count


def roi_align(input: Tensor, boxes: BoxesType, output_size: Union[int, Tuple[int, int]],
              spatial_scale: float = 1.0, sampling_ratio: int = -1,
              aligned: bool = False) -> Tensor:
    """Reference RoIAlign (torchvision semantics, docs/ops/roi.md). Differentiable w.r.t. ``input``.

    Args:
        input: ``Tensor[N, C, H, W]``, float32/float64/float16/bfloat16.
        boxes: ``Tensor[K, 5]`` of ``(batch_index, x1, y1, x2, y2)`` or
            ``list[Tensor[L_i, 4]]``, one per image.
        output_size: ``int`` or ``(height, width)`` of the pooled output.
        spatial_scale: multiplies the box coordinates (e.g. 1/16 for stride 16).
        sampling_ratio: samples per bin and axis; ``<= 0`` means ``ceil(roi_size / pooled)``.
        aligned: shift the box by -0.5 pixel (pixel centres at ``i + 0.5``).

    Returns:
        ``Tensor[K, C, output_h, output_w]`` of ``input.dtype``.
    """
    x, rois, idx, scale, (pooled_h, pooled_w) = _prepare(input, boxes, output_size,
                                                          spatial_scale)
    N, C, H, W = input.shape
    if rois.size(0) == 0 or pooled_h == 0 or pooled_w == 0:
        return x.new_zeros(rois.size(0), C, pooled_h, pooled_w).to(input.dtype)
    outs = [
        _roi_align_one(x[b], rois[k, 1:], scale, pooled_h, pooled_w, sampling_ratio, aligned)
        for k, b in enumerate(idx)
    ]
    return torch.stack(outs).to(input.dtype)


# --------------------------------------------------------------------------------------
# roi_pool
# --------------------------------------------------------------------------------------


def _round_half_away(v: Tensor) -> Tensor:
    """C's round(): halves away from zero (torch.round rounds halves to even)."""
    t = torch.trunc(v)
    frac = v - t  # exact
    return t + torch.sign(v) * (frac.abs() >= 0.5).to(v.dtype)


def _pool_bins(start: int, length: int, pooled: int, size: int, dt: torch.dtype):
    """Pixel ranges [b, e) of the bins along one axis, clipped to [0, size)."""
    bin_size = torch.tensor(float(length), dtype=dt) / torch.tensor(float(pooled), dtype=dt)
    p = torch.arange(pooled, dtype=dt)
    b = torch.floor(p * bin_size).to(torch.int64) + start
    e = torch.ceil((p + 1) * bin_size).to(torch.int64) + start
    return b.clamp(0, size).tolist(), e.clamp(0, size).tolist()


def _roi_pool_one(feat: Tensor, box: Tensor, scale: Tensor, pooled_h: int, pooled_w: int):
    C, H, W = feat.shape
    out = feat.new_zeros(C, pooled_h, pooled_w)
    arg = torch.full((C, pooled_h, pooled_w), -1, dtype=torch.int64, device=feat.device)
    corners = _round_half_away(box * scale)
    if not bool(((corners >= -_POOL_LIMIT) & (corners <= _POOL_LIMIT)).all()):  # NaN too
        return out, arg
    x1, y1, x2, y2 = (int(v) for v in corners.tolist())
    roi_w = max(x2 - x1 + 1, 1)
    roi_h = max(y2 - y1 + 1, 1)
    hb, he = _pool_bins(y1, roi_h, pooled_h, H, feat.dtype)
    wb, we = _pool_bins(x1, roi_w, pooled_w, W, feat.dtype)
    out_rows, arg_rows = [], []
    for ph in range(pooled_h):
        out_row, arg_row = [], []
        for pw in range(pooled_w):
            h0, h1, w0, w1 = hb[ph], he[ph], wb[pw], we[pw]
            if h1 <= h0 or w1 <= w0:
                out_row.append(feat.new_zeros(C))
                arg_row.append(torch.full((C,), -1, dtype=torch.int64, device=feat.device))
                continue
            region = feat[:, h0:h1, w0:w1].reshape(C, -1)
            # NaN never compares greater: give it the lowest rank.
            ranked = torch.where(torch.isnan(region), torch.full_like(region, -math.inf),
                                 region)
            best, i = ranked.max(dim=1)  # first maximum in raster order
            taken = best > -_FLT_MAX  # strict '>' starting from -FLT_MAX
            value = region.gather(1, i.unsqueeze(1)).squeeze(1)
            value = torch.where(taken, value, torch.full_like(value, -_FLT_MAX))
            rw = w1 - w0
            flat = (h0 + i // rw) * W + (w0 + i % rw)
            out_row.append(value)
            arg_row.append(torch.where(taken, flat, torch.full_like(flat, -1)))
        out_rows.append(torch.stack(out_row, dim=1))  # [C, pw]
        arg_rows.append(torch.stack(arg_row, dim=1))
    return torch.stack(out_rows, dim=1), torch.stack(arg_rows, dim=1)


def roi_pool_with_argmax(input: Tensor, boxes: BoxesType,
                         output_size: Union[int, Tuple[int, int]],
                         spatial_scale: float = 1.0) -> Tuple[Tensor, Tensor]:
    """Reference RoIPool returning ``(output, argmax)``; argmax is ``h * W + w`` within the
    plane, -1 where nothing was pooled (like ``torch.ops.segops.roi_pool``)."""
    x, rois, idx, scale, (pooled_h, pooled_w) = _prepare(input, boxes, output_size,
                                                          spatial_scale)
    N, C, H, W = input.shape
    K = rois.size(0)
    if K == 0 or pooled_h == 0 or pooled_w == 0:
        return (x.new_zeros(K, C, pooled_h, pooled_w).to(input.dtype),
                torch.full((K, C, pooled_h, pooled_w), -1, dtype=torch.int64,
                           device=input.device))
    outs, args = zip(*(_roi_pool_one(x[b], rois[k, 1:], scale, pooled_h, pooled_w)
                       for k, b in enumerate(idx)))
    return torch.stack(outs).to(input.dtype), torch.stack(args)


def roi_pool(input: Tensor, boxes: BoxesType, output_size: Union[int, Tuple[int, int]],
             spatial_scale: float = 1.0) -> Tensor:
    """Reference RoIPool (torchvision semantics, docs/ops/roi.md). Differentiable w.r.t. ``input``:
    each output's gradient goes to its argmax pixel.

    Args:
        input: ``Tensor[N, C, H, W]``.
        boxes: ``Tensor[K, 5]`` or ``list[Tensor[L_i, 4]]``.
        output_size: ``int`` or ``(height, width)``.
        spatial_scale: multiplies the box coordinates before rounding.

    Returns:
        ``Tensor[K, C, output_h, output_w]`` of ``input.dtype``.
    """
    return roi_pool_with_argmax(input, boxes, output_size, spatial_scale)[0]


# --------------------------------------------------------------------------------------
# multilevel_roi_align
# --------------------------------------------------------------------------------------


def _k_min(spatial_scales: Sequence[float]) -> int:
    """torchvision's ``k_min``: -log2 of the first scale, which with the others must be
    consecutive powers of two (within 1e-6 relative, as torchvision infers them)."""
    k_min = round(-math.log2(spatial_scales[0]))
    for i, s in enumerate(spatial_scales):
        if not abs(s / 2.0 ** -(k_min + i) - 1) <= 1e-6:
            raise ValueError("spatial_scales must be consecutive powers of two with "
                             f"mode='assign', got {list(spatial_scales)}")
    return k_min


def level_values(rois: Tensor, canonical_scale: float = 224,
                 canonical_level: int = 4) -> Tensor:
    """torchvision's LevelMapper before the floor, in the dtype of ``rois`` ([K, 5]):
    ``canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6``, ``area = (x2 - x1) *
    (y2 - y1)`` (no +1), evaluated as torchvision does (float32 ``log2`` for float32 boxes)."""
    x1, y1, x2, y2 = rois[:, 1:].unbind(1)
    s = torch.sqrt((x2 - x1) * (y2 - y1))
    eps = torch.tensor(1e-6, dtype=s.dtype, device=s.device)
    return canonical_level + torch.log2(s / canonical_scale) + eps


def map_levels(rois: Tensor, spatial_scales: Sequence[float], canonical_scale: float = 224,
               canonical_level: int = 4) -> Tensor:
    """The level index (0 = ``spatial_scales[0]``) of each RoI, int64 [K]: torchvision's
    LevelMapper, ``floor(level_values)`` clamped to ``[k_min, k_min + L - 1]``, minus
    ``k_min``. A zero, negative or NaN area goes to the lowest level (torchvision: -inf is
    clamped there; NaN would be undefined)."""
    k_min = _k_min(spatial_scales)
    k_max = k_min + len(spatial_scales) - 1
    lvl = torch.floor(level_values(rois, canonical_scale, canonical_level))
    lvl = torch.where(torch.isnan(lvl), torch.full_like(lvl, k_min), lvl.clamp(k_min, k_max))
    return lvl.to(torch.int64) - k_min


def multilevel_roi_align(features: Sequence[Tensor], boxes: BoxesType,
                         output_size: Union[int, Tuple[int, int]],
                         spatial_scales: Sequence[float], sampling_ratio: int = -1,
                         aligned: bool = False, canonical_scale: float = 224,
                         canonical_level: int = 4, mode: str = "assign") -> Tensor:
    """Reference multilevel RoIAlign (docs/ops/roi.md): :func:`roi_align` per level.

    ``mode="assign"`` (torchvision's ``MultiScaleRoIAlign``): RoI k is pooled from level
    ``map_levels(...)[k]`` with that level's scale; ``[K, C, h, w]``. The LevelMapper runs
    in the dtype the box geometry uses (that of the features for float32/float64, float32
    for half types). ``mode="all"`` (PANet): every RoI from every level, ``[L, K, C, h, w]``.
    Differentiable w.r.t. every level of ``features``.
    """
    f0 = features[0]
    rois = convert_boxes_to_rois(boxes, _compute_dtype(f0.dtype), f0.device)
    if mode == "all":
        return torch.stack([roi_align(f, rois, output_size, s, sampling_ratio, aligned)
                            for f, s in zip(features, spatial_scales)])
    levels = map_levels(rois, spatial_scales, canonical_scale, canonical_level)
    h, w = _pair(output_size)
    out = f0.new_zeros((rois.size(0), f0.size(1), h, w))
    for l, (f, s) in enumerate(zip(features, spatial_scales)):
        idx = torch.nonzero(levels == l).flatten()
        if idx.numel():
            out = out.index_copy(0, idx, roi_align(f, rois[idx], output_size, s,
                                                   sampling_ratio, aligned))
    return out
