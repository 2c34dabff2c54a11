"""The Bottleneck ResNet of YOLACT's released configurations (dbolya/yolact ``backbone.py``).

Parameter and buffer names follow the release (``conv1``, ``bn1``, ``layers.<stage>.<block>
.{conv1,bn1,conv2,bn2,conv3,bn3,downsample.0,downsample.1}``), so a released checkpoint's
``backbone.*`` entries load into :class:`YolactResNet` as they are. The block is the
torchvision "v1.5" bottleneck: the stride sits on the 3x3 conv.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["Bottleneck", "YolactResNet", "RESNET50_LAYERS", "RESNET101_LAYERS"]

RESNET50_LAYERS = (3, 4, 6, 3)
RESNET101_LAYERS = (3, 4, 23, 3)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 (x4 channels), BatchNorm after each, ReLU, residual.

    ``[B, inplanes, H, W] -> [B, 4 * planes, ceil(H / stride), ceil(W / stride)]``.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class YolactResNet(nn.Module):
    """ResNet-50/101 as YOLACT builds it, returning ``[C3, C4, C5]`` (strides 8, 16, 32).

    Stem conv7x7/2 + BN + ReLU + maxpool3x3/2, then four stages of :class:`Bottleneck`
    (64, 128, 256, 512 planes; the last three downsample by 2). YOLACT's configurations
    select stages 1-3 (``selected_layers = [1, 2, 3]``), so stage 0's output is not returned.
    Weights are PyTorch's default initialisation (YOLACT loads ImageNet weights for
    training, or a released checkpoint).

    Args:
        layers: blocks per stage: :data:`RESNET101_LAYERS` ``(3, 4, 23, 3)`` or
            :data:`RESNET50_LAYERS` ``(3, 4, 6, 3)``.

    Attributes:
        channels: ``[512, 1024, 2048]``, the channel counts of C3, C4, C5.
    """

    def __init__(self, layers: Sequence[int] = RESNET101_LAYERS) -> None:
        super().__init__()
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"YolactResNet: `layers` must be 4 positive block counts, "
                             f"got {tuple(layers)}")
        self.layers = nn.ModuleList()  # registered first: the release's state_dict order
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (blocks, planes) in enumerate(zip(layers, (64, 128, 256, 512))):
            stride = 1 if i == 0 else 2
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * 4),
            )
            stage = [Bottleneck(inplanes, planes, stride, downsample)]
            inplanes = planes * 4
            stage += [Bottleneck(inplanes, planes) for _ in range(int(blocks) - 1)]
            self.layers.append(nn.Sequential(*stage))
        self.channels: list[int] = [512, 1024, 2048]

    def forward(self, x: Tensor) -> list[Tensor]:
        """``[B, 3, H, W] -> [C3 [B, 512, ~H/8, ~W/8], C4 [B, 1024, ..], C5 [B, 2048, ..]]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i >= 1:
                outs.append(x)
        return outs
