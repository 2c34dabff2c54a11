"""Pure-PyTorch references for the mask ops (docs/ops/masks.md).

The executable form of the spec and the oracle the tests compare the kernels against. Written
to be read first; vectorised where that costs nothing in clarity.

``assemble_masks`` — YOLACT's prototype assembly (``layers/output_utils.py``
``postprocess``), operation by operation:

* ``masks = sigmoid(protos @ coeffs.T)`` (``[H, W, N]``), computed in float32 for float32,
  float16 and bfloat16 protos and in float64 for float64 protos, rounded once to the protos'
  dtype at the end;
* ``crop(masks, boxes, padding)`` (``layers/box_utils.py``, :func:`yolact_crop` here), whose
  bounds come from ``sanitize_coordinates(..., cast=False)``: per axis
  ``lo = clamp(min(b1 * S, b2 * S) - padding, min=0)``,
  ``hi = clamp(max(b1 * S, b2 * S) + padding, max=S)``, each operation rounded separately, in
  the boxes' dtype promoted to at least float32 (float64 boxes stay float64); the integer
  index ``i`` is kept iff ``lo <= i < hi``. With ``S = 13`` and ``b1 = float32(11/13)`` as the
  left edge, ``b1 * 13`` rounds to exactly 11 in float32, so column 10 is kept (in float64 it
  would not be). A box with a NaN or infinite coordinate is empty (docs/ops/conventions.md; YOLACT's
  arithmetic would give NaN an empty and -inf/+inf a full-width crop);
* ``permute(2, 0, 1)`` to ``[N, H, W]``;
* with ``image_size=(h, w)``: ``F.interpolate(cropped[None], (h, w), mode="bilinear",
  align_corners=False)[0] > threshold``, ``cropped`` in the protos' dtype and the comparison
  made in that dtype (the threshold rounded to it), as YOLACT's ``masks.gt_(0.5)``.

``paste_masks`` — Mask R-CNN's per-box masks pasted into the image. The box geometry is
computed, and the values accumulated, in float64 if the masks or the boxes are float64 and in
float32 otherwise; values are rounded to the masks' dtype; the bool output is
``value >= threshold`` compared in the masks' dtype.

* ``mode="detectron2"``: detectron2's ``_do_paste_mask`` without ``skip_empty``: a grid over
  the whole image, ``gx = ((x + 0.5) - x0) / (x1 - x0) * 2 - 1`` (same for y),
  ``F.grid_sample(bilinear, zeros padding, align_corners=False)``, masks processed in chunks
  so the grid stays small.
* ``mode="torchvision"``: torchvision's ``paste_masks_in_image`` (``roi_heads.py``) per mask:
  pad by one zero pixel, scale the box by ``(Mw + 2) / Mw`` about its centre
  (``expand_boxes``), truncate to int64, ``F.interpolate`` the padded mask to
  ``(max(by1 - by0 + 1, 1), max(bx1 - bx0 + 1, 1))`` and place it by a per-pixel rule: pixel
  ``(y, x)`` with ``max(by0, 0) <= y < min(by1 + 1, H)`` and ``max(bx0, 0) <= x <
  min(bx1 + 1, W)`` takes ``resized[y - by0, x - bx0]``; every other pixel is 0.

Deliberate differences from the originals, part of segops' spec and so of these references:

* assemble_masks (YOLACT):
  - half protos: the logits and the sigmoid are computed in float32 and rounded once
    (YOLACT would multiply in half precision); half boxes: the crop bounds are computed in
    float32 (YOLACT would compute them in half precision);
  - pixels outside the crop are exactly 0 (``torch.where``); YOLACT multiplies by the crop
    mask, so a NaN logit stays NaN there;
  - the upsample threshold is an argument (YOLACT hardcodes 0.5), ``padding`` too (as
    YOLACT's ``crop``), and the fused form returns bool masks.
* paste_masks, detectron2 mode:
  - every pixel of the image follows the formula (detectron2's GPU path); detectron2's CPU
    path (``skip_empty``) only computes the box +-1 px and leaves the rest 0, which differs
    for thresholds at or below 0;
  - boxes with ``x1 <= x0`` or ``y1 <= y0``, and boxes with a non-finite coordinate, give 0
    everywhere (detectron2 mirrors inverted boxes, and divides by zero for empty ones);
  - half masks: the grid is kept in float32 (detectron2 rounds it to the masks' dtype);
  - ``threshold=None`` returns the float values (detectron2 returns ``uint8`` 0..255 for a
    negative threshold);
  - the grid passed to ``grid_sample`` is clamped to [-3, 3]: beyond ``1 + 1/M`` every
    bilinear tap is in the zero padding, so values do not change, but huge coordinates (a
    tiny box) cannot overflow grid_sample's integer indices.
* paste_masks, torchvision mode:
  - the per-pixel placement rule replaces torchvision's slicing, which crashes (or pastes
    with Python's negative indices) for boxes lying beyond the image's left/top or
    right/bottom edges; inside the image both are the same;
  - geometry in float32 for half boxes and in float64 if masks or boxes are float64
    (torchvision computes in the boxes' dtype and interpolates in the masks' dtype);
  - boxes with a non-finite coordinate give 0 everywhere (torchvision's int conversion of a
    NaN is undefined);
  - non-square masks are accepted; as torchvision's ``expand_masks`` (which reads
    ``mask.shape[-1]``), the box scale is ``(Mw + 2) / Mw`` on both axes;
  - the output is thresholded (``>= threshold``) unless ``threshold is None`` (torchvision
    returns probabilities).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _args

__all__ = ["assemble_masks", "paste_masks", "yolact_crop", "sanitize_coordinates"]


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _acc_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 if any of the dtypes is float64, else float32 (docs/ops/conventions.md compute dtype)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _size_pair(v: object, op: str) -> Tuple[int, int]:
    return _args.size_pair(op, "image_size", v)


def _threshold(threshold: float, dtype: torch.dtype, device) -> Tensor:
    """The threshold rounded to ``dtype`` (the comparison is made in that dtype)."""
    return torch.tensor(float(threshold), dtype=dtype, device=device)


# --------------------------------------------------------------------------------------
# assemble_masks (YOLACT)
# --------------------------------------------------------------------------------------


def sanitize_coordinates(_x1: Tensor, _x2: Tensor, img_size: int,
                         padding: int = 0) -> Tuple[Tensor, Tensor]:
    """YOLACT's ``sanitize_coordinates(..., cast=False)``: relative coordinates to the crop
    bounds ``(lo, hi)`` along one axis, in the coordinates' dtype, each step rounded."""
    _x1 = _x1 * img_size
    _x2 = _x2 * img_size
    x1 = torch.min(_x1, _x2)  # propagates NaN
    x2 = torch.max(_x1, _x2)
    x1 = torch.clamp(x1 - padding, min=0)
    x2 = torch.clamp(x2 + padding, max=img_size)
    return x1, x2


