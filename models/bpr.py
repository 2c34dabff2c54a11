"""BPR, Boundary Patch Refinement (Tang et al., CVPR 2021), a thin definition on segops' ops
(docs/models.md, "BPR").

BPR post-processes the instance masks of any detector: it cuts small square patches along
each predicted boundary, refines each patch with a binary segmentation net that sees the
image patch and the coarse mask patch, and pastes the refined patches back. Everything here
is ordinary PyTorch except the three steps segops accelerates:

* :func:`segops.boundary_patches` -- the boundary score map (3x3 box filter), one candidate
  box per boundary pixel, greedy per-instance NMS and the shift of the kept boxes into the
  image (the original's ``tools/split_patches.py``, minus its off-by-one at the right and
  bottom borders and its unstable sort);
* :func:`segops.crop_patches` -- image patches resampled bilinearly (``roi_align``,
  ``aligned=True``, ``sampling_ratio=1``) and mask patches resampled nearest, both to the
  net's input size, in one launch (the original writes 64x64 PNGs that its data pipeline
  resizes to 128 or 256);
* :func:`segops.reassemble_patches` -- each patch's foreground probability resampled to its
  box, averaged where patches overlap and thresholded; pixels no patch covers keep the
  coarse mask (the original's ``tools/merge_patches.py``).

The net (:class:`BPRNet`) follows the released ``HRNetRefine`` + ``FCNHead`` design, made
compact: separate stems for the image (3x3/2 conv on RGB) and the coarse mask (3x3/2 conv on
one channel), **summed**, BN + ReLU, a second 3x3/2 conv to 1/4 resolution; then a two-branch
high-resolution body (1/4 and 1/8 resolution, ``width`` and ``2 * width`` channels) whose
modules run residual blocks per branch and exchange information (upsampled 1x1 conv
low -> high, strided 3x3 conv high -> low); the head concatenates both branches at 1/4,
applies 1x1 conv + BN + ReLU and a 1x1 conv to 2 classes, and upsamples the logits
bilinearly (``align_corners=False``) to the input size. The released model is HRNetV2-W18-small
(4 branches, 18/36/72/144 channels) or W48 at 128x128 / 256x256 inputs; ``width``,
``num_modules`` and ``num_blocks`` scale this one (tests run it at width 4).

:class:`BPRRefiner` runs the whole pipeline on the instance masks of one image. Inputs to
the net follow the released config: the image patch is normalised with the ImageNet mean
and standard deviation in RGB order (``img_norm_cfg``), the coarse mask patch is mapped to
``{-1, +1}`` (``(mask - 0.5) / 0.5``), the net's softmax channel 1 is the foreground
probability. Training targets for the net are the ground-truth masks cropped with the same
boxes (``segops.crop_patches(..., gt_masks, ...)[1]``), with a 2-class cross-entropy loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import segops
from .backbones import BasicBlock

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BasicBlock",
    "HighResolutionModule",
    "BPRNet",
    "BPRResult",
    "BPRRefiner",
    "PatchOracle",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, for images in [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)

#: ``oracle(boxes int64 [P, 4], instance_index int64 [P]) -> patch_probs float [P, h, w]``:
#: foreground probabilities for the given patches, at any size (resampled to each box).
PatchOracle = Callable[[Tensor, Tensor], Tensor]


# ======================================================================================
# The refinement net
# ======================================================================================


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(out_ch)
    )


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize of ``[B, C, h, w]`` to ``size`` (``align_corners=False``); a no-op at
    the same size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class HighResolutionModule(nn.Module):
    """One HRNet module with two branches.

    ``(high [B, w, h, w_], low [B, 2w, ceil(h / 2), ceil(w_ / 2)])`` -> the same shapes.
    Each branch runs ``num_blocks`` residual blocks; then the branches exchange:
    ``high' = ReLU(high + up(BN(conv1x1(low))))`` and
    ``low' = ReLU(low + BN(conv3x3/2(high)))`` (up: bilinear, ``align_corners=False``).
    """

    def __init__(self, width: int, num_blocks: int = 2) -> None:
        super().__init__()
        self.high = nn.Sequential(*(BasicBlock(width, width) for _ in range(num_blocks)))
        self.low = nn.Sequential(*(BasicBlock(2 * width, 2 * width) for _ in range(num_blocks)))
        self.low_to_high = _conv_bn(2 * width, width, 1)
        self.high_to_low = _conv_bn(width, 2 * width, 3, stride=2)

    def forward(self, high: Tensor, low: Tensor) -> tuple[Tensor, Tensor]:
        high = self.high(high)
        low = self.low(low)
        new_high = F.relu(high + _resize(self.low_to_high(low), high.shape[-2:]))
        new_low = F.relu(low + self.high_to_low(high))
        return new_high, new_low


class BPRNet(nn.Module):
    """The boundary patch refinement net: image patch + coarse mask patch -> 2-class logits.

    Args:
        width: channels of the 1/4-resolution branch (the 1/8 branch has ``2 * width``);
            18 in HRNetV2-W18.
        stem_channels: channels of the two stems (64 in HRNet).
        num_modules: high-resolution modules (branch blocks + exchange).
        num_blocks: residual blocks per branch per module.
        num_classes: output classes (2: background, foreground).

    ``forward(image [P, 3, s, s], mask [P, 1, s, s] or [P, s, s]) -> logits
    [P, num_classes, s, s]`` for any ``s`` (the body runs at ``ceil(s / 4)`` and
    ``ceil(s / 8)``; the logits are upsampled bilinearly to the input size). The image is
    expected normalised (ImageNet mean/std) and the mask in ``{-1, +1}``, as
    :class:`BPRRefiner` prepares them.
    """

    def __init__(self, width: int = 18, stem_channels: int = 64, num_modules: int = 2,
                 num_blocks: int = 2, num_classes: int = 2) -> None:
        super().__init__()
        for name, v, least in (("width", width, 1), ("stem_channels", stem_channels, 1),
                               ("num_modules", num_modules, 0), ("num_blocks", num_blocks, 0),
                               ("num_classes", num_classes, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < least:
                raise ValueError(f"BPRNet: `{name}` must be an int >= {least}, got {v!r}")
        # stems: image and mask convolved separately and summed (the released HRNetRefine)
        self.conv_image = nn.Conv2d(3, stem_channels, 3, 2, 1, bias=False)
        self.conv_mask = nn.Conv2d(1, stem_channels, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.conv2 = nn.Conv2d(stem_channels, stem_channels, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(stem_channels)
        # transition to the two branches (1/4 and 1/8)
        self.to_high = BasicBlock(stem_channels, width)
        self.to_low = nn.Sequential(_conv_bn(stem_channels, 2 * width, 3, stride=2),
                                    nn.ReLU(inplace=True))
        self.stages = nn.ModuleList(HighResolutionModule(width, num_blocks)
                                    for _ in range(num_modules))
        # FCN head on the concatenated branches ("resize_concat", 1x1 conv, 1x1 classifier)
        self.head = nn.Sequential(
            nn.Conv2d(3 * width, 3 * width, 1, bias=False), nn.BatchNorm2d(3 * width),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(3 * width, num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m is not self.classifier:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, image: Tensor, mask: Tensor) -> Tensor:
        """``image [P, 3, s_h, s_w]``, ``mask [P, 1, s_h, s_w]`` (or ``[P, s_h, s_w]``) ->
        logits ``[P, num_classes, s_h, s_w]``."""
        if image.dim() != 4 or image.size(1) != 3:
            raise ValueError(f"BPRNet: `image` must be [P, 3, H, W], got {list(image.shape)}")
        if mask.dim() == 3:
            mask = mask.unsqueeze(1)
        if mask.dim() != 4 or mask.size(1) != 1 or mask.shape[-2:] != image.shape[-2:] \
                or mask.size(0) != image.size(0):
            raise ValueError(f"BPRNet: `mask` must be [P, 1, H, W] matching `image` "
                             f"{list(image.shape)}, got {list(mask.shape)}")
        size = image.shape[-2:]
        x = self.conv_image(image) + self.conv_mask(mask.to(image.dtype))
        x = F.relu(self.bn1(x))
        x = F.relu(self.bn2(self.conv2(x)))
        high, low = self.to_high(x), self.to_low(x)
        for stage in self.stages:
            high, low = stage(high, low)
        feats = torch.cat([high, _resize(low, high.shape[-2:])], dim=1)
        logits = self.classifier(self.head(feats))
        return _resize(logits, size)


# ======================================================================================
# The refinement pipeline
# ======================================================================================


class BPRResult(NamedTuple):
    """What :meth:`BPRRefiner.refine` returns.

    Attributes:
        masks: refined masks ``bool [N, H, W]``.
        boxes: patch boxes ``int64 [P, 4]`` (x1, y1, x2, y2), all ``patch_size`` square
            (smaller only on an axis where the image is smaller than ``patch_size``).
        instance_index: ``int64 [P]``, the instance each patch belongs to.
        scores: ``float32 [P]``, the boundary score of each patch's centre pixel.
        patch_probs: foreground probabilities ``[P, s, s]`` from the net (differentiable
            w.r.t. its parameters) or ``[P, h, w]`` from the oracle.
    """

    masks: Tensor
    boxes: Tensor
    instance_index: Tensor
    scores: Tensor
    patch_probs: Tensor


class BPRRefiner(nn.Module):
    """Boundary patch refinement of the instance masks of one image (docs/models.md).

    Pipeline: :func:`segops.boundary_patches` (``patch_size``, ``iou_threshold``) ->
    :func:`segops.crop_patches` (``output_size=input_size``) -> image patch normalised
    ``(x / pixel_max - mean) / std`` per RGB channel, mask patch to ``{-1, +1}`` -> ``net``
    (in chunks of ``max_batch`` patches) -> softmax, channel 1 ->
    :func:`segops.reassemble_patches` (the ``[P, input_size, input_size]`` probabilities are
    resampled bilinearly to each box, averaged where patches overlap, ``> threshold``;
    uncovered pixels keep the coarse mask).

    Args:
        net: the refinement net (:class:`BPRNet` or any module ``(image [P, 3, s, s],
            mask [P, 1, s, s]) -> logits [P, 2, s, s]``); may be None when every call passes
            an ``oracle``.
        patch_size: side of the square patches in image pixels (even; 64 in BPR).
        iou_threshold: NMS threshold between the patches of one instance (BPR: 0.25, or 0.55
            for Cityscapes inference; more patches at higher thresholds).
        input_size: side the patches are resized to for the net (256, or 128 for the small
            model).
        mean, std: per-channel (R, G, B) normalisation in units of ``pixel_max`` (ImageNet's
            by default).
        threshold: foreground threshold on the averaged probability (strict ``>``).
        pixel_max: the value of a white pixel in the input image: 1.0 for images in
            ``[0, 1]`` (default), 255.0 for images in ``[0, 255]``. Only the normalisation
            uses it (``mean * pixel_max``, ``std * pixel_max``).
        max_batch: the net sees at most this many patches per call (bounds the activation
            memory; None: all at once). Results do not depend on it in eval mode.
    """

    def __init__(self, net: nn.Module | None = None, patch_size: int = 64,
                 iou_threshold: float = 0.25, input_size: int = 256,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 threshold: float = 0.5, pixel_max: float = 1.0,
                 max_batch: int | None = 128) -> None:
        super().__init__()
        if not isinstance(patch_size, int) or patch_size < 2 or patch_size % 2:
            raise ValueError(f"BPRRefiner: `patch_size` must be an even int >= 2, "
                             f"got {patch_size!r}")
        if not isinstance(input_size, int) or input_size < 1:
            raise ValueError(f"BPRRefiner: `input_size` must be a positive int, "
                             f"got {input_size!r}")
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
        self.threshold = float(threshold)
        self.pixel_max = float(pixel_max)
        self.max_batch = max_batch
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
                             * self.pixel_max, persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
                             * self.pixel_max, persistent=False)

    # ---- the steps -------------------------------------------------------------------

    def extract(self, masks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Boundary patches of ``masks [N, H, W]`` bool: ``(boxes int64 [P, 4],
        instance_index int64 [P], scores float32 [P])`` (:func:`segops.boundary_patches`)."""
        return segops.boundary_patches(masks, self.patch_size, self.iou_threshold)

    def net_inputs(self, image: Tensor, masks: Tensor, boxes: Tensor,
                   instance_index: Tensor) -> tuple[Tensor, Tensor]:
        """The net's inputs for the given patches.

        Args:
            image: ``[3, H, W]`` float RGB, in ``[0, pixel_max]``.
            masks: ``[N, H, W]`` bool coarse masks.
            boxes, instance_index: ``[P, 4]``, ``[P]`` int64 (from :meth:`extract`).

        Returns:
            ``(image_patches [P, 3, s, s], mask_patches [P, 1, s, s])``, ``s = input_size``:
            the image patches normalised with ``mean``/``std`` (in the image's dtype), the
            mask patches as ``-1.0`` / ``+1.0`` in the same dtype. Normalising after the
            bilinear crop equals normalising the image first (the interpolation weights of
            every output pixel sum to one; the boxes lie inside the image).
        """
        batch_index = torch.zeros(masks.size(0), dtype=torch.int64, device=masks.device)
        img_p, mask_p = segops.crop_patches(image.unsqueeze(0), masks, boxes, instance_index,
                                            batch_index, output_size=self.input_size)
        mean = self.mean.to(img_p.device, img_p.dtype)
        std = self.std.to(img_p.device, img_p.dtype)
        img_p = (img_p - mean) / std
        mask_p = mask_p.unsqueeze(1).to(img_p.dtype) * 2 - 1
        return img_p, mask_p

    def predict_patches(self, image_patches: Tensor, mask_patches: Tensor) -> Tensor:
        """Foreground probabilities ``[P, s, s]`` (softmax channel 1) of the net on prepared
        inputs ``[P, 3, s, s]``, ``[P, 1, s, s]``, in chunks of ``max_batch``."""
        if self.net is None:
            raise ValueError("BPRRefiner: no `net` was given; pass an `oracle` to refine()")
        param = next(self.net.parameters(), None)
        if param is not None:
            image_patches = image_patches.to(param.dtype)
            mask_patches = mask_patches.to(param.dtype)
        p = image_patches.size(0)
        step = p if self.max_batch is None else self.max_batch
        out = []
        for i in range(0, p, max(step, 1)):
            logits = self.net(image_patches[i:i + step], mask_patches[i:i + step])
            out.append(torch.softmax(logits, dim=1)[:, 1])
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
            s = self.input_size
            dtype = torch.float32 if image is None else image.dtype
            probs = torch.zeros((0, s, s), dtype=dtype, device=masks.device)
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
            probs = self.predict_patches(img_p, mask_p)
        refined = segops.reassemble_patches(masks, probs.detach(), boxes, instance_index,
                                            self.threshold)
        return BPRResult(refined, boxes, instance_index, scores, probs)

    def forward(self, image: Tensor | None, masks: Tensor,
                oracle: PatchOracle | None = None) -> Tensor:
        """``image [3, H, W]`` (float RGB in ``[0, pixel_max]``), ``masks [N, H, W]`` bool ->
        refined masks ``[N, H, W]`` bool. See :meth:`refine`."""
        return self.refine(image, masks, oracle).masks
