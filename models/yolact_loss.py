"""YOLACT's training loss, the release's ``MultiBoxLoss`` (``layers/modules/multibox_loss.py``)
for the released configurations, with the lincomb mask loss on :func:`segops.assemble_masks`.

For a batch of ``B`` images, priors matched to the GT as the release's ``match`` (IoU
``>= 0.5`` positive, ``< 0.4`` background, in between neutral, each GT forced onto its best
prior, non-positives covering a crowd box by ``> 0.7`` of their area neutral), ``P`` the
batch's positive count:

* ``box``: ``bbox_alpha * sum smooth_l1(loc_p, encode(gt, prior))`` over the positives,
  ``/ P`` (``B`` in the release's dict);
* ``conf``: ``conf_alpha * sum cross_entropy`` over the positives and the hard negatives:
  per image the ``min(3 * P_i, N - 1)`` highest-ranked priors by background loss
  ``logsumexp(conf) - conf[0]`` (with the release's batch-global max in the logsumexp),
  positives and neutrals excluded, ``/ P`` (``C``);
* ``mask``: :class:`YolactMaskLoss` (``M``), ``/ P``;
* ``semantic``: ``semantic_alpha * sum BCE-with-logits(segm, target) / (h * w)``, the
  target per class the union of its instances' masks bilinearly downsampled to P3's size and
  ``> 0.5``, ``/ B`` (``S``);
* ``total``: ``box + mask + conf + semantic`` (train.py sums the dict in this order).

Differences from the release: a batch without positives divides by 1 rather than 0, and an
image without (non-crowd) GT is all background rather than an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import segops

from .yolact_boxes import match
from .yolact_config import CONFIGS, YolactConfig

__all__ = ["YolactLoss", "YolactMaskLoss"]


class YolactMaskLoss(nn.Module):
    """YOLACT's ``lincomb_mask_loss`` (``yolact_base_config``) on ``segops.assemble_masks``.

    For each image and each positive anchor ``p`` matched to GT ``g``:
    ``pred_p = assemble_masks(protos, coeffs_p, box_g)`` (sigmoid of the linear combination,
    cropped by the *GT* box with 1 proto-pixel padding, YOLACT's ``mask_proto_crop``);
    ``target_p = interpolate(mask_g, (Hp, Wp), bilinear, align_corners=False) > 0.5``;
    ``l_p = sum_pixels BCE(clamp(pred_p, 0, 1), target_p) / (w_g * Wp) / (h_g * Hp)
    * (Hp * Wp)``: the summed BCE divided by the GT box's area in proto pixels (``w_g``,
    ``h_g`` its relative width and height; ``mask_proto_normalize_emulate_roi_pooling``,
    whose ``Hp * Wp`` weight the final division cancels). When an image has more than
    ``masks_to_train`` positives, a random subset (``torch.randperm``, the release's draw)
    is used and its sum scaled by ``num_pos / masks_to_train``. The loss is
    ``mask_alpha * sum_p l_p / Hp / Wp / total_positives``.

    GT boxes must have positive width and height (YOLACT's data pipeline discards smaller
    ones; a degenerate box divides by zero).
    """

    def __init__(self, mask_alpha: float = 6.125, masks_to_train: int = 100) -> None:
        super().__init__()
        self.mask_alpha = mask_alpha
        self.masks_to_train = masks_to_train

    def image_loss(self, protos: Tensor, coeffs: Tensor, gt_boxes: Tensor, gt_masks: Tensor,
                   gt_index: Tensor | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
        """Un-normalised loss of one image: ``sum_p l_p`` (with the subsample scaling).

        Args:
            protos: ``[Hp, Wp, k]``.
            coeffs: ``[P, k]`` coefficients of the positive anchors.
            gt_boxes: ``[P, 4]`` relative point-form GT box of each positive.
            gt_masks: ``[P, H, W]`` GT mask of each positive (any real dtype, 0/1), or the
                image's ``[G, H, W]`` GT masks when ``gt_index`` is given.
            gt_index: optional ``int64[P]``, the GT each positive is matched to; lets the
                masks be downsampled once per GT as YOLACT does.
            generator: RNG for the ``masks_to_train`` subsample (default: torch's global
                one, as the release).
        """
        hp, wp = protos.shape[0], protos.shape[1]
        num_pos = coeffs.shape[0]
        if num_pos == 0:
            return protos.sum() * 0.0 + coeffs.sum() * 0.0
        with torch.no_grad():
            down = F.interpolate(gt_masks[None].to(protos.dtype), (hp, wp), mode="bilinear",
                                 align_corners=False)[0]
            down = (down > 0.5).to(protos.dtype)
            if gt_index is not None:
                down = down[gt_index]
        scale = 1.0
        if num_pos > self.masks_to_train:
            select = torch.randperm(num_pos, generator=generator,
                                    device="cpu")[: self.masks_to_train].to(coeffs.device)
            coeffs, gt_boxes, down = coeffs[select], gt_boxes[select], down[select]
            scale = num_pos / self.masks_to_train
        pred = segops.assemble_masks(protos, coeffs, gt_boxes)  # [P, Hp, Wp]
        bce = F.binary_cross_entropy(pred.clamp(0, 1), down, reduction="none")
        gt_w = (gt_boxes[:, 2] - gt_boxes[:, 0]).to(bce.dtype) * wp
        gt_h = (gt_boxes[:, 3] - gt_boxes[:, 1]).to(bce.dtype) * hp
        per_mask = bce.sum(dim=(1, 2)) / gt_w / gt_h * (hp * wp)
        if scale != 1.0:
            per_mask = per_mask * scale
        return per_mask.sum()

    def forward(self, protos: Tensor, coeffs: Sequence[Tensor], gt_boxes: Sequence[Tensor],
                gt_masks: Sequence[Tensor], gt_index: Sequence[Tensor] | None = None,
                num_pos: int | Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """The batch's mask loss (a scalar).

        Args:
            protos: ``[B, Hp, Wp, k]`` (or ``[Hp, Wp, k]`` for one image).
            coeffs, gt_boxes, gt_masks, gt_index: per image, as :meth:`image_loss`
                (a single Tensor is taken as one image).
            num_pos: the batch's positive count the loss is divided by (YOLACT counts all
                positives, before the ``masks_to_train`` subsample); default: the sum of
                ``coeffs[i].shape[0]``.
        """
        if protos.dim() == 3:
            protos = protos[None]
        if isinstance(coeffs, Tensor):
            coeffs, gt_boxes, gt_masks = [coeffs], [gt_boxes], [gt_masks]
            gt_index = None if gt_index is None else [gt_index]
        if not (len(coeffs) == len(gt_boxes) == len(gt_masks) == protos.shape[0]):
            raise ValueError("YolactMaskLoss: one entry of coeffs/gt_boxes/gt_masks per image")
        hp, wp = protos.shape[1], protos.shape[2]
        total = protos.new_zeros(())
        for i in range(protos.shape[0]):
            idx = None if gt_index is None else gt_index[i]
            total = total + self.image_loss(protos[i], coeffs[i], gt_boxes[i], gt_masks[i],
                                            idx, generator)
        if num_pos is None:
            num_pos = sum(int(c.shape[0]) for c in coeffs)
        num_pos = num_pos.clamp(min=1) if isinstance(num_pos, Tensor) else max(int(num_pos), 1)
        return total * self.mask_alpha / hp / wp / num_pos


def _background_loss(conf: Tensor) -> Tensor:
    """The release's OHEM ranking: ``log_sum_exp(x) - x[:, 0]`` over ``[M, C]`` logits,
    with ``log_sum_exp``'s single max over the whole tensor (its exact arithmetic)."""
    x_max = conf.max()
    return torch.log(torch.sum(torch.exp(conf - x_max), 1)) + x_max - conf[:, 0]


