"""Suppression (docs/ops/nms.md), CUDA only: parity with CPU, no host synchronisation in the
padded forms, device mismatch.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

import segops

from helpers.nms import (
    ALL_DTYPES, MATRIX_TOL, _B, _I, _M, _S, _clustered_boxes, _rect_masks, assert_keep_equal,
    assert_tuple_equal, fast_problems, matrix_problems, nms_problems, to,
)


@pytest.mark.cuda
@given(p=nms_problems(max_n=30))
def test_cuda_nms_matches_cpu(p):
    args = (p.boxes, p.scores)
    assert_keep_equal(segops.nms(*to("cuda", *args), p.threshold),
                      segops.nms(*args, p.threshold))
    assert_tuple_equal(segops.nms(*to("cuda", *args), p.threshold, p.max_out),
                       segops.nms(*args, p.threshold, p.max_out))
    args = (p.boxes, p.scores, p.idxs)
    assert_keep_equal(segops.batched_nms(*to("cuda", *args), p.threshold),
                      segops.batched_nms(*args, p.threshold))
    assert_tuple_equal(segops.batched_nms(*to("cuda", *args), p.threshold, p.max_out),
                       segops.batched_nms(*args, p.threshold, p.max_out))


@pytest.mark.cuda
@given(p=fast_problems(max_n=30))
def test_cuda_fast_nms_matches_cpu(p):
    for padded in (False, True):
        cpu = segops.fast_nms(p.boxes, p.scores, **p.kwargs, padded=padded)
        gpu = segops.fast_nms(*to("cuda", p.boxes, p.scores), **p.kwargs, padded=padded)
        assert_tuple_equal(gpu, cpu)


@pytest.mark.cuda
@given(p=matrix_problems(max_n=20, max_hw=12))
def test_cuda_matrix_nms_matches_cpu(p):
    cpu = segops.matrix_nms(p.masks, p.labels, p.scores, p.kernel, p.sigma)
    gpu = segops.matrix_nms(*to("cuda", p.masks, p.labels, p.scores), p.kernel, p.sigma)
    torch.testing.assert_close(gpu.cpu(), cpu, **MATRIX_TOL[p.scores.dtype])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_cuda_large_matches_cpu(dtype):
    boxes, scores = _clustered_boxes(20000, 200, seed=7)
    boxes, scores = boxes.to(dtype), scores.to(dtype)
    idxs = torch.arange(20000) % 13
    assert torch.equal(segops.nms(*to("cuda", boxes, scores), 0.6).cpu(),
                       segops.nms(boxes, scores, 0.6))
    assert torch.equal(segops.batched_nms(*to("cuda", boxes, scores, idxs), 0.6).cpu(),
                       segops.batched_nms(boxes, scores, idxs, 0.6))
    g = torch.Generator().manual_seed(8)
    cs = (torch.rand(80, 20000, generator=g) ** 4).to(dtype)
    for cc in (False, True):
        assert_tuple_equal(segops.fast_nms(*to("cuda", boxes, cs), cross_class=cc),
                           segops.fast_nms(boxes, cs, cross_class=cc))


@pytest.mark.cuda
def test_cuda_padded_forms_do_not_synchronize():
    boxes, scores = _clustered_boxes(3000, 50, seed=9)
    boxes, scores = boxes.cuda(), scores.cuda()
    idxs = (torch.arange(3000) % 5).cuda()
    cs = torch.stack([scores, scores.flip(0)])
    masks = _rect_masks([(0, 0, 4, 4), (1, 0, 4, 4), (2, 0, 6, 4)]).cuda()
    labels = torch.zeros(3, dtype=torch.int64, device="cuda")
    torch.cuda.synchronize()
    prev = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = (segops.nms(boxes, scores, 0.5, max_out=100),
               segops.batched_nms(boxes, scores, idxs, 0.5, max_out=100),
               segops.fast_nms(boxes, cs, padded=True),
               segops.fast_nms(boxes, cs, cross_class=True, padded=True),
               segops.matrix_nms(masks, labels, scores[:3]))
    finally:
        torch.cuda.set_sync_debug_mode(prev)
    assert int(out[0][1]) > 0 and int(out[2][3]) > 0
    assert torch.equal(out[0][0].cpu(), segops.nms(boxes.cpu(), scores.cpu(), 0.5, 100)[0])


@pytest.mark.cuda
def test_cuda_device_mismatch():
    b, s = _B.cuda(), _S.cuda()
    with pytest.raises(ValueError, match="device"):
        segops.nms(b, _S, 0.5)
    with pytest.raises(ValueError, match="device"):
        segops.batched_nms(b, s, _I, 0.5)
    with pytest.raises(ValueError, match="device"):
        segops.fast_nms(_B, s[None])
    with pytest.raises(ValueError, match="device"):
        segops.matrix_nms(_M.cuda(), _I, s)
