"""YOLACT's training loss (models/yolact_loss.py): every term and the total against our
transcription of the release's MultiBoxLoss (tests/helpers/yolact_release_post.py), the
mask loss on its own, gradients, and a few optimisation steps on a synthetic scene.
"""

from __future__ import annotations

import pytest
import torch
from helpers.yolact_release_post import released_loss
from helpers.yolact_scenes import SIZES_550, as_release, ellipse_masks, small_model

from segops.models import yolact as Y

TERMS = [("B", "box"), ("C", "conf"), ("M", "mask"), ("S", "semantic"), ("T", "total")]


def scene(size=550, batch=2, seed=0):
    """Random raw predictions (81 classes, 550x550 anchors) and GT with a crowd box."""
    g = torch.Generator().manual_seed(seed)
    priors = Y.make_priors(SIZES_550)
    n, k = priors.shape[0], 32
    preds = {
        "loc": (torch.randn(batch, n, 4, generator=g) * 0.5).requires_grad_(),
        "conf": (torch.randn(batch, n, 81, generator=g) * 2).requires_grad_(),
        "coeffs": torch.tanh(torch.randn(batch, n, k, generator=g)).requires_grad_(),
        "protos": torch.rand(batch, 138, 138, k, generator=g).requires_grad_(),
        "segm": torch.randn(batch, 80, 69, 69, generator=g).requires_grad_(),
        "priors": priors,
    }
    px = [torch.tensor([[60.0, 80.0, 300.0, 260.0], [320.0, 200.0, 500.0, 530.0],
                        [100.0, 330.0, 180.0, 400.0], [30.0, 40.0, 130.0, 120.0],
                        [250.0, 20.0, 540.0, 190.0], [0.0, 0.0, 250.0, 200.0]]),
          torch.tensor([[10.0, 10.0, 540.0, 300.0], [200.0, 250.0, 260.0, 320.0],
                        [400.0, 400.0, 470.0, 520.0]])][:batch]
    labels = [torch.tensor([0, 2, 1, 0, 7, 0]), torch.tensor([5, 5, 79])][:batch]
    num_crowds = [1, 0][:batch]  # the last GT of image 0 is a crowd
    return preds, [b / size for b in px], labels, [ellipse_masks(b, size, size) for b in px], \
        num_crowds


@pytest.mark.parametrize("masks_to_train", [100, 4])
def test_loss_terms_and_total_match_the_release(masks_to_train):
    """B, C and S bitwise; M (segops' own lincomb summation) and the total to float32
    rounding; gradients likewise. masks_to_train=4 draws the release's random subset
    (same global-RNG draws)."""
    preds, boxes, labels, masks, crowds = scene()
    loss_fn = Y.YolactLoss(81, masks_to_train=masks_to_train)
    torch.manual_seed(7)
    ours = loss_fn(preds, boxes, labels, masks, crowds)
    torch.manual_seed(7)
    ref = released_loss(as_release(preds), boxes, labels, masks, crowds,
                        masks_to_train=masks_to_train)
    pos = [int((Y.match(b[:len(b) - c], lab[:len(lab) - c], preds["priors"],
                        crowd_boxes=b[len(b) - c:])[0] > 0).sum())
           for b, lab, c in zip(boxes, labels, crowds)]
    assert min(pos) > masks_to_train or masks_to_train == 100  # the subsample is exercised
    for rk, ok in TERMS:
        assert ours[ok].dim() == 0 and ours[ok] > 0
        if rk in ("B", "C", "S"):
            assert torch.equal(ours[ok], ref[rk]), rk
        else:
            torch.testing.assert_close(ours[ok], ref[rk], rtol=1e-6, atol=0)
    inputs = [preds[k] for k in ("loc", "conf", "coeffs", "protos", "segm")]
    grads = torch.autograd.grad(ours["total"], inputs)
    ref_grads = torch.autograd.grad(ref["T"], inputs)
    for name, a, b in zip(("loc", "conf", "coeffs", "protos", "segm"), grads, ref_grads):
        assert b.abs().sum() > 0, name
        if name in ("loc", "conf", "segm"):
            assert torch.equal(a, b), name
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * b.abs().max().item())


def test_loss_weights_and_normalisations():
    """Each term scales with its own weight; box, mask and conf are divided by the batch's
    positive count, the semantic term by the batch size."""
    preds, boxes, labels, masks, crowds = scene()
    base = Y.YolactLoss(81)(preds, boxes, labels, masks, crowds, generator=None)
    doubled = Y.YolactLoss(81, bbox_alpha=3.0, conf_alpha=2.0, mask_alpha=12.25,
                           semantic_alpha=2.0)(preds, boxes, labels, masks, crowds)
    for k in ("box", "conf", "mask", "semantic"):
        torch.testing.assert_close(doubled[k], 2 * base[k])
    # one image alone: the semantic term is that image's, not halved
    one = Y.YolactLoss(81)({k: (v[:1] if k != "priors" else v) for k, v in preds.items()},
                           boxes[:1], labels[:1], masks[:1], crowds[:1])
    ref = released_loss(as_release({k: (v[:1] if k != "priors" else v) for k, v in preds.items()}),
                        boxes[:1], labels[:1], masks[:1], crowds[:1])
    assert torch.equal(one["semantic"], ref["S"]) and torch.equal(one["conf"], ref["C"])


