"""patches family: boundary_patches, crop_patches and reassemble_patches (BPR's boundary
patch refinement).

Scene: a 1024x2048 [--quick: 256x512] image (Cityscapes' size) with 30 [6] instance masks,
areas log-uniform from 400 to 150k [100 to 10k] pixels: smooth blobs (a circle with random
low and high Fourier harmonics on its radius) and star-shaped polygons, alternating, placed
inside the image and overlapping freely (:func:`random_shapes`).

Cases, each at the NMS thresholds BPR uses (0.25; 0.55 for Cityscapes inference, about
twice the patches), 64x64 patches:

- ``boundary_patches``: extraction (boundary score, candidates, per-instance NMS, shift
  into the image) from the 30 masks. Output ``(boxes, instance_index, scores)``.
- ``crop_patches``: the image (3 channels, ``--dtype``) and mask patches of the patches
  segops extracts, resampled to 256x256 [64x64] as BPR feeds its refinement net. Output
  ``(image_patches, mask_patches)``; the reference crops through ``roi_align`` and
  ``F.interpolate(mode="nearest")``, so both outputs are exact.
- ``reassemble_patches``: reassembly of the patches segops extracts from the same masks,
  with ``patch_probs`` of size 64x64 (= the box size, so no resampling): the mask crops as
  0/1 blended with uniform noise (``0.6 * m + 0.4 * u``, in ``--dtype``), so that
  overlapping patches average to values on both sides of the 0.5 threshold. Output: the
  refined bool masks ``[30, H, W]``.

Implementations: ``segops``; ``segops-padded`` for extraction (``max_out=`` the number of
patches: no host synchronisation on CUDA; cut to its count before the comparison);
``reference`` (``segops.reference``: the released code's approach, per instance a
full-image 3x3 conv, a greedy NMS and a full-image accumulate-and-divide). Every output must
equal segops' exactly (``exact=True``): extraction returns indices and scores that are
exact float32 quotients; reassembly at box size involves no resampling, and both sum the
patches in index order in float32 (float64 for float64 probabilities).

Memory floors (``s``: the dtype's size; ``P`` patches of ``p x p``): extraction reads the
bool masks ``N H W`` once and writes its (small) outputs; cropping reads the patches'
pixels (``P p^2 (3 s + 1)``: image channels and mask) and writes its outputs; reassembly
reads the masks ``N H W`` (the refined masks are the old ones outside the patches) and the
probabilities ``P p^2 s``, and writes the bool masks ``N H W``. The reference (the released
code's approach: full-image passes per instance) takes seconds a call, so only
``--reference all`` times it.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Callable, Dict, Sequence

import torch

from .registry import Ctx, Fn, nbytes, op_impls, register

PATCH_SIZE = 64
THRESHOLDS = (0.25, 0.55)

# (full, --quick)
IMAGE = ((1024, 2048), (256, 512))  # (h, w)
INSTANCES = (30, 6)
AREAS = ((400.0, 150e3), (100.0, 10e3))  # instance areas (px), log-uniform


def _pick(ctx: Ctx, full_quick):
    return full_quick[1] if ctx.quick else full_quick[0]


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


def _blob(g: torch.Generator):
    """A closed smooth curve in polar form around the origin, ``r(theta) / r0 = 1 +
    sum_k a_k cos(k theta + phi_k)``: its harmonics ``[(k, a_k, phi_k)]``, its area for
    ``r0 = 1`` and its largest ``r / r0`` (bound)."""
    ks = [2, 3, 4, 5] + sorted(int(k) for k in torch.randint(7, 24, (3,), generator=g))
    amps = (torch.rand(4, generator=g, dtype=torch.float64) * 0.16).tolist()
    amps += (0.01 + torch.rand(3, generator=g, dtype=torch.float64) * 0.03).tolist()
    phases = (torch.rand(len(ks), generator=g, dtype=torch.float64) * 2 * math.pi).tolist()
    # area = 1/2 int r^2 dtheta = pi (1 + sum a^2 / 2) (the harmonics are orthogonal)
    area = math.pi * (1.0 + sum(a * a for a in amps) / 2)
    return list(zip(ks, amps, phases)), area, 1.0 + sum(amps)


def _blob_radius(theta: torch.Tensor, harmonics) -> torch.Tensor:
    r = torch.ones_like(theta)
    for k, a, ph in harmonics:
        r = r + a * torch.cos(k * theta + ph)
    return r


def _polygon(g: torch.Generator):
    """A star-shaped polygon around the origin: vertex angles (sorted, in [-pi, pi)) and
    radii, its area for unit scale, and its largest radius."""
    n = int(torch.randint(3, 11, (1,), generator=g))
    gaps = 0.3 + torch.rand(n, generator=g, dtype=torch.float64)
    ang = torch.cumsum(gaps, 0) / gaps.sum() * 2 * math.pi
    ang = torch.remainder(ang + torch.rand(1, generator=g, dtype=torch.float64) * 2 * math.pi,
                          2 * math.pi) - math.pi
    ang = torch.sort(ang).values
    rad = 0.5 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)
    dth = torch.remainder(torch.roll(ang, -1) - ang, 2 * math.pi)
    area = 0.5 * float((rad * torch.roll(rad, -1) * torch.sin(dth)).sum())
    return ang, rad, area, float(rad.max())


def _inside_polygon(dx: torch.Tensor, dy: torch.Tensor, ang: torch.Tensor, rad: torch.Tensor):
    """Whether the points ``(dx, dy)`` (relative to the centre) lie inside the star-shaped
    polygon with vertices ``rad * (cos ang, sin ang)``: the point's distance against that of
    the edge its ray crosses."""
    theta = torch.atan2(dy, dx)
    n = ang.numel()
    j = torch.searchsorted(ang, theta.reshape(-1)).reshape(theta.shape)  # edge (j-1, j)
    i0 = (j - 1) % n
    i1 = j % n
    vx, vy = rad * torch.cos(ang), rad * torch.sin(ang)
    ax, ay, bx, by = vx[i0], vy[i0], vx[i1], vy[i1]
    ux, uy = torch.cos(theta), torch.sin(theta)
    # the ray t * u meets the line a-b at t = cross(a, b) / cross(u, b - a)
    t = (ax * by - ay * bx) / (ux * (by - ay) - uy * (bx - ax))
    return dx * dx + dy * dy < t * t


def random_shapes(hw: Sequence[int], areas: Sequence[float], seed: int = 0) -> torch.Tensor:
    """Instance masks ``bool [len(areas), H, W]`` on the CPU: shape ``i`` has about
    ``areas[i]`` pixels (less where the image clips it); even ``i``: a smooth blob (radius
    ``r0 * (1 + sum_k a_k cos(k theta + phi_k))`` with four low harmonics of amplitude up
    to 0.16 and three of 7..23 with amplitude 0.01..0.04: fine boundary detail), odd ``i``:
    a star-shaped polygon of 3..10 vertices. Centres are uniform over the positions that
    keep the shape inside the image (the centre of the image when it does not fit)."""
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    out = torch.zeros((len(areas), h, w), dtype=torch.bool)
    for i, area in enumerate(areas):
        if i % 2 == 0:
            harmonics, unit_area, extent = _blob(g)
        else:
            ang, rad, unit_area, extent = _polygon(g)
        scale = math.sqrt(area / unit_area)
        reach = scale * extent + 1
        cx = _uniform(g, reach, w - reach, w / 2)
        cy = _uniform(g, reach, h - reach, h / 2)
        x0, x1 = max(0, int(cx - reach)), min(w, int(math.ceil(cx + reach)) + 1)
        y0, y1 = max(0, int(cy - reach)), min(h, int(math.ceil(cy + reach)) + 1)
        ys = torch.arange(y0, y1, dtype=torch.float64) + 0.5 - cy
        xs = torch.arange(x0, x1, dtype=torch.float64) + 0.5 - cx
        dy, dx = torch.meshgrid(ys, xs, indexing="ij")
        if i % 2 == 0:
            r = scale * _blob_radius(torch.atan2(dy, dx), harmonics)
            inside = dx * dx + dy * dy < r * r
        else:
            inside = _inside_polygon(dx / scale, dy / scale, ang, rad)
        out[i, y0:y1, x0:x1] = inside
    return out


def _uniform(g: torch.Generator, lo: float, hi: float, fallback: float) -> float:
    if hi <= lo:
        return fallback
    return lo + (hi - lo) * float(torch.rand(1, generator=g, dtype=torch.float64))


def scene_areas(n: int, area_range: Sequence[float], seed: int = 0) -> list:
    """``n`` areas log-uniform in ``area_range`` (the smallest and the largest included)."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = math.log(area_range[0]), math.log(area_range[1])
    u = torch.rand(n, generator=g, dtype=torch.float64)
    if n >= 2:
        u[0], u[1] = 0.0, 1.0
    return torch.exp(lo + (hi - lo) * u).tolist()


