"""Registry entries of the BPR patch family: boundary_patches, crop_patches,
reassemble_patches."""

from __future__ import annotations


import torch

import segops
from segops import reference as ref

from ..patches import Instance, render_masks
from . import BadCase, OpInfo, Sample

_H, _W = 24, 28
_MASKS = render_masks(_H, _W, [Instance("blob", [(14.0, 12.0, 7.0, 5.0, 0.3)]),
                               Instance("pixel", at=(0, 27)),
                               Instance("rect", rect=(2, 14, 11, 24))])
_BOXES = torch.tensor([[0, 0, 8, 8], [10, 5, 18, 13], [20, -2, 28, 6], [1, 12, 13, 24]])
_INDEX = torch.tensor([0, 0, 1, 2])
_BATCH = torch.tensor([1, 0, 1])


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _images(device, dtype):
    return torch.randn(2, 3, _H, _W, generator=_gen(7), dtype=torch.float64).to(dtype).to(device)


def _probs(device, dtype, size=8):
    return torch.rand(4, size, size, generator=_gen(8), dtype=torch.float64).to(dtype).to(device)


def _boundary_samples(device, dtype):
    m = _MASKS.to(device)
    return [
        Sample("exact", (m,), dict(patch_size=8, iou_threshold=0.25), fullgraph=False),
        Sample("padded", (m,), dict(patch_size=8, iou_threshold=0.55, max_out=40)),
        Sample("padded-small", (m,), dict(patch_size=16, max_out=3)),
        Sample("int-masks", (m.to(torch.uint8),), dict(patch_size=8, max_out=40)),
        Sample("no-instances", (m[:0],), dict(patch_size=8, max_out=4)),
    ]


def _crop_samples(device, dtype):
    m, i = _MASKS.to(device), _images(device, dtype)
    b, idx, bi = _BOXES.to(device), _INDEX.to(device), _BATCH.to(device)
    return [
        Sample("crop", (i, m, b, idx, bi), dict(output_size=(6, 10))),
        Sample("square", (i, m, b, idx, bi, 5)),
        Sample("no-patches", (i, m, b[:0], idx[:0], bi), dict(output_size=4)),
    ]


def _reassemble_samples(device, dtype):
    m = _MASKS.to(device)
    b, idx = _BOXES.to(device), _INDEX.to(device)
    return [
        Sample("same-size", (m, _probs(device, dtype), b, idx)),
        Sample("resampled", (m, _probs(device, dtype, 5), b, idx), dict(threshold=0.4)),
        Sample("no-patches", (m, _probs(device, dtype)[:0], b[:0], idx[:0])),
    ]


def _case(label, make, exc, match, **kwargs):
    return BadCase(label, lambda d: (make(d), kwargs), exc, match)


_TM = torch.zeros(2, 6, 8, dtype=torch.bool)
_TBOX = torch.tensor([[1, 1, 5, 5]])
_TIDX = torch.tensor([0])
_TBI = torch.tensor([0, 0])
_TIMG = torch.zeros(1, 3, 6, 8)
_TPR = torch.zeros(1, 4, 4)
_EITHER = (TypeError, ValueError)

# (kwargs replacing the defaults, exception, the argument named, label)
_BOUNDARY_TABLE = [
    (dict(masks=_TM.numpy()), TypeError, "masks", "masks-numpy"),
    (dict(masks=[[[True]]]), TypeError, "masks", "masks-list"),
    (dict(masks=_TM.half()), TypeError, "masks", "masks-half"),
    (dict(masks=_TM.to(torch.complex64)), TypeError, "masks", "masks-complex"),
    (dict(masks=_TM[None]), ValueError, "masks", "masks-4d"),
    (dict(patch_size=1), ValueError, "patch_size", "p-1"),
    (dict(patch_size=-4), ValueError, "patch_size", "p-negative"),
    (dict(patch_size=8.0), TypeError, "patch_size", "p-float"),
]
_CROP_TABLE = [
    (dict(images=_TIMG.numpy()), TypeError, "images", "images-numpy"),
    (dict(images=_TIMG.bool()), TypeError, "images", "images-bool"),
    (dict(masks=_TM.float()), TypeError, "masks", "masks-float"),
    (dict(masks=_TM[0]), ValueError, "masks", "masks-2d"),
    (dict(masks=_TM[:, :, :7]), ValueError, "masks", "masks-W"),
    (dict(boxes=_TBOX.int()), _EITHER, "boxes", "boxes-int32"),
    (dict(boxes=_TBOX[0]), ValueError, "boxes", "boxes-1d"),
    (dict(boxes=[[1, 1, 5, 5]]), TypeError, "boxes", "boxes-list"),
    (dict(instance_index=torch.tensor([0, 1])), ValueError, "instance_index", "index-P"),
    (dict(instance_index=_TIDX.int()), _EITHER, "instance_index", "index-int32"),
    (dict(instance_index=torch.tensor([-1])), ValueError, "instance_index", "index-negative"),
    (dict(batch_index=torch.tensor([-1, 0])), ValueError, "batch_index", "batch-negative"),
    (dict(batch_index=torch.tensor([0])), ValueError, "batch_index", "batch-N"),
    (dict(output_size=(4, 4, 4)), _EITHER, "output_size", "size-triple"),
    (dict(output_size=4.0), _EITHER, "output_size", "size-float"),
    (dict(boxes=_TBOX.to("meta")), ValueError, "device", "boxes-device"),
    (dict(instance_index=_TIDX.to("meta")), ValueError, "device", "index-device"),
    (dict(masks=_TM.to("meta")), ValueError, "device", "masks-device"),
]
_REASSEMBLE_TABLE = [
    (dict(masks=_TM.float()), TypeError, "masks", "masks-float"),
    (dict(masks=_TM[0]), ValueError, "masks", "masks-2d"),
    (dict(patch_probs=_TPR.bool()), TypeError, "patch_probs", "probs-bool"),
    (dict(patch_probs=_TPR.numpy()), TypeError, "patch_probs", "probs-numpy"),
    (dict(boxes=_TBOX.float()), _EITHER, "boxes", "boxes-float"),
    (dict(boxes=_TBOX[:, :3]), ValueError, "boxes", "boxes-Px3"),
    (dict(instance_index=torch.tensor([2])), ValueError, "instance_index", "index-N"),
    (dict(instance_index=torch.tensor([[0]])), ValueError, "instance_index", "index-2d"),
    (dict(boxes=_TBOX.to("meta")), ValueError, "device", "boxes-device"),
    (dict(instance_index=_TIDX.to("meta")), ValueError, "device", "index-device"),
]


