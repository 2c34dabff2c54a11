"""`MultiScaleRoIAlign`: torchvision's FPN pooler module on one `multilevel_roi_align` launch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from . import _args
from .ops.roi import multilevel_roi_align

_OP = "MultiScaleRoIAlign"


def infer_scales(features: Sequence[Tensor], image_shapes: Sequence[Sequence[int]]) -> list[float]:
    """The spatial scale of each feature map, as torchvision's ``MultiScaleRoIAlign`` infers it:
    ``2 ** round(log2(H_l / H))`` with ``H_l`` the map's height and ``H`` the largest image
    height in ``image_shapes`` (the log in float32, rounding half to even). Widths are not
    consulted, as in torchvision."""
    if not isinstance(image_shapes, (list, tuple)) or len(image_shapes) == 0:
        raise ValueError(
            f"{_OP}: `image_shapes` must be a non-empty list of (height, width), "
            f"got {image_shapes!r}"
        )
    for i, s in enumerate(image_shapes):
        if len(s) != 2 or not all(int(v) > 0 for v in s):
            raise ValueError(
                f"{_OP}: `image_shapes[{i}]` must be a (height, width) of positive ints, got {s!r}"
            )
    height = max(int(s[0]) for s in image_shapes)
    scales = []
    for f in features:
        ratio = float(f.shape[-2]) / float(height)
        scales.append(2.0 ** float(torch.tensor(ratio, dtype=torch.float32).log2().round()))
    return scales


class MultiScaleRoIAlign(nn.Module):
    """torchvision's ``MultiScaleRoIAlign`` (same constructor, forward and results), pooling
    every RoI from its FPN level in one :func:`segops.multilevel_roi_align` launch instead
    of one ``roi_align`` per level.

    Args:
        featmap_names: the keys of the feature maps to pool from. They are taken in the
            order of the dict passed to :meth:`forward` (as torchvision does), finest first.
        output_size: ``(h, w)`` or an int for a square output.
        sampling_ratio: as :func:`segops.roi_align`.
        canonical_scale, canonical_level: the FPN level mapper's (paper's 224 and k0 = 4):
            a ``canonical_scale``-sized RoI is pooled from level ``canonical_level``.

    The scales are inferred on the first :meth:`forward` from the feature map and image
    heights (see :func:`infer_scales`) and kept in ``self.scales`` for later calls, as
    torchvision does. The maps must be consecutive pyramid levels (scales ``2**-k``,
    ``2**-(k+1)``, ...), else :meth:`forward` raises (torchvision would silently pool the
    RoIs of a missing level as zeros). Level assignment equals torchvision's except on the
    knife edge described in :func:`segops.multilevel_roi_align`.
    """

    def __init__(
        self,
        featmap_names: list[str],
        output_size: int | tuple[int, int] | list[int],
        sampling_ratio: int,
        *,
        canonical_scale: int = 224,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        if (
            not isinstance(featmap_names, (list, tuple))
            or len(featmap_names) == 0
            or not all(isinstance(n, str) for n in featmap_names)
        ):
            raise TypeError(
                f"{_OP}: `featmap_names` must be a non-empty list of str, got {featmap_names!r}"
            )
        if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int):
            raise TypeError(f"{_OP}: `sampling_ratio` must be an int, got {sampling_ratio!r}")
        self.featmap_names = list(featmap_names)
        self.output_size = _args.size_pair(_OP, "output_size", output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.scales: list[float] | None = None

    def forward(
        self,
        x: Mapping[str, Tensor],
        boxes: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> Tensor:
        """
        Args:
            x: feature maps by name, each ``Tensor[N, C, H_l, W_l]`` (same N, C, dtype and
                device); only those named in ``featmap_names`` are used.
            boxes: one ``Tensor[L_i, 4]`` of (x1, y1, x2, y2) per image, in image pixels.
            image_shapes: ``(height, width)`` of each image before the backbone (the
                padded batch may be larger); used to infer the scales on the first call.

        Returns:
            ``Tensor[K, C, h, w]``, ``K = sum(L_i)``, in the features' dtype.
        """
        if not isinstance(x, Mapping):
            raise TypeError(f"{_OP}: `x` must be a dict of feature maps, got {type(x).__name__}")
        features = [v for k, v in x.items() if k in self.featmap_names]
        if not features:
            raise ValueError(
                f"{_OP}: `x` holds none of the feature maps {self.featmap_names}, "
                f"got keys {list(x.keys())}"
            )
        if self.scales is None:
            scales = infer_scales(features, image_shapes)
            first = scales[0]
            if any(s != first * 0.5**i for i, s in enumerate(scales)):
                raise ValueError(
                    f"{_OP}: the feature maps must be consecutive pyramid levels, each half the "
                    f"size of the previous one; inferred scales {scales} for the maps "
                    f"{[k for k in x if k in self.featmap_names]}"
                )
            self.scales = scales
        if len(self.scales) != len(features):
            raise ValueError(
                f"{_OP}: got {len(features)} feature maps, but the scales inferred on the first "
                f"call are for {len(self.scales)}"
            )
        return multilevel_roi_align(
            features,
            boxes,
            self.output_size,
            self.scales,
            self.sampling_ratio,
            aligned=False,
            canonical_scale=self.canonical_scale,
            canonical_level=self.canonical_level,
        )

    def extra_repr(self) -> str:
        return (
            f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}"
        )
