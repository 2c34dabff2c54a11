"""BPR's training-side helpers (docs/models.md, "BPR"), and the boundary band of its upper-bound
analysis.

The released training set (``tools/prepare_dataset.sh``) is built from a detector's masks on
the training images:

* ``tools/filter.py``: an instance is kept iff its mask IoU with some non-crowd ground-truth
  instance of the same class is ``> 0.5`` (:func:`select_training_instances`);
* ``tools/split_patches.py``: each kept instance is matched to the non-crowd ground truth of
  its class with the highest mask IoU (the first one on ties; an instance of a class with no
  ground truth gets an empty target) (:func:`match_ground_truth`); its boundary patches
  (NMS at 0.25) are cut from the image, its mask and the matched ground truth;
* the net is trained with a 2-class cross-entropy on the patches at the input size
  (:func:`patch_loss`).

:func:`training_patches` runs the three steps on one image with a
:class:`~segops.models.bpr.BPRRefiner`. :func:`boundary_band` gives the pixels near a
predicted boundary, whose replacement by the ground truth the paper uses to bound what
boundary refinement can gain (its Table 1; ``benchmarks/bpr_experiment.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from .bpr import BPRRefiner

__all__ = [
    "mask_iou",
    "match_ground_truth",
    "select_training_instances",
    "patch_loss",
    "TrainingPatches",
    "training_patches",
    "boundary_band",
]


def _masks(x: Tensor, name: str, op: str) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(f"{op}: `{name}` must be a [N, H, W] tensor, got "
                         f"{list(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    return x if x.dtype == torch.bool else x != 0


def _labels(x: Tensor, n: int, name: str, op: str) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 1 or x.numel() != n:
        raise ValueError(f"{op}: `{name}` must be a [{n}] tensor, got "
                         f"{list(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    return x


def mask_iou(masks: Tensor, gt_masks: Tensor) -> Tensor:
    """Pairwise mask IoU, ``float64 [N, M]``, of ``masks [N, H, W]`` and
    ``gt_masks [M, H, W]`` (bool, or nonzero = foreground); 0 where both masks are empty.

    Intersections are exact integer counts (a float32 product for images up to 2**24 pixels,
    float64 beyond)."""
    op = "mask_iou"
    a = _masks(masks, "masks", op)
    b = _masks(gt_masks, "gt_masks", op)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"{op}: `masks` and `gt_masks` must have the same H, W, got "
                         f"{list(a.shape)} and {list(b.shape)}")
    hw = a.shape[1] * a.shape[2]
    dtype = torch.float32 if hw <= 2 ** 24 else torch.float64
    fa, fb = a.reshape(a.shape[0], hw).to(dtype), b.reshape(b.shape[0], hw).to(dtype)
    inter = (fa @ fb.T).double()
    union = fa.sum(1, dtype=torch.float64)[:, None] + fb.sum(1, dtype=torch.float64)[None] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def match_ground_truth(masks: Tensor, labels: Tensor, gt_masks: Tensor, gt_labels: Tensor,
                       gt_crowd: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Each instance's best ground truth of its class (``tools/split_patches.py``).

    Args:
        masks: ``[N, H, W]`` predicted masks; ``labels``: ``[N]`` their classes.
        gt_masks: ``[M, H, W]`` ground-truth masks; ``gt_labels``: ``[M]`` their classes.
        gt_crowd: optional ``bool [M]``; crowd regions are never matched.

    Returns:
        ``(gt_index int64 [N], iou float64 [N])``: the non-crowd ground truth of the same
        class with the highest IoU (the lowest index among equal IoUs) and that IoU; ``-1``
        and 0 for an instance whose class has no such ground truth.
    """
    op = "match_ground_truth"
    masks = _masks(masks, "masks", op)
    gt_masks = _masks(gt_masks, "gt_masks", op)
    labels = _labels(labels, masks.shape[0], "labels", op)
    gt_labels = _labels(gt_labels, gt_masks.shape[0], "gt_labels", op)
    valid = labels.view(-1, 1) == gt_labels.view(1, -1)
    if gt_crowd is not None:
        gt_crowd = _labels(gt_crowd, gt_masks.shape[0], "gt_crowd", op)
        valid = valid & ~gt_crowd.bool().view(1, -1)
    iou = torch.where(valid, mask_iou(masks, gt_masks), -1.0)
    if iou.shape[1] == 0:
        n = masks.shape[0]
        return (torch.full((n,), -1, dtype=torch.int64, device=masks.device),
                torch.zeros(n, dtype=torch.float64, device=masks.device))
    best, index = iou.max(dim=1)  # the first maximum on ties
    none = best < 0
    return torch.where(none, -1, index), torch.where(none, 0.0, best)


