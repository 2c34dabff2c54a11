"""PSSL, Pseudo Semantic Segmentation Labels (Li et al., "Distilling ensemble of
explanations for weakly-supervised pre-training of image segmentation models", Machine
Learning 2022), a thin definition (docs/models.md).

PSSL pre-trains a segmentation network on an image-classification dataset: each image's
explanations (e.g. SmoothGrad maps) from ``M`` different classifiers are ensembled into a
per-pixel score, quantised into deciles, and the **top decile** becomes a pseudo mask of the
image's class while every other pixel is **background** (class index = number of classes,
1000 on ImageNet). The segmentation loss is a cross-entropy whose background weight is 0.1
(PaddleSeg's ``configs/pssl``: weight 1.0 for each of the 1000 classes, 0.1 for the 1001st).

* :func:`pssl_pseudo_labels`: each explanation map is min-max normalised to ``[0, 1]`` per
  image and model (a constant map becomes 0), the ``M`` maps are averaged, and a pixel is
  in the top decile iff at least 90% of the image's pixels score strictly lower, i.e.
  ``floor(10 * #{y : E(y) < E(x)} / (H * W)) == 9`` -- a rank-based decile in which equal
  scores share a decile (no tie-breaking order involved). Explanations are expected as
  non-negative saliency (e.g. the absolute gradient summed over colour channels, as
  InterpretDL's consensus recipe suggests); signed maps are normalised as they are.
* :func:`pssl_loss` / :class:`PSSLLoss`: weighted cross-entropy, mean over non-ignored pixels
  weighted as PyTorch (and PaddleSeg) do: ``sum_i w[y_i] * ce_i / sum_i w[y_i]``.
  PaddleSeg ignores label ``num_classes + 1`` (1001), the default here too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["pssl_pseudo_labels", "pssl_class_weights", "pssl_loss", "PSSLLoss"]


def _check_int(name: str, v: object, least: int, who: str) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < least:
        raise ValueError(f"{who}: `{name}` must be an int >= {least}, got {v!r}")


def pssl_pseudo_labels(explanations: Tensor, image_labels: Tensor, num_classes: int) -> Tensor:
    """Pseudo labels from an ensemble of explanation maps.

    Args:
        explanations: ``[B, M, H, W]`` floating, ``M >= 1`` maps per image (one per model).
        image_labels: int64 ``[B]``, each image's class in ``[0, num_classes)``.
        num_classes: ``K``; background is labelled ``K``.

    Returns:
        int64 ``[B, H, W]``: ``image_labels[b]`` on the image's top-decile pixels, ``K``
        elsewhere. For ``H * W`` distinct scores the top decile is the ``H * W - ceil(0.9 *
        H * W)`` highest pixels (10 of 100).
    """
    who = "pssl_pseudo_labels"
    if not isinstance(explanations, Tensor) or explanations.dim() != 4 or \
            explanations.shape[1] < 1:
        raise ValueError(f"{who}: `explanations` must be [B, M, H, W] with M >= 1, got "
                         f"{getattr(explanations, 'shape', type(explanations).__name__)}")
    if not explanations.is_floating_point():
        raise TypeError(f"{who}: `explanations` must be floating, got {explanations.dtype}")
    _check_int("num_classes", num_classes, 1, who)
    b, _, h, w = explanations.shape
    if not isinstance(image_labels, Tensor) or image_labels.dtype != torch.int64 or \
            tuple(image_labels.shape) != (b,):
        raise ValueError(f"{who}: `image_labels` must be int64 [B] = [{b}], got "
                         f"{getattr(image_labels, 'dtype', type(image_labels).__name__)} "
                         f"{tuple(getattr(image_labels, 'shape', ()))}")
    if image_labels.device != explanations.device:
        raise ValueError(f"{who}: `image_labels` and `explanations` must be on one device")
    n = h * w
    if n == 0:
        return torch.full((b, h, w), num_classes, dtype=torch.int64, device=explanations.device)
    e = explanations.flatten(2).float()  # [B, M, N]
    lo, hi = e.amin(dim=2, keepdim=True), e.amax(dim=2, keepdim=True)
    span = hi - lo
    e = torch.where(span > 0, (e - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                    torch.zeros_like(e))
    score = e.mean(dim=1)  # [B, N]
    sorted_score = torch.sort(score, dim=1).values
    lower = torch.searchsorted(sorted_score, score, side="left")  # #{y : E(y) < E(x)}
    top = 10 * lower >= 9 * n  # decile index floor(10 * lower / n) == 9
    labels = torch.where(top, image_labels[:, None], torch.full_like(lower, num_classes))
    return labels.reshape(b, h, w)


def pssl_class_weights(num_classes: int, background_weight: float = 0.1,
                       device: torch.device | None = None, dtype: torch.dtype = torch.float32
                       ) -> Tensor:
    """``[K + 1]``: 1 for each class, ``background_weight`` for the background (index K)."""
    _check_int("num_classes", num_classes, 1, "pssl_class_weights")
    if not background_weight >= 0:
        raise ValueError(f"pssl_class_weights: `background_weight` must be >= 0, got "
                         f"{background_weight!r}")
    w = torch.ones(num_classes + 1, device=device, dtype=dtype)
    w[num_classes] = background_weight
    return w


def pssl_loss(logits: Tensor, labels: Tensor, background_weight: float = 0.1,
              ignore_index: int | None = None) -> Tensor:
    """PSSL's weighted cross-entropy.

    Args:
        logits: ``[B, K + 1, H, W]`` floating (the last channel is background).
        labels: int64 ``[B, H, W]`` in ``[0, K]`` or ``ignore_index``.
        background_weight: the background class's weight (0.1).
        ignore_index: label to ignore (default ``K + 1``, PaddleSeg's PSSL convention).

    Returns:
        0-d: ``sum_i w[y_i] * CE_i / sum_i w[y_i]`` over non-ignored pixels.
    """
    who = "pssl_loss"
    if not isinstance(logits, Tensor) or logits.dim() != 4 or logits.shape[1] < 2:
        raise ValueError(f"{who}: `logits` must be [B, K + 1, H, W] with K >= 1, got "
                         f"{getattr(logits, 'shape', type(logits).__name__)}")
    if not logits.is_floating_point():
        raise TypeError(f"{who}: `logits` must be floating, got {logits.dtype}")
    b, c, h, w = logits.shape
    if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or \
            tuple(labels.shape) != (b, h, w):
        raise ValueError(f"{who}: `labels` must be int64 [B, H, W] = {[b, h, w]}, got "
                         f"{getattr(labels, 'dtype', type(labels).__name__)} "
                         f"{tuple(getattr(labels, 'shape', ()))}")
    k = c - 1
    weight = pssl_class_weights(k, background_weight, logits.device, logits.dtype)
    return F.cross_entropy(logits, labels, weight=weight,
                           ignore_index=k + 1 if ignore_index is None else ignore_index)


class PSSLLoss(nn.Module):
    """Module form of :func:`pssl_loss`: ``forward(logits, labels) -> 0-d loss``."""

    def __init__(self, background_weight: float = 0.1, ignore_index: int | None = None) -> None:
        super().__init__()
        self.background_weight, self.ignore_index = background_weight, ignore_index

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return pssl_loss(logits, labels, self.background_weight, self.ignore_index)
