"""assemble_masks (docs/ops/masks.md): property tests against the reference (values, gradients, the
fused upsample-and-threshold form), the crop rule's exact cases, the API surface (bad
inputs, empty inputs, layouts), gradcheck, opcheck, torch.compile, autocast, CUDA == CPU.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given

import segops

from helpers.masks import (
    ALL_DTYPES, HALF_DTYPES, AssembleProblem, assemble_problems, assert_close, check_bool_band,
    foreground_threshold, ref, reference_assemble, relayout, upsample,
)

# Gradients: |got - expected| <= EPS * (the sum of |terms| of each entry) + RTOL * |expected|.
# Half types: the backward reads the rounded output (s * (1 - s) from a half s, off by up to
# an ulp of s: all of it when s saturates) and rounds its float32 products once.
GRAD_EPS = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 2.0**-10,
            torch.bfloat16: 2.0**-7}
GRAD_RTOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3,
             torch.bfloat16: 1.6e-2}


def _kept(p: AssembleProblem) -> torch.Tensor:
    """The crop of every detection, [N, H, W] bool (the reference's rule)."""
    ones = torch.ones(p.H, p.W, p.N)
    return ref.yolact_crop(ones, p.boxes_t(), p.padding).permute(2, 0, 1) > 0


def _size_arg(size):
    return size[0] if size[0] == size[1] else size


def _assert_grad_close(actual, expected, dtype, terms):
    """``terms``: for each entry, the sum of the absolute values of the products summed
    into it (what a rounding of s(1 - s) or of a partial sum can move). The result is
    rounded to ``dtype``, whose grid below its smallest normal number is absolute, not
    relative (float16: steps of 2**-24): one such step is allowed on top."""
    expected = expected.double()
    assert expected.abs().max() > 0
    diff = (actual.detach().cpu().double() - expected).abs()
    subnormal_step = torch.finfo(dtype).tiny * torch.finfo(dtype).eps
    allowed = GRAD_EPS[dtype] * terms + GRAD_RTOL[dtype] * expected.abs() + subnormal_step
    if not (diff <= allowed).all():
        i = int((diff - allowed).flatten().argmax())
        got, exp = float(actual.flatten()[i]), float(expected.flatten()[i])
        raise AssertionError(f"gradient differs at flat index {i}: {got} vs {exp} "
                             f"(allowed {float(allowed.flatten()[i])})")


def _grad_terms(grad, protos, coeffs):
    g, p, c = grad.abs().double(), protos.abs().double(), coeffs.abs().double()
    return torch.einsum("nhw,nk->hwk", g, c), torch.einsum("nhw,hwk->nk", g, p)


# ======================================================================================
# Property tests against the reference
# ======================================================================================


@given(p=assemble_problems(fused=False))
def test_assemble_matches_reference(device, p):
    expected, protos_r, coeffs_r = reference_assemble(p, requires_grad=True)
    protos, coeffs, boxes, padding = p.args(device)
    protos.requires_grad_(True)
    coeffs.requires_grad_(True)
    out = segops.assemble_masks(protos, coeffs, boxes, padding)
    assert out.shape == (p.N, p.H, p.W) and out.dtype == p.dtype and out.device.type == device
    assert expected.abs().max() > 0
    assert_close(out, expected.detach(), p.dtype)
    assert (out.detach().cpu()[~_kept(p)] == 0).all()  # the crop is exact

    g = torch.Generator().manual_seed(p.seed + 2)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64).to(p.dtype)
    expected.backward(grad)
    out.backward(grad.to(device))
    assert protos.grad.dtype == p.dtype and coeffs.grad.dtype == p.dtype
    terms = _grad_terms(grad, protos_r, coeffs_r)
    _assert_grad_close(protos.grad, protos_r.grad, p.dtype, terms[0])
    _assert_grad_close(coeffs.grad, coeffs_r.grad, p.dtype, terms[1])


