"""Registry entries of the RoI family: roi_align, roi_pool, multilevel_roi_align."""

from __future__ import annotations

import math

import torch

import segops
from segops import reference as ref

from ..roi import _ROIS, _x
from . import BadCase, OpInfo, Sample


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _features(device, dtype, shape=(2, 3, 10, 12), seed=0):
    return torch.randn(shape, generator=_gen(seed), dtype=torch.float64).to(dtype).to(device)


def _rois(device, dtype):
    """Boxes in image coordinates (scale 0.5 maps them onto a 10x12 map): inside, straddling
    the border, one of each batch image."""
    rois = torch.tensor([[0, 1.0, 2.0, 15.0, 12.0], [1, 4.0, 0.5, 22.0, 18.0],
                         [0, -3.0, 6.0, 9.0, 25.0], [1, 10.0, 10.0, 11.0, 10.5]])
    return rois.to(dtype).to(device)


def _roi_samples(pooled: bool):
    def samples(device, dtype):
        x, rois = _features(device, dtype), _rois(device, dtype)
        extra = [] if pooled else [
            Sample("adaptive-aligned", (x, rois, (3, 4), 0.5, -1, True)),
            Sample("sampling2", (x, rois, 2, 0.5, 2, False)),
        ]
        boxes_list = [rois[rois[:, 0] == b, 1:] for b in (0, 1)]
        return [
            Sample("tensor-rois", (x, rois, 3, 0.5)),
            *extra,
            Sample("list-boxes", (x, boxes_list, (2, 3), 0.5)),
            Sample("no-boxes", (x, rois[:0], 3, 0.5)),
        ]
    return samples


def _roi_grad(func):
    def grad(device, dtype):
        x = _features(device, torch.float64, (2, 2, 6, 7), seed=3).requires_grad_()
        rois = torch.tensor([[0, 0.5, 1.0, 9.0, 8.0], [1, 3.0, 2.0, 11.5, 12.0]],
                            dtype=torch.float64, device=device)
        return [(lambda t: func(t, rois, 3, 0.5), (x,))]
    return grad


def _common_bad(func, extra_args=()):
    def call(x, rois, *rest):
        return (x, rois, 3, 0.5, *extra_args) if not rest else (x, rois, *rest)

    def mk(fn):
        return lambda device: (fn(device), {})

    x = lambda d: _features(d, torch.float32)  # noqa: E731
    r = lambda d: _rois(d, torch.float32)  # noqa: E731
    return [
        BadCase("input-3d", mk(lambda d: call(x(d)[0], r(d))), ValueError, "`input`"),
        BadCase("input-int", mk(lambda d: call(x(d).long(), r(d))), TypeError, "`input`"),
        BadCase("input-list", mk(lambda d: call([x(d)], r(d))), TypeError, "`input`"),
        BadCase("boxes-Kx4", mk(lambda d: call(x(d), r(d)[:, 1:])), ValueError, "`boxes`"),
        BadCase("boxes-1d", mk(lambda d: call(x(d), r(d)[0])), ValueError, "`boxes`"),
        BadCase("boxes-int", mk(lambda d: call(x(d), r(d).long())), TypeError, "`boxes`"),
        BadCase("boxes-meta", mk(lambda d: call(x(d), r(d).to("meta"))), ValueError,
                "`boxes` must be on the device of `input`"),
        BadCase("boxes-dict", mk(lambda d: call(x(d), {0: r(d)})), TypeError, "`boxes`"),
        BadCase("boxes-list-Lx5", mk(lambda d: call(x(d), [r(d)])), ValueError, r"`boxes\[0\]`"),
        BadCase("boxes-list-int", mk(lambda d: call(x(d), [r(d)[:, 1:], 3])), TypeError,
                r"`boxes\[1\]`"),
        BadCase("batch-index-2", mk(lambda d: call(x(d), r(d) + torch.tensor([2.0, 0, 0, 0, 0],
                                                                          device=d))),
                ValueError, "batch index"),
        BadCase("batch-index-half", mk(lambda d: call(x(d), r(d) + torch.tensor(
            [0.5, 0, 0, 0, 0], device=d))), ValueError, "batch index"),
        BadCase("scale-nan", mk(lambda d: call(x(d), r(d), 3, float("nan"), *extra_args)),
                ValueError, "`spatial_scale` must be finite"),
        BadCase("scale-inf", mk(lambda d: call(x(d), r(d), 3, float("inf"), *extra_args)),
                ValueError, "`spatial_scale` must be finite"),
        BadCase("size-negative", mk(lambda d: call(x(d), r(d), (-1, 3), 0.5, *extra_args)),
                ValueError, "`output_size` must be in"),
        BadCase("size-huge", mk(lambda d: call(x(d), r(d), (2**40, 3), 0.5, *extra_args)),
                ValueError, "`output_size` must be in"),
        BadCase("output-too-large", mk(lambda d: call(x(d), r(d), (2**31 - 1, 2**31 - 1), 0.5,
                                                      *extra_args)),
                ValueError, "`output_size` makes the output too large"),
    ]


