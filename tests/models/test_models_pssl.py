"""PSSL (models/pssl.py, docs/models.md): pseudo labels from ensembles of explanation maps (min-max
normalisation per map, average, top decile = the image's class, the rest background = K) and
the weighted cross-entropy (background weight 0.1), on hand-built inputs whose results are
derived here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segops.models import pssl as P

K = 5


def test_top_decile_of_distinct_scores_is_the_ten_highest_of_100():
    g = torch.Generator().manual_seed(0)
    values = torch.randperm(100, generator=g).float().reshape(1, 1, 10, 10)
    labels = P.pssl_pseudo_labels(values, torch.tensor([3]), K)
    assert labels.shape == (1, 10, 10) and labels.dtype == torch.int64
    # pixel with value v has exactly v strictly lower pixels: top iff 10 v >= 900
    torch.testing.assert_close(labels[0], torch.where(values[0, 0] >= 90, 3, K))
    assert (labels == 3).sum() == 10


def test_each_map_is_normalised_before_averaging():
    # 20 pixels: the top decile is the pixels with >= 18 strictly lower. A = i^2 and
    # B = 1000 (19 - i) normalise to i^2 / 361 and (19 - i) / 19, whose mean is
    # 0.5 + i (i - 19) / 722: 0.5 at i = 0 and i = 19, lower in between -> top = {0, 19}.
    # (Unnormalised, B would dominate and pick pixels 0 and 1.)
    i = torch.arange(20.0)
    maps = torch.stack([i * i, 1000 * (19 - i)]).reshape(1, 2, 4, 5)
    labels = P.pssl_pseudo_labels(maps, torch.tensor([1]), K).flatten()
    want = torch.full((20,), K)
    want[[0, 19]] = 1
    assert torch.equal(labels, want)
    # an affine copy of a map (positive scale) changes nothing
    one = P.pssl_pseudo_labels(maps[:, :1], torch.tensor([1]), K)
    two = P.pssl_pseudo_labels(torch.cat([maps[:, :1], 7 * maps[:, :1] - 3], 1),
                               torch.tensor([1]), K)
    assert torch.equal(one, two)


def test_ties_share_a_decile_and_top_never_exceeds_ten_percent():
    # a constant map: no pixel has anything strictly lower -> decile 0 -> all background
    flat = torch.full((1, 3, 6, 7), 2.5)
    assert (P.pssl_pseudo_labels(flat, torch.tensor([0]), K) == K).all()
    # 15 tied maxima among 100 pixels: each has 85 strictly lower -> decile 8 -> background
    x = torch.arange(100.0)
    x[85:] = 85
    assert (P.pssl_pseudo_labels(x.reshape(1, 1, 10, 10), torch.tensor([0]), K) == K).all()
    # many ties, random: the top decile is at most 10% and is an upper set of the scores
    g = torch.Generator().manual_seed(1)
    ex = torch.randint(0, 6, (4, 3, 9, 11), generator=g).float()
    labels = P.pssl_pseudo_labels(ex, torch.tensor([0, 1, 2, 3]), K)
    score = ((ex - ex.amin((2, 3), keepdim=True)) /
             (ex.amax((2, 3), keepdim=True) - ex.amin((2, 3), keepdim=True))).mean(1)
    for b in range(4):
        top = labels[b] == b
        assert top.sum() <= 99 // 10 and ((labels[b] == b) | (labels[b] == K)).all()
        if top.any():
            assert score[b][top].min() > score[b][~top].max()


def test_per_image_classes_and_batch():
    g = torch.Generator().manual_seed(2)
    ex = torch.rand(3, 4, 5, 8, generator=g)
    labels = P.pssl_pseudo_labels(ex, torch.tensor([0, 4, 2]), K)
    for b, c in enumerate([0, 4, 2]):
        assert set(labels[b].unique().tolist()) == {c, K}
        assert (labels[b] == c).sum() == 4  # 40 distinct scores: 40 - ceil(0.9 * 40)


def test_class_weights_and_weighted_cross_entropy():
    w = P.pssl_class_weights(3)
    assert w.tolist() == pytest.approx([1.0, 1.0, 1.0, 0.1])
    # two pixels: class 0 and background (index K = 2); a third is ignored (K + 1 = 3)
    logits = torch.tensor([[1.0, 3.0, 0.5], [0.2, -1.0, 2.0], [5.0, 0.0, 0.0]])
    logits = logits.T.reshape(1, 3, 1, 3).clone().requires_grad_(True)
    labels = torch.tensor([[[0, 2, 3]]])
    loss = P.pssl_loss(logits, labels)
    ls = torch.log_softmax(logits.detach()[0, :, 0].T, dim=-1)  # [pixel, class]
    want = (-ls[0, 0] * 1.0 - ls[1, 2] * 0.1) / (1.0 + 0.1)
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(P.PSSLLoss()(logits, labels), want)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[0, :, 0, 2].abs().sum() == 0
    # background weight 1: plain mean
    torch.testing.assert_close(P.pssl_loss(logits, labels, background_weight=1.0),
                               (-ls[0, 0] - ls[1, 2]) / 2)


def test_pseudo_labels_train_a_segmentation_net():
    torch.manual_seed(3)
    ex = torch.rand(2, 3, 8, 8)
    target = P.pssl_pseudo_labels(ex, torch.tensor([1, 2]), K)
    net = torch.nn.Conv2d(3, K + 1, 3, padding=1)
    loss = P.pssl_loss(net(torch.randn(2, 3, 8, 8)), target)
    loss.backward()
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0
    # 64 distinct scores per image: top iff >= 58 lower (10 * 58 >= 9 * 64): 6 pixels
    assert F.one_hot(target, K + 1).sum((0, 1, 2))[K] == 2 * (64 - 6)


def test_bad_input_names_the_argument():
    ex = torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match="`image_labels`"):
        P.pssl_pseudo_labels(ex, torch.tensor([1]), K)
    with pytest.raises(ValueError, match="`image_labels`"):
        P.pssl_pseudo_labels(ex, torch.tensor([1, 2], dtype=torch.int32), K)
    with pytest.raises(ValueError, match="`explanations`"):
        P.pssl_pseudo_labels(ex[0], torch.tensor([1, 2]), K)
    with pytest.raises(TypeError, match="`explanations`"):
        P.pssl_pseudo_labels(ex.long(), torch.tensor([1, 2]), K)
    with pytest.raises(ValueError, match="`num_classes`"):
        P.pssl_pseudo_labels(ex, torch.tensor([1, 2]), 0)
    with pytest.raises(ValueError, match="`labels`"):
        P.pssl_loss(torch.randn(2, 6, 4, 4), torch.zeros(2, 4, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="`logits`"):
        P.pssl_loss(torch.randn(2, 6, 4), torch.zeros(2, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="`background_weight`"):
        P.pssl_class_weights(3, background_weight=-1.0)