@given(p=assemble_problems(fused=True))
def test_assemble_fused_matches_composition(device, p):
    """The fused form equals ``F.interpolate(cropped) > threshold`` except within the
    rounding band of the threshold, where only a few pixels may differ."""
    cropped, _, _ = reference_assemble(p)
    values = upsample(cropped, p.image_size)
    thr = foreground_threshold(values, p.threshold, True, p.dtype)
    out = segops.assemble_masks(*p.args(device), image_size=_size_arg(p.image_size),
                                threshold=thr)
    assert out.shape == (p.N, *p.image_size) and out.device.type == device
    differ = check_bool_band(out, values, thr, True, p.dtype)
    assert differ <= max(2, 0.01 * values.numel()), f"{differ} band pixels differ"


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_assemble_fused_band_is_tiny_at_yolact_scale(dtype):
    """YOLACT's shapes, halved (69x69x32 protos, 20 detections, a 275x300 image): pixels
    within the rounding band are a tiny fraction, and fewer still differ."""
    g = torch.Generator().manual_seed(8)
    protos = torch.relu(torch.randn(69, 69, 32, generator=g)).to(dtype)
    coeffs = torch.randn(20, 32, generator=g).to(dtype)
    xy = torch.rand(20, 2, generator=g) * 0.7
    boxes = torch.cat([xy, xy + 0.05 + torch.rand(20, 2, generator=g) * 0.3], 1)
    values = upsample(ref.assemble_masks(protos, coeffs, boxes), (275, 300))
    out = segops.assemble_masks(protos, coeffs, boxes, image_size=(275, 300))
    tiny = 5e-3 if dtype in HALF_DTYPES else 1e-5
    differ = check_bool_band(out, values, 0.5, True, dtype, max_band=tiny)
    assert differ <= tiny / 5 * values.numel()


# ======================================================================================
# The crop rule and the threshold, exactly
# ======================================================================================

_B13 = float(torch.tensor(11 / 13, dtype=torch.float32))
CROP_CASES = [
    # (H, W, box, padding, box dtype)
    (13, 13, (_B13, 0.0, 1.0, 1.0), 1, torch.float32),  # lo = 10: column 10 kept
    (13, 13, (_B13, 0.0, 1.0, 1.0), 1, torch.float64),  # lo = 10.0000001: not kept
    (13, 13, (_B13, 0.0, 1.0, 1.0), 1, torch.bfloat16),
    (4, 8, (0.25, 0.25, 0.5, 0.75), 0, torch.float32),
    (4, 8, (0.25, 0.25, 0.5, 0.75), 2, torch.float16),
    (5, 10, (0.33, 0.15, 0.61, 0.85), 1, torch.float32),
    (5, 10, (0.61, 0.85, 0.33, 0.15), 1, torch.float32),  # reversed
    (5, 10, (0.61, 0.15, 0.33, 0.85), 0, torch.float64),  # reversed in x
    (6, 6, (0.5, 0.5, 0.5, 0.5), 1, torch.float32),  # zero size: the padding remains
    (6, 6, (0.5, 0.5, 0.5, 0.5), 0, torch.float32),  # zero size: nothing
    (6, 6, (-0.5, 0.5, 0.25, 1.5), 1, torch.float32),  # partly outside
    (6, 6, (1.0, 0.0, 2.0, 1.0), 1, torch.float32),  # only the padding inside
    (6, 6, (1.5, 0.0, 2.0, 1.0), 1, torch.float32),  # wholly outside
    (5, 10, (math.nan, 0.15, 0.61, 0.85), 1, torch.float32),
    (5, 10, (0.33, 0.15, 0.61, math.nan), 1, torch.float64),
    (5, 10, (-math.inf, 0.15, math.inf, 0.85), 1, torch.float32),  # non-finite: empty
    (5, 10, (0.33, math.inf, 0.61, 0.85), 1, torch.float64),  # non-finite: empty
]


