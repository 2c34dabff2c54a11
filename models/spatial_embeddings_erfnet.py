"""ERFNet (Romera et al.) building blocks and SpatialEmbeddings' :class:`BranchedERFNet`
(one encoder, one decoder per output branch): part of :mod:`segops.models.spatial_embeddings`,
which re-exports everything here (see its docstring). Module and parameter names are the
original's, so a released ``BranchedERFNet`` state dict loads as is."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DownsamplerBlock",
    "NonBottleneck1d",
    "non_bottleneck_1d",
    "UpsamplerBlock",
    "Encoder",
    "Decoder",
    "BranchedERFNet",
]

ERFNET_CHANNELS = (16, 64, 128)  # encoder widths after each downsampling, at width=1


def _widths(width: float) -> tuple[int, int, int]:
    """Channel counts ``(c1, c2, c3)`` for a width multiplier (16, 64, 128 at 1)."""
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise ValueError(f"ERFNet: `width` must be a positive finite number, got {width!r}")
    c1, c2, c3 = (max(1, int(round(c * width))) for c in ERFNET_CHANNELS)
    return c1, c2, c3


class DownsamplerBlock(nn.Module):
    """ERFNet downsampler: ``cat[conv3x3/2 (noutput - ninput ch), maxpool2x2/2] -> BN -> ReLU``.

    ``[B, ninput, H, W] -> [B, noutput, H/2, W/2]`` (``H``, ``W`` even).
    """

    def __init__(self, ninput: int, noutput: int) -> None:
        super().__init__()
        if noutput <= ninput:
            raise ValueError(f"DownsamplerBlock: `noutput` ({noutput}) must exceed `ninput` "
                             f"({ninput}): the conv produces the extra channels")
        self.conv = nn.Conv2d(ninput, noutput - ninput, (3, 3), stride=2, padding=1, bias=True)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(noutput, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(torch.cat([self.conv(x), self.pool(x)], 1)))


class NonBottleneck1d(nn.Module):
    """ERFNet's factorised residual block (``non_bottleneck_1d``), shape-preserving.

    ``conv3x1 -> ReLU -> conv1x3 -> BN -> ReLU -> conv3x1 (dilation (d, 1)) -> ReLU ->
    conv1x3 (dilation (1, d)) -> BN -> Dropout2d(dropprob) -> + x -> ReLU``.
    """

    def __init__(self, chann: int, dropprob: float, dilated: int) -> None:
        super().__init__()
        self.conv3x1_1 = nn.Conv2d(chann, chann, (3, 1), stride=1, padding=(1, 0), bias=True)
        self.conv1x3_1 = nn.Conv2d(chann, chann, (1, 3), stride=1, padding=(0, 1), bias=True)
        self.bn1 = nn.BatchNorm2d(chann, eps=1e-3)
        self.conv3x1_2 = nn.Conv2d(chann, chann, (3, 1), stride=1, padding=(dilated, 0),
                                   bias=True, dilation=(dilated, 1))
        self.conv1x3_2 = nn.Conv2d(chann, chann, (1, 3), stride=1, padding=(0, dilated),
                                   bias=True, dilation=(1, dilated))
        self.bn2 = nn.BatchNorm2d(chann, eps=1e-3)
        self.dropout = nn.Dropout2d(dropprob)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.conv3x1_1(x))
        out = F.relu(self.bn1(self.conv1x3_1(out)))
        out = F.relu(self.conv3x1_2(out))
        out = self.bn2(self.conv1x3_2(out))
        if self.dropout.p != 0:
            out = self.dropout(out)
        return F.relu(out + x)


non_bottleneck_1d = NonBottleneck1d  # the original's name


class UpsamplerBlock(nn.Module):
    """ERFNet upsampler: ``ConvTranspose3x3/2 (output_padding 1) -> BN -> ReLU``.

    ``[B, ninput, H, W] -> [B, noutput, 2H, 2W]``.
    """

    def __init__(self, ninput: int, noutput: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(ninput, noutput, 3, stride=2, padding=1,
                                       output_padding=1, bias=True)
        self.bn = nn.BatchNorm2d(noutput, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class Encoder(nn.Module):
    """ERFNet encoder: ``[B, in_channels, H, W] -> [B, c3, H/8, W/8]``.

    ``Downsampler(in, c1)``; ``Downsampler(c1, c2)`` + 5 x ``non_bottleneck_1d(c2, 0.03, 1)``;
    ``Downsampler(c2, c3)`` + 2 x ``non_bottleneck_1d(c3, 0.3, d)`` for ``d`` in 2, 4, 8, 16.
    ``(c1, c2, c3) = (16, 64, 128) * width``. ``output_conv`` (1x1 to ``num_classes``) is
    used only by ``forward(x, predict=True)`` (the original's encoder pretraining).
    """

    def __init__(self, num_classes: int, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        c1, c2, c3 = _widths(width)
        if not in_channels < c1 < c2 < c3:
            raise ValueError(f"Encoder: `width`={width} gives channels {(c1, c2, c3)} that do "
                             f"not increase from in_channels={in_channels}")
        self.initial_block = DownsamplerBlock(in_channels, c1)
        layers: list[nn.Module] = [DownsamplerBlock(c1, c2)]
        layers += [NonBottleneck1d(c2, 0.03, 1) for _ in range(5)]
        layers.append(DownsamplerBlock(c2, c3))
        for _ in range(2):
            layers += [NonBottleneck1d(c3, 0.3, d) for d in (2, 4, 8, 16)]
        self.layers = nn.ModuleList(layers)
        self.output_conv = nn.Conv2d(c3, num_classes, 1, stride=1, padding=0, bias=True)
        self.channels = c3

    def forward(self, x: Tensor, predict: bool = False) -> Tensor:
        h, w = x.shape[-2:]
        if h % 8 or w % 8:
            raise ValueError(f"ERFNet: the input height and width must be divisible by 8, "
                             f"got {tuple(x.shape[-2:])}")
        out = self.initial_block(x)
        for layer in self.layers:
            out = layer(out)
        if predict:
            out = self.output_conv(out)
        return out


class Decoder(nn.Module):
    """ERFNet decoder: ``[B, c3, h, w] -> [B, num_classes, 8h, 8w]``.

    ``Upsampler(c3, c2)`` + 2 x ``non_bottleneck_1d(c2, 0, 1)``, ``Upsampler(c2, c1)`` +
    2 x ``non_bottleneck_1d(c1, 0, 1)``, ``output_conv = ConvTranspose2x2/2(c1, num_classes)``.
    """

    def __init__(self, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3 = _widths(width)
        self.layers = nn.ModuleList([
            UpsamplerBlock(c3, c2), NonBottleneck1d(c2, 0, 1), NonBottleneck1d(c2, 0, 1),
            UpsamplerBlock(c2, c1), NonBottleneck1d(c1, 0, 1), NonBottleneck1d(c1, 0, 1),
        ])
        self.output_conv = nn.ConvTranspose2d(c1, num_classes, 2, stride=2, padding=0,
                                              output_padding=0, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.output_conv(x)


class BranchedERFNet(nn.Module):
    """One ERFNet encoder, one ERFNet decoder per entry of ``num_classes``, outputs concatenated.

    ``[B, in_channels, H, W] -> [B, sum(num_classes), H, W]`` (``H``, ``W`` divisible by 8).
    For SpatialEmbeddings ``num_classes = (2 + n_sigma, 1)``: channels ``0:2`` offsets (x, y),
    ``2:2+n_sigma`` sigma, ``2+n_sigma`` the seed logit.

    Args:
        num_classes: output channels per decoder.
        width: channel multiplier (16 / 64 / 128 at 1, the original).
        encoder: a replacement encoder (e.g. pretrained) producing ``c3`` channels at H/8.
        in_channels: image channels.
        init_output: apply :meth:`init_output` with ``n_sigma = num_classes[0] - 2`` (the
            original's training script does this right after construction).
    """

    def __init__(
        self,
        num_classes: Sequence[int] = (3, 1),
        width: float = 1.0,
        encoder: nn.Module | None = None,
        in_channels: int = 3,
        init_output: bool = True,
    ) -> None:
        super().__init__()
        num_classes = [int(n) for n in num_classes]
        if not num_classes or min(num_classes) < 1:
            raise ValueError(f"BranchedERFNet: `num_classes` must be positive ints, "
                             f"got {num_classes}")
        self.num_classes = num_classes
        self.encoder = Encoder(sum(num_classes), width, in_channels) if encoder is None \
            else encoder
        self.decoders = nn.ModuleList(Decoder(n, width) for n in num_classes)
        if init_output:
            if num_classes[0] < 3:
                raise ValueError("BranchedERFNet: init_output needs the first decoder to have "
                                 f"2 + n_sigma >= 3 channels, got {num_classes[0]}")
            self.init_output(num_classes[0] - 2)

    @torch.no_grad()
    def init_output(self, n_sigma: int = 1) -> None:
        """The original's ``init_output``: zero the first decoder's output weights for the
        offsets (channels 0:2) and sigma (2:2+n_sigma); offset bias 0, sigma bias 1."""
        conv = self.decoders[0].output_conv  # ConvTranspose2d weight: [in, out, kh, kw]
        conv.weight[:, 0:2].fill_(0)
        conv.bias[0:2].fill_(0)
        conv.weight[:, 2:2 + n_sigma].fill_(0)
        conv.bias[2:2 + n_sigma].fill_(1)

    def forward(self, x: Tensor, only_encode: bool = False) -> Tensor:
        if only_encode:
            return self.encoder(x, predict=True)
        feats = self.encoder(x)
        return torch.cat([decoder(feats) for decoder in self.decoders], 1)
