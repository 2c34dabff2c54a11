"""Mask R-CNN RoI heads (He et al., ICCV 2017) on an FPN, a thin definition (SPEC §6).

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
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import segops

__all__ = [
    "FLAVOURS", "FPN_SCALES", "pooling_settings", "FPNRoIAlign", "BoxHead", "MaskHead",
    "BoxCoder", "box_iou", "clip_boxes", "match_proposals", "fast_rcnn_loss", "mask_targets",
    "mask_loss", "postprocess_detections", "MaskRCNNHeads",
]

FPN_SCALES: tuple[float, ...] = (1 / 4, 1 / 8, 1 / 16, 1 / 32)  # P2..P5
# (sampling_ratio, aligned) of the feature pooling
FLAVOURS: dict[str, tuple[int, bool]] = {"torchvision": (2, False), "detectron2": (0, True)}
_BOX_BETA = {"torchvision": 1 / 9, "detectron2": 0.0}
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
Targets = Sequence[Mapping[str, Tensor]]


# ---- argument checks (shared with panet.py) ----


def pooling_settings(flavour: str) -> tuple[int, bool]:
    """``(sampling_ratio, aligned)`` of a flavour: torchvision ``(2, False)``, detectron2
    ``(0, True)``."""
    if flavour not in FLAVOURS:
        raise ValueError(f"`flavour` must be 'torchvision' or 'detectron2', got {flavour!r}")
    return FLAVOURS[flavour]


def check_int(name: str, v: object, least: int, who: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < least:
        raise ValueError(f"{who}: `{name}` must be an int >= {least}, got {v!r}")
    return v


def check_features(features: object, num_levels: int, channels: int, who: str) -> list[Tensor]:
    """``features``: a list of ``num_levels`` float tensors ``[N, channels, H_l, W_l]``."""
    if not isinstance(features, (list, tuple)):
        raise TypeError(f"{who}: `features` must be a list of Tensor[N, C, H, W] (P2..P5), "
                        f"got {type(features).__name__}")
    if len(features) != num_levels:
        raise ValueError(f"{who}: `features` must hold {num_levels} levels, got {len(features)}")
    for i, f in enumerate(features):
        if not isinstance(f, Tensor) or f.dim() != 4 or f.dtype not in _FLOAT_DTYPES:
            got = (f"{f.dtype} tensor of shape {tuple(f.shape)}" if isinstance(f, Tensor)
                   else type(f).__name__)
            raise TypeError(f"{who}: `features[{i}]` must be a floating Tensor[N, C, H, W], "
                            f"got {got}")
        if f.shape[1] != channels:
            raise ValueError(f"{who}: `features[{i}]` must have {channels} channels, got "
                             f"{f.shape[1]} (shape {tuple(f.shape)})")
        if f.shape[0] != features[0].shape[0]:
            raise ValueError(f"{who}: `features[{i}]` must have the batch size of features[0] "
                             f"({features[0].shape[0]}), got {f.shape[0]}")
    return list(features)


def check_rois(rois: object, who: str, name: str = "rois") -> Tensor:
    """``rois``: a float ``Tensor[R, 5]`` of (batch_index, x1, y1, x2, y2)."""
    return _expect(rois, name, "a float Tensor[R, 5] (batch_index, x1, y1, x2, y2)",
                   lambda t: t.dim() == 2 and t.shape[1] == 5 and t.dtype in _FLOAT_DTYPES, who)


def _expect(t: object, name: str, what: str, ok, who: str = "mask_loss") -> Tensor:
    """``t`` if it is a Tensor with ``ok(t)``, else a ValueError naming ``name``."""
    if not isinstance(t, Tensor) or not ok(t):
        got = (f"{t.dtype} of shape {tuple(t.shape)}" if isinstance(t, Tensor)
               else type(t).__name__)
        raise ValueError(f"{who}: `{name}` must be {what}, got {got}")
    return t


def _check_boxes(boxes: object, who: str, name: str) -> Tensor:
    return _expect(boxes, name, "a Tensor[N, 4] (x1, y1, x2, y2)",
                   lambda t: t.dim() == 2 and t.shape[1] == 4, who)


def boxes_to_rois(boxes: Sequence[Tensor], who: str = "boxes_to_rois") -> Tensor:
    """``list[Tensor[R_i, 4]]`` (one per image) -> ``Tensor[sum R_i, 5]``."""
    if not isinstance(boxes, (list, tuple)) or len(boxes) == 0:
        raise ValueError(f"{who}: `proposals` must be a non-empty list of Tensor[R_i, 4], one "
                         f"per image")
    rows = []
    for i, b in enumerate(boxes):
        b = _check_boxes(b, who, f"proposals[{i}]")
        rows.append(torch.cat([torch.full_like(b[:, :1], i), b], dim=1))
    return torch.cat(rows)


# ---- pooling and heads ----


class FPNRoIAlign(nn.Module):
    """RoIAlign over the FPN in one :func:`segops.multilevel_roi_align` launch.

    Args: ``output_size`` (7 for boxes, 14 for masks); ``channels`` of every level;
    ``flavour`` (its sampling_ratio and aligned); ``scales``, one per level, finest first
    (``1/4 .. 1/32`` for P2..P5); ``mode``: ``"assign"``, each RoI from its LevelMapper level
    (canonical 224 at level 4) -> ``[R, C, s, s]``, or ``"all"`` (PANet) -> ``[L, R, C, s, s]``.

    ``forward(features [L x [N, C, H_l, W_l]], rois [R, 5])`` in the features' dtype.
    """

    def __init__(self, output_size: int, channels: int, flavour: str = "torchvision",
                 scales: Sequence[float] = FPN_SCALES, mode: str = "assign") -> None:
        super().__init__()
        self.output_size = check_int("output_size", output_size, 1, "FPNRoIAlign")
        self.channels = check_int("channels", channels, 1, "FPNRoIAlign")
        self.sampling_ratio, self.aligned = pooling_settings(flavour)
        self.flavour = flavour
        if not isinstance(scales, (list, tuple)) or len(scales) == 0:
            raise ValueError(f"FPNRoIAlign: `scales` must be a non-empty list, got {scales!r}")
        self.scales = [float(s) for s in scales]
        if mode not in ("assign", "all"):
            raise ValueError(f"FPNRoIAlign: `mode` must be 'assign' or 'all', got {mode!r}")
        self.mode = mode

    def forward(self, features: Sequence[Tensor], rois: Tensor) -> Tensor:
        feats = check_features(features, len(self.scales), self.channels, "FPNRoIAlign")
        rois = check_rois(rois, "FPNRoIAlign")
        return segops.multilevel_roi_align(feats, rois, self.output_size, self.scales,
                                           self.sampling_ratio, self.aligned, mode=self.mode)


class BoxPredictor(nn.Module):
    """``x [R, D] -> (class_logits [R, K + 1], box_deltas [R, 4K])``."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class BoxHead(nn.Module):
    """Mask R-CNN's box head: RoIAlign 7x7 -> fc6 -> ReLU -> fc7 -> ReLU -> predictor.

    Args:
        num_classes: ``K`` foreground classes.
        in_channels: FPN channels (256); representation_size: fc width (1024);
        resolution: pooled side (7); flavour, scales: as :class:`FPNRoIAlign`.

    ``forward(features, rois [R, 5]) -> (class_logits [R, K + 1], box_deltas [R, 4K])`` in
    the features' dtype; ``forward_pooled(x [R, C, 7, 7])`` skips the pooling.
    """

    def __init__(self, num_classes: int, in_channels: int = 256, representation_size: int = 1024,
                 resolution: int = 7, flavour: str = "torchvision",
                 scales: Sequence[float] = FPN_SCALES) -> None:
        super().__init__()
        check_int("num_classes", num_classes, 1, "BoxHead")
        check_int("representation_size", representation_size, 1, "BoxHead")
        self.pooler = FPNRoIAlign(resolution, in_channels, flavour, scales)
        self.fc6 = nn.Linear(in_channels * resolution * resolution, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.predictor = BoxPredictor(representation_size, num_classes)

    def forward_pooled(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu(self.fc6(x.flatten(1)))
        return self.predictor(F.relu(self.fc7(x)))

    def forward(self, features: Sequence[Tensor], rois: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward_pooled(self.pooler(features, rois))


class MaskHead(nn.Module):
    """Mask R-CNN's FCN mask head: RoIAlign 14x14 -> ``num_convs`` x (conv3x3 + ReLU) ->
    ConvTranspose 2x2 s2 + ReLU -> conv1x1 ``K``.

    Args:
        num_classes: ``K``; in_channels: FPN channels (256); conv_channels: 256;
        resolution: pooled side (14, logits at twice it); num_convs: 4; flavour, scales: as
        :class:`FPNRoIAlign`.

    ``forward(features, rois [R, 5]) -> logits [R, K, 28, 28]`` in the features' dtype
    (class ``k`` is channel ``k - 1``); ``forward_pooled(x [R, C, 14, 14])``.
    """

    def __init__(self, num_classes: int, in_channels: int = 256, conv_channels: int = 256,
                 resolution: int = 14, num_convs: int = 4, flavour: str = "torchvision",
                 scales: Sequence[float] = FPN_SCALES) -> None:
        super().__init__()
        check_int("num_classes", num_classes, 1, "MaskHead")
        check_int("conv_channels", conv_channels, 1, "MaskHead")
        check_int("num_convs", num_convs, 1, "MaskHead")
        self.pooler = FPNRoIAlign(resolution, in_channels, flavour, scales)
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels if i == 0 else conv_channels, conv_channels, 3, padding=1)
            for i in range(num_convs))
        self.deconv = nn.ConvTranspose2d(conv_channels, conv_channels, 2, stride=2)
        self.predictor = nn.Conv2d(conv_channels, num_classes, 1)
        for layer in [*self.convs, self.deconv]:
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward_pooled(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.predictor(F.relu(self.deconv(x)))

    def forward(self, features: Sequence[Tensor], rois: Tensor) -> Tensor:
        return self.forward_pooled(self.pooler(features, rois))


# ---- boxes, matching, losses, targets ----


class BoxCoder:
    """torchvision's ``BoxCoder`` / detectron2's ``Box2BoxTransform``: deltas
    ``(wx (cx' - cx) / w, wy (cy' - cy) / h, ww log(w' / w), wh log(h' / h))``, weights
    ``(10, 10, 5, 5)``, decoded ``dw, dh`` clamped at ``log(1000 / 16)``. Computed in the
    inputs' dtype promoted to at least float32."""

    def __init__(self, weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
                 clip: float = math.log(1000.0 / 16)) -> None:
        self.weights = tuple(float(w) for w in weights)
        self.clip = float(clip)

    @staticmethod
    def _centres(b: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
        return b[..., 0] + 0.5 * w, b[..., 1] + 0.5 * h, w, h

    def encode(self, gt: Tensor, proposals: Tensor) -> Tensor:
        """``gt [R, 4]``, ``proposals [R, 4]`` -> regression targets ``[R, 4]``."""
        dt = torch.promote_types(torch.promote_types(gt.dtype, proposals.dtype), torch.float32)
        gx, gy, gw, gh = self._centres(gt.to(dt))
        px, py, pw, ph = self._centres(proposals.to(dt))
        wx, wy, ww, wh = self.weights
        return torch.stack([wx * (gx - px) / pw, wy * (gy - py) / ph,
                            ww * torch.log(gw / pw), wh * torch.log(gh / ph)], dim=-1)

    def decode(self, deltas: Tensor, proposals: Tensor) -> Tensor:
        """``deltas [R, 4K]``, ``proposals [R, 4]`` -> boxes ``[R, K, 4]``."""
        dt = torch.promote_types(torch.promote_types(deltas.dtype, proposals.dtype),
                                 torch.float32)
        d = deltas.to(dt).reshape(deltas.shape[0], -1, 4)
        px, py, pw, ph = (t[:, None] for t in self._centres(proposals.to(dt)))
        wx, wy, ww, wh = self.weights
        cx = d[..., 0] / wx * pw + px
        cy = d[..., 1] / wy * ph + py
        w = torch.exp((d[..., 2] / ww).clamp(max=self.clip)) * pw
        h = torch.exp((d[..., 3] / wh).clamp(max=self.clip)) * ph
        return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU ``[A, B]`` of ``(x1, y1, x2, y2)`` boxes, no +1 convention (0 for empty unions)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), 0)


def clip_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clamp x to ``[0, W]`` and y to ``[0, H]`` (``boxes [..., 4]``)."""
    h, w = image_size
    x = boxes[..., 0::2].clamp(0, w)
    y = boxes[..., 1::2].clamp(0, h)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def match_proposals(proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
                    iou_threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """Each proposal takes the label of its best-overlapping GT box if that IoU is
    ``>= iou_threshold``, else background 0 (both references' RoI-head matcher).

    Returns ``labels [R]`` int64 (0 or a GT label in 1..K) and ``matched_idxs [R]`` int64
    (the best GT's index; 0 where there is no GT)."""
    r = proposals.shape[0]
    if gt_boxes.shape[0] == 0:
        zeros = torch.zeros(r, dtype=torch.int64, device=proposals.device)
        return zeros, zeros.clone()
    iou, matched = box_iou(proposals.float(), gt_boxes.float()).max(dim=1)
    labels = torch.where(iou >= iou_threshold, gt_labels.long()[matched], 0)
    return labels, matched


def fast_rcnn_loss(class_logits: Tensor, box_regression: Tensor, labels: Tensor,
                   regression_targets: Tensor, beta: float = 1 / 9) -> tuple[Tensor, Tensor]:
    """``(cross_entropy(class_logits, labels), smooth_l1(beta, sum over positives) / R)``;
    ``box_regression [R, 4K]`` is read at the GT class's 4 columns. ``beta = 0`` is L1."""
    loss_cls = F.cross_entropy(class_logits, labels)
    pos = torch.nonzero(labels > 0).squeeze(1)
    picked = box_regression.reshape(box_regression.shape[0], -1, 4)[pos, labels[pos] - 1]
    loss_box = F.smooth_l1_loss(picked, regression_targets[pos].to(picked.dtype), beta=beta,
                                reduction="sum") / max(labels.numel(), 1)
    return loss_cls, loss_box


def mask_targets(gt_masks: Tensor, boxes: Tensor, matched_idxs: Tensor, resolution: int = 28,
                 flavour: str = "torchvision") -> Tensor:
    """GT masks RoIAligned into each (positive) box of one image.

    Args:
        gt_masks: ``[G, H, W]`` (bool or float) in image pixels.
        boxes: ``[P, 4]`` float boxes; matched_idxs: ``[P]`` int, the GT of each box.
        resolution: ``M`` (28).
        flavour: ``"torchvision"``: ``roi_align(gt[:, None], rois, M, 1.0)`` with
            roi_align's defaults (adaptive sampling, not aligned), soft targets in [0, 1];
            ``"detectron2"``: ``roi_align(..., M, 1.0, 0, aligned=True) >= 0.5``, 0/1.

    Returns ``[P, M, M]`` in boxes' dtype.
    """
    pooling_settings(flavour)
    boxes = _check_boxes(boxes, "mask_targets", "boxes")
    _expect(gt_masks, "gt_masks", "[G, H, W]", lambda t: t.dim() == 3, "mask_targets")
    _expect(matched_idxs, "matched_idxs", f"[P] with P = {boxes.shape[0]}",
            lambda t: t.shape == boxes.shape[:1], "mask_targets")
    rois = torch.cat([matched_idxs[:, None].to(boxes), boxes], dim=1)
    masks = gt_masks[:, None].to(boxes)
    if flavour == "torchvision":
        return segops.roi_align(masks, rois, resolution, 1.0)[:, 0]
    out = segops.roi_align(masks, rois, resolution, 1.0, sampling_ratio=0, aligned=True)
    return (out[:, 0] >= 0.5).to(boxes.dtype)


def mask_loss(mask_logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """Per-pixel sigmoid BCE on the GT class channel of the positive RoIs, averaged.

    Args:
        mask_logits: ``[P, K, M, M]``; labels: ``[P]`` int in ``1..K`` (channel
            ``label - 1``); targets: ``[P, M, M]`` in [0, 1].

    Returns a scalar in mask_logits' dtype; ``mask_logits.sum() * 0`` (so backward works)
    when ``P == 0``.
    """
    _expect(mask_logits, "mask_logits", "[P, K, M, M]", lambda t: t.dim() == 4)
    p, k, mh, mw = mask_logits.shape
    _expect(labels, "labels", f"an int Tensor[{p}]",
            lambda t: t.shape == (p,) and not t.is_floating_point())
    _expect(targets, "targets", f"[{p}, {mh}, {mw}]", lambda t: t.shape == (p, mh, mw))
    if p == 0:
        return mask_logits.sum() * 0
    if bool((labels < 1).any() | (labels > k).any()):
        raise ValueError(f"mask_loss: `labels` must lie in [1, {k}] (positive RoIs), got "
                         f"{labels.tolist()}")
    picked = mask_logits[torch.arange(p, device=labels.device), labels.long() - 1]
    return F.binary_cross_entropy_with_logits(picked, targets.to(picked.dtype))


def postprocess_detections(class_logits: Tensor, box_regression: Tensor,
                           proposals: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]],
                           box_coder: BoxCoder | None = None, score_threshold: float = 0.05,
                           nms_threshold: float = 0.5, detections_per_image: int = 100,
                           flavour: str = "torchvision") -> list[dict[str, Tensor]]:
    """Per image: decode (class-specific), clip, softmax scores without background, keep
    ``score > score_threshold`` (strict), drop degenerate boxes (torchvision: a side
    ``< 1e-2`` after clipping; detectron2: proposals with a non-finite box or score),
    :func:`segops.batched_nms` per class, keep the first ``detections_per_image``.

    Args:
        class_logits: ``[R, K + 1]``; box_regression: ``[R, 4K]``; proposals: one
            ``[R_i, 4]`` per image (``sum R_i = R``); image_sizes: one ``(H, W)`` per image.

    Returns one dict per image: ``boxes [D, 4]``, ``scores [D]`` (decreasing), ``labels [D]``
    int64 in ``1..K``.
    """
    pooling_settings(flavour)
    coder = box_coder or BoxCoder()
    boxes_all = coder.decode(box_regression, torch.cat(list(proposals)))
    scores_all = F.softmax(class_logits, dim=-1)
    out = []
    for boxes, scores, size in zip(boxes_all.split([len(p) for p in proposals]),
                                   scores_all.split([len(p) for p in proposals]), image_sizes):
        finite = torch.isfinite(boxes).flatten(1).all(1) & torch.isfinite(scores).all(1)
        boxes, scores = clip_boxes(boxes, size), scores[:, 1:]
        labels = torch.arange(1, scores.shape[1] + 1, device=boxes.device).expand_as(scores)
        keep = scores > score_threshold  # [R, K]: flattened proposal-major, class-minor
        if flavour == "torchvision":
            keep &= ((boxes[..., 2:] - boxes[..., :2]) >= 1e-2).all(-1)
        else:
            keep &= finite[:, None]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        kept = segops.batched_nms(boxes, scores, labels, nms_threshold)[:detections_per_image]
        out.append({"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]})
    return out


# ---- the heads together ----


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
