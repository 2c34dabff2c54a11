"""YOLACT's released configurations (dbolya/yolact ``data/config.py``) and checkpoint key
clean-up (``Yolact.load_weights``).

Only what the model, :class:`~segops.models.yolact.Detect` and
:class:`~segops.models.yolact.YolactLoss` read is kept. The values, as the release defines
them (``coco_base_config`` overridden by ``yolact_base_config`` and its derivatives):

============================  ===================  ===================  ===================
field                         yolact_base          yolact_resnet50      yolact_im700
============================  ===================  ===================  ===================
backbone                      ResNet-101           ResNet-50            ResNet-101
max_size                      550                  550                  700
anchor scales (px), P3..P7    24 48 96 192 384     24 48 96 192 384     30 61 122 244 488
masks_to_train                100                  100                  300
============================  ===================  ===================  ===================

shared: aspect ratios (1, 1/2, 2) with square anchors; FPN 256 channels, P6/P7 by stride-2
convs; 32 prototypes; positive/negative IoU 0.5/0.4, crowd IoU 0.7; OHEM 3:1; loss weights
box 1.5, class 1, mask 6.125, semantic segmentation 1; Detect: conf 0.05, NMS IoU 0.5,
top-k 200, 100 detections. ``yolact_im700``'s scales are the release's
``int(s / 550 * 700)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from .yolact_backbone import RESNET50_LAYERS, RESNET101_LAYERS

__all__ = ["YolactConfig", "CONFIGS", "clean_state_dict"]


@dataclass(frozen=True)
class YolactConfig:
    """Architecture, post-processing and loss settings of a YOLACT configuration.

    Architecture:
        backbone_layers: Bottleneck blocks per ResNet stage
            (:class:`~segops.models.yolact_backbone.YolactResNet`), or ``None`` for the small
            random-init BasicBlock ResNet (fast tests; not a released configuration).
        max_size: the (square) input size the anchor scales refer to (``cfg.max_size``).
        scales: anchor side in pixels at ``max_size``, one per level P3..P7.
        aspect_ratios: per-location anchor aspect ratios (``pred_aspect_ratios``).
        fpn_channels: FPN width (``cfg.fpn.num_features``).
        proto_channels, head_channels: protonet and ``extra_head_net`` widths (256 in the
            release; ``None``: ``fpn_channels``).
        num_prototypes: k (``mask_dim``).
        semantic_segmentation: build ``semantic_seg_conv`` (``use_semantic_segmentation_loss``).

    Detect (``nms_conf_thresh``, ``nms_thresh``, ``nms_top_k``, ``max_num_detections``):
        conf_thresh, nms_thresh, top_k, max_num_detections.

    Loss (``MultiBoxLoss``): pos_threshold, neg_threshold (``positive_iou_threshold``,
        ``negative_iou_threshold``), crowd_iou_threshold, negpos_ratio (``ohem_negpos_ratio``),
        bbox_alpha, conf_alpha, mask_alpha, semantic_alpha
        (``semantic_segmentation_alpha``), masks_to_train.
    """

    name: str = "custom"
    backbone_layers: tuple[int, ...] | None = RESNET101_LAYERS
    max_size: int = 550
    scales: tuple[float, ...] = (24, 48, 96, 192, 384)
    aspect_ratios: tuple[float, ...] = (1.0, 0.5, 2.0)
    fpn_channels: int = 256
    proto_channels: int | None = None
    head_channels: int | None = None
    num_prototypes: int = 32
    semantic_segmentation: bool = True
    conf_thresh: float = 0.05
    nms_thresh: float = 0.5
    top_k: int = 200
    max_num_detections: int = 100
    pos_threshold: float = 0.5
    neg_threshold: float = 0.4
    crowd_iou_threshold: float = 0.7
    negpos_ratio: int = 3
    bbox_alpha: float = 1.5
    conf_alpha: float = 1.0
    mask_alpha: float = 6.125
    semantic_alpha: float = 1.0
    masks_to_train: int = 100

    @property
    def num_downsample(self) -> int:
        """FPN levels above P5 (``cfg.fpn.num_downsample``): 2 for P6, P7."""
        return len(self.scales) - 3

    def replace(self, **changes) -> YolactConfig:
        """A copy with ``changes`` applied (unknown names raise ``TypeError``)."""
        return dataclasses.replace(self, **changes)


_BASE = YolactConfig(name="yolact_base")

CONFIGS: dict[str, YolactConfig] = {
    "yolact_base": _BASE,
    "yolact_resnet50": _BASE.replace(name="yolact_resnet50", backbone_layers=RESNET50_LAYERS),
    "yolact_im700": _BASE.replace(
        name="yolact_im700", max_size=700, masks_to_train=300,
        scales=tuple(int(s / _BASE.max_size * 700) for s in _BASE.scales)),
}


def clean_state_dict(state_dict: Mapping[str, Tensor],
                     num_downsample: int = 2) -> dict[str, Tensor]:
    """The key clean-up of the release's ``Yolact.load_weights``.

    Drops ``backbone.layer*`` keys that are not ``backbone.layers.*`` (pre-release naming)
    and ``fpn.downsample_layers.<i>.*`` with ``i >= num_downsample`` (v1.0 weights). Other
    keys are kept unchanged, so :meth:`~torch.nn.Module.load_state_dict` with
    ``strict=True`` still reports anything else that does not match.
    """
    out = {}
    for key, value in state_dict.items():
        if key.startswith("backbone.layer") and not key.startswith("backbone.layers"):
            continue
        if key.startswith("fpn.downsample_layers.") and int(key.split(".")[2]) >= num_downsample:
            continue
        out[key] = value
    return out
