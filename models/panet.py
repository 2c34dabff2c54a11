"""PANet, Path Aggregation Network (Liu et al., CVPR 2018), a thin definition (docs/models.md).

PANet's three additions to Mask R-CNN on an FPN, on segops' ops:

* :class:`BottomUpPath` (bottom-up path augmentation): ``N2 = P2`` and
  ``N_{i+1} = ReLU(GN(conv3x3(ReLU(GN(conv3x3 s2(N_i))) + P_{i+1})))``, 256 channels, GN
  with 32 groups (a parameter). The convs feeding a GN have no bias (it would be redundant).
* Adaptive feature pooling: every RoI is pooled from every level N2..N5 in one
  :func:`segops.multilevel_roi_align` launch with ``mode="all"`` (``[L, R, C, s, s]``; the
  op does not fuse levels). One *unshared* first layer per level follows, computed for all
  levels at once -- for masks a grouped conv3x3 over the stacked levels (``groups=L``), for
  boxes a batched matmul with a ``[L, C*7*7, 1024]`` weight -- then the element-wise max
  over the levels. (ReLU commutes with the max, so applying it per level, as the release
  does, or after the max is the same.)
* Fully-connected fusion in the mask head (:class:`AdaptiveMaskHead`): after the fused
  conv1 come conv2, conv3; from conv3's output the FCN branch is conv4 -> ConvTranspose
  2x2 s2 + ReLU -> conv1x1 ``K``, and the fc branch is ``conv4_fc`` (3x3, 256 -> 256) ->
  ``conv5_fc`` (3x3, 256 -> 128) -> ``fc`` (``128 * 14 * 14 -> 28 * 28``) + ReLU (the
  release's ``mask_fc`` ends with a ReLU), reshaped ``[R, 1, 28, 28]`` and added to every
  class's FCN logits (class-agnostic).

The box head (:class:`AdaptiveBoxHead`) is Mask R-CNN's two-fc head with the first fc made
per level (the paper's "fuse after fc1"; the release's default config uses a 4conv1fc head
instead). ``norm_groups`` adds GroupNorm after every mask-head conv but the transposed conv
and the predictor (the release's ``_gn_adp_ff`` head; the per-level GN of the first layer is
exactly one GroupNorm of ``L * norm_groups`` groups over the stacked channels); the default,
``None``, is the release's ``_adp_ff`` head (conv + ReLU, as Mask R-CNN).

:class:`PANetHeads` is :class:`segops.models.mask_rcnn.MaskRCNNHeads` (its matching, losses,
mask targets and post-processing) with the bottom-up path in front and these two heads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mask_rcnn import (
    FPN_SCALES,
    BoxPredictor,
    FPNRoIAlign,
    MaskRCNNHeads,
    check_features,
    check_int,
)

__all__ = ["BottomUpPath", "AdaptiveBoxHead", "AdaptiveMaskHead", "PANetHeads"]


def _check_groups(channels: int, groups: int, who: str, name: str = "gn_groups") -> None:
    check_int(name, groups, 1, who)
    if channels % groups:
        raise ValueError(f"{who}: `{name}` ({groups}) must divide the channels ({channels})")


class BottomUpPath(nn.Module):
    """PANet's bottom-up path augmentation.

    Args:
        channels: ``C`` of every level (256); num_levels: 4 (P2..P5);
        gn_groups: GroupNorm groups (32).

    ``forward([P2, .., P5]) -> [N2, .., N5]``: ``N2`` is ``P2`` itself, ``N_{i+1} =
    ReLU(GN(fuse_i(ReLU(GN(down_i(N_i))) + P_{i+1})))`` with ``down_i`` a 3x3 stride-2 conv
    and ``fuse_i`` a 3x3 conv; shapes and dtype as the inputs. ``P_{i+1}`` must have the size
    of the stride-2 conv's output, ``ceil(H_i / 2) x ceil(W_i / 2)``.
    """

    def __init__(self, channels: int = 256, num_levels: int = 4, gn_groups: int = 32) -> None:
        super().__init__()
        who = "BottomUpPath"
        self.channels = check_int("channels", channels, 1, who)
        self.num_levels = check_int("num_levels", num_levels, 1, who)
        _check_groups(channels, gn_groups, who)

        def block(stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(channels, channels, 3, stride, 1, bias=False),
                                 nn.GroupNorm(gn_groups, channels), nn.ReLU())

        self.down = nn.ModuleList(block(2) for _ in range(num_levels - 1))
        self.fuse = nn.ModuleList(block(1) for _ in range(num_levels - 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        feats = check_features(features, self.num_levels, self.channels, "BottomUpPath")
        out = [feats[0]]
        for i, (down, fuse) in enumerate(zip(self.down, self.fuse)):
            d = down(out[-1])
            if d.shape[-2:] != feats[i + 1].shape[-2:]:
                raise ValueError(
                    f"BottomUpPath: `features[{i + 1}]` must be {tuple(d.shape[-2:])} (the "
                    f"stride-2 conv of level {i}), got {tuple(feats[i + 1].shape[-2:])}")
            out.append(fuse(d + feats[i + 1]))
        return out


class AdaptiveBoxHead(nn.Module):
    """PANet's box head: every level pooled at 7x7, fc6 per level (unshared) + ReLU, max
    over levels, fc7 + ReLU, then Mask R-CNN's predictor.

    Args:
        num_classes: ``K``; in_channels: 256; representation_size: 1024; resolution: 7;
        flavour, scales: as :class:`segops.models.mask_rcnn.FPNRoIAlign`.

    Parameters ``fc6_weight [L, C*7*7, 1024]`` and ``fc6_bias [L, 1024]``.
    ``forward(features [L x [N, C, H, W]], rois [R, 5]) -> (class_logits [R, K + 1],
    box_deltas [R, 4K])``; ``pooler`` -> ``[L, R, C, 7, 7]``; ``fuse(pooled) -> [R, 1024]``.
    """

    def __init__(self, num_classes: int, in_channels: int = 256, representation_size: int = 1024,
                 resolution: int = 7, flavour: str = "torchvision",
                 scales: Sequence[float] = FPN_SCALES) -> None:
        super().__init__()
        check_int("num_classes", num_classes, 1, "AdaptiveBoxHead")
        check_int("representation_size", representation_size, 1, "AdaptiveBoxHead")
        self.pooler = FPNRoIAlign(resolution, in_channels, flavour, scales, mode="all")
        levels, d = len(self.pooler.scales), in_channels * resolution * resolution
        self.fc6_weight = nn.Parameter(torch.empty(levels, d, representation_size))
        self.fc6_bias = nn.Parameter(torch.empty(levels, representation_size))
        bound = d ** -0.5  # nn.Linear's default init, per level
        nn.init.uniform_(self.fc6_weight, -bound, bound)
        nn.init.uniform_(self.fc6_bias, -bound, bound)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.predictor = BoxPredictor(representation_size, num_classes)

    def fuse(self, pooled: Tensor) -> Tensor:
        """``[L, R, C, s, s] -> max_l ReLU(x_l W_l + b_l)``, ``[R, representation_size]``."""
        if pooled.dim() != 5 or pooled.shape[0] != self.fc6_weight.shape[0]:
            raise ValueError(f"AdaptiveBoxHead: `pooled` must be [{self.fc6_weight.shape[0]}, R, "
                             f"C, s, s], got shape {tuple(pooled.shape)}")
        y = torch.baddbmm(self.fc6_bias[:, None].to(pooled.dtype), pooled.flatten(2),
                          self.fc6_weight.to(pooled.dtype))
        return F.relu(y).amax(dim=0)

    def forward_pooled(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        return self.predictor(F.relu(self.fc7(self.fuse(pooled))))

    def forward(self, features: Sequence[Tensor], rois: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward_pooled(self.pooler(features, rois))


def _conv(in_ch: int, out_ch: int, norm_groups: int | None, groups: int = 1) -> nn.Sequential:
    """conv3x3 (+ GN of ``norm_groups`` per conv group) + ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 3, padding=1, groups=groups,
                                         bias=norm_groups is None)]
    if norm_groups is not None:
        layers.append(nn.GroupNorm(norm_groups * groups, out_ch))
    layers.append(nn.ReLU())
    nn.init.kaiming_normal_(layers[0].weight, mode="fan_out", nonlinearity="relu")
    if layers[0].bias is not None:
        nn.init.zeros_(layers[0].bias)
    return nn.Sequential(*layers)


