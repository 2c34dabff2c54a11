"""A transcription of dbolya/yolact's released arithmetic: the oracle of the YOLACT model
tests and the "released way" baseline of ``benchmarks/yolact_e2e.py``.

Written for segops from the release's definitions (``yolact.py``, ``backbone.py``,
``data/config.py``, ``layers/box_utils.py``, ``layers/functions/detection.py``,
``layers/output_utils.py``, ``layers/modules/multibox_loss.py``, ``utils/cython_nms.pyx``):
plain PyTorch / numpy in the release's order of operations, independent of
``segops.models.yolact`` (it reads weights by the release's names from a state dict).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

VARIANCES = (0.1, 0.2)

# ======================================================================================
# the released state_dict layout (the constructors' rules)
# ======================================================================================


def _conv(out: int, inp: int, k: int, bias: bool = True) -> list[tuple[str, tuple]]:
    return [("weight", (out, inp, k, k))] + ([("bias", (out,))] if bias else [])


def _bn(c: int) -> list[tuple[str, tuple]]:
    return [("weight", (c,)), ("bias", (c,)), ("running_mean", (c,)), ("running_var", (c,)),
            ("num_batches_tracked", ())]


def released_state_dict_shapes(backbone_layers, num_classes: int = 81, num_downsample: int = 2,
                               anchors: int = 3, k: int = 32) -> dict[str, tuple]:
    """Key -> shape of the release's ``Yolact().state_dict()`` for a ResNet configuration,
    in the release's order: ``ResNetBackbone`` registers ``layers`` before ``conv1``; the
    Yolact registers ``backbone``, ``proto_net``, ``fpn``, ``prediction_layers`` (only the
    first has state: the others borrow its layers through an unregistered ``parent``),
    ``semantic_seg_conv``."""
    out: dict[str, tuple] = {}

    def add(prefix, entries):
        for name, shape in entries:
            out[f"{prefix}.{name}"] = shape

    inplanes = 64
    for i, (blocks, planes) in enumerate(zip(backbone_layers, (64, 128, 256, 512))):
        for j in range(blocks):
            p = f"backbone.layers.{i}.{j}"
            add(p + ".conv1", _conv(planes, inplanes, 1, False))
            add(p + ".bn1", _bn(planes))
            add(p + ".conv2", _conv(planes, planes, 3, False))
            add(p + ".bn2", _bn(planes))
            add(p + ".conv3", _conv(planes * 4, planes, 1, False))
            add(p + ".bn3", _bn(planes * 4))
            if j == 0:
                add(p + ".downsample.0", _conv(planes * 4, inplanes, 1, False))
                add(p + ".downsample.1", _bn(planes * 4))
            inplanes = planes * 4
    add("backbone.conv1", _conv(64, 3, 7, False))
    add("backbone.bn1", _bn(64))
    for i in (0, 2, 4, 8):
        add(f"proto_net.{i}", _conv(256, 256, 3))
    add("proto_net.10", _conv(k, 256, 1))
    for i, c in enumerate((2048, 1024, 512)):
        add(f"fpn.lat_layers.{i}", _conv(256, c, 1))
    for i in range(3):
        add(f"fpn.pred_layers.{i}", _conv(256, 256, 3))
    for i in range(num_downsample):
        add(f"fpn.downsample_layers.{i}", _conv(256, 256, 3))
    add("prediction_layers.0.upfeature.0", _conv(256, 256, 3))
    add("prediction_layers.0.bbox_layer", _conv(anchors * 4, 256, 3))
    add("prediction_layers.0.conf_layer", _conv(anchors * num_classes, 256, 3))
    add("prediction_layers.0.mask_layer", _conv(anchors * k, 256, 3))
    add("semantic_seg_conv", _conv(num_classes - 1, 256, 1))
    return out


# ======================================================================================
# the network, functionally from a state dict (yolact.py, backbone.py)
# ======================================================================================


def _bn_apply(sd, p, x):
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"],
                        sd[p + ".bias"], False, 0.1, 1e-5)


def released_forward(sd, x, scales, aspect_ratios=(1, 0.5, 2), max_size=550):
    """Eval-mode ``Yolact.forward`` up to (not including) the softmax and ``Detect``:
    ``{loc, conf (logits), mask (coefficients), priors, proto, segm}``."""
    x = F.relu(_bn_apply(sd, "backbone.bn1", F.conv2d(x, sd["backbone.conv1.weight"], None, 2, 3)))
    x = F.max_pool2d(x, 3, 2, 1)
    outs = []
    for i in range(4):
        j = 0
        while f"backbone.layers.{i}.{j}.conv1.weight" in sd:
            p = f"backbone.layers.{i}.{j}"
            stride = 2 if (i > 0 and j == 0) else 1
            out = F.relu(_bn_apply(sd, p + ".bn1", F.conv2d(x, sd[p + ".conv1.weight"])))
            out = F.relu(_bn_apply(sd, p + ".bn2", F.conv2d(out, sd[p + ".conv2.weight"], None,
                                                           stride, 1)))
            out = _bn_apply(sd, p + ".bn3", F.conv2d(out, sd[p + ".conv3.weight"]))
            if j == 0:
                residual = _bn_apply(sd, p + ".downsample.1",
                                     F.conv2d(x, sd[p + ".downsample.0.weight"], None, stride))
            else:
                residual = x
            out += residual
            x = F.relu(out)
            j += 1
        outs.append(x)
    convouts = outs[1:4]

    def conv(name, t, stride=1, padding=0):
        return F.conv2d(t, sd[name + ".weight"], sd[name + ".bias"], stride, padding)

    # FPN: layers stored top-down, j = len - 1 - i
    out = [None] * 3
    y = torch.zeros(1)
    for i in range(3):
        j = 2 - i
        if j < 2:
            y = F.interpolate(y, size=convouts[j].shape[-2:], mode="bilinear", align_corners=False)
        y = y + conv(f"fpn.lat_layers.{i}", convouts[j])
        out[j] = y
    for i in range(3):
        j = 2 - i
        out[j] = F.relu(conv(f"fpn.pred_layers.{i}", out[j], padding=1))
    d = 0
    while f"fpn.downsample_layers.{d}.weight" in sd:
        out.append(conv(f"fpn.downsample_layers.{d}", out[-1], 2, 1))
        d += 1
    # protonet
    p = out[0]
    for i in (0, 2, 4):
        p = F.relu(conv(f"proto_net.{i}", p, padding=1))
    p = F.relu(F.interpolate(p, scale_factor=2, mode="bilinear", align_corners=False))
    p = F.relu(conv("proto_net.8", p, padding=1))
    proto = F.relu(conv("proto_net.10", p)).permute(0, 2, 3, 1).contiguous()
    # shared prediction head
    nc = sd["prediction_layers.0.conf_layer.weight"].shape[0] // len(aspect_ratios)
    k = sd["prediction_layers.0.mask_layer.weight"].shape[0] // len(aspect_ratios)
    locs, confs, masks, priors = [], [], [], []
    for lvl, t in enumerate(out):
        b = t.shape[0]
        u = F.relu(conv("prediction_layers.0.upfeature.0", t, padding=1))
        locs.append(conv("prediction_layers.0.bbox_layer", u, padding=1)
                    .permute(0, 2, 3, 1).contiguous().view(b, -1, 4))
        confs.append(conv("prediction_layers.0.conf_layer", u, padding=1)
                     .permute(0, 2, 3, 1).contiguous().view(b, -1, nc))
        masks.append(torch.tanh(conv("prediction_layers.0.mask_layer", u, padding=1)
                                .permute(0, 2, 3, 1).contiguous().view(b, -1, k)))
        priors.append(released_priors(t.shape[2], t.shape[3], scales[lvl], aspect_ratios,
                                      max_size))
    return {"loc": torch.cat(locs, -2), "conf": torch.cat(confs, -2),
            "mask": torch.cat(masks, -2), "priors": torch.cat(priors, -2), "proto": proto,
            "segm": conv("semantic_seg_conv", out[0])}


def released_priors(conv_h, conv_w, scale, aspect_ratios=(1, 0.5, 2), max_size=550):
    """``PredictionModule.make_priors`` (use_pixel_scales, preapply_sqrt=False,
    use_square_anchors)."""
    prior_data = []
    for j, i in itertools.product(range(conv_h), range(conv_w)):
        x = (i + 0.5) / conv_w
        y = (j + 0.5) / conv_h
        for ar in aspect_ratios:
            ar = math.sqrt(ar)
            w = scale * ar / max_size
            h = scale / ar / max_size
            h = w
            prior_data += [x, y, w, h]
    return torch.Tensor(prior_data).view(-1, 4)


# ======================================================================================
# box utilities (layers/box_utils.py)
# ======================================================================================


def point_form(boxes):
    return torch.cat((boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2), 1)


def jaccard(box_a, box_b, iscrowd=False):
    """IoU of ``[A, 4]`` x ``[B, 4]`` boxes, or batched ``[n, A, 4]`` x ``[n, B, 4]``."""
    use_batch = box_a.dim() == 3
    a, b = (box_a, box_b) if use_batch else (box_a[None], box_b[None])
    n, na, nb = a.size(0), a.size(1), b.size(1)
    max_xy = torch.min(a[:, :, 2:].unsqueeze(2).expand(n, na, nb, 2),
                       b[:, :, 2:].unsqueeze(1).expand(n, na, nb, 2))
    min_xy = torch.max(a[:, :, :2].unsqueeze(2).expand(n, na, nb, 2),
                       b[:, :, :2].unsqueeze(1).expand(n, na, nb, 2))
    inter = torch.clamp(max_xy - min_xy, min=0).prod(3)
    area_a = ((a[:, :, 2] - a[:, :, 0]) * (a[:, :, 3] - a[:, :, 1])).unsqueeze(2).expand_as(inter)
    area_b = ((b[:, :, 2] - b[:, :, 0]) * (b[:, :, 3] - b[:, :, 1])).unsqueeze(1).expand_as(inter)
    out = inter / area_a if iscrowd else inter / (area_a + area_b - inter)
    return out if use_batch else out.squeeze(0)


def decode(loc, priors):
    boxes = torch.cat((priors[:, :2] + loc[:, :2] * VARIANCES[0] * priors[:, 2:],
                       priors[:, 2:] * torch.exp(loc[:, 2:] * VARIANCES[1])), 1)
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def encode(matched, priors):
    g_cxcy = (matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]
    g_cxcy /= VARIANCES[0] * priors[:, 2:]
    g_wh = (matched[:, 2:] - matched[:, :2]) / priors[:, 2:]
    g_wh = torch.log(g_wh) / VARIANCES[1]
    return torch.cat([g_cxcy, g_wh], 1)


def sanitize_coordinates(_x1, _x2, img_size, padding=0):
    _x1 = _x1 * img_size
    _x2 = _x2 * img_size
    x1 = torch.min(_x1, _x2)
    x2 = torch.max(_x1, _x2)
    return torch.clamp(x1 - padding, min=0), torch.clamp(x2 + padding, max=img_size)


def crop(masks, boxes, padding=1):
    """``masks [h, w, n]`` zeroed outside the relative ``boxes [n, 4]`` (+ padding)."""
    h, w, n = masks.size()
    x1, x2 = sanitize_coordinates(boxes[:, 0], boxes[:, 2], w, padding)
    y1, y2 = sanitize_coordinates(boxes[:, 1], boxes[:, 3], h, padding)
    rows = torch.arange(w, dtype=x1.dtype).view(1, -1, 1).expand(h, w, n)
    cols = torch.arange(h, dtype=x1.dtype).view(-1, 1, 1).expand(h, w, n)
    keep = (rows >= x1.view(1, 1, -1)) * (rows < x2.view(1, 1, -1)) \
        * (cols >= y1.view(1, 1, -1)) * (cols < y2.view(1, 1, -1))
    return masks * keep.float()


def match(pos_thresh, neg_thresh, truths, priors, labels, crowd_boxes, crowd_iou_threshold):
    """``match`` for one image: ``(conf_t, idx_t, loc_t)``."""
    decoded_priors = point_form(priors)
    overlaps = jaccard(truths, decoded_priors)
    best_truth_overlap, best_truth_idx = overlaps.max(0)
    for _ in range(overlaps.size(0)):
        best_prior_overlap, best_prior_idx = overlaps.max(1)
        j = best_prior_overlap.max(0)[1]
        i = best_prior_idx[j]
        overlaps[:, i] = -1
        overlaps[j, :] = -1
        best_truth_overlap[i] = 2
        best_truth_idx[i] = j
    matches = truths[best_truth_idx]
    conf = labels[best_truth_idx] + 1
    conf[best_truth_overlap < pos_thresh] = -1
    conf[best_truth_overlap < neg_thresh] = 0
    if crowd_boxes is not None and crowd_iou_threshold < 1:
        crowd_overlaps = jaccard(decoded_priors, crowd_boxes, iscrowd=True)
        best_crowd_overlap, _ = crowd_overlaps.max(1)
        conf[(conf <= 0) & (best_crowd_overlap > crowd_iou_threshold)] = -1
    return conf, best_truth_idx, encode(matches, priors)
