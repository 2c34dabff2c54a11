"""Shared helpers for the BPR patch tests (docs/ops/patches.md: boundary_patches, crop_patches,
reassemble_patches): instance mask generators (blobs made of ellipses, empty, one-pixel,
full-image, border-touching, noise; images smaller than a patch), the problem descriptions
and their hypothesis strategies, a literal transcription of BPR's released proposal code,
and the assertions. Imported by tests/ops/patches/ as ``helpers.patches`` (conftest puts tests/ on sys.path).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from hypothesis import note
from hypothesis import strategies as st

# the module (segops.reference re-exports the three ops)
ref = importlib.import_module("segops.reference.patches")

ALL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
PATCH_SIZES = (8, 16, 32, 64)
THRESHOLDS = (0.15, 0.25, 0.55)  # BPR's: COCO training, default, Cityscapes inference
INT_MASK_DTYPES = (torch.uint8, torch.int8, torch.int32, torch.int64)

# Bool outputs of reassemble_patches when a patch is resampled: the op (the contract's fixed
# bilinear arithmetic) and the reference (F.interpolate) may disagree only where the
# reference's mean lies within BAND of the threshold.
BAND = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}


# ======================================================================================
# Instance masks
# ======================================================================================

Ellipse = Tuple[float, float, float, float, float]  # cx, cy, a, b, theta (pixels, radians)


def ellipses_mask(H: int, W: int, ellipses: List[Ellipse]) -> torch.Tensor:
    """The union of filled ellipses, evaluated at the pixel centres (float64)."""
    ys = torch.arange(H, dtype=torch.float64)[:, None] + 0.5
    xs = torch.arange(W, dtype=torch.float64)[None, :] + 0.5
    m = torch.zeros(H, W, dtype=torch.bool)
    for cx, cy, a, b, th in ellipses:
        c, s = math.cos(th), math.sin(th)
        u = (xs - cx) * c + (ys - cy) * s
        v = -(xs - cx) * s + (ys - cy) * c
        m |= (u / a) ** 2 + (v / b) ** 2 <= 1
    return m


@dataclass
class Instance:
    """One instance mask, described so that hypothesis can shrink it.

    kind: "blob" (union of ``ellipses`` and the pixel of the first centre), "empty",
    "pixel" (the pixel ``at``), "full", "border" (a cross through ``at`` touching all four
    borders, plus ``ellipses``),
    "noise" (pixels on with probability ``density``, from ``seed``), "rect" (``rect``
    = x1, y1, x2, y2, clipped to the image)."""
    kind: str
    ellipses: List[Ellipse] = field(default_factory=list)
    at: Tuple[int, int] = (0, 0)  # (y, x)
    density: float = 0.0
    seed: int = 0
    rect: Tuple[int, int, int, int] = (0, 0, 0, 0)

    def render(self, H: int, W: int) -> torch.Tensor:
        m = torch.zeros(H, W, dtype=torch.bool)
        if H == 0 or W == 0:
            return m
        y, x = min(self.at[0], H - 1), min(self.at[1], W - 1)
        if self.kind in ("blob", "border"):
            m = ellipses_mask(H, W, self.ellipses)
        if self.kind == "blob" and self.ellipses:  # never empty: the first centre's pixel
            cx, cy = self.ellipses[0][:2]
            m[min(int(cy), H - 1), min(int(cx), W - 1)] = True
        if self.kind == "pixel":
            m[y, x] = True
        elif self.kind == "full":
            m[:] = True
        elif self.kind == "border":
            m[y, :] = True
            m[:, x] = True
        elif self.kind == "noise":
            g = torch.Generator().manual_seed(self.seed)
            m = torch.rand(H, W, generator=g) < self.density
        elif self.kind == "rect":
            x1, y1, x2, y2 = self.rect
            m[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = True
        return m


def render_masks(H: int, W: int, instances: List[Instance], dtype=torch.bool,
                 device="cpu") -> torch.Tensor:
    if not instances:
        return torch.zeros(0, H, W, dtype=dtype, device=device)
    m = torch.stack([inst.render(H, W) for inst in instances])
    return m.to(dtype).to(device)


def ellipse(H: int, W: int, near_border: bool = False):
    """An ellipse strategy: centre inside the image (or near a border/corner), radii from
    half a pixel to about the image size, any rotation."""
    if near_border:
        cx = st.sampled_from([0.0, float(W)]) | st.floats(0, W)
        cy = st.sampled_from([0.0, float(H)]) | st.floats(0, H)
    else:
        cx, cy = st.floats(0, W), st.floats(0, H)
    return st.tuples(cx, cy, st.floats(0.5, max(W, 1.0)), st.floats(0.5, max(H, 1.0)),
                     st.floats(0, math.pi))


KINDS = ("blob", "blob", "blob", "border", "pixel", "empty", "full", "noise", "rect")


@st.composite
def instances(draw, H: int, W: int, kind: Optional[str] = None):
    kind = kind or draw(st.sampled_from(KINDS))
    at = (draw(st.integers(0, max(H - 1, 0))), draw(st.integers(0, max(W - 1, 0))))
    if kind == "pixel":  # corners and borders often
        at = draw(st.sampled_from([at, (0, 0), (H - 1, W - 1), (0, W - 1), (H - 1, 0)]))
    ells = []
    if kind in ("blob", "border"):
        n = draw(st.integers(1, 4) if kind == "blob" else st.integers(0, 2))
        ells = [draw(ellipse(H, W, draw(st.booleans()))) for _ in range(n)]
    rect = (0, 0, 0, 0)
    if kind == "rect":
        x1, y1 = draw(st.integers(-2, W)), draw(st.integers(-2, H))
        rect = (x1, y1, x1 + draw(st.integers(1, W + 2)), y1 + draw(st.integers(1, H + 2)))
    return Instance(kind, ells, at, draw(st.sampled_from([0.02, 0.1, 0.5])),
                    draw(st.integers(0, 2**31 - 1)), rect)


# ======================================================================================
# Problems
# ======================================================================================


@dataclass
class MaskProblem:
    H: int
    W: int
    instances: List[Instance]
    patch_size: int
    iou_threshold: float

    @property
    def N(self) -> int:
        return len(self.instances)

    def masks(self, device="cpu", dtype=torch.bool) -> torch.Tensor:
        return render_masks(self.H, self.W, self.instances, dtype, device)

    def reference(self, max_out: Optional[int] = None):
        return ref.boundary_patches(self.masks(), self.patch_size, self.iou_threshold, max_out)


@st.composite
def mask_problems(draw, min_hw: int = 16, max_hw: int = 96, patch_sizes=PATCH_SIZES,
                  thresholds=THRESHOLDS, max_instances: int = 4, small: bool = True,
                  kinds: Optional[Tuple[str, ...]] = None):
    """Images of min_hw..max_hw pixels a side (and, with ``small``, sometimes 1..12: smaller
    than every patch on that axis); 1..max_instances instances, the first always a blob
    (so that the problem has boundary pixels) unless ``kinds`` says otherwise."""
    side = st.integers(min_hw, max_hw)
    if small:
        side = st.one_of(side, side, side, st.integers(1, 12))
    H, W = draw(side), draw(side)
    if kinds is None:
        first = [draw(instances(H, W, "blob"))]
        rest = draw(st.lists(instances(H, W), max_size=max_instances - 1))
        insts = draw(st.permutations(first + rest))
    else:
        insts = [draw(instances(H, W, k)) for k in kinds]
    p = MaskProblem(H, W, list(insts), draw(st.sampled_from(patch_sizes)),
                    draw(st.sampled_from(thresholds)))
    note(repr(p))
    return p


def _extra_box(draw, H: int, W: int, p: int, kind: str) -> Tuple[int, int, int, int]:
    """Boxes not from boundary_patches: anywhere (partly outside), wholly outside, larger
    than the image, empty or inverted."""
    x1, y1 = draw(st.integers(-p, W + p)), draw(st.integers(-p, H + p))
    if kind == "any":
        return x1, y1, x1 + draw(st.integers(1, 2 * p)), y1 + draw(st.integers(1, 2 * p))
    if kind == "outside":
        return W + 1, y1, W + 1 + p, y1 + p
    if kind == "large":
        return -draw(st.integers(0, 5)), -draw(st.integers(0, 5)), W + 3, H + 4
    # "empty": zero width or height, or inverted
    x2 = x1 - draw(st.integers(0, 3))
    y2 = y1 + draw(st.integers(-3, p))
    return x1, y1, x2, y2


@dataclass
class PatchSet:
    """Boxes with the instance of each: boundary_patches' (at most ``limit``) and extras."""
    boxes: torch.Tensor  # int64 [P, 4]
    instance_index: torch.Tensor  # int64 [P]
    from_boundary: int  # the first rows are boundary_patches' boxes


