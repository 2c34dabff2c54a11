"""Mask R-CNN's argument checks, FPN pooling and box / mask heads: part of
:mod:`segops.models.mask_rcnn`, which re-exports everything here (see its docstring for the
two flavours and the label convention). The checks are shared with ``models/panet.py``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import segops

__all__ = [
    "FLAVOURS", "FPN_SCALES", "pooling_settings", "check_int", "check_features", "check_rois",
    "boxes_to_rois", "FPNRoIAlign", "BoxPredictor", "BoxHead", "MaskHead",
]

FPN_SCALES: tuple[float, ...] = (1 / 4, 1 / 8, 1 / 16, 1 / 32)  # P2..P5
# (sampling_ratio, aligned) of the feature pooling
FLAVOURS: dict[str, tuple[int, bool]] = {"torchvision": (2, False), "detectron2": (0, True)}
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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