_NAN = math.nan

# (input, boxes, kwargs, exception, message regex, label), for roi_align and roi_pool alike
# (output_size 2 unless given).
_TABLE = [
    (_x(1, 2, 6, 6).long(), _ROIS, {}, TypeError, "input", "int-input"),
    (_x(1, 2, 6, 6).bool(), _ROIS, {}, TypeError, "input", "bool-input"),
    (_x(2, 6, 6), _ROIS, {}, ValueError, "input", "3d-input"),
    (_x(1, 1, 2, 6, 6), _ROIS, {}, ValueError, "input", "5d-input"),
    (_x(1, 2, 6, 6), _ROIS[None], {}, ValueError, "boxes", "boxes-3d"),
    (_x(1, 2, 6, 6), [_ROIS[0, 1:]], {}, ValueError, "boxes", "list-1d"),
    (_x(2, 2, 6, 6), [_ROIS[:, 1:], _ROIS[:, 1:, None]], {}, ValueError, "boxes",
     "list-second-3d"),
    (_x(1, 2, 6, 6), torch.tensor([[1, 1.0, 1, 4, 4]]), {}, ValueError, "batch index",
     "batch-index-N"),
    (_x(2, 2, 6, 6), torch.tensor([[0, 1.0, 1, 4, 4], [-1, 1, 1, 4, 4]]), {}, ValueError,
     "batch index", "batch-index-negative"),
    (_x(2, 2, 6, 6), torch.tensor([[0, 1.0, 1, 4, 4], [7, 1, 1, 4, 4]]), {}, ValueError,
     "batch index", "batch-index-large"),
    (_x(2, 2, 6, 6), torch.tensor([[_NAN, 1.0, 1, 4, 4]]), {}, ValueError, "batch index",
     "batch-index-nan"),
    (_x(0, 2, 6, 6), _ROIS, {}, ValueError, "batch index", "batch-index-N=0"),
    (_x(1, 2, 6, 6), [_ROIS[:, 1:].to("meta")], {}, ValueError, "device", "meta-list"),
    (_x(1, 2, 6, 6), _ROIS, {"output_size": -1}, ValueError, "output_size",
     "output-size-negative"),
]


def _table_bad():
    return [BadCase(label, lambda d, x=x, b=b, k=k: ((x, b), {"output_size": 2, **k}), exc,
                    f"(?i){match}")
            for x, b, k, exc, match, label in _TABLE]


def _align_bad():
    x = lambda d: _features(d, torch.float32)  # noqa: E731
    r = lambda d: _rois(d, torch.float32)  # noqa: E731
    return _common_bad(segops.roi_align) + _table_bad() + [
        BadCase("sampling-2**62", lambda d: ((x(d), r(d), 3, 0.5, 2**62), {}), ValueError,
                "`sampling_ratio` must be <= 1024"),
        BadCase("sampling-2**64", lambda d: ((x(d), r(d), 3, 0.5, 2**64), {}), ValueError,
                "`sampling_ratio` must fit in int64"),
    ]


# ---- multilevel_roi_align ----

_SCALES = [0.25, 0.125, 0.0625]


def _pyramid(device, dtype, seed=0, channels=3):
    return [_features(device, dtype, (2, channels, 32 >> l, 40 >> l), seed + l) for l in range(3)]


