"""OneFormer (Jain et al., CVPR 2023), a thin definition (docs/models.md): the task token, the
task-conditioned queries, Mask2Former's masked-attention decoder and the inference fusion.

* **Task token.** The text ``"the task is {task}"`` (task in ``semantic``, ``instance``,
  ``panoptic``) is tokenised into ``seq_len`` (77) integer ids, and, as the release does, the
  ids *as floats* go through a 2-layer MLP (``seq_len -> D -> D``) and a LayerNorm. The
  release uses CLIP's BPE tokenizer; :func:`tokenize_task` is a tiny deterministic
  byte-level stand-in (start id 257, UTF-8 bytes + 1, end id 258, zero padding), so nothing is
  downloaded. Trained weights are therefore not interchangeable with the release's.
* **Queries.** ``N - 1`` queries start as copies of the task token and are refined by a small
  transformer (``query_layers`` = 2 DETR-style layers: self-attention, cross-attention to the
  projected 1/4-scale mask features, FFN) with ``N - 1`` learned query position embeddings;
  the task token itself is appended as the ``N``-th query. (The release passes that
  transformer the sine position encoding as its input and the projected features as its
  position embedding; here keys are features + positions and values are the features.)
* **Masked attention** (Mask2Former): before each decoder layer, masks are predicted from the
  current queries, resized (bilinear, ``align_corners=False``) to the layer's feature size,
  and a position is **blocked iff ``sigmoid(mask_logit) < 0.5``**; a query that would be
  blocked everywhere is unblocked everywhere (:func:`masked_attention_mask`). Each layer is
  masked cross-attention -> self-attention -> FFN, post-norm; the feature levels are visited
  round robin with a learned level embedding and sine position encodings.
* **Inference fusion** (one image; the release's ``semantic_inference``,
  ``instance_inference``, ``panoptic_inference``): the release loops over queries with
  ``.item()`` calls; here every rule is vectorised and performs no host synchronisation, so
  each function traces under ``torch.compile(fullgraph=True)``. Panoptic output has a
  data-dependent number of segments and is returned padded to ``N`` plus a count (docs/ops/conventions.md).

Not included: backbone, pixel decoder (multi-scale deformable attention), the text mapper and
the query-text contrastive loss (training only), matching and the mask losses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TASKS", "tokenize_task", "TaskEncoder", "masked_attention_mask",
           "OneFormerDecoder", "OneFormerOutput", "semantic_inference", "instance_inference",
           "panoptic_inference", "InstanceResult", "PanopticResult"]

TASKS = ("semantic", "instance", "panoptic")
_SOT, _EOT = 257, 258


def _check_int(name: str, v: object, least: int, who: str) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < least:
        raise ValueError(f"{who}: `{name}` must be an int >= {least}, got {v!r}")


def tokenize_task(task: str | Sequence[str], seq_len: int = 77) -> Tensor:
    """``"the task is {task}"`` -> int64 ids ``[B, seq_len]`` (one row per task string)."""
    tasks = [task] if isinstance(task, str) else list(task)
    if not tasks:
        raise ValueError("tokenize_task: `task` must name at least one task")
    rows = []
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"tokenize_task: `task` must be one of {TASKS}, got {t!r}")
        ids = [_SOT] + [b + 1 for b in f"the task is {t}".encode()] + [_EOT]
        if len(ids) > seq_len:
            raise ValueError(f"tokenize_task: `seq_len` must be >= {len(ids)}, got {seq_len}")
        rows.append(ids + [0] * (seq_len - len(ids)))
    return torch.tensor(rows, dtype=torch.int64)


class MLP(nn.Sequential):
    """``num_layers`` Linear layers with ReLU between them (none after the last)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int) -> None:
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < num_layers - 1:
                layers.append(nn.ReLU())
        super().__init__(*layers)


