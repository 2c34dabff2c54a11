"""Registry entries of the suppression family: nms, batched_nms, fast_nms, matrix_nms."""

from __future__ import annotations

import torch

import segops
from segops import reference as ref

from . import BadCase, OpInfo, Sample

# A Fast-NMS chain (IoU(A, B), IoU(B, C) > 0.5 > IoU(A, C)), an isolated pair, a duplicate.
_BOXES = [[0.0, 0, 10, 10], [3.0, 0, 13, 10], [6.0, 0, 16, 10], [40.0, 40, 50, 50],
          [41.0, 41, 50, 50], [0.0, 0, 10, 10], [20.0, 5, 30, 12]]
_SCORES = [0.9, 0.8, 0.7, 0.95, 0.6, 0.85, 0.3]
_IDXS = [0, 0, 1, 1, 1, 0, 2]


def _boxes(device, dtype):
    return torch.tensor(_BOXES, dtype=dtype, device=device)


def _scores(device, dtype):
    return torch.tensor(_SCORES, dtype=dtype, device=device)


def _idxs(device):
    return torch.tensor(_IDXS, device=device)


def _class_scores(device, dtype):
    g = torch.Generator().manual_seed(1)
    return torch.rand(3, len(_BOXES), generator=g, dtype=torch.float64).to(dtype).to(device)


def _masks(device):
    m = torch.zeros(6, 8, 10, dtype=torch.bool)
    for i, (x1, y1, x2, y2) in enumerate([(0, 0, 5, 5), (1, 0, 5, 6), (2, 1, 8, 8),
                                          (0, 0, 0, 0), (0, 0, 10, 4), (5, 4, 10, 8)]):
        m[i, y1:y2, x1:x2] = True
    return m.to(device)


def _nms_samples(device, dtype):
    b, s = _boxes(device, dtype), _scores(device, dtype)
    return [
        Sample("exact", (b, s), dict(iou_threshold=0.5), fullgraph=False),
        Sample("padded", (b, s), dict(iou_threshold=0.3, max_out=4)),
        Sample("padded-large", (b, s), dict(iou_threshold=0.5, max_out=10)),
        Sample("empty", (b[:0], s[:0]), dict(iou_threshold=0.5), fullgraph=False),
    ]


def _batched_samples(device, dtype):
    b, s, i = _boxes(device, dtype), _scores(device, dtype), _idxs(device)
    return [
        Sample("exact", (b, s, i), dict(iou_threshold=0.5), fullgraph=False),
        Sample("padded", (b, s, i), dict(iou_threshold=0.3, max_out=5)),
        Sample("empty", (b[:0], s[:0], i[:0]), dict(iou_threshold=0.5), fullgraph=False),
    ]


def _fast_samples(device, dtype):
    b, s = _boxes(device, dtype), _class_scores(device, dtype)
    return [
        Sample("exact", (b, s), dict(iou_threshold=0.5, top_k=5, score_threshold=0.05,
                                     max_detections=6), fullgraph=False),
        Sample("padded", (b, s), dict(iou_threshold=0.5, top_k=5, max_detections=6,
                                      padded=True)),
        Sample("cross-class", (b, s), dict(top_k=4, cross_class=True, padded=True)),
        Sample("second-threshold", (b, s), dict(score_threshold=0.3, second_threshold=True,
                                                padded=True)),
        Sample("no-classes", (b, s[:0]), dict(padded=True)),
    ]


def _matrix_samples(device, dtype):
    m = _masks(device)
    labels = torch.tensor([0, 0, 0, 1, 0, 1], device=device)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], dtype=dtype, device=device)
    return [
        Sample("gaussian", (m, labels, scores), dict(kernel="gaussian", sigma=2.0)),
        Sample("linear", (m, labels, scores), dict(kernel="linear")),
        Sample("float-masks", (m.to(dtype), labels, scores)),
        Sample("empty", (m[:0], labels[:0], scores[:0])),
    ]


def _case(label, make, exc, match, **kwargs):
    return BadCase(label, lambda d: (make(d), kwargs), exc, match)


_B = _boxes("cpu", torch.float32)
_S = _scores("cpu", torch.float32)
_I = _idxs("cpu")
_C = _class_scores("cpu", torch.float32)
_NAN = float("nan")


def _nms_bad():
    return [
        _case("boxes-Nx3", lambda d: (_B[:, :3], _S, 0.5), ValueError, "`boxes`"),
        _case("boxes-1d", lambda d: (_B[0], _S[:1], 0.5), ValueError, "`boxes`"),
        _case("boxes-int", lambda d: (_B.long(), _S, 0.5), TypeError, "`boxes`"),
        _case("boxes-bool", lambda d: (_B.bool(), _S, 0.5), TypeError, "`boxes`"),
        _case("boxes-list", lambda d: (_B.tolist(), _S, 0.5), TypeError, "`boxes`"),
        _case("scores-int", lambda d: (_B, _S.long(), 0.5), TypeError, "`scores`"),
        _case("scores-length", lambda d: (_B, _S[:1], 0.5), ValueError, "`scores`"),
        _case("scores-2d", lambda d: (_B, _S[None], 0.5), ValueError, "`scores`"),
        _case("scores-meta", lambda d: (_B, _S.to("meta"), 0.5), ValueError,
              "`scores` must be on the device of `boxes`"),
        _case("iou-nan", lambda d: (_B, _S, _NAN), ValueError, "`iou_threshold` must not be NaN"),
        _case("max-out-negative", lambda d: (_B, _S, 0.5), ValueError, "`max_out`", max_out=-1),
        _case("max-out-huge", lambda d: (_B, _S, 0.5), ValueError, "`max_out` must be in",
              max_out=2**40),
    ]


