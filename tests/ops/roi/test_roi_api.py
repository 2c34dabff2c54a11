"""roi_align and roi_pool (docs/ops/roi.md): the API surface. NaN/inf boxes, empty inputs, the
bad-input table, the modules; gradcheck, opcheck, torch.compile, autocast.
"""

from __future__ import annotations

import math

import pytest
import torch

import segops
from segops.reference import roi as ref

from helpers.roi import ALL_DTYPES, _ROIS, Problem, _x, align_args, assert_close, assert_nonzero


# ======================================================================================
# NaN/inf boxes, empty inputs, bad inputs, modules
# ======================================================================================


@pytest.mark.parametrize("op", ["align", "pool"])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_nonfinite_boxes_give_zero_rows_and_no_gradient(device, op, dtype):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 9, 9, generator=g).to(dtype).to(device).requires_grad_(True)
    nan, inf = math.nan, math.inf
    rois = torch.tensor([
        [0, 1.0, 1.0, 6.0, 7.0],
        [1, nan, 1.0, 6.0, 7.0],
        [0, 1.0, inf, 6.0, 7.0],
        [1, 1.0, 1.0, -inf, 7.0],
        [0, -inf, -inf, inf, inf],
        [1, 2.0, 0.0, 8.0, 5.0],
    ]).to(dtype).to(device)
    fn = ((lambda x, r: segops.roi_align(x, r, 3, 1.0, 2, False)) if op == "align" else
          (lambda x, r: segops.roi_pool(x, r, 3, 1.0)))
    out = fn(x, rois)
    assert (out[1:5] == 0).all()
    assert (out[[0, 5]] != 0).any(dim=(1, 2, 3)).all()
    out.sum().backward()
    # The gradient is exactly that of the finite boxes alone.
    x2 = x.detach().clone().requires_grad_(True)
    fn(x2, rois[[0, 5]]).sum().backward()
    assert_nonzero(x2.grad)
    torch.testing.assert_close(x.grad, x2.grad, rtol=0, atol=0)


def _empty_cases():
    # (input shape, boxes builder, expected K)
    return [
        pytest.param((2, 3, 5, 6), lambda d, t: torch.zeros(0, 5, dtype=t, device=d), 0,
                     id="K=0"),
        pytest.param((2, 3, 5, 6), lambda d, t: [torch.zeros(0, 4, dtype=t, device=d)] * 2, 0,
                     id="K=0-list"),
        pytest.param((2, 3, 5, 6), lambda d, t: [], 0, id="empty-list"),
        pytest.param((0, 3, 5, 6), lambda d, t: torch.zeros(0, 5, dtype=t, device=d), 0,
                     id="N=0"),
        pytest.param((1, 3, 0, 6), lambda d, t: torch.tensor([[0, 0, 0, 4.0, 4.0]] * 2,
                                                             dtype=t, device=d), 2, id="H=0"),
        pytest.param((1, 3, 5, 0), lambda d, t: torch.tensor([[0, 0, 0, 4.0, 4.0]] * 2,
                                                             dtype=t, device=d), 2, id="W=0"),
    ]


@pytest.mark.parametrize("op", ["align", "pool"])
@pytest.mark.parametrize("shape,make_boxes,K", _empty_cases())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_empty_inputs(device, op, shape, make_boxes, K, dtype):
    x = torch.randn(shape).to(dtype).to(device).requires_grad_(True)
    boxes = make_boxes(device, dtype)
    if op == "align":
        out = segops.roi_align(x, boxes, (2, 3), 0.5, 2, True)
    else:
        out = segops.roi_pool(x, boxes, (2, 3), 0.5)
    assert out.shape == (K, shape[1], 2, 3)
    assert out.dtype == dtype and out.device.type == device
    assert (out == 0).all()  # nothing to pool
    out.sum().backward()
    assert x.grad.shape == x.shape and (x.grad == 0).all()


@pytest.mark.parametrize("op", ["align", "pool"])
def test_zero_output_size(device, op):
    x = torch.randn(2, 3, 5, 6, device=device)
    rois = torch.tensor([[0, 0, 0, 4.0, 4.0], [1, 1, 1, 3.0, 3.0]], device=device)
    fn = segops.roi_align if op == "align" else segops.roi_pool
    assert fn(x, rois, (0, 3)).shape == (2, 3, 0, 3)
    assert fn(x, rois, (2, 0)).shape == (2, 3, 2, 0)


nan = math.nan


@pytest.mark.parametrize("op", ["align", "pool"])
def test_bad_input_modules(op):
    m = segops.RoIAlign(2, 1.0, 2) if op == "align" else segops.RoIPool(2, 1.0)
    with pytest.raises(ValueError, match="(?i)batch index"):
        m(_x(1, 2, 6, 6), torch.tensor([[3, 1.0, 1, 4, 4]]))
    with pytest.raises(ValueError, match="boxes"):
        m(_x(1, 2, 6, 6), _ROIS[:, :4])