class TaskEncoder(nn.Module):
    """Task text -> task token: ``LayerNorm(MLP(float(token ids)))``.

    ``forward(task: str | list[str] | int64 ids [B, seq_len], batch_size=None) -> [B, D]``
    (a single task string is repeated ``batch_size`` times).
    """

    def __init__(self, hidden_dim: int, seq_len: int = 77) -> None:
        super().__init__()
        _check_int("hidden_dim", hidden_dim, 1, "TaskEncoder")
        _check_int("seq_len", seq_len, 22, "TaskEncoder")  # "the task is panoptic" + 2
        self.seq_len = seq_len
        self.mlp = MLP(seq_len, hidden_dim, hidden_dim, 2)
        self.norm = nn.LayerNorm(hidden_dim)

    def forward(self, task: str | Sequence[str] | Tensor, batch_size: int | None = None
                ) -> Tensor:
        weight = self.mlp[0].weight
        if isinstance(task, Tensor):
            if task.dim() != 2 or task.shape[1] != self.seq_len:
                raise ValueError(f"TaskEncoder: `task` ids must be [B, {self.seq_len}], got "
                                 f"{tuple(task.shape)}")
            ids = task
        else:
            ids = tokenize_task(task, self.seq_len)
            if isinstance(task, str) and batch_size is not None:
                ids = ids.expand(batch_size, -1)
        return self.norm(self.mlp(ids.to(device=weight.device, dtype=weight.dtype)))


def sine_position_embedding(h: int, w: int, dim: int, device: torch.device | None = None,
                            dtype: torch.dtype = torch.float32) -> Tensor:
    """Mask2Former's normalised sine encoding: ``[h * w, dim]`` (``dim`` even; the first half
    encodes y, the second x; interleaved sin/cos, temperature 10000, scale 2 pi)."""
    npf = dim // 2
    eps, scale = 1e-6, 2 * math.pi
    y = (torch.arange(1, h + 1, device=device, dtype=torch.float32) - 0.5) / (h + eps) * scale
    x = (torch.arange(1, w + 1, device=device, dtype=torch.float32) - 0.5) / (w + eps) * scale
    dim_t = 10000 ** (2 * torch.div(torch.arange(npf, device=device), 2, rounding_mode="floor")
                      / npf)

    def enc(v: Tensor) -> Tensor:
        p = v[:, None] / dim_t
        return torch.stack([p[:, 0::2].sin(), p[:, 1::2].cos()], dim=2).flatten(1)

    py, px = enc(y), enc(x)  # [h, npf], [w, npf]
    pos = torch.cat([py[:, None].expand(h, w, npf), px[None].expand(h, w, npf)], dim=-1)
    return pos.reshape(h * w, 2 * npf).to(dtype)


def masked_attention_mask(mask_logits: Tensor, size: Sequence[int], num_heads: int) -> Tensor:
    """Mask2Former's attention mask from predicted mask logits.

    Args:
        mask_logits: ``[B, Q, h, w]`` floating.
        size: ``(H, W)`` of the attended feature level.
        num_heads: attention heads.

    Returns:
        bool ``[B * num_heads, Q, H * W]`` (``True`` = blocked, ``nn.MultiheadAttention``'s
        convention; batch-major, head-minor rows), detached: the logits resized bilinearly
        (``align_corners=False``) to ``size``; blocked iff ``sigmoid < 0.5``, except that a
        query blocked at every position is blocked nowhere.
    """
    if not isinstance(mask_logits, Tensor) or mask_logits.dim() != 4:
        raise ValueError("masked_attention_mask: `mask_logits` must be [B, Q, h, w], got "
                         f"{getattr(mask_logits, 'shape', type(mask_logits).__name__)}")
    _check_int("num_heads", num_heads, 1, "masked_attention_mask")
    m = F.interpolate(mask_logits.detach(), size=tuple(size), mode="bilinear",
                      align_corners=False)
    blocked = m.sigmoid().flatten(2) < 0.5
    blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
    return blocked.repeat_interleave(num_heads, dim=0)


