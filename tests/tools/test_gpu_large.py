"""Large inputs on a GPU, against the CPU (tools/gpu_check.sh's `large` step): greedy NMS
above 32768 boxes (several mask chunks at the GPU's budget) and at 200k boxes in 80
classes, and cluster_seeds on a scene whose seed regions cover half the image.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import segops

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from cases.cluster import EXTENT, GRID, scene  # noqa: E402
from cases.inputs import MASK_RCNN_IMAGE, detector_boxes  # noqa: E402

pytestmark = [pytest.mark.cuda, pytest.mark.large]


@pytest.mark.parametrize("n, classes", [(40_000, 1), (100_000, 1), (200_000, 80)])
def test_nms_large_matches_cpu(n, classes):
    boxes, scores, cls = detector_boxes(n, MASK_RCNN_IMAGE, 50, classes)
    boxes, scores = boxes.float(), scores.float()
    want = segops.batched_nms(boxes, scores, cls, 0.5, max_out=n)
    got = segops.batched_nms(boxes.cuda(), scores.cuda(), cls.cuda(), 0.5, max_out=n)
    assert torch.equal(got[1].cpu(), want[1])
    assert torch.equal(got[0].cpu(), want[0])
    if classes == 1:
        assert torch.equal(segops.nms(boxes.cuda(), scores.cuda(), 0.5).cpu(),
                           segops.nms(boxes, scores, 0.5))


def test_cluster_seeds_large_seed_regions_matches_cpu():
    pred = scene(1024, 2048, 4, 0, seed=1, radius=(300, 500))
    want = segops.cluster_seeds(pred, 1, 0.5, 0.5, 128, GRID, EXTENT, max_instances=64)
    got = segops.cluster_seeds(pred.cuda(), 1, 0.5, 0.5, 128, GRID, EXTENT, max_instances=64)
    for g, w in zip(got, want):
        assert torch.equal(g.cpu(), w)