def select_training_instances(masks: Tensor, labels: Tensor, gt_masks: Tensor,
                              gt_labels: Tensor, gt_crowd: Tensor | None = None,
                              iou_threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """The instances BPR trains on (``tools/filter.py``) and their ground truth.

    Returns:
        ``(keep bool [N], gt_index int64 [N])``: ``keep`` iff the best IoU with a non-crowd
        ground truth of the same class is ``> iou_threshold`` (strict), and that ground
        truth's index (:func:`match_ground_truth`; ``-1`` where there is none).
    """
    gt_index, iou = match_ground_truth(masks, labels, gt_masks, gt_labels, gt_crowd)
    return iou > iou_threshold, gt_index


def patch_loss(logits: Tensor, targets: Tensor, ignore_index: int = 255) -> Tensor:
    """BPR's patch loss: 2-class cross-entropy, averaged over every pixel.

    Args:
        logits: ``[P, C, h, w]`` (C = 2); resized bilinearly (``align_corners=False``) to the
            targets' size first when it differs (mmseg's ``losses``).
        targets: ``[P, s, s]`` class indices (bool or integer: 0 background, 1 foreground),
            ``ignore_index`` for pixels to ignore.
        ignore_index: label ignored by the loss.

    Returns:
        A scalar: the per-pixel cross-entropy summed and divided by ``P * s * s``, ignored
        pixels counting as zero (mmseg's ``CrossEntropyLoss``, whose mean includes them,
        unlike ``F.cross_entropy(reduction="mean")``).
    """
    op = "patch_loss"
    if logits.dim() != 4 or targets.dim() != 3 or logits.size(0) != targets.size(0):
        raise ValueError(f"{op}: `logits` must be [P, C, h, w] and `targets` [P, s, s] with the "
                         f"same P, got {list(logits.shape)} and {list(targets.shape)}")
    if targets.is_floating_point():
        raise TypeError(f"{op}: `targets` must be bool or integer class indices, "
                        f"got {targets.dtype}")
    if tuple(logits.shape[-2:]) != tuple(targets.shape[-2:]):
        logits = F.interpolate(logits, size=tuple(targets.shape[-2:]), mode="bilinear",
                               align_corners=False)
    loss = F.cross_entropy(logits, targets.long(), reduction="none", ignore_index=ignore_index)
    return loss.mean()


class TrainingPatches(NamedTuple):
    """What :func:`training_patches` returns.

    Attributes:
        image_patches: ``[P, 3, s, s]`` normalised, the net's first input.
        mask_patches: ``[P, 1, s, s]`` in ``{-1, +1}``, its second input.
        targets: ``int64 [P, s, s]`` labels for :func:`patch_loss`.
        boxes, instance_index: ``[P, 4]``, ``[P]`` int64 (indices into the input instances).
        keep: ``bool [N]``, the instances that passed the IoU filter.
        gt_index: ``int64 [N]``, each instance's matched ground truth (``-1``: none).
    """

    image_patches: Tensor
    mask_patches: Tensor
    targets: Tensor
    boxes: Tensor
    instance_index: Tensor
    keep: Tensor
    gt_index: Tensor


def training_patches(refiner: "BPRRefiner", image: Tensor, masks: Tensor, labels: Tensor,
                     gt_masks: Tensor, gt_labels: Tensor, gt_crowd: Tensor | None = None,
                     iou_threshold: float = 0.5) -> TrainingPatches:
    """The training patches of one image: instances filtered by IoU (> ``iou_threshold``)
    and matched to their ground truth, their boundary patches (``refiner.extract``: use
    :meth:`BPRRefiner.for_training` for the released NMS threshold 0.25), the net's inputs
    (:meth:`BPRRefiner.net_inputs`) and the targets (:meth:`BPRRefiner.targets`).

    Args:
        refiner: a :class:`~segops.models.bpr.BPRRefiner` (its net is not used).
        image: ``[3, H, W]`` float RGB in ``[0, refiner.pixel_max]``.
        masks, labels: ``[N, H, W]``, ``[N]``: the detector's instances.
        gt_masks, gt_labels, gt_crowd: ``[M, H, W]``, ``[M]``, optional ``bool [M]``.
    """
    masks = _masks(masks, "masks", "training_patches")
    keep, gt_index = select_training_instances(masks, labels, gt_masks, gt_labels, gt_crowd,
                                               iou_threshold)
    kept = masks & keep.view(-1, 1, 1)  # dropped instances have no boundary, so no patches
    boxes, instance_index, _ = refiner.extract(kept)
    matched = _masks(gt_masks, "gt_masks", "training_patches")[gt_index.clamp(min=0)]
    matched = matched & (gt_index >= 0).view(-1, 1, 1)
    if image.dim() == 3 and not image.is_floating_point():
        image = image.to(torch.float32)
    img_p, mask_p = refiner.net_inputs(image, kept, boxes, instance_index)
    targets = refiner.targets(matched, boxes, instance_index)
    return TrainingPatches(img_p, mask_p, targets, boxes, instance_index, keep, gt_index)


def boundary_band(masks: Tensor, width: int) -> Tensor:
    """Pixels within ``width`` pixels of each mask's boundary, ``bool [N, H, W]``.

    A pixel is in the band iff a pixel of the other label (foreground for a background pixel,
    background for a foreground one) lies within Euclidean distance ``width`` of it, centre to
    centre (``dy**2 + dx**2 <= width**2``); pixels beyond the image are neither. So ``width``
    1 marks the pixels on both sides of the contour that touch it through an edge, and the
    band grows by about one pixel per side per unit of ``width``. An empty or full mask has
    no band.
    """
    op = "boundary_band"
    m = _masks(masks, "masks", op)
    if not isinstance(width, int) or isinstance(width, bool) or width < 0:
        raise ValueError(f"{op}: `width` must be an int >= 0, got {width!r}")
    if width == 0 or m.numel() == 0:
        return torch.zeros_like(m)
    r = torch.arange(-width, width + 1, device=m.device)
    disk = ((r.view(-1, 1) ** 2 + r.view(1, -1) ** 2) <= width * width).float()
    fg = m.unsqueeze(1).float()

    def near(x: Tensor) -> Tensor:  # a pixel of ``x`` within the disk (zero beyond the image)
        return F.conv2d(x, disk[None, None], padding=width)[:, 0] > 0.5

    return near(fg) & near(1.0 - fg)
