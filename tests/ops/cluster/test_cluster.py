"""Seed clustering (docs/ops/cluster.md): ``segops.cluster_seeds`` against the reference EXACTLY (the
instance map and the scores bit for bit) on synthetic SpatialEmbeddings scenes and on
hand-built cases, every dtype and device; the padded form; torch.compile and opcheck; bad
input; empty images; CUDA == CPU.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import segops

from helpers.cluster import (
    ALL_DTYPES, HALF_DTYPES, acc_dtype, assert_bits_equal, assert_cluster_equal,
    assert_map_equal, case_many, cluster_problems, hand_cases, knife_edge_problems,
    make_prediction, make_scene, ref, sigma_for_radius,
)

FULL = (torch.float32, torch.float64)


def _relayout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout."""
    if layout == "channels_last":  # [H, W, C] in memory
        return t.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    if layout == "strided":  # every other column of a buffer twice as wide
        buf = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        buf[..., ::2] = t
        return buf[..., ::2]
    return t


def _check_outputs(out, pred: torch.Tensor, padded: bool) -> None:
    assert len(out) == (3 if padded else 2)
    H, W = pred.shape[1:]
    assert out[0].shape == (H, W) and out[0].dtype == torch.int32
    assert out[1].dtype == acc_dtype(pred.dtype)
    assert all(t.device == pred.device for t in out)
    if padded:
        assert out[2].dtype == torch.int64 and out[2].dim() == 0


# ======================================================================================
# Against the reference
# ======================================================================================


@given(p=cluster_problems(), data=st.data())
def test_cluster_matches_reference(device, p, data):
    """Exactly the reference's map and scores, in the plain and padded forms, whatever the
    input's memory layout. (The strategy keeps min_pixels low enough that every scene has
    instances.)"""
    pred = p.prediction()
    expected = ref.cluster_seeds(pred, **p.kwargs)
    M = expected[1].numel()
    assert M > 0, "vacuous scene"
    layout = data.draw(st.sampled_from(["contiguous", "channels_last", "strided"]))
    x = _relayout(pred.to(device), layout)
    out = segops.cluster_seeds(x, **p.kwargs)
    _check_outputs(out, x, padded=False)
    assert_cluster_equal(out, expected, "plain")

    cap = data.draw(st.integers(0, M + 2))
    out = segops.cluster_seeds(x, max_instances=cap, **p.kwargs)
    _check_outputs(out, x, padded=True)
    exp_padded = ref.cluster_seeds(pred, max_instances=cap, **p.kwargs)
    assert_cluster_equal(out, exp_padded, f"padded {cap}")
    k = min(cap, M)
    assert int(out[2]) == k and out[1].shape == (cap,)
    assert_bits_equal(out[1][:k], expected[1][:k], "padded prefix")
    assert (out[1][k:] == 0).all()
    if cap >= M:
        assert_map_equal(out[0], expected[0], "padded map")
    assert int(out[0].max()) <= k


@given(p=knife_edge_problems())
def test_cluster_matches_reference_on_knife_edges(device, p):
    """Decisions within rounding of their thresholds (lattice points on the bandwidth's
    boundary, embeddings a few ulps off the lattice, seeds at seed_threshold): only
    bit-identical tanh/exp/sigmoid and operation order agree here (torch's own functions in
    the reference disagree with the kernel on about one scene in twelve)."""
    pred = p.prediction()
    expected = ref.cluster_seeds(pred, **p.kwargs)
    assert_cluster_equal(segops.cluster_seeds(pred.to(device), **p.kwargs), expected)


