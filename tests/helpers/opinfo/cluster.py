"""Registry entry of the clustering family: cluster_seeds."""

from __future__ import annotations


import math

import torch

import segops
from segops import reference as ref

from ..cluster import make_scene
from . import BadCase, OpInfo, Sample

_SCENE = make_scene(3, H=24, W=40, n_instances=3, speckles=2, radius=(3.0, 5.0))
_SCENE2 = make_scene(4, H=20, W=28, n_instances=2, n_sigma=2, radius=(3.0, 4.0))


def _samples(device, dtype):
    p1 = _SCENE.prediction.to(dtype).to(device)
    p2 = _SCENE2.prediction.to(dtype).to(device)
    return [
        Sample("exact", (p1,), _SCENE.kwargs(min_pixels=4, threshold=0.5), fullgraph=False),
        Sample("padded", (p1,), _SCENE.kwargs(min_pixels=4, threshold=0.5, max_instances=8)),
        Sample("padded-cap", (p1,), _SCENE.kwargs(min_pixels=4, max_instances=1)),
        Sample("two-sigmas", (p2,), _SCENE2.kwargs(min_pixels=3, max_instances=4)),
        Sample("nothing-masked", (p1[:, :0],), _SCENE.kwargs(max_instances=2)),
    ]


def _case(label, exc, match, pred=None, **kwargs):
    def make(device):
        p = _SCENE.prediction.float() if pred is None else pred
        return (p,), {**dict(min_pixels=4), **kwargs}
    return BadCase(label, make, exc, match)


_P = torch.zeros(4, 8, 8)
# (args, kwargs, exception, match, label)
_TABLE = [
    ((_P.numpy(),), {}, TypeError, "prediction", "numpy"),
    (([[[0.0]]],), {}, TypeError, "prediction", "list"),
    ((torch.zeros(4, 8, 8, dtype=torch.int32),), {}, TypeError, "prediction", "int32"),
    ((torch.zeros(4, 8, 8, dtype=torch.bool),), {}, TypeError, "prediction", "bool"),
    ((torch.zeros(4, 8, 8, dtype=torch.complex64),), {}, TypeError, "prediction", "complex"),
    ((torch.zeros(1, 4, 8, 8),), {}, ValueError, "prediction", "4d"),
    ((torch.zeros(5, 8, 8),), {}, ValueError, "prediction.*n_sigma", "5-channels"),
    ((_P,), dict(n_sigma=2), ValueError, "prediction.*n_sigma", "n-sigma-2-channels"),
    ((torch.zeros(3, 8, 8),), {}, ValueError, "prediction", "3-channels"),
    ((_P,), dict(n_sigma=0), ValueError, "n_sigma", "n-sigma-0"),
    ((_P,), dict(grid=(1024, 1)), ValueError, "grid", "grid-1"),
    ((_P,), dict(grid=(1024, 0)), ValueError, "grid", "grid-0"),
    ((_P,), dict(extent=(math.nan, 2.0)), ValueError, "extent", "extent-nan"),
    ((_P,), dict(extent=(-math.inf, 2.0)), ValueError, "extent", "extent-minus-inf"),
]


def _bad():
    p = _SCENE.prediction.float()
    table = [BadCase(label, lambda d, a=a, k=k: (a, k), exc, match)
             for a, k, exc, match, label in _TABLE]
    return table + [
        _case("prediction-2d", ValueError, "`prediction`", pred=p[0]),
        _case("prediction-channels", ValueError, "`prediction`", pred=p[:3]),
        _case("prediction-int", TypeError, "`prediction`", pred=p.long()),
        _case("n-sigma-3", ValueError, "`n_sigma`", n_sigma=3),
        _case("threshold-nan", ValueError, "`threshold` must not be NaN", threshold=float("nan")),
        _case("seed-threshold-nan", ValueError, "`seed_threshold`", seed_threshold=float("nan")),
        _case("min-pixels-negative", ValueError, "`min_pixels`", min_pixels=-1),
        _case("max-instances-negative", ValueError, "`max_instances` must be >= 0",
              max_instances=-1),
        _case("max-instances-huge", ValueError, "`max_instances` must be in", max_instances=2**40),
        _case("grid-small", ValueError, "`grid` entries must be in", grid=(1, 2048)),
        _case("grid-huge", ValueError, "`grid` entries must be in", grid=(1024, 2**28)),
        _case("grid-one", TypeError, "`grid`", grid=1024),
        _case("grid-float", TypeError, "`grid`", grid=(1024.0, 2048)),
        _case("extent-inf", ValueError, "`extent`", extent=(1.0, float("inf"))),
        _case("extent-str", TypeError, "`extent`", extent=("1", 2.0)),
    ]


OPS = [
    OpInfo("cluster_seeds", segops.cluster_seeds, ref.cluster_seeds, "cluster", _samples,
           bad=_bad, onnx=False,
           scalars=dict(n_sigma="int", threshold="real", seed_threshold="real",
                        min_pixels="int", max_instances="capacity")),
]