def _ml_rois(device, dtype):
    # areas 4, 36**2 .. 150**2: all three levels, and a zero-area box (lowest level)
    rois = torch.tensor([[0, 2.0, 3.0, 4.0, 5.0], [1, 10.0, 20.0, 90.0, 60.0],
                         [0, 0.0, 0.0, 150.0, 120.0], [1, 30.0, 30.0, 30.0, 40.0],
                         [0, 60.0, 8.0, 100.0, 50.0]])
    return rois.to(dtype).to(device)


def _ml_samples(device, dtype):
    feats, rois = _pyramid(device, dtype), _ml_rois(device, dtype)
    boxes_list = [rois[rois[:, 0] == b, 1:] for b in (0, 1)]
    return [
        Sample("assign", (feats, rois, 3, _SCALES), dict(sampling_ratio=2)),
        Sample("assign-list-aligned", (feats, boxes_list, (2, 3), _SCALES),
               dict(sampling_ratio=-1, aligned=True)),
        Sample("all", (feats, rois, 2, _SCALES), dict(mode="all")),
        Sample("canonical", (feats, rois, 2, _SCALES), dict(canonical_scale=56,
                                                             canonical_level=3)),
        Sample("no-boxes", (feats, rois[:0], 3, _SCALES)),
    ]


def _ml_grad(device, dtype):
    # a small pyramid (12x14 at 1/4): gradcheck perturbs every input element
    feats = [_features(device, torch.float64, (2, 2, 12 >> l, 14 >> l), 5 + l).requires_grad_()
             for l in range(3)]
    rois = _ml_rois(device, torch.float64) * torch.tensor([1.0, 0.3, 0.3, 0.3, 0.3],
                                                           dtype=torch.float64, device=device)
    return [
        # canonical_scale 28: these small boxes land on all three levels
        (lambda *f: segops.multilevel_roi_align(list(f), rois, 2, _SCALES, 2,
                                                canonical_scale=28), tuple(feats)),
        (lambda *f: segops.multilevel_roi_align(list(f), rois, 2, _SCALES, 2, mode="all"),
         tuple(feats)),
    ]


_MP = [_x(1, 2, 8, 8), _x(1, 2, 4, 4)]
_MB = torch.tensor([[0, 1.0, 1.0, 6.0, 6.0]])

# (features, boxes, kwargs, exception, message regex, label); output_size 2 and
# spatial_scales [0.5, 0.25] unless given.
_ML_TABLE = [
    ([_MP[0], "x"], _MB, {}, TypeError, r"features\[1\]", "features-not-tensor"),
    ([_MP[0].long(), _MP[1].long()], _MB, {}, TypeError, r"features\[0\]", "features-int"),
    ([_MP[0], _x(2, 4, 4)], _MB, {}, ValueError, r"features\[1\]", "features-3d-second"),
    ([_MP[0], _x(2, 2, 4, 4)], _MB, {}, ValueError, "batch size", "batch-mismatch"),
    ([_MP[0], _MP[1].to("meta")], _MB, {}, ValueError, "device", "device-mismatch"),
    (_MP, _MB, {"spatial_scales": 0.5}, TypeError, "spatial_scales", "scales-float"),
    (_MP, _MB, {"spatial_scales": [0.5, 0.125]}, ValueError, "spatial_scales.*consecutive",
     "scales-not-consecutive"),
    (_MP, _MB, {"spatial_scales": [0.25, 0.5]}, ValueError, "spatial_scales",
     "scales-ascending"),
    (_MP, _MB, {"spatial_scales": [0.5, _NAN]}, ValueError, "spatial_scales", "scales-nan"),
    (_MP, _MB, {"spatial_scales": [0.5, 0.0], "mode": "all"}, ValueError, "spatial_scales",
     "scales-zero"),
    (_MP, _MB, {"canonical_scale": 0.0}, ValueError, "canonical_scale", "canonical-scale-0"),
    (_MP, _MB, {"canonical_scale": _NAN}, ValueError, "canonical_scale",
     "canonical-scale-nan"),
    (_MP, _MB, {"canonical_scale": "224"}, TypeError, "canonical_scale",
     "canonical-scale-str"),
    (_MP, _MB, {"canonical_level": 4.0}, TypeError, "canonical_level",
     "canonical-level-float"),
    (_MP, _MB.long(), {}, TypeError, "boxes", "boxes-int"),
    (_MP, [_MB], {}, ValueError, "boxes", "list-Lx5"),
    (_MP, torch.tensor([[1, 1.0, 1, 4, 4]]), {}, ValueError, "batch index", "batch-index"),
    (_MP, torch.tensor([[_NAN, 1.0, 1, 4, 4]]), {}, ValueError, "batch index",
     "batch-index-nan"),
    ([_x(1, 1, 2, 2)] * 17, _MB, {"spatial_scales": [1.0] * 17, "mode": "all"}, ValueError,
     "at most 16", "too-many-levels"),
]