@pytest.mark.parametrize("op", ["align", "pool"])
def test_modules_match_functions(device, op):
    p = Problem(torch.float32, torch.float32, (2, 3, 9, 11), (3, 2), 0.5, 2, True,
                [(1.0, 2.0, 13.0, 15.0), (0.0, 0.0, 21.0, 17.0), (4.5, 3.0, 9.0, 8.5)],
                [0, 1, 1], "list", "contiguous", 3)
    x, b = p.features(device), p.boxes_arg(device)
    if op == "align":
        m = segops.RoIAlign(p.output_size, p.scale, p.sampling_ratio, p.aligned)
        out, exp = m(x, b), segops.roi_align(x, b, *align_args(p))
        assert "sampling_ratio=2" in repr(m) and "aligned=True" in repr(m)
    else:
        m = segops.RoIPool(p.output_size, p.scale)
        out, exp = m(x, b), segops.roi_pool(x, b, p.output_size, p.scale)
        assert "spatial_scale=0.5" in repr(m)
    assert_nonzero(exp)
    assert torch.equal(out, exp)


# ======================================================================================
# gradcheck, opcheck, torch.compile, autocast
# ======================================================================================


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_roi_align_gradcheck(device, aligned, sampling_ratio):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 2, 7, 8, generator=g, dtype=torch.float64).to(device)
    x.requires_grad_(True)
    rois = torch.tensor([[0, 0.3, 1.2, 5.1, 6.3], [1, -1.7, 2.2, 9.4, 5.6],
                         [1, 2.5, 2.5, 2.5, 4.5], [0, 4.1, 0.2, 7.9, 7.3]],
                        dtype=torch.float64, device=device)

    def fn(x):
        return segops.roi_align(x, rois, (3, 2), 0.9, sampling_ratio, aligned)

    assert_nonzero(fn(x))
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_roi_pool_gradcheck(device):
    # Distinct values 1 apart: the argmax does not move under gradcheck's perturbation.
    g = torch.Generator().manual_seed(5)
    x = torch.randperm(2 * 2 * 7 * 8, generator=g).to(torch.float64).reshape(2, 2, 7, 8)
    x = x.to(device).requires_grad_(True)
    rois = torch.tensor([[0, 0.3, 1.2, 5.1, 6.3], [1, -1.7, 2.2, 9.4, 5.6],
                         [1, 2.5, 2.5, 2.5, 4.5], [0, 4.1, 0.2, 7.9, 7.3]],
                        dtype=torch.float64, device=device)

    def fn(x):
        return segops.roi_pool(x, rois, (3, 2), 0.9)

    assert_nonzero(fn(x))
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def _opcheck_problem(device, dtype=torch.float32):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 7, 8, generator=g).to(dtype).to(device)
    rois = torch.tensor([[0, 0.3, 1.2, 5.1, 6.3], [1, -1.7, 2.2, 9.4, 5.6],
                         [1, 2.5, 2.5, 2.5, 4.5]]).to(dtype).to(device)
    return x, rois



def _autocast_check(device, autocast_dtype):
    p = Problem(torch.float32, torch.float32, (2, 3, 9, 11), (3, 2), 0.5, 2, False,
                [(1.0, 2.0, 13.0, 15.0), (0.0, 0.0, 21.0, 17.0), (4.5, 3.0, 9.0, 8.5)],
                [0, 1, 1], "tensor", "contiguous", 8)
    x32, rois32 = p.features(device), p.boxes_arg(device)
    xh = x32.to(autocast_dtype)
    expected_align = ref.roi_align(xh.float().cpu(), rois32.cpu(), *align_args(p))
    expected_pool = ref.roi_pool(xh.float().cpu(), rois32.cpu(), p.output_size, p.scale)
    assert_nonzero(expected_align)
    with torch.autocast(device, dtype=autocast_dtype):
        assert (x32 @ x32.transpose(2, 3)).dtype == autocast_dtype  # autocast is on
        # float32 input: float32 output, computed in float32.
        xg = x32.clone().requires_grad_(True)
        a32 = segops.roi_align(xg, rois32, *align_args(p))
        p32 = segops.roi_pool(x32, rois32, p.output_size, p.scale)
        # half input (with float32 or half boxes): the input's dtype out.
        ah = segops.roi_align(xh, rois32, *align_args(p))
        ah2 = segops.roi_align(xh, rois32.to(autocast_dtype), *align_args(p))
        ph = segops.roi_pool(xh, rois32, p.output_size, p.scale)
    assert a32.dtype == torch.float32 and p32.dtype == torch.float32
    assert ah.dtype == autocast_dtype and ah2.dtype == autocast_dtype
    assert ph.dtype == autocast_dtype
    torch.testing.assert_close(a32, segops.roi_align(x32, rois32, *align_args(p)))
    torch.testing.assert_close(p32, segops.roi_pool(x32, rois32, p.output_size, p.scale))
    assert_close(ah, expected_align, autocast_dtype)
    assert_close(ph, expected_pool, autocast_dtype, rtol=0, atol=0)
    a32.sum().backward()
    assert xg.grad.dtype == torch.float32
    assert_nonzero(xg.grad)


def test_autocast_cpu():
    _autocast_check("cpu", torch.bfloat16)


@pytest.mark.cuda
def test_autocast_cuda():
    _autocast_check("cuda", torch.float16)
