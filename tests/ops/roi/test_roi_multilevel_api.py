"""multilevel_roi_align (docs/ops/roi.md): the API surface. gradcheck, opcheck, torch.compile,
autocast, the bad-input table; CUDA parity with the CPU and the deterministic backward.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given

import segops
from segops.ops.roi import _level_areas
from segops.reference import roi as ref

from helpers.roi import (
    ALL_DTYPES, TOL, _grad_output, assert_close, assert_nonzero, deterministic, ml_problems,
)

ml = segops.multilevel_roi_align

_SCALES = [1 / 2, 1 / 4, 1 / 8]
# Levels 0, 1, 2 and 0 (zero width) with canonical_scale=4, canonical_level=1.
_ROIS = torch.tensor([[0, 1.0, 1.0, 5.5, 5.5], [1, 2.0, 3.0, 13.0, 14.0],
                      [0, 0.0, 0.0, 18.5, 18.5], [1, 5.5, 2.5, 5.5, 9.0]])
_KW = dict(canonical_scale=4.0, canonical_level=1)


def _pyramid(device, dtype=torch.float32, n=2, c=2, seed=21):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, 8 // 2**l + 1, 10 // 2**l + 2, generator=g).to(dtype).to(device)
            for l in range(3)]


def test_levels_of_the_fixed_rois():
    assert ref.map_levels(_ROIS, _SCALES, **_KW).tolist() == [0, 1, 2, 0]


# ======================================================================================
# gradcheck, opcheck, torch.compile, autocast
# ======================================================================================


@pytest.mark.parametrize("mode", ["assign", "all"])
@pytest.mark.parametrize("aligned,sampling_ratio", [(False, 2), (True, -1)])
def test_gradcheck(device, mode, aligned, sampling_ratio):
    xs = [x.requires_grad_(True) for x in _pyramid(device, torch.float64)]
    rois = _ROIS.to(torch.float64).to(device)

    def fn(*xs):
        return ml(list(xs), rois, (3, 2), _SCALES, sampling_ratio, aligned, mode=mode, **_KW)

    assert_nonzero(fn(*xs))
    assert torch.autograd.gradcheck(fn, xs)
    assert torch.autograd.gradgradcheck(fn, xs)


def _raw_args(device, dtype, mode):
    xs = [x.requires_grad_(True) for x in _pyramid(device, dtype)]
    rois = _ROIS.to(dtype).to(device)
    areas = [] if mode == "all" else _level_areas(_SCALES, **_KW)
    return xs, rois, areas



def _autocast_check(device, autocast_dtype):
    xs32 = _pyramid(device)
    rois32 = _ROIS.to(device)  # whole and half coordinates: exact in half types too
    xh = [x.to(autocast_dtype) for x in xs32]
    kw = dict(output_size=(3, 2), spatial_scales=_SCALES, sampling_ratio=2, **_KW)
    expected = ref.multilevel_roi_align([x.float().cpu() for x in xh], rois32.cpu(), **kw)
    assert_nonzero(expected)
    with torch.autocast(device, dtype=autocast_dtype):
        assert (xs32[0] @ xs32[0].transpose(2, 3)).dtype == autocast_dtype  # autocast is on
        xg = [x.clone().requires_grad_(True) for x in xs32]
        a32 = ml(xg, rois32, **kw)
        ah = ml(xh, rois32, **kw)
        ah2 = ml(xh, rois32.to(autocast_dtype), **kw)
        all_h = ml(xh, rois32, **kw, mode="all")
    assert a32.dtype == torch.float32
    assert ah.dtype == ah2.dtype == all_h.dtype == autocast_dtype
    torch.testing.assert_close(a32, ml(xs32, rois32, **kw))
    assert_close(ah, expected, autocast_dtype)
    assert_close(ah2, expected, autocast_dtype)
    a32.sum().backward()
    assert all(x.grad.dtype == torch.float32 for x in xg)
    assert_nonzero(xg[2].grad)


def test_autocast_cpu():
    _autocast_check("cpu", torch.bfloat16)


@pytest.mark.cuda
def test_autocast_cuda():
    _autocast_check("cuda", torch.float16)


# ======================================================================================
# Bad input
# ======================================================================================


def _x(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


_P = [_x(1, 2, 8, 8), _x(1, 2, 4, 4)]  # a valid two-level pyramid at scales 1/2, 1/4
_B = torch.tensor([[0, 1.0, 1.0, 6.0, 6.0]])
nan = math.nan


_A = _level_areas([0.5, 0.25], 224.0, 4)
# The raw op's own checks (C++): (features, level_areas, all_levels, scales, message regex)
RAW_BAD_INPUTS = [
    pytest.param([], [], True, [], "at least one level", id="empty"),
    pytest.param(_P, [], False, [0.5, 0.25], "level_areas", id="areas-missing"),
    pytest.param(_P, _A, True, [0.5, 0.25], "level_areas.*empty", id="areas-with-all"),
    pytest.param(_P + [_x(1, 2, 2, 2)], [9.0, 4.0], False, [0.5, 0.25, 0.125], "ascending",
                 id="areas-descending"),
    pytest.param(_P, [nan], False, [0.5, 0.25], "level_areas", id="areas-nan"),
    pytest.param(_P, _A, False, [0.5], "spatial_scales", id="scales-length"),
    pytest.param(_P, _A, False, [0.5, math.inf], "spatial_scales", id="scales-inf"),
    pytest.param([_P[0], _P[1].double()], _A, False, [0.5, 0.25], "dtype", id="dtype"),
    pytest.param([_P[0], _x(1, 3, 4, 4)], _A, False, [0.5, 0.25], "channels", id="channels"),
]


@pytest.mark.parametrize("features,areas,all_levels,scales,match", RAW_BAD_INPUTS)
def test_bad_input_raw_op(features, areas, all_levels, scales, match):
    with pytest.raises((ValueError, TypeError), match=f"(?i){match}"):
        torch.ops.segops.multilevel_roi_align(features, _B, scales, 2, 2, 2, False, areas,
                                              all_levels)


def test_bad_input_raw_backward():
    grad = torch.zeros(1, 2, 2, 2)
    op = torch.ops.segops._multilevel_roi_align_backward
    with pytest.raises(ValueError, match="grad"):  # all_levels wants [L, K, C, h, w]
        op(grad, _B, [0.5, 0.25], 2, 2, 1, 2, [8, 4], [8, 4], 2, False, [], True)
    with pytest.raises(ValueError, match="widths"):
        op(grad, _B, [0.5, 0.25], 2, 2, 1, 2, [8, 4], [8], 2, False, _A, False)
    with pytest.raises(ValueError, match="batch index"):
        op(grad, _B, [0.5, 0.25], 2, 2, 0, 2, [8, 4], [8, 4], 2, False, _A, False)


# ======================================================================================
# CUDA: parity with the CPU, the deterministic backward, devices
# ======================================================================================


@pytest.mark.cuda
@given(p=ml_problems())
def test_cuda_matches_cpu(p):
    """Forward and the deterministic backward bit for bit (the same level decisions and the
    same arithmetic in the same order); the atomic backward within the dtype's tolerance."""
    xc, bc = p.features("cpu"), p.boxes_arg("cpu")
    xg, bg = p.features("cuda"), p.boxes_arg("cuda")
    out_cpu = ml(xc, bc, **p.kwargs())
    out_gpu = ml(xg, bg, **p.kwargs())
    assert_nonzero(out_cpu)
    assert torch.equal(out_gpu.cpu(), out_cpu)
    for det in (False, True):
        grads = []
        for xs, b in ((xc, bc), (xg, bg)):
            xs = [x.clone().requires_grad_(True) for x in xs]
            with deterministic(det):
                out = ml(xs, b, **p.kwargs())
                out.backward(_grad_output(p, out.shape, out.device))
            grads.append([x.grad.cpu() for x in xs])
        for c, g in zip(*grads):
            if det:
                assert torch.equal(g, c)
            else:
                torch.testing.assert_close(g, c, **TOL[p.dtype])


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["assign", "all"])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_cuda_deterministic_backward_is_bitwise_reproducible(mode, dtype):
    """Many overlapping RoIs over four levels: an atomic scatter would vary run to run."""
    g = torch.Generator().manual_seed(22)
    N, C = 2, 16
    xs = [torch.randn(N, C, 64 // 2**l, 80 // 2**l, generator=g).to(dtype).cuda()
          for l in range(4)]
    xy = torch.rand(600, 2, generator=g) * 200
    wh = torch.exp(torch.rand(600, 2, generator=g) * 5) + 1
    rois = torch.cat([torch.randint(0, N, (600, 1), generator=g).float(), xy, xy + wh], 1).cuda()
    kw = dict(output_size=7, spatial_scales=[1 / 4, 1 / 8, 1 / 16, 1 / 32], sampling_ratio=2,
              aligned=True, canonical_scale=56.0, mode=mode)
    grad = torch.randn(ml(xs, rois, **kw).shape, generator=g).to(dtype).cuda()
    results = []
    for _ in range(3):
        xi = [x.clone().requires_grad_(True) for x in xs]
        with deterministic(True):
            ml(xi, rois, **kw).backward(grad)
        results.append([x.grad for x in xi])
    assert all(r.abs().max() > 0 for r in results[0])
    for a, b, c in zip(*results):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.cuda
def test_cuda_device_mismatch():
    xs = [x.cuda() for x in _P]
    with pytest.raises(ValueError, match="device"):
        ml(xs, _B, 2, [0.5, 0.25])
    with pytest.raises(ValueError, match="device"):
        ml([xs[0], _P[1]], _B.cuda(), 2, [0.5, 0.25])
    with pytest.raises(ValueError, match="device"):
        ml(_P, _B.cuda(), 2, [0.5, 0.25])