def _batched_bad():
    return [
        _case("boxes-Nx3", lambda d: (_B[:, :3], _S, _I, 0.5), ValueError, "`boxes`"),
        _case("boxes-int", lambda d: (_B.int(), _S, _I, 0.5), TypeError, "`boxes`"),
        _case("scores-int", lambda d: (_B, _S.int(), _I, 0.5), TypeError, "`scores`"),
        _case("idxs-float", lambda d: (_B, _S, _I.float(), 0.5), TypeError, "`idxs`"),
        _case("idxs-length", lambda d: (_B, _S, _I[:1], 0.5), ValueError, "`idxs`"),
        _case("idxs-2d", lambda d: (_B, _S, _I[None], 0.5), ValueError, "`idxs`"),
        _case("idxs-meta", lambda d: (_B, _S, _I.to("meta"), 0.5), ValueError, "`idxs`"),
        _case("boxes-meta", lambda d: (_B.to("meta"), _S, _I, 0.5), ValueError, "device"),
        _case("iou-nan", lambda d: (_B, _S, _I, _NAN), ValueError, "`iou_threshold`"),
        _case("max-out-negative", lambda d: (_B, _S, _I, 0.5), ValueError, "`max_out`",
              max_out=-2),
    ]


def _fast_bad():
    return [
        _case("boxes-Nx2", lambda d: (_B[:, :2], _C), ValueError, "`boxes`"),
        _case("boxes-int", lambda d: (_B.long(), _C), TypeError, "`boxes`"),
        _case("scores-1d", lambda d: (_B, _S), ValueError, "`scores`"),
        _case("scores-length", lambda d: (_B, _C[:, :1]), ValueError, "`scores`"),
        _case("scores-int", lambda d: (_B, _C.long()), TypeError, "`scores`"),
        _case("scores-meta", lambda d: (_B, _C.to("meta")), ValueError, "device"),
        _case("iou-nan", lambda d: (_B, _C), ValueError, "`iou_threshold` must not be NaN",
              iou_threshold=_NAN),
        _case("score-threshold-nan", lambda d: (_B, _C), ValueError, "`score_threshold`",
              score_threshold=_NAN),
        _case("top-k-negative", lambda d: (_B, _C), ValueError, "`top_k`", top_k=-1),
        _case("top-k-huge", lambda d: (_B, _C), ValueError, "`top_k` must be in", top_k=2**40),
        _case("max-det-negative", lambda d: (_B, _C), ValueError, "`max_detections`",
              max_detections=-1),
    ]


def _matrix_bad():
    m, lab = _masks("cpu"), torch.tensor([0, 0, 0, 1, 0, 1])
    s = torch.linspace(0.9, 0.4, 6)
    return [
        _case("masks-2d", lambda d: (m[0], lab, s), ValueError, "`masks`"),
        _case("masks-4d", lambda d: (m[None], lab, s), ValueError, "`masks`"),
        _case("labels-float", lambda d: (m, lab.float(), s), TypeError, "`labels`"),
        _case("labels-length", lambda d: (m, lab[:1], s), ValueError, "`labels`"),
        _case("scores-length", lambda d: (m, lab, s[:1]), ValueError, "`scores`"),
        _case("scores-int", lambda d: (m, lab, s.long()), TypeError, "`scores`"),
        _case("scores-meta", lambda d: (m, lab, s.to("meta")), ValueError, "device"),
        _case("kernel", lambda d: (m, lab, s), ValueError, "`kernel`", kernel="box"),
        _case("sigma-negative", lambda d: (m, lab, s), ValueError, "`sigma` must be finite and",
              sigma=-2.0),
        _case("sigma-nan", lambda d: (m, lab, s), ValueError, "`sigma`", sigma=_NAN),
        _case("sigma-inf", lambda d: (m, lab, s), ValueError, "`sigma`", sigma=float("inf")),
    ]


OPS = [
    OpInfo("nms", segops.nms, ref.nms, "nms", _nms_samples, bad=_nms_bad,
           scalars=dict(iou_threshold="real", max_out="capacity")),
    OpInfo("batched_nms", segops.batched_nms, ref.batched_nms, "nms", _batched_samples,
           bad=_batched_bad, scalars=dict(iou_threshold="real", max_out="capacity")),
    OpInfo("fast_nms", segops.fast_nms, ref.fast_nms, "nms", _fast_samples, bad=_fast_bad,
           scalars=dict(iou_threshold="real", top_k="int", score_threshold="real",
                        max_detections="int", cross_class="bool", second_threshold="bool",
                        padded="bool")),
    OpInfo("matrix_nms", segops.matrix_nms, ref.matrix_nms, "nms", _matrix_samples,
           bad=_matrix_bad, scalars=dict(kernel="str", sigma="real")),
]
