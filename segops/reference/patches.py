"""Pure-PyTorch references for the boundary patch ops of BPR (docs/ops/patches.md).

The executable form of the spec and the oracle the tests compare the kernels against. Written
to be read first: one Python loop over the instances (and over the kept boxes of the NMS, or
the patches of the reassembly), the work inside vectorised.

BPR's released code (``tools/inference.py``: ``find_float_boundary``, ``get_dets``,
``_force_move_back``, ``split``, ``merge``; the same functions in ``tools/split_patches.py``
and ``tools/merge_patches.py``) does, per instance:

* ``find_float_boundary``: ``S = F.conv2d(mask, ones(1, 1, 3, 3), padding=1)`` (zero
  padding, so ``S`` is in ``0..9``), ``score = min(|S - 9|, |S|) / 4.5`` in float32;
* ``get_dets``: every pixel with a non-zero score, in raster order (``torch.nonzero``), gives
  the box ``(x - p//2, y - p//2, x + p//2, y + p//2)`` with that score; mmcv's ``nms`` keeps a
  subset, best score first;
* ``_force_move_back``: boxes beyond the left/top edge are moved to start at 0, boxes with
  ``x2 >= W`` (``y2 >= H``) are moved to end at ``W - 1`` (``H - 1``);
* ``split``: ``roi_align`` of the image on each box (mmcv, ``aligned=True``), the mask
  patches resampled with ``F.interpolate(mode="nearest")``;
* ``merge``: the patch probabilities resized to the patch size (bilinear), then per instance
  ``refined[y1:y2, x1:x2] += prob`` and ``count[y1:y2, x1:x2] += 1`` over the whole image in
  float32, patch after patch; where ``count > 0`` the mask is ``refined / count > 0.5``,
  elsewhere the coarse mask stays.

Deliberate differences from the released code, part of segops' spec and so of this
reference:

* **Stable ties.** Candidates are ordered by score descending, ties in raster order of their
  centre pixel (a stable sort of the raster-ordered candidates). BPR's NMS sorts unstably, so
  which of several equal-score boxes survives is not reproducible there.
* **Strict, exact NMS threshold.** A candidate is suppressed iff a kept box of the same
  instance has ``IoU > iou_threshold``, with the integer IoU of two ``p x p`` boxes,
  ``inter = max(p - |dx|, 0) * max(p - |dy|, 0)``, ``union = 2 p^2 - inter``, compared as
  ``float64(inter) / float64(union) > iou_threshold``. BPR's pinned mmcv (<= 1.2) compares a
  float32 IoU with ``>=``; the two differ only when an IoU lands exactly on the threshold
  (never for p = 32/64/128 at 0.15/0.25/0.55).
* **Shift fix.** Kept boxes are shifted into the image keeping their size:
  ``x1 = min(max(x1, 0), W - p)``, ``x2 = x1 + p`` (same for y). BPR moves a box that
  reaches the right/bottom edge to ``[W - 1 - p, W - 1)``, one pixel too far, so the last
  column and row are never refined (and it moves a box with ``x2 == W``, which already fits).
  If ``W < p`` the box spans the whole axis, ``x1 = 0, x2 = W`` (BPR gives negative
  coordinates there).
* **Interface.** All instances in one call; ``boxes`` are int64 (BPR keeps float boxes),
  returned with the instance of each box and its score; ``max_out`` gives a padded form.
  ``patch_size`` must be even (BPR's ``p//2`` silently makes odd sizes ``p - 1`` wide).
* **crop_patches** equals ``roi_align(aligned=True, sampling_ratio=1)`` on each box and the
  nearest resampling of the box's crop of the mask (pixels outside the image are False) in
  one op; BPR resamples the image patch a second time to the network's input size with
  bilinear ``F.interpolate`` (segops samples the output size directly) and reads the mask
  patch with ``roi_align`` + ``nearest``. A box with ``x2 <= x1`` or ``y2 <= y1`` gives an
  all-False mask patch (its image patch is still roi_align's, which samples the box's
  corner).
* **reassemble_patches** works on the box of each patch wherever it is (pixels outside the
  image are ignored, empty boxes add nothing), takes the threshold as an argument (BPR: 0.5,
  strict ``>`` as BPR), accumulates in float64 for float64 probabilities (float32 otherwise,
  as BPR), and returns new masks (BPR writes into the coarse masks).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_float as _check_float
from ._checks import check_tensor as _check_tensor
from .roi import roi_align

__all__ = [
    "boundary_patches", "crop_patches", "reassemble_patches",
    "boundary_scores", "candidates", "patch_nms", "shift_into_image", "patch_iou",
    "crop_mask", "resize_probs", "patch_means",
]


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------


def _check_mask_dtype(t: Tensor, op: str, name: str) -> None:
    if t.is_floating_point() or t.is_complex():
        raise TypeError(f"{op}: `{name}` must be bool (or an integer dtype, nonzero = "
                        f"foreground), got {t.dtype}")


def _check_int64(t: Tensor, op: str, name: str) -> None:
    if t.dtype != torch.int64:
        raise TypeError(f"{op}: `{name}` must be int64, got {t.dtype}")


def _check_same_device(op: str, **tensors: Tensor) -> None:
    first_name, first = next(iter(tensors.items()))
    for name, t in tensors.items():
        if t.device != first.device:
            raise ValueError(f"{op}: `{name}` must be on the device of `{first_name}` "
                             f"({first.device}), got {t.device}")


def _check_range(t: Tensor, hi: int, op: str, name: str) -> None:
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= hi):
        bad = t[(t < 0) | (t >= hi)][0]
        raise ValueError(f"{op}: `{name}` must be in [0, {hi}), got {int(bad)}")


def _check_patch_args(op: str, masks: Tensor, boxes: Tensor, instance_index: Tensor) -> int:
    """Checks masks [N, H, W] bool, boxes int64 [P, 4], instance_index int64 [P] in [0, N).
    Returns P."""
    if masks.dim() != 3:
        raise ValueError(f"{op}: `masks` must be a Tensor[N, H, W], got {tuple(masks.shape)}")
    _check_tensor(boxes, op, "boxes")
    _check_int64(boxes, op, "boxes")
    if boxes.dim() != 2 or boxes.size(1) != 4:
        raise ValueError(f"{op}: `boxes` must be a Tensor[P, 4], got {tuple(boxes.shape)}")
    P = boxes.size(0)
    _check_tensor(instance_index, op, "instance_index")
    _check_int64(instance_index, op, "instance_index")
    if instance_index.dim() != 1 or instance_index.size(0) != P:
        raise ValueError(f"{op}: `instance_index` must be a Tensor[{P}] (one per box), "
                         f"got {tuple(instance_index.shape)}")
    return P


def _size_pair(v: object, op: str, name: str) -> Tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    if (not isinstance(v, (tuple, list, torch.Size)) or len(v) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in v)):
        raise TypeError(f"{op}: `{name}` must be an int or a pair of ints, got {v!r}")
    if v[0] < 0 or v[1] < 0:
        raise ValueError(f"{op}: `{name}` must be non-negative, got {tuple(v)}")
    return int(v[0]), int(v[1])


def _check_number(v: object, op: str, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{op}: `{name}` must be a float, got {type(v).__name__}")
    if math.isnan(float(v)):
        raise ValueError(f"{op}: `{name}` must not be NaN")
    return float(v)


# --------------------------------------------------------------------------------------
# boundary_patches
# --------------------------------------------------------------------------------------


def boundary_scores(masks: Tensor) -> Tensor:
    """BPR's ``find_float_boundary`` (width 3): ``[N, H, W]`` masks -> float32 scores
    ``min(S, 9 - S) / 4.5`` with ``S`` the 3x3 box sum with zero padding."""
    N, H, W = masks.shape
    if N == 0 or H == 0 or W == 0:
        return torch.zeros(N, H, W, dtype=torch.float32, device=masks.device)
    m = (masks != 0).to(torch.float32)[:, None]  # [N, 1, H, W]
    ones = torch.ones(1, 1, 3, 3, dtype=torch.float32, device=masks.device)
    S = F.conv2d(m, ones, padding=1)[:, 0]  # integers 0..9, exact in float32
    return torch.minimum(S, 9 - S) / 4.5  # float32 division


def candidates(score: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """The candidate pixels of one instance's score map ``[H, W]`` in NMS order.

    Returns ``(xs, ys, scores)``: pixels with a positive score, sorted by score descending,
    ties in raster order (a stable sort of ``nonzero``'s raster order)."""
    ys, xs = torch.nonzero(score > 0, as_tuple=True)  # raster order
    s = score[ys, xs]
    order = torch.sort(s, descending=True, stable=True).indices
    return xs[order], ys[order], s[order]


def patch_iou(dx: Tensor, dy: Tensor, p: int) -> Tensor:
    """The IoU (float64) of two ``p x p`` boxes whose corners differ by ``(dx, dy)``:
    ``inter = max(p - |dx|, 0) * max(p - |dy|, 0)``, ``union = 2 p^2 - inter``."""
    inter = (p - dx.abs()).clamp_min(0) * (p - dy.abs()).clamp_min(0)
    union = 2 * p * p - inter
    return inter.to(torch.float64) / union.to(torch.float64)


def patch_nms(xs: Tensor, ys: Tensor, p: int, iou_threshold: float) -> Tensor:
    """Greedy NMS over the candidates (already in NMS order) of one instance: a candidate is
    kept unless an already kept box has ``IoU > iou_threshold``. Returns the kept positions
    (indices into ``xs``), in order."""
    n = xs.numel()
    suppressed = torch.zeros(n, dtype=torch.bool, device=xs.device)
    keep: List[int] = []
    i = 0
    while i < n:
        keep.append(i)
        # candidate i is kept: it suppresses every later candidate it overlaps too much
        hit = patch_iou(xs[i + 1:] - xs[i], ys[i + 1:] - ys[i], p) > iou_threshold
        suppressed[i + 1:] |= hit
        rest = torch.nonzero(~suppressed[i + 1:])
        if rest.numel() == 0:
            break
        i = i + 1 + int(rest[0])
    return torch.tensor(keep, dtype=torch.int64, device=xs.device)


def shift_into_image(lo: Tensor, p: int, size: int) -> Tuple[Tensor, Tensor]:
    """The shift rule along one axis: ``lo = min(max(lo, 0), size - p)``, ``hi = lo + p``;
    the whole axis ``[0, size)`` if ``size < p``."""
    if size < p:
        return torch.zeros_like(lo), torch.full_like(lo, size)
    lo = lo.clamp(min=0).clamp(max=size - p)
    return lo, lo + p


def boundary_patches(masks: Tensor, patch_size: int = 64, iou_threshold: float = 0.25,
                     max_out: Optional[int] = None):
    """Reference boundary patch proposals (docs/ops/patches.md).

    Args:
        masks: ``Tensor[N, H, W]`` bool (or integer, nonzero = foreground), one per instance.
        patch_size: the even side ``p`` of the square patches.
        iou_threshold: NMS suppresses a candidate whose IoU with a kept box is greater.
        max_out: ``None`` for exactly sized outputs, or the capacity of the padded form.

    Returns:
        ``(boxes int64 [P, 4], instance_index int64 [P], scores float32 [P])``, instances in
        index order, each instance's boxes in NMS order; with ``max_out``:
        ``(boxes [max_out, 4], instance_index [max_out], scores [max_out], count)``, the
        first ``max_out`` rows, padded with 0 / -1 / 0, and ``count`` an int64 0-dim tensor.
    """
    op = "boundary_patches"
    _check_tensor(masks, op, "masks")
    _check_mask_dtype(masks, op, "masks")
    if masks.dim() != 3:
        raise ValueError(f"{op}: `masks` must be a Tensor[N, H, W], got {tuple(masks.shape)}")
    if (isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 2
            or patch_size % 2 or patch_size > 2**30):
        raise ValueError(f"{op}: `patch_size` must be an even int in [2, 2**30], got "
                         f"{patch_size!r}")
    iou_threshold = _check_number(iou_threshold, op, "iou_threshold")
    if max_out is not None:
        if isinstance(max_out, bool) or not isinstance(max_out, int) or max_out < 0:
            raise ValueError(f"{op}: `max_out` must be None or an int >= 0, got {max_out!r}")

    p = patch_size
    dev = masks.device
    N, H, W = masks.shape
    scores = boundary_scores(masks)
    boxes, index, kept_scores = [], [], []
    for n in range(N):
        xs, ys, s = candidates(scores[n])
        if xs.numel() == 0:
            continue
        keep = patch_nms(xs, ys, p, iou_threshold)
        x1, x2 = shift_into_image(xs[keep] - p // 2, p, W)  # NMS ran on unshifted boxes
        y1, y2 = shift_into_image(ys[keep] - p // 2, p, H)
        boxes.append(torch.stack([x1, y1, x2, y2], 1))
        index.append(torch.full_like(keep, n))
        kept_scores.append(s[keep])
    if boxes:
        boxes_t, index_t, scores_t = torch.cat(boxes), torch.cat(index), torch.cat(kept_scores)
    else:
        boxes_t = torch.zeros(0, 4, dtype=torch.int64, device=dev)
        index_t = torch.zeros(0, dtype=torch.int64, device=dev)
        scores_t = torch.zeros(0, dtype=torch.float32, device=dev)
    if max_out is None:
        return boxes_t, index_t, scores_t
    count = min(boxes_t.size(0), max_out)
    out_boxes = torch.zeros(max_out, 4, dtype=torch.int64, device=dev)
    out_index = torch.full((max_out,), -1, dtype=torch.int64, device=dev)
    out_scores = torch.zeros(max_out, dtype=torch.float32, device=dev)
    out_boxes[:count], out_index[:count] = boxes_t[:count], index_t[:count]
    out_scores[:count] = scores_t[:count]
    return out_boxes, out_index, out_scores, torch.tensor(count, dtype=torch.int64, device=dev)


# --------------------------------------------------------------------------------------
# crop_patches
# --------------------------------------------------------------------------------------


def crop_mask(mask: Tensor, box: Sequence[int]) -> Tensor:
    """The box's crop ``[y2 - y1, x2 - x1]`` of a bool ``mask [H, W]``, False outside the
    image (the box may reach beyond it)."""
    H, W = mask.shape
    x1, y1, x2, y2 = (int(v) for v in box)
    out = torch.zeros(y2 - y1, x2 - x1, dtype=torch.bool, device=mask.device)
    ya, yb, xa, xb = max(y1, 0), min(y2, H), max(x1, 0), min(x2, W)
    if yb > ya and xb > xa:
        out[ya - y1:yb - y1, xa - x1:xb - x1] = mask[ya:yb, xa:xb]
    return out


def crop_patches(images: Tensor, masks: Tensor, boxes: Tensor, instance_index: Tensor,
                 batch_index: Tensor, output_size: Union[int, Tuple[int, int]] = 256):
    """Reference patch cropping (docs/ops/patches.md).

    Args:
        images: ``Tensor[B, C, H, W]`` float32/float64/float16/bfloat16.
        masks: ``Tensor[N, H, W]`` bool (or integer, nonzero = foreground), one per instance.
        boxes: int64 ``Tensor[P, 4]`` (x1, y1, x2, y2).
        instance_index: int64 ``Tensor[P]`` in ``[0, N)``: the instance of each box.
        batch_index: int64 ``Tensor[N]`` in ``[0, B)``: the image of each instance.
        output_size: ``s`` or ``(s_h, s_w)``.

    Returns:
        ``(image_patches [P, C, s_h, s_w] in images' dtype, mask_patches [P, s_h, s_w] bool)``:
        ``roi_align(aligned=True, sampling_ratio=1)`` of the image on each box, and the box's
        crop of the mask resampled by ``F.interpolate(mode="nearest")``. Boxes with
        ``x2 <= x1`` or ``y2 <= y1`` give zeros and False.
    """
    op = "crop_patches"
    _check_tensor(images, op, "images")
    _check_float(images, op, "images")
    if images.dim() != 4:
        raise ValueError(f"{op}: `images` must be a Tensor[B, C, H, W], "
                         f"got {tuple(images.shape)}")
    _check_tensor(masks, op, "masks")
    _check_mask_dtype(masks, op, "masks")
    P = _check_patch_args(op, masks, boxes, instance_index)
    B, C, H, W = images.shape
    N = masks.size(0)
    if tuple(masks.shape[1:]) != (H, W):
        raise ValueError(f"{op}: `masks` must be a Tensor[N, {H}, {W}] (the images' size), "
                         f"got {tuple(masks.shape)}")
    _check_tensor(batch_index, op, "batch_index")
    _check_int64(batch_index, op, "batch_index")
    if batch_index.dim() != 1 or batch_index.size(0) != N:
        raise ValueError(f"{op}: `batch_index` must be a Tensor[{N}] (one per instance), "
                         f"got {tuple(batch_index.shape)}")
    s_h, s_w = _size_pair(output_size, op, "output_size")
    _check_same_device(op, images=images, masks=masks, boxes=boxes,
                       instance_index=instance_index, batch_index=batch_index)
    _check_range(instance_index, N, op, "instance_index")
    _check_range(batch_index, B, op, "batch_index")
    masks = masks != 0

    image_patches = images.new_zeros(P, C, s_h, s_w)
    mask_patches = torch.zeros(P, s_h, s_w, dtype=torch.bool, device=images.device)
    if P == 0 or s_h == 0 or s_w == 0:
        return image_patches, mask_patches
    for k in range(P):
        x1, y1, x2, y2 = (int(v) for v in boxes[k])
        n = int(instance_index[k])
        b = int(batch_index[n])
        roi = torch.tensor([[b, x1, y1, x2, y2]], dtype=torch.float64)
        image_patches[k] = roi_align(images, roi, (s_h, s_w), spatial_scale=1.0,
                                     sampling_ratio=1, aligned=True)[0]
        if x2 <= x1 or y2 <= y1:
            continue  # an empty box: an all-False mask patch
        crop = crop_mask(masks[n], (x1, y1, x2, y2)).to(torch.float32)
        mask_patches[k] = F.interpolate(crop[None, None], (s_h, s_w), mode="nearest")[0, 0] > 0.5
    return image_patches, mask_patches


# --------------------------------------------------------------------------------------
# reassemble_patches
# --------------------------------------------------------------------------------------


def resize_probs(prob: Tensor, bh: int, bw: int) -> Tensor:
    """A patch's probabilities ``[h, w]`` at the box size ``[bh, bw]``: unchanged when the
    sizes match, else ``F.interpolate(bilinear, align_corners=False)`` in prob's dtype."""
    if tuple(prob.shape) == (bh, bw):
        return prob
    return F.interpolate(prob[None, None], (bh, bw), mode="bilinear", align_corners=False)[0, 0]


def reassemble_patches(masks: Tensor, patch_probs: Tensor, boxes: Tensor,
                       instance_index: Tensor, threshold: float = 0.5) -> Tensor:
    """Reference reassembly of refined patches (docs/ops/patches.md).

    Args:
        masks: ``Tensor[N, H, W]`` bool (or integer, nonzero = foreground), the coarse masks.
        patch_probs: ``Tensor[P, h, w]`` foreground probabilities, float32/float64/float16/
            bfloat16.
        boxes: int64 ``Tensor[P, 4]`` (x1, y1, x2, y2).
        instance_index: int64 ``Tensor[P]`` in ``[0, N)``.
        threshold: a pixel covered by a patch is foreground iff its mean is ``> threshold``.

    Returns:
        bool ``Tensor[N, H, W]``: per instance, ``acc`` (float32; float64 for float64 probs)
        and ``cnt`` over the image, each patch in index order adding its probabilities
        (resized to the box when ``(h, w)`` differs) over its box; ``acc / cnt > threshold``
        where ``cnt > 0`` (both in acc's dtype), the coarse mask elsewhere.
    """
    op = "reassemble_patches"
    _check_tensor(masks, op, "masks")
    _check_mask_dtype(masks, op, "masks")
    _check_tensor(patch_probs, op, "patch_probs")
    _check_float(patch_probs, op, "patch_probs")
    P = _check_patch_args(op, masks, boxes, instance_index)
    if patch_probs.dim() != 3 or patch_probs.size(0) != P:
        raise ValueError(f"{op}: `patch_probs` must be a Tensor[{P}, h, w] (one per box), "
                         f"got {tuple(patch_probs.shape)}")
    threshold = _check_number(threshold, op, "threshold")
    _check_same_device(op, masks=masks, patch_probs=patch_probs, boxes=boxes,
                       instance_index=instance_index)
    N, H, W = masks.shape
    _check_range(instance_index, N, op, "instance_index")

    acc_dtype = torch.float64 if patch_probs.dtype == torch.float64 else torch.float32
    thr = torch.tensor(threshold, dtype=acc_dtype, device=masks.device)  # rounded to acc
    mean, covered = patch_means(masks, patch_probs, boxes, instance_index)
    return torch.where(covered, mean > thr, masks != 0)


def patch_means(masks: Tensor, patch_probs: Tensor, boxes: Tensor,
                instance_index: Tensor) -> Tuple[Tensor, Tensor]:
    """The per-instance means of :func:`reassemble_patches` (no validation).

    Returns ``(mean [N, H, W]`` in the accumulation dtype (float64 for float64 probabilities,
    float32 otherwise), 0 where no patch covers; ``covered [N, H, W]`` bool, ``cnt > 0``)."""
    N, H, W = masks.shape
    P = boxes.size(0)
    acc_dtype = torch.float64 if patch_probs.dtype == torch.float64 else torch.float32
    probs = patch_probs.to(acc_dtype)  # exact for every input dtype
    owners = instance_index.tolist()
    box_list = boxes.tolist()
    means = torch.zeros(N, H, W, dtype=acc_dtype, device=masks.device)
    covered = torch.zeros(N, H, W, dtype=torch.bool, device=masks.device)
    for n in range(N):
        acc = torch.zeros(H, W, dtype=acc_dtype, device=masks.device)
        cnt = torch.zeros(H, W, dtype=torch.int64, device=masks.device)
        for k in range(P):  # patch index order: the summation order is fixed
            if owners[k] != n:
                continue
            x1, y1, x2, y2 = box_list[k]
            if x2 <= x1 or y2 <= y1:
                continue  # an empty box adds nothing
            ya, yb, xa, xb = max(y1, 0), min(y2, H), max(x1, 0), min(x2, W)
            if yb <= ya or xb <= xa:
                continue  # wholly outside the image
            v = resize_probs(probs[k], y2 - y1, x2 - x1)
            acc[ya:yb, xa:xb] += v[ya - y1:yb - y1, xa - x1:xb - x1]  # outside: ignored
            cnt[ya:yb, xa:xb] += 1
        covered[n] = cnt > 0
        # acc / cnt in acc's dtype (cnt is exact in it)
        means[n] = torch.where(covered[n], acc / cnt.clamp_min(1).to(acc_dtype), 0)
    return means, covered