def yolact_crop(masks: Tensor, boxes: Tensor, padding: int = 1) -> Tensor:
    """YOLACT's ``crop``: zero ``masks [H, W, N]`` outside the relative ``boxes [N, 4]``
    (x1, y1, x2, y2) grown by ``padding`` pixels.

    The bounds are computed in the boxes' dtype promoted to at least float32; a pixel with
    integer index ``(i, j)`` is kept iff ``x_lo <= j < x_hi`` and ``y_lo <= i < y_hi``.
    Outside pixels are exactly 0 (YOLACT multiplies by the crop mask instead).
    """
    h, w, n = masks.shape
    geo = _acc_dtype(boxes.dtype)
    b = boxes.to(device=masks.device, dtype=geo)
    x_lo, x_hi = sanitize_coordinates(b[:, 0], b[:, 2], w, padding)
    y_lo, y_hi = sanitize_coordinates(b[:, 1], b[:, 3], h, padding)
    cols = torch.arange(w, dtype=geo, device=masks.device).view(1, -1, 1)
    rows = torch.arange(h, dtype=geo, device=masks.device).view(-1, 1, 1)
    keep = ((cols >= x_lo.view(1, 1, -1)) & (cols < x_hi.view(1, 1, -1))
            & (rows >= y_lo.view(1, 1, -1)) & (rows < y_hi.view(1, 1, -1)))
    keep &= torch.isfinite(b).all(1).view(1, 1, -1)  # docs/ops/conventions.md: a non-finite box is empty
    return torch.where(keep, masks, torch.zeros_like(masks))


