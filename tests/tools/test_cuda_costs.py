"""What every op's CUDA path costs, counted on the CPU emulator and held under budgets:
kernel launches, ATen calls that launch kernels, sorts, host synchronisations and peak
memory per op call (tools/cuda_emu/costs.py counts them; docs/cost_model/ explains them).

Every benchmark case of every family (benchmarks/cases, ``--quick`` sizes) runs through
the emulated CUDA glue and kernels with a GPU's settings (cost_table.gpu_settings), and
each op call must stay within its budget below. The same counts at the full benchmark
sizes: ``python tools/cuda_emu/cost_table.py``. Needs the emulator (SEGOPS_CUDA_EMU=1).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "cuda_emu"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import cost_table  # noqa: E402
import costs  # noqa: E402

pytestmark = [
    pytest.mark.skipif(os.environ.get("SEGOPS_CUDA_EMU", "") in ("", "0"),
                       reason="the CUDA emulator is built with SEGOPS_CUDA_EMU=1"),
    pytest.mark.no_cuda_emu,  # these tests redirect op calls to the emulator themselves
]

# Per op call: (kernel launches, ATen calls that launch kernels, sorts), at the --quick
# benchmark sizes (multilevel: 4 levels; greedy NMS: one mask chunk). A CUDA sort is
# several kernels; cumsum, index_select and zeros one each. Each budget is the count the
# kernels have now (docs/cost_model/): a change that adds work has to raise it here.
BUDGETS = {
    "roi_align": (2, 0, 0),                       # geometry, forward (output: empty)
    "_roi_align_backward": (2, 2, 0),             # geometry, scatter / gather; zeros, to
    "roi_pool": (1, 0, 0),                        # forward (outputs: empty)
    "_roi_pool_backward": (2, 2, 0),
    "multilevel_roi_align": (2, 0, 0),
    "_multilevel_roi_align_backward": (2, 8, 0),  # zeros and to per level (atomic form)
    "nms": (5, 2, 1),            # prepare, plan, mask + scan per chunk, compact; sort, cumsum
    "batched_nms": (5, 5, 2),    # + the class sort and two index_selects
    "fast_nms": (1, 51, 5),
    "matrix_nms": (5, 4, 2),     # memset, pack, IoU, comp, decay; 2 sorts, 2 index_selects
    "assemble_masks": (1, 0, 0),
    "assemble_masks_upsampled": (2, 0, 0),
    "paste_masks": (1, 0, 0),
    "cluster_seeds": (3, 18, 2),
    "boundary_patches": (2, 5, 0),  # NMS, write; cumsum and output fills, no sort
    "crop_patches": (4, 0, 0),   # two index checks on the device, the geometry, the crop
    "reassemble_patches": (2, 3, 1),  # index check, reassembly; the patch lists' sort
}
# Peak bytes live during a call <= RATIO x (its inputs + outputs) + 1 MiB.
SCRATCH_RATIO = {"cluster_seeds": 8}  # its grid and seed buffers: 4.4x at most in --quick
DEFAULT_RATIO = 4
SLACK = 1 << 20
# Ops whose default form returns an exact-size result (one count read back); their
# "segops-padded" rows, and every other op, make no host synchronisation.
EXACT_BY_DEFAULT = {"nms", "batched_nms", "fast_nms", "cluster_seeds", "boundary_patches"}


@pytest.fixture(scope="module")
def emu():
    from helpers.cuda_emu_shadow import load

    module = load(seed=int(os.environ.get("SEGOPS_CUDA_EMU_SEED", "0")))
    cost_table.gpu_settings(module)
    yield module
    cost_table.emulator_settings(module)


@pytest.fixture(scope="module")
def quick_rows(emu):
    """(case key, impl, [CallCost], wrapper syncs) of every --quick benchmark row, run."""
    return list(cost_table.measure_cases(emu, quick=True, dry_run=False))


def test_every_family_is_measured(quick_rows):
    ops = {c.op for _, _, calls, _ in quick_rows for c in calls}
    assert ops >= set(BUDGETS) - {"_roi_pool_backward"}, sorted(set(BUDGETS) - ops)
    assert ops <= set(BUDGETS), f"ops without a budget: {sorted(ops - set(BUDGETS))}"


def test_launches_aten_calls_and_sorts_within_budget(quick_rows):
    over = []
    for key, impl, calls, _ in quick_rows:
        for c in calls:
            launches, aten, sorts = BUDGETS[c.op]
            got = (len(c.launches), len(c.aten_kernels), c.sorts)
            if any(g > b for g, b in zip(got, (launches, aten, sorts))):
                over.append(f"{key} [{impl}] {c.op}: (launches, ATen kernel calls, sorts) "
                            f"{got} > {(launches, aten, sorts)}: {c.launches} {c.aten_kernels}")
    assert not over, "\n".join(over)


def test_no_host_synchronisation_outside_exact_size_forms(quick_rows):
    bad = []
    for key, impl, calls, wrapper_syncs in quick_rows:
        op = calls[0].op if calls else key.split()[0]
        allowed = 1 if impl == "segops" and op in EXACT_BY_DEFAULT else 0
        syncs = [s for c in calls for s in c.syncs] + wrapper_syncs
        if len(syncs) > allowed:
            bad.append(f"{key} [{impl}]: {syncs} (allowed {allowed})")
    assert not bad, "\n".join(bad)


def test_peak_memory_bounded_by_inputs_and_outputs(quick_rows):
    over = []
    for key, impl, calls, _ in quick_rows:
        for c in calls:
            io = costs.tensor_bytes((c.args, c.kwargs)) + costs.tensor_bytes(c.output)
            bound = SCRATCH_RATIO.get(c.op, DEFAULT_RATIO) * io + SLACK
            if c.peak_bytes > bound:
                over.append(f"{key} [{impl}] {c.op}: peak {c.peak_bytes} B > {bound} B "
                            f"(inputs + outputs {io} B)")
    assert not over, "\n".join(over)


def _nms_boxes(n: int, classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 1000
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 100 + 1], 1)
    return boxes, torch.rand(n, generator=g), torch.randint(0, classes, (n,), generator=g)


def test_nms_at_200k_boxes_launches_and_memory(emu):
    """The 200k-box, 80-class case in dry-run mode (its counts need no kernel to run):
    chunk launches as bounded from n, no sync, and memory: the mask chunk plus under 100
    bytes a box (sorted boxes, plan, flags, the sorts' outputs)."""
    n = 200_000
    boxes, scores, cls = _nms_boxes(n, 80)
    op = torch.ops.segops_emu.batched_nms.default
    emu.set_dry_run(True)
    try:
        c = costs.trace_call(emu, "batched_nms", lambda: op(boxes, scores, cls, 0.5, n))
    finally:
        emu.set_dry_run(False)
    words = (n + 63) // 64
    chunks = words * (words + 1) // 2 // (1 << 18) + 1  # spans of 64 words, 2**24 words
    assert len(c.launches) == 2 + 2 * chunks + 1
    assert c.syncs == [] and c.sorts == 2
    mask_bytes = 8 * 64 * ((1 << 18) + words)
    assert c.peak_bytes <= mask_bytes + 96 * n, c.peak_bytes


def test_multichunk_nms_matches_cpu(emu):
    """Many chunks (the emulator's small mask budget) and class segments crossing chunk and
    row-block boundaries give the CPU's result."""
    emu.set_nms_mask_budget_words(256)
    try:
        for classes in (1, 7):
            boxes, scores, cls = _nms_boxes(1500, classes, seed=classes)
            want = torch.ops.segops.batched_nms(boxes, scores, cls, 0.3, -1)
            got = torch.ops.segops_emu.batched_nms(boxes, scores, cls, 0.3, -1)
            assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
            c = costs.trace_call(emu, "batched_nms",
                                 lambda: torch.ops.segops_emu.batched_nms(boxes, scores, cls,
                                                                          0.3, -1))
            assert len(c.launches) > 10  # many chunks
    finally:
        emu.set_nms_mask_budget_words(1 << 24)


def test_the_sync_detector_sees_read_backs(emu):
    """The exact-size forms read their count back: the trace must see exactly that."""
    pred = torch.randn(4, 32, 32)
    xs, ys = torch.linspace(0, 2, 32), torch.linspace(0, 1, 32)
    op = torch.ops.segops_emu.cluster_seeds.default
    exact = costs.trace_call(emu, "cluster_seeds",
                             lambda: op(pred, xs, ys, 1, 0.5, 0.5, 4, -1))
    padded = costs.trace_call(emu, "cluster_seeds",
                              lambda: op(pred, xs, ys, 1, 0.5, 0.5, 4, 16))
    assert exact.syncs == ["aten::item"] and padded.syncs == []
    assert costs.allowed_syncs(op, (pred, xs, ys, 1, 0.5, 0.5, 4, -1), {}) == 1
    assert costs.allowed_syncs(op, (pred, xs, ys, 1, 0.5, 0.5, 4, 16), {}) == 0


@pytest.mark.parametrize("bad", [2.0, -1.0, 0.5, float("nan")])
def test_bad_batch_index_is_a_device_side_assert_on_cuda_and_a_value_error_on_cpu(emu, bad):
    x = torch.randn(2, 3, 8, 8)
    rois = torch.tensor([[0, 1.0, 1, 5, 5], [bad, 1, 1, 5, 5]])
    for op, args in [("roi_align", (x, rois, 1.0, 2, 2, 2, False)),
                     ("roi_pool", (x, rois, 1.0, 2, 2)),
                     ("multilevel_roi_align", ([x, x[:, :, :4, :4]], rois, [1.0, 0.5], 2, 2,
                                               2, False, [], True)),
                     ("roi_align", (x[:, :0], rois, 1.0, 2, 2, 2, False))]:  # empty output
        with pytest.raises(ValueError, match="batch index"):
            getattr(torch.ops.segops, op)(*args)
        c = None
        with pytest.raises(RuntimeError, match="device-side assert triggered"):
            c = costs.trace_call(emu, op, lambda: getattr(torch.ops.segops_emu, op)(*args))
        assert c is None
    # The emulator, like a GPU context, is usable again once the error is read (a GPU's is
    # not: there the process must restart); a good call is unaffected.
    rois[1, 0] = 1
    assert torch.equal(torch.ops.segops.roi_align(x, rois, 1.0, 2, 2, 2, False),
                       torch.ops.segops_emu.roi_align(x, rois, 1.0, 2, 2, 2, False))


def test_bad_patch_index_is_a_device_side_assert(emu):
    images, masks = torch.randn(2, 3, 16, 16), torch.zeros(3, 16, 16, dtype=torch.bool)
    boxes = torch.tensor([[0, 0, 8, 8]])
    for inst, batch in [(torch.tensor([3]), torch.tensor([0, 1, 0])),
                        (torch.tensor([0]), torch.tensor([0, 2, 0]))]:
        args = (images, masks, boxes, inst, batch, 4, 4)
        with pytest.raises(ValueError, match="must be in"):
            torch.ops.segops.crop_patches(*args)
        with pytest.raises(RuntimeError, match="device-side assert triggered"):
            torch.ops.segops_emu.crop_patches(*args)
    probs = torch.rand(1, 4, 4)
    with pytest.raises(RuntimeError, match="device-side assert triggered"):
        torch.ops.segops_emu.reassemble_patches(masks, probs, boxes, torch.tensor([5]), 0.5)
