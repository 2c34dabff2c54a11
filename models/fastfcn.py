"""FastFCN's Joint Pyramid Upsampling (Wu et al., 2019), a thin definition (docs/models.md).

FastFCN replaces the dilated convolutions of the backbone's last two stages by an ordinary
(strided) backbone plus :class:`JPU`, which turns the stride-8, -16 and -32 features into
one stride-8 feature, as the released ``encoding.nn.JPU`` does:

1. each input goes through its own ``conv3x3 (-> width) + BN + ReLU`` (width 512);
2. the stride-16 and stride-32 results are upsampled to the stride-8 size, **bilinearly with
   ``align_corners=True``** (FastFCN's ``up_kwargs``), and the three are concatenated in the
   order stride 32, 16, 8 (``3 * width`` = 1536 channels);
3. four parallel separable convolutions with dilation 1, 2, 4 and 8: depthwise conv3x3
   (padding = dilation) + BN + pointwise conv1x1 (``-> width``), then BN + ReLU;
4. their outputs are concatenated: ``4 * width`` = 2048 channels at stride 8.

Every conv is bias-free, as in the original. :class:`FCNHead` is the minimal segmentation head
FastFCN's FCN variant puts on top (``conv3x3 -> in / 4 + BN + ReLU + Dropout2d(0.1) +
conv1x1``); :class:`FastFCN` wires JPU and the head to any backbone that returns
``[C3, C4, C5]`` (e.g. :class:`models.backbones.ResNetBackbone`) and upsamples the logits to
the image size (bilinear, ``align_corners=True``). The original's EncNet / PSP / DeepLab
heads are not included.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SeparableConv2d", "JPU", "FCNHead", "FastFCN"]

#: FastFCN's interpolation settings (``encoding/models/base.py``).
UP_KWARGS = {"mode": "bilinear", "align_corners": True}


def _check_int(name: str, v: object, least: int, who: str) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < least:
        raise ValueError(f"{who}: `{name}` must be an int >= {least}, got {v!r}")


def _check_feature(x: object, channels: int, who: str, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{who}: `{name}` must be a Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(
            f"{who}: `{name}` must be [B, {channels}, H, W], got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"{who}: `{name}` must be a floating tensor, got {x.dtype}")


class SeparableConv2d(nn.Module):
    """Depthwise conv (``kernel``, ``dilation``, padding ``dilation * (kernel // 2)``) + BN +
    pointwise conv1x1: ``[B, in_ch, H, W] -> [B, out_ch, H, W]``; no biases, no activation."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, dilation: int = 1) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_ch, in_ch, kernel, padding=dilation * (kernel // 2),
                                   dilation=dilation, groups=in_ch, bias=False)
        self.bn = nn.BatchNorm2d(in_ch)
        self.pointwise = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.bn(self.depthwise(x)))


