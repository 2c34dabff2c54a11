"""PANet (models/panet.py, docs/models.md): the bottom-up path against the explicit composition of
its own layers, adaptive feature pooling (every level, one unshared first layer per level,
max over levels), the class-agnostic fully-connected fusion, and PANetHeads on top of
MaskRCNNHeads. Small channel counts keep the suite to a few seconds on CPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import segops
from segops.models import mask_rcnn as MR
from segops.models import panet as PA

from helpers.fpn import pyramid, training_scene

SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
SETTINGS = {"torchvision": (2, False), "detectron2": (0, True)}


def _randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


ROIS = torch.tensor([[0, 4.0, 6.0, 30.0, 28.0],  # small: P2 under the LevelMapper
                     [0, 10.0, 0.0, 127.0, 120.0], [0, 50.0, 60.0, 90.0, 70.0]])


# ---------------------------------------------------------------------------------------
# bottom-up path
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bottom_up_path_is_the_explicit_composition(dtype):
    path = PA.BottomUpPath(8, gn_groups=4).to(dtype)
    _randomize(path, seed=1)
    feats = pyramid(batch=2, dtype=dtype, seed=2)
    with torch.no_grad():
        out = path(feats)
    assert out[0] is feats[0]  # N2 = P2
    assert [o.shape for o in out] == [f.shape for f in feats]
    assert all(o.dtype == dtype for o in out)

    def block(seq, x, stride):
        conv, gn = seq[0], seq[1]
        assert conv.bias is None and gn.num_groups == 4
        y = F.conv2d(x, conv.weight, None, stride=stride, padding=1)
        return F.relu(F.group_norm(y, 4, gn.weight, gn.bias, gn.eps))

    with torch.no_grad():
        for i in range(3):
            d = block(path.down[i], out[i], 2)  # from N_i, the module's own output
            want = block(path.fuse[i], d + feats[i + 1], 1)
            tol = 1e-5 if dtype == torch.float32 else 1e-12
            torch.testing.assert_close(out[i + 1], want, rtol=tol, atol=tol)


def test_bottom_up_path_bad_input():
    path = PA.BottomUpPath(8, gn_groups=4)
    feats = pyramid()
    with pytest.raises(ValueError, match="`features` must hold 4 levels"):
        path(feats[:3])
    with pytest.raises(ValueError, match=r"`features\[2\]` must have 8 channels"):
        path([*feats[:2], feats[2][:, :6], feats[3]])
    with pytest.raises(ValueError, match=r"`features\[1\]` must be \(16, 16\)"):
        path([feats[0], feats[1][..., :15, :], *feats[2:]])
    with pytest.raises(ValueError, match="`gn_groups`"):
        PA.BottomUpPath(8, gn_groups=3)


# ---------------------------------------------------------------------------------------
# adaptive feature pooling
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["torchvision", "detectron2"])
def test_pooling_is_every_level(flavour):
    feats = pyramid(seed=3)
    head = PA.AdaptiveMaskHead(2, 8, 8, flavour=flavour)
    pooled = head.pooler(feats, ROIS)
    assert pooled.shape == (4, 3, 8, 14, 14)
    sr, aligned = SETTINGS[flavour]
    for lvl in range(4):
        assert torch.equal(pooled[lvl], segops.roi_align(feats[lvl], ROIS, 14, SCALES[lvl], sr,
                                                         aligned))


def test_perturbing_level_3_changes_a_small_box():
    """ROIS[0] is P2-sized: pooled by assignment, level 3 (P5) would not matter."""
    feats = pyramid(seed=4)
    bumped = [f.clone() for f in feats]
    bumped[3] += 5 * torch.randn(bumped[3].shape, generator=torch.Generator().manual_seed(5))
    box = PA.AdaptiveBoxHead(2, 8, 16)
    mask = PA.AdaptiveMaskHead(2, 8, 8)
    _randomize(box, 6), _randomize(mask, 7)
    with torch.no_grad():
        assert not torch.allclose(box(feats, ROIS[:1])[0], box(bumped, ROIS[:1])[0])
        assert not torch.allclose(mask(feats, ROIS[:1]), mask(bumped, ROIS[:1]))
        assign = MR.FPNRoIAlign(7, 8)
        assert torch.equal(assign(feats, ROIS[:1]), assign(bumped, ROIS[:1]))


@pytest.mark.parametrize("norm_groups", [None, 2])
def test_grouped_first_conv_is_per_level_convs_then_max(norm_groups):
    head = PA.AdaptiveMaskHead(3, 6, 8, norm_groups=norm_groups)
    _randomize(head, seed=8)
    pooled = torch.randn(4, 5, 6, 14, 14, generator=torch.Generator().manual_seed(9))
    conv = head.conv1[0]
    assert conv.groups == 4 and conv.weight.shape == (4 * 8, 6, 3, 3)
    per_level = []
    with torch.no_grad():
        for lvl in range(4):
            sl = slice(8 * lvl, 8 * (lvl + 1))
            y = F.conv2d(pooled[lvl], conv.weight[sl],
                         None if conv.bias is None else conv.bias[sl], padding=1)
            if norm_groups is not None:
                gn = head.conv1[1]
                y = F.group_norm(y, norm_groups, gn.weight[sl], gn.bias[sl], gn.eps)
            per_level.append(F.relu(y))
        got = head.fuse(pooled)
    want = torch.stack(per_level).amax(0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got.shape == (5, 8, 14, 14)


def test_box_first_fc_is_per_level_then_max():
    head = PA.AdaptiveBoxHead(3, 6, 16)
    assert head.fc6_weight.shape == (4, 6 * 49, 16) and head.fc6_bias.shape == (4, 16)
    pooled = torch.randn(4, 5, 6, 7, 7, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        per_level = [F.relu(F.linear(pooled[lvl].flatten(1), head.fc6_weight[lvl].T,
                                     head.fc6_bias[lvl])) for lvl in range(4)]
        got = head.fuse(pooled)
    torch.testing.assert_close(got, torch.stack(per_level).amax(0), rtol=1e-5, atol=1e-5)


def test_fusion_is_the_max_over_levels():
    """Zero weights, per-level biases: the fused value is max_l ReLU(b_l), not a sum/mean."""
    head = PA.AdaptiveBoxHead(3, 6, 4)
    bias = torch.tensor([[1.0, -1.0, 0.5, 2.0], [3.0, -2.0, 0.0, 1.0],
                         [-1.0, -3.0, 4.0, 1.5], [2.0, -0.5, 1.0, 0.0]])
    with torch.no_grad():
        head.fc6_weight.zero_()
        head.fc6_bias.copy_(bias)
        got = head.fuse(torch.randn(4, 2, 6, 7, 7))
    assert torch.equal(got, torch.tensor([[3.0, 0.0, 4.0, 2.0]] * 2))


# ---------------------------------------------------------------------------------------
# fully-connected fusion
# ---------------------------------------------------------------------------------------


def test_fc_fusion_is_class_agnostic():
    head = PA.AdaptiveMaskHead(4, 6, 8)
    _randomize(head, seed=11)
    feats = pyramid(channels=6, seed=12)
    with torch.no_grad():
        pooled = head.pooler(feats, ROIS)
        x3 = head.conv3(head.conv2(head.fuse(pooled)))
        fcn = head.predictor(F.relu(head.deconv(head.conv4(x3))))
        ff = F.relu(head.fc(head.conv5_fc(head.conv4_fc(x3)).flatten(1))).reshape(3, 1, 28, 28)
        logits = head(feats, ROIS)
    assert head.conv4_fc[0].out_channels == 8 and head.conv5_fc[0].out_channels == 4
    assert head.fc.in_features == 4 * 14 * 14 and head.fc.out_features == 28 * 28
    assert logits.shape == (3, 4, 28, 28) and ff.ge(0).all() and ff.gt(0).any()
    torch.testing.assert_close(logits, fcn + ff)
    for a, b in [(0, 1), (1, 3), (2, 0)]:
        torch.testing.assert_close(logits[:, a] - logits[:, b], fcn[:, a] - fcn[:, b])
    # the fc term moves every class together
    with torch.no_grad():
        head.fc.bias += 1.0
        moved = head(feats, ROIS)
    diff = moved - logits
    torch.testing.assert_close(diff, diff[:, :1].expand_as(diff))
    assert diff.abs().sum() > 0


# ---------------------------------------------------------------------------------------
# PANetHeads
# ---------------------------------------------------------------------------------------


def _heads(flavour="torchvision", **kw):
    return PA.PANetHeads(3, flavour, in_channels=8, representation_size=16, mask_channels=8,
                         gn_groups=4, **kw)


def test_default_sizes():
    heads = PA.PANetHeads(5)
    assert heads.box_head.fc6_weight.shape == (4, 256 * 49, 1024)
    assert heads.mask_head.conv1[0].weight.shape == (4 * 256, 256, 3, 3)
    assert heads.bottom_up.down[0][1].num_groups == 32
    assert heads.mask_head.conv5_fc[0].out_channels == 128
    assert heads.mask_head.fc.out_features == 28 * 28


@pytest.mark.parametrize("flavour", ["torchvision", "detectron2"])
def test_panet_heads_train_and_eval(flavour):
    torch.manual_seed(0)
    heads = _heads(flavour)
    assert isinstance(heads, MR.MaskRCNNHeads)
    feats = [f.requires_grad_() for f in pyramid(batch=2, seed=13)]
    targets, proposals = training_scene()
    losses = heads.train()(feats, proposals, targets=targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask"}
    losses["loss_mask"].backward()
    # through the bottom-up path and all-level pooling, every level gets a gradient
    assert all(f.grad.abs().sum() > 0 for f in feats)

    # the losses are MaskRCNNHeads' on N2..N5
    with torch.no_grad():
        n = heads.bottom_up(feats)
        again = MR.MaskRCNNHeads.forward(heads, n, proposals, targets=targets)
        once = heads(feats, proposals, targets=targets)
    assert all(torch.equal(once[k], again[k]) for k in once)

    heads.eval()
    with torch.no_grad():
        dets = heads(feats, proposals, [(128, 128), (120, 100)])
    for d, size in zip(dets, [(128, 128), (120, 100)]):
        k = d["labels"].shape[0]
        assert d["boxes"].shape == (k, 4) and d["masks"].shape == (k, *size)
        assert d["masks"].dtype == torch.bool and d["mask_probs"].shape == (k, 28, 28)


def test_panet_dtypes():
    heads = _heads().double().eval()
    feats = pyramid(batch=1, dtype=torch.float64, seed=14)
    with torch.no_grad():
        cls, box = heads.box_head(heads.bottom_up(feats), ROIS.double())
        logits = heads.mask_head(heads.bottom_up(feats), ROIS.double())
        (det,) = heads(feats, [ROIS[:, 1:].double()], [(128, 128)])
    assert cls.shape == (3, 4) and box.shape == (3, 12) and logits.shape == (3, 3, 28, 28)
    assert cls.dtype == box.dtype == logits.dtype == det["scores"].dtype == torch.float64


def test_bad_input_names_the_argument():
    feats = pyramid()
    head = PA.AdaptiveMaskHead(2, 8, 8)
    with pytest.raises(ValueError, match="`features` must hold 4 levels"):
        head(feats[:2], ROIS)
    with pytest.raises(ValueError, match="`rois` must be"):
        head(feats, ROIS[:, :4])
    with pytest.raises(ValueError, match="`pooled`"):
        head.fuse(torch.zeros(3, 1, 8, 14, 14))
    with pytest.raises(ValueError, match="`pooled`"):
        PA.AdaptiveBoxHead(2, 8, 16).fuse(torch.zeros(4, 1, 8, 7))
    with pytest.raises(ValueError, match="`norm_groups`"):
        PA.AdaptiveMaskHead(2, 8, 8, norm_groups=3)
    with pytest.raises(ValueError, match=r"`features\[0\]` must have 8 channels"):
        _heads().eval()([f[:, :4] for f in feats], [ROIS[:, 1:]], [(128, 128)])