def _table(rows, defaults):
    return [BadCase(label, lambda d, k=k: ((), {**defaults, **k}), exc,
                    name if name == "device" else f"`{name}`")
            for k, exc, name, label in rows]


def _boundary_bad():
    m = _MASKS
    table = _table(_BOUNDARY_TABLE, dict(masks=_TM, patch_size=8, iou_threshold=0.25))
    return table + [
        _case("masks-2d", lambda d: (m[0],), ValueError, "`masks`"),
        _case("masks-float", lambda d: (m.float(),), TypeError, "`masks` must be bool"),
        _case("patch-odd", lambda d: (m, 7), ValueError, "`patch_size` must be an even int"),
        _case("patch-zero", lambda d: (m, 0), ValueError, "`patch_size`"),
        _case("patch-huge", lambda d: (m, 2**40), ValueError, "`patch_size`"),
        _case("iou-nan", lambda d: (m, 8, float("nan")), ValueError, "`iou_threshold` must not"),
        _case("max-out-negative", lambda d: (m, 8), ValueError, "`max_out` must be >= 0",
              max_out=-1),
        _case("max-out-huge", lambda d: (m, 8), ValueError, "`max_out` must be in",
              max_out=2**40),
    ]


def _crop_bad():
    m, i = _MASKS, _images("cpu", torch.float32)
    b, idx, bi = _BOXES, _INDEX, _BATCH
    table = _table(_CROP_TABLE, dict(images=_TIMG, masks=_TM, boxes=_TBOX,
                                     instance_index=_TIDX, batch_index=_TBI, output_size=4))
    return table + [
        _case("images-3d", lambda d: (i[0], m, b, idx, bi), ValueError, "`images`"),
        _case("images-int", lambda d: (i.long(), m, b, idx, bi), TypeError, "`images`"),
        _case("masks-size", lambda d: (i, m[:, 1:], b, idx, bi), ValueError, "`masks`"),
        _case("boxes-float", lambda d: (i, m, b.float(), idx, bi), TypeError, "`boxes`"),
        _case("boxes-Px3", lambda d: (i, m, b[:, :3], idx, bi), ValueError, "`boxes`"),
        _case("index-length", lambda d: (i, m, b, idx[:2], bi), ValueError, "`instance_index`"),
        _case("index-range", lambda d: (i, m, b, idx + 3, bi), ValueError, "`instance_index`"),
        _case("batch-range", lambda d: (i, m, b, idx, bi + 2), ValueError, "`batch_index`"),
        _case("batch-int32", lambda d: (i, m, b, idx, bi.int()), TypeError, "`batch_index`"),
        _case("batch-meta", lambda d: (i, m, b, idx, bi.to("meta")), ValueError, "device"),
        _case("size-negative", lambda d: (i, m, b, idx, bi, (4, -1)), ValueError,
              "`output_size` must be in"),
        _case("size-too-large", lambda d: (i, m, b, idx, bi, (2**31 - 1, 2**31 - 1)),
              ValueError, "`output_size` makes the output too large"),
    ]


def _reassemble_bad():
    m, b, idx = _MASKS, _BOXES, _INDEX
    p = _probs("cpu", torch.float32)
    table = _table(_REASSEMBLE_TABLE, dict(masks=_TM, patch_probs=_TPR, boxes=_TBOX,
                                           instance_index=_TIDX, threshold=0.5))
    return table + [
        _case("probs-2d", lambda d: (m, p[0], b, idx), ValueError, "`patch_probs`"),
        _case("probs-count", lambda d: (m, p[:2], b, idx), ValueError, "`patch_probs`"),
        _case("probs-int", lambda d: (m, p.long(), b, idx), TypeError, "`patch_probs`"),
        _case("probs-empty", lambda d: (m, p[:, :0, :0], b, idx), ValueError,
              "`patch_probs` must have h, w >= 1"),
        _case("index-range", lambda d: (m, p, b, idx - 1), ValueError, "`instance_index`"),
        _case("threshold-nan", lambda d: (m, p, b, idx), ValueError, "`threshold` must not be",
              threshold=float("nan")),
        _case("probs-meta", lambda d: (m, p.to("meta"), b, idx), ValueError, "device"),
    ]


OPS = [
    OpInfo("boundary_patches", segops.boundary_patches, ref.boundary_patches, "patches",
           _boundary_samples, bad=_boundary_bad, onnx=False,
           scalars=dict(patch_size="int", iou_threshold="real", max_out="capacity")),
    OpInfo("crop_patches", segops.crop_patches, ref.crop_patches, "patches", _crop_samples,
           bad=_crop_bad, onnx=False, scalars=dict(output_size="size")),
    OpInfo("reassemble_patches", segops.reassemble_patches, ref.reassemble_patches, "patches",
           _reassemble_samples, bad=_reassemble_bad, onnx=False,
           scalars=dict(threshold="real")),
]
