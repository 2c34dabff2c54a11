"""multilevel_roi_align (docs/ops/roi.md): against the reference (knife edges of torchvision's
float32 LevelMapper accepted either way), exactly roi_align per row / per level, the level
boundaries, gradients, opcheck, torch.compile, autocast, bad and empty inputs, CUDA parity.
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
    ALL_DTYPES, FULL_DTYPES, TOL, MLProblem, _grad_output, assert_close, assert_nonzero,
    chosen_levels, deterministic, ml_problems, op_levels, reference_level_candidates,
    reference_multilevel,
)

ml = segops.multilevel_roi_align


def _nonfinite_rows(p: MLProblem) -> torch.Tensor:
    return ~torch.isfinite(p.rois(dtype=torch.float64)[:, 1:]).all(1)


def _per_level_roi_align(p: MLProblem, xs, boxes) -> torch.Tensor:
    return torch.stack([segops.roi_align(x, boxes, p.output_size, s, p.sampling_ratio,
                                         p.aligned) for x, s in zip(xs, p.scales)])


# ======================================================================================
# Against the reference, and against roi_align
# ======================================================================================


@given(p=ml_problems())
def test_forward_matches_reference(device, p):
    out = ml(p.features(device), p.boxes_arg(device), **p.kwargs())
    K, (h, w) = len(p.boxes), p.pooled
    per_level, _ = reference_multilevel(p, "all")
    assert out.dtype == p.dtype and out.device.type == device
    assert_nonzero(per_level)
    if p.mode == "all":
        assert out.shape == (p.levels, K, p.channels, h, w)
        assert_close(out, per_level, p.dtype)
        assert (out.cpu()[:, _nonfinite_rows(p)] == 0).all()
        return
    assert out.shape == (K, p.channels, h, w)
    expected, _ = reference_multilevel(p, "assign")
    assert_nonzero(expected)
    levels = chosen_levels(p, out, per_level)
    ref_levels, _ = reference_level_candidates(p)
    same = levels == ref_levels  # every row but a knife edge taken the other way
    assert_close(out.cpu()[same], expected[same], p.dtype)
    assert_close(out, per_level[levels, torch.arange(K)], p.dtype)
    assert (out.cpu()[_nonfinite_rows(p)] == 0).all()


@pytest.mark.parametrize("det", [False, True], ids=["default", "deterministic"])
@given(p=ml_problems())
def test_backward_matches_reference(device, det, p):
    xs = [x.requires_grad_(True) for x in p.features(device)]
    with deterministic(det):
        out = ml(xs, p.boxes_arg(device), **p.kwargs())
        grad = _grad_output(p, out.shape, device)
        out.backward(grad)
    per_level, xr = reference_multilevel(p, "all", requires_grad=True)
    if p.mode == "all":
        target = per_level
    else:
        levels = chosen_levels(p, out.detach(), per_level.detach())
        target = per_level[levels, torch.arange(len(p.boxes))]
    target.backward(grad.cpu().to(target.dtype))
    expected = [r.grad if r.grad is not None else torch.zeros_like(r) for r in xr]
    assert any(e.abs().max() > 0 for e in expected)
    for x, e in zip(xs, expected):
        assert x.grad.dtype == p.dtype and x.grad.shape == x.shape
        assert_close(x.grad, e, p.dtype)


@given(p=ml_problems(modes=("assign",)))
def test_assign_is_roi_align_at_the_documented_level(device, p):
    """Row k is roi_align's row k on level op_levels(p)[k], bit for bit; and that level is
    torchvision's LevelMapper's except (possibly) on a knife edge."""
    xs, boxes = p.features(device), p.boxes_arg(device)
    out = ml(xs, boxes, **p.kwargs())
    levels = op_levels(p)
    per_level = _per_level_roi_align(p, xs, boxes)
    assert torch.equal(out, per_level[levels.to(device), torch.arange(len(p.boxes), device=device)])
    ref_levels, other = reference_level_candidates(p)
    assert ((levels == ref_levels) | (levels == other)).all()


@given(p=ml_problems(modes=("all",)))
def test_all_is_roi_align_per_level(device, p):
    xs, boxes = p.features(device), p.boxes_arg(device)
    out = ml(xs, boxes, **p.kwargs())
    assert_nonzero(out)
    assert torch.equal(out, _per_level_roi_align(p, xs, boxes))


def _python_level(side_w, side_h, cs, cl, k_min, k_max):
    """torchvision's LevelMapper in float64 Python arithmetic."""
    area = side_w * side_h
    if not area > 0:
        return 0
    v = math.floor(cl + math.log2(math.sqrt(area) / cs) + 1e-6)
    return min(max(v, k_min), k_max) - k_min


# (w, h) of boxes at and around the thresholds of the default LevelMapper (224, 4) on
# P2..P5: 112, 224 and 448 (and 112 x 448) sit exactly on a level boundary.
_SIDES = [(8, 8), (111.9, 111.9), (112, 112), (112.1, 112.1), (223.99, 223.99), (224, 224),
          (224.01, 224.01), (447.9, 447.9), (448, 448), (112, 448), (600, 600), (0, 37),
          (2000, 900), (55.99, 56.01)]


