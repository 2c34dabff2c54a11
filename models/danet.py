"""DANet, Dual Attention Network (Fu et al., CVPR 2019), a thin definition (docs/models.md).

Two self-attention modules on a stride-8 feature map ``X`` of shape ``[B, C, H, W]``
(``N = H * W`` positions), as in the released ``PAM_Module`` / ``CAM_Module``:

* :class:`PositionAttention` (PAM): ``q = conv1x1(X)``, ``k = conv1x1(X)`` (``C -> C / 8``),
  ``v = conv1x1(X)`` (``C -> C``); energy ``E = q^T k`` (``[N, N]``) **without** the
  ``1 / sqrt(d)`` scaling of ordinary attention; ``A = softmax(E)`` over the keys;
  ``out[:, i] = sum_j v[:, j] A[i, j]``; ``Y = gamma * out + X`` with ``gamma`` a learned
  scalar initialised to 0 (so the module starts as the identity). Computed with
  ``F.scaled_dot_product_attention(..., scale=1.0)``, so a fused kernel can be used where
  one is available instead of materialising the ``[N, N]`` energy.
* :class:`ChannelAttention` (CAM): no projections; ``E = X X^T`` (``[C, C]``, ``X`` flattened
  to ``[C, N]``), ``A = softmax(rowmax(E) - E)`` over the last axis (the released code's
  "energy_new": the *least* similar channels get the largest weights), ``Y = gamma * (A X) +
  X``, ``gamma`` initialised to 0.

:class:`DANetHead` is the released ``DANetHead``: two parallel branches on the backbone's C5
(``inter = in_channels // 4``), each ``conv3x3 + BN + ReLU -> attention -> conv3x3 + BN +
ReLU``; the sum of the two branches goes through ``Dropout2d(0.1) + conv1x1`` to the class
logits, and each branch has its own auxiliary classifier (the paper's training uses all
three outputs). The dilated ResNet backbone and the final 8x upsampling are not included.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PositionAttention", "ChannelAttention", "DANetHead", "DANetOutput"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_feature(x: object, channels: int, who: str, name: str = "x") -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{who}: `{name}` must be a Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{who}: `{name}` must be [B, C, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(
            f"{who}: `{name}` must have {channels} channels, got {x.shape[1]} "
            f"(shape {tuple(x.shape)})"
        )
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{who}: `{name}` must be a floating tensor, got {x.dtype}")


def _check_int(name: str, v: object, least: int, who: str) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < least:
        raise ValueError(f"{who}: `{name}` must be an int >= {least}, got {v!r}")


class PositionAttention(nn.Module):
    """DANet's position attention module (PAM).

    Args:
        channels: ``C``, the input (and output) channels.
        reduction: query/key channels are ``C // reduction`` (8 in DANet; must be >= 1).

    ``forward(x [B, C, H, W]) -> [B, C, H, W]`` (same dtype), ``gamma * out + x`` with
    ``out = v softmax(q^T k)^T`` and no ``1 / sqrt(d)`` scaling. ``gamma`` is a parameter of
    shape ``[1]`` initialised to 0.
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        _check_int("channels", channels, 1, "PositionAttention")
        _check_int("reduction", reduction, 1, "PositionAttention")
        if channels // reduction < 1:
            raise ValueError(
                f"PositionAttention: `channels // reduction` must be >= 1, got channels="
                f"{channels}, reduction={reduction}"
            )
        self.channels = channels
        self.query_conv = nn.Conv2d(channels, channels // reduction, 1)
        self.key_conv = nn.Conv2d(channels, channels // reduction, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        _check_feature(x, self.channels, "PositionAttention")
        b, c, h, w = x.shape
        # [B, 1, N, d]: one "head", positions as the sequence
        q = self.query_conv(x).flatten(2).transpose(1, 2).unsqueeze(1)
        k = self.key_conv(x).flatten(2).transpose(1, 2).unsqueeze(1)
        v = self.value_conv(x).flatten(2).transpose(1, 2).unsqueeze(1)
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # softmax(q k^T) v
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return self.gamma.to(x.dtype) * out + x


class ChannelAttention(nn.Module):
    """DANet's channel attention module (CAM).

    Args:
        channels: ``C`` (used only to validate the input).

    ``forward(x [B, C, H, W]) -> [B, C, H, W]`` (same dtype): ``E = X X^T``,
    ``A = softmax(rowmax(E) - E)``, ``gamma * (A X) + x``; ``gamma`` initialised to 0.
    Half-precision inputs are computed in float32 (``E`` overflows float16 easily).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        _check_int("channels", channels, 1, "ChannelAttention")
        self.channels = channels
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        _check_feature(x, self.channels, "ChannelAttention")
        b, c, h, w = x.shape
        xf = x.flatten(2)
        if xf.dtype in (torch.float16, torch.bfloat16):
            xf = xf.float()
        energy = torch.bmm(xf, xf.transpose(1, 2))  # [B, C, C]
        energy = energy.amax(dim=-1, keepdim=True) - energy
        attention = torch.softmax(energy, dim=-1)
        out = torch.bmm(attention, xf).reshape(b, c, h, w).to(x.dtype)
        return self.gamma.to(x.dtype) * out + x


def _conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU()
    )


def _classifier(in_ch: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(in_ch, num_classes, 1))


class DANetOutput(NamedTuple):
    """Logits ``[B, num_classes, H, W]`` at the input feature's resolution."""

    fused: Tensor  #: from the sum of both branches (the prediction)
    position: Tensor  #: auxiliary, position-attention branch alone
    channel: Tensor  #: auxiliary, channel-attention branch alone


class DANetHead(nn.Module):
    """DANet's head: position and channel attention branches, summed, then a classifier.

    Args:
        in_channels: channels of the backbone feature (2048 for DANet's dilated ResNet).
        num_classes: output classes.
        inter_channels: width of both branches (default ``in_channels // 4``, as DANet).
        reduction: PAM's query/key reduction (8).

    ``forward(x [B, in_channels, H, W]) -> DANetOutput(fused, position, channel)``, each
    ``[B, num_classes, H, W]``::

        p = conv51(PAM(conv5a(x)));  c = conv52(CAM(conv5c(x)))
        fused = conv8(p + c);  position = conv6(p);  channel = conv7(c)

    (``conv5*``, ``conv5{1,2}``: conv3x3 + BN + ReLU; ``conv{6,7,8}``: Dropout2d(0.1) +
    conv1x1.)
    """

    def __init__(self, in_channels: int, num_classes: int, inter_channels: int | None = None,
                 reduction: int = 8) -> None:
        super().__init__()
        _check_int("in_channels", in_channels, 1, "DANetHead")
        _check_int("num_classes", num_classes, 1, "DANetHead")
        inter = in_channels // 4 if inter_channels is None else inter_channels
        _check_int("inter_channels", inter, 1, "DANetHead")
        self.in_channels = in_channels
        self.conv5a = _conv_bn_relu(in_channels, inter)
        self.conv5c = _conv_bn_relu(in_channels, inter)
        self.sa = PositionAttention(inter, reduction)
        self.sc = ChannelAttention(inter)
        self.conv51 = _conv_bn_relu(inter, inter)
        self.conv52 = _conv_bn_relu(inter, inter)
        self.conv6 = _classifier(inter, num_classes)
        self.conv7 = _classifier(inter, num_classes)
        self.conv8 = _classifier(inter, num_classes)

    def forward(self, x: Tensor) -> DANetOutput:
        _check_feature(x, self.in_channels, "DANetHead")
        sa_conv = self.conv51(self.sa(self.conv5a(x)))
        sc_conv = self.conv52(self.sc(self.conv5c(x)))
        return DANetOutput(self.conv8(sa_conv + sc_conv), self.conv6(sa_conv),
                           self.conv7(sc_conv))