@st.composite
def wild_problems(draw):
    """Scenes with non-finite and extreme values in every channel: NaN/inf offsets, sigmas
    that make the bandwidth 0 or infinite, NaN/inf seed logits, embeddings scattered far."""
    dtype = draw(st.sampled_from(ALL_DTYPES))
    n_sigma = draw(st.sampled_from([1, 2]))
    scene = make_scene(draw(st.integers(0, 2**32 - 1)), H=draw(st.integers(6, 16)),
                       W=draw(st.integers(6, 24)), n_instances=draw(st.integers(1, 4)),
                       n_sigma=n_sigma, noise="high", speckles=3, radius=(3.0, 6.0))
    pred = scene.prediction.clone()
    g = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = [math.nan, math.inf, -math.inf, 1e30, -1e30, 40.0, -40.0, 12.0, -12.0, 0.0]
    frac = draw(st.sampled_from([0.01, 0.05, 0.3]))
    for c in range(pred.shape[0]):
        if draw(st.booleans()):
            hit = torch.from_numpy(g.uniform(size=pred.shape[1:]) < frac)
            pred[c][hit] = torch.from_numpy(g.choice(values, size=int(hit.sum())))
    if draw(st.booleans()):  # offsets of any size: embeddings anywhere within +-1
        pred[:2] += torch.from_numpy(g.normal(0, 2, (2,) + tuple(pred.shape[1:])))
    kwargs = scene.kwargs(threshold=draw(st.sampled_from([0.5, 0.9, 0.0, -1.0])),
                          seed_threshold=draw(st.sampled_from([0.5, 0.0, -0.5, 0.99])),
                          min_pixels=draw(st.sampled_from([0, 2, 8])))
    return pred.to(dtype), kwargs


@given(p=wild_problems())
def test_cluster_matches_reference_on_wild_values(device, p):
    """Never a crash, and still exactly the reference (NaN embeddings or bandwidths make
    empty proposals; a zero bandwidth proposes every masked pixel)."""
    pred, kwargs = p
    expected = ref.cluster_seeds(pred, **kwargs)
    assert_cluster_equal(segops.cluster_seeds(pred.to(device), **kwargs), expected)
    assert_cluster_equal(segops.cluster_seeds(pred.to(device), max_instances=3, **kwargs),
                         ref.cluster_seeds(pred, max_instances=3, **kwargs))


# ======================================================================================
# Hand-built cases
# ======================================================================================


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_cluster_hand_cases(device, dtype):
    """The hand-derived expectations (see helpers.cluster.hand_cases and
    test_cluster_reference): min_pixels boundaries 128/129 (masked and proposal), no seed
    above seed_threshold, every seed below threshold, overlapping proposals, the ratio
    boundary, 300 instances, raster-order ties, n_sigma 1 and 2, input larger than the grid,
    threshold in float64 and seed_threshold in acc."""
    for case in hand_cases(dtype):
        pred = case.prediction.to(dtype)
        out = segops.cluster_seeds(pred.to(device), **case.kwargs)
        _check_outputs(out, pred.to(device), padded=False)
        if dtype in HALF_DTYPES and case.name.startswith("axes"):
            # sigma rounded to a half type moves the ellipse: the reference decides
            assert_cluster_equal(out, ref.cluster_seeds(pred, **case.kwargs), case.name)
            continue
        assert_map_equal(out[0], case.expected, case.name)
        assert_bits_equal(out[1], case.expected_scores(dtype), f"{case.name} scores")


@pytest.mark.parametrize("dtype", FULL)
def test_cluster_more_than_255_instances(device, dtype):
    case = case_many()
    m, s = segops.cluster_seeds(case.prediction.to(dtype).to(device), **case.kwargs)
    assert s.numel() == 300 and int(m.max()) == 300
    assert_map_equal(m, case.expected)
    for cap in (255, 256, 300, 301):
        m, s, n = segops.cluster_seeds(case.prediction.to(dtype).to(device),
                                       max_instances=cap, **case.kwargs)
        k = min(cap, 300)
        assert int(n) == k and s.shape == (cap,) and int(m.max()) == k
        # the bars are disjoint: the first k of them
        assert_map_equal(m, np.where(case.expected <= k, case.expected, 0))
        assert_bits_equal(s[:k], case.expected_scores(dtype)[:k])
        assert (s[k:] == 0).all()


