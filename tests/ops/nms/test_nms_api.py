"""Suppression (docs/ops/nms.md): empty inputs. (The bad-input table, opcheck and
torch.compile of every op are the registry's: tests/ops/test_contract.py.)
"""

from __future__ import annotations

import pytest
import torch

import segops

from helpers.nms import ALL_DTYPES


# ======================================================================================
# Empty inputs
# ======================================================================================


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_empty_inputs(device, dtype):
    b = torch.zeros(0, 4, dtype=dtype, device=device)
    s = torch.zeros(0, dtype=dtype, device=device)
    i = torch.zeros(0, dtype=torch.int64, device=device)
    for keep in (segops.nms(b, s, 0.5), segops.batched_nms(b, s, i, 0.5)):
        assert keep.shape == (0,) and keep.dtype == torch.int64 and keep.device.type == device
    for keep, count in (segops.nms(b, s, 0.5, max_out=3), segops.batched_nms(b, s, i, 0.5, 3)):
        assert keep.tolist() == [-1, -1, -1] and int(count) == 0 and count.dtype == torch.int64
    for C, N in ((0, 0), (3, 0), (0, 5)):
        boxes = torch.rand(N, 4, dtype=torch.float64).to(dtype).to(device)
        scores = torch.ones(C, N, dtype=dtype, device=device)
        for cc in (False, True):
            idx, cls, sc = segops.fast_nms(boxes, scores, cross_class=cc)
            assert idx.shape == cls.shape == sc.shape == (0,)
            assert idx.dtype == cls.dtype == torch.int64 and sc.dtype == dtype
            idx, cls, sc, count = segops.fast_nms(boxes, scores, cross_class=cc, padded=True,
                                                  top_k=4, max_detections=4)
            assert idx.tolist() == cls.tolist() == [-1] * 4 and sc.tolist() == [0.0] * 4
            assert int(count) == 0 and sc.dtype == dtype
    # top_k = 0 or max_detections = 0 with inputs
    boxes = torch.tensor([[0.0, 0, 1, 1]], dtype=dtype, device=device)
    scores = torch.ones(2, 1, dtype=dtype, device=device)
    assert segops.fast_nms(boxes, scores, top_k=0)[0].numel() == 0
    assert segops.fast_nms(boxes, scores, max_detections=0)[0].numel() == 0
    assert segops.fast_nms(boxes, scores)[0].numel() == 2
    out = segops.matrix_nms(torch.zeros(0, 3, 3, dtype=torch.bool, device=device),
                            torch.zeros(0, dtype=torch.int64, device=device), s)
    assert out.shape == (0,) and out.dtype == dtype
    # zero-size masks: every IoU is 0, nothing decays
    sc = torch.tensor([0.5, 0.75], dtype=dtype, device=device)
    out = segops.matrix_nms(torch.zeros(2, 0, 4, dtype=torch.bool, device=device),
                            torch.zeros(2, dtype=torch.int64, device=device), sc)
    assert torch.equal(out, sc)



# ======================================================================================
# opcheck, torch.compile
# ======================================================================================



