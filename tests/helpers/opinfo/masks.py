"""Registry entries of the masks family: assemble_masks, paste_masks."""

from __future__ import annotations

import math

import torch

import segops
from segops import reference as ref

from . import BadCase, OpInfo, Sample


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _protos(device, dtype, H=9, W=11, k=4):
    return torch.randn(H, W, k, generator=_gen(1), dtype=torch.float64).to(dtype).to(device)


def _coeffs(device, dtype, n=3, k=4):
    return torch.randn(n, k, generator=_gen(2), dtype=torch.float64).to(dtype).to(device)


def _rel_boxes(device, dtype):
    b = [[0.1, 0.2, 0.7, 0.9], [0.55, 0.05, 0.3, 0.6], [0.0, 0.0, 1.0, 1.0]]
    return torch.tensor(b, dtype=torch.float64).to(dtype).to(device)


def _assemble_samples(device, dtype):
    p, c, b = _protos(device, dtype), _coeffs(device, dtype), _rel_boxes(device, dtype)
    return [
        Sample("crop", (p, c, b), dict(padding=1)),
        Sample("no-padding", (p, c, b, 0)),
        Sample("fused", (p, c, b), dict(image_size=(20, 17), threshold=0.5)),
        Sample("fused-square", (p, c, b), dict(image_size=13, threshold=0.3)),
        Sample("no-detections", (p, c[:0], b[:0]), dict(image_size=(8, 8))),
    ]


def _assemble_grad(device, dtype):
    p = _protos(device, torch.float64, 5, 6, 3).requires_grad_()
    c = _coeffs(device, torch.float64, 2, 3).requires_grad_()
    b = _rel_boxes(device, torch.float64)[:2]
    return [(lambda pp, cc: segops.assemble_masks(pp, cc, b), (p, c))]


def _case(label, make, exc, match, **kwargs):
    return BadCase(label, lambda d: (make(d), kwargs), exc, match)


def _r(*shape):
    return torch.randn(*shape, generator=_gen(9))


_AB = torch.tensor([[0.1, 0.1, 0.8, 0.8]])
# (protos, coeffs, boxes, kwargs, exception, the argument the message names, label)
_ASSEMBLE_TABLE = [
    ([[1.0]], _r(1, 3), _AB, {}, TypeError, "protos", "protos-list"),
    (_r(1, 4, 4, 3), _r(1, 3), _AB, {}, ValueError, "protos", "protos-4d"),
    (_r(4, 4, 3), _r(3), _AB, {}, ValueError, "coeffs", "coeffs-1d"),
    (_r(4, 4, 3), _r(1, 3).long(), _AB, {}, TypeError, "coeffs", "coeffs-int"),
    (_r(4, 4, 3), _r(1, 3), _AB[:, :3], {}, ValueError, "boxes", "boxes-Nx3"),
    (_r(4, 4, 3), _r(1, 3), _AB[0], {}, ValueError, "boxes", "boxes-1d"),
    (_r(4, 4, 3), _r(1, 3), _AB, {"padding": 1.5}, TypeError, "padding", "padding-float"),
    (_r(4, 4, 3), _r(1, 3), _AB, {"image_size": (4, 4, 4)}, TypeError, "image_size",
     "size-triple"),
    (_r(4, 4, 3), _r(1, 3), _AB, {"image_size": "4"}, TypeError, "image_size", "size-str"),
]


def _assemble_bad():
    p, c, b = _protos("cpu", torch.float32), _coeffs("cpu", torch.float32), _rel_boxes(
        "cpu", torch.float32)
    table = [BadCase(label, lambda d, a=(pr, co, bx), k=k: (a, k), exc, f"`{name}`")
             for pr, co, bx, k, exc, name, label in _ASSEMBLE_TABLE]
    return table + [
        _case("protos-2d", lambda d: (p[0], c, b), ValueError, "`protos`"),
        _case("protos-int", lambda d: (p.long(), c.long(), b), TypeError, "`protos`"),
        _case("coeffs-k", lambda d: (p, c[:, :3], b), ValueError, "`coeffs`"),
        _case("coeffs-dtype", lambda d: (p, c.double(), b), TypeError, "`coeffs`"),
        _case("coeffs-meta", lambda d: (p, c.to("meta"), b), ValueError, "`coeffs`"),
        _case("boxes-n", lambda d: (p, c, b[:2]), ValueError, "`boxes`"),
        _case("boxes-int", lambda d: (p, c, b.long()), TypeError, "`boxes`"),
        _case("boxes-meta", lambda d: (p, c, b.to("meta")), ValueError, "`boxes`"),
        _case("size-negative", lambda d: (p, c, b), ValueError, "`image_size` must be in",
              image_size=(-1, 4)),
        _case("size-huge", lambda d: (p, c, b), ValueError, "`image_size` must be in",
              image_size=(4, 2**33)),
        _case("size-too-large", lambda d: (p, c, b), ValueError,
              "`image_size` makes the output too large", image_size=(2**31 - 1, 2**31 - 1)),
        _case("threshold-nan", lambda d: (p, c, b), ValueError, "`threshold` must not be NaN",
              image_size=8, threshold=float("nan")),
        _case("resize-nothing", lambda d: (p[:0], c, b), ValueError, "`protos` must have H, W",
              image_size=8),
    ]


