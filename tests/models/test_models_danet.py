"""DANet model (models/danet.py, docs/models.md): position and channel attention against explicit
compositions of their formulas, identity at initialisation, the head's wiring, gradients and
input validation. Small shapes keep the suite well under a second on CPU.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segops.models import danet as D


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Random weights everywhere, gamma = 1, random BatchNorm statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("gamma"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _pam_explicit(m: D.PositionAttention, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """gamma * (v softmax(q^T k)^T) + x, from the conv weights (einsum, no SDPA)."""
    b, c, h, w = x.shape
    xf = x.flatten(2)  # [B, C, N]

    def proj(conv):
        return torch.einsum("oc,bcn->bon", conv.weight[:, :, 0, 0], xf) + conv.bias[:, None]

    q, k, v = proj(m.query_conv), proj(m.key_conv), proj(m.value_conv)
    energy = torch.einsum("bdi,bdj->bij", q, k) * scale  # [B, N(query), N(key)]
    attn = torch.softmax(energy, dim=-1)  # over the keys
    out = torch.einsum("bcj,bij->bci", v, attn)
    return (m.gamma * out + xf).reshape(b, c, h, w)


def _cam_explicit(m: D.ChannelAttention, x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    xf = x.flatten(2)
    energy = torch.einsum("bcn,bdn->bcd", xf, xf)
    attn = torch.softmax(energy.max(dim=-1, keepdim=True).values - energy, dim=-1)
    return (m.gamma * torch.einsum("bcd,bdn->bcn", attn, xf) + xf).reshape(b, c, h, w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_and_dtypes(dtype):
    x = torch.randn(2, 16, 5, 7, dtype=dtype)
    for m in (D.PositionAttention(16), D.ChannelAttention(16)):
        y = m.to(dtype)(x)
        assert y.shape == x.shape and y.dtype == dtype


def test_bfloat16_runs():
    x = torch.randn(1, 16, 4, 4).to(torch.bfloat16)
    for m in (D.PositionAttention(16), D.ChannelAttention(16)):
        _randomize(m)
        y = m.to(torch.bfloat16)(x)
        assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


def test_gamma_zero_at_init_is_identity():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 5, 6)
    for m in (D.PositionAttention(16), D.ChannelAttention(16)):
        assert m.gamma.shape == (1,) and m.gamma.item() == 0.0
        assert torch.equal(m(x), x)


def test_position_attention_is_unscaled_softmax_attention():
    m = D.PositionAttention(16)
    _randomize(m, seed=1)
    x = torch.randn(2, 16, 4, 5, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = m(x)
        want = _pam_explicit(m, x)
        scaled = _pam_explicit(m, x, scale=1 / math.sqrt(16 // 8))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the check is sensitive to the missing 1/sqrt(d): the scaled version is different
    assert not torch.allclose(got, scaled, rtol=1e-3, atol=1e-3)


def test_position_attention_float64_exact():
    m = D.PositionAttention(24, reduction=4).double()
    _randomize(m, seed=3)
    x = torch.randn(1, 24, 3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(m(x), _pam_explicit(m, x), rtol=1e-12, atol=1e-12)


def test_channel_attention_formula():
    m = D.ChannelAttention(8)
    with torch.no_grad():
        m.gamma.fill_(1.0)
    x = torch.randn(2, 8, 3, 4, generator=torch.Generator().manual_seed(5)) * 0.5
    with torch.no_grad():
        got = m(x)
    torch.testing.assert_close(got, _cam_explicit(m, x), rtol=1e-5, atol=1e-5)
    # softmax is shift-invariant per row, so softmax(rowmax(E) - E) == softmax(-E): the
    # least similar channels weigh most
    xf = x.flatten(2)
    attn = torch.softmax(-torch.einsum("bcn,bdn->bcd", xf, xf), dim=-1)
    torch.testing.assert_close(got.flatten(2), torch.einsum("bcd,bdn->bcn", attn, xf) + xf,
                               rtol=1e-5, atol=1e-5)


def test_channel_attention_hand_example():
    # two orthogonal unit channels: E = I, rowmax - E = 1 - I, A = softmax over [0, 1] / [1, 0]
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 2, 1, 2)
    m = D.ChannelAttention(2)
    with torch.no_grad():
        m.gamma.fill_(1.0)
        y = m(x)
    a, b = 1 / (1 + math.e), math.e / (1 + math.e)  # softmax([0, 1])
    want = torch.tensor([[1 + a, b], [b, 1 + a]]).reshape(1, 2, 1, 2)
    torch.testing.assert_close(y, want)


def test_channel_attention_half_input_computed_in_float32():
    m = D.ChannelAttention(4)
    with torch.no_grad():
        m.gamma.fill_(1.0)
    x = torch.full((1, 4, 16, 16), 30.0, dtype=torch.float16)  # E = 230400 > fp16 max
    y = m.half()(x)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), torch.full((1, 4, 16, 16), 60.0))


def test_head_wiring():
    head = D.DANetHead(32, num_classes=3).eval()
    _randomize(head, seed=6)
    x = torch.randn(2, 32, 6, 5, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        out = head(x)
        p = head.conv51(head.sa(head.conv5a(x)))
        c = head.conv52(head.sc(head.conv5c(x)))
        fused = F.conv2d(p + c, head.conv8[1].weight, head.conv8[1].bias)
    assert head.sa.channels == 8 and head.sc.channels == 8  # inter = in // 4
    assert all(t.shape == (2, 3, 6, 5) for t in out)
    torch.testing.assert_close(out.fused, fused)
    torch.testing.assert_close(out.position, head.conv6(p))
    torch.testing.assert_close(out.channel, head.conv7(c))


def test_backward_reaches_both_attentions():
    torch.manual_seed(0)
    head = D.DANetHead(32, num_classes=3).train()
    out = head(torch.randn(2, 32, 4, 4))
    (out.fused.square().mean() + out.position.mean() + out.channel.mean()).backward()
    for g in (head.sa.gamma.grad, head.sc.gamma.grad, head.conv5a[0].weight.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_bad_input_names_the_argument():
    m = D.PositionAttention(16)
    with pytest.raises(ValueError, match="`x`"):
        m(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="`x`"):
        m(torch.randn(16, 4, 4))
    with pytest.raises(TypeError, match="`x`"):
        D.ChannelAttention(4)(torch.ones(1, 4, 2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="reduction"):
        D.PositionAttention(4, reduction=8)
    with pytest.raises(ValueError, match="`num_classes`"):
        D.DANetHead(32, num_classes=0)
    with pytest.raises(ValueError, match="`x`"):
        D.DANetHead(32, 3)(torch.randn(1, 16, 4, 4))
