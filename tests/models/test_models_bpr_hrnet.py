"""BPR's refinement net (models/hrnet.py) against BPR's released definitions.

The fixtures in tests/models/data/ were recorded from the released code itself
(tests/models/data/make_bpr_released_fixtures.py: BPR's ``mmseg/`` copy and
``configs/bpr/*.py`` under mmcv 1.2.0, ``build_segmentor(cfg.model)`` as
``tools/test_float.py`` builds it):

* ``bpr_released_state_dicts.json.gz``: every state-dict entry of the two released
  configurations as ``(key, shape, dtype)`` in state-dict order, with the counts of
  parameters and buffers (hrnet18s_128: 873 entries = 438 parameters + 435 buffers,
  3,935,278 weights; hrnet48_256: 1839 = 921 + 918, 65,846,978 weights);
* ``bpr_released_forward.pt``: with weights from ``helpers.bpr.deterministic_state_dict``
  (integer arithmetic on the element index: reproducible without a random generator) on
  ``helpers.bpr.deterministic_inputs``, the decode head's logits and the released inference's
  probabilities (logits resized to the input, then to ``ori_shape``, then the softmax), at odd
  input sizes so that every resize of the fusion and the head acts.

Each released configuration runs here in eval mode on a small image (36 or 40 pixels).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers.bpr import (FORWARD_FILE, TINY_SPEC, deterministic_inputs,
                         deterministic_state_dict, released_state_dict_listing,
                         state_dict_listing, tiny_net)

from segops.models import hrnet as H
from segops.models.bpr import BPRRefiner

CONFIGS = ["hrnet18s_128", pytest.param("hrnet48_256", marks=pytest.mark.slow)]

@pytest.fixture(scope="module")
def released_forward():
    return torch.load(FORWARD_FILE, weights_only=True)["cases"]


@pytest.mark.parametrize("config", CONFIGS)
def test_released_configuration_matches_the_released_definition(config, released_forward):
    net = H.BPRRefineNet(config)
    # every key, shape and dtype, in the released state-dict order
    listing = state_dict_listing(net)
    assert listing == released_state_dict_listing()[config]
    n_params, n_buffers = len(list(net.parameters())), len(list(net.buffers()))
    numel = sum(p.numel() for p in net.parameters())
    expected = {"hrnet18s_128": (438, 435, 3_935_278, 128),
                "hrnet48_256": (921, 918, 65_846_978, 256)}[config]
    assert (n_params, n_buffers, numel, net.input_size) == expected
    # the forward pass (eval mode) on the released code's weights and inputs
    case = released_forward[config]
    net.load_state_dict(deterministic_state_dict(net.state_dict()), strict=True)
    net.eval()
    image, mask = deterministic_inputs(2, case["size"])
    with torch.no_grad():
        head = net.decode(image, mask)
        logits = net(image, mask)
    ref = case["head"]
    assert head.shape == ref.shape
    scale = float(ref.abs().max())
    assert scale > 0.1  # the deterministic weights give non-trivial logits
    torch.testing.assert_close(head, ref, rtol=0, atol=1e-5 * scale)
    assert logits.shape == (2, 2, case["size"], case["size"])
    # the released inference's probabilities: the refiner's resize-then-softmax
    refiner = BPRRefiner(net)
    probs = refiner.probabilities(logits, tuple(case["ori"]))
    torch.testing.assert_close(probs, case["probs"][:, 1], rtol=0, atol=1e-6)


def test_load_released_checkpoint_strict_round_trip(tmp_path):
    src = H.BPRRefineNet("hrnet18s_128")
    with torch.no_grad():  # non-default buffers too
        for name, buf in src.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
            elif name.endswith("num_batches_tracked"):
                buf.fill_(3)
    # an mmcv checkpoint saved from a data-parallel wrapper
    ckpt = {"meta": {"CLASSES": ("bg", "fg"), "PALETTE": [[128, 64, 128], [244, 35, 232]]},
            "state_dict": {"module." + k: v.clone() for k, v in src.state_dict().items()}}
    path = tmp_path / "hrnet18s_128.pth"
    torch.save(ckpt, path)
    torch.manual_seed(1)
    dst = H.load_released_checkpoint(H.BPRRefineNet("hrnet18s_128"), path)
    for (k, a), (k2, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    image, mask = deterministic_inputs(1, 24)
    with torch.no_grad():
        assert torch.equal(src.eval()(image, mask), dst.eval()(image, mask))
    # strict: a missing or an unexpected key fails
    partial = dict(src.state_dict())
    partial.pop("backbone.conv_mask.weight")
    with pytest.raises(RuntimeError, match="conv_mask"):
        H.load_released_checkpoint(H.BPRRefineNet("hrnet18s_128"), partial)
    extra = dict(src.state_dict(), **{"auxiliary_head.conv_seg.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="auxiliary_head"):
        H.load_released_checkpoint(H.BPRRefineNet("hrnet18s_128"), extra)
    with pytest.raises(TypeError, match="checkpoint"):
        H.load_released_checkpoint(src, [1, 2])


@pytest.mark.parametrize("size", [32, 33, 45])
def test_branch_shapes_and_logits_at_the_input_size(size):
    net = tiny_net().eval()
    image, mask = torch.randn(2, 3, size, size), torch.randn(2, 1, size, size)
    with torch.no_grad():
        feats = net.backbone(image, mask)
        head = net.decode(image, mask[:, 0])  # [P, s, s] masks too
        logits = net(image, mask)
    side = -(-(-(-size // 2)) // 2)  # ceil(ceil(s / 2) / 2)
    sides = [side]
    for _ in range(3):
        sides.append(-(-sides[-1] // 2))
    assert [tuple(f.shape) for f in feats] == [(2, c, s, s) for c, s in zip((2, 4, 8, 16), sides)]
    assert head.shape == (2, 2, side, side)
    # the logits at the input size are the head's logits resized (encode_decode)
    expected = F.interpolate(head, size=(size, size), mode="bilinear", align_corners=False)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


def test_mask_stem_is_summed_with_the_image_stem():
    net = tiny_net().eval()
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = net(image, -torch.ones(2, 1, 32, 32))
        b = net(image, torch.ones(2, 1, 32, 32))
        assert (a - b).abs().max() > 1e-4  # the mask matters
        # conv1(image) + conv_mask(mask) before bn1: the same as one 4-channel convolution
        net.backbone.conv_mask.weight.zero_()
        assert torch.equal(net(image, -torch.ones(2, 1, 32, 32)), net(image, torch.ones(2, 1, 32, 32)))


def test_gradients_reach_every_parameter_in_training_mode():
    net = tiny_net().train()
    g = torch.Generator().manual_seed(2)
    image = torch.randn(4, 3, 32, 32, generator=g)
    mask = torch.randint(0, 2, (4, 1, 32, 32), generator=g).float() * 2 - 1
    loss = F.cross_entropy(net(image, mask), (mask[:, 0] > 0).long())
    loss.backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_initialisation_follows_the_released_code():
    net = tiny_net()
    assert torch.equal(net.decode_head.conv_seg.bias, torch.zeros(2))
    assert 0.002 < float(net.decode_head.conv_seg.weight.detach().std()) < 0.02
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)), name
            assert torch.equal(m.bias, torch.zeros_like(m.bias)), name


def test_validation():
    with pytest.raises(ValueError, match="config"):
        H.BPRRefineNet("hrnet32")
    with pytest.raises(ValueError, match="num_classes"):
        H.BPRRefineNet(TINY_SPEC, num_classes=0)
    st = TINY_SPEC.stages
    bad = TINY_SPEC._replace(stages=(st[0], st[1]._replace(num_channels=(2,)), st[2], st[3]))
    with pytest.raises(ValueError, match="stage 2"):
        H.BPRRefineNet(bad)
    net = tiny_net()
    with pytest.raises(ValueError, match="image"):
        net(torch.randn(1, 4, 32, 32), torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="mask"):
        net(torch.randn(1, 3, 32, 32), torch.randn(1, 2, 32, 32))
