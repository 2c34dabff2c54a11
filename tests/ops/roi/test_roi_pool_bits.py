"""roi_pool (docs/ops/roi.md): the bits of the forward and of both backward algorithms.

The property tests compare the forward with the reference exactly but draw features from a
normal distribution (no ties, no signed zeros, no NaN), and hold the backward to a tolerance.
These tests pin what the CPU kernel's loops must keep whatever their order: ties go to the
first pixel of a bin in raster order, NaN never wins, a bin whose pixels are all -inf pools
-FLT_MAX with argmax -1, and the backward adds, at every pixel, the RoIs in index order and
each RoI's bins in raster order: the default (scatter) algorithm one bin at a time into the
pixel, the deterministic (gather) one each RoI's bins into a partial sum first, which it
then adds to the pixel (the order the deterministic CUDA kernel uses).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

import segops

from helpers.roi import ALL_DTYPES, _grad_output, deterministic, problems, ref, ref_dtype


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float tensor (so that -0.0 and 0.0 differ)."""
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().view(ints)


def _tie_heavy(x: torch.Tensor, seed: int) -> torch.Tensor:
    """x rounded to a few levels (ties everywhere), with some -0.0, NaN and -inf."""
    g = torch.Generator().manual_seed(seed)
    levels = torch.tensor([-float("inf"), -1.0, -0.0, 0.0, 1.0, 2.0, float("nan")],
                          dtype=torch.float64)
    pick = torch.randint(len(levels), x.shape, generator=g)
    weights = torch.rand(x.shape, generator=g)
    base = torch.where(weights < 0.3, levels[pick], x.double().round())
    return base.to(x.dtype)


@given(p=problems(op="pool"))
def test_roi_pool_forward_ties_nan_signed_zero(p):
    x = _tie_heavy(p.features(), p.seed)
    rois = p.rois()
    out, arg = torch.ops.segops.roi_pool(x, rois, p.scale, *p.pooled)
    exp, exp_arg = ref.roi_pool_with_argmax(x.to(ref_dtype(p.dtype)),
                                            p.boxes_arg(dtype=ref_dtype(p.box_dtype)),
                                            p.output_size, p.scale)
    assert torch.equal(arg, exp_arg)
    assert torch.equal(_bits(out), _bits(exp.to(p.dtype)))


def _sequential_backward(grad: torch.Tensor, argmax: torch.Tensor, rois: torch.Tensor,
                         shape, per_roi: bool) -> torch.Tensor:
    """The input gradient summed one term at a time in the accumulation dtype (float32 for
    half types): RoIs in index order, each RoI's bins in raster order; ``per_roi``: each
    RoI's terms at a pixel summed first (from 0), then added to the pixel."""
    acc_dtype = torch.float64 if grad.dtype == torch.float64 else torch.float32
    n, c, h, w = shape
    acc = torch.zeros(n, c, h * w, dtype=acc_dtype)
    g = grad.to(acc_dtype).reshape(grad.size(0), c, -1)
    a = argmax.reshape(argmax.size(0), c, -1)
    for k in range(grad.size(0)):
        partial = torch.zeros(n, c, h * w, dtype=acc_dtype) if per_roi else acc
        touched = set()
        for ch in range(c):
            for j in range(a.size(2)):
                pix = int(a[k, ch, j])
                if pix >= 0:
                    b = int(rois[k, 0])
                    partial[b, ch, pix] = partial[b, ch, pix] + g[k, ch, j]
                    touched.add((b, ch, pix))
        for b, ch, pix in touched if per_roi else ():
            acc[b, ch, pix] = acc[b, ch, pix] + partial[b, ch, pix]
    return acc.reshape(shape).to(grad.dtype)


@pytest.mark.parametrize("det", [False, True], ids=["default", "deterministic"])
@given(p=problems(op="pool", dtypes=ALL_DTYPES))
def test_roi_pool_backward_sums_in_index_order(det, p):
    x = p.features()
    rois = p.rois()
    _, argmax = torch.ops.segops.roi_pool(x, rois, p.scale, *p.pooled)
    grad = _grad_output(p, argmax.shape, "cpu")
    n, c, h, w = x.shape
    with deterministic(det):
        got = torch.ops.segops._roi_pool_backward(grad, rois, argmax, p.scale, *p.pooled,
                                                  n, c, h, w)
    expected = _sequential_backward(grad, argmax, rois, x.shape, per_roi=det)
    assert torch.equal(_bits(got), _bits(expected))


def test_roi_pool_backward_many_rois_on_one_pixel():
    """Rounding-sensitive sums: 64 RoIs pool the same pixel with gradients of mixed
    magnitude, over several channels and two images (a channel task boundary included)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 6, 7, generator=g)
    x[:, :, 3, 4] = 100.0  # every RoI's every bin that covers it picks it
    k = 64
    boxes = torch.tensor([[i % 2, 0.0, 0.0, 6.0, 5.0] for i in range(k)])
    boxes[::3, 3:] = torch.tensor([4.0, 3.0])
    out = segops.roi_pool(x.requires_grad_(True), boxes, (2, 3), 1.0)
    grad = (torch.randn(out.shape, generator=g) * 10.0 ** torch.randint(-6, 6, out.shape,
                                                                        generator=g))
    _, argmax = torch.ops.segops.roi_pool(x.detach(), boxes, 1.0, 2, 3)
    for det in (False, True):
        expected = _sequential_backward(grad, argmax, boxes, x.shape, per_roi=det)
        with deterministic(det):
            (got,) = torch.autograd.grad(out, x, grad, retain_graph=True)
        assert torch.equal(_bits(got), _bits(expected))
