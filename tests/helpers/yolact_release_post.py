"""A transcription of dbolya/yolact's released ``Detect``, ``postprocess`` and
``MultiBoxLoss`` for the released configurations (see ``helpers.yolact_release``): the
oracle of the YOLACT tests and the "released way" baseline of ``benchmarks/yolact_e2e.py``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .yolact_release import crop, decode, jaccard, match, sanitize_coordinates

# ======================================================================================
# Detect (layers/functions/detection.py) and its NMS variants
# ======================================================================================


def cython_nms(dets: np.ndarray, thresh: float) -> np.ndarray:
    """``utils/cython_nms.pyx``: greedy NMS on float32 ``[n, 5]`` (x1, y1, x2, y2, score),
    Fast R-CNN's +1 widths, suppression at ``ovr >= thresh``; kept indices ascending.
    The inner loop is vectorised with the same float32 arithmetic (suppressing an already
    suppressed box again changes nothing)."""
    thresh = np.float32(thresh)
    one, zero = np.float32(1), np.float32(0)
    x1, y1, x2, y2, scores = (dets[:, c] for c in range(5))
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    order = scores.argsort()[::-1]
    suppressed = np.zeros(dets.shape[0], dtype=np.int64)
    for _i in range(dets.shape[0]):
        i = order[_i]
        if suppressed[i] == 1:
            continue
        js = order[_i + 1:]
        xx1 = np.where(x1[i] >= x1[js], x1[i], x1[js])  # the pyx's max(a, b)
        yy1 = np.where(y1[i] >= y1[js], y1[i], y1[js])
        xx2 = np.where(x2[i] <= x2[js], x2[i], x2[js])  # the pyx's min(a, b)
        yy2 = np.where(y2[i] <= y2[js], y2[i], y2[js])
        w = xx2 - xx1 + one
        h = yy2 - yy1 + one
        w = np.where(zero >= w, zero, w)
        h = np.where(zero >= h, zero, h)
        inter = w * h
        ovr = inter / (areas[i] + areas[js] - inter)
        suppressed[js[ovr >= thresh]] = 1
    return np.where(suppressed == 0)[0]


def _fast_nms(boxes, masks, scores, iou_threshold, top_k, max_num_detections):
    scores, idx = scores.sort(1, descending=True)
    idx = idx[:, :top_k].contiguous()
    scores = scores[:, :top_k]
    num_classes, num_dets = idx.size()
    boxes = boxes[idx.view(-1), :].view(num_classes, num_dets, 4)
    masks = masks[idx.view(-1), :].view(num_classes, num_dets, -1)
    iou = jaccard(boxes, boxes)
    iou.triu_(diagonal=1)
    iou_max, _ = iou.max(dim=1)
    keep = iou_max <= iou_threshold
    classes = torch.arange(num_classes)[:, None].expand_as(keep)[keep]
    boxes, masks, scores = boxes[keep], masks[keep], scores[keep]
    scores, idx = scores.sort(0, descending=True)
    idx = idx[:max_num_detections]
    return boxes[idx], masks[idx], classes[idx], scores[:max_num_detections]


def _cc_fast_nms(boxes, masks, scores, iou_threshold, top_k):
    scores, classes = scores.max(dim=0)
    _, idx = scores.sort(0, descending=True)
    idx = idx[:top_k]
    iou = jaccard(boxes[idx], boxes[idx])
    iou.triu_(diagonal=1)
    iou_max, _ = torch.max(iou, dim=0)
    idx_out = idx[iou_max <= iou_threshold]
    return boxes[idx_out], masks[idx_out], classes[idx_out], scores[idx_out]


def _traditional_nms(boxes, masks, scores, iou_threshold, conf_thresh, max_num_detections,
                     max_size):
    idx_lst, cls_lst, scr_lst = [], [], []
    boxes = boxes * max_size
    for _cls in range(scores.size(0)):
        cls_scores = scores[_cls, :]
        conf_mask = cls_scores > conf_thresh
        idx = torch.arange(cls_scores.size(0))
        cls_scores = cls_scores[conf_mask]
        idx = idx[conf_mask]
        if cls_scores.size(0) == 0:
            continue
        preds = torch.cat([boxes[conf_mask], cls_scores[:, None]], dim=1).numpy()
        keep = torch.Tensor(cython_nms(preds, iou_threshold)).long()
        idx_lst.append(idx[keep])
        cls_lst.append(keep * 0 + _cls)
        scr_lst.append(cls_scores[keep])
    idx = torch.cat(idx_lst, dim=0)
    classes = torch.cat(cls_lst, dim=0)
    scores = torch.cat(scr_lst, dim=0)
    scores, idx2 = scores.sort(0, descending=True)
    idx2 = idx2[:max_num_detections]
    scores = scores[:max_num_detections]
    idx = idx[idx2]
    classes = classes[idx2]
    return boxes[idx] / max_size, masks[idx], classes, scores


def released_detect(preds, image=0, nms="fast", conf_thresh=0.05, nms_thresh=0.5, top_k=200,
                    max_num_detections=100, max_size=550):
    """``Detect.__call__`` + ``Detect.detect`` for one image of a batch, after the eval-mode
    forward's softmax; ``preds`` has ``loc``, ``conf`` (logits), ``mask``, ``priors``,
    ``proto``. ``nms``: ``"fast"``, ``"cc"`` (cross-class) or ``"traditional"``.
    Returns ``{box, mask (coefficients), class, score, proto}`` or None."""
    conf_data = F.softmax(preds["conf"], -1)
    batch_size, num_priors = preds["loc"].size(0), preds["priors"].size(0)
    conf_preds = conf_data.view(batch_size, num_priors, -1).transpose(2, 1).contiguous()
    decoded_boxes = decode(preds["loc"][image], preds["priors"])
    cur_scores = conf_preds[image, 1:, :]
    conf_scores, _ = torch.max(cur_scores, dim=0)
    keep = conf_scores > conf_thresh
    scores = cur_scores[:, keep]
    boxes = decoded_boxes[keep, :]
    masks = preds["mask"][image, keep, :]
    if scores.size(1) == 0:
        return None
    if nms == "fast":
        out = _fast_nms(boxes, masks, scores, nms_thresh, top_k, max_num_detections)
    elif nms == "cc":
        out = _cc_fast_nms(boxes, masks, scores, nms_thresh, top_k)
    else:
        out = _traditional_nms(boxes, masks, scores, nms_thresh, conf_thresh,
                               max_num_detections, max_size)
    boxes, masks, classes, scores = out
    return {"box": boxes, "mask": masks, "class": classes, "score": scores,
            "proto": preds["proto"][image]}


def released_postprocess(det, w, h, crop_masks=True, score_threshold=0.0, return_float=True):
    """``postprocess`` (lincomb, eval_mask_branch): ``(classes, scores, boxes int64,
    masks float 0/1)``, and with ``return_float`` the upsampled float masks before the
    threshold (a copy; without it the threshold is in place, as the release's ``gt_``)."""
    det = dict(det)
    if score_threshold > 0:
        keep = det["score"] > score_threshold
        for k in det:
            if k != "proto":
                det[k] = det[k][keep]
    classes, boxes, scores, masks = det["class"], det["box"].clone(), det["score"], det["mask"]
    masks = torch.sigmoid(det["proto"] @ masks.t())
    if crop_masks:
        masks = crop(masks, boxes)
    masks = masks.permute(2, 0, 1).contiguous()
    masks = F.interpolate(masks.unsqueeze(0), (h, w), mode="bilinear",
                          align_corners=False).squeeze(0)
    upsampled = masks.clone() if return_float else None
    masks.gt_(0.5)
    boxes[:, 0], boxes[:, 2] = sanitize_coordinates(boxes[:, 0], boxes[:, 2], w)
    boxes[:, 1], boxes[:, 3] = sanitize_coordinates(boxes[:, 1], boxes[:, 3], h)
    out = (classes, scores, boxes.long(), masks)
    return out + (upsampled,) if return_float else out


# ======================================================================================
# MultiBoxLoss (layers/modules/multibox_loss.py), yolact_base settings
# ======================================================================================


def _log_sum_exp(x):
    x_max = x.data.max()
    return torch.log(torch.sum(torch.exp(x - x_max), 1)) + x_max


def released_loss(preds, boxes, labels, masks, num_crowds, num_classes=81, pos_thresh=0.5,
                  neg_thresh=0.4, crowd_iou_threshold=0.7, negpos_ratio=3, bbox_alpha=1.5,
                  conf_alpha=1, mask_alpha=6.125, masks_to_train=100, semantic_alpha=1):
    """``MultiBoxLoss.forward`` for lincomb + semantic segmentation: ``{B, M, C, S}`` and
    their sum ``T``. ``preds``: ``loc``, ``conf``, ``mask``, ``priors``, ``proto``, ``segm``;
    per image ``boxes [G, 4]``, ``labels [G]``, ``masks [G, H, W]`` (crowds last).
    The ``masks_to_train`` draws use torch's global RNG, as the release."""
    loc_data, conf_data, mask_data = preds["loc"], preds["conf"], preds["mask"]
    priors, proto_data = preds["priors"], preds["proto"]
    batch_size, num_priors = loc_data.size(0), priors.size(0)
    loc_t = loc_data.new(batch_size, num_priors, 4)
    gt_box_t = loc_data.new(batch_size, num_priors, 4)
    conf_t = loc_data.new(batch_size, num_priors).long()
    idx_t = loc_data.new(batch_size, num_priors).long()
    labels, masks = [lab.long() for lab in labels], list(masks)
    for idx in range(batch_size):
        truths = boxes[idx]
        crowd_boxes = None
        cur_crowds = num_crowds[idx]
        if cur_crowds > 0:
            crowd_boxes, truths = truths[-cur_crowds:], truths[:-cur_crowds]
            labels[idx] = labels[idx][:-cur_crowds]
            masks[idx] = masks[idx][:-cur_crowds]
        c, i, lt = match(pos_thresh, neg_thresh, truths, priors, labels[idx], crowd_boxes,
                         crowd_iou_threshold)
        loc_t[idx], conf_t[idx], idx_t[idx] = lt, c, i
        gt_box_t[idx] = truths[idx_t[idx]]
    pos = conf_t > 0
    num_pos = pos.sum(dim=1, keepdim=True)
    pos_idx = pos.unsqueeze(pos.dim()).expand_as(loc_data)
    losses = {}
    loc_p = loc_data[pos_idx].view(-1, 4)
    losses["B"] = F.smooth_l1_loss(loc_p, loc_t[pos_idx].view(-1, 4), reduction="sum") * bbox_alpha

    # lincomb_mask_loss
    mask_h, mask_w = proto_data.size(1), proto_data.size(2)
    loss_m = 0
    for idx in range(batch_size):
        with torch.no_grad():
            down = F.interpolate(masks[idx].float().unsqueeze(0), (mask_h, mask_w),
                                 mode="bilinear", align_corners=False).squeeze(0)
            down = down.permute(1, 2, 0).contiguous().gt(0.5).float()
        cur_pos = pos[idx]
        pos_idx_t = idx_t[idx, cur_pos]
        pos_gt_box_t = gt_box_t[idx, cur_pos]
        if pos_idx_t.size(0) == 0:
            continue
        proto_coef = mask_data[idx, cur_pos, :]
        old_num_pos = proto_coef.size(0)
        if old_num_pos > masks_to_train:
            select = torch.randperm(proto_coef.size(0))[:masks_to_train]
            proto_coef, pos_idx_t = proto_coef[select, :], pos_idx_t[select]
            pos_gt_box_t = pos_gt_box_t[select, :]
        num_pos_i = proto_coef.size(0)
        mask_t = down[:, :, pos_idx_t]
        pred_masks = torch.sigmoid(proto_data[idx] @ proto_coef.t())
        pred_masks = crop(pred_masks, pos_gt_box_t)
        pre_loss = F.binary_cross_entropy(torch.clamp(pred_masks, 0, 1), mask_t, reduction="none")
        weight = mask_h * mask_w
        gt_box_width = (pos_gt_box_t[:, 2] - pos_gt_box_t[:, 0]) * mask_w
        gt_box_height = (pos_gt_box_t[:, 3] - pos_gt_box_t[:, 1]) * mask_h
        pre_loss = pre_loss.sum(dim=(0, 1)) / gt_box_width / gt_box_height * weight
        if old_num_pos > num_pos_i:
            pre_loss *= old_num_pos / num_pos_i
        loss_m += torch.sum(pre_loss)
    losses["M"] = loss_m * mask_alpha / mask_h / mask_w

    # ohem_conf_loss
    batch_conf = conf_data.view(-1, num_classes)
    loss_c = _log_sum_exp(batch_conf) - batch_conf[:, 0]
    loss_c = loss_c.view(batch_size, -1)
    loss_c[pos] = 0
    loss_c[conf_t < 0] = 0
    _, loss_idx = loss_c.sort(1, descending=True)
    _, idx_rank = loss_idx.sort(1)
    num_pos_l = pos.long().sum(1, keepdim=True)
    num_neg = torch.clamp(negpos_ratio * num_pos_l, max=pos.size(1) - 1)
    neg = idx_rank < num_neg.expand_as(idx_rank)
    neg[pos] = 0
    neg[conf_t < 0] = 0
    pos_idx = pos.unsqueeze(2).expand_as(conf_data)
    neg_idx = neg.unsqueeze(2).expand_as(conf_data)
    conf_p = conf_data[(pos_idx + neg_idx).gt(0)].view(-1, num_classes)
    targets_weighted = conf_t[(pos + neg).gt(0)]
    losses["C"] = conf_alpha * F.cross_entropy(conf_p, targets_weighted, reduction="none").sum()

    # semantic_segmentation_loss
    segment_data = preds["segm"]
    _, _, seg_h, seg_w = segment_data.size()
    loss_s = 0
    for idx in range(batch_size):
        cur_segment = segment_data[idx]
        with torch.no_grad():
            down = F.interpolate(masks[idx].float().unsqueeze(0), (seg_h, seg_w), mode="bilinear",
                                 align_corners=False).squeeze(0).gt(0.5).float()
            segment_t = torch.zeros_like(cur_segment, requires_grad=False)
            for obj_idx in range(down.size(0)):
                c = labels[idx][obj_idx]
                segment_t[c] = torch.max(segment_t[c], down[obj_idx])
        loss_s += F.binary_cross_entropy_with_logits(cur_segment, segment_t, reduction="sum")
    losses["S"] = loss_s / seg_h / seg_w * semantic_alpha

    total_num_pos = num_pos.data.sum().float()
    for k in losses:
        if k == "S":
            losses[k] /= batch_size
        else:
            losses[k] /= total_num_pos
    losses["T"] = sum([losses[k] for k in ("B", "M", "C", "S")])
    return losses
