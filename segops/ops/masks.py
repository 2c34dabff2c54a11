"""Masks: YOLACT prototype assembly and Mask R-CNN mask pasting (docs/ops/masks.md)."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _args
from ._library import fake, non_differentiable, register_autocast

__all__ = ["assemble_masks", "paste_masks"]


def assemble_masks(
    protos: Tensor,
    coeffs: Tensor,
    boxes: Tensor,
    padding: int = 1,
    *,
    image_size: int | tuple[int, int] | None = None,
    threshold: float = 0.5,
) -> Tensor:
    """YOLACT's mask assembly: ``sigmoid(protos @ coeffs.T)`` cropped to each box.

    Args:
        protos: ``Tensor[H, W, k]`` prototypes (YOLACT's layout, e.g. 138x138x32),
            float32/float64/float16/bfloat16.
        coeffs: ``Tensor[N, k]`` mask coefficients, protos' dtype.
        boxes: ``Tensor[N, 4]`` relative ``(x1, y1, x2, y2)`` in ``[0, 1]`` of the image, any
            float dtype. Reversed corners are allowed (YOLACT takes min/max).
        padding: YOLACT's crop padding in proto pixels.
        image_size: ``None`` for the proto-resolution masks; ``(h, w)`` (or an int) for
            the fused inference form.
        threshold: the fused form's foreground test, ``value > threshold``.

    Returns:
        ``image_size=None``: ``Tensor[N, H, W]`` in protos' dtype, differentiable w.r.t.
        ``protos`` and ``coeffs``. Per axis (``S`` = W for x, H for y), YOLACT's crop keeps
        integer index ``i`` iff ``lo <= i < hi`` with
        ``lo = clamp(min(b1, b2) * S - padding, min=0)`` and
        ``hi = clamp(max(b1, b2) * S + padding, max=S)``, evaluated in the boxes' dtype
        promoted to at least float32; other pixels are 0, and so is every pixel of a box
        with a NaN or infinite coordinate. Logits and sigmoid run in float32 for half types.

        ``image_size=(h, w)``: bool ``Tensor[N, h, w]``, the fused
        ``F.interpolate(masks[None], (h, w), mode="bilinear", align_corners=False)[0] >
        threshold`` (masks rounded to protos' dtype, the comparison in it), with no float
        intermediate at image size and work bounded by each crop's footprint.

    Exactness: CPU and CUDA evaluate the same arithmetic (no FMA, a portable exp), so
    their masks are identical bit for bit. They equal torch's composition except where its
    value rounds differently at the threshold: torch's own CPU bilinear kernel uses FMA
    and shape-dependent code paths, and its matmul sums in BLAS order.
    """
    op = "assemble_masks"
    protos = _args.tensor(op, "protos", protos)
    coeffs = _args.tensor(op, "coeffs", coeffs)
    boxes = _args.tensor(op, "boxes", boxes)
    padding = _args.integer(op, "padding", padding)
    threshold = _args.real(op, "threshold", threshold)
    if image_size is None:
        return torch.ops.segops.assemble_masks(protos, coeffs, boxes, padding)
    h, w = _args.size_pair(op, "image_size", image_size)
    return torch.ops.segops.assemble_masks_upsampled(
        protos, coeffs, boxes, padding, h, w, threshold
    )


def paste_masks(
    masks: Tensor,
    boxes: Tensor,
    image_size: int | tuple[int, int],
    threshold: float | None = 0.5,
    mode: str = "detectron2",
) -> Tensor:
    """Paste per-box mask probabilities (Mask R-CNN's 28x28, any size) into the image.

    Args:
        masks: ``Tensor[N, Mh, Mw]`` or ``Tensor[N, 1, Mh, Mw]``, float32/float64/float16/
            bfloat16 probabilities.
        boxes: ``Tensor[N, 4]`` absolute ``(x0, y0, x1, y1)`` in image pixels.
        image_size: ``(H, W)`` of the image (or an int for a square one).
        threshold: foreground iff ``value >= threshold`` (compared in masks' dtype); ``None``
            returns the pasted values instead.
        mode: ``"detectron2"``: pixel ``(x, y)`` samples the mask with grid_sample semantics
            (bilinear, zero padding, ``align_corners=False``) at
            ``gx = ((x + 0.5) - x0) / (x1 - x0) * 2 - 1`` (same for y), as detectron2's GPU
            path, over every pixel the bilinear footprint reaches (detectron2's CPU path
            clips to the box +-1 px); boxes with ``x1 <= x0`` or ``y1 <= y0`` paste nothing.
            ``"torchvision"``: torchvision's ``paste_masks_in_image``: the mask padded by one
            cell, the box scaled by ``(Mw + 2) / Mw`` about its centre and truncated to
            integers, the padded mask resized bilinearly onto it and clipped to the image.

    Returns:
        bool ``Tensor[N, H, W]``, or masks' dtype when ``threshold is None``.

    Geometry and accumulation run in float64 when masks or boxes is float64, else float32;
    a box with a non-finite coordinate pastes nothing, and so does a torchvision-mode box
    whose expansion is NaN (finite corners near the dtype's largest value, one-cell-wide
    masks). Memory is the output's; work is bounded by each box's footprint (the pixels
    listed above; every other pixel is written with the value 0 maps to, without
    arithmetic). torchvision returns ``[N, 1, H, W]`` floats and fails for boxes far right
    of or below the image; here such pixels are simply outside.

    Exactness: CPU and CUDA evaluate the same arithmetic (the separable blend
    ``(v00 * wx0 + v01 * wx1) * wy0 + (v10 * wx0 + v11 * wx1) * wy1``, no FMA), so their
    outputs are identical bit for bit. The values equal the composition's (``grid_sample``,
    whose four weights are products summed in another order; ``F.interpolate``, whose CPU
    kernel uses FMA) within a few units in the last place, so a bool pixel can differ
    from it only where the value lies within that rounding of the threshold (a band of
    1e-5 for float32 and float64, 1e-2 for the half types, which the tests bound).
    """
    op = "paste_masks"
    masks = _args.tensor(op, "masks", masks)
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    h, w = _args.size_pair(op, "image_size", image_size)
    return torch.ops.segops.paste_masks(
        masks, _args.tensor(op, "boxes", boxes), h, w,
        _args.optional_real(op, "threshold", threshold), _args.string(op, "mode", mode),
    )


# ---- fake (shape) implementations ----


@fake("assemble_masks")
def _(protos, coeffs, boxes, padding):
    return protos.new_empty((coeffs.shape[0], protos.shape[0], protos.shape[1]))


@fake("assemble_masks_upsampled")
def _(protos, coeffs, boxes, padding, height, width, threshold):
    return protos.new_empty((coeffs.shape[0], height, width), dtype=torch.bool)


@fake("paste_masks")
def _(masks, boxes, height, width, threshold, mode):
    dtype = masks.dtype if threshold is None else torch.bool
    return masks.new_empty((masks.shape[0], height, width), dtype=dtype)


# ---- autograd: out = crop * sigmoid(z), z = protos @ coeffs.T ----
# dL/dz = g * (1 - out) * out (zero outside the crop, where out = 0); the two products
# with protos and coeffs are matrix multiplications, run in float32 for half types.


def _assemble_setup(ctx, inputs, output):
    protos, coeffs, _boxes, _padding = inputs
    ctx.save_for_backward(protos, coeffs, output)


def _assemble_backward(ctx, grad):
    protos, coeffs, out = ctx.saved_tensors
    acc = torch.float64 if protos.dtype == torch.float64 else torch.float32
    # grad * (1 - out) * out in one pass and one new tensor (three with `grad * o * (1 - o)`:
    # each a fresh 23 MB at N300 138x138, whose page faults cost more than the arithmetic)
    gz = torch.ops.aten.sigmoid_backward(grad.to(acc), out.to(acc))  # [N, H, W]
    h, w, k = protos.shape
    gz2 = gz.reshape(gz.shape[0], h * w)  # [N, HW]
    grad_protos = grad_coeffs = None
    if ctx.needs_input_grad[0]:
        grad_protos = (gz2.t() @ coeffs.to(acc)).reshape(h, w, k).to(protos.dtype)
    if ctx.needs_input_grad[1]:
        grad_coeffs = (gz2 @ protos.reshape(h * w, k).to(acc)).to(coeffs.dtype)
    return grad_protos, grad_coeffs, None, None


torch.library.register_autograd(
    "segops::assemble_masks", _assemble_backward, setup_context=_assemble_setup
)

# The fused inference form (bool masks) and pasting (bool masks, or pasted values as an
# inference step) are not differentiated through: their outputs do not require grad.
non_differentiable("assemble_masks_upsampled", "paste_masks")

# ---- autocast: float32 compute, result in protos' dtype (bool masks stay bool) ----

register_autocast("assemble_masks", float_args=(0, 1))
register_autocast("assemble_masks_upsampled", float_args=(0, 1))