def _ml_bad():
    f = lambda d: _pyramid(d, torch.float32)  # noqa: E731
    r = lambda d: _ml_rois(d, torch.float32)  # noqa: E731

    def case(label, make, exc, match):
        return BadCase(label, lambda d: (make(d), {}), exc, match)

    table = [BadCase(label, lambda d, f=f, b=b, k=k: (
        (f, b), {"output_size": 2, "spatial_scales": [0.5, 0.25], **k}), exc, f"(?i){match}")
        for f, b, k, exc, match, label in _ML_TABLE]
    return table + [
        case("features-empty", lambda d: ([], r(d), 3, []), ValueError, "`features` must hold"),
        case("features-tensor", lambda d: (f(d)[0], r(d), 3, _SCALES), TypeError, "`features`"),
        case("features-channels", lambda d: (f(d)[:2] + [f(d)[2][:, :2]], r(d), 3, _SCALES),
             ValueError, "channels"),
        case("features-dtype", lambda d: (f(d)[:2] + [f(d)[2].double()], r(d), 3, _SCALES),
             TypeError, "dtype"),
        case("features-3d", lambda d: ([t[0] for t in f(d)], r(d), 3, _SCALES), ValueError,
             r"`features\[0\]`"),
        case("scales-count", lambda d: (f(d), r(d), 3, _SCALES[:2]), ValueError,
             "`spatial_scales` must have one entry per level"),
        case("scales-not-powers", lambda d: (f(d), r(d), 3, [0.25, 0.1, 0.05]), ValueError,
             "`spatial_scales`"),
        case("scales-negative", lambda d: (f(d), r(d), 3, [0.25, -0.125, 0.0625]), ValueError,
             "`spatial_scales` must be positive"),
        case("scales-str", lambda d: (f(d), r(d), 3, "0.25"), TypeError, "`spatial_scales`"),
        case("boxes-Kx4", lambda d: (f(d), r(d)[:, 1:], 3, _SCALES), ValueError, "`boxes`"),
        case("boxes-meta", lambda d: (f(d), r(d).to("meta"), 3, _SCALES), ValueError, "device"),
        case("sampling-2**62", lambda d: (f(d), r(d), 3, _SCALES, 2**62), ValueError,
             "`sampling_ratio` must be <= 1024"),
        case("size-negative", lambda d: (f(d), r(d), -2, _SCALES), ValueError,
             "`output_size` must be in"),
        BadCase("mode", lambda d: ((f(d), r(d), 3, _SCALES), dict(mode="max")), ValueError,
                "`mode` must be one of"),
        BadCase("canonical-scale", lambda d: ((f(d), r(d), 3, _SCALES),
                                              dict(canonical_scale=-224)),
                ValueError, "`canonical_scale` must be positive"),
    ]


OPS = [
    OpInfo("roi_align", segops.roi_align, ref.roi_align, "roi", _roi_samples(pooled=False),
           bad=_align_bad, grad=_roi_grad(segops.roi_align),
           scalars=dict(output_size="size", spatial_scale="real", sampling_ratio="int",
                        aligned="bool")),
    OpInfo("roi_pool", segops.roi_pool, ref.roi_pool, "roi", _roi_samples(pooled=True),
           bad=lambda: _common_bad(segops.roi_pool) + _table_bad(), grad=_roi_grad(segops.roi_pool),
           scalars=dict(output_size="size", spatial_scale="real")),
    OpInfo("multilevel_roi_align", segops.multilevel_roi_align, ref.multilevel_roi_align,
           "roi", _ml_samples, bad=_ml_bad, grad=_ml_grad,
           scalars=dict(output_size="size", sampling_ratio="int", aligned="bool",
                        canonical_scale="real", canonical_level="int", mode="str")),
]