def _paste_masks(device, dtype, n=4, m=5):
    return torch.rand(n, m, m, generator=_gen(3), dtype=torch.float64).to(dtype).to(device)


def _abs_boxes(device, dtype):
    b = [[1.5, 2.0, 9.0, 8.5], [-3.0, 4.0, 6.0, 14.0], [5.0, 5.0, 5.0, 9.0],
         [10.2, 0.3, 16.9, 11.1]]
    return torch.tensor(b, dtype=torch.float64).to(dtype).to(device)


def _paste_samples(device, dtype):
    m, b = _paste_masks(device, dtype), _abs_boxes(device, dtype)
    return [
        Sample("detectron2", (m, b, (12, 15))),
        Sample("detectron2-values", (m, b, (12, 15)), dict(threshold=None)),
        Sample("torchvision", (m, b, (12, 15)), dict(threshold=0.4, mode="torchvision")),
        Sample("torchvision-values", (m[:, None], b, 14), dict(threshold=None,
                                                               mode="torchvision")),
        Sample("empty", (m[:0], b[:0], (5, 6))),
    ]


_PB = torch.tensor([[1.0, 1.0, 5.0, 6.0]])
# (masks, boxes, image_size, kwargs, exception, the argument the message names, label)
_PASTE_TABLE = [
    ([[0.5]], _PB, (8, 8), {}, TypeError, "masks", "masks-list"),
    (torch.rand(1, 4, 4).bool(), _PB, (8, 8), {}, TypeError, "masks", "masks-bool"),
    (torch.rand(1, 2, 4, 4), _PB, (8, 8), {}, ValueError, "masks", "masks-4d-C2"),
    (torch.rand(1, 4, 0), _PB, (8, 8), {}, ValueError, "masks", "masks-Mw0"),
    (torch.rand(1, 4, 4), [[1.0, 1.0, 5.0, 6.0]], (8, 8), {}, TypeError, "boxes",
     "boxes-list"),
    (torch.rand(1, 4, 4), _PB[:, :3], (8, 8), {}, ValueError, "boxes", "boxes-Nx3"),
    (torch.rand(1, 4, 4), _PB[0], (8, 8), {}, ValueError, "boxes", "boxes-1d"),
    (torch.rand(1, 4, 4), _PB, (8, 8, 8), {}, TypeError, "image_size", "size-triple"),
    (torch.rand(1, 4, 4), _PB, (8.0, 8), {}, TypeError, "image_size", "size-float"),
    (torch.rand(1, 4, 4), _PB, None, {}, TypeError, "image_size", "size-none"),
    (torch.rand(1, 4, 4), _PB, (8, 8), {"threshold": math.nan}, ValueError, "threshold",
     "threshold-nan-2"),
]


def _paste_bad():
    m, b = _paste_masks("cpu", torch.float32), _abs_boxes("cpu", torch.float32)
    table = [BadCase(label, lambda d, a=(mm, bb, s), k=k: (a, k), exc, f"`{name}`")
             for mm, bb, s, k, exc, name, label in _PASTE_TABLE]
    return table + [
        _case("masks-2d", lambda d: (m[0], b, 8), ValueError, "`masks`"),
        _case("masks-int", lambda d: (m.long(), b, 8), TypeError, "`masks`"),
        _case("masks-empty-cells", lambda d: (m[:, :0], b, 8), ValueError, "`masks`"),
        _case("boxes-n", lambda d: (m, b[:2], 8), ValueError, "`boxes`"),
        _case("boxes-int", lambda d: (m, b.long(), 8), TypeError, "`boxes`"),
        _case("boxes-meta", lambda d: (m, b.to("meta"), 8), ValueError, "`boxes`"),
        _case("size-negative", lambda d: (m, b, (4, -4)), ValueError, "`image_size` must be in"),
        _case("size-too-large", lambda d: (m, b, (2**31 - 1, 2**31 - 1)), ValueError,
              "`image_size` makes the output too large"),
        _case("threshold-nan", lambda d: (m, b, 8), ValueError, "`threshold` must not be NaN",
              threshold=float("nan")),
        _case("mode", lambda d: (m, b, 8), ValueError, "`mode`", mode="detectron"),
    ]


OPS = [
    OpInfo("assemble_masks", segops.assemble_masks, ref.assemble_masks, "masks",
           _assemble_samples, bad=_assemble_bad, grad=_assemble_grad,
           scalars=dict(padding="int", image_size="optional_size", threshold="real")),
    OpInfo("paste_masks", segops.paste_masks, ref.paste_masks, "masks", _paste_samples,
           bad=_paste_bad, scalars=dict(image_size="size", threshold="optional_real", mode="str")),
]