@pytest.mark.parametrize("dtype", FULL)
def test_cluster_large_seed_region(device, dtype):
    """A 3008-pixel region (a road) whose pixels all join its first seed's proposal, ahead
    of a 200-pixel instance in the seed order: the next seed lies past 3008 clustered
    positions (several rounds of the CUDA kernel's 1024-position search)."""
    H, W = 80, 64
    road = np.zeros((H, W), bool)
    road[:47] = True
    car = np.zeros((H, W), bool)
    car[60:70, 10:30] = True
    ty = np.where(road, 20.0, np.where(car, 65.0, np.nan))
    tx = np.where(road | car, 30.0, np.nan)
    logits = np.where(road, 3.5, np.where(car, 3.0, -6.0))
    logits[30, 40] = 3.75
    pred = make_prediction(logits, sigma_for_radius(9.0), targets=(ty, tx)).to(dtype)
    out = segops.cluster_seeds(pred.to(device), min_pixels=16)
    assert_cluster_equal(out, ref.cluster_seeds(pred, min_pixels=16))
    m = out[0].cpu().numpy()
    assert (m[road] == 1).all() and (m[car] == 2).all() and (m[~(road | car)] == 0).all()


def test_cluster_padded_zero_capacity(device):
    scene = make_scene(1, H=40, W=64, n_instances=3, radius=(3.0, 6.0))
    pred = scene.prediction.float().to(device)
    assert segops.cluster_seeds(pred, min_pixels=5, **scene.kwargs())[1].numel() > 0
    m, s, n = segops.cluster_seeds(pred, min_pixels=5, max_instances=0, **scene.kwargs())
    assert s.shape == (0,) and int(n) == 0 and not m.any()


def test_cluster_is_deterministic(device):
    scene = make_scene(5, H=64, W=128, n_instances=6, speckles=8, noise="high",
                       speckle_target="any", radius=(3.0, 6.0))
    pred = scene.prediction.float().to(device)
    a = segops.cluster_seeds(pred, min_pixels=4, **scene.kwargs())
    b = segops.cluster_seeds(pred, min_pixels=4, **scene.kwargs())
    assert a[1].numel() > 0
    assert_cluster_equal(a, b)


# ======================================================================================
# Decisions packed densely around their thresholds (the CPU kernel decides most of them
# from the logit or the distance alone, without the exponential)
# ======================================================================================


def _ulp_walk(centre: float, dtype: torch.dtype, steps: int) -> np.ndarray:
    """The 2 * steps + 1 consecutive values of ``dtype`` centred on ``centre``."""
    ftype = np.float64 if dtype == torch.float64 else np.float32
    c = ftype(centre)
    up, down = [c], [c]
    for _ in range(steps):
        up.append(np.nextafter(up[-1], ftype(np.inf)))
        down.append(np.nextafter(down[-1], ftype(-np.inf)))
    return np.array(down[:0:-1] + up, dtype=ftype)


