"""OneFormer model (models/oneformer.py, docs/models.md): the task token, the N-1 + 1 queries, the
masked-attention rule (blocked iff sigmoid < 0.5, a query blocked everywhere unblocked) and
its use in the decoder, and the sync-free inference fusion -- on hand-built inputs whose
results are derived here, against a per-query loop transcribing the release's panoptic rules,
and traced by torch.compile(fullgraph=True).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segops.models import oneformer as O

D, HEADS = 16, 2


def small_decoder(seed: int = 0, **kw) -> O.OneFormerDecoder:
    torch.manual_seed(seed)
    args = dict(hidden_dim=D, num_queries=6, num_heads=HEADS, num_layers=4, dim_feedforward=32,
                in_channels=(8, 16, 16), mask_dim=12)
    args.update(kw)
    return O.OneFormerDecoder(4, **args)


def small_inputs(b: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(b, 8, 2, 3, generator=g), torch.randn(b, 16, 4, 5, generator=g),
             torch.randn(b, 16, 8, 10, generator=g)]
    return feats, torch.randn(b, 12, 16, 20, generator=g)


# ======================================================================================
# task token and queries
# ======================================================================================


def test_tokenizer_is_deterministic_bytes():
    ids = O.tokenize_task(["panoptic", "semantic"])
    assert ids.shape == (2, 77) and ids.dtype == torch.int64
    text = b"the task is panoptic"
    assert ids[0, 0] == 257 and ids[0, len(text) + 1] == 258
    assert bytes((ids[0, 1:len(text) + 1] - 1).tolist()) == text
    assert (ids[0, len(text) + 2:] == 0).all()
    assert torch.equal(O.tokenize_task("panoptic"), ids[:1])
    assert not torch.equal(ids[0], ids[1])


def test_task_encoder_is_layernorm_of_mlp_of_float_ids():
    torch.manual_seed(0)
    enc = O.TaskEncoder(D)
    ids = O.tokenize_task(list(O.TASKS))
    lin1, lin2 = enc.mlp[0], enc.mlp[2]
    want = F.layer_norm(lin2(torch.relu(lin1(ids.float()))), (D,), enc.norm.weight,
                        enc.norm.bias)
    torch.testing.assert_close(enc(list(O.TASKS)), want)
    torch.testing.assert_close(enc(ids), want)
    assert enc("instance", batch_size=3).shape == (3, D)
    tokens = enc(list(O.TASKS))
    assert not torch.allclose(tokens[0], tokens[1]) and not torch.allclose(tokens[1], tokens[2])


def test_queries_are_n_minus_1_plus_the_task_token():
    feats, mf = small_inputs()
    # without decoder layers the predictions read the queries directly
    dec = small_decoder(num_layers=0, query_layers=0)
    out = dec(feats, mf, "semantic")
    head = dec.class_embed(dec.decoder_norm(out.task_token))  # [B, K+1]
    assert out.pred_logits.shape == (2, 6, 5)
    # no query transformer: all N queries are the task token
    torch.testing.assert_close(out.pred_logits, head[:, None].expand(2, 6, 5))
    dec = small_decoder(num_layers=0, query_layers=2)
    out = dec(feats, mf, ["semantic", "panoptic"])
    head = dec.class_embed(dec.decoder_norm(out.task_token))
    torch.testing.assert_close(out.pred_logits[:, -1], head)  # the N-th query is the token
    assert not torch.allclose(out.pred_logits[:, 0], head)  # the others were refined
    assert not torch.allclose(out.task_token[0], out.task_token[1])


# ======================================================================================
# masked attention
# ======================================================================================


def test_masked_attention_rule_hand_example():
    logits = torch.tensor([[[[1.0, -1.0], [0.0, -1e-10]],  # sigmoid .73 .27 .5 .5
                            [[-2.0, -2.0], [-2.0, -2.0]],  # blocked everywhere -> nowhere
                            [[2.0, 2.0], [2.0, 2.0]]]])
    mask = O.masked_attention_mask(logits, (2, 2), num_heads=2)
    # sigmoid(-1e-10) rounds to exactly 0.5 in float32: not < 0.5, so not blocked
    one = torch.tensor([[False, True, False, False], [False] * 4, [False] * 4])
    assert mask.dtype == torch.bool and mask.shape == (2, 3, 4)
    assert torch.equal(mask, torch.stack([one, one]))


def test_masked_attention_rule_with_resize_and_heads():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 5, generator=g)
    logits[1, 2] = -1.0  # a query blocked everywhere
    mask = O.masked_attention_mask(logits, (6, 10), num_heads=3)
    resized = F.interpolate(logits, size=(6, 10), mode="bilinear", align_corners=False)
    blocked = torch.sigmoid(resized).flatten(2) < 0.5
    blocked[blocked.all(-1)] = False
    assert mask.shape == (6, 4, 60)
    for b in range(2):
        for h in range(3):
            assert torch.equal(mask[b * 3 + h], blocked[b])  # batch-major, head-minor rows
    assert not mask[3 + 0:3 + 3, 2].any()


def test_masked_cross_attention_equals_explicit_softmax():
    torch.manual_seed(3)
    layer = O.DecoderLayer(D, HEADS, 32)
    att = layer.cross
    g = torch.Generator().manual_seed(4)
    x, xpos = torch.randn(2, 3, D, generator=g), torch.randn(2, 3, D, generator=g)
    mem, mpos = torch.randn(2, 5, D, generator=g), torch.randn(2, 5, D, generator=g)
    mask = O.masked_attention_mask(torch.randn(2, 3, 1, 5, generator=g), (1, 5), HEADS)
    got = att(x, mem, xpos, mpos, mask)
    wq, wk, wv = att.attn.in_proj_weight.chunk(3)
    bq, bk, bv = att.attn.in_proj_bias.chunk(3)
    dh = D // HEADS

    def heads(t):  # [B, L, D] -> [B, H, L, dh]
        return t.reshape(t.shape[0], t.shape[1], HEADS, dh).transpose(1, 2)

    q, k = heads((x + xpos) @ wq.T + bq), heads((mem + mpos) @ wk.T + bk)
    v = heads(mem @ wv.T + bv)
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
    scores = scores.masked_fill(mask.reshape(2, HEADS, 3, 5), float("-inf"))
    out = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(2, 3, D)
    want = F.layer_norm(x + att.attn.out_proj(out), (D,), att.norm.weight, att.norm.bias)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_decoder_masks_each_layer_with_the_previous_prediction(monkeypatch):
    calls = []
    real = O.masked_attention_mask

    def spy(mask_logits, size, num_heads):
        calls.append((mask_logits.clone(), tuple(size)))
        return real(mask_logits, size, num_heads)

    monkeypatch.setattr(O, "masked_attention_mask", spy)
    dec = small_decoder()
    feats, mf = small_inputs()
    out = dec(feats, mf, "instance")
    assert len(out.aux) == 4 and len(calls) == 5
    assert [c[1] for c in calls] == [(2, 3), (4, 5), (8, 10), (2, 3), (4, 5)]  # round robin
    # call i sees the masks predicted before layer i (the last, the final prediction)
    for i, (_, masks) in enumerate(out.aux):
        torch.testing.assert_close(calls[i][0], masks)
    torch.testing.assert_close(calls[4][0], out.pred_masks)


def test_decoder_shapes_and_backward():
    dec = small_decoder().train()
    feats, mf = small_inputs()
    out = dec(feats, mf, ["panoptic", "instance"])
    assert out.pred_logits.shape == (2, 6, 5) and out.pred_masks.shape == (2, 6, 16, 20)
    assert out.task_token.shape == (2, D)
    loss = out.pred_logits.logsumexp(-1).mean() + out.pred_masks.sigmoid().mean()
    loss = loss + sum(a[1].mean() for a in out.aux)
    loss.backward()
    for p in (dec.query_embed.weight, dec.task_encoder.mlp[0].weight, dec.level_embed.weight,
              dec.input_proj[0].weight, dec.query_layers[0].cross.attn.in_proj_weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


# ======================================================================================
# inference fusion
# ======================================================================================


def _cls_logits(rows):
    """Class logits whose softmax is exactly `rows` (probabilities, K + 1 per query)."""
    return torch.tensor(rows, dtype=torch.float32).log()


def test_semantic_fusion_hand_example():
    # probs q0 = [.5, .25 | .25], q1 = [.25, .25 | .5]; sigmoids q0 = [.5, .75], q1 = [.75, .5]
    mask_cls = _cls_logits([[0.5, 0.25, 0.25], [0.25, 0.25, 0.5]])
    mask_pred = torch.tensor([[[0.0, math.log(3)]], [[math.log(3), 0.0]]])
    got = O.semantic_inference(mask_cls, mask_pred)
    want = torch.tensor([[[0.5 * 0.5 + 0.25 * 0.75, 0.5 * 0.75 + 0.25 * 0.5]],
                         [[0.25 * 0.5 + 0.25 * 0.75, 0.25 * 0.75 + 0.25 * 0.5]]])
    assert got.shape == (2, 1, 2)
    torch.testing.assert_close(got, want)


def test_instance_fusion_hand_example():
    # pair scores (q, c): (0,0) .5, (0,1) .25, (1,0) .25, (1,1) .25 -> top 3 = (0,0), then
    # the ties in index order (0,1), (1,0)
    mask_cls = _cls_logits([[0.5, 0.25, 0.25], [0.25, 0.25, 0.5]])
    l3 = math.log(3)
    mask_pred = torch.tensor([[[l3, l3], [-1.0, -1.0]], [[0.0, l3], [l3, l3]]])
    res = O.instance_inference(mask_cls, mask_pred, topk=3, is_thing=[True, False])
    assert res.labels.tolist() == [0, 1, 0] and res.query_index.tolist() == [0, 0, 1]
    # masks are logit > 0 (a logit of exactly 0 is out); mean sigmoid inside = 3/4
    m0 = torch.tensor([[True, True], [False, False]])
    m1 = torch.tensor([[False, True], [True, True]])
    assert torch.equal(res.masks, torch.stack([m0, m0, m1]))
    want = torch.tensor([0.5 * 0.75 * 2 / (2 + 1e-6), 0.25 * 0.75 * 2 / (2 + 1e-6),
                         0.25 * 0.75 * 3 / (3 + 1e-6)])
    torch.testing.assert_close(res.scores, want)
    assert res.valid.tolist() == [True, False, True]
    assert O.instance_inference(mask_cls, mask_pred, topk=100).labels.shape == (4,)


def _panoptic_case():
    """Q = 6 queries over a 1 x 6 image, K = 3 (classes 0, 2 things, class 1 stuff)."""
    def row(p, c):
        r = [(1 - p) / 3] * 4
        r[c] = p
        return r

    mask_cls = _cls_logits([row(0.9, 0), row(0.9, 1), row(0.95, 1), row(0.9, 3),
                            row(0.7, 2), row(0.85, 0)])
    inside = {0: [0, 1], 1: [2, 3], 2: [4], 3: [5], 4: [5], 5: [1, 5]}
    mask_pred = torch.full((6, 1, 6), -4.0)
    for q, cols in inside.items():
        mask_pred[q, 0, cols] = 4.0
    return mask_cls, mask_pred, torch.tensor([True, False, True])


def test_panoptic_fusion_hand_example():
    # q3 is "no object" and q4 scores .7 < .8: dropped. Pixel winners (score x sigmoid):
    # 0, 1 -> q0 (.9 x .98 beats q5's .85 x .98 at pixel 1), 2, 3 -> q1, 4 -> q2, 5 -> q5.
    # q5 won 1 of its 2 mask pixels: 0.5 < 0.8, dropped, so pixel 5 is void. q0 (thing) is
    # segment 1, q1 (stuff, class 1) segment 2, and q2 (stuff, class 1 again) merges into 2.
    res = O.panoptic_inference(*_panoptic_case())
    assert res.panoptic_seg.dtype == torch.int32
    assert res.panoptic_seg.tolist() == [[1, 1, 2, 2, 2, 0]]
    assert res.num_segments.item() == 2
    assert res.segment_classes.tolist() == [0, 1, -1, -1, -1, -1]
    assert res.segment_isthing.tolist() == [True, False] + [False] * 4
    assert res.segment_query.tolist() == [0, 1, -1, -1, -1, -1]
    # with a lower overlap threshold q5 survives as a thing segment of its own (id 3)
    res = O.panoptic_inference(*_panoptic_case(), overlap_threshold=0.5)
    assert res.panoptic_seg.tolist() == [[1, 1, 2, 2, 2, 3]]
    assert res.segment_classes.tolist()[:3] == [0, 1, 0] and res.num_segments.item() == 3
    # nothing kept: all void, no segments
    res = O.panoptic_inference(*_panoptic_case(), object_mask_threshold=0.99)
    assert not res.panoptic_seg.any() and res.num_segments.item() == 0


def _panoptic_loop(mask_cls, mask_pred, is_thing, thr, overlap):
    """The release's per-query loop, transcribed (float32 math). Returns the map, the
    segments ``(id, isthing, class)`` and how many stuff queries were merged."""
    k = mask_cls.shape[1] - 1
    scores, labels = torch.softmax(mask_cls.float(), -1).max(-1)
    sig = mask_pred.float().sigmoid()
    keep = (labels != k) & (scores > thr)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], sig[keep]
    seg = torch.zeros(sig.shape[1:], dtype=torch.int32)
    info, merges = [], 0
    if cur_masks.shape[0] == 0:
        return seg, info, merges
    ids = (cur_scores[:, None, None] * cur_masks).argmax(0)
    memory, current = {}, 0
    for i in range(cur_classes.shape[0]):
        c = cur_classes[i].item()
        thing = bool(is_thing[c])
        area = (ids == i).sum().item()
        orig = (cur_masks[i] >= 0.5).sum().item()
        m = (ids == i) & (cur_masks[i] >= 0.5)
        if area > 0 and orig > 0 and m.sum().item() > 0:
            if area / orig < overlap:
                continue
            if not thing:
                if c in memory:
                    seg[m] = memory[c]
                    merges += 1
                    continue
                memory[c] = current + 1
            current += 1
            seg[m] = current
            info.append((current, thing, c))
    return seg, info, merges


def _random_rectangles(seed: int, q: int = 10, k: int = 4, h: int = 9, w: int = 8):
    """Random class logits and noisy rectangular mask logits (varied overlaps)."""
    g = torch.Generator().manual_seed(seed)
    mask_cls = torch.randn(q, k + 1, generator=g) * 3
    ys, xs = torch.arange(h)[:, None], torch.arange(w)[None]
    masks = []
    for _ in range(q):
        y0, x0 = torch.randint(0, h - 2, (2,), generator=g).tolist()
        y1 = y0 + int(torch.randint(2, h - y0 + 1, (1,), generator=g))
        x1 = x0 + int(torch.randint(2, w - x0 + 1, (1,), generator=g))
        inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
        masks.append(torch.where(inside, 3.0, -3.0) + torch.randn(h, w, generator=g))
    return mask_cls, torch.stack(masks)


def test_panoptic_fusion_matches_the_per_query_loop():
    is_thing = torch.tensor([True, False, False, True])
    total_merges = total_segments = 0
    for seed in range(8):
        mask_cls, mask_pred = _random_rectangles(seed)
        for thr, overlap in ((0.3, 0.8), (0.5, 0.5), (0.2, 0.0)):
            res = O.panoptic_inference(mask_cls, mask_pred, is_thing, thr, overlap)
            seg, info, merges = _panoptic_loop(mask_cls, mask_pred, is_thing, thr, overlap)
            assert torch.equal(res.panoptic_seg, seg)
            n = res.num_segments.item()
            assert n == len(info)
            assert res.segment_classes[:n].tolist() == [c for _, _, c in info]
            assert res.segment_isthing[:n].tolist() == [t for _, t, _ in info]
            assert (res.segment_classes[n:] == -1).all() and (res.segment_query[n:] == -1).all()
            total_merges += merges
            total_segments += n
    assert total_merges > 0 and total_segments > 50  # the cases exercise every rule


@pytest.mark.no_cuda_emu  # dynamo does not trace under the emulator's dispatch mode
def test_fusion_traces_with_fullgraph_compile():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    mask_cls, mask_pred = torch.randn(8, 5, generator=g) * 3, torch.randn(8, 6, 7, generator=g)
    is_thing = torch.tensor([True, False, True, False])

    sem = torch.compile(O.semantic_inference, fullgraph=True, backend="eager")
    torch.testing.assert_close(sem(mask_cls, mask_pred), O.semantic_inference(mask_cls,
                                                                              mask_pred))

    def inst(c, p, t):
        return tuple(O.instance_inference(c, p, topk=10, is_thing=t))

    got = torch.compile(inst, fullgraph=True, backend="eager")(mask_cls, mask_pred, is_thing)
    for a, b in zip(got, inst(mask_cls, mask_pred, is_thing)):
        torch.testing.assert_close(a, b)

    def pan(c, p, t):
        return tuple(O.panoptic_inference(c, p, t, 0.3, 0.8))

    got = torch.compile(pan, fullgraph=True, backend="eager")(mask_cls, mask_pred, is_thing)
    for a, b in zip(got, pan(mask_cls, mask_pred, is_thing)):
        torch.testing.assert_close(a, b)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="`task`"):
        O.tokenize_task("depth")
    with pytest.raises(ValueError, match="`seq_len`"):
        O.tokenize_task("panoptic", seq_len=10)
    dec = small_decoder()
    feats, mf = small_inputs()
    with pytest.raises(ValueError, match="`task`"):
        dec(feats, mf, ["panoptic"] * 3)
    with pytest.raises(ValueError, match=r"`features\[1\]`"):
        dec([feats[0], feats[0], feats[2]], mf, "panoptic")
    with pytest.raises(ValueError, match="`mask_features`"):
        dec(feats, mf[:, :4], "panoptic")
    with pytest.raises(ValueError, match="`hidden_dim`"):
        O.OneFormerDecoder(3, hidden_dim=10, num_heads=4)
    with pytest.raises(ValueError, match="`num_queries`"):
        O.OneFormerDecoder(3, num_queries=1)
    c, p = torch.randn(4, 3), torch.randn(4, 5, 5)
    with pytest.raises(ValueError, match="`mask_pred`"):
        O.semantic_inference(c, p[:3])
    with pytest.raises(ValueError, match="`mask_cls`"):
        O.instance_inference(c[:, :1], p)
    with pytest.raises(ValueError, match="`is_thing`"):
        O.panoptic_inference(c, p, torch.tensor([True, False, True]))
    with pytest.raises(ValueError, match="`topk`"):
        O.instance_inference(c, p, topk=0)
