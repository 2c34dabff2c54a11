"""ONNX export with segops.onnx.translation_table(): every translated op emits standard ONNX
operators only, and onnxruntime runs the graph to eager's results (indices and bools equal,
floats within 1e-5 relative, thresholded masks equal outside the rounding band), on the
export example, on inputs of other sizes (dynamic shapes), and on random inputs with the
edge cases each op defines (ties, NaN and infinite boxes and scores, reversed boxes,
thresholds that round in float32). Ops without a standard form raise naming the op."""

from __future__ import annotations

import math
import re

import pytest
import torch

import segops
import segops.onnx
from helpers.deploy import CASES, Case, rand_boxes, rois
from helpers.masks import check_bool_band, contract_resize
from helpers.onnx_export import Runner, as_tuple, assert_standard, compare, export

pytestmark = pytest.mark.no_cuda_emu

ONNX_CASES = [c for c in CASES if c.onnx]


def _dynamic(case: Case):
    return None if case.dynamic is None else case.dynamic()


def _check_outputs(case: Case, actual: tuple, args: tuple) -> None:
    """Outputs of `case` in onnxruntime against eager; thresholded masks against the rounding
    band of eager's float values."""
    expected = as_tuple(case.fn(*args))
    if case.name == "assemble_masks_fused":
        protos, coeffs, boxes = args
        values = contract_resize(segops.assemble_masks(protos, coeffs, boxes), 45, 38)
        check_bool_band(actual[0], values, 0.5, strict=True, dtype=torch.float32)
    elif case.name == "paste_masks":
        values = segops.paste_masks(*args, (36, 44), None)
        check_bool_band(actual[0], values, 0.5, strict=False, dtype=torch.float32)
    else:
        compare(actual, expected)


@pytest.mark.parametrize("case", ONNX_CASES, ids=[c.name for c in ONNX_CASES])
def test_onnx_matches_eager(case):
    model = export(case.fn, case.inputs(0), _dynamic(case))
    ops = assert_standard(model)
    assert not any(o.startswith("segops") for o in ops)
    run = Runner(model)
    for v in (0, 1) if case.dynamic is not None else (0,):
        args = case.inputs(v)
        _check_outputs(case, run(*args), args)


def test_translation_table_covers_every_forward_op():
    names = {s.name.split("::")[1] for s in torch._C._jit_get_all_schemas()
             if s.name.startswith("segops::")}
    forward = {n for n in names if not n.startswith("_")}
    table = segops.onnx.translation_table()
    covered = {k.name().split("::")[1] for k in table}
    assert covered == forward
    assert set(segops.onnx.UNSUPPORTED) < forward


@pytest.mark.parametrize("name", ["cluster_seeds", "boundary_patches", "crop_patches",
                                  "reassemble_patches", "paste_masks_torchvision"])
def test_unsupported_ops_raise_naming_the_op(name):
    case = next(c for c in CASES if c.name == name)
    op = name.replace("_torchvision", "")
    with pytest.raises(Exception, match=rf"segops\.onnx: `segops\.{op}`"):
        export(case.fn, case.inputs(0))


def test_float64_nms_raises():
    boxes, scores = rand_boxes(8, 0).double(), torch.rand(8, dtype=torch.float64)
    with pytest.raises(Exception, match=r"segops\.onnx: `segops\.nms` with float64"):
        export(lambda b, s: segops.nms(b, s, 0.5), (boxes, scores))


