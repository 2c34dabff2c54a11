"""roi_align and roi_pool (docs/ops/roi.md), CUDA only: parity with CPU, deterministic backward,
device mismatch, 64-bit indexing.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

import segops
from segops.reference import roi as ref

from helpers.roi import (
    ALL_DTYPES, TOL, _ROIS, _grad_output, align_args, assert_close, assert_nonzero, deterministic,
    problems,
)


@pytest.mark.cuda
@given(p=problems(max_hw=16))
def test_cuda_matches_cpu(p):
    xc, bc = p.features("cpu"), p.boxes_arg("cpu")
    xg, bg = p.features("cuda"), p.boxes_arg("cuda")
    tol = TOL[p.dtype]
    a_cpu = segops.roi_align(xc, bc, *align_args(p))
    a_gpu = segops.roi_align(xg, bg, *align_args(p))
    assert_nonzero(a_cpu)
    torch.testing.assert_close(a_gpu.cpu(), a_cpu, **tol)
    r_cpu, arg_cpu = torch.ops.segops.roi_pool(xc, p.rois("cpu"), p.scale, *p.pooled)
    r_gpu, arg_gpu = torch.ops.segops.roi_pool(xg, p.rois("cuda"), p.scale, *p.pooled)
    assert torch.equal(r_gpu.cpu(), r_cpu)
    assert torch.equal(arg_gpu.cpu(), arg_cpu)  # index outputs: exactly equal
    for det in (False, True):
        grads = []
        for x, b in ((xc, bc), (xg, bg)):
            x = x.clone().requires_grad_(True)
            with deterministic(det):
                out = segops.roi_align(x, b, *align_args(p))
                out.backward(_grad_output(p, out.shape, x.device))
                x2 = x.detach().clone().requires_grad_(True)
                out = segops.roi_pool(x2, b, p.output_size, p.scale)
                out.backward(_grad_output(p, out.shape, x.device))
            grads.append((x.grad.cpu(), x2.grad.cpu()))
        torch.testing.assert_close(grads[1][0], grads[0][0], **tol)
        torch.testing.assert_close(grads[1][1], grads[0][1], **tol)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_cuda_deterministic_backward_is_bitwise_reproducible(dtype):
    """Many overlapping RoIs on one image: an atomic scatter would vary run to run."""
    g = torch.Generator().manual_seed(9)
    N, C, H, W = 2, 16, 40, 48
    x = torch.randn(N, C, H, W, generator=g).to(dtype).cuda()
    xy = torch.rand(600, 2, generator=g) * 30
    wh = torch.rand(600, 2, generator=g) * 20 + 1
    rois = torch.cat([torch.randint(0, N, (600, 1), generator=g).float(), xy, xy + wh], 1)
    rois = rois.cuda()
    grad = torch.randn(600, C, 7, 7, generator=g).to(dtype).cuda()
    for op in ("align", "pool"):
        results = []
        for _ in range(3):
            xi = x.clone().requires_grad_(True)
            with deterministic(True):
                if op == "align":
                    out = segops.roi_align(xi, rois, 7, 1.0, 2, True)
                else:
                    out = segops.roi_pool(xi, rois, 7, 1.0)
                out.backward(grad)
            results.append(xi.grad)
        assert_nonzero(results[0])
        assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


@pytest.mark.cuda
@pytest.mark.parametrize("op", ["align", "pool"])
def test_cuda_device_mismatch(op):
    fn = segops.roi_align if op == "align" else segops.roi_pool
    x = torch.randn(1, 2, 6, 6, device="cuda")
    with pytest.raises(ValueError, match="device"):
        fn(x, _ROIS, 2)
    with pytest.raises(ValueError, match="device"):
        fn(x, [_ROIS[:, 1:]], 2)
    with pytest.raises(ValueError, match="device"):
        fn(x.cpu(), _ROIS.cuda(), 2)


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("det", [False, True], ids=["default", "deterministic"])
def test_cuda_64bit_indexing(det):
    """An input of more than 2**31 elements, a RoI in the last plane (offset > 2**31)."""
    N, C, H, W = 2, 1025, 1024, 1024
    assert N * C * H * W > 2**31
    x = torch.zeros(N, C, H, W, dtype=torch.bfloat16, device="cuda")
    g = torch.Generator().manual_seed(10)
    x[1, C - 1, H - 16:, W - 16:] = torch.randn(16, 16, generator=g).bfloat16().cuda()
    rois = torch.tensor([[1, W - 14.5, H - 13.0, W - 2.5, H - 1.5]], device="cuda")
    shift = torch.tensor([1.0, W - 16, H - 16, W - 16, H - 16])
    sub = x[1:2, C - 1:, H - 16:, W - 16:].float().cpu().requires_grad_(True)
    sub_rois = rois.cpu() - shift  # the same box in the 16 x 16 corner window, batch 0
    for op in ("align", "pool"):
        xg = x.detach().requires_grad_(True)
        sg = sub.detach().clone().requires_grad_(True)
        if op == "align":
            expected = ref.roi_align(sg, sub_rois, 4, 1.0, 2, True)
        else:
            expected = ref.roi_pool(sg, sub_rois, 4, 1.0)
        grad = torch.linspace(-1, 2, 16).reshape(1, 1, 4, 4)
        expected.backward(grad)
        assert_nonzero(expected)
        with deterministic(det):
            if op == "align":
                out = segops.roi_align(xg, rois, 4, 1.0, 2, True)
            else:
                out = segops.roi_pool(xg, rois, 4, 1.0)
            full_grad = torch.zeros_like(out)  # only the last plane sends a gradient
            full_grad[:, C - 1:] = grad.to(full_grad)
            out.backward(full_grad)
        assert out.shape == (1, C, 4, 4)
        assert (out[:, : C - 1] == 0).all()
        assert_close(out[:, C - 1:], expected, torch.bfloat16)
        window = xg.grad[1, C - 1, H - 16:, W - 16:]
        assert_close(window, sg.grad[0, 0], torch.bfloat16)
        assert_nonzero(window)
        window.zero_()
        assert not xg.grad.any()  # nothing lands outside the window
        del xg, out, window
