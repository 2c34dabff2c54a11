"""roi family: roi_align, roi_pool on Mask R-CNN's RoI heads.

1000 RoIs on P2 (1/4) and P4 (1/16) of an 800x1216 image, 256 channels; with --quick 32
RoIs on a quarter-size image, 16 channels. Implementations: segops, torchvision, reference.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Dict

from .inputs import backward_only, random_boxes, random_features
from .registry import Ctx, Fn, op_impls, register

# FPN levels of an 800x1216 Mask R-CNN input: name -> stride.
_FPN_LEVELS = {"P2": 4, "P4": 16}


def _roi_sizes(ctx: Ctx, level: str) -> Dict[str, Any]:
    """Sizes for one FPN level: full Mask R-CNN sizes, or tiny ones with --quick."""
    stride = _FPN_LEVELS[level]
    if ctx.quick:
        # A quarter-size image: P2 is 50x76, P4 is 13x19; 32 RoIs, 16 channels.
        image_hw, size_range, num_rois, channels = (200, 304), (4.0, 150.0), 32, 16
    else:
        image_hw, size_range, num_rois, channels = (800, 1216), (16.0, 600.0), 1000, 256
    feat_hw = (math.ceil(image_hw[0] / stride), math.ceil(image_hw[1] / stride))
    return dict(shape=(1, channels, *feat_hw), spatial_scale=1.0 / stride, image_hw=image_hw,
                size_range=size_range, num_rois=num_rois)


def _roi_case_name(level: str, out: int, extra: str, pass_: str) -> Callable[[Ctx], str]:
    def name(ctx: Ctx) -> str:
        sz = _roi_sizes(ctx, level)
        _, c, h, w = sz["shape"]
        return f"{level} {h}x{w} C{c} K{sz['num_rois']} out{out}{extra} {pass_}"

    return name


def _make_roi_setup(op: str, level: str, out: int, kwargs: Dict[str, Any], backward: bool):
    def setup(ctx: Ctx) -> Dict[str, Any]:
        sz = _roi_sizes(ctx, level)
        boxes = random_boxes(sz["num_rois"], sz["image_hw"], sz["size_range"])
        boxes = boxes.to(ctx.device, ctx.dtype)
        x = random_features(sz["shape"], ctx)
        scale = sz["spatial_scale"]
        impls: Dict[str, Any] = {}
        for name, fn in op_impls(ctx, op).items():

            def fwd(inp, fn=fn):
                return fn(inp, boxes, out, spatial_scale=scale, **kwargs)

            if backward:
                prep = functools.partial(backward_only, fwd, x)
                if name == "segops" and ctx.deterministic:
                    impls["segops"] = Fn(prepare=prep, deterministic=False)
                    impls["segops-deterministic"] = Fn(prepare=prep, deterministic=True)
                else:
                    impls[name] = Fn(prepare=prep)
            else:
                impls[name] = lambda fwd=fwd: fwd(x)
        return impls

    return setup


def register_cases() -> None:
    """Mask R-CNN RoI heads: 1000 RoIs on P2 (1/4) and P4 (1/16) of an 800x1216 image."""
    for level in ("P2", "P4"):
        for out in (7, 14):
            # torchvision style (sampling_ratio=2, aligned=False) and
            # detectron2 style (adaptive sampling_ratio=0, aligned=True).
            for sr, aligned in ((2, False), (0, True)):
                kwargs = dict(sampling_ratio=sr, aligned=aligned)
                extra = f" sr{sr}" + (" aligned" if aligned else "")
                for pass_ in ("fwd", "bwd-only"):
                    register(
                        "roi_align",
                        _roi_case_name(level, out, extra, pass_),
                        _make_roi_setup("roi_align", level, out, kwargs, pass_ != "fwd"),
                        backward=pass_ != "fwd", level=level, output_size=out, **kwargs,
                    )
    for level in ("P2", "P4"):
        register(
            "roi_pool",
            _roi_case_name(level, 7, "", "fwd"),
            _make_roi_setup("roi_pool", level, 7, {}, False),
            level=level, output_size=7,
        )
