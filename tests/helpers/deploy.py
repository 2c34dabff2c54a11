"""Shared cases for the deployment tests (tests/deploy/: torch.export, AOTInductor, ONNX).

A `Case` is one public op in one form (exact-size or padded, fused or not, ...) as a
function of tensors only, with two sets of example inputs of different sizes (`inputs(0)`
to export with, `inputs(1)` to check that the dynamic dimensions really are dynamic) and
the `torch.export` dynamic shapes those sizes need. Every input is deterministic and chosen
so that the op's output is not trivial (boxes that overlap, masks that cover, instances
that cluster). Imported as ``helpers.deploy``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.export import Dim

import segops
from helpers.cluster import make_scene
from helpers.patches import ellipses_mask


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _dims(*names: str, min: int = 2) -> list[Dim]:
    """Dims named `names`, >= `min` (export specialises sizes 0 and 1)."""
    return [Dim(n, min=min) for n in names]


def rand_boxes(n: int, seed: int, extent: float = 60.0, size: float = 25.0,
               clusters: int = 0) -> torch.Tensor:
    """`n` boxes (x1, y1, x2, y2): random corners in `[0, extent)` with sides up to `size`,
    around `clusters` centres when > 0 (so that many overlap)."""
    g = _gen(seed)
    if clusters:
        centres = torch.rand(clusters, 2, generator=g) * extent
        xy = centres[torch.randint(0, clusters, (n,), generator=g)] + torch.randn(
            n, 2, generator=g) * 3
    else:
        xy = torch.rand(n, 2, generator=g) * extent
    wh = 4 + torch.rand(n, 2, generator=g) * size
    return torch.cat([xy, xy + wh], 1)


def rois(k: int, batch: int, seed: int, extent: float) -> torch.Tensor:
    """`k` RoIs (batch_index, x1, y1, x2, y2) in input-image pixels, some past the border,
    a few tiny."""
    g = _gen(seed)
    xy = torch.rand(k, 2, generator=g) * extent * 1.1 - 0.1 * extent
    wh = torch.rand(k, 2, generator=g) * extent * 0.6
    wh[::4] *= 0.05  # small boxes (adaptive sampling_ratio: one sample per bin)
    idx = torch.randint(0, batch, (k, 1), generator=g).float()
    return torch.cat([idx, xy, xy + wh], 1)


def instance_masks(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """`n` bool masks `[n, h, w]`, each one or two random ellipses (one mask empty when n > 3)."""
    g = _gen(seed)
    out = []
    for i in range(n):
        parts = []
        for _ in range(1 + i % 2):
            cx, cy = (torch.rand(2, generator=g) * torch.tensor([w, h])).tolist()
            a, b = (2 + torch.rand(2, generator=g) * torch.tensor([w / 3, h / 3])).tolist()
            parts.append((cx, cy, a, b, float(torch.rand((), generator=g)) * 3))
        out.append(ellipses_mask(h, w, parts) if not (n > 3 and i == 2) else
                   torch.zeros(h, w, dtype=torch.bool))
    return torch.stack(out)


@dataclass
class Case:
    """One op in one form. `fn(*tensors)` calls the public op; `make(v)` gives the inputs
    (v = 0: the export example, v = 1: other sizes); `dynamic`: the dynamic shapes of
    `fn`'s inputs (None: static); `onnx`: whether segops.onnx translates it."""

    name: str
    fn: Callable
    make: Callable[[int], tuple]
    dynamic: Callable[[], tuple] | None = None
    onnx: bool = True
    tags: set = field(default_factory=set)

    def inputs(self, v: int = 0) -> tuple:
        return self.make(v)


# ---- roi ----------------------------------------------------------------------------


def _roi_inputs(v: int):
    n, c, h, w, k = ((2, 3, 20, 30, 12), (3, 4, 26, 17, 19))[v]
    x = torch.randn(n, c, h, w, generator=_gen(10 + v))
    return x, rois(k, n, 20 + v, extent=2.0 * max(h, w))


def _roi_dynamic():
    n, c, h, w, k = _dims("N", "C", "H", "W", "K")
    return {0: n, 1: c, 2: h, 3: w}, {0: k}


