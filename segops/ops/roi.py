"""RoI pooling: `roi_align`, `roi_pool` and `multilevel_roi_align` (docs/ops/roi.md), drop-in for
torchvision's `roi_align`, `roi_pool` and `MultiScaleRoIAlign`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .. import _args
from ._library import fake, register_autocast

__all__ = ["RoIAlign", "RoIPool", "multilevel_roi_align", "roi_align", "roi_pool"]

BoxesType = Tensor | Sequence[Tensor]


def convert_boxes_to_roi_format(boxes: BoxesType, op: str = "roi_align") -> Tensor:
    """`list[Tensor[L_i, 4]]` -> `Tensor[K, 5]` of (batch_index, x1, y1, x2, y2); a
    `Tensor[K, 5]` is returned as is (its shape is checked by the op)."""
    if isinstance(boxes, Tensor):
        return boxes
    if not isinstance(boxes, (list, tuple)):
        raise TypeError(
            f"{op}: `boxes` must be a Tensor[K, 5] or a list of Tensor[L, 4], "
            f"got {type(boxes).__name__}"
        )
    boxes = _args.tensors(op, "boxes", boxes)
    for i, b in enumerate(boxes):
        if b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(
                f"{op}: `boxes[{i}]` must be [L, 4] (x1, y1, x2, y2), got shape {tuple(b.shape)}"
            )
        if b.device != boxes[0].device:
            raise ValueError(
                f"{op}: `boxes[{i}]` must be on the device of `boxes[0]` ({boxes[0].device}), "
                f"got {b.device}"
            )
    if len(boxes) == 0:
        return torch.zeros((0, 5))
    dtype = boxes[0].dtype
    rows = [
        torch.cat([torch.full_like(b[:, :1], i, dtype=dtype), b.to(dtype)], dim=1)
        for i, b in enumerate(boxes)
    ]
    return torch.cat(rows, dim=0)


def _rois(op: str, input: Tensor | None, boxes: BoxesType) -> Tensor:
    """The boxes as rois; an empty list takes the input's device and dtype."""
    rois = convert_boxes_to_roi_format(boxes, op)
    if isinstance(boxes, (list, tuple)) and len(boxes) == 0 and input is not None:
        rois = rois.to(device=input.device, dtype=input.dtype)
    return rois