def assemble_masks(protos: Tensor, coeffs: Tensor, boxes: Tensor, padding: int = 1, *,
                   image_size: Union[None, int, Sequence[int]] = None,
                   threshold: float = 0.5) -> Tensor:
    """Reference YOLACT mask assembly (docs/ops/masks.md).

    Args:
        protos: ``Tensor[H, W, k]`` prototypes (YOLACT's layout).
        coeffs: ``Tensor[N, k]`` mask coefficients, protos' dtype.
        boxes: ``Tensor[N, 4]`` relative (x1, y1, x2, y2), any float dtype.
        padding: pixels added to each side of the crop.
        image_size: ``None``, or ``(h, w)`` / ``int`` to upsample and threshold.
        threshold: foreground iff the upsampled value is ``> threshold``.

    Returns:
        ``Tensor[N, H, W]`` of protos' dtype (differentiable in protos and coeffs), or bool
        ``Tensor[N, h, w]`` when ``image_size`` is given (a ``ValueError`` naming ``protos``
        if there are detections to resize but ``H`` or ``W`` is 0).
    """
    op = "assemble_masks"
    size = None if image_size is None else _size_pair(image_size, op)

    H, W, _ = protos.shape
    N = coeffs.size(0)
    acc = _acc_dtype(protos.dtype)
    logits = protos.to(acc) @ coeffs.to(acc).t()  # [H, W, N]
    masks = torch.sigmoid(logits)
    masks = yolact_crop(masks, boxes, padding)
    cropped = masks.permute(2, 0, 1).contiguous().to(protos.dtype)  # [N, H, W]
    if size is None:
        return cropped
    h, w = size
    if N == 0 or h == 0 or w == 0:
        return torch.zeros(N, h, w, dtype=torch.bool, device=protos.device)
    up = F.interpolate(cropped[None], (h, w), mode="bilinear", align_corners=False)[0]
    return up > _threshold(threshold, protos.dtype, protos.device)


# --------------------------------------------------------------------------------------
# paste_masks (Mask R-CNN)
# --------------------------------------------------------------------------------------


def _paste_detectron2(masks: Tensor, boxes: Tensor, H: int, W: int,
                      max_grid: int = 1 << 22) -> Tensor:
    """detectron2's ``_do_paste_mask`` over the whole image, ``chunk`` masks at a time.
    ``masks [N, Mh, Mw]`` and ``boxes [N, 4]`` are in the geometry dtype."""
    N = masks.size(0)
    dt, dev = masks.dtype, masks.device
    out = masks.new_zeros(N, H, W)
    x0, y0, x1, y1 = boxes.unbind(1)
    valid = torch.isfinite(boxes).all(1) & (x1 > x0) & (y1 > y0)
    img_y = torch.arange(H, dtype=dt, device=dev) + 0.5
    img_x = torch.arange(W, dtype=dt, device=dev) + 0.5
    chunk = max(1, max_grid // max(H * W, 1))
    for idx in valid.nonzero().flatten().split(chunk):
        b = boxes[idx]
        gx = (img_x[None, :] - b[:, 0:1]) / (b[:, 2:3] - b[:, 0:1]) * 2 - 1  # [n, W]
        gy = (img_y[None, :] - b[:, 1:2]) / (b[:, 3:4] - b[:, 1:2]) * 2 - 1  # [n, H]
        gx, gy = gx.clamp(-3, 3), gy.clamp(-3, 3)
        n = idx.numel()
        grid = torch.stack([gx[:, None, :].expand(n, H, W), gy[:, :, None].expand(n, H, W)], 3)
        out[idx] = F.grid_sample(masks[idx, None], grid, mode="bilinear", padding_mode="zeros",
                                 align_corners=False)[:, 0]
    return out


def torchvision_boxes(boxes: Tensor, mask_width: int) -> Tuple[Tensor, Tensor]:
    """torchvision's ``expand_boxes`` by ``(Mw + 2) / Mw`` then ``.to(int64)`` (truncation,
    clamped to +-2^40, far outside any image), in the boxes' dtype. Returns int64 ``[N, 4]``
    (bx0, by0, bx1, by1) and bool ``[N]``, False where an expanded corner is NaN (inf - inf
    from finite corners near the dtype's range end): such a box pastes nothing. The rows of
    boxes with a non-finite coordinate are meaningless (the caller masks them out)."""
    scale = float(mask_width + 2) / mask_width  # rounded to the boxes' dtype by the product
    b = torch.where(torch.isfinite(boxes), boxes, torch.zeros_like(boxes))
    w_half = (b[:, 2] - b[:, 0]) * 0.5
    h_half = (b[:, 3] - b[:, 1]) * 0.5
    x_c = (b[:, 2] + b[:, 0]) * 0.5
    y_c = (b[:, 3] + b[:, 1]) * 0.5
    w_half = w_half * scale
    h_half = h_half * scale
    exp = torch.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], 1)
    valid = ~torch.isnan(exp).any(1)
    limit = float(2**40)
    return torch.nan_to_num(exp, nan=0.0).clamp(-limit, limit).to(torch.int64), valid