@pytest.mark.parametrize("H,W,box,padding,box_dtype", CROP_CASES)
def test_crop_cases(device, H, W, box, padding, box_dtype):
    """Prototypes with sigmoid 0.5 everywhere: the output is 0.5 exactly where kept. (A
    second, whole-image box: no case passes with an op that returns zeros.)"""
    protos = torch.zeros(H, W, 2, device=device)
    coeffs = torch.ones(2, 2, device=device)
    boxes = torch.tensor([box, (0.0, 0.0, 1.0, 1.0)], dtype=box_dtype, device=device)
    out = segops.assemble_masks(protos, coeffs, boxes, padding)
    expected = ref.assemble_masks(protos.cpu(), coeffs.cpu(), boxes.cpu(), padding)
    assert (expected[1] == 0.5).all()
    assert torch.equal(out.cpu(), expected)
    # and the fused form at the protos' size (no interpolation): `0.5 > 0.49` where kept
    fused = segops.assemble_masks(protos, coeffs, boxes, padding, image_size=(H, W),
                                  threshold=0.49)
    assert torch.equal(fused.cpu(), expected == 0.5)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_fused_threshold_rules(device, dtype):
    """Strict ``>``, in protos' dtype: sigmoid(0) = 0.5 is not > 0.5; a bfloat16 value equal
    to bfloat16(0.3) is not > 0.3; every pixel is > a negative threshold, the cropped zeros
    and NaN boxes too; nothing is > 1."""
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.2, 0.2, 0.6, 0.6], [math.nan, 0, 1, 1]],
                         device=device)
    protos = torch.zeros(4, 5, 1, dtype=dtype, device=device)
    coeffs = torch.ones(3, 1, dtype=dtype, device=device)
    kept = ref.assemble_masks(protos.cpu(), coeffs.cpu(), boxes.cpu()) > 0

    def fused(size, thr, p=protos):
        return segops.assemble_masks(p, coeffs, boxes, image_size=size, threshold=thr).cpu()

    assert not fused((4, 5), 0.5).any()
    assert torch.equal(fused((4, 5), 0.49), kept) and kept[0].all() and not kept[2].any()
    assert fused((7, 3), -0.25).all() and fused(9, -1e-3).all()
    assert not fused((7, 3), 1.0).any()
    if dtype == torch.bfloat16:
        v = torch.tensor(0.3, dtype=dtype)  # 0.30078125
        p = torch.full((4, 5, 1), math.log(float(v) / (1 - float(v))), device=device)
        p = p.to(dtype)
        assert (segops.assemble_masks(p, coeffs, boxes)[0] == v).all()
        assert not fused((4, 5), 0.3, p).any()
        assert torch.equal(fused((4, 5), 0.299, p), kept)


# ======================================================================================
# API surface: empty inputs, layouts, bad inputs
# ======================================================================================


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("H,W,N,size", [(5, 6, 0, (7, 8)), (0, 6, 2, (7, 8)),
                                        (5, 0, 2, (3, 3)), (5, 6, 2, (0, 8)),
                                        (5, 6, 2, (4, 0)), (0, 0, 0, (0, 0))])
def test_empty_inputs(device, dtype, H, W, N, size):
    protos = torch.randn(H, W, 3).to(dtype).to(device).requires_grad_(True)
    coeffs = torch.randn(N, 3).to(dtype).to(device)
    boxes = torch.rand(N, 4, device=device)
    out = segops.assemble_masks(protos, coeffs, boxes)
    assert out.shape == (N, H, W) and out.dtype == dtype and out.device.type == device
    out.sum().backward()
    assert protos.grad.shape == protos.shape
    assert (protos.grad == 0).all() or out.numel() > 0
    if H * W == 0 and N * size[0] * size[1] > 0:  # nothing to resize from
        with pytest.raises(ValueError, match="`protos`"):
            segops.assemble_masks(protos, coeffs, boxes, image_size=size)
        return
    fused = segops.assemble_masks(protos, coeffs, boxes, image_size=size)
    assert fused.shape == (N, *size) and fused.dtype == torch.bool
    assert not fused.any()


