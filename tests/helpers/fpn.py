"""Shared fixtures of the FPN model tests (tests/models/test_models_mask_rcnn.py, _panet.py):
a random P2..P5 pyramid and a one-object training scene. Imported by those tests as ``helpers.fpn``
(conftest puts tests/ on sys.path)."""

from __future__ import annotations

import torch


def pyramid(channels=8, size=128, batch=1, dtype=torch.float32, seed=0):
    """P2..P5 of a ``size`` x ``size`` image: ``[batch, channels, size / 2^k, size / 2^k]``
    for k = 2..5, standard normal."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, channels, size // 2**k, size // 2**k, generator=g).to(dtype)
            for k in (2, 3, 4, 5)]


def training_scene():
    """(targets, proposals) for two 128x128 images with the same object, class 2, mask
    rows 10..59 x columns 8..69: one proposal near it and one away from it in image 0, a
    whole-image proposal in image 1."""
    masks = torch.zeros(1, 128, 128)
    masks[0, 10:60, 8:70] = 1
    targets = [{"boxes": torch.tensor([[8.0, 10.0, 70.0, 60.0]]), "labels": torch.tensor([2]),
                "masks": masks}] * 2
    proposals = [torch.tensor([[6.0, 9.0, 72.0, 58.0], [80.0, 80.0, 120.0, 126.0]]),
                 torch.tensor([[0.0, 0.0, 127.0, 127.0]])]
    return targets, proposals
