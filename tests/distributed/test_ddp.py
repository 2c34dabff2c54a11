"""segops under torch.distributed (docs/distributed.md): a model whose forward and backward
run segops ops (multilevel_roi_align, roi_align, assemble_masks; tests/helpers/ddp.py)
trained for a few SGD steps with DistributedDataParallel over 2 CPU processes (gloo) ends
with the parameters of a single-process run over the same global batches, to float64
summation-order tolerance; and differs from a run that sees one rank's shard only (so the
comparison can fail)."""

from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers import ddp

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is not available",
)

WORLD = 2
STEPS = 3
IMAGES = 4  # the global batch: 2 per rank


@pytest.mark.no_cuda_emu  # the ranks are separate processes; the shadow sees only the parent
def test_ddp_matches_single_process(tmp_path):
    start = time.perf_counter()
    mp.spawn(ddp.ddp_worker, nprocs=WORLD, join=True,
             args=(WORLD, str(tmp_path / "init"), str(tmp_path), STEPS, IMAGES))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    spawned = time.perf_counter() - start

    initial = ddp.build_model().state_dict()
    single = ddp.build_model()
    single_losses = ddp.train(single, STEPS, IMAGES)
    shard_only = ddp.build_model()
    ddp.train(shard_only, STEPS, IMAGES, slice(0, IMAGES // WORLD))

    # DDP keeps the replicas identical, bit for bit
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), name
    # each rank's loss is the mean over its shard; their mean is the global batch's loss
    for step in range(STEPS):
        mean = sum(r["losses"][step] for r in ranks) / WORLD
        assert abs(mean - single_losses[step]) <= 1e-12 * abs(single_losses[step])
    worst, moved, shard_gap = 0.0, 0.0, 0.0
    for name, value in single.state_dict().items():
        got = ranks[0]["state"][name]
        torch.testing.assert_close(got, value, rtol=1e-10, atol=1e-12, msg=name)
        worst = max(worst, (got - value).abs().max().item())
        moved = max(moved, (value - initial[name]).abs().max().item())
        shard_gap = max(shard_gap, (shard_only.state_dict()[name] - value).abs().max().item())
    assert moved > 1e-3 and shard_gap > 1e-4  # training moved them; the shard alone differs
    print(f"DDP {WORLD} ranks x {STEPS} steps vs one process: max |param diff| {worst:.3g} "
          f"(params moved up to {moved:.3g}; one shard alone differs by {shard_gap:.3g}); "
          f"spawned ranks took {spawned:.1f} s")