class AdaptiveMaskHead(nn.Module):
    """PANet's mask head: adaptive feature pooling + FCN with fully-connected fusion.

    Args:
        num_classes: ``K``; in_channels: 256; conv_channels: 256 (the fc branch's second
        conv has half); resolution: 14 (logits at 28); flavour, scales: as
        :class:`segops.models.mask_rcnn.FPNRoIAlign`; norm_groups: ``None`` (conv + ReLU)
        or GN groups (32 in the release's GN head).

    Layers: ``conv1`` (grouped over the L levels: ``[R, L*C, s, s] -> [R, L*conv, s, s]``),
    ``conv2``, ``conv3``, ``conv4``, ``deconv``, ``predictor`` (FCN); ``conv4_fc``,
    ``conv5_fc``, ``fc`` (fusion).
    ``forward(features, rois [R, 5]) -> logits [R, K, 28, 28]``; ``pooler`` -> ``[L, R, C,
    14, 14]``; ``fuse(pooled) -> [R, conv, 14, 14]``; ``branches(x3) -> (fcn [R, K, 28, 28],
    fusion [R, 1, 28, 28])``.
    """

    def __init__(self, num_classes: int, in_channels: int = 256, conv_channels: int = 256,
                 resolution: int = 14, flavour: str = "torchvision",
                 scales: Sequence[float] = FPN_SCALES, norm_groups: int | None = None) -> None:
        super().__init__()
        who = "AdaptiveMaskHead"
        check_int("num_classes", num_classes, 1, who)
        check_int("conv_channels", conv_channels, 2, who)
        if norm_groups is not None:
            _check_groups(conv_channels // 2, norm_groups, who, "norm_groups")
        self.pooler = FPNRoIAlign(resolution, in_channels, flavour, scales, mode="all")
        self.levels = len(self.pooler.scales)
        self.conv_channels, self.resolution = conv_channels, resolution
        c, half, n = conv_channels, conv_channels // 2, norm_groups
        self.conv1 = _conv(self.levels * in_channels, self.levels * c, n, groups=self.levels)
        self.conv2, self.conv3, self.conv4 = _conv(c, c, n), _conv(c, c, n), _conv(c, c, n)
        self.deconv = nn.ConvTranspose2d(c, c, 2, stride=2)
        self.predictor = nn.Conv2d(c, num_classes, 1)
        self.conv4_fc, self.conv5_fc = _conv(c, c, n), _conv(c, half, n)
        self.fc = nn.Linear(half * resolution * resolution, (2 * resolution) ** 2)
        nn.init.kaiming_normal_(self.deconv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.deconv.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def fuse(self, pooled: Tensor) -> Tensor:
        """Per-level conv1 as one grouped conv, then the max over levels."""
        if pooled.dim() != 5 or pooled.shape[0] != self.levels:
            raise ValueError(f"AdaptiveMaskHead: `pooled` must be [{self.levels}, R, C, s, s], "
                             f"got shape {tuple(pooled.shape)}")
        lv, r, ch, h, w = pooled.shape
        y = self.conv1(pooled.transpose(0, 1).reshape(r, lv * ch, h, w))
        return y.reshape(r, lv, self.conv_channels, h, w).amax(dim=1)

    def branches(self, x3: Tensor) -> tuple[Tensor, Tensor]:
        """From conv3's output: FCN logits ``[R, K, 2s, 2s]`` and the fc fusion term
        ``[R, 1, 2s, 2s]`` (>= 0, through the fc's ReLU)."""
        fcn = self.predictor(F.relu(self.deconv(self.conv4(x3))))
        ff = F.relu(self.fc(self.conv5_fc(self.conv4_fc(x3)).flatten(1)))
        return fcn, ff.reshape(-1, 1, 2 * self.resolution, 2 * self.resolution)

    def forward_pooled(self, pooled: Tensor) -> Tensor:
        fcn, ff = self.branches(self.conv3(self.conv2(self.fuse(pooled))))
        return fcn + ff

    def forward(self, features: Sequence[Tensor], rois: Tensor) -> Tensor:
        return self.forward_pooled(self.pooler(features, rois))


class PANetHeads(MaskRCNNHeads):
    """PANet on FPN P2..P5: :class:`BottomUpPath`, then :class:`AdaptiveBoxHead` and
    :class:`AdaptiveMaskHead` on N2..N5, with Mask R-CNN's matching, losses, mask targets and
    post-processing (:class:`segops.models.mask_rcnn.MaskRCNNHeads`).

    Args: as ``MaskRCNNHeads`` (``flavour`` defaults to torchvision's pooling, PANet's
    release's: sampling 2, not aligned), plus ``gn_groups`` (bottom-up path, 32) and
    ``norm_groups`` (mask head, ``None``). ``forward`` takes P2..P5 and returns the same as
    ``MaskRCNNHeads.forward``.
    """

    def __init__(self, num_classes: int, flavour: str = "torchvision", in_channels: int = 256,
                 representation_size: int = 1024, mask_channels: int = 256,
                 scales: Sequence[float] = FPN_SCALES, gn_groups: int = 32,
                 norm_groups: int | None = None, **kwargs) -> None:
        box = AdaptiveBoxHead(num_classes, in_channels, representation_size, 7, flavour, scales)
        mask = AdaptiveMaskHead(num_classes, in_channels, mask_channels, 14, flavour, scales,
                                norm_groups)
        super().__init__(num_classes, flavour, in_channels, scales=scales, box_head=box,
                         mask_head=mask, **kwargs)
        self.bottom_up = BottomUpPath(in_channels, len(scales), gn_groups)

    def forward(self, features: Sequence[Tensor], proposals: Sequence[Tensor],
                image_sizes: Sequence[tuple[int, int]] | None = None,
                targets=None) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        return super().forward(self.bottom_up(features), proposals, image_sizes, targets)