def _pyramid_inputs(v: int):
    n, c, size, k = ((2, 3, 64, 14), (1, 2, 48, 9))[v]
    feats = [torch.randn(n, c, size // 2**i, size // 2**i, generator=_gen(30 + v + i))
             for i in range(3)]
    r = rois(k, n, 40 + v, extent=4.0 * size)
    r[:, 3:] = r[:, 1:3] + (r[:, 3:] - r[:, 1:3]) * 3  # large boxes too: upper levels
    return feats, r


def _pyramid_dynamic():
    n, c, k = _dims("N", "C", "K")
    levels = [{0: n, 1: c, 2: Dim(f"H{i}", min=2), 3: Dim(f"W{i}", min=2)} for i in range(3)]
    return levels, {0: k}


SCALES = [1 / 4, 1 / 8, 1 / 16]

# ---- nms ------------------------------------------------------------------------------


def _nms_inputs(v: int):
    n = (40, 57)[v]
    boxes = rand_boxes(n, 50 + v, clusters=6)
    scores = torch.rand(n, generator=_gen(60 + v))
    scores[5] = scores[6]  # a tie
    idxs = torch.randint(0, 3, (n,), generator=_gen(70 + v))
    return boxes, scores, idxs


def _fast_inputs(v: int):
    n, c = ((60, 3), (45, 4))[v]
    boxes = rand_boxes(n, 80 + v, clusters=5)
    scores = torch.rand(c, n, generator=_gen(90 + v)) ** 2
    return boxes, scores


def _matrix_inputs(v: int):
    n, h, w = ((7, 12, 16), (9, 10, 13))[v]
    masks = instance_masks(n, h, w, 100 + v)
    masks[3] = masks[1]  # a duplicate (IoU 1)
    labels = torch.randint(0, 2, (n,), generator=_gen(110 + v))
    scores = torch.rand(n, generator=_gen(120 + v))
    return masks, labels, scores


# ---- masks ------------------------------------------------------------------------------


def _assemble_inputs(v: int):
    h, w, k, n = ((20, 24, 8, 5), (17, 13, 6, 7))[v]
    protos = torch.randn(h, w, k, generator=_gen(130 + v))
    coeffs = torch.randn(n, k, generator=_gen(140 + v))
    a = torch.rand(n, 2, generator=_gen(150 + v)) * 0.7
    boxes = torch.cat([a, a + 0.05 + torch.rand(n, 2, generator=_gen(160 + v)) * 0.5], 1)
    boxes[0] = boxes[0, [2, 3, 0, 1]]  # reversed corners
    return protos, coeffs, boxes


def _assemble_dynamic():
    h, w, k, n = _dims("H", "W", "k", "N")
    return {0: h, 1: w, 2: k}, {0: n, 1: k}, {0: n}


def _paste_inputs(v: int):
    n, m = ((6, 7), (4, 9))[v]
    probs = torch.rand(n, m, m, generator=_gen(170 + v))
    boxes = rand_boxes(n, 180 + v, extent=40.0, size=20.0)
    boxes[1, 0] -= 8.0  # past the left border
    boxes[2, 2] = boxes[2, 0]  # zero width: pastes nothing
    return probs, boxes


def _paste_dynamic():
    n, m = _dims("N", "M")
    return {0: n, 1: m, 2: m}, {0: n}


# ---- cluster and patches ----------------------------------------------------------------


def _cluster_inputs(v: int):
    h, w = ((32, 48), (40, 36))[v]
    return (make_scene(200 + v, h, w, 3).prediction.float(),)


def _cluster_dynamic():
    # the coordinate map is the grid's (1024 x 2048) cropped: sizes up to the grid
    return ({1: Dim("H", min=2, max=1024), 2: Dim("W", min=2, max=2048)},)


def _patch_mask_tensor(v: int):
    n, h, w = ((3, 24, 32), (4, 30, 20))[v]
    return instance_masks(n, h, w, 210 + v)


def _patch_masks(v: int):
    return (_patch_mask_tensor(v),)


def _crop_inputs(v: int):
    masks = _patch_mask_tensor(v)
    n, h, w = masks.shape
    images = torch.randn(2, 3, h, w, generator=_gen(220 + v))
    boxes, index, _ = segops.boundary_patches(masks, 8, 0.25)
    batch = torch.arange(n) % 2
    return images, masks, boxes, index, batch


def _reassemble_inputs(v: int):
    masks = _patch_mask_tensor(v)
    boxes, index, _ = segops.boundary_patches(masks, 8, 0.25)
    probs = torch.rand(boxes.shape[0], 6, 6, generator=_gen(230 + v))
    return masks, probs, boxes, index


def _n(name):
    return Dim(name, min=2)


CASES = [
    Case("roi_align", lambda x, r: segops.roi_align(x, r, (5, 4), 0.5, -1, False),
         _roi_inputs, _roi_dynamic),
    Case("roi_align_aligned", lambda x, r: segops.roi_align(x, r, 3, 0.25, 2, True),
         _roi_inputs, _roi_dynamic),
    Case("roi_pool", lambda x, r: segops.roi_pool(x, r, (4, 3), 0.5), _roi_inputs,
         _roi_dynamic),
    Case("multilevel_roi_align",
         lambda f, r: segops.multilevel_roi_align(f, r, 4, SCALES, 2, canonical_scale=32,
                                                  canonical_level=3),
         _pyramid_inputs, _pyramid_dynamic),
    Case("multilevel_roi_align_all",
         lambda f, r: segops.multilevel_roi_align(f, r, 3, SCALES, -1, True, mode="all"),
         _pyramid_inputs, _pyramid_dynamic),
    Case("nms", lambda b, s: segops.nms(b, s, 0.5), lambda v: _nms_inputs(v)[:2],
         lambda: ({0: _n("N")}, {0: _n("N")}), tags={"exact"}),
    Case("nms_padded", lambda b, s: segops.nms(b, s, 0.3, max_out=16),
         lambda v: _nms_inputs(v)[:2], lambda: ({0: _n("N")}, {0: _n("N")})),
    Case("batched_nms", lambda b, s, i: segops.batched_nms(b, s, i, 0.4), _nms_inputs,
         lambda: ({0: _n("N")}, {0: _n("N")}, {0: _n("N")}), tags={"exact"}),
    Case("batched_nms_padded", lambda b, s, i: segops.batched_nms(b, s, i, 0.5, max_out=20),
         _nms_inputs, lambda: ({0: _n("N")}, {0: _n("N")}, {0: _n("N")})),
    Case("fast_nms", lambda b, s: segops.fast_nms(b, s, 0.5, 10, 0.05, 12), _fast_inputs,
         lambda: ({0: _n("N")}, {0: _n("C"), 1: _n("N")}), tags={"exact"}),
    Case("fast_nms_padded",
         lambda b, s: segops.fast_nms(b, s, 0.5, 10, 0.05, 12, padded=True), _fast_inputs,
         lambda: ({0: _n("N")}, {0: _n("C"), 1: _n("N")})),
    Case("fast_nms_cross_class",
         lambda b, s: segops.fast_nms(b, s, 0.4, 15, 0.1, cross_class=True), _fast_inputs,
         lambda: ({0: _n("N")}, {0: _n("C"), 1: _n("N")}), tags={"exact"}),
    Case("matrix_nms", lambda m, lab, s: segops.matrix_nms(m, lab, s), _matrix_inputs,
         lambda: ({0: _n("N"), 1: _n("H"), 2: _n("W")}, {0: _n("N")}, {0: _n("N")})),
    Case("matrix_nms_linear", lambda m, lab, s: segops.matrix_nms(m, lab, s, "linear"),
         _matrix_inputs,
         lambda: ({0: _n("N"), 1: _n("H"), 2: _n("W")}, {0: _n("N")}, {0: _n("N")})),
    Case("assemble_masks", lambda p, c, b: segops.assemble_masks(p, c, b), _assemble_inputs,
         _assemble_dynamic),
    Case("assemble_masks_fused",
         lambda p, c, b: segops.assemble_masks(p, c, b, image_size=(45, 38)),
         _assemble_inputs, _assemble_dynamic),
    Case("paste_masks", lambda m, b: segops.paste_masks(m, b, (36, 44)), _paste_inputs,
         _paste_dynamic),
    Case("paste_masks_values", lambda m, b: segops.paste_masks(m, b, (36, 44), None),
         _paste_inputs, _paste_dynamic),
    Case("paste_masks_torchvision",
         lambda m, b: segops.paste_masks(m, b, (36, 44), mode="torchvision"),
         _paste_inputs, _paste_dynamic, onnx=False),
    Case("cluster_seeds",
         lambda p: segops.cluster_seeds(p, threshold=0.5, min_pixels=10), _cluster_inputs,
         _cluster_dynamic, onnx=False, tags={"exact"}),
    Case("cluster_seeds_padded",
         lambda p: segops.cluster_seeds(p, threshold=0.5, min_pixels=10, max_instances=4),
         _cluster_inputs, _cluster_dynamic, onnx=False),
    Case("boundary_patches", lambda m: segops.boundary_patches(m, 8, 0.25), _patch_masks,
         lambda: ({0: _n("N"), 1: _n("H"), 2: _n("W")},), onnx=False, tags={"exact"}),
    Case("boundary_patches_padded", lambda m: segops.boundary_patches(m, 8, 0.25, max_out=64),
         _patch_masks, lambda: ({0: _n("N"), 1: _n("H"), 2: _n("W")},), onnx=False),
    Case("crop_patches", lambda i, m, b, x, bi: segops.crop_patches(i, m, b, x, bi, 12),
         _crop_inputs,
         lambda: ({2: _n("H"), 3: _n("W")}, {0: _n("N"), 1: _n("H"), 2: _n("W")},
                  {0: _n("P")}, {0: _n("P")}, {0: _n("N")}), onnx=False),
    Case("reassemble_patches", lambda m, p, b, x: segops.reassemble_patches(m, p, b, x),
         _reassemble_inputs,
         lambda: ({0: _n("N"), 1: _n("H"), 2: _n("W")}, {0: _n("P")}, {0: _n("P")},
                  {0: _n("P")}), onnx=False),
]

BY_NAME = {c.name: c for c in CASES}


class Wrap(torch.nn.Module):
    """A module whose forward is `fn` (what torch.export and torch.onnx.export take)."""

    def __init__(self, fn: Callable) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def assert_same(actual, expected) -> None:
    """Outputs (a tensor or a tuple of them) equal bit for bit, NaNs included."""
    if isinstance(expected, torch.Tensor):
        actual, expected = (actual,), (expected,)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0, equal_nan=True)
