"""The released YOLACT configurations (yolact_base, yolact_resnet50, yolact_im700) with
random weights, no download: the state_dict layout of the release, checkpoint loading with
the release's key clean-up, and eval-mode inference on a small image against our
transcription of the release's forward, Detect and postprocess (tests/helpers/).

The expected layout is generated from the release's constructor rules
(``helpers.yolact_release.released_state_dict_shapes``), and its entry counts are checked
against counts measured by building the release's own ``Yolact()`` per configuration
(dbolya/yolact 902073d, patched only to import without CUDA): ``MEASURED_IN_RELEASE``.
"""

from __future__ import annotations

import pytest
import torch
from helpers import yolact_release as R
from helpers.yolact_release_post import released_detect
from helpers.yolact_scenes import as_release, assert_detections_match_release, detector_like_weights

from segops.models import yolact as Y

# (state_dict entries, parameters, buffers, parameter values) of the release's Yolact()
MEASURED_IN_RELEASE = {
    "yolact_base": (660, 348, 312, 50157071),
    "yolact_resnet50": (354, 195, 159, 31164943),
    "yolact_im700": (660, 348, 312, 50157071),
}
CONSTRUCTORS = {"yolact_base": Y.yolact_base, "yolact_resnet50": Y.yolact_resnet50,
                "yolact_im700": Y.yolact_im700}
LAYERS = {"yolact_base": (3, 4, 23, 3), "yolact_resnet50": (3, 4, 6, 3),
          "yolact_im700": (3, 4, 23, 3)}


@pytest.fixture(scope="module", params=list(CONSTRUCTORS))
def released(request):
    """(name, model with detector-like random weights in eval mode, a small image)."""
    name = request.param
    torch.manual_seed(0)
    model = CONSTRUCTORS[name]()
    image = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    detector_like_weights(model, image)
    return name, model.eval(), image


def test_config_values_are_the_releases():
    base, r50, im700 = (Y.CONFIGS[n] for n in ("yolact_base", "yolact_resnet50", "yolact_im700"))
    assert base.max_size == r50.max_size == 550 and im700.max_size == 700
    assert base.scales == r50.scales == (24, 48, 96, 192, 384)
    assert im700.scales == (30, 61, 122, 244, 488)  # int(s / 550 * 700)
    assert base.masks_to_train == r50.masks_to_train == 100 and im700.masks_to_train == 300
    for c in (base, r50, im700):
        assert (c.conf_thresh, c.nms_thresh, c.top_k, c.max_num_detections) == (0.05, 0.5, 200, 100)
        assert (c.pos_threshold, c.neg_threshold, c.crowd_iou_threshold) == (0.5, 0.4, 0.7)
        assert (c.bbox_alpha, c.conf_alpha, c.mask_alpha, c.semantic_alpha) == (1.5, 1, 6.125, 1)
        assert c.negpos_ratio == 3 and c.aspect_ratios == (1, 0.5, 2) and c.num_downsample == 2


def test_state_dict_is_the_releases(released):
    name, model, _ = released
    sd = model.state_dict()
    expected = R.released_state_dict_shapes(LAYERS[name])
    assert list(sd) == list(expected)  # names, and the release's order
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    assert (len(sd), len(params), len(buffers), sum(p.numel() for p in params.values())) \
        == MEASURED_IN_RELEASE[name]
    assert all(k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked")
               for k in buffers)
    assert model.num_classes == 81 and model.config.name == name


def test_eval_forward_and_detections_match_the_release(released):
    """The raw outputs bit for bit (the semantic logits from a training-flag forward with
    frozen BatchNorm), then Detect + postprocess at an original image's size."""
    name, model, image = released
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()  # no running-stat updates: the eval-mode numbers, plus "segm"
    try:
        with torch.no_grad():
            preds = model(image)
    finally:
        model.eval()
    ref = R.released_forward(model.state_dict(), image, model.config.scales,
                             max_size=model.config.max_size)
    for ours, theirs in [("loc", "loc"), ("conf", "conf"), ("coeffs", "mask"),
                         ("priors", "priors"), ("protos", "proto"), ("segm", "segm")]:
        assert torch.equal(preds[ours], ref[theirs]), ours
    assert preds["priors"].shape == (3 * (8 * 12 + 4 * 6 + 2 * 3 + 1 * 2 + 1 * 1), 4)
    assert preds["segm"].shape == (1, 80, 8, 12)
    (det,) = model.detect(preds, (300, 400))
    rdet = released_detect(as_release(preds), max_size=model.config.max_size)
    assert det["classes"].shape[0] > 20
    assert_detections_match_release(det, rdet, 300, 400)


def test_im700_priors():
    sizes = [(88, 88), (44, 44), (22, 22), (11, 11), (6, 6)]  # a 700x700 input
    priors = Y.make_priors(sizes, Y.CONFIGS["yolact_im700"].scales, max_size=700)
    assert priors.shape == (30963, 4)
    expected = torch.cat([R.released_priors(h, w, s, max_size=700)
                          for (h, w), s in zip(sizes, (30, 61, 122, 244, 488))])
    assert torch.equal(priors, expected)


def test_load_weights_applies_the_release_clean_up(tmp_path):
    torch.manual_seed(3)
    model = Y.yolact_resnet50().eval()
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    sd = dict(model.state_dict())
    legacy = dict(sd)
    legacy["backbone.layer1.0.conv1.weight"] = torch.zeros(1)  # pre-release backbone names
    legacy["fpn.downsample_layers.2.weight"] = torch.zeros(1)  # v1.0: a third downsample
    legacy["fpn.downsample_layers.2.bias"] = torch.zeros(1)
    fresh = Y.yolact_resnet50()
    fresh.load_weights(legacy)
    assert all(torch.equal(v, sd[k]) for k, v in fresh.state_dict().items())
    path = tmp_path / "yolact_resnet50_54_800000.pth"
    torch.save(legacy, path)
    loaded = Y.yolact_resnet50(pretrained=path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(image)["conf"], model(image)["conf"])
    # strict: anything else that does not match is an error
    with pytest.raises(RuntimeError, match="Unexpected key"):
        fresh.load_weights({**sd, "fpn.extra.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="Missing key"):
        fresh.load_weights({k: v for k, v in sd.items() if k != "semantic_seg_conv.bias"})
    with pytest.raises(RuntimeError, match="size mismatch"):
        Y.yolact_resnet50(num_classes=21).load_weights(sd)
