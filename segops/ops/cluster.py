"""Gaussian seed clustering: SpatialEmbeddings' test-time instance clustering (docs/ops/cluster.md)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _args
from ._library import fake, non_differentiable

__all__ = ["cluster_seeds"]

# The largest `grid` entry: the coordinate map is built from linspace(0, extent, grid), so its
# scratch is grid values per axis (64 MiB in float32 at the bound) whatever the input size.
MAX_GRID = 1 << 24


def _coordinates_cpu(size: int, grid: int, extent: float, dtype: torch.dtype) -> Tensor:
    coords = torch.linspace(0, extent, grid, dtype=dtype)
    if size > grid:
        step = extent / (grid - 1)
        extra = extent + step * torch.arange(1, size - grid + 1, dtype=dtype)
        coords = torch.cat([coords, extra])
    return coords[:size]


_COORDINATES: dict = {}  # (size, grid, extent, dtype, device) -> coordinates there


def spatial_coordinates(
    size: int, grid: int, extent: float, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """One axis of SpatialEmbeddings' coordinate map: ``linspace(0, extent, grid)[:size]``,
    continued past ``grid`` with the same step (the original fails there).

    Built on the CPU (CUDA's linspace may round differently in the last ulp, and the
    coordinates must be the same bits on every device) and cached per size and device, so
    that only the first call for a size copies to an accelerator: later calls, a captured
    CUDA graph among them, copy nothing. Treat the result as read-only (it is shared)."""
    if torch.compiler.is_compiling() or not isinstance(size, int):
        # Traced (torch.compile, torch.export), perhaps with a dynamic H or W: the result
        # may be a fake tensor, which must not be cached for later eager calls.
        return _coordinates_cpu(size, grid, float(extent), dtype).to(device)
    key = (size, grid, float(extent), dtype, torch.device(device))
    coords = _COORDINATES.get(key)
    if coords is None:
        if len(_COORDINATES) >= 64:
            _COORDINATES.clear()
        coords = _COORDINATES[key] = _coordinates_cpu(size, grid, float(extent), dtype).to(
            key[4])
    return coords


def cluster_seeds(
    prediction: Tensor,
    n_sigma: int = 1,
    threshold: float = 0.5,
    seed_threshold: float = 0.5,
    min_pixels: int = 128,
    grid: tuple[int, int] = (1024, 2048),
    extent: tuple[float, float] = (1.0, 2.0),
    max_instances: int | None = None,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    """SpatialEmbeddings' Gaussian seed clustering (``Cluster.cluster``), on the device.

    Args:
        prediction: ``Tensor[2 + n_sigma + 1, H, W]``: offsets (x, y), sigma (``n_sigma``
            channels), seed logit; float32/float64/float16/bfloat16. Computed in float64
            for float64, else float32.
        n_sigma: 1 (one bandwidth for both axes) or 2.
        threshold: stop when the best unclustered seed is below it (compared in float64,
            as the original's Python floats; its test script uses 0.9).
        seed_threshold: pixels with ``sigmoid(seed) > seed_threshold`` take part.
        min_pixels: no instances unless more pixels take part; a proposal needs more.
        grid, extent: the coordinate map, ``(y, x)``: ``linspace(0, extent, grid)``
            cropped to the input (continued with the same step past the grid).
        max_instances: capacity of the sync-free form (see Returns).

    Returns:
        ``(instance_map, scores)``: ``int32[H, W]`` with ids ``1..M`` (0: none) and the
        ``M`` seed scores. With ``max_instances``: ``(instance_map, scores, count)`` with
        ``scores`` padded with zeros to ``max_instances`` and ``count`` an int64 scalar
        tensor; at most ``max_instances`` instances are accepted (the loop stops there),
        and on CUDA nothing is read back to the host.

    The loop is the original's: the best unclustered seed (ties: first in raster order)
    proposes the masked pixels with ``exp(-sum_d exp(10 sigma_d) (e_d - c_d)^2) > 0.5``;
    it is accepted iff the proposal has more than ``min_pixels`` pixels and more than half
    of them are unclustered; later instances overwrite earlier ones; every proposal pixel
    is then clustered. tanh, sigmoid and exp are evaluated with the same portable
    arithmetic on CPU and CUDA, so both return the same map bit for bit. Beyond the
    original: int32 ids (its uint8 map fails at the 256th instance), inputs larger than
    the grid, and every dtype.
    """
    op = "cluster_seeds"
    prediction = _args.tensor(op, "prediction", prediction)
    n_sigma = _args.integer(op, "n_sigma", n_sigma)
    threshold = _args.real(op, "threshold", threshold)
    seed_threshold = _args.real(op, "seed_threshold", seed_threshold)
    min_pixels = _args.integer(op, "min_pixels", min_pixels)
    max_instances = _args.capacity(op, "max_instances", max_instances)
    gy, gx = (_args.integer(op, "grid", g) for g in _args.pair(op, "grid", grid))
    ey, ex = (_args.real(op, "extent", e) for e in _args.pair(op, "extent", extent))
    # grid and extent become the coordinate map here, so they are checked here.
    if not (2 <= gy <= MAX_GRID and 2 <= gx <= MAX_GRID):
        raise ValueError(f"{op}: `grid` entries must be in [2, {MAX_GRID}], got {(gy, gx)}")
    if not (math.isfinite(ey) and math.isfinite(ex)):
        raise ValueError(f"{op}: `extent` must be two finite numbers, got {(ey, ex)}")
    acc = torch.float64 if prediction.dtype == torch.float64 else torch.float32
    # (a prediction of the wrong rank gets empty coordinates; the op reports its shape)
    h, w = prediction.shape[1:] if prediction.dim() == 3 else (0, 0)
    xs = spatial_coordinates(w, gx, ex, acc, prediction.device)
    ys = spatial_coordinates(h, gy, ey, acc, prediction.device)
    instance_map, scores, count = torch.ops.segops.cluster_seeds(
        prediction, xs, ys, n_sigma, threshold, seed_threshold, min_pixels, max_instances
    )
    if max_instances < 0:
        return instance_map, scores
    return instance_map, scores, count


@fake("cluster_seeds")
def _(prediction, xs, ys, n_sigma, threshold, seed_threshold, min_pixels, max_instances):
    acc = torch.float64 if prediction.dtype == torch.float64 else torch.float32
    h, w = prediction.shape[1], prediction.shape[2]
    instance_map = prediction.new_empty((h, w), dtype=torch.int32)
    if max_instances >= 0:
        size = max_instances
    else:
        size = torch.library.get_ctx().new_dynamic_size()
    count = prediction.new_empty((), dtype=torch.int64)
    return instance_map, prediction.new_empty((size,), dtype=acc), count


# The instance map is integer; the scores are the seeds' sigmoid values, not differentiated
# through: they do not require grad.
non_differentiable("cluster_seeds")