@pytest.mark.parametrize("dtype", FULL)
@pytest.mark.parametrize("t", [0.5, 0.9, 0.99, 1 - 2**-24, 1e-6, 1e-25, 1e-35, 0.0, 1.0, -0.5])
def test_cluster_masked_set_near_seed_threshold(device, dtype, t):
    """Seed logits spread over logit(t) +- 3e-5 / (1 - t) (the kernel's undecided band is a
    third of that) and the 300 values either side of where the decision flips: the masked
    pixels are exactly those with the reference's ``sigmoid_p(logit) > t``. A bandwidth of
    ~0 puts every masked pixel into the first proposal, so the map shows the masked set."""
    H, W = 40, 64
    ftype = np.float64 if dtype == torch.float64 else np.float32
    passes = lambda v: bool(ref.sigmoid_p(torch.tensor(v, dtype=dtype)) > t)  # noqa: E731
    L = math.log(t / (1 - t)) if 0 < t < 1 else 0.0
    spread = 3e-5 / (1 - t) if 0 < t < 1 else 20.0
    wide = (L + np.linspace(-spread, spread, H * W - 601)).astype(ftype)
    flip = L
    if 0 < t < 1:  # bisect the float where the reference's decision flips
        lo, hi = ftype(wide[0]), ftype(wide[-1])
        assert not passes(lo) and passes(hi)
        while np.nextafter(lo, hi) != hi:
            mid = ftype((lo + hi) / 2)
            mid = mid if mid not in (lo, hi) else np.nextafter(lo, hi)
            lo, hi = (mid, hi) if not passes(mid) else (lo, mid)
        flip = hi
    walk = _ulp_walk(flip, dtype, 300)
    logits = torch.from_numpy(np.concatenate([wide, walk])).view(H, W)
    pred = torch.zeros(4, H, W, dtype=dtype)
    pred[2] = -10.0  # bandwidth exp(-100): every masked pixel joins the first proposal
    pred[3] = logits
    kwargs = dict(threshold=-1.0, seed_threshold=t, min_pixels=0)
    out = segops.cluster_seeds(pred.to(device), **kwargs)
    assert_cluster_equal(out, ref.cluster_seeds(pred, **kwargs))
    masked = (ref.sigmoid_p(logits) > torch.tensor(t, dtype=dtype)).numpy()
    if masked.sum() >= 3:  # the first proposal is accepted: (count - 1) / count > 0.5
        assert_map_equal(out[0], masked.astype(np.int32))
    if 0 < t < 1:  # the boundary lies within the ulp walk
        in_walk = masked.reshape(-1)[-walk.size:]
        assert in_walk.any() and not in_walk.all()