def scene(ctx: Ctx) -> torch.Tensor:
    """The case's instance masks ``bool [N, H, W]`` on the CPU."""
    return random_shapes(_pick(ctx, IMAGE), scene_areas(_pick(ctx, INSTANCES),
                                                        _pick(ctx, AREAS)))


def patch_probabilities(masks: torch.Tensor, boxes: torch.Tensor, instance_index: torch.Tensor,
                        seed: int = 5) -> torch.Tensor:
    """``float32 [P, bh, bw]`` at the box size: each patch's mask crop as 0/1, blended with
    uniform noise, ``0.6 * m + 0.4 * u``. The boxes of ``boundary_patches`` all have one
    size: ``PATCH_SIZE``, or the whole axis where the image is smaller."""
    p = boxes.size(0)
    if p == 0:
        return torch.zeros((0, PATCH_SIZE, PATCH_SIZE))
    bw = int(boxes[0, 2] - boxes[0, 0])
    bh = int(boxes[0, 3] - boxes[0, 1])
    ys = boxes[:, 1, None] + torch.arange(bh)  # [P, bh]
    xs = boxes[:, 0, None] + torch.arange(bw)  # [P, bw]
    crops = masks[instance_index[:, None, None], ys[:, :, None], xs[:, None, :]]
    g = torch.Generator().manual_seed(seed)
    return 0.6 * crops.float() + 0.4 * torch.rand(crops.shape, generator=g)