def roi_align(
    input: Tensor,
    boxes: BoxesType,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign (Mask R-CNN), torchvision's signature, defaults and numerics.

    Args:
        input: `Tensor[N, C, H, W]`, float32/float64/float16/bfloat16, CPU or CUDA.
        boxes: `Tensor[K, 5]` rows of (batch_index, x1, y1, x2, y2), or a list of
            `Tensor[L_i, 4]`, one per image, in input-image coordinates.
        output_size: `(h, w)` or an int for a square output.
        spatial_scale: maps box coordinates to `input`'s (e.g. 1/4 for FPN P2).
        sampling_ratio: samples per bin along each axis; `<= 0` means
            `ceil(roi_size / output_size)` per RoI, as torchvision.
        aligned: shift boxes by -0.5 pixel (pixel centres at i + 0.5), as detectron2.

    Returns:
        `Tensor[K, C, h, w]` of `input`'s dtype.

    Beyond torchvision: half types compute box geometry and accumulate in float32; a
    batch index that is not a whole number in `[0, N)` raises a ValueError on the CPU, and
    on CUDA trips a device-side assertion (PyTorch's convention for bad indices on CUDA:
    reported as "device-side assert triggered" by the next call that waits for the GPU,
    after which the CUDA context is unusable), so that the op never waits for the host;
    nothing is read out of bounds either way; a box with a NaN/inf coordinate pools zeros;
    under `torch.use_deterministic_algorithms(True)` the backward is deterministic on
    CUDA too (a gather instead of atomics) rather than raising.
    """
    op = "roi_align"
    input = _args.tensor(op, "input", input)
    h, w = _args.size_pair(op, "output_size", output_size)
    return torch.ops.segops.roi_align(
        input, _rois(op, input, boxes), _args.real(op, "spatial_scale", spatial_scale), h, w,
        _args.integer(op, "sampling_ratio", sampling_ratio),
        _args.boolean(op, "aligned", aligned),
    )


def roi_pool(
    input: Tensor,
    boxes: BoxesType,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """RoIPool (Fast R-CNN), torchvision semantics: corners rounded after scaling,
    bins quantised by floor/ceil, max pooled (an empty bin gives 0).

    Args and returns as :func:`roi_align`.
    """
    op = "roi_pool"
    input = _args.tensor(op, "input", input)
    h, w = _args.size_pair(op, "output_size", output_size)
    out, _ = torch.ops.segops.roi_pool(
        input, _rois(op, input, boxes), _args.real(op, "spatial_scale", spatial_scale), h, w
    )
    return out


_MULTILEVEL = "multilevel_roi_align"


def _level_areas(scales: list[float], canonical_scale: float, canonical_level: int) -> list[float]:
    """The areas at which levels 1..L-1 start (torchvision's LevelMapper, see
    csrc/common/roi_levels.h): level index l is assigned where
    ``floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6)``, clamped to
    ``[k_min, k_min + L - 1]``, equals ``k_min + l``, i.e. where ``area`` reaches
    ``(canonical_scale * 2**(k - canonical_level - 1e-6))**2`` for ``k = k_min + 1 .. k_min + l``.
    Computed here, in double, once for both devices."""
    op = _MULTILEVEL
    k_min = round(-math.log2(scales[0]))
    for i, s in enumerate(scales):
        if not abs(s / 2.0 ** -(k_min + i) - 1) <= 1e-6:
            raise ValueError(
                f"{op}: with mode='assign', `spatial_scales` must be consecutive powers of two "
                f"2**-k, 2**-(k+1), ... (as torchvision's MultiScaleRoIAlign infers them), "
                f"got {scales}"
            )
    base = canonical_scale * 2.0 ** -1e-6
    areas = []
    for k in range(k_min + 1, k_min + len(scales)):
        e = min(max(k - canonical_level, -4096), 4096)  # beyond, the result saturates anyway
        try:
            t = math.ldexp(base, e)  # exact scaling by 2**e
        except OverflowError:
            t = math.inf
        # A threshold that underflows to 0 would admit zero-area boxes (which belong to the
        # lowest level); the smallest positive double admits exactly the positive areas.
        areas.append(max(t * t, math.ulp(0.0)))
    return areas


def multilevel_roi_align(
    features: Sequence[Tensor],
    boxes: BoxesType,
    output_size: int | tuple[int, int],
    spatial_scales: Sequence[float],
    sampling_ratio: int = -1,
    aligned: bool = False,
    canonical_scale: float = 224,
    canonical_level: int = 4,
    mode: str = "assign",
) -> Tensor:
    """RoIAlign over an FPN in one launch: torchvision's ``MultiScaleRoIAlign`` (Mask R-CNN,
    ``mode="assign"``) or every RoI from every level (PANet, ``mode="all"``).

    Args:
        features: the pyramid, ``L >= 1`` tensors ``[N, C, H_l, W_l]`` (finest first) with
            the same N, C, dtype (float32/float64/float16/bfloat16) and device.
        boxes: ``Tensor[K, 5]`` rows of (batch_index, x1, y1, x2, y2), or a list of
            ``Tensor[L_i, 4]``, one per image, in input-image coordinates.
        output_size: ``(h, w)`` or an int for a square output.
        spatial_scales: one per level, e.g. ``[1/4, 1/8, 1/16, 1/32]`` for P2..P5. With
            ``mode="assign"`` they must be consecutive powers of two (relative tolerance
            1e-6); with ``mode="all"`` any positive finite scales.
        sampling_ratio, aligned: as :func:`roi_align` (torchvision's ``MultiScaleRoIAlign``
            uses ``aligned=False``).
        canonical_scale, canonical_level: the LevelMapper's (224 and 4, torchvision's).
        mode: ``"assign"`` or ``"all"``.

    Returns:
        ``mode="assign"``: ``Tensor[K, C, h, w]``, row k equal (bit for bit) to
        ``roi_align(features[l], boxes, output_size, spatial_scales[l], sampling_ratio,
        aligned)[k]`` for the level l of RoI k: the largest l with
        ``floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6) >= k_min + l``
        (clamped to the levels given), ``k_min = round(-log2(spatial_scales[0]))``,
        ``area = (x2 - x1) * (y2 - y1)`` in input-image pixels. A zero-area (or negative, or
        NaN) box goes to the lowest level.
        ``mode="all"``: ``Tensor[L, K, C, h, w]``, ``[l]`` equal to roi_align on level l; the
        levels are not fused (PANet fuses them after a per-level layer).

    The level is decided without a logarithm, by comparing the area (computed in the
    geometry dtype, float32 for float32/half inputs, float64 for float64) with the areas
    ``(canonical_scale * 2**(k - canonical_level - 1e-6))**2`` at which levels start,
    precomputed in double, so CPU and CUDA assign every RoI alike. This equals torchvision's
    LevelMapper except on a knife edge: where torchvision's float32 ``log2`` rounds its level
    value across an integer (an area within about 1e-6, relative, of a threshold), the two
    may pick adjacent levels. Beyond torchvision: aligned and half types as
    :func:`roi_align`; a batch index outside ``[0, N)`` raises (on CUDA: a device-side
    assertion, as :func:`roi_align`); at most 16 levels.
    """
    op = _MULTILEVEL
    mode = _args.choice(op, "mode", mode, ("assign", "all"))
    feats = _args.tensors(op, "features", features)
    scales = _args.reals(op, "spatial_scales", spatial_scales)
    canonical_scale = _args.real(op, "canonical_scale", canonical_scale)
    canonical_level = _args.integer(op, "canonical_level", canonical_level)
    if not (math.isfinite(canonical_scale) and canonical_scale > 0):
        raise ValueError(f"{op}: `canonical_scale` must be positive and finite, got "
                         f"{canonical_scale}")
    h, w = _args.size_pair(op, "output_size", output_size)
    rois = _rois(op, feats[0] if feats else None, boxes)
    # The level areas, from valid scales (invalid ones are reported by the op itself).
    valid = len(scales) == len(feats) > 0 and all(math.isfinite(s) and s > 0 for s in scales)
    areas = [] if mode == "all" or not valid else _level_areas(scales, canonical_scale,
                                                               canonical_level)
    return torch.ops.segops.multilevel_roi_align(
        feats, rois, scales, h, w, _args.integer(op, "sampling_ratio", sampling_ratio),
        _args.boolean(op, "aligned", aligned), areas, mode == "all",
    )


class RoIAlign(nn.Module):
    """Module form of :func:`roi_align`."""

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool = False,
    ) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: BoxesType) -> Tensor:
        return roi_align(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )


class RoIPool(nn.Module):
    """Module form of :func:`roi_pool`."""

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: BoxesType) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


# ---- fake (shape) implementations ----


@fake("roi_align")
def _(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    torch._check(rois.shape[1] == 5, lambda: "roi_align: `rois` must be [K, 5]")
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


@fake("_roi_align_backward")
def _(grad, rois, spatial_scale, ph, pw, batch_size, channels, height, width, sr, aligned):
    return grad.new_empty((batch_size, channels, height, width))


@fake("multilevel_roi_align")
def _(features, rois, spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned,
      level_areas, all_levels):
    torch._check(len(features) >= 1, lambda: "multilevel_roi_align: `features` is empty")
    torch._check(rois.shape[1] == 5, lambda: "multilevel_roi_align: `rois` must be [K, 5]")
    shape = (rois.shape[0], features[0].shape[1], pooled_height, pooled_width)
    return features[0].new_empty(((len(features),) if all_levels else ()) + shape)


@fake("_multilevel_roi_align_backward")
def _(grad, rois, spatial_scales, ph, pw, batch_size, channels, heights, widths, sr, aligned,
      level_areas, all_levels):
    return [grad.new_empty((batch_size, channels, h, w)) for h, w in zip(heights, widths)]


@fake("roi_pool")
def _(input, rois, spatial_scale, pooled_height, pooled_width):
    torch._check(rois.shape[1] == 5, lambda: "roi_pool: `rois` must be [K, 5]")
    shape = (rois.shape[0], input.shape[1], pooled_height, pooled_width)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int64)


@fake("_roi_pool_backward")
def _(grad, rois, argmax, spatial_scale, ph, pw, batch_size, channels, height, width):
    return grad.new_empty((batch_size, channels, height, width))


# ---- autograd ----
# The backward ops are linear in `grad`, so their own derivative is the forward op (for
# roi_align) or a gather at argmax (for roi_pool): double backward comes for free.


def _roi_align_setup(ctx, inputs, output):
    input, rois, spatial_scale, ph, pw, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.args = (spatial_scale, ph, pw, sampling_ratio, aligned)
    ctx.input_shape = input.shape


def _roi_align_backward(ctx, grad):
    (rois,) = ctx.saved_tensors
    spatial_scale, ph, pw, sampling_ratio, aligned = ctx.args
    n, c, h, w = ctx.input_shape
    grad_input = torch.ops.segops._roi_align_backward(
        grad, rois, spatial_scale, ph, pw, n, c, h, w, sampling_ratio, aligned
    )
    return grad_input, None, None, None, None, None, None


def _roi_align_backward_setup(ctx, inputs, output):
    grad, rois, spatial_scale, ph, pw, _n, _c, _h, _w, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.args = (spatial_scale, ph, pw, sampling_ratio, aligned)


def _roi_align_double_backward(ctx, gg):
    (rois,) = ctx.saved_tensors
    grad_grad = torch.ops.segops.roi_align(gg, rois, *ctx.args)
    return (grad_grad,) + (None,) * 10


def _no_grads(args) -> tuple:
    """None for each non-differentiable argument, but [] for an empty list: torch.library
    takes an empty list for a Tensor[] and wants the backward to mirror it."""
    return tuple([] if isinstance(a, (list, tuple)) and len(a) == 0 else None for a in args)


def _multilevel_setup(ctx, inputs, output):
    features, rois, scales, ph, pw, sampling_ratio, aligned, areas, all_levels = inputs
    ctx.no_grads = _no_grads(inputs[1:])
    ctx.save_for_backward(rois)
    ctx.args = (scales, ph, pw, sampling_ratio, aligned, areas, all_levels)
    ctx.shape = (features[0].shape[0], features[0].shape[1],
                 [f.shape[2] for f in features], [f.shape[3] for f in features])


def _multilevel_backward(ctx, grad):
    (rois,) = ctx.saved_tensors
    scales, ph, pw, sampling_ratio, aligned, areas, all_levels = ctx.args
    n, c, heights, widths = ctx.shape
    grads = torch.ops.segops._multilevel_roi_align_backward(
        grad, rois, scales, ph, pw, n, c, heights, widths, sampling_ratio, aligned, areas,
        all_levels,
    )
    return (list(grads),) + ctx.no_grads


def _multilevel_backward_setup(ctx, inputs, output):
    grad, rois, scales, ph, pw, _n, _c, _hs, _ws, sampling_ratio, aligned, areas, all_levels = (
        inputs
    )
    ctx.no_grads = _no_grads(inputs[1:])
    ctx.save_for_backward(rois)
    ctx.args = (scales, ph, pw, sampling_ratio, aligned, areas, all_levels)
    ctx.shapes = [o.shape for o in output]
    ctx.dtype = grad.dtype


def _multilevel_double_backward(ctx, gg):
    (rois,) = ctx.saved_tensors
    gg = [g if g is not None else rois.new_zeros(s, dtype=ctx.dtype)
          for g, s in zip(gg, ctx.shapes)]
    grad_grad = torch.ops.segops.multilevel_roi_align(gg, rois, *ctx.args)
    return (grad_grad,) + ctx.no_grads


def _roi_pool_setup(ctx, inputs, output):
    input, rois, spatial_scale, ph, pw = inputs
    _, argmax = output
    ctx.mark_non_differentiable(argmax)
    # argmax never has a gradient: without this, autograd would fill an int64 zero tensor of
    # its size (K C oh ow, 100 MB for Mask R-CNN's 1000 RoIs) on every backward.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(rois, argmax)
    ctx.args = (spatial_scale, ph, pw)
    ctx.input_shape = input.shape


def _roi_pool_backward(ctx, grad, _grad_argmax):
    if grad is None:  # the output took no part in what is differentiated
        return None, None, None, None, None
    rois, argmax = ctx.saved_tensors
    spatial_scale, ph, pw = ctx.args
    n, c, h, w = ctx.input_shape
    grad_input = torch.ops.segops._roi_pool_backward(
        grad, rois, argmax, spatial_scale, ph, pw, n, c, h, w
    )
    return grad_input, None, None, None, None


def _roi_pool_backward_setup(ctx, inputs, output):
    grad, rois, argmax, *_ = inputs
    ctx.save_for_backward(rois, argmax)


def _roi_pool_double_backward(ctx, gg):
    rois, argmax = ctx.saved_tensors
    channels, plane = gg.shape[1], gg.shape[2] * gg.shape[3]
    batch = rois[:, 0].long()
    base = (batch[:, None] * channels + torch.arange(channels, device=gg.device)) * plane
    picked = torch.take(gg, base[:, :, None, None] + argmax.clamp(min=0))
    return (torch.where(argmax >= 0, picked, 0),) + (None,) * 9


torch.library.register_autograd(
    "segops::roi_align", _roi_align_backward, setup_context=_roi_align_setup
)
torch.library.register_autograd(
    "segops::_roi_align_backward",
    _roi_align_double_backward,
    setup_context=_roi_align_backward_setup,
)
torch.library.register_autograd(
    "segops::multilevel_roi_align", _multilevel_backward, setup_context=_multilevel_setup
)
torch.library.register_autograd(
    "segops::_multilevel_roi_align_backward",
    _multilevel_double_backward,
    setup_context=_multilevel_backward_setup,
)
torch.library.register_autograd(
    "segops::roi_pool", _roi_pool_backward, setup_context=_roi_pool_setup
)
torch.library.register_autograd(
    "segops::_roi_pool_backward",
    _roi_pool_double_backward,
    setup_context=_roi_pool_backward_setup,
)

# ---- autocast: float32 compute, result in the input's dtype (as torchvision) ----

register_autocast("roi_align", float_args=(0, 1))
register_autocast("roi_pool", float_args=(0, 1))
register_autocast("multilevel_roi_align", float_args=(0, 1))
