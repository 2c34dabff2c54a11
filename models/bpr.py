"""BPR, Boundary Patch Refinement (Tang et al., CVPR 2021), on segops' ops (docs/models.md,
"BPR").

BPR post-processes the instance masks of any detector: it cuts small square patches along
each predicted boundary, refines each patch with a binary segmentation net that sees the
image patch and the coarse mask patch, and pastes the refined patches back.
:class:`BPRRefiner` runs this on the instance masks of one image as the released inference
does (``tools/split_patches.py``, ``tools/test_float.py``, ``tools/merge_patches.py``):

1. :func:`segops.boundary_patches`: the boundary score map, one ``patch_size`` box per
   boundary pixel, greedy per-instance NMS at ``iou_threshold`` (0.55 for inference, the
   paper's best; 0.25 to build the training set), the kept boxes shifted into the image;
2. the crop: each box grown by ``padding`` pixels on every side (zeros beyond the image),
   the image and coarse mask cut out at that size (:func:`segops.crop_patches` at the box
   size is an exact copy), then resized to the net's ``input_size`` (128 or 256), the image
   bilinearly and the mask by nearest neighbour, as the released data pipeline resizes its
   patch files (``resample="direct"`` instead samples ``input_size`` directly in one
   :func:`segops.crop_patches` launch, reading image context beyond the box at its border);
3. the net's inputs: the image normalised with the ImageNet mean and std (RGB), the mask as
   ``(m - 0.5) / 0.5``; the net (:class:`~segops.models.hrnet.BPRRefineNet`) returns logits
   at the input size;
4. the logits resized bilinearly to the padded patch size, THEN the softmax (the released
   ``whole_inference(rescale=True)`` followed by ``inference``), channel 1, the padding cut
   off;
5. :func:`segops.reassemble_patches`: the probabilities averaged where patches overlap,
   ``> threshold``; pixels no patch covers keep the coarse mask.

Known differences from the released code: the box shift of :func:`segops.boundary_patches`
(BPR moves boxes at the right and bottom borders one pixel too far) and its stable order of
equal scores (docs/ops/patches.md); the image is resized in floating point (the released
pipeline resizes 8-bit patch files with OpenCV, which rounds to integers).

Training-side helpers (filtering by IoU with the ground truth, matching, the patch loss) are
in :mod:`segops.models.bpr_train`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import segops
from .hrnet import RELEASED_CONFIGS, BPRRefineNet, load_released_checkpoint

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INFERENCE_IOU_THRESHOLD",
    "TRAINING_IOU_THRESHOLD",
    "PATCH_SIZE",
    "PADDING",
    "RELEASED_CONFIGS",
    "BPRRefineNet",
    "load_released_checkpoint",
    "BPRResult",
    "BPRRefiner",
    "PatchOracle",
]

# the released img_norm_cfg (mean 123.675, 116.28, 103.53; std 58.395, 57.12, 57.375 on
# 0..255 RGB), in units of a white pixel
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: NMS threshold between the patches of one instance: the paper's best for inference
#: (``tools/inference.sh``), and the one that builds the training set
#: (``tools/prepare_dataset.sh``; also the released COCO inference script's).
INFERENCE_IOU_THRESHOLD = 0.55
TRAINING_IOU_THRESHOLD = 0.25
#: the released patch side in image pixels and patch padding (``tools/split_patches.py``)
PATCH_SIZE = 64
PADDING = 0

#: ``oracle(boxes int64 [P, 4], instance_index int64 [P]) -> patch_probs float [P, h, w]``:
#: foreground probabilities for the given patches, at any size (resampled to each box).
PatchOracle = Callable[[Tensor, Tensor], Tensor]


class BPRResult(NamedTuple):
    """What :meth:`BPRRefiner.refine` returns.

    Attributes:
        masks: refined masks ``bool [N, H, W]``.
        boxes: patch boxes ``int64 [P, 4]`` (x1, y1, x2, y2), all ``patch_size`` square
            (smaller only on an axis where the image is smaller than ``patch_size``),
            without the padding.
        instance_index: ``int64 [P]``, the instance each patch belongs to.
        scores: ``float32 [P]``, the boundary score of each patch's centre pixel.
        patch_probs: foreground probabilities at the box size ``[P, bh, bw]`` from the net
            (differentiable w.r.t. its parameters), or the oracle's ``[P, h, w]``.
    """

    masks: Tensor
    boxes: Tensor
    instance_index: Tensor
    scores: Tensor
    patch_probs: Tensor


class BPRRefiner(nn.Module):
    """Boundary patch refinement of the instance masks of one image (module docstring).

    Args:
        net: the refinement net (:class:`BPRRefineNet`, or any module ``(image [P, 3, s, s],
            mask [P, 1, s, s]) -> logits [P, 2, h, w]``); may be None when every call passes
            an ``oracle``.
        patch_size: side of the square patches in image pixels (even; 64 as released).
        iou_threshold: NMS threshold between the patches of one instance (more patches at
            higher values): :data:`INFERENCE_IOU_THRESHOLD` (0.55) by default,
            :data:`TRAINING_IOU_THRESHOLD` (0.25) to build training patches
            (:meth:`for_training`).
        input_size: side the patches are resized to for the net; None: ``net.input_size``
            (128 for ``hrnet18s_128``, 256 for ``hrnet48_256``).
        padding: pixels added to every side of each box before the crop (zeros beyond the
            image) and cut off the probabilities after the softmax (0 as released).
        resample: ``"released"`` (crop at the padded box size, then resize) or ``"direct"``
            (one bilinear/nearest sampling at ``input_size``).
        mean, std: per-channel (R, G, B) normalisation in units of ``pixel_max``.
        threshold: foreground threshold on the averaged probability (strict ``>``).
        pixel_max: the value of a white pixel in the input image: 1.0 for images in
            ``[0, 1]`` (default), 255.0 for images in ``[0, 255]``.
        max_batch: the net sees at most this many patches per call (bounds the activation
            memory; None: all at once). Results do not depend on it in eval mode.
    """

    def __init__(self, net: nn.Module | None = None, patch_size: int = PATCH_SIZE,
                 iou_threshold: float = INFERENCE_IOU_THRESHOLD, input_size: int | None = None,
                 padding: int = PADDING, resample: str = "released",
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 threshold: float = 0.5, pixel_max: float = 1.0,
                 max_batch: int | None = 128) -> None:
        super().__init__()
        if not isinstance(patch_size, int) or patch_size < 2 or patch_size % 2:
            raise ValueError(f"BPRRefiner: `patch_size` must be an even int >= 2, "
                             f"got {patch_size!r}")
        if input_size is None and net is not None:
            input_size = getattr(net, "input_size", None)
        if input_size is not None and (not isinstance(input_size, int) or input_size < 1):
            raise ValueError(f"BPRRefiner: `input_size` must be a positive int, "
                             f"got {input_size!r}")
        if not isinstance(padding, int) or padding < 0:
            raise ValueError(f"BPRRefiner: `padding` must be an int >= 0, got {padding!r}")
        if resample not in ("released", "direct"):
            raise ValueError(f"BPRRefiner: `resample` must be 'released' or 'direct', "
                             f"got {resample!r}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("BPRRefiner: `mean` and `std` must have 3 entries (R, G, B)")
        if not pixel_max > 0:
            raise ValueError(f"BPRRefiner: `pixel_max` must be > 0, got {pixel_max!r}")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"BPRRefiner: `max_batch` must be None or >= 1, got {max_batch!r}")
        self.net = net
        self.patch_size = patch_size
        self.iou_threshold = float(iou_threshold)
        self.input_size = input_size
        self.padding = padding
        self.resample = resample
        self.threshold = float(threshold)
        self.pixel_max = float(pixel_max)
        self.max_batch = max_batch
        scale = torch.tensor(self.pixel_max, dtype=torch.float64)
        self.register_buffer("mean", (torch.tensor(mean, dtype=torch.float64) * scale)
                             .float().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", (torch.tensor(std, dtype=torch.float64) * scale)
                             .float().view(1, 3, 1, 1), persistent=False)

    @classmethod
    def for_inference(cls, net: nn.Module | None, **kwargs) -> "BPRRefiner":
        """The released inference: NMS at :data:`INFERENCE_IOU_THRESHOLD` (0.55), 64-pixel
        patches, padding 0, the net's input size; ``kwargs`` override."""
        kwargs.setdefault("iou_threshold", INFERENCE_IOU_THRESHOLD)
        return cls(net, **kwargs)

    @classmethod
    def for_training(cls, net: nn.Module | None, **kwargs) -> "BPRRefiner":
        """Patches as the released training set has them: NMS at
        :data:`TRAINING_IOU_THRESHOLD` (0.25); ``kwargs`` override."""
        kwargs.setdefault("iou_threshold", TRAINING_IOU_THRESHOLD)
        return cls(net, **kwargs)

    # ---- the steps -------------------------------------------------------------------

    def extract(self, masks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Boundary patches of ``masks [N, H, W]`` bool: ``(boxes int64 [P, 4],
        instance_index int64 [P], scores float32 [P])`` (:func:`segops.boundary_patches`)."""
        return segops.boundary_patches(masks, self.patch_size, self.iou_threshold)

    def _input_size(self) -> int:
        if self.input_size is None:
            raise ValueError("BPRRefiner: `input_size` is not set (pass it, or a net with an "
                             "`input_size` attribute)")
        return self.input_size

    @staticmethod
    def _box_size(boxes: Tensor) -> tuple[int, int]:
        """The one ``(bh, bw)`` of all boxes (:func:`segops.boundary_patches` gives one)."""
        wh = torch.stack([boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]], dim=1)
        if not bool((wh == wh[:1]).all()):
            raise ValueError("BPRRefiner: all `boxes` must have the same size")
        return int(wh[0, 0]), int(wh[0, 1])

    def crop(self, image: Tensor | None, masks: Tensor, boxes: Tensor,
             instance_index: Tensor) -> tuple[Tensor | None, Tensor]:
        """Image and mask patches at ``input_size`` (not normalised).

        Args:
            image: ``[C, H, W]`` float, or None (masks only).
            masks: ``[N, H, W]`` bool.
            boxes, instance_index: ``[P, 4]``, ``[P]`` int64, all boxes of one size.

        Returns:
            ``(image_patches [P, C, s, s]`` or None, ``mask_patches bool [P, s, s])``: each
            box grown by ``padding`` (zeros / False beyond the image), cut out and resized
            (``resample``).
        """
        s, pad = self._input_size(), self.padding
        n, h, w = masks.shape
        canvas = image if image is not None else masks.new_zeros((1, h, w), dtype=torch.float32)
        if pad:
            canvas = F.pad(canvas, (pad, pad, pad, pad))
            masks = F.pad(masks, (pad, pad, pad, pad))
            boxes = boxes + boxes.new_tensor([0, 0, 2 * pad, 2 * pad])
        batch_index = torch.zeros(n, dtype=torch.int64, device=masks.device)
        if boxes.size(0) == 0:
            size: tuple[int, int] = (s, s)
        elif self.resample == "direct":
            size = (s, s)
        else:
            bh, bw = self._box_size(boxes)
            size = (bh, bw)
        img_p, mask_p = segops.crop_patches(canvas.unsqueeze(0), masks, boxes, instance_index,
                                            batch_index, output_size=size)
        if size != (s, s):  # the released resize of the box-size crops
            img_p = F.interpolate(img_p, size=(s, s), mode="bilinear", align_corners=False)
            mask_p = F.interpolate(mask_p.unsqueeze(1).to(img_p.dtype), size=(s, s),
                                   mode="nearest")[:, 0] > 0.5
        return (img_p if image is not None else None), mask_p

    def net_inputs(self, image: Tensor, masks: Tensor, boxes: Tensor,
                   instance_index: Tensor) -> tuple[Tensor, Tensor]:
        """The net's inputs for the given patches.

        Args:
            image: ``[3, H, W]`` float RGB, in ``[0, pixel_max]``.
            masks: ``[N, H, W]`` bool coarse masks.
            boxes, instance_index: ``[P, 4]``, ``[P]`` int64 (from :meth:`extract`).

        Returns:
            ``(image_patches [P, 3, s, s], mask_patches [P, 1, s, s])``, ``s = input_size``,
            from :meth:`crop`: the image patches normalised with ``mean``/``std`` after the
            resize (as released), the mask patches as ``-1.0`` / ``+1.0`` in the image's dtype.
        """
        img_p, mask_p = self.crop(image, masks, boxes, instance_index)
        assert img_p is not None
        mean = self.mean.to(img_p.device, img_p.dtype)
        std = self.std.to(img_p.device, img_p.dtype)
        return (img_p - mean) / std, mask_p.unsqueeze(1).to(img_p.dtype) * 2 - 1

    def targets(self, gt_masks: Tensor, boxes: Tensor, instance_index: Tensor) -> Tensor:
        """Training labels ``int64 [P, s, s]`` (0 / 1): the ground-truth mask matched to each
        patch's instance (``gt_masks [N, H, W]``, one per coarse instance), cropped and
        resized as the coarse mask patches are."""
        return self.crop(None, gt_masks, boxes, instance_index)[1].long()

    def probabilities(self, logits: Tensor, box_size: tuple[int, int]) -> Tensor:
        """Foreground probabilities ``[P, bh, bw]`` from logits ``[P, 2, h, w]``: resized
        bilinearly (``align_corners=False``) to the padded box size, the softmax over the
        classes, channel 1, the padding cut off (the released order: resize, then softmax)."""
        pad = self.padding
        bh, bw = box_size
        size = (bh + 2 * pad, bw + 2 * pad)
        if tuple(logits.shape[-2:]) != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        probs = torch.softmax(logits, dim=1)[:, 1]
        return probs[:, pad:pad + bh, pad:pad + bw]

    def predict_patches(self, image_patches: Tensor, mask_patches: Tensor,
                        box_size: tuple[int, int]) -> Tensor:
        """Foreground probabilities ``[P, bh, bw]`` (:meth:`probabilities`) of the net on
        prepared inputs ``[P, 3, s, s]``, ``[P, 1, s, s]``, in chunks of ``max_batch``."""
        if self.net is None:
            raise ValueError("BPRRefiner: no `net` was given; pass an `oracle` to refine()")
        param = next(self.net.parameters(), None)
        if param is not None:
            image_patches = image_patches.to(param.dtype)
            mask_patches = mask_patches.to(param.dtype)
        p = image_patches.size(0)
        step = p if self.max_batch is None else self.max_batch
        out = [self.probabilities(self.net(image_patches[i:i + step], mask_patches[i:i + step]),
                                  box_size)
               for i in range(0, p, max(step, 1))]
        return torch.cat(out) if len(out) != 1 else out[0]

    # ---- the pipeline ----------------------------------------------------------------

    def refine(self, image: Tensor | None, masks: Tensor,
               oracle: PatchOracle | None = None) -> BPRResult:
        """Refine the instance masks of one image; return the masks and the patches.

        Args:
            image: ``[3, H, W]`` float RGB in ``[0, pixel_max]``; may be None with an
                ``oracle``.
            masks: ``[N, H, W]`` bool coarse instance masks on the image's device.
            oracle: if given, it replaces the net: ``oracle(boxes [P, 4], instance_index
                [P]) -> patch_probs [P, h, w]`` float foreground probabilities (any
                ``h, w``: :func:`segops.reassemble_patches` resamples them to each box). The
                image is then not cropped (e.g. ground-truth crops, to measure what a
                perfect refinement net would give).

        Returns:
            :class:`BPRResult`. With no boundary (no instance, or every mask empty or full)
            there are no patches and ``masks`` is a copy of the coarse masks.
        """
        if not isinstance(masks, Tensor) or masks.dim() != 3:
            raise ValueError(f"BPRRefiner: `masks` must be a [N, H, W] tensor, got "
                             f"{list(masks.shape) if isinstance(masks, Tensor) else type(masks)}")
        if masks.dtype != torch.bool:
            masks = masks != 0
        if image is None:
            if oracle is None:
                raise ValueError("BPRRefiner: `image` is required unless an `oracle` is given")
        else:
            if image.dim() != 3 or image.size(0) != 3 or image.shape[1:] != masks.shape[1:]:
                raise ValueError(f"BPRRefiner: `image` must be [3, H, W] with the masks' "
                                 f"H, W {list(masks.shape[1:])}, got {list(image.shape)}")
            if not image.is_floating_point():
                image = image.to(torch.float32)
        boxes, instance_index, scores = self.extract(masks)
        p = boxes.size(0)
        if p == 0:
            b = min(self.patch_size, masks.size(1)), min(self.patch_size, masks.size(2))
            dtype = torch.float32 if image is None else image.dtype
            probs = torch.zeros((0, *b), dtype=dtype, device=masks.device)
            return BPRResult(masks.clone(), boxes, instance_index, scores, probs)
        if oracle is not None:
            probs = oracle(boxes, instance_index)
            if probs.dim() != 3 or probs.size(0) != p:
                raise ValueError(f"BPRRefiner: the oracle must return [P={p}, h, w] "
                                 f"probabilities, got {list(probs.shape)}")
            if not probs.is_floating_point():
                probs = probs.to(torch.float32)
        else:
            assert image is not None
            img_p, mask_p = self.net_inputs(image, masks, boxes, instance_index)
            probs = self.predict_patches(img_p, mask_p, self._box_size(boxes))
        refined = segops.reassemble_patches(masks, probs.detach(), boxes, instance_index,
                                            self.threshold)
        return BPRResult(refined, boxes, instance_index, scores, probs)

    def forward(self, image: Tensor | None, masks: Tensor,
                oracle: PatchOracle | None = None) -> Tensor:
        """``image [3, H, W]`` (float RGB in ``[0, pixel_max]``), ``masks [N, H, W]`` bool ->
        refined masks ``[N, H, W]`` bool. See :meth:`refine`."""
        return self.refine(image, masks, oracle).masks