@st.composite
def patch_sets(draw, mp: MaskProblem, limit: int = 24, extras: bool = True,
               extra_kinds=("any", "any", "outside", "large", "empty")) -> PatchSet:
    boxes, index, _ = mp.reference()
    boxes, index = boxes[:limit], index[:limit]
    nb = boxes.size(0)
    extra = []
    if extras and mp.N:
        for kind in draw(st.lists(st.sampled_from(extra_kinds), max_size=4)):
            extra.append((draw(st.integers(0, mp.N - 1)),
                          _extra_box(draw, mp.H, mp.W, mp.patch_size, kind)))
    if extra:
        boxes = torch.cat([boxes, torch.tensor([b for _, b in extra], dtype=torch.int64)])
        index = torch.cat([index, torch.tensor([i for i, _ in extra], dtype=torch.int64)])
    perm = draw(st.permutations(range(boxes.size(0))))  # patches of instances interleaved
    perm = torch.tensor(perm, dtype=torch.int64).reshape(-1)
    return PatchSet(boxes[perm], index[perm], nb)


@dataclass
class CropProblem:
    mp: MaskProblem
    ps: PatchSet
    B: int
    C: int
    batch_index: List[int]
    dtype: torch.dtype
    output_size: Tuple[int, int]
    seed: int

    def images(self, device="cpu") -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        t = torch.randn(self.B, self.C, self.mp.H, self.mp.W, generator=g, dtype=torch.float64)
        return t.to(self.dtype).to(device)

    def args(self, device="cpu"):
        return (self.images(device), self.mp.masks(device), self.ps.boxes.to(device),
                self.ps.instance_index.to(device),
                torch.tensor(self.batch_index, dtype=torch.int64).reshape(-1).to(device))

    def reference(self):
        return ref.crop_patches(*self.args(), self.output_size)