class YolactLoss(nn.Module):
    """The release's ``MultiBoxLoss`` for the released configurations (module docstring).

    Args:
        num_classes: classes including background (81 for COCO), as :class:`Yolact`.
        config: a :class:`~segops.models.yolact_config.YolactConfig` (default
            ``yolact_base``'s): thresholds, OHEM ratio, loss weights, ``masks_to_train``.
        **overrides: config fields to change.
    """

    def __init__(self, num_classes: int = 81, config: YolactConfig | None = None,
                 **overrides: Any) -> None:
        super().__init__()
        self.config = (CONFIGS["yolact_base"] if config is None else config).replace(**overrides)
        self.num_classes = num_classes
        self.mask_loss = YolactMaskLoss(self.config.mask_alpha, self.config.masks_to_train)

    def forward(self, preds: dict[str, Tensor], gt_boxes: Sequence[Tensor],
                gt_labels: Sequence[Tensor], gt_masks: Sequence[Tensor],
                num_crowds: Sequence[int] | None = None,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The loss terms and their sum.

        Args:
            preds: :meth:`Yolact.forward`'s training-mode output (``loc``, ``conf``,
                ``coeffs``, ``priors``, ``protos``, and ``segm`` for the semantic term).
            gt_boxes: per image ``[G, 4]`` relative point-form boxes.
            gt_labels: per image ``int64[G]`` 0-based classes (background excluded).
            gt_masks: per image ``[G, H, W]`` masks at the input's size (0/1, any dtype).
            num_crowds: per image, how many of the last GT entries are crowd annotations
                (used only to neutralise the priors they cover, as the release).
            generator: RNG of the ``masks_to_train`` subsample (default: torch's global one).

        Returns:
            ``{"box", "conf", "mask", "semantic", "total"}`` scalars (``semantic`` is
            absent without ``preds["segm"]``).
        """
        c = self.config
        loc, conf, priors = preds["loc"], preds["conf"], preds["priors"]
        batch = loc.shape[0]
        if not (len(gt_boxes) == len(gt_labels) == len(gt_masks) == batch):
            raise ValueError("YolactLoss: one entry of gt_boxes/gt_labels/gt_masks per image, "
                             f"got {len(gt_boxes)}/{len(gt_labels)}/{len(gt_masks)} for {batch}")
        boxes, labels, masks, conf_t, idx_t, loc_t = [], [], [], [], [], []
        for i in range(batch):
            b, lab, m = gt_boxes[i], gt_labels[i].long(), gt_masks[i]
            crowd = None
            nc = 0 if num_crowds is None else int(num_crowds[i])
            if nc > 0:
                crowd, b, lab, m = b[-nc:], b[:-nc], lab[:-nc], m[:-nc]
            ct, it, lt = match(b, lab, priors, c.pos_threshold, c.neg_threshold,
                               crowd_boxes=crowd, crowd_iou_threshold=c.crowd_iou_threshold)
            boxes.append(b)
            labels.append(lab)
            masks.append(m)
            conf_t.append(ct)
            idx_t.append(it)
            loc_t.append(lt)
        conf_t_ = torch.stack(conf_t)
        pos = conf_t_ > 0
        total_pos = pos.sum().float().clamp(min=1)

        losses: dict[str, Tensor] = {}
        losses["box"] = F.smooth_l1_loss(loc[pos], torch.stack(loc_t)[pos],
                                         reduction="sum") * c.bbox_alpha / total_pos
        losses["mask"] = self.mask_loss(
            preds["protos"], [preds["coeffs"][i, pos[i]] for i in range(batch)],
            [boxes[i][idx_t[i][pos[i]]] for i in range(batch)], masks,
            gt_index=[idx_t[i][pos[i]] for i in range(batch)], num_pos=total_pos,
            generator=generator)
        losses["conf"] = self._ohem_conf_loss(conf, conf_t_, pos) / total_pos
        if "segm" in preds:
            losses["semantic"] = self._semantic_loss(preds["segm"], masks, labels) / batch
        total = 0
        for v in losses.values():
            total = total + v
        losses["total"] = total
        return losses

    def _ohem_conf_loss(self, conf: Tensor, conf_t: Tensor, pos: Tensor) -> Tensor:
        """The release's ``ohem_conf_loss`` (not yet divided by the positive count)."""
        batch, n, num_classes = conf.shape
        with torch.no_grad():
            rank_loss = _background_loss(conf.reshape(-1, num_classes)).view(batch, n)
            rank_loss[pos] = 0
            rank_loss[conf_t < 0] = 0
            _, loss_idx = rank_loss.sort(1, descending=True)
            # rank of each prior = the inverse permutation (the release sorts loss_idx again)
            idx_rank = torch.empty_like(loss_idx).scatter_(
                1, loss_idx, torch.arange(n, device=conf.device).expand(batch, n))
            num_neg = torch.clamp(self.config.negpos_ratio * pos.long().sum(1, keepdim=True),
                                  max=n - 1)
            neg = (idx_rank < num_neg) & ~pos & (conf_t >= 0)
        sel = pos | neg
        return F.cross_entropy(conf[sel], conf_t[sel], reduction="none").sum() \
            * self.config.conf_alpha

    def _semantic_loss(self, segm: Tensor, masks: list[Tensor], labels: list[Tensor]) -> Tensor:
        """The release's ``semantic_segmentation_loss`` (not yet divided by the batch)."""
        h, w = segm.shape[-2:]
        loss = segm.new_zeros(())
        for i in range(segm.shape[0]):
            target = torch.zeros_like(segm[i])
            if masks[i].shape[0] > 0:
                with torch.no_grad():
                    down = F.interpolate(masks[i][None].to(segm.dtype), (h, w), mode="bilinear",
                                         align_corners=False)[0].gt(0.5).to(segm.dtype)
                    index = labels[i][:, None, None].expand_as(down)
                    target.scatter_reduce_(0, index, down, "amax")
            loss = loss + F.binary_cross_entropy_with_logits(segm[i], target, reduction="sum")
        return loss / h / w * self.config.semantic_alpha
