"""Suppression (docs/ops/nms.md): the API surface. Empty inputs, the bad-input table (ops and
references), opcheck, torch.compile.
"""

from __future__ import annotations

import pytest
import torch

import segops

from helpers.nms import ALL_DTYPES, _B, _I, _M, _S, _rect_masks, _small, ref


# ======================================================================================
# Empty inputs, bad input
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


def _meta(t):
    return t.to("meta")


# (function, args, kwargs, exception, message regex)
BAD_INPUTS = [
    # nms
    (segops.nms, (_B[:, :3], _S, 0.5), {}, ValueError, "boxes", "nms-boxes-Nx3"),
    (segops.nms, (_B[0], _S[:1], 0.5), {}, ValueError, "boxes", "nms-boxes-1d"),
    (segops.nms, (_B[None], _S, 0.5), {}, ValueError, "boxes", "nms-boxes-3d"),
    (segops.nms, (_B.long(), _S, 0.5), {}, TypeError, "boxes", "nms-int-boxes"),
    (segops.nms, (_B.bool(), _S, 0.5), {}, TypeError, "boxes", "nms-bool-boxes"),
    (segops.nms, (_B, _S.long(), 0.5), {}, TypeError, "scores", "nms-int-scores"),
    (segops.nms, (_B, _S[:1], 0.5), {}, ValueError, "scores", "nms-scores-length"),
    (segops.nms, (_B, _S[None], 0.5), {}, ValueError, "scores", "nms-scores-2d"),
    (segops.nms, (_B, _S, 0.5), {"max_out": -1}, ValueError, "max_out", "nms-max-out"),
    (segops.nms, (_B, _meta(_S), 0.5), {}, ValueError, "device", "nms-device"),
    (segops.nms, (_B.tolist(), _S, 0.5), {}, TypeError, "boxes", "nms-list-boxes"),
    # batched_nms
    (segops.batched_nms, (_B[:, :3], _S, _I, 0.5), {}, ValueError, "boxes", "b-boxes"),
    (segops.batched_nms, (_B.int(), _S, _I, 0.5), {}, TypeError, "boxes", "b-int-boxes"),
    (segops.batched_nms, (_B, _S.int(), _I, 0.5), {}, TypeError, "scores", "b-int-scores"),
    (segops.batched_nms, (_B, _S[:1], _I, 0.5), {}, ValueError, "scores", "b-scores"),
    (segops.batched_nms, (_B, _S, _I[:1], 0.5), {}, ValueError, "idxs", "b-idxs-length"),
    (segops.batched_nms, (_B, _S, _I[None], 0.5), {}, ValueError, "idxs", "b-idxs-2d"),
    (segops.batched_nms, (_B, _S, _I, 0.5), {"max_out": -2}, ValueError, "max_out",
     "b-max-out"),
    (segops.batched_nms, (_B, _S, _meta(_I), 0.5), {}, ValueError, "device", "b-device-idxs"),
    (segops.batched_nms, (_meta(_B), _S, _I, 0.5), {}, ValueError, "device", "b-device-boxes"),
    # fast_nms
    (segops.fast_nms, (_B[:, :2], _S[None]), {}, ValueError, "boxes", "f-boxes"),
    (segops.fast_nms, (_B.long(), _S[None]), {}, TypeError, "boxes", "f-int-boxes"),
    (segops.fast_nms, (_B, _S), {}, ValueError, "scores", "f-scores-1d"),
    (segops.fast_nms, (_B, _S[None, :1]), {}, ValueError, "scores", "f-scores-length"),
    (segops.fast_nms, (_B, _S[None, None]), {}, ValueError, "scores", "f-scores-3d"),
    (segops.fast_nms, (_B, _S[None].long()), {}, TypeError, "scores", "f-int-scores"),
    (segops.fast_nms, (_B, _S[None]), {"top_k": -1}, ValueError, "top_k", "f-top-k"),
    (segops.fast_nms, (_B, _S[None]), {"max_detections": -1}, ValueError, "max_detections",
     "f-max-det"),
    (segops.fast_nms, (_B, _meta(_S[None])), {}, ValueError, "device", "f-device"),
    # matrix_nms
    (segops.matrix_nms, (_M[0], _I, _S), {}, ValueError, "masks", "m-masks-2d"),
    (segops.matrix_nms, (_M[None], _I, _S), {}, ValueError, "masks", "m-masks-4d"),
    (segops.matrix_nms, (_M, _I[:1], _S), {}, ValueError, "labels", "m-labels-length"),
    (segops.matrix_nms, (_M, _I, _S[:1]), {}, ValueError, "scores", "m-scores-length"),
    (segops.matrix_nms, (_M, _I, _S.long()), {}, TypeError, "scores", "m-int-scores"),
    (segops.matrix_nms, (_M, _I, _S), {"kernel": "box"}, ValueError, "kernel", "m-kernel"),
    (segops.matrix_nms, (_M, _I, _meta(_S)), {}, ValueError, "device", "m-device"),
]


