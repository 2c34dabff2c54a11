"""Shared helpers for the clustering tests (docs/ops/cluster.md: cluster_seeds): a synthetic
SpatialEmbeddings scene generator, hypothesis strategies over it, hand-built cases with
hand-derived expectations, and assertions. Imported by tests/ops/cluster/ as
``helpers.cluster`` (conftest puts tests/ on sys.path).

A synthetic scene is what a trained SpatialEmbeddings network predicts: ``n`` elliptical
instances whose pixels' offsets point at the instance's centre in embedding space
(``offset = atanh(clamp(centre - xy, -0.99, 0.99)) + noise``), a sigma that sets a
bandwidth of a few pixels (constant over the image, or varying per instance and pixel), seed
logits high inside the instances (peaked at the centre) and low outside, and optionally
false-positive "speckles": small blobs with a high seed whose offsets point elsewhere.

With ``noise="low"`` every decision has a wide margin (pixels of an instance embed within a
fraction of a bandwidth of their centre, other instances several bandwidths away; seed peaks
are spaced well apart and away from the thresholds), so any faithful implementation (torch's
own exp/tanh/sigmoid included) finds exactly the ground-truth instances. ``noise="high"``
scatters the embeddings over about half a bandwidth: proposals then overlap, leave pixels behind
and cut through instances, which is what the exact kernel-vs-reference tests want.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from hypothesis import note
from hypothesis import strategies as st

# the module (segops.reference re-exports cluster_seeds)
ref = importlib.import_module("segops.reference.cluster")

ALL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
HALF_DTYPES = (torch.float16, torch.bfloat16)
DEFAULT_GRID = (1024, 2048)
DEFAULT_EXTENT = (1.0, 2.0)

# seed logits of instance peaks and speckles: spaced 0.4 apart (sigmoid differs by >= 1e-4
# between neighbours, far above any rounding) and away from logit(0.9) = 2.197 and
# logit(0.5) = 0.
PEAK_LOGITS = tuple(round(2.6 + 0.4 * k, 1) for k in range(15))  # 2.6 .. 8.2
LOW_PEAK_LOGITS = (0.8, 1.2, 1.6)  # below the 0.9 threshold, above 0.5
BACKGROUND_LOGIT = -4.0


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def coordinates(n: int, grid_n: int, extent: float) -> np.ndarray:
    """The coordinate axis in float64 (the scene's targets; exactness is not needed)."""
    step = extent / (grid_n - 1)
    return np.arange(n, dtype=np.float64) * step


def _ellipse(H: int, W: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


@dataclass
class Scene:
    prediction: torch.Tensor  # float64 [3 + n_sigma, H, W]
    n_sigma: int
    grid: Tuple[int, int]
    extent: Tuple[float, float]
    instances: List[np.ndarray]  # bool [H, W] ground-truth masks
    peaks: List[float]  # seed logit of each instance's (unique) peak pixel
    peak_pixels: List[int]  # raster index of each instance's peak pixel
    speckles: List[np.ndarray] = field(default_factory=list)  # bool [H, W] masks
    speckle_peaks: List[float] = field(default_factory=list)  # one logit per speckle
    description: str = ""

    @property
    def shape(self) -> Tuple[int, int]:
        return tuple(self.prediction.shape[1:])

    def kwargs(self, **extra) -> dict:
        return dict(n_sigma=self.n_sigma, grid=self.grid, extent=self.extent, **extra)

    def expected_low_noise(self, threshold: float, min_pixels: int) -> np.ndarray:
        """The instance map any faithful clustering (seed_threshold 0.5) gives on a
        low-noise scene whose speckles point at empty spots (``speckle_target="far"``):
        every instance and speckle is proposed whole and alone, highest peak first (ties:
        raster order), until at most ``min_pixels`` pixels are left or a peak is below
        ``threshold``; a proposal of ``n`` pixels is accepted iff ``n > min_pixels`` and
        ``(n - 1) / n > 0.5`` (its seed pixel is already clustered)."""
        H, W = self.shape
        out = np.zeros((H, W), np.int32)
        items = [(p, i, m) for p, i, m in zip(self.peaks, self.peak_pixels, self.instances)]
        items += [(p, int(np.flatnonzero(m)[0]), m)
                  for p, m in zip(self.speckle_peaks, self.speckles)]
        items.sort(key=lambda t: (-t[0], t[1]))
        left = sum(int(m.sum()) for _, _, m in items)
        if left <= min_pixels:
            return out
        next_id = 1
        for peak, _, m in items:
            if left <= min_pixels or 1.0 / (1.0 + math.exp(-peak)) < threshold:
                break
            n = int(m.sum())
            if n > min_pixels and np.float32(n - 1) / np.float32(n) > 0.5:
                out[m] = next_id
                next_id += 1
            left -= n
        return out


def make_scene(seed: int, H: int = 64, W: int = 96, n_instances: int = 4, n_sigma: int = 1,
               sigma_mode: str = "constant", speckles: int = 0, noise: str = "low",
               grid: Sequence[int] = DEFAULT_GRID, extent: Sequence[float] = DEFAULT_EXTENT,
               radius: Tuple[float, float] = (4.0, 9.0), low_peaks: int = 0,
               speckle_target: str = "far") -> Scene:
    """A synthetic SpatialEmbeddings prediction (see the module docstring), float64.

    Args:
        seed: numpy seed (the scene is a pure function of the arguments).
        n_instances: how many elliptical instances (radii drawn from ``radius`` pixels) to
            try to place: non-overlapping, centres ``12 + 2 * radius[1]`` pixels apart
            (fewer if they do not fit).
        sigma_mode: "constant" (a bandwidth of 3 pixels everywhere) or "varying" (2.4 to
            3.75 pixels per instance, per axis when ``n_sigma == 2``, plus per-pixel noise).
        speckles: number of false-positive blobs (1x1 to 3x3 pixels, high seed) whose
            offsets point at an empty spot of embedding space (``speckle_target="far"``)
            or, half of the time, near an instance's centre (``"any"``).
        noise: "none", "low" (wide margins) or "high" (embeddings scattered over about half
            a bandwidth) Gaussian noise on the offset logits.
        low_peaks: how many instances (at most all but one) get a peak logit in
            LOW_PEAK_LOGITS (seed < 0.9).
    """
    rng = np.random.default_rng(seed)
    grid_y, grid_x = int(grid[0]), int(grid[1])
    ext_y, ext_x = float(extent[0]), float(extent[1])
    step_x, step_y = ext_x / (grid_x - 1), ext_y / (grid_y - 1)
    xs, ys = coordinates(W, grid_x, ext_x), coordinates(H, grid_y, ext_y)
    step = min(step_x, step_y)
    band_px = 3.0  # where exp(-d) = 0.5, in pixels of embedding space (of size `step`)
    sep_px = 12.0 + 2 * radius[1]

    def sigma_for(band: float) -> float:
        return math.log(math.log(2) / (band * step) ** 2) / 10

    # instances: non-overlapping ellipses, centres >= sep_px apart
    centres: List[Tuple[int, int]] = []
    masks: List[np.ndarray] = []
    taken = np.zeros((H, W), bool)
    for _ in range(n_instances):
        for _attempt in range(40):
            ry, rx = rng.uniform(*radius), rng.uniform(*radius)
            cy, cx = int(rng.integers(0, H)), int(rng.integers(0, W))
            if any((cy - y) ** 2 + (cx - x) ** 2 < sep_px ** 2 for y, x in centres):
                continue
            m = _ellipse(H, W, cy, cx, ry, rx)
            if (m & taken).any() or m.sum() < 3:
                continue
            centres.append((cy, cx))
            masks.append(m)
            taken |= m
            break
    k = len(masks)
    peak_pool = [float(v) for v in rng.permutation(PEAK_LOGITS)]
    peaks = peak_pool[:k]
    for i in range(min(low_peaks, k - 1)):
        peaks[i] = LOW_PEAK_LOGITS[i % len(LOW_PEAK_LOGITS)]
    speckle_pool = peak_pool[k:]

    # per-pixel targets (points of embedding space, in pixel units), sigmas and logits
    tgt_x = np.broadcast_to(np.arange(W, dtype=np.float64)[None, :], (H, W)).copy()
    tgt_y = np.broadcast_to(np.arange(H, dtype=np.float64)[:, None], (H, W)).copy()
    logit = BACKGROUND_LOGIT + rng.normal(0, 0.3, (H, W)).clip(-1, 1)
    sig = np.full((n_sigma, H, W), sigma_for(band_px))
    yy, xx = np.mgrid[0:H, 0:W]
    for (cy, cx), m, peak in zip(centres, masks, peaks):
        tgt_x[m] = cx + rng.uniform(-0.5, 0.5)
        tgt_y[m] = cy + rng.uniform(-0.5, 0.5)
        r2 = ((yy[m] - cy) / radius[1]) ** 2 + ((xx[m] - cx) / radius[1]) ** 2
        logit[m] = np.maximum(peak - 2.0 * r2 - 0.05 - rng.uniform(0, 0.3, m.sum()),
                              min(1.0, peak - 0.05))
        logit[cy, cx] = peak  # the instance's unique maximum
        if sigma_mode == "varying":
            for a in range(n_sigma):
                sig[a][m] = sigma_for(band_px * rng.uniform(0.8, 1.25))
    speckle_masks: List[np.ndarray] = []
    speckle_peaks: List[float] = []
    points = [(float(y), float(x)) for y, x in centres]
    for _ in range(speckles):
        for _attempt in range(40):
            h, w = int(rng.integers(1, 4)), int(rng.integers(1, 4))
            y0, x0 = int(rng.integers(0, max(H - h, 1))), int(rng.integers(0, max(W - w, 1)))
            m = np.zeros((H, W), bool)
            m[y0:y0 + h, x0:x0 + w] = True
            grown = np.zeros_like(m)
            grown[max(y0 - 1, 0):y0 + h + 1, max(x0 - 1, 0):x0 + w + 1] = True
            if (grown & taken).any():
                continue
            if speckle_target == "any" and centres and rng.uniform() < 0.5:
                cy, cx = centres[int(rng.integers(0, len(centres)))]
                py, px = cy + rng.uniform(-3, 3), cx + rng.uniform(-3, 3)
            else:  # an empty spot: far (in pixels of embedding space) from every other point
                for _t in range(200):
                    py, px = rng.uniform(-20, H + 20), rng.uniform(-20, W + 20)
                    if all((py - y) ** 2 + (px - x) ** 2 > (4 * band_px) ** 2
                           for y, x in points):
                        break
                else:
                    continue
            points.append((py, px))
            tgt_x[m], tgt_y[m] = px, py
            peak = speckle_pool.pop() if speckle_pool else float(rng.choice(PEAK_LOGITS))
            logit[m] = peak
            speckle_masks.append(m)
            speckle_peaks.append(peak)
            taken |= grown
            break

    # offsets pointing at the targets, plus noise
    off_x = np.arctanh(np.clip(xs[0] + tgt_x * step_x - xs[None, :], -0.99, 0.99))
    off_y = np.arctanh(np.clip(ys[0] + tgt_y * step_y - ys[:, None], -0.99, 0.99))
    scale = {"none": 0.0, "low": 0.05, "high": 0.5}[noise] * band_px * step
    off_x = off_x + rng.normal(0, 1, (H, W)).clip(-4, 4) * scale
    off_y = off_y + rng.normal(0, 1, (H, W)).clip(-4, 4) * scale
    if sigma_mode == "varying":
        sig = sig + rng.normal(0, 0.003, sig.shape)
    pred = np.concatenate([off_x[None], off_y[None], sig, logit[None]], 0)
    desc = (f"make_scene(seed={seed}, H={H}, W={W}, n_instances={n_instances}, "
            f"n_sigma={n_sigma}, sigma_mode={sigma_mode!r}, speckles={speckles}, "
            f"noise={noise!r}, grid={(grid_y, grid_x)}, extent={(ext_y, ext_x)}, "
            f"radius={tuple(radius)}, low_peaks={low_peaks}, "
            f"speckle_target={speckle_target!r}): {k} instances, {len(speckle_masks)} speckles")
    return Scene(torch.from_numpy(np.ascontiguousarray(pred)), n_sigma, (grid_y, grid_x),
                 (ext_y, ext_x), masks, peaks, [cy * W + cx for cy, cx in centres],
                 speckle_masks, speckle_peaks, desc)


# ======================================================================================
# Hand-built cases with hand-derived expectations
# ======================================================================================
#
# With zero offsets a pixel's embedding is its coordinate, so a seed's proposal is the
# masked pixels inside an ellipse around it: with sigma = sigma_for_radius(r2), the pixels at
# squared pixel distance < r2 (r2 is chosen half-way between integers: wide margins; the
# default grid's y step is 1.0005 times its x step, far inside them). Elsewhere offsets point
# groups of pixels at chosen points of embedding space.

STEP_X = 2.0 / 2047  # the default grid's x step (the y step is 1 / 1023)
BACKGROUND = -6.0


def sigma_for_radius(r2_px: float, step: float = STEP_X) -> float:
    """The sigma whose bandwidth is ``sqrt(r2_px)`` pixels: ``exp(10 sigma) r2 step^2 =
    ln 2``."""
    return math.log(math.log(2) / (r2_px * step * step)) / 10


def disc(H: int, W: int, cy: int, cx: int, r2: float) -> np.ndarray:
    """Pixels at squared distance ``< r2`` from (cy, cx)."""
    yy, xx = np.mgrid[0:H, 0:W]
    return (xx - cx) ** 2 + (yy - cy) ** 2 < r2


def make_prediction(logits: np.ndarray, sigma, n_sigma: int = 1,
                    targets: Optional[Tuple[np.ndarray, np.ndarray]] = None,
                    grid: Sequence[int] = DEFAULT_GRID,
                    extent: Sequence[float] = DEFAULT_EXTENT) -> torch.Tensor:
    """A float64 prediction: seed ``logits [H, W]``, ``sigma`` a number or an array per
    channel (``n_sigma`` of them), and offsets 0 (``targets=None``) or pointing at
    ``targets = (ty, tx)`` (``[H, W]`` points of embedding space in pixel units; NaN: offset
    0)."""
    H, W = logits.shape
    sig = sigma if isinstance(sigma, (list, tuple)) else [sigma] * n_sigma
    assert len(sig) == n_sigma
    off = [np.zeros((H, W)), np.zeros((H, W))]
    if targets is not None:
        ty, tx = targets
        for a, (t, n, g, e) in enumerate(((tx, W, grid[1], extent[1]),
                                          (ty, H, grid[0], extent[0]))):
            step = e / (g - 1)
            coord = coordinates(n, g, e)[None, :] if a == 0 else coordinates(n, g, e)[:, None]
            o = np.arctanh(np.clip(t * step - coord, -0.99, 0.99))
            off[a] = np.where(np.isnan(t), 0.0, o)
    chans = off + [np.broadcast_to(np.asarray(s, np.float64), (H, W)) for s in sig] + [logits]
    return torch.from_numpy(np.stack(chans).astype(np.float64))


@dataclass
class Case:
    name: str
    prediction: torch.Tensor  # float64 [3 + n_sigma, H, W]
    kwargs: dict
    expected: np.ndarray  # int32 [H, W]
    seed_pixels: List[int]  # raster index of each accepted instance's seed pixel

    def expected_scores(self, dtype: torch.dtype) -> torch.Tensor:
        """The scores: sigmoid_p of the seed pixels' logits (in ``dtype``'s acc dtype)."""
        logits = self.prediction[-1].to(dtype).to(acc_dtype(dtype)).flatten()
        return ref.sigmoid_p(logits[torch.tensor(self.seed_pixels, dtype=torch.long)])

    def __repr__(self) -> str:
        return f"Case({self.name}, {tuple(self.prediction.shape)}, {self.kwargs})"


def _blob(H: int, W: int, y0: int, x0: int, n: int, width: int) -> np.ndarray:
    """The first ``n`` pixels, in raster order, of a block ``width`` wide at (y0, x0)."""
    m = np.zeros((H, W), bool)
    for i in range(n):
        m[y0 + i // width, x0 + i % width] = True
    return m


def case_masked(n: int) -> Case:
    """``n`` masked pixels, one huge bandwidth: an instance iff ``n > 128`` (min_pixels)."""
    H, W = 16, 24
    m = _blob(H, W, 2, 3, n, 12)
    logits = np.where(m, 3.0, BACKGROUND)
    first = int(np.flatnonzero(m)[0])
    logits.flat[first] = 3.5
    expected = m.astype(np.int32) if n > 128 else np.zeros((H, W), np.int32)
    return Case(f"masked_{n}", make_prediction(logits, -1.0), dict(), expected,
                [first] if n > 128 else [])


def case_proposal(n: int) -> Case:
    """Blob A (``n`` pixels, highest peak) embeds at one point, blob B (200 pixels) at
    another 22 pixels away: A is an instance iff its proposal has ``n > 128`` pixels."""
    H, W = 40, 40
    a = _blob(H, W, 1, 1, n, 12)
    b = _blob(H, W, 20, 1, 200, 12)
    ty = np.where(a, 6.0, np.where(b, 28.0, np.nan))
    tx = np.where(a | b, 30.0, np.nan)
    logits = np.where(a | b, 3.0, BACKGROUND)
    pa, pb = int(np.flatnonzero(a)[0]), int(np.flatnonzero(b)[0])
    logits.flat[pa], logits.flat[pb] = 4.0, 3.5
    expected = np.zeros((H, W), np.int32)
    if n > 128:
        expected[a], expected[b], seeds = 1, 2, [pa, pb]
    else:
        expected[b], seeds = 1, [pb]
    return Case(f"proposal_{n}", make_prediction(logits, sigma_for_radius(9.0), targets=(ty, tx)),
                dict(), expected, seeds)


def case_no_seed() -> Case:
    """No seed above seed_threshold (0.5): no instances."""
    logits = np.full((16, 20), -0.2)
    return Case("no_seed", make_prediction(logits, -1.0), dict(min_pixels=0),
                np.zeros((16, 20), np.int32), [])


def case_below_threshold(threshold: float) -> Case:
    """200 masked pixels, all with seed sigmoid(0.4) = 0.599: the loop stops at its first
    seed for threshold 0.9, one instance (seed: the first pixel) for 0.5."""
    H, W = 20, 20
    m = _blob(H, W, 2, 2, 200, 16)
    logits = np.where(m, 0.4, BACKGROUND)
    take = threshold <= 0.599
    return Case(f"below_threshold_{threshold}", make_prediction(logits, -1.0),
                dict(threshold=threshold), m.astype(np.int32) * int(take),
                [int(np.flatnonzero(m)[0])] if take else [])


def case_overlap() -> Case:
    """Two discs 5 pixels apart: A first, then B, whose proposal (the whole disc B, most of
    it new) overwrites the lens they share."""
    H, W, r2 = 20, 30, 12.5
    a, b = disc(H, W, 10, 10, r2), disc(H, W, 10, 15, r2)
    assert (a & b).sum() > 0 and (b & ~a).sum() / b.sum() > 0.6
    logits = np.where(a | b, 3.0, BACKGROUND)
    logits[10, 10], logits[10, 15] = 5.0, 4.0
    expected = np.zeros((H, W), np.int32)
    expected[a], expected[b] = 1, 2
    return Case("overlap", make_prediction(logits, sigma_for_radius(r2)), dict(min_pixels=5),
                expected, [10 * W + 10, 10 * W + 15])


def case_ratio(nb: int) -> Case:
    """min_pixels 0. A (3 pixels, top peak, bandwidth 1.5 px) embeds at P; B (``nb`` pixels,
    bandwidth 6 px) at P + 4 px, so B's proposal is A and B: ``nb - 1`` of its ``nb + 3``
    pixels are unclustered. nb = 5: exactly half, rejected; nb = 7: accepted, and it
    overwrites all of A (id 1 disappears from the map)."""
    H, W = 12, 16
    a = _blob(H, W, 2, 2, 3, 3)
    b = _blob(H, W, 8, 2, nb, 10)
    ty = np.where(a | b, 20.0, np.nan)
    tx = np.where(a, 20.0, np.where(b, 24.0, np.nan))
    logits = np.where(a, 5.0, np.where(b, 4.0, BACKGROUND))
    sigma = np.where(a, sigma_for_radius(2.25), sigma_for_radius(36.0))
    expected = np.zeros((H, W), np.int32)
    pa, pb = int(np.flatnonzero(a)[0]), int(np.flatnonzero(b)[0])
    if np.float32(nb - 1) / np.float32(nb + 3) > 0.5:
        expected[a | b], seeds = 2, [pa, pb]
    else:
        expected[a], seeds = 1, [pa]
    return Case(f"ratio_{nb}", make_prediction(logits, sigma, targets=(ty, tx)),
                dict(min_pixels=0), expected, seeds)


def case_many(rows: int = 15, cols: int = 20) -> Case:
    """``rows * cols`` (300) instances of 3 pixels (1x3 bars, middle peak, bandwidth 1.58 px),
    min_pixels 0: ids past 255, in raster order of the (tied) peaks."""
    H, W = 2 * rows, 4 * cols
    logits = np.full((H, W), BACKGROUND)
    expected = np.zeros((H, W), np.int32)
    seeds = []
    for i in range(rows):
        for j in range(cols):
            y, x = 2 * i, 4 * j
            logits[y, x:x + 3] = 3.0
            logits[y, x + 1] = 5.0
            expected[y, x:x + 3] = i * cols + j + 1
            seeds.append(y * W + x + 1)
    return Case("many", make_prediction(logits, sigma_for_radius(2.5)), dict(min_pixels=0),
                expected, seeds)


def case_ties() -> Case:
    """Two 3x3 blobs with equal seeds: the one whose first pixel comes first in raster order
    (row 2, though further right) is instance 1."""
    H, W = 10, 30
    a = np.zeros((H, W), bool)
    a[2:5, 20:23] = True
    b = np.zeros((H, W), bool)
    b[3:6, 2:5] = True
    logits = np.where(a | b, 3.0, BACKGROUND)
    expected = a * 1 + b * 2
    return Case("ties", make_prediction(logits, sigma_for_radius(8.5)), dict(min_pixels=4),
                expected.astype(np.int32), [2 * W + 20, 3 * W + 2])


def case_axes(n_sigma: int) -> Case:
    """A 5x11 block (55 pixels), peak in the middle. n_sigma 2 (bandwidths sqrt(20.5) px in
    x, sqrt(6.5) px in y): the proposal is the 37-pixel ellipse dx^2 / 20.5 + dy^2 / 6.5 < 1;
    n_sigma 1 (the x channel alone): the 45 pixels of the block with dx^2 + dy^2 < 20.5.
    min_pixels is what is left (18, 10), so the loop stops there. Using one axis' sigma for
    both, or swapping them, gives another proposal."""
    H, W = 9, 15
    m = np.zeros((H, W), bool)
    m[2:7, 2:13] = True
    logits = np.where(m, 3.0, BACKGROUND)
    logits[4, 7] = 5.0
    yy, xx = np.mgrid[0:H, 0:W]
    q = ((xx - 7) ** 2 / 20.5 + (yy - 4) ** 2 / 6.5) if n_sigma == 2 else \
        ((xx - 7) ** 2 + (yy - 4) ** 2) / 20.5
    assert np.abs(q - 1).min() > 0.02  # wide margins
    prop = m & (q < 1)
    left = 18 if n_sigma == 2 else 10
    assert prop.sum() == (37 if n_sigma == 2 else 45) and (m & ~prop).sum() == left
    sig = [sigma_for_radius(20.5), sigma_for_radius(6.5, 1.0 / 1023)][:n_sigma]
    return Case(f"axes_{n_sigma}", make_prediction(logits, list(sig), n_sigma),
                dict(n_sigma=n_sigma, min_pixels=left),
                prop.astype(np.int32), [4 * W + 7])


def case_beyond_grid() -> Case:
    """grid (8, 8), extent (0.07, 0.07) (step 0.01) on a 30x40 input: the grid continues
    with the same step, so a disc far outside it is found whole, as one inside it."""
    H, W, r2 = 30, 40, 12.5
    a, b = disc(H, W, 3, 3, r2), disc(H, W, 20, 30, r2)
    logits = np.where(a | b, 3.0, BACKGROUND)
    logits[3, 3], logits[20, 30] = 5.0, 4.0
    expected = (a * 1 + b * 2).astype(np.int32)
    grid, extent = (8, 8), (0.07, 0.07)
    return Case("beyond_grid", make_prediction(logits, sigma_for_radius(r2, 0.01)),
                dict(grid=grid, extent=extent, min_pixels=5), expected,
                [3 * W + 3, 20 * W + 30])


def _one_blob_case(name: str, dtype: torch.dtype, kwargs_for) -> Case:
    """A 10-pixel blob with logit 2.25 (min_pixels 5); ``kwargs_for(score)`` gives the
    thresholds from the blob's seed in ``dtype``'s acc dtype and whether it is found."""
    H, W = 8, 8
    m = _blob(H, W, 2, 2, 10, 5)
    logits = np.where(m, 2.25, BACKGROUND)
    pred = make_prediction(logits, -1.0)
    score = float(ref.sigmoid_p(torch.tensor(2.25, dtype=acc_dtype(dtype))))
    kwargs, found = kwargs_for(score)
    kwargs["min_pixels"] = 5
    return Case(name, pred, kwargs, m.astype(np.int32) * int(found),
                [int(np.flatnonzero(m)[0])] if found else [])


def case_threshold_float64(dtype: torch.dtype, above: bool) -> Case:
    """The score is compared with ``threshold`` in float64: a threshold one float64 ulp
    above the score stops the loop (a float32 comparison would round it to the score)."""
    return _one_blob_case(
        f"threshold_float64_{'above' if above else 'equal'}", dtype,
        lambda s: (dict(threshold=math.nextafter(s, 1.0) if above else s), not above))


def case_seed_threshold_acc(dtype: torch.dtype, which: str) -> Case:
    """``mask = seed > seed_threshold`` in acc, the threshold rounded to acc: ``equal`` (the
    seed itself) masks nothing; ``just_below`` (one float64 ulp below) rounds to the seed in
    float32 (nothing masked) but not in float64; ``below`` (the previous acc value) masks."""
    acc = acc_dtype(dtype)

    def kw(s: float):
        if which == "equal":
            return dict(seed_threshold=s), False
        if which == "just_below":
            return dict(seed_threshold=math.nextafter(s, 0.0)), acc == torch.float64
        t = torch.tensor(s, dtype=acc)
        return dict(seed_threshold=float(torch.nextafter(t, torch.zeros_like(t)))), True
    return _one_blob_case(f"seed_threshold_{which}", dtype, kw)


def hand_cases(dtype: torch.dtype = torch.float32) -> List[Case]:
    """Every hand-built case (thresholds derived for ``dtype``)."""
    return [
        case_masked(128), case_masked(129), case_proposal(128), case_proposal(129),
        case_no_seed(), case_below_threshold(0.9), case_below_threshold(0.5), case_overlap(),
        case_ratio(5), case_ratio(7), case_many(), case_ties(), case_axes(1), case_axes(2),
        case_beyond_grid(),
        case_threshold_float64(dtype, False), case_threshold_float64(dtype, True),
        case_seed_threshold_acc(dtype, "equal"), case_seed_threshold_acc(dtype, "just_below"),
        case_seed_threshold_acc(dtype, "below"),
    ]


# ======================================================================================
# Hypothesis strategies
# ======================================================================================


@dataclass
class ClusterProblem:
    scene: Scene
    dtype: torch.dtype
    kwargs: dict

    def prediction(self, device="cpu") -> torch.Tensor:
        return self.scene.prediction.to(self.dtype).to(device)

    def __repr__(self) -> str:
        return f"ClusterProblem({self.scene.description}, dtype={self.dtype}, {self.kwargs})"


@st.composite
def cluster_problems(draw, dtypes: Sequence[torch.dtype] = ALL_DTYPES,
                     noises: Sequence[str] = ("low", "high"),
                     thresholds: Sequence[float] = (0.5, 0.9),
                     min_pixels: Sequence[int] = (0, 1, 4, 10, 30, 64, 128),
                     sizes: Tuple[Tuple[int, int], Tuple[int, int]] = ((32, 96), (64, 160)),
                     speckle_targets: Sequence[str] = ("far", "any")):
    """Synthetic scenes with the op's arguments. ``sizes = ((H_lo, H_hi), (W_lo, W_hi))``."""
    H = draw(st.integers(*sizes[0]))
    W = draw(st.integers(*sizes[1]))
    n_sigma = draw(st.sampled_from([1, 2]))
    noise = draw(st.sampled_from(noises))
    mp = draw(st.sampled_from(min_pixels))
    if noise == "high" and mp < 4:  # keep the number of loop iterations small
        mp = 4
    scene = make_scene(
        seed=draw(st.integers(0, 2**32 - 1)), H=H, W=W,
        n_instances=draw(st.integers(1, 7)), n_sigma=n_sigma,
        sigma_mode=draw(st.sampled_from(["constant", "varying"])),
        speckles=draw(st.sampled_from([0, 0, 3, 8])), noise=noise,
        low_peaks=draw(st.sampled_from([0, 0, 1, 2])),
        speckle_target=draw(st.sampled_from(speckle_targets)),
        radius=draw(st.sampled_from([(3.0, 6.0), (4.0, 9.0), (6.0, 12.0)])),
    )
    threshold = draw(st.sampled_from(thresholds))
    # not vacuous: the largest instance above the threshold is more than twice (low noise)
    # or four times (high noise: its first proposal may take only half of it) min_pixels
    big = [int(m.sum()) for m, peak in zip(scene.instances, scene.peaks)
             if 1 / (1 + math.exp(-peak)) >= threshold]
    mp = min(mp, max(big, default=0) // (2 if noise == "low" else 4))
    kwargs = scene.kwargs(threshold=threshold, min_pixels=mp)
    p = ClusterProblem(scene, draw(st.sampled_from(dtypes)), kwargs)
    note(repr(p))
    return p


# ======================================================================================
# Assertions
# ======================================================================================


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns of a float tensor (NaN payloads and -0.0 compared exactly)."""
    t = t.detach().cpu().contiguous()
    return t.view({torch.float64: torch.int64, torch.float32: torch.int32,
                   torch.float16: torch.int16, torch.bfloat16: torch.int16}[t.dtype])


def assert_bits_equal(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    a, e = bits(actual), bits(expected)
    if not torch.equal(a, e):
        idx = (a != e).nonzero()[:5].tolist()
        raise AssertionError(f"{what}: {int((a != e).sum())} values differ, first at {idx}: "
                             f"{[actual.cpu()[tuple(i)].item() for i in idx]} != "
                             f"{[expected.cpu()[tuple(i)].item() for i in idx]}")


def assert_map_equal(actual: torch.Tensor, expected: torch.Tensor, what: str = "map") -> None:
    expected = torch.as_tensor(expected)
    assert actual.dtype == torch.int32, f"{what}: dtype {actual.dtype}"
    assert tuple(actual.shape) == tuple(expected.shape), f"{what}: {actual.shape}"
    a, e = actual.cpu(), expected.cpu().to(torch.int32)
    if not torch.equal(a, e):
        diff = (a != e).nonzero()
        first = [(tuple(i), a[tuple(i)].item(), e[tuple(i)].item()) for i in diff[:8].tolist()]
        raise AssertionError(f"{what}: {diff.shape[0]} pixels differ, first (pixel, got, "
                             f"expected): {first}")


def assert_cluster_equal(actual, expected, what: str = "") -> None:
    """(instance_map, scores[, count]) equal bit for bit."""
    assert len(actual) == len(expected), f"{what}: {len(actual)} outputs"
    assert_map_equal(actual[0], expected[0], f"{what} instance_map")
    assert_bits_equal(actual[1], expected[1], f"{what} scores")
    if len(expected) == 3:
        assert actual[2].dtype == torch.int64 and actual[2].dim() == 0
        assert int(actual[2]) == int(expected[2]), f"{what} count"


@st.composite
def knife_edge_problems(draw, dtypes: Sequence[torch.dtype] = ALL_DTYPES):
    """Scenes where many decisions sit within rounding of their thresholds, so that only
    bit-identical arithmetic agrees: embeddings on (or a hair off) the pixel lattice and a
    bandwidth whose boundary passes through lattice points (``exp(10 sigma) r2 step^2 =
    ln 2`` for an integer r2, nudged by an ulp or so), continuous seed logits (scores whose
    last bits depend on exp) and seeds near ``seed_threshold``."""
    H, W = draw(st.integers(12, 40)), draw(st.integers(12, 48))
    n_sigma = draw(st.sampled_from([1, 2]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    r2 = draw(st.sampled_from([2, 4, 5, 8, 9, 10, 13, 16, 25, 50]))
    nudge = draw(st.sampled_from([0.0, 1e-8, -1e-8, 1e-7, -1e-7]))
    sig_x = sigma_for_radius(r2, STEP_X) + nudge
    sig_y = sigma_for_radius(draw(st.sampled_from([r2, r2 + 1])), 1.0 / 1023) + nudge
    sigma = [sig_x, sig_y][:n_sigma]
    # the masked area: random blocks; continuous logits, some just above/below 0 (seed 0.5)
    logits = np.full((H, W), BACKGROUND)
    for _ in range(draw(st.integers(1, 4))):
        h, w = int(rng.integers(3, 12)), int(rng.integers(3, 14))
        y0, x0 = int(rng.integers(0, H - 2)), int(rng.integers(0, W - 2))
        logits[y0:y0 + h, x0:x0 + w] = rng.uniform(0.5, 6.0, logits[y0:y0 + h, x0:x0 + w].shape)
    edge = rng.uniform(size=(H, W)) < 0.1
    logits[edge] = rng.choice([1e-7, -1e-7, 1e-30, 0.0, 2e-8], size=int(edge.sum()))
    kind = draw(st.sampled_from(["zero", "hair", "quantised"]))
    off = np.zeros((2, H, W))
    if kind == "hair":  # a few ulps of the coordinates
        off = rng.normal(0, 1e-6 * STEP_X, (2, H, W))
    elif kind == "quantised":  # whole pixels: embeddings of distinct pixels coincide
        off = rng.integers(-2, 3, (2, H, W)) * STEP_X
    pred = make_prediction(logits, sigma, n_sigma)
    pred[0], pred[1] = torch.from_numpy(off[0]), torch.from_numpy(off[1])
    if kind == "quantised":
        pred[:2] = torch.atanh(pred[:2])
    kwargs = dict(n_sigma=n_sigma, threshold=draw(st.sampled_from([0.5, 0.9, 0.0])),
                  seed_threshold=draw(st.sampled_from([0.5, 0.5 + 1e-8, 0.6])),
                  min_pixels=draw(st.sampled_from([0, 1, 3, 6])))
    p = ClusterProblem(Scene(pred, n_sigma, DEFAULT_GRID, DEFAULT_EXTENT, [], [], [],
                             description=f"knife_edge(H={H}, W={W}, r2={r2}, nudge={nudge}, "
                                         f"offsets={kind})"),
                       draw(st.sampled_from(dtypes)), kwargs)
    note(repr(p))
    return p