@pytest.mark.parametrize("cs,cl", [(224.0, 4), (56.0, 3), (28.0, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_level_boundaries(device, cs, cl, dtype):
    """Boxes exactly at level boundaries: the op, the reference and float64 Python all agree
    (no knife-edge leniency), and the row is roi_align at that level and not a neighbour's."""
    f = cs / 224.0 * 2.0 ** (4 - cl)  # the same levels as (224, 4)
    sides = [(w * f, h * f) for w, h in _SIDES]
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    g = torch.Generator().manual_seed(11)
    xs = [torch.randn(1, 2, 8 + 64 // 2**l, 9 + 64 // 2**l, generator=g).to(dtype).to(device)
          for l in range(4)]
    box_dtype = torch.float32 if dtype == torch.bfloat16 else dtype
    rois = torch.tensor([[0, 3.0, 5.0, 3.0 + w, 5.0 + h] for w, h in sides], dtype=box_dtype)
    expected = torch.tensor([_python_level(w, h, cs, cl, 2, 5) for w, h in sides])
    assert set(expected.tolist()) == {0, 1, 2, 3}
    assert torch.equal(ref.map_levels(rois.float(), scales, cs, cl), expected)
    out = ml(xs, rois.to(device), 2, scales, 2, canonical_scale=cs, canonical_level=cl)
    per_level = torch.stack([segops.roi_align(x, rois.to(device), 2, s, 2)
                             for x, s in zip(xs, scales)])
    for k, l in enumerate(expected.tolist()):
        assert torch.equal(out[k], per_level[l, k])
        for other in (l - 1, l + 1):
            if 0 <= other < 4:
                assert not torch.equal(out[k], per_level[other, k])


@pytest.mark.parametrize("cl", [2**40, 4096, -(2**40)])
def test_extreme_canonical_levels(device, cl):
    """A huge canonical_level puts every box of positive area on the coarsest level (its level
    value is huge) but a zero-area box still on the lowest (log2(0) = -inf): the level areas
    must not underflow to 0. A hugely negative one puts everything on the lowest level."""
    scales = [1 / 4, 1 / 8, 1 / 16]
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(1, 2, 24 // 2**l, 28 // 2**l, generator=g).to(device) for l in range(3)]
    rois = torch.tensor([[0, 5.0, 6.0, 5.0, 9.0], [0, 2.0, 3.0, 2.5, 3.5],
                         [0, 1.0, 1.0, 60.0, 70.0]], device=device)
    out = ml(xs, rois, 2, scales, 2, canonical_level=cl)
    per_level = torch.stack([segops.roi_align(x, rois, 2, s, 2) for x, s in zip(xs, scales)])
    levels = [0, 2, 2] if cl > 0 else [0, 0, 0]
    for k, l in enumerate(levels):
        assert torch.equal(out[k], per_level[l, k]), (k, l)
    assert not torch.equal(per_level[0, 0], per_level[2, 0])  # the levels are told apart


def test_matches_torchvision_multiscale_roi_align():
    """torchvision's MultiScaleRoIAlign (infers the same scales from the feature sizes)."""
    tv = pytest.importorskip("torchvision.ops")
    g = torch.Generator().manual_seed(12)
    image = (256, 320)
    names = ["p2", "p3", "p4", "p5"]
    feats = {n: torch.randn(2, 3, image[0] // 2**(l + 2), image[1] // 2**(l + 2), generator=g)
             for l, n in enumerate(names)}
    xy = torch.rand(60, 2, generator=g) * 200
    wh = torch.exp(torch.rand(60, 2, generator=g) * 6)
    boxes = [torch.cat([xy[:30], xy[:30] + wh[:30]], 1), torch.cat([xy[30:], xy[30:] + wh[30:]], 1)]
    pooler = tv.MultiScaleRoIAlign(names, 7, 2)
    expected = pooler(feats, boxes, [image, image])
    out = ml(list(feats.values()), boxes, 7, [1 / 4, 1 / 8, 1 / 16, 1 / 32], 2)
    assert_nonzero(expected)
    torch.testing.assert_close(out, expected, **TOL[torch.float32])


# ======================================================================================
# NaN/inf boxes, determinism, empty inputs
# ======================================================================================

_SCALES3 = [1 / 2, 1 / 4, 1 / 8]


def _pyramid(device, dtype=torch.float32, n=2, c=2, seed=13):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, 8 // 2**l + 1, 10 // 2**l + 2, generator=g).to(dtype).to(device)
            for l in range(3)]


# Sides 4.5 (level 0), 11 (level 1), 18.5 (level 2) with canonical_scale=4, level 1.
_ROIS3 = torch.tensor([[0, 1.0, 1.0, 5.5, 5.5], [1, 2.0, 3.0, 13.0, 14.0],
                       [0, 0.0, 0.0, 18.5, 18.5], [1, 5.5, 2.5, 5.5, 9.0]])
_KW3 = dict(canonical_scale=4.0, canonical_level=1)


@pytest.mark.parametrize("mode", ["assign", "all"])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_nonfinite_boxes_give_zero_rows_and_no_gradient(device, mode, dtype):
    xs = [x.requires_grad_(True) for x in _pyramid(device, dtype)]
    nan, inf = math.nan, math.inf
    bad = torch.tensor([[1, nan, 1.0, 6.0, 7.0], [0, 1.0, inf, 6.0, 7.0],
                        [0, -inf, -inf, inf, inf]])
    rois = torch.cat([_ROIS3, bad]).to(dtype).to(device)
    out = ml(xs, rois, 3, _SCALES3, 2, mode=mode, **_KW3)
    rows = out if mode == "assign" else out.transpose(0, 1)
    assert (rows[4:] == 0).all() and (rows[:4].flatten(1) != 0).any(1).all()
    out.sum().backward()
    xs2 = [x.detach().clone().requires_grad_(True) for x in xs]
    ml(xs2, rois[:4], 3, _SCALES3, 2, mode=mode, **_KW3).sum().backward()
    for x, x2 in zip(xs, xs2):
        assert_nonzero(x2.grad)
        assert torch.equal(x.grad, x2.grad)


@pytest.mark.parametrize("mode", ["assign", "all"])
@given(p=ml_problems(dtypes=FULL_DTYPES))
def test_deterministic_backward_is_reproducible_and_agrees(device, mode, p):
    grads = []
    for det in (False, True, True):
        xs = [x.requires_grad_(True) for x in p.features(device)]
        with deterministic(det):
            out = ml(xs, p.boxes_arg(device), **p.kwargs(mode))
            out.backward(_grad_output(p, out.shape, device))
        grads.append([x.grad for x in xs])
    assert any(g.abs().max() > 0 for g in grads[0])
    for a, b, c in zip(*grads):
        assert_close(b, a.cpu(), p.dtype)
        assert torch.equal(b, c)


def _empty_cases():
    # (shapes of the levels, boxes builder, K)
    three = [(2, 3, 8, 9), (2, 3, 4, 5), (2, 3, 2, 3)]
    return [
        pytest.param(three, lambda d, t: torch.zeros(0, 5, dtype=t, device=d), 0, id="K=0"),
        pytest.param(three, lambda d, t: [torch.zeros(0, 4, dtype=t, device=d)] * 2, 0,
                     id="K=0-list"),
        pytest.param(three, lambda d, t: [], 0, id="empty-list"),
        pytest.param([(0, 3, 8, 9), (0, 3, 4, 5)],
                     lambda d, t: torch.zeros(0, 5, dtype=t, device=d), 0, id="N=0"),
        pytest.param([(1, 3, 8, 9), (1, 3, 0, 5), (1, 3, 2, 0)],
                     lambda d, t: torch.tensor([[0, 0, 0, 4.0, 4.0], [0, 0, 0, 15, 15],
                                                [0, 1, 1, 30, 30]], dtype=t, device=d),
                     3, id="empty-levels"),
    ]


@pytest.mark.parametrize("mode", ["assign", "all"])
@pytest.mark.parametrize("shapes,make_boxes,K", _empty_cases())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_empty_inputs(device, mode, shapes, make_boxes, K, dtype):
    xs = [torch.randn(s).to(dtype).to(device).requires_grad_(True) for s in shapes]
    scales = [2.0 ** -(l + 1) for l in range(len(shapes))]
    out = ml(xs, make_boxes(device, dtype), (2, 3), scales, 2, True, mode=mode, **_KW3)
    shape = (K, shapes[0][1], 2, 3)
    assert out.shape == (shape if mode == "assign" else (len(shapes),) + shape)
    assert out.dtype == dtype and out.device.type == device
    if shapes[0][2] * shapes[0][3] == 0 or K == 0:
        assert (out == 0).all()
    else:  # empty levels pool zeros; the non-empty level pools its RoIs
        assert (out != 0).any()
    out.sum().backward()
    for x in xs:
        assert x.grad.shape == x.shape and x.grad.dtype == dtype
    if K == 0:
        assert all((x.grad == 0).all() for x in xs)


@pytest.mark.parametrize("mode", ["assign", "all"])
def test_zero_output_size(device, mode):
    xs = _pyramid(device)
    rois = _ROIS3.to(device)
    for size in ((0, 3), (2, 0)):
        out = ml(xs, rois, size, _SCALES3, mode=mode, **_KW3)
        assert out.shape[-3:] == (2, *size) and out.shape[-4] == 4


def test_all_mode_takes_any_positive_scales(device):
    xs = _pyramid(device)
    rois = _ROIS3.to(device)
    scales = [0.7, 1 / 3, 0.2]
    out = ml(xs, rois, 2, scales, 2, mode="all")
    for l, (x, s) in enumerate(zip(xs, scales)):
        assert torch.equal(out[l], segops.roi_align(x, rois, 2, s, 2))
    assert_nonzero(out)