@st.composite
def crop_problems(draw, dtypes=ALL_DTYPES, max_hw: int = 64, sizes=(4, 8, 16, 32)):
    mp = draw(mask_problems(max_hw=max_hw))
    ps = draw(patch_sets(mp))
    B = draw(st.integers(1, 3))
    s = draw(st.sampled_from(sizes))
    out = draw(st.sampled_from([(s, s), (s, 2 * s), (mp.patch_size, mp.patch_size),
                                (draw(st.integers(1, 20)), draw(st.integers(1, 20)))]))
    p = CropProblem(mp, ps, B, draw(st.integers(1, 3)),
                    [draw(st.integers(0, B - 1)) for _ in range(mp.N)],
                    draw(st.sampled_from(dtypes)), out, draw(st.integers(0, 2**31 - 1)))
    note(repr(p))
    return p


@dataclass
class ReassembleProblem:
    mp: MaskProblem
    ps: PatchSet
    dtype: torch.dtype
    hw: Tuple[int, int]  # patch_probs' size
    values: str  # "grid" (multiples of 1/8: sums exact, means on the threshold) or "uniform"
    threshold: float
    seed: int

    def probs(self, device="cpu") -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        P = self.ps.boxes.size(0)
        t = torch.rand(P, *self.hw, generator=g, dtype=torch.float64)
        if self.values == "grid":
            t = torch.floor(t * 9) / 8  # 0, 1/8, ..., 1
        return t.to(self.dtype).to(device)

    def args(self, device="cpu"):
        return (self.mp.masks(device), self.probs(device), self.ps.boxes.to(device),
                self.ps.instance_index.to(device))

    def reference_means(self):
        masks, probs, boxes, index = self.args()
        return ref.patch_means(masks, probs, boxes, index)

    def reference(self):
        return ref.reassemble_patches(*self.args(), self.threshold)


