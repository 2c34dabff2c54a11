"""YOLACT (Bolya et al., ICCV 2019), a thin definition on segops' ops (docs/models.md).

Everything here is ordinary PyTorch except the two steps segops accelerates:

* ``Detect`` runs YOLACT's Fast NMS with :func:`segops.fast_nms` and assembles the kept
  detections' masks at image size with the fused :func:`segops.assemble_masks`
  (``image_size=(H, W)``: crop, bilinear upsample, ``> 0.5`` in one op);
* :class:`YolactMaskLoss` is YOLACT's ``lincomb_mask_loss`` on the differentiable
  ``assemble_masks`` (``image_size=None``).

The architecture follows ``yolact_base_config`` of dbolya/yolact:

* backbone C3, C4, C5 (strides 8, 16, 32) -- pluggable; the default is a small random-init
  BasicBlock ResNet (the original uses an ImageNet ResNet-101);
* FPN P3-P5 (1x1 laterals, bilinear top-down, 3x3 prediction convs + ReLU), P6 and P7 by
  stride-2 3x3 convs on P5 then P6 without ReLU (``use_conv_downsample``,
  ``num_downsample=2``, ``relu_downsample_layers=False``);
* protonet on P3: 3 x (conv3x3 + ReLU), bilinear x2 upsample + ReLU, conv3x3 + ReLU,
  conv1x1 to k=32 prototypes, ReLU; output ``[B, H/4, W/4, k]`` (138x138x32 at 550x550);
* one prediction head shared by every level: conv3x3 + ReLU ("extra_head_net"), then
  3x3 convs for boxes (4), class confidences (``num_classes + 1``, background at 0) and
  mask coefficients (k, through tanh), 3 anchors per location;
* anchors as YOLACT's ``make_priors`` with ``use_pixel_scales=True``, ``preapply_sqrt=False``
  and ``use_square_anchors=True``: scales 24, 48, 96, 192, 384 px for P3..P7, aspect ratios
  1, 1/2, 2 -- and, through the square-anchor "bug" YOLACT keeps for compatibility,
  every anchor is a square of side ``scale * sqrt(ar) / max_size`` (relative), so the
  aspect ratios only change the anchor's size. 19248 anchors at 550x550.

Not included: the semantic-segmentation auxiliary head, the box/class (OHEM) losses and
YOLACT's data pipeline. :func:`match` (YOLACT's prior matching) is provided so that the
mask loss can be fed positives exactly as YOLACT chooses them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import segops

from .backbones import BasicBlock, ResNetBackbone
from .yolact_boxes import box_iou, decode, encode, make_priors, match, point_form

__all__ = [
    "BasicBlock",
    "ResNetBackbone",
    "FPN",
    "ProtoNet",
    "PredictionHead",
    "Yolact",
    "Detect",
    "YolactMaskLoss",
    "make_priors",
    "decode",
    "encode",
    "point_form",
    "box_iou",
    "match",
]

# The backbone lives in backbones.py, the anchors and box coding in yolact_boxes.py; both
# are re-exported here (``segops.models.yolact`` is the model's one import).


# ======================================================================================
# FPN, protonet, prediction head
# ======================================================================================


class FPN(nn.Module):
    """YOLACT's FPN: P3-P5 from C3-C5, then P6, P7 by stride-2 3x3 convs.

    ``x = lat5(C5)``; going down, ``x = interpolate(x, size of C_i, bilinear,
    align_corners=False) + lat_i(C_i)``; ``P_i = ReLU(conv3x3(x))``.
    ``P6 = conv3x3/2(P5)``, ``P7 = conv3x3/2(P6)`` (no ReLU).

    Args:
        in_channels: channels of C3, C4, C5.
        channels: FPN width (256 in YOLACT).
        num_downsample: extra levels above P5 (2: P6 and P7).
    """

    def __init__(self, in_channels: Sequence[int], channels: int = 256,
                 num_downsample: int = 2) -> None:
        super().__init__()
        self.lat_layers = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.pred_layers = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels
        )
        self.downsample_layers = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1, stride=2) for _ in range(num_downsample)
        )

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """``[C3, C4, C5] -> [P3, P4, P5, P6, P7]``, each ``[B, channels, h_i, w_i]``."""
        n = len(feats)
        sums: list[Tensor] = [feats[0]] * n
        x: Tensor | None = None
        for j in range(n - 1, -1, -1):
            lat = self.lat_layers[j](feats[j])
            if x is None:
                x = lat
            else:
                x = F.interpolate(x, size=lat.shape[-2:], mode="bilinear",
                                  align_corners=False) + lat
            sums[j] = x
        outs = [F.relu(self.pred_layers[j](sums[j])) for j in range(n)]
        for layer in self.downsample_layers:
            outs.append(layer(outs[-1]))
        return outs


class ProtoNet(nn.Module):
    """YOLACT's protonet on P3: ``[B, C, h, w] -> [B, 2h, 2w, k]`` (ReLU'd prototypes).

    3 x (conv3x3 + ReLU), bilinear x2 (``align_corners=False``) + ReLU, conv3x3 + ReLU,
    conv1x1 to ``num_prototypes``, ReLU; permuted to YOLACT's ``[B, H, W, k]`` layout.
    """

    def __init__(self, in_channels: int, channels: int = 256, num_prototypes: int = 32) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.up_conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.out_conv = nn.Conv2d(channels, num_prototypes, 1)

    def forward(self, p3: Tensor) -> Tensor:
        x = self.convs(p3)
        # YOLACT's make_net appends a ReLU after its interpolate layer too (a no-op on the
        # non-negative upsampled ReLU output, kept for fidelity to the layer list).
        x = F.relu(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        x = F.relu(self.up_conv(x))
        x = F.relu(self.out_conv(x))
        return x.permute(0, 2, 3, 1).contiguous()


class PredictionHead(nn.Module):
    """The prediction module shared by every FPN level.

    ``[B, C, h, w] -> (loc [B, h*w*A, 4], conf [B, h*w*A, num_classes + 1] logits,
    coeffs [B, h*w*A, k] in (-1, 1))`` with ``A`` anchors per location, ordered
    (row, column, anchor) like the priors.
    """

    def __init__(self, in_channels: int, num_classes: int, num_anchors: int = 3,
                 num_prototypes: int = 32, channels: int | None = None) -> None:
        super().__init__()
        channels = in_channels if channels is None else channels
        self.num_conf = num_classes + 1
        self.num_prototypes = num_prototypes
        self.upfeature = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.bbox_layer = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        self.conf_layer = nn.Conv2d(channels, num_anchors * self.num_conf, 3, padding=1)
        self.mask_layer = nn.Conv2d(channels, num_anchors * num_prototypes, 3, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b = x.shape[0]
        x = F.relu(self.upfeature(x))

        def flat(t: Tensor, k: int) -> Tensor:
            return t.permute(0, 2, 3, 1).reshape(b, -1, k)

        loc = flat(self.bbox_layer(x), 4)
        conf = flat(self.conf_layer(x), self.num_conf)
        coeffs = torch.tanh(flat(self.mask_layer(x), self.num_prototypes))
        return loc, conf, coeffs


# ======================================================================================
# The network
# ======================================================================================


class Yolact(nn.Module):
    """YOLACT with a pluggable backbone.

    Args:
        num_classes: foreground classes (the conf head predicts ``num_classes + 1``, 0 is
            background).
        backbone: any module mapping ``[B, 3, H, W]`` to ``[C3, C4, C5]`` (strides 8, 16,
            32) with a ``channels`` attribute (3 ints). Default: :class:`ResNetBackbone`.
        fpn_channels: FPN width (256 in YOLACT).
        proto_channels: protonet hidden width (default: ``fpn_channels``).
        head_channels: prediction head hidden width (default: ``fpn_channels``).
        num_prototypes: k (32).
        scales: anchor scale in pixels per level P3..P7 (at ``max_size``).
        aspect_ratios: per-location anchor aspect ratios.
        max_size: the image size the pixel scales refer to (YOLACT's ``cfg.max_size``);
            anchor sizes are ``scale / max_size`` of the image whatever the input size.
        detect: the post-processing :meth:`predict` uses (default: :class:`Detect` with
            YOLACT's thresholds).

    ``forward(images)`` returns the raw predictions (a dict, see :meth:`forward`);
    :meth:`predict` runs :class:`Detect` on them.
    """

    def __init__(
        self,
        num_classes: int = 80,
        backbone: nn.Module | None = None,
        fpn_channels: int = 256,
        proto_channels: int | None = None,
        head_channels: int | None = None,
        num_prototypes: int = 32,
        scales: Sequence[float] = (24, 48, 96, 192, 384),
        aspect_ratios: Sequence[float] = (1.0, 0.5, 2.0),
        max_size: int = 550,
        detect: Detect | None = None,
    ) -> None:
        super().__init__()
        if len(scales) < 3:
            raise ValueError(f"Yolact: `scales` needs one entry per level P3..P7, got {scales}")
        self.num_classes = num_classes
        self.backbone = ResNetBackbone() if backbone is None else backbone
        in_channels = list(getattr(self.backbone, "channels", []))
        if len(in_channels) != 3:
            raise ValueError("Yolact: the backbone needs a `channels` attribute of 3 ints "
                             f"(C3, C4, C5), got {in_channels!r}")
        self.fpn = FPN(in_channels, fpn_channels, num_downsample=len(scales) - 3)
        self.proto_net = ProtoNet(fpn_channels, proto_channels or fpn_channels, num_prototypes)
        self.head = PredictionHead(fpn_channels, num_classes, len(aspect_ratios),
                                   num_prototypes, head_channels or fpn_channels)
        self.scales = tuple(float(s) for s in scales)
        self.aspect_ratios = tuple(float(a) for a in aspect_ratios)
        self.max_size = max_size
        self.detect = Detect() if detect is None else detect
        self._prior_cache: dict[tuple, Tensor] = {}
        # YOLACT's init_weights: xavier-uniform convs outside the backbone, zero biases.
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d) and not name.startswith("backbone."):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def priors(self, feature_sizes: Sequence[tuple[int, int]],
               device: torch.device) -> Tensor:
        """Cached :func:`make_priors` for these level sizes: ``Tensor[N, 4]`` float32."""
        key = (tuple(feature_sizes), str(device))
        if key not in self._prior_cache:
            self._prior_cache[key] = make_priors(
                feature_sizes, self.scales, self.aspect_ratios, self.max_size, device)
        return self._prior_cache[key]

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Raw predictions for ``images [B, 3, H, W]``.

        Returns a dict with ``N`` anchors over all levels (19248 at 550x550):
            loc: ``[B, N, 4]`` box regressions (see :func:`decode`);
            conf: ``[B, N, num_classes + 1]`` class logits, background at 0;
            coeffs: ``[B, N, k]`` mask coefficients in (-1, 1);
            priors: ``[N, 4]`` anchors (cx, cy, w, h) relative;
            protos: ``[B, H/4, W/4, k]`` prototypes (138x138x32 at 550x550, ReLU'd).
        """
        feats = self.backbone(images)
        pyramid = self.fpn(list(feats))
        protos = self.proto_net(pyramid[0])
        locs, confs, coeffs = [], [], []
        for p in pyramid:
            loc, conf, coef = self.head(p)
            locs.append(loc)
            confs.append(conf)
            coeffs.append(coef)
        sizes = [tuple(int(s) for s in p.shape[-2:]) for p in pyramid]
        return {
            "loc": torch.cat(locs, 1),
            "conf": torch.cat(confs, 1),
            "coeffs": torch.cat(coeffs, 1),
            "priors": self.priors(sizes, images.device),
            "protos": protos,
        }

    @torch.no_grad()
    def predict(self, images: Tensor, **detect_kwargs) -> list[dict[str, Tensor]]:
        """Inference: :meth:`forward` then :class:`Detect` at the images' size."""
        preds = self(images)
        return self.detect(preds, tuple(images.shape[-2:]), **detect_kwargs)


# ======================================================================================
# Post-processing
# ======================================================================================


class Detect:
    """YOLACT's ``Detect`` + ``postprocess``: decoded boxes, Fast NMS, image-size masks.

    Per image: ``softmax`` over the class logits, background dropped, boxes decoded
    (:func:`decode`), then ``segops.fast_nms(boxes, scores[C, N], iou_threshold, top_k,
    score_threshold, max_detections)`` (YOLACT: 0.5, 200, 0.05, 100), then the kept
    detections' masks with ``segops.assemble_masks(protos, coeffs, boxes,
    image_size=(H, W))`` -- crop by the (unclipped) predicted box with 1 proto-pixel
    padding, bilinear upsample, ``> 0.5``. Boxes are returned in pixels as YOLACT's
    ``sanitize_coordinates`` (``cast=False``): ``x1 = max(min(x1, x2) * W, 0)``,
    ``x2 = min(max(x1, x2) * W, W)``, likewise for y.

    As in YOLACT, a detection is kept for every class in which its anchor survives Fast
    NMS, even when that class's score is below ``score_threshold`` (the prefilter looks at
    the anchor's best class only); ``second_threshold=True`` drops those, and
    ``cross_class=True`` is YOLACT's ``cc_fast_nms``.
    """

    def __init__(
        self,
        iou_threshold: float = 0.5,
        top_k: int = 200,
        score_threshold: float = 0.05,
        max_detections: int = 100,
        cross_class: bool = False,
        second_threshold: bool = False,
        mask_threshold: float = 0.5,
    ) -> None:
        self.iou_threshold = iou_threshold
        self.top_k = top_k
        self.score_threshold = score_threshold
        self.max_detections = max_detections
        self.cross_class = cross_class
        self.second_threshold = second_threshold
        self.mask_threshold = mask_threshold

    @torch.no_grad()
    def __call__(
        self,
        preds: dict[str, Tensor],
        image_size: tuple[int, int],
        return_proto_masks: bool = False,
    ) -> list[dict[str, Tensor]]:
        """Detections for each image of a batch.

        Args:
            preds: :meth:`Yolact.forward`'s output.
            image_size: ``(H, W)`` of the output masks and pixel boxes.
            return_proto_masks: also return the cropped float masks at proto resolution.

        Returns:
            One dict per image, ``D <= max_detections`` detections by decreasing score:
            boxes ``[D, 4]`` pixels (x1, y1, x2, y2); classes ``int64[D]`` 0-based
            (background excluded); scores ``[D]``; masks ``bool[D, H, W]``;
            indices ``int64[D]`` the anchors kept; and, if asked, proto_masks
            ``[D, Hp, Wp]``.
        """
        h, w = int(image_size[0]), int(image_size[1])
        boxes_all = decode(preds["loc"], preds["priors"])  # [B, N, 4]
        scores_all = F.softmax(preds["conf"], dim=-1)[..., 1:]  # [B, N, C]
        results = []
        for b in range(boxes_all.shape[0]):
            boxes = boxes_all[b]
            scores = scores_all[b].t().contiguous()  # [C, N]
            idx, classes, sc = segops.fast_nms(
                boxes, scores, self.iou_threshold, self.top_k, self.score_threshold,
                self.max_detections, cross_class=self.cross_class,
                second_threshold=self.second_threshold)
            kept = boxes[idx]
            coeffs = preds["coeffs"][b, idx]
            protos = preds["protos"][b]
            masks = segops.assemble_masks(protos, coeffs, kept, image_size=(h, w),
                                          threshold=self.mask_threshold)
            out = {
                "boxes": _to_pixels(kept, h, w),
                "classes": classes,
                "scores": sc,
                "masks": masks,
                "indices": idx,
            }
            if return_proto_masks:
                out["proto_masks"] = segops.assemble_masks(protos, coeffs, kept)
            results.append(out)
        return results


def _to_pixels(boxes: Tensor, h: int, w: int) -> Tensor:
    """YOLACT's ``sanitize_coordinates(cast=False, padding=0)`` on both axes."""
    x1, x2 = boxes[:, 0] * w, boxes[:, 2] * w
    y1, y2 = boxes[:, 1] * h, boxes[:, 3] * h
    return torch.stack([
        torch.minimum(x1, x2).clamp(min=0), torch.minimum(y1, y2).clamp(min=0),
        torch.maximum(x1, x2).clamp(max=w), torch.maximum(y1, y2).clamp(max=h),
    ], dim=1)


# ======================================================================================
# Mask loss
# ======================================================================================


class YolactMaskLoss(nn.Module):
    """YOLACT's ``lincomb_mask_loss`` (``yolact_base_config``) on ``segops.assemble_masks``.

    For each image and each positive anchor ``p`` matched to GT ``g``:
    ``pred_p = assemble_masks(protos, coeffs_p, box_g)`` (sigmoid of the linear combination,
    cropped by the *GT* box with 1 proto-pixel padding, YOLACT's ``mask_proto_crop``);
    ``target_p = interpolate(mask_g, (Hp, Wp), bilinear, align_corners=False) > 0.5``;
    ``l_p = sum_pixels BCE(clamp(pred_p, 0, 1), target_p) / (w_g * Wp) / (h_g * Hp)
    * (Hp * Wp)``: the summed BCE divided by the GT box's area in proto pixels (``w_g``,
    ``h_g`` its relative width and height; ``mask_proto_normalize_emulate_roi_pooling``,
    whose ``Hp * Wp`` weight the final division cancels). When an image has more than
    ``masks_to_train`` positives, a random subset is used and its sum scaled by
    ``num_pos / masks_to_train``. The loss is
    ``mask_alpha * sum_p l_p / Hp / Wp / total_positives`` (YOLACT divides every loss but
    the semantic one by the batch's number of positives).

    GT boxes must have positive width and height (YOLACT's data pipeline discards smaller
    ones; a degenerate box divides by zero).
    """

    def __init__(self, mask_alpha: float = 6.125, masks_to_train: int = 100) -> None:
        super().__init__()
        self.mask_alpha = mask_alpha
        self.masks_to_train = masks_to_train

    def image_loss(
        self,
        protos: Tensor,
        coeffs: Tensor,
        gt_boxes: Tensor,
        gt_masks: Tensor,
        gt_index: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Un-normalised loss of one image: ``sum_p l_p`` (with the subsample scaling).

        Args:
            protos: ``[Hp, Wp, k]``.
            coeffs: ``[P, k]`` coefficients of the positive anchors.
            gt_boxes: ``[P, 4]`` relative point-form GT box of each positive.
            gt_masks: ``[P, H, W]`` GT mask of each positive (any real dtype, 0/1), or the
                image's ``[G, H, W]`` GT masks when ``gt_index`` is given.
            gt_index: optional ``int64[P]``, the GT each positive is matched to; lets the
                masks be downsampled once per GT as YOLACT does.
            generator: RNG for the ``masks_to_train`` subsample.
        """
        hp, wp = protos.shape[0], protos.shape[1]
        num_pos = coeffs.shape[0]
        if num_pos == 0:
            return protos.sum() * 0.0 + coeffs.sum() * 0.0
        with torch.no_grad():
            down = F.interpolate(gt_masks[None].to(protos.dtype), (hp, wp), mode="bilinear",
                                 align_corners=False)[0]
            down = (down > 0.5).to(protos.dtype)
            if gt_index is not None:
                down = down[gt_index]
        scale = 1.0
        if num_pos > self.masks_to_train:
            select = torch.randperm(num_pos, generator=generator,
                                    device="cpu")[: self.masks_to_train].to(coeffs.device)
            coeffs, gt_boxes, down = coeffs[select], gt_boxes[select], down[select]
            scale = num_pos / self.masks_to_train
        pred = segops.assemble_masks(protos, coeffs, gt_boxes)  # [P, Hp, Wp]
        bce = F.binary_cross_entropy(pred.clamp(0, 1), down, reduction="none")
        gt_w = (gt_boxes[:, 2] - gt_boxes[:, 0]).to(bce.dtype) * wp
        gt_h = (gt_boxes[:, 3] - gt_boxes[:, 1]).to(bce.dtype) * hp
        per_mask = bce.sum(dim=(1, 2)) / gt_w / gt_h * (hp * wp)
        if scale != 1.0:
            per_mask = per_mask * scale
        return per_mask.sum()

    def forward(
        self,
        protos: Tensor,
        coeffs: Sequence[Tensor],
        gt_boxes: Sequence[Tensor],
        gt_masks: Sequence[Tensor],
        gt_index: Sequence[Tensor] | None = None,
        num_pos: int | Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The batch's mask loss (a scalar).

        Args:
            protos: ``[B, Hp, Wp, k]`` (or ``[Hp, Wp, k]`` for one image).
            coeffs, gt_boxes, gt_masks, gt_index: per image, as :meth:`image_loss`
                (a single Tensor is taken as one image).
            num_pos: the batch's positive count the loss is divided by (YOLACT counts all
                positives, before the ``masks_to_train`` subsample); default: the sum of
                ``coeffs[i].shape[0]``.
        """
        if protos.dim() == 3:
            protos = protos[None]
        if isinstance(coeffs, Tensor):
            coeffs, gt_boxes, gt_masks = [coeffs], [gt_boxes], [gt_masks]
            gt_index = None if gt_index is None else [gt_index]
        if not (len(coeffs) == len(gt_boxes) == len(gt_masks) == protos.shape[0]):
            raise ValueError("YolactMaskLoss: one entry of coeffs/gt_boxes/gt_masks per image")
        hp, wp = protos.shape[1], protos.shape[2]
        total = protos.new_zeros(())
        for i in range(protos.shape[0]):
            idx = None if gt_index is None else gt_index[i]
            total = total + self.image_loss(protos[i], coeffs[i], gt_boxes[i], gt_masks[i],
                                            idx, generator)
        if num_pos is None:
            num_pos = sum(int(c.shape[0]) for c in coeffs)
        if isinstance(num_pos, Tensor):
            num_pos = num_pos.clamp(min=1)
        else:
            num_pos = max(int(num_pos), 1)
        return total * self.mask_alpha / hp / wp / num_pos
