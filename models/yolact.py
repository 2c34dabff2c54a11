"""YOLACT (Bolya et al., ICCV 2019) at parity with the released code (dbolya/yolact), on
segops' ops (docs/models.md).

The network is ordinary PyTorch with the release's module names, so a released checkpoint
(``yolact_base_54_800000.pth``, ...) loads with ``strict=True`` (:meth:`Yolact.load_weights`)
and gives the release's raw predictions bit for bit. segops accelerates the two steps
around it:

* :class:`~segops.models.yolact_detect.Detect` (the release's ``Detect`` + ``postprocess``)
  runs Fast NMS with :func:`segops.fast_nms` (cross-class or traditional NMS as options) and
  assembles the kept masks at image size with the fused :func:`segops.assemble_masks`;
* :class:`~segops.models.yolact_loss.YolactLoss` (the release's ``MultiBoxLoss``) computes
  the lincomb mask loss on the differentiable :func:`segops.assemble_masks`.

Architecture (``yolact_base_config``; :mod:`~segops.models.yolact_config` for the others):

* backbone: ResNet-101 C3, C4, C5 (:class:`~segops.models.yolact_backbone.YolactResNet`),
  or any module with a ``channels`` attribute (3 ints) returning ``[C3, C4, C5]``;
* ``fpn``: P3-P5 (1x1 ``lat_layers``, bilinear top-down, 3x3 ``pred_layers`` + ReLU), P6, P7
  by stride-2 3x3 ``downsample_layers`` on P5 then P6, no ReLU. As in the release the
  lateral and prediction convs are stored top-down: ``lat_layers[0]`` reads C5;
* ``proto_net`` on P3: 3 x (conv3x3 + ReLU), bilinear x2 + ReLU, conv3x3 + ReLU, conv1x1 to
  k = 32, then ReLU; ``[B, H/4, W/4, k]`` (138x138x32 at 550x550);
* ``prediction_layers[0]``, shared by every level (``share_prediction_module``):
  ``upfeature`` (conv3x3 + ReLU), then 3x3 ``bbox_layer`` (4), ``conf_layer``
  (``num_classes``, background at 0) and ``mask_layer`` (k, through tanh), 3 anchors per
  location. The release's four parameter-free children that borrow these layers have no
  state, so one module gives the same ``state_dict``;
* ``semantic_seg_conv``: 1x1 conv on P3 to ``num_classes - 1`` logits (training only);
* anchors: :func:`make_priors` (19248 at 550x550, 30963 at 700x700).
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import BasicBlock, ResNetBackbone
from .yolact_backbone import Bottleneck, YolactResNet
from .yolact_boxes import box_iou, decode, encode, make_priors, match, point_form
from .yolact_config import CONFIGS, YolactConfig, clean_state_dict
from .yolact_detect import Detect
from .yolact_loss import YolactLoss, YolactMaskLoss

__all__ = [
    "BasicBlock", "ResNetBackbone", "Bottleneck", "YolactResNet",
    "YolactConfig", "CONFIGS", "clean_state_dict",
    "FPN", "PredictionHead", "Yolact", "yolact_base", "yolact_resnet50", "yolact_im700",
    "Detect", "YolactLoss", "YolactMaskLoss",
    "make_priors", "decode", "encode", "point_form", "box_iou", "match",
]


class FPN(nn.Module):
    """YOLACT's FPN: ``[C3, C4, C5] -> [P3, P4, P5, P6, P7]``.

    Top-down: ``x = lat(C5)``; then ``x = interpolate(x, size of C_i, bilinear,
    align_corners=False) + lat(C_i)``; ``P_i = ReLU(pred(x_i))``; ``P6 = down0(P5)``,
    ``P7 = down1(P6)`` (stride-2 3x3, no ReLU). ``lat_layers[j]`` and ``pred_layers[j]``
    serve level ``n - 1 - j`` (the release's storage order).

    Args:
        in_channels: channels of C3, C4, C5.
        channels: FPN width (256).
        num_downsample: extra levels above P5 (2).
    """

    def __init__(self, in_channels: list[int], channels: int = 256,
                 num_downsample: int = 2) -> None:
        super().__init__()
        self.lat_layers = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in reversed(in_channels))
        self.pred_layers = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)
        self.downsample_layers = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1, stride=2) for _ in range(num_downsample))

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        n = len(feats)
        outs: list[Tensor] = list(feats)
        x: Tensor | None = None
        for i, lat in enumerate(self.lat_layers):
            j = n - 1 - i
            y = lat(feats[j])
            x = y if x is None else F.interpolate(
                x, size=feats[j].shape[-2:], mode="bilinear", align_corners=False) + y
            outs[j] = x
        for i, pred in enumerate(self.pred_layers):
            j = n - 1 - i
            outs[j] = F.relu(pred(outs[j]))
        for down in self.downsample_layers:
            outs.append(down(outs[-1]))
        return outs


def _proto_net(in_channels: int, channels: int, num_prototypes: int) -> nn.Sequential:
    """The release's ``make_net(mask_proto_net, include_last_relu=False)``: indices 0, 2, 4,
    8, 10 are the convs (6 is the bilinear x2 upsample, odd indices ReLUs)."""
    def conv(i: int, o: int, k: int) -> nn.Conv2d:
        return nn.Conv2d(i, o, k, padding=k // 2)

    return nn.Sequential(
        conv(in_channels, channels, 3), nn.ReLU(inplace=True),
        conv(channels, channels, 3), nn.ReLU(inplace=True),
        conv(channels, channels, 3), nn.ReLU(inplace=True),
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.ReLU(inplace=True),
        conv(channels, channels, 3), nn.ReLU(inplace=True),
        conv(channels, num_prototypes, 1),
    )


class PredictionHead(nn.Module):
    """The prediction module shared by every FPN level.

    ``[B, C, h, w] -> (loc [B, h*w*A, 4], conf [B, h*w*A, num_classes] logits,
    coeffs [B, h*w*A, k] in (-1, 1))``, ``A`` anchors per location, ordered
    (row, column, anchor) like the priors.
    """

    def __init__(self, in_channels: int, num_classes: int, num_anchors: int = 3,
                 num_prototypes: int = 32, channels: int | None = None) -> None:
        super().__init__()
        channels = in_channels if channels is None else channels
        self.num_classes = num_classes
        self.num_prototypes = num_prototypes
        self.upfeature = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1),
                                       nn.ReLU(inplace=True))
        self.bbox_layer = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        self.conf_layer = nn.Conv2d(channels, num_anchors * num_classes, 3, padding=1)
        self.mask_layer = nn.Conv2d(channels, num_anchors * num_prototypes, 3, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b = x.shape[0]
        x = self.upfeature(x)

        def flat(t: Tensor, k: int) -> Tensor:
            return t.permute(0, 2, 3, 1).reshape(b, -1, k)

        return (flat(self.bbox_layer(x), 4), flat(self.conf_layer(x), self.num_classes),
                torch.tanh(flat(self.mask_layer(x), self.num_prototypes)))


class Yolact(nn.Module):
    """YOLACT, the release's architecture and parameter names.

    Args:
        num_classes: classes of the conf head, background (index 0) included: 81 for COCO.
        backbone: a module mapping ``[B, 3, H, W]`` to ``[C3, C4, C5]`` (strides 8, 16, 32)
            with a ``channels`` attribute (3 ints). Default: ``YolactResNet(
            config.backbone_layers)``, or the small :class:`ResNetBackbone` when
            ``config.backbone_layers`` is ``None``.
        config: a :class:`YolactConfig` (default: ``yolact_base``'s).
        detect: the post-processing :meth:`predict` uses (default: :class:`Detect` with
            the config's settings).
        **overrides: :class:`YolactConfig` fields to change, e.g. ``fpn_channels=32``.

    ``forward(images)`` returns the raw predictions (see :meth:`forward`); :meth:`predict`
    runs :class:`Detect` on them. Non-backbone convs get the release's ``init_weights``
    (xavier-uniform weights, zero biases); the backbone keeps its own initialisation.
    """

    def __init__(self, num_classes: int = 81, backbone: nn.Module | None = None,
                 config: YolactConfig | None = None, detect: Detect | None = None,
                 **overrides: Any) -> None:
        super().__init__()
        config = (CONFIGS["yolact_base"] if config is None else config).replace(**overrides)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError("Yolact: `num_classes` must be an int >= 2 (background "
                             f"included), got {num_classes!r}")
        if len(config.scales) < 3 or len(config.aspect_ratios) < 1:
            raise ValueError("Yolact: `scales` needs one entry per level P3.. (at least 3), "
                             f"got {config.scales}")
        self.config = config
        self.num_classes = num_classes
        if backbone is None:
            backbone = (ResNetBackbone() if config.backbone_layers is None
                        else YolactResNet(config.backbone_layers))
        self.backbone = backbone
        in_channels = list(getattr(self.backbone, "channels", []))
        if len(in_channels) != 3:
            raise ValueError("Yolact: the backbone needs a `channels` attribute of 3 ints "
                             f"(C3, C4, C5), got {in_channels!r}")
        width = config.fpn_channels
        # registration order = the release's state_dict order
        self.proto_net = _proto_net(width, config.proto_channels or width, config.num_prototypes)
        self.fpn = FPN(in_channels, width, config.num_downsample)
        self.prediction_layers = nn.ModuleList([PredictionHead(
            width, num_classes, len(config.aspect_ratios), config.num_prototypes,
            config.head_channels or width)])
        if config.semantic_segmentation:
            self.semantic_seg_conv = nn.Conv2d(width, num_classes - 1, 1)
        self.detect = Detect.from_config(config) if detect is None else detect
        self._prior_cache: dict[tuple, Tensor] = {}
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d) and not name.startswith("backbone."):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def priors(self, feature_sizes: list[tuple[int, int]], device: torch.device) -> Tensor:
        """Cached :func:`make_priors` for these level sizes: ``Tensor[N, 4]`` float32. Not
        cached while tracing (torch.compile / torch.export): a traced (fake) tensor must not
        outlive the trace and come back from eager calls."""
        key = (tuple(feature_sizes), str(device))
        if torch.compiler.is_compiling():
            c = self.config
            return make_priors(feature_sizes, c.scales, c.aspect_ratios, c.max_size, device)
        if key not in self._prior_cache:
            c = self.config
            self._prior_cache[key] = make_priors(feature_sizes, c.scales, c.aspect_ratios,
                                                 c.max_size, device)
        return self._prior_cache[key]

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Raw predictions for normalised ``images [B, 3, H, W]`` (the release's input).

        Returns a dict, ``N`` anchors over all levels (19248 at 550x550):
            loc: ``[B, N, 4]`` box regressions (see :func:`decode`);
            conf: ``[B, N, num_classes]`` class logits, background at 0 (the release
                applies the softmax inside the eval-mode forward; :class:`Detect` does here);
            coeffs: ``[B, N, k]`` mask coefficients in (-1, 1) (the release's ``mask``);
            priors: ``[N, 4]`` anchors (cx, cy, w, h) relative;
            protos: ``[B, H/4, W/4, k]`` ReLU'd prototypes (the release's ``proto``);
            segm: in training mode with ``semantic_seg_conv``, ``[B, num_classes - 1,
                H/8, W/8]`` semantic logits on P3.
        """
        pyramid = self.fpn(list(self.backbone(images)))
        protos = F.relu(self.proto_net(pyramid[0])).permute(0, 2, 3, 1).contiguous()
        head = self.prediction_layers[0]
        outs = [head(p) for p in pyramid]
        sizes = [(int(p.shape[-2]), int(p.shape[-1])) for p in pyramid]
        preds = {
            "loc": torch.cat([o[0] for o in outs], 1),
            "conf": torch.cat([o[1] for o in outs], 1),
            "coeffs": torch.cat([o[2] for o in outs], 1),
            "priors": self.priors(sizes, images.device),
            "protos": protos,
        }
        if self.training and hasattr(self, "semantic_seg_conv"):
            preds["segm"] = self.semantic_seg_conv(pyramid[0])
        return preds

    @torch.no_grad()
    def predict(self, images: Tensor, image_size: tuple[int, int] | None = None,
                **detect_kwargs: Any) -> list[dict[str, Tensor]]:
        """Inference: :meth:`forward`, then :class:`Detect` at ``image_size`` (default: the
        input's size; the release's ``postprocess(w, h)`` takes the original image's)."""
        preds = self(images)
        size = tuple(images.shape[-2:]) if image_size is None else image_size
        return self.detect(preds, size, **detect_kwargs)

    def load_weights(self, checkpoint: str | PathLike | Mapping[str, Tensor]) -> None:
        """Load a released checkpoint (a file or a state dict) with ``strict=True``, after
        the release's ``load_weights`` key clean-up (:func:`clean_state_dict`)."""
        if not isinstance(checkpoint, Mapping):
            checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
        self.load_state_dict(clean_state_dict(checkpoint, self.config.num_downsample),
                             strict=True)


def _build(name: str, num_classes: int, pretrained: str | PathLike | Mapping | None,
           **kwargs: Any) -> Yolact:
    model = Yolact(num_classes, config=CONFIGS[name], **kwargs)
    if pretrained is not None:
        model.load_weights(pretrained)
    return model


def yolact_base(num_classes: int = 81, pretrained: str | PathLike | Mapping | None = None,
                **kwargs: Any) -> Yolact:
    """``yolact_base_config``: ResNet-101, 550x550 (``yolact_base_54_800000.pth``).

    ``pretrained``: a released checkpoint file or state dict to load (``strict=True``);
    ``kwargs`` go to :class:`Yolact` (``backbone``, ``detect``, config overrides)."""
    return _build("yolact_base", num_classes, pretrained, **kwargs)


def yolact_resnet50(num_classes: int = 81, pretrained: str | PathLike | Mapping | None = None,
                    **kwargs: Any) -> Yolact:
    """``yolact_resnet50_config``: ResNet-50, 550x550 (``yolact_resnet50_54_800000.pth``).
    Arguments as :func:`yolact_base`."""
    return _build("yolact_resnet50", num_classes, pretrained, **kwargs)


def yolact_im700(num_classes: int = 81, pretrained: str | PathLike | Mapping | None = None,
                 **kwargs: Any) -> Yolact:
    """``yolact_im700_config``: ResNet-101, 700x700, anchor scales 30..488
    (``yolact_im700_54_800000.pth``). Arguments as :func:`yolact_base`."""
    return _build("yolact_im700", num_classes, pretrained, **kwargs)
