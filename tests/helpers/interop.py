"""torchvision for the interop tests (tests/interop): imported, or the test module skipped.

``SEGOPS_REQUIRE_TORCHVISION=1`` turns the skip into a failure (CI runs tests/interop in a
venv with torchvision and sets it, so the tests cannot silently stop running)."""

from __future__ import annotations

import os

import pytest
import torch

REQUIRE = os.environ.get("SEGOPS_REQUIRE_TORCHVISION", "") not in ("", "0")


def import_torchvision():
    """torchvision with its compiled ops and detection models, else skip the calling module
    (or fail it under SEGOPS_REQUIRE_TORCHVISION=1)."""
    try:
        import torchvision
        import torchvision.models.detection  # noqa: F401
        from torchvision.extension import _has_ops

        if not _has_ops():
            raise ImportError(f"torchvision {torchvision.__version__} has no compiled ops "
                              f"for torch {torch.__version__}")
    except Exception as e:  # ImportError, or a binary built for another torch
        reason = f"torchvision does not import: {type(e).__name__}: {e}"
        if REQUIRE:
            pytest.fail(f"SEGOPS_REQUIRE_TORCHVISION is set but {reason}", pytrace=False)
        pytest.skip(reason, allow_module_level=True)
    return torchvision


def random_boxes(n: int, width: float, height: float, generator: torch.Generator,
                 dtype=torch.float32, min_side: float = 1.0, max_side: float | None = None):
    """``[n, 4]`` boxes (x1, y1, x2, y2) with corners in the image's range and sides in
    ``[min_side, max_side]`` (default half the larger image side), drawn in float64."""
    max_side = max(width, height) / 2 if max_side is None else max_side
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    xy = xy * torch.tensor([width, height], dtype=torch.float64)
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    wh = wh * (max_side - min_side) + min_side
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


def with_batch_index(boxes: torch.Tensor, batch: int, generator: torch.Generator):
    """``[K, 5]`` rois: a random batch index in ``[0, batch)`` before each box."""
    idx = torch.randint(0, batch, (boxes.shape[0], 1), generator=generator)
    return torch.cat([idx.to(boxes.dtype), boxes], dim=1)


def pasted_rect(boxes: torch.Tensor, mask_size: int, height: int, width: int) -> torch.Tensor:
    """``bool [N, 1, H, W]``: the pixels torchvision's ``paste_masks_in_image`` writes for each
    box (its expanded, truncated box, clipped to the image); every other pixel is 0."""
    from torchvision.models.detection.roi_heads import expand_boxes

    ib = expand_boxes(boxes, (mask_size + 2) / mask_size).to(torch.int64)
    ys, xs = torch.arange(height), torch.arange(width)
    inside_y = (ys >= ib[:, 1:2].clamp(min=0)) & (ys < (ib[:, 3:4] + 1).clamp(max=height))
    inside_x = (xs >= ib[:, 0:1].clamp(min=0)) & (xs < (ib[:, 2:3] + 1).clamp(max=width))
    return (inside_y[:, :, None] & inside_x[:, None, :])[:, None]
