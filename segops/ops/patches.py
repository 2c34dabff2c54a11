"""BPR boundary patch refinement: extraction, crop and reassembly (docs/ops/patches.md)."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _args
from ._library import fake, non_differentiable

__all__ = ["boundary_patches", "crop_patches", "reassemble_patches"]

_INTS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _bool_masks(op: str, masks: object) -> Tensor:
    """Integer 0/1 masks as bool (a convenience); other dtypes go to the op as they are."""
    masks = _args.tensor(op, "masks", masks)
    return masks != 0 if masks.dtype in _INTS else masks


def boundary_patches(
    masks: Tensor,
    patch_size: int = 64,
    iou_threshold: float = 0.25,
    max_out: int | None = None,
) -> tuple[Tensor, Tensor, Tensor] | tuple[Tensor, Tensor, Tensor, Tensor]:
    """BPR's boundary patches of every instance, in one call.

    Args:
        masks: ``Tensor[N, H, W]`` bool (or integer 0/1), one mask per instance.
        patch_size: ``p``, even, at most ``2**30``.
        iou_threshold: patches of one instance suppress each other when ``IoU >``
            this (BPR: 0.55 on Cityscapes, 0.25 elsewhere, 0.15 for COCO training).
        max_out: capacity of the sync-free form (see Returns).

    Returns:
        ``(boxes, instance_index, scores)``: ``int64[P, 4]`` patches ``(x1, y1, x2, y2)``
        in pixels, ``int64[P]`` their instance, ``float32[P]`` their boundary scores;
        instances in order, each instance's patches in NMS order. With ``max_out``:
        ``(boxes, instance_index, scores, count)`` padded to ``max_out`` rows (0, -1, 0)
        with the first ``count = min(P, max_out)`` rows filled; no host synchronisation.

    Every pixel whose 3x3 neighbourhood (zero padding) holds ``S`` mask pixels with
    ``0 < S < 9`` proposes the ``p x p`` patch centred on it with score
    ``min(S, 9 - S) / 4.5``; per instance a greedy NMS keeps patches in descending score,
    ties in raster order (BPR's unstable sort makes its set irreproducible), and the kept
    patches are shifted into the image keeping their size (BPR shifts right and bottom
    patches one pixel too far, never refining the last row and column; fixed here), or
    span an axis shorter than ``p``. Work and memory are bounded by each instance's
    bounding box (grown by one pixel), whatever ``patch_size`` (up to ``2**30``, so that
    the IoU's integers ``2 p**2`` are exact in int64).
    """
    op = "boundary_patches"
    cap = _args.capacity(op, "max_out", max_out)
    boxes, index, scores, count = torch.ops.segops.boundary_patches(
        _bool_masks(op, masks), _args.integer(op, "patch_size", patch_size),
        _args.real(op, "iou_threshold", iou_threshold), cap)
    if max_out is None:
        return boxes, index, scores
    return boxes, index, scores, count


def crop_patches(
    images: Tensor,
    masks: Tensor,
    boxes: Tensor,
    instance_index: Tensor,
    batch_index: Tensor,
    output_size: int | tuple[int, int] = 256,
) -> tuple[Tensor, Tensor]:
    """Image and mask patches of BPR's boxes, resampled to ``output_size``, in one launch.

    Args:
        images: ``Tensor[B, C, H, W]`` float (any of the four dtypes).
        masks: ``Tensor[N, H, W]`` bool instance masks.
        boxes: ``int64[P, 4]`` patches ``(x1, y1, x2, y2)`` (e.g. from
            :func:`boundary_patches`).
        instance_index: ``int64[P]``: the instance of each patch, in ``[0, N)``.
        batch_index: ``int64[N]``: the image of each instance, in ``[0, B)``.
        output_size: ``s`` or ``(s_h, s_w)``.

    Returns:
        ``(image_patches [P, C, s_h, s_w]`` in images' dtype, ``mask_patches [P, s_h, s_w]``
        bool): the image resampled bilinearly exactly as
        ``roi_align(images, ..., aligned=True, sampling_ratio=1)`` on the box, the mask by
        ``F.interpolate(mode="nearest")`` of the box's crop (False outside the image).

    An index out of range raises a ValueError on the CPU and trips a device-side assertion
    on CUDA (PyTorch's convention: nothing is read back to check it).

    Any int64 box is accepted: extents up to ``2**64 - 1`` are exact. Cost is bounded by
    the output (one sample per output element), whatever the box's size.
    """
    op = "crop_patches"
    s_h, s_w = _args.size_pair(op, "output_size", output_size)
    return torch.ops.segops.crop_patches(
        _args.tensor(op, "images", images), _bool_masks(op, masks),
        _args.tensor(op, "boxes", boxes), _args.tensor(op, "instance_index", instance_index),
        _args.tensor(op, "batch_index", batch_index), s_h, s_w)


def reassemble_patches(
    masks: Tensor,
    patch_probs: Tensor,
    boxes: Tensor,
    instance_index: Tensor,
    threshold: float = 0.5,
) -> Tensor:
    """BPR's reassembly: refined patches averaged back into their instances' masks.

    Args:
        masks: ``Tensor[N, H, W]`` bool coarse masks.
        patch_probs: ``Tensor[P, h, w]`` foreground probabilities of the patches (any float
            dtype); resampled bilinearly (``align_corners=False``) to each box's size when
            ``(h, w)`` differs from it.
        boxes: ``int64[P, 4]`` patches ``(x1, y1, x2, y2)``.
        instance_index: ``int64[P]``, in ``[0, N)`` (else a ValueError on the CPU, a
            device-side assertion on CUDA).
        threshold: foreground iff the mean probability ``> threshold`` (strict).

    Returns:
        bool ``Tensor[N, H, W]``: per instance, the mean of its patches' probabilities
        ``> threshold`` wherever a patch covers, the coarse mask elsewhere. The sum runs in
        float32 (float64 for float64 probabilities) in patch index order, so the result is
        bit-identical across runs and between CPU and CUDA (``0.4 + 0.6`` is exactly 1 in
        float32: a mean of exactly 0.5 is background, as in BPR).

    Exactness: patches of the box size (BPR's case) equal the composition (accumulate,
    count, divide) bit for bit. Resampled patches use the fixed bilinear arithmetic shared
    by the CPU and CUDA kernels (``F.interpolate``'s taps, the separable blend, no FMA),
    which equals ``F.interpolate``'s values within a few units in the last place (torch's
    CPU kernel uses FMA and shape-dependent paths): a pixel can then differ from the
    composition only where its mean lies within that rounding of the threshold (a band of
    1e-5 for float32 and the half types, 1e-12 for float64, which the tests bound).

    Cost is bounded by the part of each box inside the image (a box 2**63 pixels wide costs
    what its visible part costs), plus one pass over the masks for the copy.
    """
    op = "reassemble_patches"
    return torch.ops.segops.reassemble_patches(
        _bool_masks(op, masks), _args.tensor(op, "patch_probs", patch_probs),
        _args.tensor(op, "boxes", boxes), _args.tensor(op, "instance_index", instance_index),
        _args.real(op, "threshold", threshold))


# ---- fake (shape) implementations ----


@fake("boundary_patches")
def _(masks, patch_size, iou_threshold, max_out=-1):
    rows = max_out if max_out >= 0 else torch.library.get_ctx().new_dynamic_size()
    return (masks.new_empty((rows, 4), dtype=torch.int64),
            masks.new_empty((rows,), dtype=torch.int64),
            masks.new_empty((rows,), dtype=torch.float32),
            masks.new_empty((), dtype=torch.int64))


@fake("crop_patches")
def _(images, masks, boxes, instance_index, batch_index, out_h, out_w):
    p, c = boxes.shape[0], images.shape[1]
    return images.new_empty((p, c, out_h, out_w)), masks.new_empty((p, out_h, out_w))


@fake("reassemble_patches")
def _(masks, patch_probs, boxes, instance_index, threshold):
    return torch.empty_like(masks)


# Patch boxes and scores, bool masks: nothing to differentiate. crop_patches' image patches
# are resampled image values, but BPR does not train through the crop: no grad either.
non_differentiable("boundary_patches", "crop_patches", "reassemble_patches")
