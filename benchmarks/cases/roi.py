"""roi family: roi_align, roi_pool and multilevel_roi_align on Mask R-CNN's RoI heads.

roi_align / roi_pool: 1000 RoIs on P2 (1/4) and P4 (1/16) of an 800x1216 image, 256
channels. multilevel_roi_align: 1000 RoIs (sides log-uniform in 32..800 px: about 31/39/25/5%
on P2..P5) over P2..P5 (200x304 .. 25x38), 256 channels, in mode assign (Mask R-CNN's box
and mask heads) and, at output 7, mode all (PANet). With --quick: 32 RoIs on a quarter-size
image, 16 channels (multilevel: canonical_scale 56 keeps the spread over the levels).
Implementations: segops, torchvision (roi_align, roi_pool; ``MultiScaleRoIAlign`` for
multilevel mode assign with aligned=False, the only form it has), reference (pure PyTorch,
a Python loop over RoIs: seconds a call at full size, so only ``--reference all`` times it).

Memory floors (``s``: the dtype's size; the RoIs ``[K, 5]`` in the dtype count too):

- forward: the feature map(s) read once (``N C H W s``, every level for multilevel; 1000
  RoIs cover nearly all of it), the output written once (``K C oh ow s``; mode all:
  ``L K C oh ow s``); roi_pool also writes its int64 argmax (``8 K C oh ow``).
- ``bwd-only``: the output gradient read once (``K C oh ow s``; roi_pool also reads the
  argmax), the input gradient written once (``N C H W s``, every level).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Dict

import torch

from .inputs import backward_only, random_boxes, random_features
from .registry import Ctx, Fn, nbytes, op_impls, register

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


def _add_timed(impls: Dict[str, Any], ctx: Ctx, name: str, fwd: Callable, inp,
               backward: bool) -> None:
    """impls[name] times ``fwd(inp)``, or with ``backward`` only its autograd.grad (segops
    also as segops-deterministic under --deterministic)."""
    if not backward:
        impls[name] = lambda: fwd(inp)
        return
    prep = functools.partial(backward_only, fwd, inp)
    if name == "segops" and ctx.deterministic:
        impls["segops"] = Fn(prepare=prep, deterministic=False)
        impls["segops-deterministic"] = Fn(prepare=prep, deterministic=True)
    else:
        impls[name] = Fn(prepare=prep)


def _roi_case_name(level: str, out: int, extra: str, pass_: str) -> Callable[[Ctx], str]:
    def name(ctx: Ctx) -> str:
        sz = _roi_sizes(ctx, level)
        _, c, h, w = sz["shape"]
        return f"{level} {h}x{w} C{c} K{sz['num_rois']} out{out}{extra} {pass_}"

    return name


def _roi_floor(op: str, level: str, out: int, backward: bool):
    """The memory floor of a roi_align / roi_pool case (see the module docstring)."""

    def floor(ctx: Ctx, result) -> int:
        sz = _roi_sizes(ctx, level)
        features = (sz["shape"], ctx.dtype)
        rois = ((sz["num_rois"], 5), ctx.dtype)
        pooled = (sz["num_rois"], sz["shape"][1], out, out)
        argmax = (pooled, torch.int64) if op == "roi_pool" else ((0,), torch.int64)
        return nbytes(features, rois, (pooled, ctx.dtype), argmax)  # the same both ways

    return floor


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

            _add_timed(impls, ctx, name, fwd, x, backward)
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
                    bwd = pass_ != "fwd"
                    register(
                        "roi_align",
                        _roi_case_name(level, out, extra, pass_),
                        _make_roi_setup("roi_align", level, out, kwargs, bwd),
                        backward=bwd, floor=_roi_floor("roi_align", level, out, bwd),
                        slow_reference=True, level=level, output_size=out, **kwargs,
                    )
    for level in ("P2", "P4"):
        for pass_ in ("fwd", "bwd-only"):
            bwd = pass_ != "fwd"
            register(
                "roi_pool",
                _roi_case_name(level, 7, "", pass_),
                _make_roi_setup("roi_pool", level, 7, {}, bwd),
                backward=bwd, floor=_roi_floor("roi_pool", level, 7, bwd),
                slow_reference=True, level=level, output_size=7,
            )
    register_multilevel_cases()


# --------------------------------------------------------------------------------------
# multilevel_roi_align: P2..P5 of an 800x1216 image
# --------------------------------------------------------------------------------------

_ML_STRIDES = (4, 8, 16, 32)


def _ml_sizes(ctx: Ctx) -> Dict[str, Any]:
    if ctx.quick:  # a quarter-size image: canonical_scale / 4 keeps the level spread
        image_hw, size_range, num_rois, channels = (200, 304), (8.0, 200.0), 32, 16
    else:
        image_hw, size_range, num_rois, channels = (800, 1216), (32.0, 800.0), 1000, 256
    canonical = 224.0 * image_hw[0] / 800
    shapes = [(1, channels, math.ceil(image_hw[0] / s), math.ceil(image_hw[1] / s))
              for s in _ML_STRIDES]
    return dict(shapes=shapes, image_hw=image_hw, size_range=size_range, num_rois=num_rois,
                canonical_scale=canonical)


def _ml_case_name(out: int, extra: str, pass_: str) -> Callable[[Ctx], str]:
    def name(ctx: Ctx) -> str:
        sz = _ml_sizes(ctx)
        hw = ",".join(f"{h}x{w}" for _, _, h, w in sz["shapes"])
        return f"P2-P5 {hw} C{sz['shapes'][0][1]} K{sz['num_rois']} out{out}{extra} {pass_}"

    return name


def _torchvision_multiscale(ctx: Ctx, out: int, sampling_ratio: int, canonical: float,
                            image_hw) -> Any:
    """A function of (features, boxes [K, 5]) running torchvision's MultiScaleRoIAlign, or
    None when torchvision is not there."""
    if ctx.torchvision is None or not ctx.wants("torchvision"):
        return None
    names = [f"p{i + 2}" for i in range(len(_ML_STRIDES))]
    pooler = ctx.torchvision.ops.MultiScaleRoIAlign(names, out, sampling_ratio,
                                                    canonical_scale=canonical)

    def fn(xs, boxes):
        return pooler(dict(zip(names, xs)), [boxes[:, 1:]], [image_hw])

    return fn


def _ml_floor(out: int, mode: str):
    """The memory floor of a multilevel_roi_align case (see the module docstring)."""

    def floor(ctx: Ctx, result) -> int:
        sz = _ml_sizes(ctx)
        k, c = sz["num_rois"], sz["shapes"][0][1]
        pooled = (k, c, out, out) if mode == "assign" else (len(sz["shapes"]), k, c, out, out)
        levels = [(shape, ctx.dtype) for shape in sz["shapes"]]
        return nbytes(*levels, ((k, 5), ctx.dtype), (pooled, ctx.dtype))

    return floor


def _make_ml_setup(out: int, kwargs: Dict[str, Any], mode: str, backward: bool):
    def setup(ctx: Ctx) -> Dict[str, Any]:
        sz = _ml_sizes(ctx)
        boxes = random_boxes(sz["num_rois"], sz["image_hw"], sz["size_range"])
        boxes = boxes.to(ctx.device, ctx.dtype)
        xs = [random_features(shape, ctx, seed=1 + i) for i, shape in enumerate(sz["shapes"])]
        scales = [1.0 / s for s in _ML_STRIDES]
        fns: Dict[str, Callable] = {}
        for name, fn in op_impls(ctx, "multilevel_roi_align", torchvision=False).items():
            fns[name] = functools.partial(fn, output_size=out, spatial_scales=scales,
                                          canonical_scale=sz["canonical_scale"], mode=mode,
                                          **kwargs)
        if mode == "assign" and not kwargs["aligned"]:
            tv = _torchvision_multiscale(ctx, out, kwargs["sampling_ratio"],
                                         sz["canonical_scale"], sz["image_hw"])
            if tv is not None:
                fns["torchvision"] = tv
        impls: Dict[str, Any] = {}
        for name, fn in fns.items():

            def fwd(inp, fn=fn):
                return fn(inp, boxes)

            _add_timed(impls, ctx, name, fwd, xs, backward)
        return impls

    return setup


def register_multilevel_cases() -> None:
    """Mask R-CNN's box head (7, sampling 2) and mask head (14, adaptive, aligned) over
    P2..P5 in mode assign, forward and backward; PANet's mode all at 7."""
    cases = [(7, 2, False, "assign"), (14, 0, True, "assign"), (7, 2, False, "all")]
    for out, sr, aligned, mode in cases:
        kwargs = dict(sampling_ratio=sr, aligned=aligned)
        extra = f" sr{sr}" + (" aligned" if aligned else "") + f" {mode}"
        for pass_ in ("fwd", "bwd-only"):
            register(
                "multilevel_roi_align",
                _ml_case_name(out, extra, pass_),
                _make_ml_setup(out, kwargs, mode, pass_ != "fwd"),
                backward=pass_ != "fwd", floor=_ml_floor(out, mode), slow_reference=True,
                output_size=out, mode=mode, **kwargs,
            )