class _Attention(nn.Module):
    """Post-norm attention block: ``norm(x + attn(x + x_pos, mem + mem_pos, mem))``."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, mem: Tensor, x_pos: Tensor, mem_pos: Tensor,
                mask: Tensor | None = None) -> Tensor:
        out = self.attn(x + x_pos, mem + mem_pos, mem, attn_mask=mask, need_weights=False)[0]
        return self.norm(x + out)


class _FFN(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.net(x))


class DecoderLayer(nn.Module):
    """``order = "masked"``: masked cross-attention -> self-attention -> FFN (Mask2Former);
    ``order = "detr"``: self-attention -> cross-attention -> FFN (the query initialiser)."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float = 0.0,
                 order: str = "masked") -> None:
        super().__init__()
        self.order = order
        self.cross, self.self_attn = _Attention(dim, heads, dropout), _Attention(dim, heads,
                                                                                 dropout)
        self.ffn = _FFN(dim, ffn, dropout)

    def forward(self, x: Tensor, mem: Tensor, x_pos: Tensor, mem_pos: Tensor,
                mask: Tensor | None = None) -> Tensor:
        if self.order == "detr":
            x = self.self_attn(x, x, x_pos, x_pos)
            x = self.cross(x, mem, x_pos, mem_pos, mask)
        else:
            x = self.cross(x, mem, x_pos, mem_pos, mask)
            x = self.self_attn(x, x, x_pos, x_pos)
        return self.ffn(x)


class OneFormerOutput(NamedTuple):
    pred_logits: Tensor  #: ``[B, N, num_classes + 1]`` (last = no object), final layer
    pred_masks: Tensor  #: ``[B, N, H4, W4]`` mask logits at the mask features' size
    aux: list[tuple[Tensor, Tensor]]  #: ``(logits, masks)`` before each decoder layer
    task_token: Tensor  #: ``[B, D]``


