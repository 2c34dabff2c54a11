"""roi_align and roi_pool (docs/ops/roi.md): forward and backward property tests against the
reference, every dtype and device, both backward algorithms.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

import segops

from helpers.roi import (
    FULL_DTYPES, _grad_output, align_args, assert_close, assert_nonzero, deterministic,
    nonfinite_rows, problems, reference_align, reference_pool,
)


@given(p=problems())
def test_roi_align_forward(device, p):
    out = segops.roi_align(p.features(device), p.boxes_arg(device), *align_args(p))
    expected, _ = reference_align(p)
    assert out.dtype == p.dtype and out.device.type == device
    assert_nonzero(expected)
    assert_close(out, expected, p.dtype)
    # NaN/inf boxes pool exact zeros (docs/ops/conventions.md).
    assert (out.cpu()[nonfinite_rows(p)] == 0).all()


@given(p=problems(op="pool"))
def test_roi_pool_forward(device, p):
    x, boxes = p.features(device), p.boxes_arg(device)
    out = segops.roi_pool(x, boxes, p.output_size, p.scale)
    expected, expected_arg, _ = reference_pool(p)
    assert out.dtype == p.dtype and out.device.type == device
    assert_nonzero(expected)
    # A maximum is one of the inputs: exact in every dtype.
    assert torch.equal(out.cpu().to(expected.dtype), expected)
    assert (out.cpu()[nonfinite_rows(p)] == 0).all()
    raw, arg = torch.ops.segops.roi_pool(x, p.rois(device), p.scale, *p.pooled)
    assert torch.equal(raw, out)
    assert arg.dtype == torch.int64
    assert torch.equal(arg.cpu(), expected_arg)


@pytest.mark.parametrize("det", [False, True], ids=["default", "deterministic"])
@given(p=problems())
def test_roi_align_backward(device, det, p):
    expected, x_ref = reference_align(p, requires_grad=True)
    grad = _grad_output(p, expected.shape, device)
    expected.backward(grad.cpu().to(expected.dtype))
    assert_nonzero(x_ref.grad)

    x = p.features(device).requires_grad_(True)
    with deterministic(det):
        out = segops.roi_align(x, p.boxes_arg(device), *align_args(p))
        out.backward(grad)
    assert x.grad.dtype == p.dtype and x.grad.shape == x.shape
    assert_close(x.grad, x_ref.grad, p.dtype)


@pytest.mark.parametrize("det", [False, True], ids=["default", "deterministic"])
@given(p=problems(op="pool"))
def test_roi_pool_backward(device, det, p):
    expected, _, x_ref = reference_pool(p, requires_grad=True)
    grad = _grad_output(p, expected.shape, device)
    expected.backward(grad.cpu().to(expected.dtype))
    assert_nonzero(x_ref.grad)

    x = p.features(device).requires_grad_(True)
    with deterministic(det):
        out = segops.roi_pool(x, p.boxes_arg(device), p.output_size, p.scale)
        out.backward(grad)
    assert x.grad.dtype == p.dtype
    assert_close(x.grad, x_ref.grad, p.dtype)


@pytest.mark.parametrize("op", ["align", "pool"])
@given(p=problems(dtypes=FULL_DTYPES))
def test_backward_deterministic_mode_agrees_with_default(device, op, p):
    """Both backward algorithms (scatter and gather) on the same problem: close, and the
    deterministic one is bitwise reproducible."""
    fn = ((lambda x, b: segops.roi_align(x, b, *align_args(p))) if op == "align" else
          (lambda x, b: segops.roi_pool(x, b, p.output_size, p.scale)))
    grads = []
    for det in (False, True, True):
        x = p.features(device).requires_grad_(True)
        with deterministic(det):
            out = fn(x, p.boxes_arg(device))
            out.backward(_grad_output(p, out.shape, device))
        grads.append(x.grad)
    assert_nonzero(grads[0])
    assert_close(grads[1], grads[0].cpu(), p.dtype)
    assert torch.equal(grads[1], grads[2])
