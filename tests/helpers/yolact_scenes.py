"""Shared pieces of the YOLACT model tests: a small model, synthetic masks, detector-like
random predictions, and the comparison of segops' detections with the transcribed release
(``helpers.yolact_release_post``)."""

from __future__ import annotations

import torch

from segops.models import yolact as Y

from .yolact_release_post import released_postprocess

SIZES_550 = [(69, 69), (35, 35), (18, 18), (9, 9), (5, 5)]


def small_model(num_classes: int = 4, seed: int = 0) -> Y.Yolact:
    torch.manual_seed(seed)
    backbone = Y.ResNetBackbone(layers=(1, 1, 1, 1), widths=(8, 16, 32, 64))
    return Y.Yolact(num_classes, backbone=backbone, fpn_channels=32)


def ellipse_masks(boxes_px, h, w):
    """Filled ellipses inscribed in pixel boxes [G, 4] -> float [G, h, w]."""
    ys = torch.arange(h, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float32)[None, :] + 0.5
    out = []
    for x1, y1, x2, y2 in boxes_px.tolist():
        cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
        out.append((((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1).float())
    return torch.stack(out)


def detector_like_preds(num_anchors_sizes=SIZES_550, num_classes=81, k=32, batch=1, seed=0,
                        conf_std=2.5):
    """Random raw predictions shaped like a trained detector's: peaked but unsaturated
    softmax (few exact score ties), moderate box regressions, ReLU'd prototypes."""
    g = torch.Generator().manual_seed(seed)
    priors = Y.make_priors(num_anchors_sizes)
    n = priors.shape[0]
    hp = num_anchors_sizes[0][0] * 2
    return {
        "loc": torch.randn(batch, n, 4, generator=g) * 0.5,
        "conf": torch.randn(batch, n, num_classes, generator=g) * conf_std,
        "coeffs": torch.tanh(torch.randn(batch, n, k, generator=g)),
        "priors": priors,
        "protos": torch.relu(torch.randn(batch, hp, hp, k, generator=g)),
    }


def as_release(preds):
    """Our prediction names -> the release's."""
    return {"loc": preds["loc"], "conf": preds["conf"], "mask": preds["coeffs"],
            "priors": preds["priors"], "proto": preds["protos"], "segm": preds.get("segm")}


def assert_detections_match_release(det, rdet, h, w, max_band=1e-5, max_pixels=10):
    """Exact classes, scores, pixel boxes and anchors; masks equal but for pixels whose
    released upsampled value is within `max_band` of 0.5 (assemble_masks' documented
    rounding band). Returns the number of differing pixels."""
    classes, scores, boxes, binary, upsampled = released_postprocess(rdet, w, h)
    assert torch.equal(det["classes"], classes)
    assert torch.equal(det["scores"], scores)
    assert torch.equal(det["boxes"], boxes) and det["boxes"].dtype == torch.int64
    assert torch.equal(det["relative_boxes"], rdet["box"])
    differ = det["masks"] != binary.bool()
    assert int(differ.sum()) <= max_pixels
    assert ((upsampled[differ] - 0.5).abs() <= max_band).all()
    return int(differ.sum())


@torch.no_grad()
def detector_like_weights(model: Y.Yolact, image: torch.Tensor, seed: int = 1) -> None:
    """Make a randomly initialised model behave like a trained detector, in place: random
    BatchNorm statistics and head biases, and the class / box / coefficient convs rescaled
    so that on ``image`` the class logits have std 2.5 (peaked, unsaturated softmax), the
    box regressions 0.5 and the pre-tanh coefficients 1."""
    g = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    for k, v in sd.items():
        if k.endswith("running_mean"):
            v.copy_(torch.randn(v.shape, generator=g) * 0.1)
        elif k.endswith("running_var"):
            v.copy_(torch.rand(v.shape, generator=g) * 0.4 + 0.8)
        elif k.endswith("bias") and not k.startswith("backbone"):
            v.copy_(torch.randn(v.shape, generator=g) * 0.05)
    was_training = model.training
    preds = model.eval()(image)
    model.train(was_training)
    pre_tanh = torch.atanh(preds["coeffs"].clamp(-0.999999, 0.999999))
    for layer, out, target in [("conf_layer", preds["conf"], 2.5),
                               ("bbox_layer", preds["loc"], 0.5), ("mask_layer", pre_tanh, 1.0)]:
        f = target / out.std().item()
        sd[f"prediction_layers.0.{layer}.weight"].mul_(f)
        sd[f"prediction_layers.0.{layer}.bias"].mul_(f)
