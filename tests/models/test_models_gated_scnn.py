"""Gated-SCNN model (models/gated_scnn.py, docs/models.md): the gated convolution against an explicit
composition of its formula, the shape stream, and the dual-task loss -- the paper's
definition on hand-built label maps whose values are derived here, the release's behaviour
(no spatial gradient at all), and that the two differ.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segops.models import gated_scnn as G


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _bn(x, bn):
    return (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None]
                                                             + bn.eps) * \
        bn.weight[:, None, None] + bn.bias[:, None, None]


def _conv1x1(x, conv):
    y = torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], x)
    return y if conv.bias is None else y + conv.bias[:, None, None]


def _onehot_logits(labels: torch.Tensor, k: int, scale: float = 20.0) -> torch.Tensor:
    """Logits whose tempered softmax is the one-hot of `labels` to float32 precision."""
    return F.one_hot(labels, k).permute(0, 3, 1, 2).float() * scale


def _step(n=1, h=4, w=8, col=4):
    """Labels: class 0 left of column `col`, class 1 from `col` on."""
    t = torch.zeros(n, h, w, dtype=torch.int64)
    t[..., col:] = 1
    return t


# ======================================================================================
# gated convolution, shape stream
# ======================================================================================


def test_gate_formula_matches_explicit_composition():
    gcl = G.GatedSpatialConv(6, 5).eval()
    _randomize(gcl, seed=1)
    gen = torch.Generator().manual_seed(2)
    s, r = torch.randn(2, 6, 4, 5, generator=gen), torch.randn(2, 1, 4, 5, generator=gen)
    seq = gcl.gate_conv
    with torch.no_grad():
        x = _bn(torch.cat([s, r], dim=1), seq[0])
        x = _conv1x1(torch.relu(_conv1x1(x, seq[1])), seq[3])
        alpha = torch.sigmoid(_bn(x, seq[4]))
        want = _conv1x1(s * (alpha + 1), gcl.conv)
        got_alpha, got = gcl.gate(s, r), gcl(s, r)
    assert got_alpha.shape == (2, 1, 4, 5) and got.shape == (2, 5, 4, 5)
    assert ((got_alpha > 0) & (got_alpha < 1)).all()
    torch.testing.assert_close(got_alpha, alpha, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert gcl.conv.bias is None


def test_gate_with_several_gate_channels():
    gcl = G.GatedSpatialConv(3, 2, gate_channels=4)
    out = gcl(torch.randn(1, 3, 2, 2), torch.randn(1, 4, 2, 2))
    assert out.shape == (1, 2, 2, 2)


def test_shape_stream_shapes_and_backward():
    torch.manual_seed(0)
    ss = G.ShapeStream(in_channels=8, side_channels=(6, 7, 9), widths=(6, 4, 2)).train()
    feat = torch.randn(2, 8, 8, 8, requires_grad=True)
    sides = [torch.randn(2, 6, 4, 4), torch.randn(2, 7, 2, 2), torch.randn(2, 9, 2, 2)]
    logits = ss(feat, sides, size=(16, 12))
    assert logits.shape == (2, 1, 16, 12)
    F.binary_cross_entropy_with_logits(logits, torch.rand(2, 1, 16, 12)).backward()
    assert feat.grad is not None and feat.grad.abs().sum() > 0
    for gate in ss.gates:
        w = gate.gate_conv[1].weight.grad
        assert w is not None and torch.isfinite(w).all()
    assert ss(feat, sides).shape == (2, 1, 8, 8)  # default size: the feature's


# ======================================================================================
# dual-task loss
# ======================================================================================


def test_boundary_magnitude_of_a_step_is_one_half_on_both_sides():
    # two-class vertical step between columns 3 and 4: each class's central difference is
    # -/+ 1/2 at columns 3 and 4 and 0 elsewhere; the norm over both classes is
    # sqrt(1/4 + 1/4) = 1/sqrt(2), times 1/sqrt(2) -> 1/2
    onehot = F.one_hot(_step(), 2).permute(0, 3, 1, 2).float()
    zeta = G.boundary_magnitude(onehot, sigma=0)
    want = torch.zeros(1, 4, 8)
    want[..., 3:5] = 0.5
    assert zeta.shape == (1, 4, 8)
    torch.testing.assert_close(zeta, want)
    # a horizontal step is the same, transposed
    torch.testing.assert_close(G.boundary_magnitude(onehot.transpose(2, 3), sigma=0),
                               want.transpose(1, 2))
    # smoothing spreads and lowers the peak but keeps the mass symmetric about the step
    smooth = G.boundary_magnitude(onehot, sigma=1.0)
    assert smooth[..., 3].max() < 0.5 and (smooth[..., 2] > 0).all()
    torch.testing.assert_close(smooth[..., 3], smooth[..., 4])


def test_paper_loss_zero_for_perfect_prediction():
    target = _step(2)
    loss = G.dual_task_loss(_onehot_logits(target, 2), target, gumbel=False, sigma=1.0)
    assert loss.abs().item() < 1e-6


def test_paper_loss_for_a_boundary_one_pixel_off_is_one_third():
    # GT boundary at columns 3|4 (zeta_hat = 1/2 on columns 3, 4), prediction at 4|5
    # (zeta = 1/2 on columns 4, 5): p+ = columns 3, 4, 5 with |diff| = 1/2, 0, 1/2 -> 1/3
    target, pred = _step(col=4), _step(col=5)
    loss = G.dual_task_loss(_onehot_logits(pred, 2), target, gumbel=False, sigma=0)
    torch.testing.assert_close(loss, torch.tensor(1 / 3))
    # the release's version sees per-pixel probabilities only: one column of H pixels differs
    # in both classes by sqrt(1 + 1e-6)/max - sqrt(1e-6)/max ~ 1, over C * H * W entries
    rel = G.dual_task_loss(_onehot_logits(pred, 2), target, gumbel=False, release=True)
    per_entry = 1 - math.sqrt(1e-6) / math.sqrt(2 + 1e-6)
    torch.testing.assert_close(rel, torch.tensor(2 * 4 * per_entry / (2 * 4 * 8)))
    assert abs(loss.item() - rel.item()) > 0.2


def test_release_loss_is_its_explicit_formula():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 5, 6, generator=gen)
    target = torch.randint(0, 3, (2, 5, 6), generator=gen)
    target[0, 1, 2] = 255
    got = G.dual_task_loss(logits, target, tau=0.5, gumbel=False, release=True)
    # release: logits zeroed and label 0 at ignored pixels; no smoothing, no gradient
    ign = (target == 255)[:, None]
    p = torch.softmax(torch.where(ign, 0.0, logits) / 0.5, dim=1)
    oh = F.one_hot(torch.where(target == 255, 0, target), 3).permute(0, 3, 1, 2).float()

    def m(e):
        v = torch.sqrt(2 * e * e + 1e-6)
        return v / v.max()

    want = (m(p) - m(oh)).abs().mean()  # both >= 1e-8 masks cover everything
    torch.testing.assert_close(got, want)


def test_release_has_no_spatial_operator_but_the_paper_does():
    # permuting pixels (the same way in prediction and target) leaves the release's loss
    # unchanged -- its "gradient" helper returns its input -- but not the paper's
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(1, 3, 6, 6, generator=gen)
    target = torch.randint(0, 3, (1, 6, 6), generator=gen)
    perm = torch.randperm(36, generator=gen)
    lp = logits.flatten(2)[..., perm].reshape(1, 3, 6, 6)
    tp = target.flatten(1)[..., perm].reshape(1, 6, 6)
    kw = dict(gumbel=False)
    torch.testing.assert_close(G.dual_task_loss(logits, target, release=True, **kw),
                               G.dual_task_loss(lp, tp, release=True, **kw))
    assert not torch.allclose(G.dual_task_loss(logits, target, **kw),
                              G.dual_task_loss(lp, tp, **kw))


def test_paper_loss_ignores_ignored_pixels():
    target, pred = _step(col=4), _step(col=5)
    logits = _onehot_logits(pred, 2)
    assert G.dual_task_loss(logits, target, gumbel=False, sigma=0).item() > 0
    # ignoring column 4, the only one where they disagree: both maps get an all-zero class
    # vector there and are then identical (to float precision), so the loss vanishes
    t2 = target.clone()
    t2[..., 4] = 255
    assert G.dual_task_loss(logits, t2, gumbel=False, sigma=1.0).item() < 1e-6
    everything = torch.full_like(target, 255)
    assert G.dual_task_loss(logits, everything, gumbel=False).item() == 0.0


def test_gumbel_noise_uses_the_generator_and_gradients_are_finite():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 4, 8, 8, generator=gen, requires_grad=True)
    target = torch.randint(0, 4, (2, 8, 8), generator=gen)
    a = G.dual_task_loss(logits, target, generator=torch.Generator().manual_seed(9))
    b = G.dual_task_loss(logits, target, generator=torch.Generator().manual_seed(9))
    c = G.dual_task_loss(logits, target, generator=torch.Generator().manual_seed(10))
    assert a.item() == b.item() != c.item()
    a.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # flat regions (zero magnitude) give zero, not NaN, gradients
    flat = torch.zeros(1, 2, 4, 4, requires_grad=True)
    G.dual_task_loss(flat, torch.zeros(1, 4, 4, dtype=torch.int64), gumbel=False).backward()
    assert torch.isfinite(flat.grad).all()
    loss = G.DualTaskLoss(gumbel=False, release=True)(logits, target)
    assert loss.dim() == 0


def test_bad_input_names_the_argument():
    gcl = G.GatedSpatialConv(4, 4)
    with pytest.raises(ValueError, match="`r`"):
        gcl(torch.randn(1, 4, 3, 3), torch.randn(1, 2, 3, 3))
    with pytest.raises(ValueError, match="`s`"):
        gcl(torch.randn(1, 3, 3, 3), torch.randn(1, 1, 3, 3))
    with pytest.raises(ValueError, match="`r`"):
        gcl(torch.randn(1, 4, 3, 3), torch.randn(1, 1, 2, 3))
    logits = torch.randn(1, 3, 4, 4)
    with pytest.raises(TypeError, match="`target`"):
        G.dual_task_loss(logits, torch.zeros(1, 4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="`target`"):
        G.dual_task_loss(logits, torch.zeros(1, 4, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="`target`"):
        G.dual_task_loss(logits, torch.full((1, 4, 4), 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="`tau`"):
        G.dual_task_loss(logits, torch.zeros(1, 4, 4, dtype=torch.int64), tau=0)
    with pytest.raises(ValueError, match="`sides`"):
        G.ShapeStream(4, (2, 2, 2), (2, 2, 2))(torch.randn(1, 4, 4, 4), [])
    with pytest.raises(TypeError, match="unknown"):
        G.DualTaskLoss(sigmaa=1.0)
