"""Seed clustering (docs/ops/cluster.md): the pure-PyTorch reference on hand-built cases, against a
literal transcription of SpatialEmbeddings' ``Cluster.cluster`` on synthetic scenes, and its
portable exp/sigmoid against the compiled kernels' (through ``segops.assemble_masks``).
Does not use ``segops.cluster_seeds``.
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import segops

from helpers.cluster import (
    ALL_DTYPES, acc_dtype, assert_bits_equal, assert_map_equal, bits, case_many,
    hand_cases, make_scene, ref,
)

FULL = (torch.float32, torch.float64)


# ======================================================================================
# A literal transcription of the original
# ======================================================================================


class OriginalCluster:
    """SpatialEmbeddings' ``Cluster`` (``src/utils/utils.py``), transcribed line by line:
    torch's tanh/sigmoid/exp, a uint8 map, Python-float scores. Changes: no ``.cuda()``;
    the grid's size and extent (hardcoded (1024, 2048) and (1, 2)) and the 128 of its two
    size tests are parameters; ``proposal.cpu()`` is cast to uint8 where the original
    assigned it into a uint8 mask (old torch's masks were uint8)."""

    def __init__(self, grid=(1024, 2048), extent=(1.0, 2.0)):
        gy, gx = grid
        xm = torch.linspace(0, extent[1], gx).view(1, 1, -1).expand(1, gy, gx)
        ym = torch.linspace(0, extent[0], gy).view(1, -1, 1).expand(1, gy, gx)
        xym = torch.cat((xm, ym), 0)
        self.xym = xym

    def cluster(self, prediction, n_sigma=1, threshold=0.5, min_pixels=128):
        height, width = prediction.size(1), prediction.size(2)
        xym_s = self.xym[:, 0:height, 0:width]

        spatial_emb = torch.tanh(prediction[0:2]) + xym_s  # 2 x h x w
        sigma = prediction[2:2 + n_sigma]  # n_sigma x h x w
        seed_map = torch.sigmoid(prediction[2 + n_sigma:2 + n_sigma + 1])  # 1 x h x w

        instance_map = torch.zeros(height, width).byte()
        instances = []

        count = 1
        mask = seed_map > 0.5

        if mask.sum() > min_pixels:

            spatial_emb_masked = spatial_emb[mask.expand_as(spatial_emb)].view(2, -1)
            sigma_masked = sigma[mask.expand_as(sigma)].view(n_sigma, -1)
            seed_map_masked = seed_map[mask].view(1, -1)

            unclustered = torch.ones(mask.sum()).byte()
            instance_map_masked = torch.zeros(mask.sum()).byte()

            while unclustered.sum() > min_pixels:

                seed = (seed_map_masked * unclustered.float()).argmax().item()
                seed_score = (seed_map_masked * unclustered.float()).max().item()
                if seed_score < threshold:
                    break
                center = spatial_emb_masked[:, seed:seed + 1]
                unclustered[seed] = 0
                s = torch.exp(sigma_masked[:, seed:seed + 1] * 10)
                dist = torch.exp(-1 * torch.sum(torch.pow(spatial_emb_masked - center, 2) * s,
                                                0, keepdim=True))

                proposal = (dist > 0.5).squeeze()

                if proposal.sum() > min_pixels:
                    if unclustered[proposal].sum().float() / proposal.sum().float() > 0.5:
                        instance_map_masked[proposal.squeeze()] = count
                        instance_mask = torch.zeros(height, width).byte()
                        instance_mask[mask.squeeze().cpu()] = proposal.cpu().byte()
                        instances.append(
                            {'mask': instance_mask.squeeze() * 255, 'score': seed_score})
                        count += 1

                unclustered[proposal] = 0

            instance_map[mask.squeeze().cpu()] = instance_map_masked.cpu()

        return instance_map, instances


@st.composite
def low_noise_scenes(draw):
    """Scenes with wide margins (see helpers/cluster.py), sized so instances pass min_pixels."""
    min_pixels, radius = draw(st.sampled_from(
        [(128, (8.0, 13.0)), (128, (7.0, 12.0)), (30, (4.0, 9.0)), (5, (3.0, 6.0)),
         (0, (3.0, 6.0))]))
    n = draw(st.integers(1, 6))
    scene = make_scene(
        seed=draw(st.integers(0, 2**32 - 1)), H=draw(st.integers(32, 96)),
        W=draw(st.integers(64, 160)), n_instances=n, n_sigma=draw(st.sampled_from([1, 2])),
        sigma_mode=draw(st.sampled_from(["constant", "varying"])),
        speckles=draw(st.sampled_from([0, 2, 6])), noise=draw(st.sampled_from(["low", "none"])),
        radius=radius, low_peaks=draw(st.integers(0, n - 1)), speckle_target="far")
    threshold = draw(st.sampled_from([0.5, 0.9]))
    return scene, threshold, min_pixels, draw(st.sampled_from(FULL))


@given(p=low_noise_scenes())
def test_reference_matches_original_on_wide_margin_scenes(p):
    """Where no decision is within rounding of its threshold, the reference (portable math,
    int32 ids) finds exactly what the original (torch's math, uint8 ids) finds: the scene's
    ground truth, in the same order, with the same scores up to rounding."""
    scene, threshold, min_pixels, dtype = p
    pred = scene.prediction.to(dtype)
    expected = scene.expected_low_noise(threshold, min_pixels)
    assume(expected.max() > 0)  # not vacuous

    orig_map, orig_instances = OriginalCluster(scene.grid, scene.extent).cluster(
        pred, scene.n_sigma, threshold, min_pixels)
    out_map, scores = ref.cluster_seeds(pred, threshold=threshold, min_pixels=min_pixels,
                                        **scene.kwargs())
    assert_map_equal(out_map, expected, "reference")
    assert_map_equal(orig_map.to(torch.int32), expected, "original")
    assert scores.dtype == acc_dtype(dtype)
    orig_scores = torch.tensor([d["score"] for d in orig_instances], dtype=torch.float64)
    assert scores.shape == orig_scores.shape
    torch.testing.assert_close(scores.double(), orig_scores, rtol=4e-7, atol=0)
    for i, d in enumerate(orig_instances):  # the original's per-instance masks, as ids
        assert torch.equal(d["mask"] == 255, torch.from_numpy(expected == i + 1))


def test_original_uint8_map_fails_past_255():
    """Why segops' ids are int32: the original's uint8 map fails at the 256th instance
    (current torch refuses to store 256 in it; old torch wrapped it to 0)."""
    case = case_many()
    with pytest.raises(RuntimeError, match="uint8"):
        OriginalCluster().cluster(case.prediction.float(), 1, 0.5, 0)
    out_map, scores = ref.cluster_seeds(case.prediction.float(), **case.kwargs)
    assert scores.numel() == 300 and int(out_map.max()) == 300
    assert_map_equal(out_map, case.expected)


# ======================================================================================
# Hand-built cases
# ======================================================================================


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_reference_hand_cases(dtype):
    """docs/ops/cluster.md's rules on hand-derived expectations: the min_pixels boundaries (128 masked
    pixels: none, 129: one; a proposal of 128 is rejected, of 129 accepted), no seed above
    seed_threshold, every seed below threshold, overlapping proposals (the later overwrites),
    the exactly-half ratio (rejected), 300 instances (int32 ids past 255), raster-order ties,
    n_sigma 1 and 2, an input larger than the grid, and the threshold comparisons (score
    vs threshold in float64; seed vs seed_threshold in acc)."""
    for case in hand_cases(dtype):
        if dtype in (torch.float16, torch.bfloat16) and case.name.startswith("axes"):
            continue  # sigma rounded to a half type moves the ellipse's margins
        out_map, scores = ref.cluster_seeds(case.prediction.to(dtype), **case.kwargs)
        assert_map_equal(out_map, case.expected, case.name)
        assert_bits_equal(scores, case.expected_scores(dtype), f"{case.name} scores")
        assert int(out_map.max()) == len(case.seed_pixels), case.name


def test_hand_cases_are_not_vacuous():
    names = {c.name: c for c in hand_cases()}
    assert len([c for c in names.values() if c.expected.max() > 0]) >= 14
    assert names["many"].expected.max() == 300
    assert {1, 2} <= set(np.unique(names["overlap"].expected).tolist())
    assert set(np.unique(names["ratio_7"].expected).tolist()) == {0, 2}


@pytest.mark.parametrize("dtype", FULL)
def test_reference_padded_form(dtype):
    case = case_many(4, 5)
    pred = case.prediction.to(dtype)
    full_map, full_scores = ref.cluster_seeds(pred, **case.kwargs)
    assert full_scores.numel() == 20
    for cap in (0, 1, 7, 19, 20, 21, 40):
        m, s, n = ref.cluster_seeds(pred, max_instances=cap, **case.kwargs)
        k = min(cap, 20)
        assert n.dtype == torch.int64 and n.dim() == 0 and int(n) == k
        assert s.shape == (cap,) and s.dtype == acc_dtype(dtype)
        assert_bits_equal(s[:k], full_scores[:k])
        assert (s[k:] == 0).all()
        assert int(m.max()) == k
        # instances are disjoint here: the first `cap` of them
        assert torch.equal(m, torch.where(full_map <= k, full_map, torch.zeros_like(full_map)))


def test_reference_empty_images():
    for H, W in ((0, 5), (5, 0), (0, 0)):
        for dtype in ALL_DTYPES:
            m, s = ref.cluster_seeds(torch.zeros(4, H, W, dtype=dtype), min_pixels=0)
            assert m.shape == (H, W) and m.dtype == torch.int32
            assert s.shape == (0,) and s.dtype == acc_dtype(dtype)
            m, s, n = ref.cluster_seeds(torch.zeros(5, H, W, dtype=dtype), n_sigma=2,
                                        max_instances=3)
            assert s.shape == (3,) and int(n) == 0


# ======================================================================================
# Coordinates
# ======================================================================================


@pytest.mark.parametrize("dtype", FULL)
def test_grid_coordinates_continue_with_the_same_step(dtype):
    grid, extent = 24, 0.23
    xs = ref.grid_coordinates(64, grid, extent, dtype)
    assert xs.dtype == dtype and xs.shape == (64,)
    assert_bits_equal(xs[:grid], torch.linspace(0, extent, grid, dtype=dtype))
    step = extent / (grid - 1)
    assert_bits_equal(xs[grid:], extent + step * torch.arange(1, 64 - grid + 1, dtype=dtype))
    torch.testing.assert_close(xs.diff().double(), torch.full((63,), step, dtype=torch.float64),
                               rtol=1e-4 if dtype == torch.float32 else 1e-12, atol=0)
    assert_bits_equal(ref.grid_coordinates(10, grid, extent, dtype), xs[:10])
    # the default grid (never continued at test sizes) is SpatialEmbeddings' linspace
    assert_bits_equal(ref.grid_coordinates(100, 2048, 2.0, torch.float32),
                      torch.linspace(0, 2, 2048)[:100])


@given(seed=st.integers(0, 2**32 - 1), n_sigma=st.sampled_from([1, 2]),
       dtype=st.sampled_from(FULL))
def test_reference_beyond_the_grid_finds_the_scene(seed, n_sigma, dtype):
    """A 48x96 input on a 16x24 grid (same step, 0.01): instances in the continued part are
    found like the others."""
    scene = make_scene(seed, H=48, W=96, n_instances=5, n_sigma=n_sigma, speckles=3,
                       grid=(16, 24), extent=(0.15, 0.23), radius=(3.0, 6.0))
    expected = scene.expected_low_noise(0.5, 8)
    assert expected.max() > 0
    out_map, scores = ref.cluster_seeds(scene.prediction.to(dtype), threshold=0.5,
                                        min_pixels=8, **scene.kwargs())
    assert_map_equal(out_map, expected)
    assert scores.numel() == expected.max()


# ======================================================================================
# Portable math
# ======================================================================================

# the float32 constants of exp_p, as written in the C code (`f` literals)
_F32_CONSTANTS = ["-103.972084", "88.7228394", "1.44269504088896341", "12582912.0",
                  "0.693359375", "-2.12194440e-4", "1.9875691500e-4", "1.3981999507e-3",
                  "8.3334519073e-3", "4.1665795894e-2", "1.6666665459e-1", "5.0000001201e-1",
                  "1.0", "0.5", "10.0", "-2.0"]


def _f32_bits(v: float) -> int:
    return struct.unpack("<I", struct.pack("<f", v))[0]


def _nearest_f32(decimal: str) -> float:
    """The float32 nearest to the decimal (ties to even), by exact rational arithmetic: what
    a C compiler makes of the literal ``<decimal>f``."""
    q = Fraction(decimal)
    x = np.float32(float(decimal))
    cands = [x]
    for _ in range(3):
        cands += [np.nextafter(cands[-2 if len(cands) > 1 else 0], np.float32(np.inf)),
                  np.nextafter(cands[-2 if len(cands) > 1 else 0], np.float32(-np.inf))]
    cands = sorted({float(c) for c in cands})
    return min(cands, key=lambda c: (abs(Fraction(c) - q), _f32_bits(c) & 1))


@pytest.mark.parametrize("decimal", _F32_CONSTANTS)
def test_float32_constants_round_like_c_literals(decimal):
    """The reference rounds each constant decimal -> float64 -> float32 (a 0-dim float32
    tensor); C rounds the literal once. They agree for every constant used."""
    t = torch.tensor(float(decimal), dtype=torch.float32).item()
    assert _f32_bits(t) == _f32_bits(_nearest_f32(decimal))


def _probe_values(dtype: torch.dtype) -> torch.Tensor:
    """A wide range of logits: dense in [-120, 120] (float64: [-800, 800]), random
    magnitudes up to the dtype's max, both sides of every clamp bound of exp_p, subnormals,
    zeros, infinities and NaN."""
    fi = torch.finfo(dtype)
    g = torch.Generator().manual_seed(0)
    span = 120.0 if dtype == torch.float32 else 800.0
    parts = [torch.linspace(-span, span, 400_001, dtype=torch.float64).to(dtype),
             (torch.randn(100_000, generator=g, dtype=torch.float64) * 30).to(dtype),
             (torch.rand(20_000, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
             * torch.exp2(torch.randint(-160, 128 if dtype == torch.float32 else 1000,
                                        (20_000,), generator=g).to(dtype))]
    bounds = ([-103.972084, 88.7228394] if dtype == torch.float32
              else [-745.1332191019412, 709.782712893384])
    edge = []
    for b in bounds + [0.0]:
        t = torch.tensor([b, -b], dtype=dtype)
        for _ in range(4):
            edge += t.tolist()
            t = torch.nextafter(t, torch.full_like(t, math.inf))
        t = torch.tensor([b, -b], dtype=dtype)
        for _ in range(4):
            t = torch.nextafter(t, torch.full_like(t, -math.inf))
            edge += t.tolist()
    edge += [math.inf, -math.inf, math.nan, 0.0, -0.0, fi.tiny, -fi.tiny, fi.tiny / 8,
             -fi.tiny / 8, fi.max, -fi.max, fi.eps, 1e-30, -1e-30, 0.5, -0.5, 1.0, -1.0]
    parts.append(torch.tensor(edge, dtype=dtype))
    return torch.cat(parts)


def _kernel_sigmoid(z: torch.Tensor) -> torch.Tensor:
    """The kernels' sigmoid_p: assemble_masks with one prototype, coefficient 1 and a box
    covering everything returns sigmoid(protos * 1), rounded once to the protos' dtype."""
    protos = z.view(-1, 1, 1)
    out = segops.assemble_masks(protos, torch.ones(1, 1, dtype=z.dtype),
                                torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=z.dtype))
    return out[0, :, 0]


@pytest.mark.parametrize("dtype", FULL)
def test_sigmoid_p_is_the_kernels_bit_for_bit(dtype):
    z = _probe_values(dtype)
    expected = _kernel_sigmoid(z)
    got = ref.sigmoid_p(z)
    assert torch.equal(torch.isnan(got), torch.isnan(expected))
    ok = ~torch.isnan(expected)
    assert_bits_equal(got[ok], expected[ok], f"sigmoid_p {dtype}")
    # the probe reaches subnormal outputs, 0, 1 and 0.5
    fi = torch.finfo(dtype)
    assert ((got > 0) & (got < fi.tiny)).sum() > 100
    assert (got == 0).any() and (got == 1).any() and (got == 0.5).any()
    # within a few ulp of torch's sigmoid away from the subnormals
    normal = ok & (got.abs() >= fi.tiny)
    torch.testing.assert_close(got[normal], torch.sigmoid(z[normal]),
                               rtol=4 * fi.eps, atol=0)


@pytest.mark.parametrize("dtype", FULL)
def test_exp_p_and_tanh_p_accuracy_and_specials(dtype):
    """Sanity of the mirrors beyond sigmoid (their bits are checked end to end by the
    cluster kernel tests): exp_p within 3 ulp of exp, tanh_p within 4 ulp of 1 of tanh,
    tanh_p odd, and the special values."""
    fi = torch.finfo(dtype)
    z = _probe_values(dtype)
    z = z[~torch.isnan(z)]
    e = ref.exp_p(z)
    exact = torch.exp(z.double())
    normal = (exact >= fi.tiny) & (exact <= fi.max / 2)
    rel = ((e[normal].double() - exact[normal]) / exact[normal]).abs()
    assert rel.max() <= 3 * fi.eps
    lo, hi = (-103.972084, 88.7228394) if dtype == torch.float32 else (-745.1332191019412,
                                                                     709.782712893384)
    assert (e[z < torch.tensor(lo, dtype=dtype)] == 0).all()
    assert torch.isinf(e[z > torch.tensor(hi, dtype=dtype)]).all()
    assert ref.exp_p(torch.tensor(0.0, dtype=dtype)) == 1
    assert torch.isnan(ref.exp_p(torch.tensor(math.nan, dtype=dtype)))

    t = ref.tanh_p(z)
    assert (t.double() - torch.tanh(z.double())).abs().max() <= 4 * fi.eps
    assert torch.equal(ref.tanh_p(-z), -t)  # odd (tanh_p(-0.0) is +0.0)
    specials = torch.tensor([math.inf, -math.inf, 0.0, math.nan], dtype=dtype)
    ts = ref.tanh_p(specials)
    assert ts[:3].tolist() == [1.0, -1.0, 0.0] and math.isnan(ts[3].item())
    with pytest.raises(TypeError):
        ref.exp_p(torch.zeros(2, dtype=torch.float16))


def test_scores_dtype_and_half_inputs():
    """Half inputs are converted to float32 first: exactly the float32 result of the
    converted prediction."""
    scene = make_scene(3, H=48, W=80, n_instances=4, speckles=2, radius=(3.0, 6.0))
    for dtype in (torch.float16, torch.bfloat16):
        pred = scene.prediction.to(dtype)
        m, s = ref.cluster_seeds(pred, min_pixels=5, **scene.kwargs())
        m32, s32 = ref.cluster_seeds(pred.float(), min_pixels=5, **scene.kwargs())
        assert s.dtype == torch.float32 and s.numel() > 0
        assert torch.equal(m, m32) and torch.equal(bits(s), bits(s32))
