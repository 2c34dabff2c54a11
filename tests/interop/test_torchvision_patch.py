"""segops.patch_torchvision (docs/torchvision.md): which names it replaces, that every call
routes to segops' kernels, that it restores every attribute by identity, nesting, modules
imported while patched, and the fallbacks (tracing, scripting, quantized, odd arguments).

Needs torchvision (skipped without it; SEGOPS_REQUIRE_TORCHVISION=1 makes that a failure)."""

from __future__ import annotations

import sys
import types
from collections import OrderedDict

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import segops
from segops import torchvision_compat

from helpers.interop import import_torchvision, random_boxes, with_batch_index

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.(trace|script)` is deprecated"),
    pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]

torchvision = import_torchvision()
from torchvision.models.detection import roi_heads, transform  # noqa: E402
from torchvision.ops import boxes as box_ops  # noqa: E402
from torchvision.ops import poolers  # noqa: E402

# Every module-level name of torchvision 0.28 that holds one of the six functions (found by
# reading torchvision's sources: ops/__init__.py re-exports, poolers.py and roi_heads.py
# import roi_align, transform.py imports paste_masks_in_image).
EXPECTED = {
    "torchvision.ops.roi_align": "roi_align",
    "torchvision.ops.roi_align.roi_align": "roi_align",
    "torchvision.ops.poolers.roi_align": "roi_align",
    "torchvision.models.detection.roi_heads.roi_align": "roi_align",
    "torchvision.ops.roi_pool": "roi_pool",
    "torchvision.ops.roi_pool.roi_pool": "roi_pool",
    "torchvision.ops.nms": "nms",
    "torchvision.ops.boxes.nms": "nms",
    "torchvision.ops.batched_nms": "batched_nms",
    "torchvision.ops.boxes.batched_nms": "batched_nms",
    "torchvision.ops.poolers._multiscale_roi_align": "_multiscale_roi_align",
    "torchvision.models.detection.roi_heads.paste_masks_in_image": "paste_masks_in_image",
    "torchvision.models.detection.transform.paste_masks_in_image": "paste_masks_in_image",
}
ROI_ALIGN_MODULE = sys.modules["torchvision.ops.roi_align"]
ROI_POOL_MODULE = sys.modules["torchvision.ops.roi_pool"]
ORIGINALS = {
    "roi_align": ROI_ALIGN_MODULE.roi_align,
    "roi_pool": ROI_POOL_MODULE.roi_pool,
    "nms": box_ops.nms,
    "batched_nms": box_ops.batched_nms,
    "_multiscale_roi_align": poolers._multiscale_roi_align,
    "paste_masks_in_image": roi_heads.paste_masks_in_image,
}


def _lookup(dotted: str):
    module, attr = dotted.rsplit(".", 1)
    return vars(sys.modules[module])[attr]


def _snapshot() -> dict[tuple[str, str], object]:
    return {(name, attr): value
            for name, m in list(sys.modules.items())
            if isinstance(m, types.ModuleType)
            and (name == "torchvision" or name.startswith("torchvision."))
            for attr, value in list(vars(m).items())}


def test_originals_are_unpatched_at_start():
    for fn in ORIGINALS.values():
        assert not hasattr(fn, "_segops_original")
    for dotted, key in EXPECTED.items():
        assert _lookup(dotted) is ORIGINALS[key], dotted


def test_patches_every_name_and_restores_every_attribute_by_identity():
    before = _snapshot()
    with segops.patch_torchvision() as handle:
        assert handle.active
        assert set(handle.patched) == set(EXPECTED)
        for dotted, key in EXPECTED.items():
            value = _lookup(dotted)
            assert value is not ORIGINALS[key], dotted
            assert value._segops_original is ORIGINALS[key], dotted
        # no torchvision module holds a replaced function under any other name
        originals = {id(f) for f in ORIGINALS.values()}
        left = [k for k, v in _snapshot().items() if id(v) in originals]
        assert left == []
    assert not handle.active
    after = _snapshot()
    assert after.keys() == before.keys()
    changed = [k for k in before if after[k] is not before[k]]
    assert changed == []


def test_plain_call_restore_is_idempotent():
    handle = segops.patch_torchvision()
    try:
        assert torchvision.ops.nms is not ORIGINALS["nms"]
        assert "active" in repr(handle)
    finally:
        handle.restore()
    assert torchvision.ops.nms is ORIGINALS["nms"]
    handle.restore()  # a second restore changes nothing
    assert torchvision.ops.nms is ORIGINALS["nms"]
    assert "restored" in repr(handle)


def test_nested_patch_is_a_no_op_and_the_outer_one_restores():
    with segops.patch_torchvision() as outer:
        patched = torchvision.ops.roi_align
        with segops.patch_torchvision() as inner:
            assert inner.patched == []
            assert torchvision.ops.roi_align is patched
        assert torchvision.ops.roi_align is patched  # the inner exit left the outer patch
    assert outer.patched and torchvision.ops.roi_align is ORIGINALS["roi_align"]


def test_module_imported_while_patched_gets_the_original_back():
    name = "torchvision._segops_late_import_test"
    late = types.ModuleType(name)
    try:
        with segops.patch_torchvision():
            late.nms = torchvision.ops.nms  # as `from torchvision.ops import nms` would
            sys.modules[name] = late
            assert late.nms is not ORIGINALS["nms"]
        assert late.nms is ORIGINALS["nms"]
    finally:
        sys.modules.pop(name, None)


def test_restore_leaves_a_name_someone_else_replaced_meanwhile():
    mine = lambda *a: None  # noqa: E731
    with segops.patch_torchvision():
        box_ops.nms = mine
    try:
        assert box_ops.nms is mine
        assert torchvision.ops.nms is ORIGINALS["nms"]
    finally:
        box_ops.nms = ORIGINALS["nms"]


# ---------------------------------------------------------------------------------------
# routing: which dispatcher ops a patched call runs
# ---------------------------------------------------------------------------------------


def _ops_run(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()
            if e.key.startswith(("segops::", "torchvision::"))}


def _calls():
    """(name, thunk, segops ops expected) for each public entry point."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 24, 32, generator=g)
    rois = with_batch_index(random_boxes(20, 32, 24, g), 2, g)
    boxes = random_boxes(1500, 200, 200, g, max_side=40)
    scores = torch.rand(1500, generator=g)
    labels = torch.randint(0, 3, (1500,), generator=g)
    feats = OrderedDict((str(k), torch.randn(2, 4, 64 >> k, 64 >> k, generator=g))
                        for k in range(4))
    fpn_boxes = [random_boxes(10, 256, 256, g, max_side=200) for _ in range(2)]
    masks = torch.rand(5, 1, 28, 28, generator=g)
    paste_boxes = random_boxes(5, 60, 50, g, max_side=30)
    return [
        ("ops.roi_align", lambda: torchvision.ops.roi_align(x, rois, 5, 0.5, 2),
         {"segops::roi_align"}),
        ("ops.RoIAlign", lambda: torchvision.ops.RoIAlign(5, 0.5, 2)(x, rois),
         {"segops::roi_align"}),
        ("ops.roi_pool", lambda: torchvision.ops.roi_pool(x, rois, 5, 0.5),
         {"segops::roi_pool"}),
        ("ops.RoIPool", lambda: torchvision.ops.RoIPool(5, 0.5)(x, rois), {"segops::roi_pool"}),
        ("ops.nms", lambda: torchvision.ops.nms(boxes, scores, 0.5), {"segops::nms"}),
        # 300 boxes take torchvision's offset trick, 1500 its per-class loop
        ("ops.batched_nms", lambda: torchvision.ops.batched_nms(
            boxes[:300], scores[:300], labels[:300], 0.5), {"segops::batched_nms"}),
        ("ops.batched_nms (large)", lambda: torchvision.ops.batched_nms(
            boxes, scores, labels, 0.5), {"segops::batched_nms"}),
        ("ops.MultiScaleRoIAlign", lambda: torchvision.ops.MultiScaleRoIAlign(
            ["0", "1", "2", "3"], 7, 2)(feats, fpn_boxes, [(256, 256)] * 2),
         {"segops::multilevel_roi_align"}),
        ("roi_heads.paste_masks_in_image",
         lambda: roi_heads.paste_masks_in_image(masks, paste_boxes, (50, 60)),
         {"segops::paste_masks"}),
        ("transform.paste_masks_in_image",
         lambda: transform.paste_masks_in_image(masks, paste_boxes, (50, 60)),
         {"segops::paste_masks"}),
    ]


@pytest.mark.parametrize("index", range(len(_calls())), ids=[c[0] for c in _calls()])
def test_patched_call_runs_segops_and_gives_torchvision_results(index):
    name, thunk, expected = _calls()[index]
    reference = thunk()
    assert not any(k.startswith("segops::") for k in _ops_run(thunk))
    with segops.patch_torchvision():
        assert _ops_run(thunk) == expected
        got = thunk()
    assert got.shape == reference.shape and got.dtype == reference.dtype
    if "paste" in name:  # values to a few float32 ulps (see test_torchvision_ops.py)
        torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
    elif "batched_nms (large)" in name:  # torchvision's loop path sorts unstably
        assert torch.equal(got.sort().values, reference.sort().values)
    else:
        assert torch.equal(got, reference)


# ---------------------------------------------------------------------------------------
# fallbacks to torchvision's own functions
# ---------------------------------------------------------------------------------------


def test_traced_calls_run_torchvision_ops():
    g = torch.Generator().manual_seed(1)
    boxes, scores = random_boxes(50, 100, 100, g), torch.rand(50, generator=g)
    x = torch.randn(1, 2, 16, 16, generator=g)
    rois = with_batch_index(random_boxes(4, 16, 16, g), 1, g)

    def f(b, s, x, r):
        return torchvision.ops.nms(b, s, 0.5), torchvision.ops.roi_align(x, r, 3)

    with segops.patch_torchvision():
        traced = torch.jit.trace(f, (boxes, scores, x, rois), check_trace=False)
    graph = str(traced.graph)
    assert "torchvision::nms" in graph and "torchvision::roi_align" in graph
    assert "segops::" not in graph


def test_scripting_under_the_patch_compiles_torchvision_functions():
    class Net(torch.nn.Module):
        def forward(self, b, s, labels, x, r, masks):
            keep = torchvision.ops.batched_nms(b, s, labels, 0.5)
            pooled = torchvision.ops.roi_align(x, r, [3, 3])
            pasted = roi_heads.paste_masks_in_image(masks, b[:2], (20, 20))
            return keep, pooled, pasted

    with segops.patch_torchvision():
        scripted = torch.jit.script(Net())
        pooler = torch.jit.script(torchvision.ops.MultiScaleRoIAlign(["0", "1"], 3, 2))
    code = scripted.code  # names the compiled functions, e.g. __torch__.torchvision.ops...
    assert "segops" not in code
    for name in ("torchvision.ops.boxes.batched_nms", "torchvision.ops.roi_align.roi_align",
                 "torchvision.models.detection.roi_heads.paste_masks_in_image"):
        assert name in code, name
    g = torch.Generator().manual_seed(2)
    b, s = random_boxes(8, 20, 20, g), torch.rand(8, generator=g)
    labels = torch.randint(0, 2, (8,), generator=g)
    x = torch.randn(1, 2, 10, 10, generator=g)
    r = with_batch_index(random_boxes(3, 10, 10, g), 1, g)
    masks = torch.rand(2, 1, 28, 28, generator=g)
    for got, want in zip(scripted(b, s, labels, x, r, masks), Net()(b, s, labels, x, r, masks)):
        assert torch.equal(got, want)
    feats = {"0": torch.randn(1, 2, 16, 16, generator=g), "1": torch.randn(1, 2, 8, 8,
                                                                           generator=g)}
    assert _ops_run(lambda: pooler(feats, [b], [(64, 64)])) == {"torchvision::roi_align"}


def test_torch_compile_traces_the_replacements():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 2, 16, 16, generator=g)
    rois = with_batch_index(random_boxes(5, 16, 16, g), 1, g)
    boxes, scores = random_boxes(40, 50, 50, g), torch.rand(40, generator=g)

    def f(x, rois, boxes, scores):
        return torchvision.ops.roi_align(x, rois, 3, 1.0, 2), torchvision.ops.nms(boxes, scores,
                                                                                  0.5)

    want = f(x, rois, boxes, scores)
    torch._dynamo.reset()
    with segops.patch_torchvision():
        compiled = torch.compile(f, backend="eager")
        assert _ops_run(lambda: compiled(x, rois, boxes, scores)) == {"segops::roi_align",
                                                                      "segops::nms"}
        got = compiled(x, rois, boxes, scores)
    torch._dynamo.reset()
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_quantized_roi_align_and_nms_take_torchvision():
    g = torch.Generator().manual_seed(3)
    x = torch.quantize_per_tensor(torch.rand(1, 2, 12, 12, generator=g), 0.01, 0, torch.quint8)
    rois = torch.quantize_per_tensor(
        with_batch_index(random_boxes(4, 12, 12, g), 1, g), 0.125, 0, torch.quint8)
    boxes = torch.quantize_per_tensor(random_boxes(20, 12, 12, g), 0.125, 0, torch.quint8)
    scores = torch.quantize_per_tensor(torch.rand(20, generator=g), 0.01, 0, torch.quint8)
    want = torchvision.ops.roi_align(x, rois, 3, 1.0, 2), torchvision.ops.nms(boxes, scores, 0.5)
    with segops.patch_torchvision():
        thunk = lambda: (torchvision.ops.roi_align(x, rois, 3, 1.0, 2),  # noqa: E731
                         torchvision.ops.nms(boxes, scores, 0.5))
        assert _ops_run(thunk) == {"torchvision::qroi_align", "torchvision::qnms"}
        got = thunk()
    assert got[0].is_quantized and torch.equal(got[0].int_repr(), want[0].int_repr())
    assert torch.equal(got[1], want[1])


def test_paste_with_other_padding_takes_torchvision():
    g = torch.Generator().manual_seed(4)
    masks, boxes = torch.rand(3, 1, 14, 14, generator=g), random_boxes(3, 40, 40, g)
    want = roi_heads.paste_masks_in_image(masks, boxes, (40, 40), padding=2)
    with segops.patch_torchvision():
        assert _ops_run(lambda: roi_heads.paste_masks_in_image(
            masks, boxes, (40, 40), padding=2)) == set()
        got = roi_heads.paste_masks_in_image(masks, boxes, (40, 40), padding=2)
    assert torch.equal(got, want)


def test_non_consecutive_pyramid_takes_torchvision():
    """torchvision's own example pools from 1/8 and 1/32 maps: its LevelMapper then spans
    three levels for two maps; the patch leaves such a pooler to torchvision."""
    g = torch.Generator().manual_seed(5)
    feats = OrderedDict(feat1=torch.rand(1, 5, 64, 64, generator=g),
                        feat3=torch.rand(1, 5, 16, 16, generator=g))
    boxes = [random_boxes(30, 256, 256, g, max_side=256)]
    want = torchvision.ops.MultiScaleRoIAlign(["feat1", "feat3"], 3, 2)(feats, boxes,
                                                                         [(512, 512)])
    with segops.patch_torchvision():
        pooler = torchvision.ops.MultiScaleRoIAlign(["feat1", "feat3"], 3, 2)
        assert _ops_run(lambda: pooler(feats, boxes, [(512, 512)])) == {"segops::roi_align"}
        got = pooler(feats, boxes, [(512, 512)])
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="MultiScaleRoIAlign: the feature maps must be "
                                         "consecutive pyramid levels"):
        segops.MultiScaleRoIAlign(["feat1", "feat3"], 3, 2)(feats, boxes, [(512, 512)])


def test_pyramid_check_rejects_other_mappers():
    mapper = poolers.LevelMapper(2, 5)
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    assert torchvision_compat._pyramid_levels(scales, mapper, poolers.LevelMapper)
    assert not torchvision_compat._pyramid_levels(scales[:3], mapper, poolers.LevelMapper)
    assert not torchvision_compat._pyramid_levels(
        scales, poolers.LevelMapper(2, 5, eps=1e-5), poolers.LevelMapper)
    assert not torchvision_compat._pyramid_levels(
        [1 / 4, 1 / 8, 1 / 32, 1 / 64], mapper, poolers.LevelMapper)
    assert not torchvision_compat._pyramid_levels(scales, object(), poolers.LevelMapper)


def test_empty_inputs_give_torchvision_shapes():
    boxes, scores, labels = torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long)

    def calls():
        return (roi_heads.paste_masks_in_image(torch.zeros(0, 1, 28, 28), boxes, (10, 12)),
                torchvision.ops.nms(boxes, scores, 0.5),
                torchvision.ops.batched_nms(boxes, scores, labels, 0.5),
                torchvision.ops.roi_align(torch.rand(1, 2, 8, 8), torch.zeros(0, 5), 3))

    want = calls()
    with segops.patch_torchvision():
        got = calls()
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