def _paste_torchvision(masks: Tensor, boxes: Tensor, H: int, W: int) -> Tensor:
    """torchvision's ``paste_masks_in_image`` with the per-pixel placement rule."""
    N, Mh, Mw = masks.shape
    out = masks.new_zeros(N, H, W)
    padded = F.pad(masks, (1, 1, 1, 1))  # [N, Mh + 2, Mw + 2]
    expanded, valid = torchvision_boxes(boxes, Mw)
    ib = expanded.tolist()
    finite = (torch.isfinite(boxes).all(1) & valid).tolist()
    for i in range(N):
        if not finite[i]:
            continue
        bx0, by0, bx1, by1 = ib[i]
        w, h = max(bx1 - bx0 + 1, 1), max(by1 - by0 + 1, 1)
        y_lo, y_hi = max(by0, 0), min(by1 + 1, H)
        x_lo, x_hi = max(bx0, 0), min(bx1 + 1, W)
        if y_hi <= y_lo or x_hi <= x_lo:
            continue
        resized = F.interpolate(padded[i][None, None], size=(h, w), mode="bilinear",
                                align_corners=False)[0, 0]
        out[i, y_lo:y_hi, x_lo:x_hi] = resized[y_lo - by0:y_hi - by0, x_lo - bx0:x_hi - bx0]
    return out


def paste_masks(masks: Tensor, boxes: Tensor, image_size: Union[int, Sequence[int]],
                threshold: Optional[float] = 0.5, mode: str = "detectron2") -> Tensor:
    """Reference mask pasting (docs/ops/masks.md).

    Args:
        masks: ``Tensor[N, Mh, Mw]`` or ``Tensor[N, 1, Mh, Mw]`` of probabilities.
        boxes: ``Tensor[N, 4]`` absolute (x0, y0, x1, y1) in image pixels.
        image_size: ``(H, W)`` or ``int``.
        threshold: foreground iff ``value >= threshold``; ``None`` returns the values.
        mode: ``"detectron2"`` or ``"torchvision"``.

    Returns:
        bool ``Tensor[N, H, W]``, or masks' dtype when ``threshold is None``.
    """
    if masks.dim() == 4 and masks.size(1) == 1:
        masks = masks[:, 0]
    H, W = _size_pair(image_size, "paste_masks")

    geo = _acc_dtype(masks.dtype, boxes.dtype)
    m, b = masks.to(geo), boxes.to(device=masks.device, dtype=geo)
    N = m.size(0)
    if N == 0 or H == 0 or W == 0:
        values = m.new_zeros(N, H, W)
    elif mode == "detectron2":
        values = _paste_detectron2(m, b, H, W)
    else:
        values = _paste_torchvision(m, b, H, W)
    values = values.to(masks.dtype)
    if threshold is None:
        return values
    return values >= _threshold(threshold, masks.dtype, masks.device)
