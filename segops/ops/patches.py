"""BPR boundary patch refinement: extraction, crop and reassembly (docs/ops/patches.md)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._registry import check_float, check_same_device, check_tensor, fake, pair

_INTS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _bool_masks(masks: Tensor, op: str) -> Tensor:
    check_tensor(masks, op, "masks")
    if masks.dtype != torch.bool:
        if masks.dtype not in _INTS:
            raise TypeError(f"{op}: `masks` must be bool (or integer 0/1), got {masks.dtype}")
        masks = masks != 0
    if masks.dim() != 3:
        raise ValueError(f"{op}: `masks` must be [N, H, W], got shape {tuple(masks.shape)}")
    return masks


def _check_patch_args(op: str, masks: Tensor, boxes: Tensor, instance_index: Tensor) -> None:
    check_tensor(boxes, op, "boxes")
    check_tensor(instance_index, op, "instance_index")
    if boxes.dtype != torch.int64:
        raise TypeError(f"{op}: `boxes` must be int64 (x1, y1, x2, y2), got {boxes.dtype}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{op}: `boxes` must be [P, 4], got shape {tuple(boxes.shape)}")
    if instance_index.dtype != torch.int64:
        raise TypeError(f"{op}: `instance_index` must be int64, got {instance_index.dtype}")
    if instance_index.dim() != 1 or instance_index.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"{op}: `instance_index` must be [P] with P = boxes.shape[0] = {boxes.shape[0]}, "
            f"got shape {tuple(instance_index.shape)}"
        )
    check_same_device(op, "masks", {"masks": masks, "boxes": boxes,
                                     "instance_index": instance_index})


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
    masks = _bool_masks(masks, op)
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 2 \
            or patch_size % 2 or patch_size > 2**30:
        raise ValueError(f"{op}: `patch_size` must be an even int in [2, 2**30], got "
                         f"{patch_size!r}")
    if not isinstance(iou_threshold, (int, float)) or math.isnan(iou_threshold):
        raise ValueError(f"{op}: `iou_threshold` must be a number (not NaN), got "
                         f"{iou_threshold!r}")
    if max_out is not None and (isinstance(max_out, bool) or not isinstance(max_out, int)
                                or max_out < 0):
        raise ValueError(f"{op}: `max_out` must be an int >= 0, got {max_out!r}")
    cap = -1 if max_out is None else max_out
    boxes, index, scores, count = torch.ops.segops.boundary_patches(
        masks, patch_size, float(iou_threshold), cap)
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

    Any int64 box is accepted: extents up to ``2**64 - 1`` are exact. Cost is bounded by
    the output (one sample per output element), whatever the box's size.
    """
    op = "crop_patches"
    check_tensor(images, op, "images")
    check_float(images, op, "images")
    if images.dim() != 4:
        raise ValueError(f"{op}: `images` must be [B, C, H, W], got shape {tuple(images.shape)}")
    masks = _bool_masks(masks, op)
    if tuple(masks.shape[1:]) != tuple(images.shape[2:]):
        raise ValueError(f"{op}: `masks` must be [N, H, W] with the images' H, W = "
                         f"{tuple(images.shape[2:])}, got shape {tuple(masks.shape)}")
    _check_patch_args(op, masks, boxes, instance_index)
    check_tensor(batch_index, op, "batch_index")
    if batch_index.dtype != torch.int64:
        raise TypeError(f"{op}: `batch_index` must be int64, got {batch_index.dtype}")
    if batch_index.dim() != 1 or batch_index.shape[0] != masks.shape[0]:
        raise ValueError(f"{op}: `batch_index` must be [N] with N = masks.shape[0] = "
                         f"{masks.shape[0]}, got shape {tuple(batch_index.shape)}")
    check_same_device(op, "images", {"images": images, "masks": masks,
                                      "batch_index": batch_index})
    s_h, s_w = pair(output_size, op, "output_size")
    return torch.ops.segops.crop_patches(images, masks, boxes, instance_index, batch_index,
                                         s_h, s_w)


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
        instance_index: ``int64[P]``, in ``[0, N)``.
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
    masks = _bool_masks(masks, op)
    check_tensor(patch_probs, op, "patch_probs")
    check_float(patch_probs, op, "patch_probs")
    if patch_probs.dim() != 3 or patch_probs.shape[0] != boxes.shape[0]:
        raise ValueError(f"{op}: `patch_probs` must be [P, h, w] with P = boxes.shape[0] = "
                         f"{boxes.shape[0]}, got shape {tuple(patch_probs.shape)}")
    _check_patch_args(op, masks, boxes, instance_index)
    check_same_device(op, "masks", {"masks": masks, "patch_probs": patch_probs})
    if not isinstance(threshold, (int, float)) or math.isnan(threshold):
        raise ValueError(f"{op}: `threshold` must be a number (not NaN), got {threshold!r}")
    return torch.ops.segops.reassemble_patches(masks, patch_probs, boxes, instance_index,
                                               float(threshold))


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