@pytest.mark.parametrize("dtype", FULL)
def test_cluster_proposal_boundary_dense(device, dtype):
    """One seed and ~4600 pixels whose embeddings lie at distances d from it packed around
    the proposal's boundary, d = ln 2 (half over [0.68, 0.70], half within ~1000 ulp of
    ln 2): instance 1 is exactly the pixels with the reference's ``exp_p(-d) > 0.5``, the
    other pixels' seeds being below ``threshold``."""
    H, W = 48, 96
    n = H * W
    g = np.random.default_rng(7)
    d = np.concatenate([np.linspace(0.68, 0.70, n // 2),
                        math.log(2) * (1 + 2**-24 * np.arange(-(n - n // 2) // 2,
                                                              (n - n // 2) - (n - n // 2) // 2))])
    g.shuffle(d)
    sigma = 0.5  # bandwidth exp(5)
    s = math.exp(10 * sigma)
    theta = g.uniform(0, 2 * math.pi, n)
    r = np.sqrt(d / s)
    xs = ref.grid_coordinates(W, 2048, 2.0, torch.float64).numpy()
    ys = ref.grid_coordinates(H, 1024, 1.0, torch.float64).numpy()
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    off_x = np.arctanh(r * np.cos(theta) - xx.reshape(-1))
    off_y = np.arctanh(r * np.sin(theta) - yy.reshape(-1))
    off_x[0] = off_y[0] = 0.0  # the seed, pixel 0, embeds at (0, 0)
    pred = torch.zeros(4, H, W, dtype=dtype)
    pred[0] = torch.from_numpy(off_x).view(H, W)
    pred[1] = torch.from_numpy(off_y).view(H, W)
    pred[2] = sigma
    pred[3] = 1.0  # sigmoid 0.73: masked, but below threshold
    pred[3, 0, 0] = 5.0
    kwargs = dict(threshold=0.9, seed_threshold=0.5, min_pixels=0)
    out = segops.cluster_seeds(pred.to(device), **kwargs)
    assert_cluster_equal(out, ref.cluster_seeds(pred, **kwargs))
    acc = pred
    ex = ref.tanh_p(acc[0]) + ref.grid_coordinates(W, 2048, 2.0, dtype)
    ey = ref.tanh_p(acc[1]) + ref.grid_coordinates(H, 1024, 1.0, dtype)[:, None]
    sx = ref.exp_p(acc[2] * torch.tensor(10.0, dtype=dtype))
    dist = ((ex - ex[0, 0]) * (ex - ex[0, 0])) * sx + ((ey - ey[0, 0]) * (ey - ey[0, 0])) * sx
    joins = (ref.exp_p(-dist) > torch.tensor(0.5, dtype=dtype)).numpy()
    assert_map_equal(out[0], joins.astype(np.int32))
    near = np.abs(dist.numpy() - math.log(2)) < 1e-6
    assert joins[near].any() and not joins[near].all()


# ======================================================================================
# Empty images
# ======================================================================================


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("hw", [(0, 7), (7, 0), (0, 0)])
@pytest.mark.parametrize("n_sigma", [1, 2])
def test_cluster_empty_images(device, dtype, hw, n_sigma):
    pred = torch.zeros(3 + n_sigma, *hw, dtype=dtype, device=device)
    out = segops.cluster_seeds(pred, n_sigma=n_sigma, min_pixels=0)
    _check_outputs(out, pred, padded=False)
    assert out[1].shape == (0,)
    out = segops.cluster_seeds(pred, n_sigma=n_sigma, min_pixels=0, max_instances=4)
    _check_outputs(out, pred, padded=True)
    assert out[1].shape == (4,) and (out[1] == 0).all() and int(out[2]) == 0


# ======================================================================================
# torch.compile, opcheck
# ======================================================================================



# ======================================================================================
# Bad input
# ======================================================================================

_P = torch.zeros(4, 8, 8)


def test_cluster_good_edge_arguments_are_accepted():
    """The boundaries of the validation are valid calls: grid (2, 2), min_pixels 0,
    max_instances 0, infinite thresholds, a zero or negative extent."""
    p = torch.zeros(4, 3, 5)
    for kwargs in (dict(grid=(2, 2)), dict(min_pixels=0), dict(max_instances=0),
                   dict(threshold=math.inf), dict(threshold=-math.inf),
                   dict(seed_threshold=-math.inf), dict(extent=(0.0, -1.0))):
        out = segops.cluster_seeds(p, **kwargs)
        assert_cluster_equal(out, ref.cluster_seeds(p, **kwargs), str(kwargs))


# ======================================================================================
# CUDA
# ======================================================================================


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_cluster_cuda_equals_cpu_large(dtype):
    """A large, noisy scene (many iterations, long proposals): CUDA == CPU == reference,
    bit for bit, plain and padded."""
    scene = make_scene(11, H=192, W=384, n_instances=40, n_sigma=2, sigma_mode="varying",
                       speckles=30, noise="high", speckle_target="any", radius=(4.0, 12.0))
    pred = scene.prediction.to(dtype)
    kwargs = scene.kwargs(min_pixels=8, threshold=0.5)
    cpu = segops.cluster_seeds(pred, **kwargs)
    assert cpu[1].numel() > 10
    assert_cluster_equal(segops.cluster_seeds(pred.cuda(), **kwargs), cpu, "cuda vs cpu")
    assert_cluster_equal(cpu, ref.cluster_seeds(pred, **kwargs), "cpu vs reference")
    for cap in (0, 5, 1000):
        assert_cluster_equal(segops.cluster_seeds(pred.cuda(), max_instances=cap, **kwargs),
                             segops.cluster_seeds(pred, max_instances=cap, **kwargs),
                             f"padded {cap}")


@pytest.mark.cuda
def test_cluster_cuda_grid_continuation_equals_cpu():
    """Coordinates past a small grid (linspace and its continuation) are the same on both
    devices, so the maps are."""
    scene = make_scene(12, H=96, W=160, n_instances=8, grid=(16, 24), extent=(0.15, 0.23),
                       noise="high", radius=(3.0, 6.0))
    for dtype in FULL:
        pred = scene.prediction.to(dtype)
        kwargs = scene.kwargs(min_pixels=4)
        cpu = segops.cluster_seeds(pred, **kwargs)
        assert cpu[1].numel() > 0
        assert_cluster_equal(segops.cluster_seeds(pred.cuda(), **kwargs), cpu)