def test_loss_without_positives_or_gt_is_finite():
    preds, boxes, labels, masks, _ = scene(batch=1)
    empty = Y.YolactLoss(81)(preds, [boxes[0][:0]], [labels[0][:0]], [masks[0][:0]])
    assert empty["box"] == 0 and empty["mask"] == 0
    assert torch.isfinite(empty["total"]) and empty["conf"] == 0  # no positives: no negatives
    assert empty["semantic"] > 0  # every pixel of every class is background
    empty["total"].backward()
    with pytest.raises(ValueError, match="YolactLoss: one entry"):
        Y.YolactLoss(81)(preds, boxes * 2, labels, masks)


def test_mask_loss_alone_matches_and_backpropagates():
    """YolactMaskLoss equals the release's M term; with the gt_index form, and zero for an
    image without positives (zero gradients)."""
    preds, boxes, labels, masks, _ = scene()
    crowds = [0, 0]
    ref = released_loss(as_release(preds), boxes, labels, masks, crowds)
    conf_t, idx_t = zip(*[Y.match(b, lab, preds["priors"])[:2] for b, lab in zip(boxes, labels)])
    pos = [c > 0 for c in conf_t]
    num_pos = sum(int(p.sum()) for p in pos)
    loss_fn = Y.YolactMaskLoss()
    coeffs = [preds["coeffs"][i, pos[i]] for i in range(2)]
    gt = [boxes[i][idx_t[i][pos[i]]] for i in range(2)]
    per_pos_masks = [masks[i][idx_t[i][pos[i]]] for i in range(2)]
    loss = loss_fn(preds["protos"], coeffs, gt, per_pos_masks)
    torch.testing.assert_close(loss, ref["M"], rtol=1e-6, atol=0)
    indexed = loss_fn(preds["protos"], coeffs, gt, masks,
                      gt_index=[idx_t[i][pos[i]] for i in range(2)], num_pos=num_pos)
    torch.testing.assert_close(indexed, loss, rtol=1e-6, atol=0)
    empty = loss_fn(preds["protos"][:1], [coeffs[0][:0]], [gt[0][:0]], [per_pos_masks[0][:0]])
    assert empty == 0
    empty.backward()
    assert preds["protos"].grad is not None and not preds["protos"].grad.any()


def test_full_loss_backpropagates_into_every_branch():
    model = small_model().train()
    image = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(3))
    preds = model(image)
    px = torch.tensor([[30.0, 40.0, 150.0, 130.0], [140.0, 100.0, 250.0, 250.0]])
    losses = Y.YolactLoss(4)(preds, [px / 256], [torch.tensor([0, 2])],
                             [ellipse_masks(px, 256, 256)])
    losses["total"].backward()
    for name in ["proto_net.10.weight", "proto_net.0.weight",
                 "prediction_layers.0.mask_layer.weight",
                 "prediction_layers.0.bbox_layer.weight", "prediction_layers.0.conf_layer.bias",
                 "prediction_layers.0.upfeature.0.weight", "semantic_seg_conv.weight",
                 "fpn.pred_layers.0.weight", "fpn.lat_layers.2.weight",
                 "fpn.downsample_layers.1.weight", "backbone.stem.0.weight"]:
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_a_few_optimisation_steps_lower_the_loss():
    """SGD on one synthetic scene (two ellipses): the total and every term go down."""
    model = small_model(seed=1).train()
    g = torch.Generator().manual_seed(5)
    image = torch.randn(1, 3, 96, 96, generator=g)
    px = torch.tensor([[8.0, 15.0, 56.0, 60.0], [45.0, 30.0, 90.0, 86.0]])
    targets = ([px / 96], [torch.tensor([0, 2])], [ellipse_masks(px, 96, 96)])
    image[:, :, 15:60, 8:56] += 1.0  # something for the network to see
    image[:, :, 30:86, 45:90] -= 1.0
    loss_fn = Y.YolactLoss(4)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    history = []
    for _ in range(6):
        opt.zero_grad()
        losses = loss_fn(model(image), *targets)
        losses["total"].backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    first, last = history[0], history[-1]
    assert last["total"] < 0.8 * first["total"], history
    for k in ("box", "conf", "mask", "semantic"):
        assert last[k] < first[k], (k, history)