class OneFormerDecoder(nn.Module):
    """OneFormer's task-conditioned transformer decoder.

    Args:
        num_classes: ``K`` (the class head has ``K + 1`` outputs, the last "no object").
        hidden_dim: ``D``.
        num_queries: ``N`` (``N - 1`` object queries + the task token), >= 2.
        num_heads, num_layers, dim_feedforward: the masked decoder's shape (8, 9, 2048).
        in_channels: channels of the attended feature levels (1x1-projected to ``D`` when
            different), low to high resolution as Mask2Former (``[1/32, 1/16, 1/8]``).
        mask_dim: channels of the per-pixel mask features.
        task_seq_len: task token ids per text (77).
        query_layers: layers of the query-initialising transformer (2; 0 keeps the task
            token copies).

    ``forward(features [L x [B, in_channels[l], h_l, w_l]], mask_features [B, mask_dim, H4,
    W4], task) -> OneFormerOutput``; ``task``: one of :data:`TASKS` (for the whole batch), a
    list of ``B`` of them, or token ids ``[B, task_seq_len]``.
    """

    def __init__(self, num_classes: int, hidden_dim: int = 256, num_queries: int = 150,
                 num_heads: int = 8, num_layers: int = 9, dim_feedforward: int = 2048,
                 in_channels: Sequence[int] = (256, 256, 256), mask_dim: int = 256,
                 task_seq_len: int = 77, query_layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        who = "OneFormerDecoder"
        for name, v, least in (("num_classes", num_classes, 1), ("hidden_dim", hidden_dim, 2),
                               ("num_queries", num_queries, 2), ("num_heads", num_heads, 1),
                               ("num_layers", num_layers, 0), ("mask_dim", mask_dim, 1),
                               ("dim_feedforward", dim_feedforward, 1),
                               ("query_layers", query_layers, 0)):
            _check_int(name, v, least, who)
        if hidden_dim % num_heads or hidden_dim % 2:
            raise ValueError(f"{who}: `hidden_dim` must be even and divisible by `num_heads`, "
                             f"got {hidden_dim} and {num_heads}")
        if len(in_channels) == 0:
            raise ValueError(f"{who}: `in_channels` must name at least one feature level")
        self.num_classes, self.num_queries, self.num_heads = num_classes, num_queries, num_heads
        self.in_channels, self.mask_dim, self.hidden_dim = tuple(in_channels), mask_dim, hidden_dim
        self.task_encoder = TaskEncoder(hidden_dim, task_seq_len)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.query_input_proj = nn.Conv2d(mask_dim, hidden_dim, 1)
        self.query_layers = nn.ModuleList(
            DecoderLayer(hidden_dim, num_heads, dim_feedforward, dropout, "detr")
            for _ in range(query_layers))
        self.query_norm = nn.LayerNorm(hidden_dim)
        self.input_proj = nn.ModuleList(
            nn.Identity() if c == hidden_dim else nn.Conv2d(c, hidden_dim, 1)
            for c in in_channels)
        self.level_embed = nn.Embedding(len(in_channels), hidden_dim)
        self.layers = nn.ModuleList(DecoderLayer(hidden_dim, num_heads, dim_feedforward, dropout)
                                    for _ in range(num_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def predict(self, queries: Tensor, mask_features: Tensor, attn_size: Sequence[int]
                ) -> tuple[Tensor, Tensor, Tensor]:
        """``(class logits [B, N, K+1], mask logits [B, N, H4, W4], attention mask)``."""
        x = self.decoder_norm(queries)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(x), mask_features)
        return self.class_embed(x), masks, masked_attention_mask(masks, attn_size,
                                                                  self.num_heads)

    def forward(self, features: Sequence[Tensor], mask_features: Tensor,
                task: str | Sequence[str] | Tensor) -> OneFormerOutput:
        who = "OneFormerDecoder"
        if len(features) != len(self.in_channels):
            raise ValueError(f"{who}: `features` must hold {len(self.in_channels)} levels, got "
                             f"{len(features)}")
        if not isinstance(mask_features, Tensor) or mask_features.dim() != 4 or \
                mask_features.shape[1] != self.mask_dim:
            raise ValueError(f"{who}: `mask_features` must be [B, {self.mask_dim}, H, W], got "
                             f"{getattr(mask_features, 'shape', type(mask_features).__name__)}")
        b = mask_features.shape[0]
        for i, (f, c) in enumerate(zip(features, self.in_channels)):
            if not isinstance(f, Tensor) or f.dim() != 4 or f.shape[1] != c or f.shape[0] != b:
                raise ValueError(f"{who}: `features[{i}]` must be [{b}, {c}, h, w], got "
                                 f"{getattr(f, 'shape', type(f).__name__)}")
        task_token = self.task_encoder(task, batch_size=b)
        if task_token.shape[0] != b:
            raise ValueError(f"{who}: `task` gives {task_token.shape[0]} tasks for a batch of {b}")
        task_token = task_token.to(mask_features.dtype)
        dev, dt, d = mask_features.device, mask_features.dtype, self.hidden_dim
        src, pos, sizes = [], [], []
        for lvl, (f, proj) in enumerate(zip(features, self.input_proj)):
            sizes.append(tuple(f.shape[-2:]))
            src.append(proj(f).flatten(2).transpose(1, 2) + self.level_embed.weight[lvl])
            pos.append(sine_position_embedding(*f.shape[-2:], d, dev, dt).expand(b, -1, -1))
        qpos = self.query_embed.weight.unsqueeze(0).expand(b, -1, -1)
        # N - 1 task-initialised queries, refined over the 1/4-scale features
        q = task_token.unsqueeze(1).expand(b, self.num_queries - 1, d)
        if len(self.query_layers):
            mem = self.query_input_proj(mask_features).flatten(2).transpose(1, 2)
            mem_pos = sine_position_embedding(*mask_features.shape[-2:], d, dev, dt)
            for layer in self.query_layers:
                q = layer(q, mem, qpos[:, :-1], mem_pos.expand(b, -1, -1))
            q = self.query_norm(q)
        out = torch.cat([q, task_token.unsqueeze(1)], dim=1)  # [B, N, D]
        aux = []
        logits, masks, attn = self.predict(out, mask_features, sizes[0])
        for i, layer in enumerate(self.layers):
            aux.append((logits, masks))
            lvl = i % len(src)
            out = layer(out, src[lvl], qpos, pos[lvl], attn)
            logits, masks, attn = self.predict(out, mask_features, sizes[(i + 1) % len(src)])
        return OneFormerOutput(logits, masks, aux, task_token)


# ======================================================================================
# Inference fusion (one image, sync-free)
# ======================================================================================


def _check_fusion(mask_cls: Tensor, mask_pred: Tensor, who: str) -> tuple[int, int]:
    if not isinstance(mask_cls, Tensor) or mask_cls.dim() != 2 or mask_cls.shape[1] < 2:
        raise ValueError(f"{who}: `mask_cls` must be [Q, K + 1] with K >= 1, got "
                         f"{getattr(mask_cls, 'shape', type(mask_cls).__name__)}")
    if not isinstance(mask_pred, Tensor) or mask_pred.dim() != 3 or \
            mask_pred.shape[0] != mask_cls.shape[0]:
        raise ValueError(f"{who}: `mask_pred` must be [Q, H, W] with Q = {mask_cls.shape[0]}, "
                         f"got {getattr(mask_pred, 'shape', type(mask_pred).__name__)}")
    if not (mask_cls.is_floating_point() and mask_pred.is_floating_point()):
        raise TypeError(f"{who}: `mask_cls` and `mask_pred` must be floating, got "
                        f"{mask_cls.dtype} and {mask_pred.dtype}")
    if mask_cls.device != mask_pred.device:
        raise ValueError(f"{who}: `mask_cls` and `mask_pred` must be on one device")
    return mask_cls.shape[0], mask_cls.shape[1] - 1


def _check_is_thing(is_thing: object, k: int, device: torch.device, who: str) -> Tensor:
    if not isinstance(is_thing, Tensor):
        is_thing = torch.as_tensor(is_thing, dtype=torch.bool, device=device)
    if is_thing.dtype != torch.bool or tuple(is_thing.shape) != (k,):
        raise ValueError(f"{who}: `is_thing` must be bool [K] = [{k}], got {is_thing.dtype} "
                         f"{tuple(is_thing.shape)}")
    return is_thing.to(device)


def semantic_inference(mask_cls: Tensor, mask_pred: Tensor) -> Tensor:
    """``[Q, K+1]`` class logits, ``[Q, H, W]`` mask logits -> ``[K, H, W]`` class scores:
    ``sum_q softmax(mask_cls)[q, :K] * sigmoid(mask_pred)[q]`` (float32 math; returned in
    ``mask_pred``'s dtype)."""
    _check_fusion(mask_cls, mask_pred, "semantic_inference")
    probs = torch.softmax(mask_cls.float(), dim=-1)[:, :-1]
    return torch.einsum("qc,qhw->chw", probs, mask_pred.float().sigmoid()).to(mask_pred.dtype)


class InstanceResult(NamedTuple):
    masks: Tensor  #: bool ``[k, H, W]``: ``mask_logit > 0``
    scores: Tensor  #: float32 ``[k]``: class prob x mean mask sigmoid inside the mask
    labels: Tensor  #: int64 ``[k]``
    query_index: Tensor  #: int64 ``[k]``
    valid: Tensor  #: bool ``[k]``: ``is_thing[label]`` (all True without ``is_thing``)


def instance_inference(mask_cls: Tensor, mask_pred: Tensor, topk: int = 100,
                       is_thing: Tensor | Sequence[bool] | None = None) -> InstanceResult:
    """Instance fusion: the top ``k = min(topk, Q * K)`` (query, class) pairs by class
    probability (softmax without "no object"; a stable descending sort, so ties go to the
    lower ``q * K + c``), each with its query's mask ``> 0`` and the score ``prob *
    sum(sigmoid * mask) / (sum(mask) + 1e-6)``. The release drops pairs of stuff classes when
    panoptic output is on; here ``is_thing`` (bool ``[K]``) marks them in ``valid`` instead,
    keeping the output size fixed."""
    q, k = _check_fusion(mask_cls, mask_pred, "instance_inference")
    _check_int("topk", topk, 1, "instance_inference")
    scores = torch.softmax(mask_cls.float(), dim=-1)[:, :-1].flatten()
    order = torch.sort(scores, descending=True, stable=True).indices[: min(topk, q * k)]
    labels, query = order % k, torch.div(order, k, rounding_mode="floor")
    logits = mask_pred[query]
    masks = logits > 0
    fg = masks.flatten(1).float()
    mask_score = (logits.float().sigmoid().flatten(1) * fg).sum(1) / (fg.sum(1) + 1e-6)
    valid = (torch.ones_like(masks[:, 0, 0]) if is_thing is None else
             _check_is_thing(is_thing, k, mask_cls.device, "instance_inference")[labels])
    return InstanceResult(masks, scores[order] * mask_score, labels, query, valid)


class PanopticResult(NamedTuple):
    panoptic_seg: Tensor  #: int32 ``[H, W]``: segment id (1-based), 0 = void
    segment_classes: Tensor  #: int64 ``[Q]``: class of segment ``i + 1``; -1 padding
    segment_isthing: Tensor  #: bool ``[Q]``; False padding
    segment_query: Tensor  #: int64 ``[Q]``: first query of segment ``i + 1``; -1 padding
    num_segments: Tensor  #: int64 0-d


def panoptic_inference(mask_cls: Tensor, mask_pred: Tensor, is_thing: Tensor | Sequence[bool],
                       object_mask_threshold: float = 0.8, overlap_threshold: float = 0.8
                       ) -> PanopticResult:
    """Panoptic fusion, the release's rules without its per-query loop.

    Queries are kept when their top class is not "no object" and its probability is
    ``> object_mask_threshold``; each pixel goes to the kept query with the largest
    ``prob * sigmoid(mask)`` (the first on ties). A kept query ``q`` makes a segment of the
    pixels it won where ``sigmoid >= 0.5`` iff it won some pixels, its own ``sigmoid >= 0.5``
    area is non-empty, the two meet, and (won area) / (own area) ``>= overlap_threshold``.
    Segment ids are 1, 2, ... in query order; a stuff query whose class already has a
    segment (from an earlier query) adds its pixels to that segment instead of a new one.
    """
    q, k = _check_fusion(mask_cls, mask_pred, "panoptic_inference")
    thing_of_class = _check_is_thing(is_thing, k, mask_cls.device, "panoptic_inference")
    scores, labels = torch.softmax(mask_cls.float(), dim=-1).max(dim=-1)
    sig = mask_pred.float().sigmoid()
    keep = (labels != k) & (scores > object_mask_threshold)
    prob = torch.where(keep[:, None, None], scores[:, None, None] * sig,
                       torch.full_like(sig, -1.0))
    ids = prob.argmax(dim=0)  # [H, W]
    qs = torch.arange(q, device=mask_cls.device)
    won = ids.unsqueeze(0) == qs[:, None, None]  # [Q, H, W]
    fg = sig >= 0.5
    won_area, own_area = won.flatten(1).sum(1), fg.flatten(1).sum(1)
    meet = (won & fg).flatten(1).any(1)
    ratio_ok = won_area.double() / own_area.clamp(min=1).double() >= overlap_threshold
    valid = keep & (won_area > 0) & (own_area > 0) & meet & ratio_ok
    thing = thing_of_class[labels.clamp(max=k - 1)]
    stuff = valid & ~thing
    same_stuff = (labels[:, None] == labels[None, :]) & stuff[:, None] & stuff[None, :]
    earlier = qs[None, :] < qs[:, None]  # [q, j]: j before q
    new_seg = valid & ~(same_stuff & earlier).any(1)
    new_id = torch.cumsum(new_seg.long(), 0)  # id of each new segment
    rep = torch.where(stuff, same_stuff.int().argmax(1), qs)  # first query of the segment
    seg_id = torch.where(valid, new_id[rep], torch.zeros_like(new_id))
    pix = valid[ids] & fg.gather(0, ids.unsqueeze(0)).squeeze(0)
    panoptic = torch.where(pix, seg_id[ids], torch.zeros_like(ids)).to(torch.int32)
    slot = new_seg[None, :] & (new_id[None, :] == qs[:, None] + 1)  # [segment, query]
    has = slot.any(1)
    first_q = slot.int().argmax(1)
    neg = torch.full_like(qs, -1)
    return PanopticResult(panoptic, torch.where(has, labels[first_q], neg),
                          has & thing[first_q], torch.where(has, first_q, neg),
                          new_seg.sum())
