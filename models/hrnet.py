"""BPR's refinement net: HRNetV2 with a mask stem and an FCN head, as released (docs/models.md,
"BPR").

The released refinement net (``EncoderDecoderRefine`` in BPR's ``configs/bpr/``) is mmseg's
HRNet with one addition, a 3x3/2 convolution of the coarse mask patch summed with the image
stem's first convolution (``HRNetRefine``), followed by an ``FCNHead`` on the four branches
concatenated at 1/4 resolution. Two configurations were released:

==================  =============================  ==========  ========================
name                stage widths (branches 1..4)   input size  blocks (stage 1 | 2..4)
==================  =============================  ==========  ========================
``hrnet18s_128``    18, 36, 72, 144 (W18-small)    128 x 128   2 | 2 per branch
``hrnet48_256``     48, 96, 192, 384 (W48)         256 x 256   4 | 4 per branch
==================  =============================  ==========  ========================

(modules per stage: 1, 1, 3, 2 for W18-small and 1, 1, 4, 3 for W48; stage 1 is one branch
of Bottleneck blocks at 64 channels, stages 2..4 BasicBlocks.)

The module tree and every parameter and buffer name follow the released definitions, so a
released checkpoint loads with ``strict=True`` (:func:`load_released_checkpoint`):
``backbone.{conv1,bn1,conv2,bn2,conv_mask,layer1,transition1..3,stage2..4}.*`` and
``decode_head.{convs.0.conv,convs.0.bn,conv_seg}.*``. The forward arithmetic follows them
too, including the order of the sums in each module's fusion and the low-to-high fusion
path's two resizes (by ``int(size * 2**k)`` first, then to the high branch's size: they
differ from one resize when a size is odd).

:class:`BPRRefineNet` ``(image [P, 3, s, s], mask [P, 1, s, s]) -> logits [P, 2, s, s]``:
the decode head's logits at 1/4 resolution resized bilinearly (``align_corners=False``) to
the input size, as the released ``encode_decode``. The image is normalised with the
ImageNet mean and std (in RGB order), the mask is ``(m - 0.5) / 0.5`` (``{-1, +1}``);
:class:`~segops.models.bpr.BPRRefiner` prepares both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "StageSpec",
    "HRNetSpec",
    "RELEASED_CONFIGS",
    "HRNetRefine",
    "FCNHead",
    "BPRRefineNet",
    "load_released_checkpoint",
]


class StageSpec(NamedTuple):
    """One HRNet stage: ``num_modules`` modules of ``len(num_blocks)`` branches, branch ``i``
    running ``num_blocks[i]`` blocks (``"BASIC"`` or ``"BOTTLENECK"``) at
    ``num_channels[i]`` (times the block's expansion) channels."""

    num_modules: int
    block: str
    num_blocks: tuple[int, ...]
    num_channels: tuple[int, ...]


class HRNetSpec(NamedTuple):
    """A refinement net: the four HRNet stages and the patch input size it was trained at."""

    stages: tuple[StageSpec, StageSpec, StageSpec, StageSpec]
    input_size: int


def _spec(widths: Sequence[int], blocks: int, modules: Sequence[int], size: int) -> HRNetSpec:
    w = tuple(widths)
    return HRNetSpec((
        StageSpec(modules[0], "BOTTLENECK", (blocks,), (64,)),
        StageSpec(modules[1], "BASIC", (blocks,) * 2, w[:2]),
        StageSpec(modules[2], "BASIC", (blocks,) * 3, w[:3]),
        StageSpec(modules[3], "BASIC", (blocks,) * 4, w[:4]),
    ), size)


#: The released configurations (BPR ``configs/bpr/hrnet18s_128.py``, ``hrnet48_256.py``).
RELEASED_CONFIGS: dict[str, HRNetSpec] = {
    "hrnet18s_128": _spec((18, 36, 72, 144), 2, (1, 1, 3, 2), 128),
    "hrnet48_256": _spec((48, 96, 192, 384), 4, (1, 1, 4, 3), 256),
}


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear, ``align_corners=False`` (mmseg's ``resize``); the identity at the same size."""
    return F.interpolate(x, size=tuple(int(s) for s in size), mode="bilinear",
                         align_corners=False)


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, 3x3 convs (mmseg's)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv(inplanes, planes, 3)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (``planes * 4`` channels) with BN, plus the shortcut (mmseg's)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv(inplanes, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv(planes, planes * 4, 1)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


_BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {
    "BASIC": BasicBlock, "BOTTLENECK": Bottleneck}


def _blocks(block: type[BasicBlock] | type[Bottleneck], inplanes: int, planes: int,
            n: int) -> nn.Sequential:
    """``n`` blocks; the first projects ``inplanes`` with a 1x1 conv + BN if they differ."""
    out = planes * block.expansion
    down = None
    if inplanes != out:
        down = nn.Sequential(_conv(inplanes, out, 1), nn.BatchNorm2d(out))
    return nn.Sequential(block(inplanes, planes, down),
                         *(block(out, planes) for _ in range(n - 1)))


def _conv_bn(cin: int, cout: int, k: int, stride: int, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [_conv(cin, cout, k, stride), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class _Upsample(nn.Module):
    """mmseg's ``Upsample``: bilinear to ``int(size * scale)`` (no parameters)."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: Tensor) -> Tensor:
        return _resize(x, [int(t * self.scale) for t in x.shape[-2:]])


class HRModule(nn.Module):
    """Branches of residual blocks, then every output branch ``i`` sums all branches ``j``
    (``j < i``: strided 3x3 convs, ``j > i``: 1x1 conv + BN, upsampled by ``2**(j - i)`` then
    resized to branch ``i``'s size) in order of ``j``, and applies ReLU."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck],
                 num_blocks: Sequence[int], in_channels: Sequence[int],
                 num_channels: Sequence[int]) -> None:
        super().__init__()
        nb = len(num_blocks)
        self.branches = nn.ModuleList(
            _blocks(block, in_channels[i], num_channels[i], num_blocks[i]) for i in range(nb))
        ch = [c * block.expansion for c in num_channels]
        self.out_channels = ch
        self.fuse_layers: nn.ModuleList | None = None
        if nb > 1:
            fuse = []
            for i in range(nb):
                row: list[nn.Module | None] = []
                for j in range(nb):
                    if j > i:
                        row.append(nn.Sequential(_conv(ch[j], ch[i], 1), nn.BatchNorm2d(ch[i]),
                                                 _Upsample(2 ** (j - i))))
                    elif j == i:
                        row.append(None)
                    else:  # i - j strided convs; only the last changes the width
                        row.append(nn.Sequential(*(
                            _conv_bn(ch[j], ch[i], 3, 2, relu=False) if k == i - j - 1
                            else _conv_bn(ch[j], ch[j], 3, 2, relu=True)
                            for k in range(i - j))))
                fuse.append(nn.ModuleList(row))
            self.fuse_layers = nn.ModuleList(fuse)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        if self.fuse_layers is None:
            return xs
        out = []
        for i, row in enumerate(self.fuse_layers):
            y: Tensor | None = None
            for j, x in enumerate(xs):
                if j == i:
                    t = x
                elif j > i:
                    t = _resize(row[j](x), xs[i].shape[-2:])
                else:
                    t = row[j](x)
                y = t if y is None else y + t
            assert y is not None
            out.append(F.relu(y))
        return out


class HRNetRefine(nn.Module):
    """HRNetV2 backbone with the mask stem (``HRNetRefine``).

    ``forward(image [B, 3, H, W], mask [B, 1, H, W]) -> [B, c_i, H_i, W_i]`` for the four
    branches (``H_1 = ceil(ceil(H / 2) / 2)``, each next one halved with ``ceil``): the stem
    ``relu(bn1(conv1(image) + conv_mask(mask)))``, ``relu(bn2(conv2(.)))``, stage 1
    (``layer1``), then transitions (3x3 convs: stride 1 where a branch changes width, a chain of
    stride-2 convs from the lowest branch for a new one) and stages 2..4.
    """

    def __init__(self, stages: Sequence[StageSpec]) -> None:
        super().__init__()
        if len(stages) != 4:
            raise ValueError(f"HRNetRefine: `stages` must have 4 entries, got {len(stages)}")
        for k, st in enumerate(stages):
            n = len(st.num_blocks)
            if st.block not in _BLOCKS or len(st.num_channels) != n or n != (1 if k == 0 else k + 1) \
                    or st.num_modules < 1 or min(st.num_blocks) < 1:
                raise ValueError(f"HRNetRefine: stage {k + 1} is invalid: {st}")
        self.conv1 = _conv(3, 64, 3, 2)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = _conv(64, 64, 3, 2)
        self.bn2 = nn.BatchNorm2d(64)
        s1 = stages[0]
        block = _BLOCKS[s1.block]
        self.layer1 = _blocks(block, 64, s1.num_channels[0], s1.num_blocks[0])
        pre = [s1.num_channels[0] * block.expansion]
        for k, st in enumerate(stages[1:], start=1):
            block = _BLOCKS[st.block]
            cur = [c * block.expansion for c in st.num_channels]
            self.add_module(f"transition{k}", self._transition(pre, cur))
            self.add_module(f"stage{k + 1}", nn.Sequential(*(
                HRModule(block, st.num_blocks, cur, st.num_channels)
                for _ in range(st.num_modules))))
            pre = cur
        self.out_channels = pre
        self.conv_mask = _conv(1, 64, 3, 2)

    @staticmethod
    def _transition(pre: Sequence[int], cur: Sequence[int]) -> nn.ModuleList:
        layers: list[nn.Module | None] = []
        for i, c in enumerate(cur):
            if i < len(pre):
                layers.append(None if c == pre[i] else _conv_bn(pre[i], c, 3, 1, relu=True))
            else:
                n = i + 1 - len(pre)
                layers.append(nn.Sequential(*(
                    _conv_bn(pre[-1], c if j == n - 1 else pre[-1], 3, 2, relu=True)
                    for j in range(n))))
        return nn.ModuleList(layers)

    def forward(self, image: Tensor, mask: Tensor) -> list[Tensor]:
        x = F.relu(self.bn1(self.conv1(image) + self.conv_mask(mask)))
        x = F.relu(self.bn2(self.conv2(x)))
        ys = [self.layer1(x)]
        for k in (1, 2, 3):
            transition: nn.ModuleList = getattr(self, f"transition{k}")
            xs = []
            for i, t in enumerate(transition):
                if t is None:
                    xs.append(ys[i])
                else:  # a new branch grows from the lowest one
                    xs.append(t(ys[i] if i < len(ys) else ys[-1]))
            ys = getattr(self, f"stage{k + 1}")(xs)
        return ys


class _ConvModule(nn.Module):
    """mmcv's ``ConvModule`` as the head uses it: conv (no bias), BN, ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = _conv(cin, cout, 1)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class FCNHead(nn.Module):
    """The released decode head: the branches resized to the first one's size (bilinear,
    ``align_corners=False``) and concatenated, a 1x1 conv + BN + ReLU keeping the width
    (``sum(in_channels)``), a 1x1 conv to ``num_classes`` logits (no dropout)."""

    def __init__(self, in_channels: Sequence[int], num_classes: int = 2) -> None:
        super().__init__()
        c = sum(in_channels)
        self.conv_seg = nn.Conv2d(c, num_classes, 1)  # registered first, as released
        self.convs = nn.Sequential(_ConvModule(c, c))

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        size = feats[0].shape[-2:]
        x = torch.cat([_resize(f, size) for f in feats], dim=1)
        return self.conv_seg(self.convs(x))


class BPRRefineNet(nn.Module):
    """The refinement net of a released configuration (``EncoderDecoderRefine``).

    Args:
        config: a name from :data:`RELEASED_CONFIGS` (``"hrnet18s_128"``, ``"hrnet48_256"``)
            or an :class:`HRNetSpec`.
        num_classes: 2 (background, foreground) in BPR.

    Attributes:
        input_size: the patch side the configuration was trained at (128 or 256).

    ``forward(image [P, 3, s, s], mask [P, 1, s, s] or [P, s, s]) -> logits
    [P, num_classes, s, s]`` (any ``s``; see :meth:`decode` for the 1/4-resolution logits).
    Weights are initialised as the released code does without a pretrained backbone (Kaiming
    normal, fan-out, for convolutions; BN weight 1, bias 0; the classifier normal(0, 0.01)).
    """

    def __init__(self, config: str | HRNetSpec = "hrnet18s_128", num_classes: int = 2) -> None:
        super().__init__()
        if isinstance(config, str):
            if config not in RELEASED_CONFIGS:
                raise ValueError(f"BPRRefineNet: `config` must be one of "
                                 f"{sorted(RELEASED_CONFIGS)} or an HRNetSpec, got {config!r}")
            config = RELEASED_CONFIGS[config]
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"BPRRefineNet: `num_classes` must be a positive int, "
                             f"got {num_classes!r}")
        self.config = config
        self.input_size = int(config.input_size)
        self.backbone = HRNetRefine(config.stages)
        self.decode_head = FCNHead(self.backbone.out_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.decode_head.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.decode_head.conv_seg.bias)

    def _check(self, image: Tensor, mask: Tensor) -> Tensor:
        if image.dim() != 4 or image.size(1) != 3:
            raise ValueError(f"BPRRefineNet: `image` must be [P, 3, H, W], got "
                             f"{list(image.shape)}")
        if mask.dim() == 3:
            mask = mask.unsqueeze(1)
        if mask.dim() != 4 or mask.size(1) != 1 or mask.shape[-2:] != image.shape[-2:] \
                or mask.size(0) != image.size(0):
            raise ValueError(f"BPRRefineNet: `mask` must be [P, 1, H, W] matching `image` "
                             f"{list(image.shape)}, got {list(mask.shape)}")
        return mask.to(image.dtype)

    def decode(self, image: Tensor, mask: Tensor) -> Tensor:
        """The decode head's logits ``[P, num_classes, ceil(ceil(s / 2) / 2), ...]``."""
        mask = self._check(image, mask)
        return self.decode_head(self.backbone(image, mask))

    def forward(self, image: Tensor, mask: Tensor) -> Tensor:
        """Logits ``[P, num_classes, H, W]`` at the input size (``encode_decode``)."""
        return _resize(self.decode(image, mask), image.shape[-2:])


def load_released_checkpoint(net: nn.Module,
                             checkpoint: str | os.PathLike | Mapping[str, Any],
                             strict: bool = True) -> nn.Module:
    """Load a released BPR checkpoint (or any state dict) into ``net``.

    Args:
        net: a :class:`BPRRefineNet` of the checkpoint's configuration.
        checkpoint: a path to the released ``.pth`` file (read with
            ``torch.load(weights_only=True)`` on the CPU), or the loaded object: an mmcv
            checkpoint ``{"state_dict": ..., "meta": ...}`` or a bare state dict. A
            ``module.`` prefix (saved from a data-parallel wrapper) is removed.
        strict: passed to ``load_state_dict``.

    Returns:
        ``net``.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"load_released_checkpoint: `checkpoint` must be a path or a mapping, "
                        f"got {type(checkpoint).__name__}")
    state = checkpoint.get("state_dict", checkpoint)
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    net.load_state_dict(state, strict=strict)
    return net
