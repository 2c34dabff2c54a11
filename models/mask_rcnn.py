"""Mask R-CNN RoI heads (He et al., ICCV 2017) on an FPN, a thin definition (docs/models.md).

Everything here is ordinary PyTorch except the steps segops accelerates: RoI pooling over
P2..P5 in one launch with :func:`segops.multilevel_roi_align` (``mode="assign"``,
torchvision's ``MultiScaleRoIAlign``), the mask targets with :func:`segops.roi_align`,
per-class suppression with :func:`segops.batched_nms` and mask pasting with
:func:`segops.paste_masks`.

Two ``flavour`` s, the two reference implementations (they pool differently):

* ``"torchvision"``: pooling ``sampling_ratio=2, aligned=False``; soft mask targets
  ``roi_align(gt[:, None], rois, 28, 1.0)`` (roi_align's defaults: adaptive sampling, not
  aligned); ``paste_masks_in_image``; box loss smooth-L1 with beta 1/9.
* ``"detectron2"``: pooling ``sampling_ratio=0, aligned=True``; ``BitMasks.crop_and_resize``
  targets: RoIAlign (sampling 0, aligned) then ``>= 0.5``; detectron2's paste; L1 box loss.

Labels are 1..K with 0 the background: :class:`BoxHead` gives ``K + 1`` class logits
(background at 0) and ``4K`` class-specific deltas, :class:`MaskHead` ``K`` mask channels
(class ``k`` at channel / delta group ``k - 1``, as detectron2). :class:`MaskRCNNHeads` ties
the heads, :class:`BoxCoder`, :func:`mask_targets`, :func:`mask_loss`,
:func:`fast_rcnn_loss` and :func:`postprocess_detections` together.

Not included: the backbone, FPN, RPN and the proposal sampler (``MaskRCNNHeads`` uses every
proposal it is given; subsample 512 per image at 25% positives before calling it, as both
references do). The LevelMapper is torchvision's in both flavours (detectron2 writes
``floor(4 + log2(sqrt(area) / 224 + 1e-8))``; the two differ only for an area within about
1e-6, relative, of a level boundary).

The definitions live in three files, all importable from here: this one
(:class:`MaskRCNNHeads`), ``mask_rcnn_heads.py`` (argument checks, :class:`FPNRoIAlign`,
:class:`BoxHead`, :class:`MaskHead`) and ``mask_rcnn_targets.py`` (:class:`BoxCoder`, matching,
:func:`fast_rcnn_loss`, :func:`mask_targets`, :func:`mask_loss`,
:func:`postprocess_detections`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

import segops

# Re-exported: the public names of the split-out files (panet.py imports BoxPredictor and the
# checks from here).
from .mask_rcnn_heads import (
    FLAVOURS,
    FPN_SCALES,
    BoxHead,
    BoxPredictor,
    FPNRoIAlign,
    MaskHead,
    _check_boxes,
    boxes_to_rois,
    check_features,
    check_int,
    check_rois,
    pooling_settings,
)
from .mask_rcnn_targets import (
    BoxCoder,
    box_iou,
    clip_boxes,
    fast_rcnn_loss,
    mask_loss,
    mask_targets,
    match_proposals,
    postprocess_detections,
)

__all__ = [
    "FLAVOURS", "FPN_SCALES", "pooling_settings", "FPNRoIAlign", "BoxHead", "MaskHead",
    "BoxCoder", "box_iou", "clip_boxes", "match_proposals", "fast_rcnn_loss", "mask_targets",
    "mask_loss", "postprocess_detections", "MaskRCNNHeads",
]

_BOX_BETA = {"torchvision": 1 / 9, "detectron2": 0.0}
Targets = Sequence[Mapping[str, Tensor]]


class MaskRCNNHeads(nn.Module):
    """Mask R-CNN's RoI heads on FPN P2..P5.

    Args:
        num_classes: ``K`` foreground classes (labels ``1..K``, 0 is background).
        flavour: ``"torchvision"`` or ``"detectron2"`` (pooling, mask targets, pasting and
            the box loss's beta; see the module docstring).
        in_channels, representation_size, mask_channels, scales: the heads' sizes.
        score_threshold, nms_threshold, detections_per_image: inference (0.05, 0.5, 100).
        fg_iou_threshold: training match (0.5); append_gt: add GT boxes to the proposals.
        mask_threshold: pasted masks are ``prob >= mask_threshold`` (bool); ``None`` pastes
            the probabilities.
        box_head, mask_head: replacements with the same interface (PANet passes its own).

    ``forward(features L x [N, C, H_l, W_l], proposals [R_i, 4] per image, image_sizes=None,
    targets=None)``. Training: ``targets`` one dict per image (``boxes [G, 4]``, ``labels [G]``
    in 1..K, ``masks [G, H, W]``) -> ``{"loss_classifier", "loss_box_reg", "loss_mask"}``.
    Eval: ``image_sizes`` one ``(H, W)`` per image -> one dict per image: ``boxes [D, 4]``,
    ``scores [D]``, ``labels [D]`` int64, ``mask_probs [D, 28, 28]``, ``masks [D, H, W]``
    (bool, or float without threshold).
    """

    def __init__(self, num_classes: int, flavour: str = "torchvision", in_channels: int = 256,
                 representation_size: int = 1024, mask_channels: int = 256,
                 scales: Sequence[float] = FPN_SCALES, score_threshold: float = 0.05,
                 nms_threshold: float = 0.5, detections_per_image: int = 100,
                 fg_iou_threshold: float = 0.5, append_gt: bool = True,
                 mask_threshold: float | None = 0.5, box_head: nn.Module | None = None,
                 mask_head: nn.Module | None = None) -> None:
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes, 1, "MaskRCNNHeads")
        pooling_settings(flavour)
        self.flavour = flavour
        self.box_head = box_head if box_head is not None else BoxHead(
            num_classes, in_channels, representation_size, 7, flavour, scales)
        self.mask_head = mask_head if mask_head is not None else MaskHead(
            num_classes, in_channels, mask_channels, 14, 4, flavour, scales)
        self.box_coder = BoxCoder()
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.detections_per_image = check_int("detections_per_image", detections_per_image, 0,
                                              "MaskRCNNHeads")
        self.fg_iou_threshold, self.append_gt = fg_iou_threshold, append_gt
        self.mask_threshold = mask_threshold

    def forward(self, features: Sequence[Tensor], proposals: Sequence[Tensor],
                image_sizes: Sequence[tuple[int, int]] | None = None,
                targets: Targets | None = None) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training:
            if targets is None or len(targets) != len(proposals):
                raise ValueError("MaskRCNNHeads: training needs `targets`, one dict per image "
                                 "of `proposals`")
            return self.losses(features, proposals, targets)
        if image_sizes is None or len(image_sizes) != len(proposals):
            raise ValueError("MaskRCNNHeads: inference needs `image_sizes`, one (H, W) per "
                             "image of `proposals`")
        return self.detect(features, proposals, image_sizes)

    def losses(self, features: Sequence[Tensor], proposals: Sequence[Tensor],
               targets: Targets) -> dict[str, Tensor]:
        """The three training losses (see the class docstring)."""
        boxes, labels, matched, regression = [], [], [], []
        for i, (p, t) in enumerate(zip(proposals, targets)):
            p = _check_boxes(p, "MaskRCNNHeads", f"proposals[{i}]")
            gt = _check_boxes(t["boxes"], "MaskRCNNHeads", f"targets[{i}]['boxes']").to(p)
            if self.append_gt:
                p = torch.cat([p, gt])
            lab, m = match_proposals(p, gt, t["labels"], self.fg_iou_threshold)
            reg = self.box_coder.encode(gt[m], p) if gt.shape[0] else torch.zeros_like(p)
            boxes.append(p), labels.append(lab), matched.append(m), regression.append(reg)
        rois = boxes_to_rois(boxes, "MaskRCNNHeads")
        class_logits, box_regression = self.box_head(features, rois)
        all_labels = torch.cat(labels)
        loss_cls, loss_box = fast_rcnn_loss(class_logits, box_regression, all_labels,
                                            torch.cat(regression), _BOX_BETA[self.flavour])
        pos = all_labels > 0
        mask_logits = self.mask_head(features, rois[pos])
        res = mask_logits.shape[-1]
        mask_t = [mask_targets(t["masks"], b[lab > 0], m[lab > 0], res, self.flavour)
                  for t, b, lab, m in zip(targets, boxes, labels, matched)]
        loss_mask = mask_loss(mask_logits, all_labels[pos], torch.cat(mask_t))
        return {"loss_classifier": loss_cls, "loss_box_reg": loss_box, "loss_mask": loss_mask}

    def detect(self, features: Sequence[Tensor], proposals: Sequence[Tensor],
               image_sizes: Sequence[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Detections with masks pasted into each image (see the class docstring)."""
        rois = boxes_to_rois(proposals, "MaskRCNNHeads")
        class_logits, box_regression = self.box_head(features, rois)
        dets = postprocess_detections(
            class_logits, box_regression, list(proposals), image_sizes, self.box_coder,
            self.score_threshold, self.nms_threshold, self.detections_per_image, self.flavour)
        det_rois = boxes_to_rois([d["boxes"] for d in dets], "MaskRCNNHeads")
        mask_logits = self.mask_head(features, det_rois.to(rois.dtype))
        labels = torch.cat([d["labels"] for d in dets])
        probs = torch.sigmoid(mask_logits[torch.arange(labels.numel(), device=labels.device),
                                          labels - 1])
        for d, p, size in zip(dets, probs.split([len(d["labels"]) for d in dets]), image_sizes):
            d["mask_probs"] = p
            d["masks"] = segops.paste_masks(p, d["boxes"], size,
                                            self.mask_threshold, mode=self.flavour)
        return dets
