"""cluster family: cluster_seeds (SpatialEmbeddings' test-time clustering).

A synthetic 1024x2048 [--quick: 128x256] scene with 20 [6] instances (ellipses of 20..120
[6..20] px radius) whose offsets point at their centres (plus noise) and whose sigma makes
a proposal of about the instance's noise radius; optionally 300 [20] false-positive
speckles (3x3 px blobs with seed 0.88 and offsets pointing at their own centres: each is
tried as a seed and rejected, the case where the original spends most of its time);
threshold 0.5 and 0.9 (speckles' seeds are below 0.9, so there they are never tried).
A large-seed-region scene: 4 [2] instances of 300..500 [40..60] px radius, about half of
the image seeded, threshold 0.5 (each accepted seed's proposal covers a large region).

Implementations: segops, reference (the original's loop in PyTorch). The instance maps
must be equal exactly (the reference mirrors segops' portable arithmetic).

Memory floor: the prediction read once (``4 H W s``), segops' outputs written once.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict

import torch

from .registry import Ctx, Fn, nbytes, op_impls, register

GRID, EXTENT = (1024, 2048), (1.0, 2.0)


def scene(h: int, w: int, instances: int, speckles: int, seed: int = 0,
          radius=None) -> torch.Tensor:
    """prediction [4, h, w] (n_sigma = 1): offsets, sigma, seed logit, as float32;
    instance radii in ``radius`` = (lo, hi) px, else by image size."""
    g = torch.Generator().manual_seed(seed)
    xs = torch.linspace(0, EXTENT[1], GRID[1])[:w]
    ys = torch.linspace(0, EXTENT[0], GRID[0])[:h]
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pred = torch.zeros(4, h, w)
    pred[2] = 1.0
    pred[3] = -4.0 + 0.5 * torch.randn(h, w, generator=g)
    r_lo, r_hi = radius or ((20, 120) if h >= 512 else (6, 20))
    noise = 2e-3 * (2048 / GRID[1])  # offset noise, ~2 px

    def blob(cy, cx, ry, rx, logit, sigma):
        m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        k = int(m.sum())
        ex = xs[cx] - xs[xx[m]] + noise * torch.randn(k, generator=g)
        ey = ys[cy] - ys[yy[m]] + noise * torch.randn(k, generator=g)
        pred[0][m] = torch.atanh(ex.clamp(-0.99, 0.99))
        pred[1][m] = torch.atanh(ey.clamp(-0.99, 0.99))
        pred[2][m] = sigma
        pred[3][m] = logit + 0.3 * torch.randn(k, generator=g)

    for _ in range(instances):
        ry, rx = (int(v) for v in torch.randint(r_lo, r_hi, (2,), generator=g))
        cy = int(torch.randint(ry, max(ry + 1, h - ry), (1,), generator=g))
        cx = int(torch.randint(rx, max(rx + 1, w - rx), (1,), generator=g))
        # A proposal radius of ~4 noise sigmas: s = ln 2 / r^2, sigma = ln(s) / 10.
        r = 4 * noise
        blob(cy, cx, ry, rx, 5.0, math.log(math.log(2) / r**2) / 10)
    for _ in range(speckles):
        cy = int(torch.randint(2, h - 2, (1,), generator=g))
        cx = int(torch.randint(2, w - 2, (1,), generator=g))
        blob(cy, cx, 1.5, 1.5, 2.0, 1.0)
    return pred


def _sizes(ctx: Ctx):
    return ((128, 256), 6, 20) if ctx.quick else ((1024, 2048), 20, 300)


def _name(speckles: bool, threshold: float) -> Callable[[Ctx], str]:
    def name(ctx: Ctx) -> str:
        (h, w), k, s = _sizes(ctx)
        extra = f" +{s} speckles" if speckles else ""
        return f"{h}x{w} {k} instances{extra} thr {threshold}"

    return name


def _setup(speckles: bool, threshold: float):
    def setup(ctx: Ctx) -> Dict[str, Any]:
        (h, w), k, s = _sizes(ctx)
        pred = scene(h, w, k, s if speckles else 0).to(ctx.device, ctx.dtype)
        return {
            name: Fn(call=lambda fn=fn: fn(pred, 1, threshold, 0.5, 128, GRID, EXTENT))
            for name, fn in op_impls(ctx, "cluster_seeds", torchvision=False).items()
        }

    return setup


def _floor(ctx: Ctx, out) -> int:
    (h, w), _, _ = _sizes(ctx)
    return nbytes(((4, h, w), ctx.dtype), out)


def _large_sizes(ctx: Ctx):
    return ((128, 256), 2, (40, 60)) if ctx.quick else ((1024, 2048), 4, (300, 500))


def _large_name(ctx: Ctx) -> str:
    (h, w), k, (lo, hi) = _large_sizes(ctx)
    return f"{h}x{w} {k} instances of {lo}..{hi} px (large seed regions) thr 0.5"


def _large_floor(ctx: Ctx, out) -> int:
    (h, w), _, _ = _large_sizes(ctx)
    return nbytes(((4, h, w), ctx.dtype), out)


def _large_setup(ctx: Ctx) -> Dict[str, Any]:
    (h, w), k, radius = _large_sizes(ctx)
    pred = scene(h, w, k, 0, seed=1, radius=radius).to(ctx.device, ctx.dtype)
    return {
        name: Fn(call=lambda fn=fn: fn(pred, 1, 0.5, 0.5, 128, GRID, EXTENT))
        for name, fn in op_impls(ctx, "cluster_seeds", torchvision=False).items()
    }


def register_cases() -> None:
    for speckles in (False, True):
        for threshold in (0.5, 0.9):
            register("cluster_seeds", _name(speckles, threshold), _setup(speckles, threshold),
                     exact=True, floor=_floor, slow_reference=speckles)
    register("cluster_seeds", _large_name, _large_setup, exact=True, floor=_large_floor)