@st.composite
def reassemble_problems(draw, dtypes=ALL_DTYPES, resample: Optional[bool] = None,
                        max_hw: int = 96, thresholds=(0.5, 0.5, 0.25, 0.7, 0.375)):
    """``resample=False``: only boundary_patches' boxes, all of one size, with probs of that
    size (the exact path); True: probs of another size (the band path); None: either."""
    mp = draw(mask_problems(max_hw=max_hw))
    if resample is None:
        resample = draw(st.booleans())
    ps = draw(patch_sets(mp, extras=resample))
    box_hw = (min(mp.patch_size, mp.H), min(mp.patch_size, mp.W))
    if resample:
        hw = draw(st.sampled_from([(2 * box_hw[0] + 1, 2 * box_hw[1] + 1),
                                   (draw(st.integers(2, 40)), draw(st.integers(2, 40)))]))
        if hw == box_hw:
            hw = (hw[0] + 1, hw[1])
    else:
        hw = box_hw
    # grid values put exact means on the threshold: only where the comparison is exact (a
    # resampled grid could put every covered mean in the band)
    values = "uniform" if resample else draw(st.sampled_from(["grid", "uniform"]))
    p = ReassembleProblem(mp, ps, draw(st.sampled_from(dtypes)), hw, values,
                          draw(st.sampled_from(thresholds)), draw(st.integers(0, 2**31 - 1)))
    note(repr(p))
    return p


# ======================================================================================
# BPR's released proposal code, transcribed literally (the oracle of the reference)
# ======================================================================================


