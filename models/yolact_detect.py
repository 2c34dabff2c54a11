"""YOLACT's inference post-processing: the release's ``Detect`` (``layers/functions/
detection.py``) and ``postprocess`` (``layers/output_utils.py``) on segops' ops.

Per image, as the release: softmax over the class logits; boxes decoded
(:func:`~segops.models.yolact_boxes.decode`); anchors whose best foreground score is not
``> conf_thresh`` dropped; then one of

* ``nms="fast"`` (the release's default, ``eval.py --fast_nms=True``): per-class Fast NMS,
  :func:`segops.fast_nms` (``cross_class=True``: ``cc_fast_nms``, no detection cap);
* ``nms="traditional"`` (``--fast_nms=False``): per class, the candidates scoring
  ``> conf_thresh`` go through greedy NMS with the release's Cython ``nms`` semantics --
  boxes scaled by ``max_size``, Fast R-CNN's ``+1`` widths, suppression at IoU
  ``>= nms_thresh`` -- run as :func:`segops.batched_nms` on boxes with ``x2 + 1, y2 + 1``
  and the next float below the threshold; all classes' survivors sorted by score, the
  first ``max_num_detections`` kept, boxes ``(b * max_size) / max_size`` as the release
  returns them.

Then ``postprocess``: masks ``sigmoid(protos @ coeffs.T)``, cropped by the detection's
box (1 proto-pixel padding), bilinearly upsampled to the image size and ``> 0.5`` -- one
fused :func:`segops.assemble_masks` (``image_size=``) call; boxes scaled to pixels by
``sanitize_coordinates(cast=False)`` and cast to int64 (the release's ``boxes.long()``).

Differences from the release, all at rounding or tie level:

* masks: :func:`segops.assemble_masks` sums the linear combination in its own order and
  upsamples without FMA, so a pixel whose upsampled value lies within a few float32
  ulps of 0.5 may differ from torch's ``matmul`` + ``interpolate`` (docs/ops/masks.md);
* score ties: segops' sorts are stable (lower anchor first), the release's are not (with a
  saturated softmax, many scores equal 1.0 and the two may keep different anchors);
* a decoded box with a non-finite coordinate (``exp`` overflow) is never kept;
* traditional NMS: the ``+1`` is added to the coordinates rather than to their
  differences, so an IoU within float32 rounding of the threshold may compare differently;
* zero detections give empty tensors of the usual shapes (the release returns four
  empty, shape-less tensors).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

import segops

from .yolact_boxes import decode

__all__ = ["Detect"]


class Detect:
    """YOLACT's ``Detect`` + ``postprocess`` (defaults: the release's).

    Args:
        conf_thresh: anchors whose best foreground score is not above it are dropped
            (``nms_conf_thresh``, 0.05); with ``nms="traditional"`` also the per-class
            candidate threshold.
        nms_thresh: the NMS IoU threshold (0.5).
        top_k: Fast NMS candidates per class (per image with ``cross_class``) (200).
        max_num_detections: detections kept per image (100; not applied by the release's
            ``cc_fast_nms``).
        nms: ``"fast"`` or ``"traditional"``.
        cross_class: the release's ``cc_fast_nms`` (``nms="fast"`` only: the release has no
            cross-class traditional NMS).
        second_threshold: Fast NMS's optional second ``score > conf_thresh`` test (off in
            the release).
        max_size: the configuration's input size, the scale of traditional NMS's boxes.
        score_threshold: ``postprocess``'s ``score_threshold``: detections scoring
            ``<= score_threshold`` are dropped after NMS when it is positive (0).
        crop_masks: ``postprocess``'s ``crop_masks`` (True).
        mask_threshold: the foreground test ``value > mask_threshold`` (0.5).
    """

    def __init__(
        self,
        conf_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        top_k: int = 200,
        max_num_detections: int = 100,
        nms: str = "fast",
        cross_class: bool = False,
        second_threshold: bool = False,
        max_size: int = 550,
        score_threshold: float = 0.0,
        crop_masks: bool = True,
        mask_threshold: float = 0.5,
    ) -> None:
        if nms not in ("fast", "traditional"):
            raise ValueError(f"Detect: `nms` must be 'fast' or 'traditional', got {nms!r}")
        if nms == "traditional" and (cross_class or second_threshold):
            raise ValueError("Detect: `cross_class` and `second_threshold` apply to "
                             "nms='fast' only (the release has no cross-class traditional NMS)")
        if not nms_thresh > 0:
            raise ValueError(f"Detect: `nms_thresh` must be > 0, got {nms_thresh}")
        self.conf_thresh = float(conf_thresh)
        self.nms_thresh = float(nms_thresh)
        self.top_k = int(top_k)
        self.max_num_detections = int(max_num_detections)
        self.nms = nms
        self.cross_class = bool(cross_class)
        self.second_threshold = bool(second_threshold)
        self.max_size = max_size
        self.score_threshold = float(score_threshold)
        self.crop_masks = bool(crop_masks)
        self.mask_threshold = float(mask_threshold)

    @classmethod
    def from_config(cls, config, **kwargs) -> Detect:
        """A :class:`Detect` with a :class:`~segops.models.yolact_config.YolactConfig`'s
        settings (``kwargs`` override them)."""
        args = dict(conf_thresh=config.conf_thresh, nms_thresh=config.nms_thresh,
                    top_k=config.top_k, max_num_detections=config.max_num_detections,
                    max_size=config.max_size)
        args.update(kwargs)
        return cls(**args)

    @torch.no_grad()
    def __call__(self, preds: dict[str, Tensor], image_size: tuple[int, int],
                 return_proto_masks: bool = False) -> list[dict[str, Tensor]]:
        """Detections for each image of a batch.

        Args:
            preds: :meth:`Yolact.forward`'s output (``loc``, ``conf`` logits, ``coeffs``,
                ``priors``, ``protos``).
            image_size: ``(H, W)`` of the output masks and pixel boxes (the original
                image's, as the release's ``postprocess(det, w, h)``).
            return_proto_masks: also return the cropped float masks at proto resolution.

        Returns:
            One dict per image, ``D`` detections by decreasing score:
            ``classes int64[D]`` 0-based (background excluded), ``scores [D]``,
            ``boxes int64[D, 4]`` pixel (x1, y1, x2, y2), ``masks bool[D, H, W]``,
            ``relative_boxes [D, 4]`` the decoded boxes the masks are cropped by,
            ``indices int64[D]`` the anchors kept; and, if asked, ``proto_masks
            [D, Hp, Wp]``.
        """
        h, w = int(image_size[0]), int(image_size[1])
        conf = F.softmax(preds["conf"], dim=-1)
        results = []
        for b in range(conf.shape[0]):
            boxes = decode(preds["loc"][b], preds["priors"])
            scores = conf[b].t()[1:].contiguous()  # [C - 1, N]
            if self.nms == "fast":
                idx, classes, sc = segops.fast_nms(
                    boxes, scores, self.nms_thresh, self.top_k, self.conf_thresh,
                    self.max_num_detections, cross_class=self.cross_class,
                    second_threshold=self.second_threshold)
                kept = boxes[idx]
            else:
                idx, classes, sc, kept = self._traditional(boxes, scores)
            if self.score_threshold > 0:
                sel = sc > self.score_threshold
                idx, classes, sc, kept = idx[sel], classes[sel], sc[sel], kept[sel]
            coeffs = preds["coeffs"][b, idx]
            protos = preds["protos"][b]
            crop = kept if self.crop_masks else kept.new_tensor([0.0, 0, 1, 1]).expand_as(kept)
            out = {
                "classes": classes,
                "scores": sc,
                "boxes": _to_pixels(kept, h, w),
                "masks": segops.assemble_masks(protos, coeffs, crop, image_size=(h, w),
                                               threshold=self.mask_threshold),
                "relative_boxes": kept,
                "indices": idx,
            }
            if return_proto_masks:
                out["proto_masks"] = segops.assemble_masks(protos, coeffs, crop)
            results.append(out)
        return results

    def _traditional(self, boxes: Tensor, scores: Tensor) -> tuple[Tensor, ...]:
        """The release's ``traditional_nms`` (see the module docstring) for one image."""
        best = scores.max(dim=0).values
        anchors = torch.nonzero(best > self.conf_thresh).squeeze(1)
        scaled = boxes * self.max_size
        cand = scores[:, anchors] > self.conf_thresh  # [C - 1, K]: (class, anchor) order
        cls, pos = torch.nonzero(cand, as_tuple=True)
        anchor = anchors[pos]
        cand_scores = scores[cls, anchor]
        shifted = scaled[anchor] + scaled.new_tensor([0.0, 0.0, 1.0, 1.0])
        keep = segops.batched_nms(shifted, cand_scores, cls,
                                  math.nextafter(self.nms_thresh, -math.inf))
        keep = keep.sort().values  # back to (class, anchor) order before the final sort
        sc, order = cand_scores[keep].sort(0, descending=True)
        order = order[: self.max_num_detections]
        sel = keep[order]
        boxes_out = scaled[anchor[sel]] / self.max_size  # the release's round trip
        return anchor[sel], cls[sel], sc[: self.max_num_detections], boxes_out


def _to_pixels(boxes: Tensor, h: int, w: int) -> Tensor:
    """The release's ``sanitize_coordinates(cast=False)`` on both axes, then ``.long()``."""
    x1, x2 = boxes[:, 0] * w, boxes[:, 2] * w
    y1, y2 = boxes[:, 1] * h, boxes[:, 3] * h
    return torch.stack([
        torch.minimum(x1, x2).clamp(min=0), torch.minimum(y1, y2).clamp(min=0),
        torch.maximum(x1, x2).clamp(max=w), torch.maximum(y1, y2).clamp(max=h),
    ], dim=1).long()