# ---- random inputs with the edge cases ----------------------------------------------


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def nms_problem(seed: int, n: int):
    """Boxes in clusters (many overlaps), scores with ties; edge cases sprinkled in: NaN and
    infinite coordinates, reversed and zero-area boxes, duplicates, NaN and +-inf scores,
    negative and large category ids."""
    g = _gen(seed)
    boxes = rand_boxes(n, seed, clusters=max(1, n // 5))
    scores = torch.randint(0, 6, (n,), generator=g).float() / 5  # ties
    idxs = torch.randint(-2, 3, (n,), generator=g)
    kinds = torch.randint(0, 12, (n,), generator=g)
    for i in range(n):
        k = int(kinds[i])
        if k == 0:
            boxes[i, int(torch.randint(0, 4, (), generator=g))] = math.nan
        elif k == 1:
            boxes[i, 2] = math.inf
        elif k == 2:
            boxes[i] = boxes[i, [2, 1, 0, 3]]  # reversed in x
        elif k == 3:
            boxes[i, 3] = boxes[i, 1]  # zero height
        elif k == 4 and i > 0:
            boxes[i] = boxes[i - 1]  # a duplicate
        elif k == 5:
            scores[i] = (math.nan, math.inf, -math.inf)[i % 3]
        elif k == 6:
            idxs[i] = 10**12
    return boxes, scores, idxs


# thresholds: exact in float32 (0.5, 0.0), rounding up (0.3) and down (0.7) in float32,
# none suppressing (1.0), all suppressing (-0.1); one graph computes them all. (A NaN
# threshold is refused by the op itself.)
THRESHOLDS = [0.5, 0.3, 0.7, 0.0, 1.0, -0.1]


@pytest.mark.parametrize("batched", [False, True], ids=["nms", "batched_nms"])
def test_greedy_nms_random(batched):
    if batched:
        def fn(b, s, i):
            return tuple(t for thr in THRESHOLDS
                         for t in segops.batched_nms(b, s, i, thr, max_out=12))
    else:
        def fn(b, s):
            return tuple(segops.nms(b, s, thr) for thr in THRESHOLDS)
    n = torch.export.Dim("N", min=2)
    dyn = ({0: n}, {0: n}, {0: n})[: 3 if batched else 2]
    args = nms_problem(0, 20)[: 3 if batched else 2]
    run = Runner(export(fn, args, dyn))
    kept = torch.zeros(len(THRESHOLDS), dtype=torch.int64)
    for seed in range(40):
        args = nms_problem(seed, 2 + seed % 31)[: 3 if batched else 2]
        expected = fn(*args)
        compare(run(*args), expected)
        keeps = expected[::2] if batched else expected
        kept += torch.tensor([int(k.ne(-1).sum()) for k in keeps])
    assert (kept >= 40).all(), kept  # not vacuous: every problem keeps a box
    if not batched:
        assert kept[5] == 40  # -0.1: the first box alone
    assert kept[4] > kept[0] > kept[1]  # 1.0 keeps more than 0.5, 0.5 more than 0.3


def test_nms_half_boxes():
    def fn(b, s):
        return segops.nms(b, s, 0.45)

    boxes, scores, _ = nms_problem(3, 30)
    run = Runner(export(fn, (boxes.half(), scores.half()), ({0: torch.export.Dim("N")},) * 2))
    for seed in range(10):
        boxes, scores, _ = nms_problem(seed, 25)
        args = (boxes.half(), scores.half())
        compare(run(*args), as_tuple(fn(*args)))


def fast_problem(seed: int, n: int, c: int):
    g = _gen(seed)
    boxes = rand_boxes(n, seed, extent=40.0, clusters=max(1, n // 6))
    scores = (torch.randint(0, 9, (c, n), generator=g).float() / 8) ** 2  # ties
    if n > 4:
        boxes[1, 0] = math.nan
        boxes[2] = boxes[2, [2, 3, 0, 1]]  # reversed
        boxes[3] = boxes[4]
        scores[0, 4] = math.nan
    if n >= 3 and seed % 3 == 0:  # YOLACT's chain: A suppresses B, B would suppress C
        boxes[:3] = torch.tensor([[0.0, 0, 10, 10], [3.0, 0, 13, 10], [6.0, 0, 16, 10]])
        scores[:, :3] = torch.tensor([0.9, 0.8, 0.7])
    return boxes, scores


FAST_CONFIGS = [  # iou_threshold, top_k, score_threshold, max_detections, cc, second
    (0.5, 6, 0.05, 8, False, False),
    (0.3, 50, 0.2, 100, False, True),
    (0.7, 4, 0.1, 3, False, False),
    (0.5, 7, 0.05, 100, True, False),
    (0.3, 30, 0.3, 100, True, True),
]


def test_fast_nms_random():
    def fn(b, sc):
        return tuple(t for t_, k, s_, m, cc, second in FAST_CONFIGS
                     for t in segops.fast_nms(b, sc, t_, k, s_, m, cross_class=cc,
                                              second_threshold=second, padded=True))

    n, c = torch.export.Dim("N", min=2), torch.export.Dim("C", min=2)
    run = Runner(export(fn, fast_problem(0, 20, 3), ({0: n}, {0: c, 1: n})))
    kept = torch.zeros(len(FAST_CONFIGS), dtype=torch.int64)
    for seed in range(30):
        args = fast_problem(seed, 2 + seed % 25, 2 + seed % 4)
        expected = fn(*args)
        compare(run(*args), expected)
        kept += torch.stack(expected[3::4])
    assert (kept > 30).all(), kept


def matrix_problem(seed: int, n: int, h: int, w: int):
    g = _gen(seed)
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n):
        y0 = int(torch.randint(0, h, (), generator=g))
        x0 = int(torch.randint(0, w, (), generator=g))
        y1 = y0 + int(torch.randint(0, h // 2 + 1, (), generator=g))
        x1 = x0 + int(torch.randint(0, w // 2 + 1, (), generator=g))
        masks[i, y0:y1, x0:x1] = True  # may be empty
    if n > 3:
        masks[3] = masks[1]  # a duplicate: IoU 1 (linear kernel: a 0 denominator)
    labels = torch.randint(0, 2, (n,), generator=g)
    scores = torch.randint(1, 8, (n,), generator=g).float() / 8  # ties
    return masks, labels, scores


def test_matrix_nms_random():
    def fn(m, lab, s):
        return segops.matrix_nms(m, lab, s, "gaussian", 2.0), segops.matrix_nms(m, lab, s,
                                                                               "linear")

    n, h, w = (torch.export.Dim(x, min=2) for x in "NHW")
    run = Runner(export(fn, matrix_problem(0, 6, 9, 11), ({0: n, 1: h, 2: w}, {0: n}, {0: n})))
    for seed in range(30):
        args = matrix_problem(seed, 2 + seed % 9, 4 + seed % 7, 5 + seed % 5)
        compare(run(*args), fn(*args))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_roi_align_random(dtype):
    def fn(x, r):  # aligned or not, sampling_ratio adaptive (-1, 0) or fixed (1, 3)
        out = tuple(segops.roi_align(x, r, (3, 4), 0.3, sampling_ratio, aligned)
                    for aligned in (False, True) for sampling_ratio in (-1, 0, 1, 3))
        # roi_pool too, but not in float64: onnxruntime has no float64 MaxRoiPool kernel
        return out if dtype == torch.float64 else out + (segops.roi_pool(x, r, 3, 0.3),)

    dims = tuple(torch.export.Dim(x, min=2) for x in "NCHWK")
    x = torch.randn(2, 3, 16, 20, dtype=dtype)
    run = Runner(export(fn, (x, rois(9, 2, 0, 60.0).to(dtype)),
                        ({0: dims[0], 1: dims[1], 2: dims[2], 3: dims[3]}, {0: dims[4]})))
    tol = dict(rtol=1e-5, atol=0) if dtype != torch.float16 else dict(rtol=1e-3, atol=1e-3)
    for seed in range(6):
        x = torch.randn(1 + seed % 3, 2, 10 + seed, 13 + 2 * seed, generator=_gen(seed))
        r = rois(5 + 3 * seed, x.shape[0], seed, 2.5 * x.shape[3])
        r[0, 1:] = r[0, [3, 4, 1, 2]]  # inverted
        r[1, 2] = math.nan
        r[2, 3] = math.inf
        x, r = x.to(dtype), r.to(dtype)
        compare(run(x, r), fn(x, r), tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_assemble_masks_random(dtype):
    def fn(p, c, b):
        return segops.assemble_masks(p, c, b)

    def both(p, c, b):
        return fn(p, c, b), segops.assemble_masks(p, c, b, image_size=(41, 29), threshold=0.6)

    dims = tuple(torch.export.Dim(x, min=2) for x in ("H", "W", "k", "N"))
    dyn = ({0: dims[0], 1: dims[1], 2: dims[2]}, {0: dims[3], 1: dims[2]}, {0: dims[3]})

    def problem(seed):
        g = _gen(seed)
        h, w, k, n = 6 + seed % 9, 5 + seed % 11, 3 + seed % 4, 2 + seed % 6
        protos = torch.randn(h, w, k, generator=g, dtype=dtype)
        coeffs = torch.randn(n, k, generator=g, dtype=dtype)
        boxes = torch.rand(n, 4, generator=g, dtype=dtype) * 1.2 - 0.1
        boxes[0, 0] = 11 / 13  # lands on a pixel edge (YOLACT's float32 example)
        boxes[1, 3] = math.inf
        return protos, coeffs, boxes

    run = Runner(export(both, problem(0), dyn))
    tol = dict(rtol=1e-5, atol=0) if dtype == torch.float32 else dict(rtol=1e-12, atol=0)
    for seed in range(12):
        args = problem(seed)
        masks, up = run(*args)
        compare((masks,), (fn(*args),), tol)
        values = contract_resize(fn(*args), 41, 29)
        check_bool_band(up, values, 0.6, strict=True, dtype=dtype)


@pytest.mark.parametrize("opset,dtype", [(18, torch.float32), (20, torch.float32),
                                         (20, torch.float64)])
def test_paste_masks_random(opset, dtype):
    # GridSample's bilinear mode is "bilinear" before opset 20 and "linear" from it (where
    # onnxruntime also has a float64 kernel)
    def values(m, b):
        return segops.paste_masks(m, b, (30, 34), None)

    def both(m, b):
        return segops.paste_masks(m, b, (30, 34), 0.4), values(m, b)

    n, s = torch.export.Dim("N", min=2), torch.export.Dim("M", min=2)
    dyn = ({0: n, 1: s, 2: s}, {0: n})

    def problem(seed):
        g = _gen(seed)
        k, m = 2 + seed % 5, 3 + seed % 6
        probs = torch.rand(k, m, m, generator=g, dtype=dtype)
        boxes = rand_boxes(k, seed, extent=36.0, size=25.0).to(dtype)
        boxes[0, :2] -= 10  # past the image's top-left
        boxes[1, 0] = boxes[1, 2] + 1  # inverted: pastes nothing
        if k > 2:
            boxes[2, 3] = math.nan
        return probs, boxes

    model = export(both, problem(0), dyn, opset=opset)
    assert model.opset_import[0].version == opset and "GridSample" in assert_standard(model)
    run = Runner(model)
    for seed in range(12):
        args = problem(seed)
        bools, floats = run(*args)
        v = values(*args)
        compare((floats,), (v,), dict(rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0))
        check_bool_band(bools, v, 0.4, strict=False, dtype=dtype)


def test_multilevel_levels_and_standard_ops():
    """The assign-mode graph picks the levels eager picks (several are used)."""
    case = next(c for c in CASES if c.name == "multilevel_roi_align")
    feats, r = case.inputs(0)
    area = (r[:, 3] - r[:, 1]) * (r[:, 4] - r[:, 2])
    levels = torch.bucketize(area.double(), torch.tensor([(32 * 2.0 ** (k - 1e-6)) ** 2
                                                          for k in (0, 1)]), right=True)
    assert len(levels.unique()) >= 2
    model = export(case.fn, (feats, r), _dynamic(case))
    assert re.search("RoiAlign", " ".join(assert_standard(model)))