def bpr_find_float_boundary(maskdt: torch.Tensor, width: int = 3) -> torch.Tensor:
    """``find_float_boundary`` of BPR's tools/inference.py: maskdt ``[N, H, W]`` float."""
    N, H, W = maskdt.shape
    maskdt = maskdt.view(N, 1, H, W)
    boundary_finder = maskdt.new_ones((1, 1, width, width))
    boundary_mask = F.conv2d(maskdt, boundary_finder, stride=1, padding=width // 2)
    bml = torch.abs(boundary_mask - width * width)
    bms = torch.abs(boundary_mask)
    fbmask = torch.min(bml, bms) / (width * width / 2)
    return fbmask.view(N, H, W)


def mmcv_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """mmcv <= 1.2's CPU ``nms`` (offset 0): float32 IoU, suppression at ``IoU >= thr``
    with the threshold as a C ``float``. The sort is made stable here (mmcv's is not)."""
    thr = torch.tensor(iou_threshold, dtype=torch.float32)
    order = torch.sort(scores, descending=True, stable=True).indices
    x1, y1, x2, y2 = boxes.to(torch.float32).unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    suppressed = torch.zeros(boxes.size(0), dtype=torch.bool)
    keep = []
    for _i in range(order.numel()):
        i = int(order[_i])
        if suppressed[i]:
            continue
        keep.append(i)
        j = order[_i + 1:]
        w = (torch.minimum(x2[i], x2[j]) - torch.maximum(x1[i], x1[j])).clamp_min(0)
        h = (torch.minimum(y2[i], y2[j]) - torch.maximum(y1[i], y1[j])).clamp_min(0)
        inter = w * h
        ovr = inter / (areas[i] + areas[j] - inter)
        suppressed[j[ovr >= thr]] = True
    return torch.tensor(keep, dtype=torch.int64)


def bpr_get_dets(fbmask: torch.Tensor, patch_size: int, iou_thresh: float) -> torch.Tensor:
    """``get_dets`` of BPR's tools/inference.py before ``_force_move_back``: the kept
    ``(x1, y1, x2, y2, score)`` float32 rows, in NMS order."""
    ys, xs = torch.nonzero(fbmask, as_tuple=True)
    scores = fbmask[ys, xs]
    ys = ys.float()
    xs = xs.float()
    dets = torch.stack([xs - patch_size // 2, ys - patch_size // 2,
                        xs + patch_size // 2, ys + patch_size // 2, scores]).T
    inds = mmcv_nms(dets[:, :4].contiguous(), dets[:, 4].contiguous(), iou_thresh)
    return dets[inds]


def bpr_force_move_back(sdets: torch.Tensor, H: int, W: int, patch_size: int) -> torch.Tensor:
    """``_force_move_back`` of BPR (on a copy)."""
    sdets = sdets.clone()
    s = sdets[:, 0] < 0
    sdets[s, 0] = 0
    sdets[s, 2] = patch_size
    s = sdets[:, 1] < 0
    sdets[s, 1] = 0
    sdets[s, 3] = patch_size
    s = sdets[:, 2] >= W
    sdets[s, 0] = W - 1 - patch_size
    sdets[s, 2] = W - 1
    s = sdets[:, 3] >= H
    sdets[s, 1] = H - 1 - patch_size
    sdets[s, 3] = H - 1
    return sdets


def bpr_merge(maskdts: torch.Tensor, detss: List[torch.Tensor], maskss: torch.Tensor):
    """``merge`` of BPR's tools/inference.py without its resize (maskss already at the patch
    size): per instance, float32 accumulate-and-divide over the image in patch order."""
    out = []
    K, H, W = maskdts.shape
    maskdts = maskdts.bool().clone()
    dt_refined = torch.zeros_like(maskdts[0], dtype=torch.float32)
    dt_count = torch.zeros_like(maskdts[0], dtype=torch.float32)
    p = 0
    for k in range(K):
        dets = detss[k][:, :4].int()
        maskdt = maskdts[k]
        q = p + dets.size(0)
        masks = maskss[p:q]
        p = q
        dt_refined.zero_()
        dt_count.zero_()
        for i in range(dets.size(0)):
            x1, y1, x2, y2 = dets[i]
            dt_refined[y1:y2, x1:x2] += masks[i]
            dt_count[y1:y2, x1:x2] += 1
        s = dt_count > 0
        dt_refined[s] /= dt_count[s]
        maskdt[s] = dt_refined[s] > 0.5
        out.append(maskdt)
    return out


# ======================================================================================
# Assertions
# ======================================================================================


def assert_patches_equal(got, expected) -> None:
    """boundary_patches outputs (3 or 4 tensors) equal, dtypes and values, bit for bit."""
    assert len(got) == len(expected)
    names = ("boxes", "instance_index", "scores", "count")
    for name, g, e in zip(names, got, expected):
        assert g.dtype == e.dtype, f"{name}: dtype {g.dtype} != {e.dtype}"
        assert g.shape == e.shape, f"{name}: shape {tuple(g.shape)} != {tuple(e.shape)}"
        g = g.cpu()
        if not torch.equal(g, e):
            bad = (g != e).reshape(g.shape[0], -1).any(1).nonzero().flatten() if g.dim() else []
            i = int(bad[0]) if len(bad) else 0
            raise AssertionError(f"{name} differ first at row {i}: got {g[i].tolist()}, "
                                 f"expected {e[i].tolist()}\n got {g.tolist()}\n"
                                 f" expected {e.tolist()}")


def assert_bits_equal(got: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Equal bit for bit (NaN == NaN, -0.0 != 0.0), same dtype and shape."""
    got = got.cpu()
    assert got.dtype == expected.dtype and got.shape == expected.shape, \
        f"{what}: {got.dtype} {tuple(got.shape)} vs {expected.dtype} {tuple(expected.shape)}"
    if got.is_floating_point():
        view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[got.element_size()]
        g, e = got.view(view), expected.view(view)
    else:
        g, e = got, expected
    if not torch.equal(g, e):
        bad = (g != e).nonzero()[0].tolist()
        raise AssertionError(f"{what}: {int((g != e).sum())} elements differ, first at {bad}: "
                             f"got {got[tuple(bad)].item()!r}, "
                             f"expected {expected[tuple(bad)].item()!r}")


def check_reassembly_band(out: torch.Tensor, means: torch.Tensor, covered: torch.Tensor,
                          masks: torch.Tensor, threshold: float, dtype: torch.dtype) -> int:
    """``out`` equals the reference (``mean > threshold`` in the accumulation dtype where
    covered, the coarse mask elsewhere) except at covered pixels whose reference mean lies
    within BAND of the threshold. Non-vacuous: some covered pixel lies outside the band.
    Returns the number of disagreements."""
    out = out.cpu()
    thr = torch.tensor(threshold, dtype=means.dtype)
    expected = torch.where(covered, means > thr, masks)
    band = covered & ((means.double() - thr.double()).abs() <= BAND[dtype])
    bad = (out != expected) & ~band
    if bad.any():
        i = tuple(bad.nonzero()[0].tolist())
        raise AssertionError(
            f"{int(bad.sum())} pixels differ outside the band, first at {i}: got "
            f"{bool(out[i])}, reference mean {float(means[i])!r} (covered {bool(covered[i])}),"
            f" threshold {float(thr)!r}")
    assert (covered & ~band).any(), "vacuous: no covered pixel outside the band"
    return int((out != expected).sum())
