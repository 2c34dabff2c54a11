"""roi_align and roi_pool (docs/ops/roi.md): exactness probes (float64 geometry, float32 geometry
and accumulation for half types, inverted aligned boxes, roi_pool's rounding).
"""

from __future__ import annotations

import pytest
import torch

import segops
from segops.reference import roi as ref

from helpers.roi import FULL_DTYPES, HALF_DTYPES, assert_close, deterministic


@pytest.mark.parametrize("aligned,output_size", [(True, 4), (False, 2)])
def test_roi_align_geometry_in_input_dtype(device, aligned, output_size):
    """docs/ops/roi.md: width 4.0000002 is 4.0000002 in float64 (ceil(1.00000005) = 2 samples per
    bin with 4 bins) but 4.0 in float32 (1 sample). Each dtype must follow its own."""
    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(1, 3, 8, 8, generator=g, dtype=torch.float64)
    rois64 = torch.tensor([[0.0, 0.0, 0.0, 4.0000002, 4.0000002]], dtype=torch.float64)
    args = (output_size, 1.0, -1, aligned)
    ref64 = ref.roi_align(x64, rois64, *args)
    ref32 = ref.roi_align(x64.float(), rois64.float(), *args)
    # The probe discriminates: the two sample counts give clearly different values.
    assert (ref64.float() - ref32).abs().max() > 1e-2
    out64 = segops.roi_align(x64.to(device), rois64.to(device), *args)
    out32 = segops.roi_align(x64.float().to(device), rois64.float().to(device), *args)
    torch.testing.assert_close(out64.cpu(), ref64, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out32.cpu(), ref32, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_roi_align_half_geometry_in_float32(device, dtype):
    """Half inputs with float32 boxes: the geometry is float32 (width 4.001 -> 2 samples
    per bin), not half precision (4.001 rounds to 4.0 -> 1 sample) as torchvision does."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 8, 8, generator=g).to(dtype)
    rois = torch.tensor([[0.0, 0.0, 0.0, 4.001, 4.001]])
    args = (4, 1.0, -1, True)
    good = ref.roi_align(x.float(), rois, *args)
    torchvision_like = ref.roi_align(x.float(), rois.to(dtype).float(), *args)
    assert (good - torchvision_like).abs().max() > 0.1
    out = segops.roi_align(x.to(device), rois.to(device), *args)
    assert out.dtype == dtype
    assert_close(out, good, dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_roi_align_half_accumulates_in_float32(device, dtype):
    """256 samples of v = 1 + 3 eps, each exactly on a pixel: a half-precision running sum
    stalls (at 256 its ulp exceeds v / 2), a float32 one gives the mean v exactly."""
    v = 1.0 + 3 * torch.finfo(dtype).eps
    x = torch.full((1, 2, 16, 16), v, dtype=dtype)
    rois = torch.tensor([[0.0, 0.0, 0.0, 16.0, 16.0]])
    out = segops.roi_align(x.to(device), rois.to(device), 1, 1.0, 16, True)
    assert (out == v).all()
    x.requires_grad_(True)
    out = segops.roi_align(x.to(device), rois.to(device), 1, 1.0, 16, True)
    out.backward(torch.full_like(out, 256.0))
    assert (x.grad == 1).all()


@pytest.mark.parametrize("det", [False, True], ids=["default", "deterministic"])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_roi_align_inverted_aligned_boxes(device, det, sampling_ratio, dtype):
    """aligned=True does not clamp the RoI size, so x2 < x1 gives a negative bin and, with
    a fixed sampling ratio, samples that walk backwards from x1 (torchvision samples them).
    The first of them may lie beyond the image while later ones are inside."""
    x = torch.arange(1.0, 17.0, dtype=dtype).reshape(1, 1, 4, 4).to(device)
    rois = torch.tensor([
        [0, 1.0, 5.0, 1.0, 4.0],   # y: 4.5 -> 3.5, first sample at y = 4.25 > H
        [0, 5.0, 1.0, 4.0, 1.0],   # the same along x
        [0, 6.0, 6.0, 0.5, 0.5],   # both axes, from far outside to inside
        [0, 1.0, 0.0, 1.0, -1.0],  # walking out of the image through y = -1
    ], dtype=dtype)
    args = ((2, 1), 1.0, sampling_ratio, True)
    xr = x.cpu().clone().requires_grad_(True)
    expected = ref.roi_align(xr, rois, *args)
    assert (expected.flatten(1) != 0).any(1).all()
    grad = torch.linspace(-1, 2, expected.numel(), dtype=dtype).reshape(expected.shape)
    expected.backward(grad)
    xs = x.clone().requires_grad_(True)
    with deterministic(det):
        out = segops.roi_align(xs, rois.to(device), *args)
        out.backward(grad.to(device))
    assert_close(out, expected, dtype)
    assert_close(xs.grad, xr.grad, dtype)


def test_roi_pool_rounds_half_away_from_zero(device):
    """C round(): 0.5 -> 1, 1.5 -> 2, 2.5 -> 3 (torch.round would give 0, 2, 2)."""
    x = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8)
    rois = torch.tensor([[0, 0.5, 0.5, 2.5, 2.5], [0, 1.5, 2.5, 4.5, 5.5]])
    out, arg = torch.ops.segops.roi_pool(x.to(device), rois.to(device), 1.0, 1, 1)
    exp, exp_arg = ref.roi_pool_with_argmax(x, rois, 1)
    assert torch.equal(out.cpu(), exp) and torch.equal(arg.cpu(), exp_arg)
    # Bottom-right corners after rounding: (3, 3) and (5, 6).
    assert exp.flatten().tolist() == [3 * 8 + 3, 6 * 8 + 5]


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_overflowing_extent_is_empty_and_quick(device, aligned):
    """Finite corners whose difference overflows float32 (x1 = -3e38, x2 = 3e38) give an
    infinite bin, so every sample is NaN or infinite: zeros forward and backward, like a
    non-finite box, and at once — walking the 2^30 capped samples one by one took ~40 s
    per box (the time bound below only guards against that walk returning)."""
    import time

    x = torch.randn(2, 3, 16, 16, device=device, requires_grad=True)
    boxes = torch.tensor([[0, -3e38, 0, 3e38, 10], [1, 0, -3e38, 10, 3e38],
                          [0, 3e38, 0, -3e38, 10], [1, 2, 3, 9, 12]], device=device)
    t = time.perf_counter()
    y = segops.roi_align(x, boxes, 7, 1.0, -1, aligned)
    ml = segops.multilevel_roi_align([x, x[:, :, ::2, ::2]], boxes, 7, [1.0, 0.5],
                                     mode="all", aligned=aligned)
    (gx,) = torch.autograd.grad((y.sum() + ml.sum()), x)
    assert time.perf_counter() - t < 10.0
    assert (y[:3] == 0).all() and (ml[:, :3] == 0).all() and y[3].abs().sum() > 0
    assert torch.equal(y.detach().cpu(), ref.roi_align(x.detach().cpu(), boxes.cpu(), 7, 1.0, -1,
                                                       aligned))
    # only the finite box (image 1, x 2..9, y 3..12) sends gradient
    assert gx[0].abs().sum() == 0 and gx[1].abs().sum() > 0