def _unpad_patches(out):
    n = int(out[3])
    return tuple(t[:n] for t in out[:3])


def _name(op: str, threshold: float) -> Callable[[Ctx], str]:
    def name(ctx: Ctx) -> str:
        h, w = _pick(ctx, IMAGE)
        what = f"p{PATCH_SIZE} iou{threshold}"
        if op == "reassemble_patches":
            what += f" probs {PATCH_SIZE}x{PATCH_SIZE}"
        return f"{h}x{w} {_pick(ctx, INSTANCES)} inst {what}"

    return name


def _extract_setup(threshold: float):
    def setup(ctx: Ctx) -> Dict[str, Any]:
        masks = scene(ctx).to(ctx.device)
        impls: Dict[str, Any] = {
            name: (lambda fn=fn: fn(masks, PATCH_SIZE, threshold))
            for name, fn in op_impls(ctx, "boundary_patches", torchvision=False).items()
        }
        if ctx.wants("segops-padded"):
            count = int(ctx.segops.boundary_patches(masks, PATCH_SIZE, threshold)[0].size(0))
            impls["segops-padded"] = Fn(
                call=lambda: ctx.segops.boundary_patches(masks, PATCH_SIZE, threshold,
                                                         max_out=count),
                output=_unpad_patches)
        return impls

    return setup


