"""RoI pooling: `roi_align` and `roi_pool` (SPEC §1), drop-in for torchvision's."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._registry import check_float, check_same_device, check_tensor, fake, pair, register_autocast

BoxesType = Tensor | Sequence[Tensor]


def convert_boxes_to_roi_format(boxes: BoxesType, op: str = "roi_align") -> Tensor:
    """`list[Tensor[L_i, 4]]` -> `Tensor[K, 5]` of (batch_index, x1, y1, x2, y2); a
    `Tensor[K, 5]` is returned as is."""
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(
                f"{op}: `boxes` must be Tensor[K, 5] (batch_index, x1, y1, x2, y2) or a list "
                f"of Tensor[L, 4], got a tensor of shape {tuple(boxes.shape)}"
            )
        return boxes
    if not isinstance(boxes, (list, tuple)):
        raise TypeError(
            f"{op}: `boxes` must be Tensor[K, 5] or a list of Tensor[L, 4], "
            f"got {type(boxes).__name__}"
        )
    for i, b in enumerate(boxes):
        check_tensor(b, op, f"boxes[{i}]")
        if b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(
                f"{op}: `boxes[{i}]` must be Tensor[L, 4] (x1, y1, x2, y2), "
                f"got shape {tuple(b.shape)}"
            )
    if len(boxes) == 0:
        return torch.zeros((0, 5))
    dtype = boxes[0].dtype
    rows = [
        torch.cat([torch.full_like(b[:, :1], i, dtype=dtype), b.to(dtype)], dim=1)
        for i, b in enumerate(boxes)
    ]
    return torch.cat(rows, dim=0)


def _prepare(op: str, input: Tensor, boxes: BoxesType, output_size) -> tuple[Tensor, int, int]:
    check_tensor(input, op, "input")
    check_float(input, op, "input")
    if input.dim() != 4:
        raise ValueError(f"{op}: `input` must be [N, C, H, W], got shape {tuple(input.shape)}")
    rois = convert_boxes_to_roi_format(boxes, op)
    if isinstance(boxes, (list, tuple)) and len(boxes) == 0:
        rois = rois.to(device=input.device, dtype=input.dtype)
    check_float(rois, op, "boxes")
    check_same_device(op, "input", {"input": input, "boxes": rois})
    h, w = pair(output_size, op, "output_size")
    return rois, h, w


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
    batch index outside `[0, N)` raises; a box with a NaN/inf coordinate pools zeros;
    under `torch.use_deterministic_algorithms(True)` the backward is deterministic on
    CUDA too (a gather instead of atomics) rather than raising.
    """
    rois, h, w = _prepare("roi_align", input, boxes, output_size)
    return torch.ops.segops.roi_align(
        input, rois, float(spatial_scale), h, w, int(sampling_ratio), bool(aligned)
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
    rois, h, w = _prepare("roi_pool", input, boxes, output_size)
    out, _ = torch.ops.segops.roi_pool(input, rois, float(spatial_scale), h, w)
    return out


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


def _roi_pool_setup(ctx, inputs, output):
    input, rois, spatial_scale, ph, pw = inputs
    _, argmax = output
    ctx.mark_non_differentiable(argmax)
    ctx.save_for_backward(rois, argmax)
    ctx.args = (spatial_scale, ph, pw)
    ctx.input_shape = input.shape


def _roi_pool_backward(ctx, grad, _grad_argmax):
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