@pytest.mark.parametrize("fn,args,kwargs,exc,match",
                         [pytest.param(*c[:5], id=c[5]) for c in BAD_INPUTS])
def test_bad_input(fn, args, kwargs, exc, match):
    with pytest.raises(exc, match=f"(?i){match}"):
        fn(*args, **kwargs)


@pytest.mark.parametrize("fn,args,kwargs,exc,match",
                         [pytest.param(*c[:5], id=c[5]) for c in BAD_INPUTS])
def test_bad_input_reference(fn, args, kwargs, exc, match):
    """The references validate as the ops do (they run where the ops are benchmarked)."""
    fn = getattr(ref, fn.__name__)
    with pytest.raises(exc, match=f"(?i){match}"):
        fn(*args, **kwargs)


# ======================================================================================
# opcheck, torch.compile
# ======================================================================================


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck(device, dtype):
    boxes, scores = _small(device, dtype)
    idxs = torch.tensor([0, 0, 1, 1, 1], device=device)
    cs = torch.stack([scores, scores.flip(0)])
    for max_out in (-1, 3):
        torch.library.opcheck(torch.ops.segops.nms.default, (boxes, scores, 0.5, max_out))
        torch.library.opcheck(torch.ops.segops.batched_nms.default,
                              (boxes, scores, idxs, 0.5, max_out))
    for cc in (False, True):
        torch.library.opcheck(torch.ops.segops.fast_nms.default,
                              (boxes, cs, 0.5, 4, 0.05, 3, cc, False))
    masks = _rect_masks([(0, 0, 4, 4), (1, 0, 4, 4), (2, 0, 6, 4), (0, 0, 0, 0), (0, 0, 8, 4)])
    labels = torch.tensor([0, 0, 0, 1, 0])
    for kernel in ("gaussian", "linear"):
        torch.library.opcheck(torch.ops.segops.matrix_nms.default,
                              (masks.to(device), labels.to(device), scores, kernel, 2.0))


@pytest.mark.no_cuda_emu  # dynamo does not trace under the emulator's dispatch mode
def test_torch_compile_fullgraph_padded_forms(device):
    """The padded forms trace into one graph (no data-dependent shapes, no graph break)."""

    def f(boxes, scores, idxs, cs, masks, labels):
        k1, n1 = segops.nms(boxes, scores, 0.5, max_out=4)
        k2, n2 = segops.batched_nms(boxes, scores, idxs, 0.5, max_out=4)
        fi, fc, fs, fn = segops.fast_nms(boxes, cs, 0.5, 4, 0.05, 3, padded=True)
        gi, gc, gs, gn = segops.fast_nms(boxes, cs, 0.5, 4, 0.05, 3, cross_class=True,
                                         padded=True)
        d = segops.matrix_nms(masks, labels, scores, "linear")
        return k1 + 1, n1 * 2, k2, n2, fi, fc, fs * 2, fn, gi, gc, gs, gn, d * 3

    boxes, scores = _small(device)
    idxs = torch.tensor([0, 0, 1, 1, 1], device=device)
    cs = torch.stack([scores, scores.flip(0)])
    masks = _rect_masks([(0, 0, 4, 4), (1, 0, 4, 4), (2, 0, 6, 4), (0, 0, 0, 0),
                         (0, 0, 8, 4)]).to(device)
    labels = torch.tensor([0, 0, 0, 1, 0], device=device)
    args = (boxes, scores, idxs, cs, masks, labels)
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    eager, traced = f(*args), compiled(*args)
    assert eager[0].tolist() == [4, 1, 3, 0]  # keep [3, 0, 2] + 1, padding -1 + 1
    assert int(eager[1]) == 6
    assert int(eager[7]) > 0 and (eager[12] < scores * 3).any()
    for a, b in zip(traced, eager):
        assert a.dtype == b.dtype and torch.equal(a, b)
    # a second problem of another size goes through the compiled function too
    args2 = (boxes[:4], scores[:4], idxs[:4], cs[:, :4], masks[:4], labels[:4])
    for a, b in zip(compiled(*args2), f(*args2)):
        assert torch.equal(a, b)