class JPU(nn.Module):
    """Joint Pyramid Upsampling.

    Args:
        in_channels: channels of the stride-8, -16 and -32 inputs (ResNet-50: 512, 1024,
            2048).
        width: channels of each reduced input and of each dilation branch (512).
        dilations: the four branches' dilations (1, 2, 4, 8).

    ``forward(c3 [B, in_channels[0], h, w], c4 [B, in_channels[1], h4, w4], c5 [B,
    in_channels[2], h5, w5]) -> [B, len(dilations) * width, h, w]`` (2048 channels by
    default), in the inputs' dtype. Only ``c3``'s size matters: ``c4`` and ``c5`` are
    resampled to it, whatever their sizes.
    """

    def __init__(self, in_channels: Sequence[int] = (512, 1024, 2048), width: int = 512,
                 dilations: Sequence[int] = (1, 2, 4, 8)) -> None:
        super().__init__()
        in_channels = tuple(in_channels)
        if len(in_channels) != 3:
            raise ValueError(f"JPU: `in_channels` must have 3 entries (strides 8, 16, 32), "
                             f"got {in_channels!r}")
        for c in in_channels:
            _check_int("in_channels", c, 1, "JPU")
        _check_int("width", width, 1, "JPU")
        if len(dilations) == 0:
            raise ValueError("JPU: `dilations` must not be empty")
        for d in dilations:
            _check_int("dilations", d, 1, "JPU")
        self.in_channels = in_channels
        self.width = width
        self.out_channels = len(dilations) * width
        self.convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, width, 3, padding=1, bias=False),
                          nn.BatchNorm2d(width), nn.ReLU(inplace=True))
            for c in in_channels
        )
        self.dilation_branches = nn.ModuleList(
            nn.Sequential(SeparableConv2d(3 * width, width, 3, d), nn.BatchNorm2d(width),
                          nn.ReLU(inplace=True))
            for d in dilations
        )

    def forward(self, c3: Tensor, c4: Tensor, c5: Tensor) -> Tensor:
        for name, x, ch in zip(("c3", "c4", "c5"), (c3, c4, c5), self.in_channels):
            _check_feature(x, ch, "JPU", name)
        if not (c3.shape[0] == c4.shape[0] == c5.shape[0]):
            raise ValueError(f"JPU: `c3`, `c4`, `c5` must share the batch size, got "
                             f"{c3.shape[0]}, {c4.shape[0]}, {c5.shape[0]}")
        size = c3.shape[-2:]
        f3, f4, f5 = (conv(x) for conv, x in zip(self.convs, (c3, c4, c5)))
        f4 = F.interpolate(f4, size=size, **UP_KWARGS)
        f5 = F.interpolate(f5, size=size, **UP_KWARGS)
        feat = torch.cat([f5, f4, f3], dim=1)  # the original's order: conv5, conv4, conv3
        return torch.cat([branch(feat) for branch in self.dilation_branches], dim=1)


class FCNHead(nn.Module):
    """``conv3x3 (-> in_channels // 4) + BN + ReLU + Dropout2d(0.1) + conv1x1 -> classes``:
    ``[B, in_channels, h, w] -> [B, num_classes, h, w]``."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        _check_int("in_channels", in_channels, 4, "FCNHead")
        _check_int("num_classes", num_classes, 1, "FCNHead")
        inter = in_channels // 4
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, inter, 3, padding=1, bias=False), nn.BatchNorm2d(inter),
            nn.ReLU(), nn.Dropout2d(0.1), nn.Conv2d(inter, num_classes, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class FastFCN(nn.Module):
    """Backbone ``[C3, C4, C5]`` -> :class:`JPU` -> :class:`FCNHead` -> logits upsampled to
    the image size.

    Args:
        backbone: a module ``image [B, 3, H, W] -> [C3, C4, C5]`` exposing ``channels`` (the
            three channel counts), like :class:`models.backbones.ResNetBackbone`.
        num_classes: output classes.
        width: JPU width (512).

    ``forward(image [B, 3, H, W]) -> logits [B, num_classes, H, W]``.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, width: int = 512) -> None:
        super().__init__()
        channels = getattr(backbone, "channels", None)
        if channels is None or len(channels) != 3:
            raise ValueError("FastFCN: `backbone` must expose `channels` with the C3, C4, C5 "
                             f"channel counts, got {channels!r}")
        self.backbone = backbone
        self.jpu = JPU(channels, width)
        self.head = FCNHead(self.jpu.out_channels, num_classes)

    def forward(self, image: Tensor) -> Tensor:
        if not isinstance(image, Tensor) or image.dim() != 4:
            raise ValueError("FastFCN: `image` must be a [B, C, H, W] tensor, got "
                             f"{getattr(image, 'shape', type(image).__name__)}")
        c3, c4, c5 = self.backbone(image)
        logits = self.head(self.jpu(c3, c4, c5))
        return F.interpolate(logits, size=image.shape[-2:], **UP_KWARGS)
