"""segops ops called from several Python threads at once (docs/distributed.md): each call
gives what the same call gives alone, forward and backward."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

import segops


def _work(seed: int):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(2, 8, 64 >> k, 64 >> k, generator=g).requires_grad_()
             for k in range(4)]
    xy = torch.rand(200, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + torch.rand(200, 2, generator=g) * 150 + 2], dim=1)
    rois = torch.cat([torch.randint(0, 2, (200, 1), generator=g).float(), boxes], dim=1)
    pooled = segops.multilevel_roi_align(feats, rois, 7, [1 / 4, 1 / 8, 1 / 16, 1 / 32], 2)
    pooled.square().sum().backward()
    scores = torch.rand(200, generator=g)
    keep = segops.batched_nms(boxes, scores, torch.randint(0, 3, (200,), generator=g), 0.5)
    protos = torch.randn(32, 32, 4, generator=g, requires_grad=True)
    coeffs = torch.randn(10, 4, generator=g)
    rel = torch.rand(10, 4, generator=g)  # relative corners, either order
    masks = segops.assemble_masks(protos, coeffs, rel)
    masks.sum().backward()
    return [pooled.detach(), *[f.grad for f in feats], keep, masks.detach(), protos.grad]


def test_concurrent_calls_equal_serial_calls():
    seeds = list(range(16))
    serial = [_work(s) for s in seeds]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(_work, seeds))
    for s, want, got in zip(seeds, serial, concurrent):
        assert len(got) == len(want)
        for i, (a, b) in enumerate(zip(got, want)):
            assert torch.equal(a, b), (s, i)
