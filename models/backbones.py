"""Backbones shared by the thin model definitions: a small BasicBlock ResNet (random init)
that returns C3, C4, C5 (strides 8, 16, 32). Used by YOLACT (``models/yolact.py``) and
BPR's refinement net (``models/bpr.py``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BasicBlock", "ResNetBackbone"]



class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with BatchNorm, identity (or 1x1 projection) skip.

    ``[B, in_ch, H, W] -> [B, out_ch, ceil(H / stride), ceil(W / stride)]``.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class ResNetBackbone(nn.Module):
    """A BasicBlock ResNet (ResNet-18 layout by default) returning ``[C3, C4, C5]``.

    Stem conv7x7/2 + BN + ReLU + maxpool3x3/2, then four stages (the first at stride 4,
    the others downsampling by 2). For a 550x550 input C3, C4, C5 are 69, 35 and 18
    pixels square, as with YOLACT's ResNet.

    Args:
        layers: blocks per stage.
        widths: channels per stage (ResNet-18: ``(64, 128, 256, 512)``; the default is
            half that).

    Attributes:
        channels: ``[C3, C4, C5]`` channel counts, what a YOLACT backbone must expose.
    """

    def __init__(
        self,
        layers: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (32, 64, 128, 256),
    ) -> None:
        super().__init__()
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError("ResNetBackbone: `layers` and `widths` must have 4 entries")
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 7, 2, 3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages = []
        in_ch = widths[0]
        for i, (n, w) in enumerate(zip(layers, widths)):
            blocks = [BasicBlock(in_ch, w, 1 if i == 0 else 2)]
            blocks += [BasicBlock(w, w) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = w
        self.stages = nn.ModuleList(stages)
        self.channels: list[int] = [int(w) for w in widths[1:]]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> list[Tensor]:
        """``[B, 3, H, W] -> [C3 [B, c3, H/8, W/8], C4 [.., H/16, ..], C5 [.., H/32, ..]]``."""
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= 1:
                outs.append(x)
        return outs