@pytest.mark.parametrize("layout", ["transposed", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_noncontiguous_inputs_equal_contiguous(device, layout, dtype):
    p = AssembleProblem(dtype, torch.float32, 9, 11, 4,
                        [(0.1, 0.2, 0.9, 0.8), (0.6, 0.7, 0.2, 0.1), (0.0, 0.0, 1.0, 1.0)],
                        1, None, 0.5, "contiguous", 11, [3.0, 0.0, -1.0])
    args = p.args(device)
    moved = [relayout(t, layout) for t in args[:3]]
    assert not any(t.is_contiguous() for t in moved)
    out = segops.assemble_masks(*args)
    assert out.abs().max() > 0
    assert torch.equal(segops.assemble_masks(*moved, p.padding), out)
    f = segops.assemble_masks(*args, image_size=(14, 17))
    assert f.any() and torch.equal(segops.assemble_masks(*moved, p.padding,
                                                         image_size=(14, 17)), f)


def _p(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


_B = torch.tensor([[0.1, 0.1, 0.8, 0.8]])


# ======================================================================================
# gradcheck, opcheck, torch.compile, autocast
# ======================================================================================


def _small(device, dtype=torch.float64, seed=4):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(5, 7, 3, generator=g, dtype=torch.float64).to(dtype).to(device)
    coeffs = torch.randn(3, 3, generator=g, dtype=torch.float64).to(dtype).to(device)
    boxes = torch.tensor([[0.1, 0.2, 0.7, 0.9], [0.9, 0.6, 0.3, 0.1], [0.0, 0.0, 1.0, 1.0]],
                         device=device)
    return protos, coeffs, boxes


def test_gradcheck(device):
    protos, coeffs, boxes = _small(device)
    protos.requires_grad_(True)
    coeffs.requires_grad_(True)

    def fn(p, c):
        return segops.assemble_masks(p, c, boxes, 1)

    assert fn(protos, coeffs).abs().max() > 0
    assert torch.autograd.gradcheck(fn, (protos, coeffs))



def test_autocast_cpu():
    protos, coeffs, boxes = _small("cpu", torch.float32)
    hp, hc = protos.bfloat16(), coeffs.bfloat16()
    plain = [segops.assemble_masks(protos, coeffs, boxes), segops.assemble_masks(hp, hc, boxes)]
    fused32 = segops.assemble_masks(protos, coeffs, boxes, image_size=(11, 9))
    fused_up = segops.assemble_masks(hp.float(), hc.float(), boxes, image_size=(11, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (protos @ protos.transpose(1, 2)).dtype == torch.bfloat16  # autocast is on
        pg = protos.clone().requires_grad_(True)
        a32 = segops.assemble_masks(pg, coeffs, boxes)
        ah = segops.assemble_masks(hp, hc, boxes)
        f32 = segops.assemble_masks(protos, coeffs, boxes, image_size=(11, 9))
        fh = segops.assemble_masks(hp, hc, boxes, image_size=(11, 9))
    assert a32.dtype == torch.float32 and ah.dtype == torch.bfloat16
    assert torch.equal(a32, plain[0]) and torch.equal(ah, plain[1])
    # the fused form under autocast computes half inputs in float32 throughout
    assert fh.dtype == torch.bool and f32.any() and fh.any()
    assert torch.equal(f32, fused32) and torch.equal(fh, fused_up)
    a32.sum().backward()
    assert pg.grad.dtype == torch.float32 and pg.grad.abs().max() > 0


# ======================================================================================
# CUDA == CPU, bit for bit
# ======================================================================================


@pytest.mark.cuda
@given(p=assemble_problems(max_hw=24))
def test_cuda_matches_cpu_exactly(p):
    outs = []
    for device in ("cpu", "cuda"):
        protos, coeffs, boxes, padding = p.args(device)
        protos.requires_grad_(True)
        coeffs.requires_grad_(True)
        out = segops.assemble_masks(protos, coeffs, boxes, padding)
        out.backward(torch.ones_like(out))
        fused = segops.assemble_masks(protos, coeffs, boxes, padding,
                                      image_size=p.image_size or (2 * p.H + 1, p.W + 3),
                                      threshold=p.threshold)
        outs.append([t.detach().cpu() for t in (out, fused, protos.grad, coeffs.grad)])
    terms = _grad_terms(torch.ones(p.N, p.H, p.W), p.protos(), p.coeffs())
    assert outs[0][0].abs().max() > 0
    assert torch.equal(outs[1][0], outs[0][0])  # float masks: bit for bit
    assert torch.equal(outs[1][1], outs[0][1])  # bool masks
    for a, b, t in zip(outs[1][2:], outs[0][2:], terms):  # BLAS backward: close, not equal
        _assert_grad_close(a, b, p.dtype, t)