def _reassemble_case(threshold: float):
    """``(setup, floor)`` of a reassembly case: the floor reads the probabilities' size
    from the setup that made them (the output does not tell the patch count)."""
    probs_bytes: Dict[bool, int] = {}  # ctx.quick -> bytes of the latest setup's probs

    def floor(ctx: Ctx, out) -> int:
        return nbytes(_masks_bytes(ctx), out) + probs_bytes.get(ctx.quick, 0)

    def setup(ctx: Ctx) -> Dict[str, Any]:
        masks = scene(ctx)
        boxes, index, _ = ctx.segops.boundary_patches(masks, PATCH_SIZE, threshold)
        probs = patch_probabilities(masks, boxes, index).to(ctx.device, ctx.dtype)
        probs_bytes[ctx.quick] = nbytes(probs)
        print(f"  reassemble_patches {_name('reassemble_patches', threshold)(ctx)}: "
              f"{boxes.size(0)} patches", file=sys.stderr, flush=True)
        masks, boxes, index = masks.to(ctx.device), boxes.to(ctx.device), index.to(ctx.device)
        return {
            name: (lambda fn=fn: fn(masks, probs, boxes, index, 0.5))
            for name, fn in op_impls(ctx, "reassemble_patches", torchvision=False).items()
        }

    return setup, floor


CROP_SIZE = (256, 64)


def _crop_setup(threshold: float):
    def setup(ctx: Ctx) -> Dict[str, Any]:
        masks = scene(ctx)
        boxes, index, _ = ctx.segops.boundary_patches(masks, PATCH_SIZE, threshold)
        g = torch.Generator().manual_seed(6)
        images = torch.rand((1, 3) + tuple(masks.shape[1:]), generator=g)
        images = images.to(ctx.device, ctx.dtype)
        batch = torch.zeros(masks.size(0), dtype=torch.int64, device=ctx.device)
        masks, boxes, index = masks.to(ctx.device), boxes.to(ctx.device), index.to(ctx.device)
        size = _pick(ctx, CROP_SIZE)
        return {
            name: (lambda fn=fn: fn(images, masks, boxes, index, batch, size))
            for name, fn in op_impls(ctx, "crop_patches", torchvision=False).items()
        }

    return setup


def _crop_name(threshold: float) -> Callable[[Ctx], str]:
    def name(ctx: Ctx) -> str:
        s = _pick(ctx, CROP_SIZE)
        return f"{_name('crop_patches', threshold)(ctx)} to {s}x{s} C3"

    return name


def _masks_bytes(ctx: Ctx) -> tuple:
    return (_pick(ctx, INSTANCES),) + tuple(_pick(ctx, IMAGE)), torch.bool


def _extract_floor(ctx: Ctx, out) -> int:
    return nbytes(_masks_bytes(ctx), out)


def _crop_floor(ctx: Ctx, out) -> int:
    patches = out[0].size(0)
    return nbytes(((patches, PATCH_SIZE, PATCH_SIZE, 3), ctx.dtype),
                  ((patches, PATCH_SIZE, PATCH_SIZE), torch.bool), out)


def register_cases() -> None:
    for threshold in THRESHOLDS:
        register("boundary_patches", _name("boundary_patches", threshold),
                 _extract_setup(threshold), exact=True, floor=_extract_floor,
                 slow_reference=True, patch_size=PATCH_SIZE, iou_threshold=threshold)
    for threshold in THRESHOLDS:
        register("crop_patches", _crop_name(threshold), _crop_setup(threshold), exact=True,
                 floor=_crop_floor, slow_reference=True, patch_size=PATCH_SIZE,
                 iou_threshold=threshold)
    for threshold in THRESHOLDS:
        setup, floor = _reassemble_case(threshold)
        register("reassemble_patches", _name("reassemble_patches", threshold), setup,
                 exact=True, floor=floor,
                 slow_reference=True, patch_size=PATCH_SIZE, iou_threshold=threshold,
                 threshold=0.5)
