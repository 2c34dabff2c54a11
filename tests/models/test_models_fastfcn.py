"""FastFCN model (models/fastfcn.py, docs/models.md): JPU's output (2048 channels at stride 8) and
its computation against an explicit composition of the released design (reduce, upsample
with align_corners=True, concat 32/16/8, four dilated separable branches), the FCN head on a
backbone, gradients and input validation.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segops.models import fastfcn as FF
from segops.models.backbones import ResNetBackbone


def _randomize_bn(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _bn(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0,
                        bn.eps)


def _jpu_explicit(jpu: FF.JPU, c3, c4, c5, align_corners=True):
    feats = []
    for x, block in zip((c3, c4, c5), jpu.convs):
        conv, bn = block[0], block[1]
        feats.append(F.relu(_bn(F.conv2d(x, conv.weight, padding=1), bn)))
    size = feats[0].shape[-2:]
    up = [F.interpolate(f, size=size, mode="bilinear", align_corners=align_corners)
          for f in feats[1:]]
    cat = torch.cat([up[1], up[0], feats[0]], dim=1)  # stride 32, 16, 8
    outs = []
    for dilation, branch in zip((1, 2, 4, 8), jpu.dilation_branches):
        sep, bn = branch[0], branch[1]
        y = F.conv2d(cat, sep.depthwise.weight, padding=dilation, dilation=dilation,
                     groups=cat.shape[1])
        y = F.conv2d(_bn(y, sep.bn), sep.pointwise.weight)
        outs.append(F.relu(_bn(y, bn)))
    return torch.cat(outs, dim=1)


def _inputs(b=2, chans=(8, 12, 16), h=8, w=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, chans[0], h, w, generator=g),
            torch.randn(b, chans[1], (h + 1) // 2, (w + 1) // 2, generator=g),
            torch.randn(b, chans[2], (h + 3) // 4, (w + 3) // 4, generator=g))


def test_jpu_default_width_gives_2048_channels_at_stride_8():
    torch.manual_seed(0)
    backbone = ResNetBackbone(layers=(1, 1, 1, 1), widths=(8, 16, 32, 64)).eval()
    image = torch.randn(1, 3, 64, 96)
    jpu = FF.JPU(backbone.channels).eval()
    with torch.no_grad():
        c3, c4, c5 = backbone(image)
        out = jpu(c3, c4, c5)
    assert c3.shape[-2:] == (8, 12)  # stride 8
    assert out.shape == (1, 2048, 8, 12) and jpu.out_channels == 2048
    assert out.dtype == torch.float32 and (out >= 0).all()  # ends in ReLU


def test_jpu_matches_explicit_composition():
    torch.manual_seed(1)
    jpu = FF.JPU((8, 12, 16), width=6).eval()
    _randomize_bn(jpu, seed=2)
    c3, c4, c5 = _inputs()
    with torch.no_grad():
        got = jpu(c3, c4, c5)
        want = _jpu_explicit(jpu, c3, c4, c5)
        other = _jpu_explicit(jpu, c3, c4, c5, align_corners=False)
    assert got.shape == (2, 24, 8, 10)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, other, atol=1e-4)  # align_corners matters


def test_jpu_float64_and_every_branch_dilated():
    jpu = FF.JPU((4, 4, 4), width=2).double().eval()
    assert [b[0].depthwise.dilation for b in jpu.dilation_branches] == [
        (1, 1), (2, 2), (4, 4), (8, 8)]
    assert all(b[0].depthwise.groups == 6 for b in jpu.dilation_branches)  # 3 * width
    c3, c4, c5 = (t.double() for t in _inputs(1, (4, 4, 4), 9, 9))
    with torch.no_grad():
        got = jpu(c3, c4, c5)
    assert got.dtype == torch.float64 and got.shape == (1, 8, 9, 9)
    torch.testing.assert_close(got, _jpu_explicit(jpu, c3, c4, c5))


def test_fastfcn_end_to_end_and_backward():
    torch.manual_seed(3)
    backbone = ResNetBackbone(layers=(1, 1, 1, 1), widths=(8, 16, 32, 64))
    model = FF.FastFCN(backbone, num_classes=3, width=8).train()
    image = torch.randn(2, 3, 48, 40)
    logits = model(image)
    assert logits.shape == (2, 3, 48, 40)
    target = torch.randint(0, 3, (2, 48, 40))
    F.cross_entropy(logits, target).backward()
    for p in (model.jpu.convs[2][0].weight, model.jpu.dilation_branches[3][0].depthwise.weight,
              backbone.stem[0].weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_bad_input_names_the_argument():
    jpu = FF.JPU((8, 12, 16), width=4)
    c3, c4, c5 = _inputs()
    with pytest.raises(ValueError, match="`c4`"):
        jpu(c3, c5, c5)
    with pytest.raises(ValueError, match="`c3`"):
        jpu(c3[0], c4, c5)
    with pytest.raises(TypeError, match="`c5`"):
        jpu(c3, c4, c5.long())
    with pytest.raises(ValueError, match="batch"):
        jpu(c3, c4[:1], c5)
    with pytest.raises(ValueError, match="`in_channels`"):
        FF.JPU((8, 12))
    with pytest.raises(ValueError, match="`width`"):
        FF.JPU((8, 12, 16), width=0)
    with pytest.raises(ValueError, match="`backbone`"):
        FF.FastFCN(torch.nn.Identity(), 3)
