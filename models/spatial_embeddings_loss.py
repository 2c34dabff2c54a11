"""SpatialEmbeddings' coordinate map, the binary Lovász hinge (Berman et al.) and
:class:`SpatialEmbLoss` (docs/models.md): part of :mod:`segops.models.spatial_embeddings`, which
re-exports everything here (see its docstring for the loss's differences from the original)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segops.ops.cluster import spatial_coordinates

__all__ = [
    "coordinate_map",
    "lovasz_grad",
    "lovasz_hinge_flat",
    "lovasz_hinge",
    "SpatialEmbLoss",
]


# ======================================================================================
# Coordinates and the Lovász hinge
# ======================================================================================


def _check_grid(grid: Sequence[int], extent: Sequence[float]) -> tuple[tuple[int, int],
                                                                       tuple[float, float]]:
    if len(grid) != 2 or any(int(g) != g or g < 2 for g in grid):
        raise ValueError(f"`grid` must be two ints >= 2 (grid_y, grid_x), got {tuple(grid)}")
    if len(extent) != 2 or not all(math.isfinite(e) for e in extent):
        raise ValueError(f"`extent` must be two finite numbers (extent_y, extent_x), "
                         f"got {tuple(extent)}")
    return (int(grid[0]), int(grid[1])), (float(extent[0]), float(extent[1]))


def coordinate_map(
    height: int,
    width: int,
    grid: Sequence[int] = (1024, 2048),
    extent: Sequence[float] = (1.0, 2.0),
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """SpatialEmbeddings' pixel coordinates ``[2, height, width]`` (channel 0 x, 1 y).

    ``x = linspace(0, extent_x, grid_x)[:width]`` and ``y = linspace(0, extent_y,
    grid_y)[:height]`` -- a fixed step whatever the input size -- continued past the grid by
    ``extent + step * arange(1, n - grid + 1)`` with ``step = extent / (grid - 1)``, as
    :func:`segops.cluster_seeds` computes them. ``grid = (grid_y, grid_x)``,
    ``extent = (extent_y, extent_x)``.
    """
    (gy, gx), (ey, ex) = _check_grid(grid, extent)
    device = torch.device("cpu") if device is None else torch.device(device)
    ys = spatial_coordinates(height, gy, ey, dtype, device)
    xs = spatial_coordinates(width, gx, ex, dtype, device)
    return torch.stack([xs[None, :].expand(height, width), ys[:, None].expand(height, width)])


def lovasz_grad(gt_sorted: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. sorted errors (Berman et
    al., Alg. 1), along the last dim: ``gt_sorted [..., P]`` (bool or 0/1) -> ``[..., P]``.

    ``J_i = 1 - (gts - cumsum(gt)_i) / (gts + cumsum(1 - gt)_i)``; the result is
    ``J_0, J_1 - J_0, ...``. Computed on float labels (``dtype``, default float32).
    """
    gt = gt_sorted.to(torch.float32 if dtype is None else dtype)
    gts = gt.sum(-1, keepdim=True)
    intersection = gts - gt.cumsum(-1)
    union = gts + (1 - gt).cumsum(-1)
    jaccard = 1.0 - intersection / union
    if gt.shape[-1] > 1:
        jaccard = torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], -1)
    return jaccard


def lovasz_hinge_flat(logits: Tensor, labels: Tensor) -> Tensor:
    """Binary Lovász hinge along the last dim: ``logits [..., P]``, ``labels [..., P]``
    (bool or 0/1) -> ``[...]``.

    ``errors = 1 - logits * (2 * labels - 1)`` sorted descending; the loss is
    ``dot(relu(errors_sorted), lovasz_grad(labels_sorted))`` -- the Lovász extension of the
    Jaccard loss evaluated at the hinge errors. ``P = 0`` gives 0 (with a zero gradient).
    """
    if logits.shape[-1] == 0:
        return logits.sum(-1) * 0.0
    signs = 2.0 * labels.to(logits.dtype) - 1.0
    errors = 1.0 - logits * signs
    errors_sorted, perm = torch.sort(errors, dim=-1, descending=True)
    gt_sorted = torch.gather(labels, -1, perm)
    grad = lovasz_grad(gt_sorted, logits.dtype)
    return (F.relu(errors_sorted) * grad).sum(-1)


def lovasz_hinge(logits: Tensor, labels: Tensor, per_image: bool = True) -> Tensor:
    """Binary Lovász hinge over ``logits [B, ...]`` vs ``labels [B, ...]``: the mean over
    images of each image's loss (``per_image``), or one loss over all pixels."""
    if not per_image:
        return lovasz_hinge_flat(logits.reshape(-1), labels.reshape(-1))
    b = logits.shape[0]
    if b == 0:
        return logits.sum() * 0.0
    return lovasz_hinge_flat(logits.reshape(b, -1), labels.reshape(b, -1)).mean()


# ======================================================================================
# The loss
# ======================================================================================


class SpatialEmbLoss(nn.Module):
    """SpatialEmbeddings' loss (docs/models.md), averaged over the batch; returns a scalar.

    For each image (``emb = tanh(offsets) + xy`` with :func:`coordinate_map`,
    ``seed = sigmoid(seed logit)``):

    * background seed loss ``sum(seed^2)`` over the pixels with ``labels == 0``;
    * for each instance id ``k != 0`` of ``instances`` (mask ``M_k``, ``P_k`` pixels): the
      centre ``c_k`` is the mean of ``xy`` over ``M_k`` (``to_center``) or the mean of
      ``emb`` over ``M_k`` (not detached); ``s_k = mean(sigma over M_k)`` per sigma channel;
      smoothness ``mean((sigma - s_k.detach())^2)`` over ``M_k`` and the sigma channels;
      ``dist = exp(-sum_d (emb_d - c_kd)^2 * exp(10 * s_kd))`` over the whole image (one
      sigma serves both axes when ``n_sigma == 1``); instance loss = Lovász hinge of the logits
      ``2 * dist - 1`` vs ``M_k``; foreground seed loss
      ``foreground_weight * sum((seed - dist.detach())^2)`` over ``M_k``;
    * ``w_inst * instance / K + w_var * smoothness / K + w_seed * seed_loss / (H * W)``
      with ``K`` the number of instances (the two instance terms are 0 when ``K = 0``).

    Args:
        to_center: attract to the instance's pixel centroid (True) or to its mean embedding.
        n_sigma: 1 (isotropic) or 2 (per axis x, y).
        foreground_weight: weight of the foreground seed term (10 in the original's config).
        grid, extent: the coordinate map, ``(grid_y, grid_x)`` and ``(extent_y, extent_x)``
            (Cityscapes: 1024x2048 pixels over 1 x 2 units).
        instance_chunk: instances processed together (memory ``~ chunk * H * W`` floats per
            intermediate); the value does not depend on it beyond float rounding.

    ``forward(prediction [B, 3 + n_sigma, H, W], instances [B, H, W] int (0 = none),
    labels [B, H, W] (0 = background; None: ``instances == 0``), w_inst=1, w_var=10,
    w_seed=1)``. Float16/bfloat16 predictions are scored in float32.
    """

    def __init__(
        self,
        to_center: bool = True,
        n_sigma: int = 1,
        foreground_weight: float = 10,
        grid: Sequence[int] = (1024, 2048),
        extent: Sequence[float] = (1.0, 2.0),
        instance_chunk: int = 16,
    ) -> None:
        super().__init__()
        if n_sigma not in (1, 2):
            raise ValueError(f"SpatialEmbLoss: `n_sigma` must be 1 or 2, got {n_sigma!r}")
        if instance_chunk < 1:
            raise ValueError(f"SpatialEmbLoss: `instance_chunk` must be >= 1, "
                             f"got {instance_chunk}")
        self.to_center = bool(to_center)
        self.n_sigma = int(n_sigma)
        self.foreground_weight = float(foreground_weight)
        self.grid, self.extent = _check_grid(grid, extent)
        self.instance_chunk = int(instance_chunk)

    def extra_repr(self) -> str:
        return (f"to_center={self.to_center}, n_sigma={self.n_sigma}, "
                f"foreground_weight={self.foreground_weight}, grid={self.grid}, "
                f"extent={self.extent}")

    def _check(self, prediction: Tensor, instances: Tensor, labels: Tensor | None) -> None:
        if not isinstance(prediction, Tensor) or not prediction.is_floating_point():
            raise TypeError("SpatialEmbLoss: `prediction` must be a floating-point Tensor")
        if prediction.dim() != 4 or prediction.shape[1] != 3 + self.n_sigma:
            raise ValueError(f"SpatialEmbLoss: `prediction` must be [B, 3 + n_sigma = "
                             f"{3 + self.n_sigma}, H, W], got {tuple(prediction.shape)}")
        b, _, h, w = prediction.shape
        for name, t in (("instances", instances), ("labels", labels)):
            if t is None:
                continue
            if tuple(t.shape) != (b, h, w):
                raise ValueError(f"SpatialEmbLoss: `{name}` must be [B, H, W] = {(b, h, w)}, "
                                 f"got {tuple(t.shape)}")
            if t.device != prediction.device:
                raise ValueError(f"SpatialEmbLoss: `{name}` is on {t.device}, `prediction` "
                                 f"on {prediction.device}")
        if instances.is_floating_point() or instances.is_complex():
            raise TypeError(f"SpatialEmbLoss: `instances` must be an integer Tensor, "
                            f"got {instances.dtype}")

    def forward(
        self,
        prediction: Tensor,
        instances: Tensor,
        labels: Tensor | None = None,
        w_inst: float = 1,
        w_var: float = 10,
        w_seed: float = 1,
    ) -> Tensor:
        self._check(prediction, instances, labels)
        pred = prediction if prediction.dtype in (torch.float32, torch.float64) \
            else prediction.float()
        b, _, h, w = pred.shape
        n = self.n_sigma
        xym = coordinate_map(h, w, self.grid, self.extent, pred.dtype, pred.device)
        xym = xym.reshape(2, h * w)
        loss = pred.sum() * 0.0  # keeps the graph (and the dtype) when there is nothing
        for i in range(b):
            p = pred[i].reshape(3 + n, h * w)
            emb = torch.tanh(p[0:2]) + xym  # [2, HW]
            sigma = p[2:2 + n]  # [n, HW]
            seed = torch.sigmoid(p[2 + n])  # [HW]
            inst = instances[i].reshape(-1)
            bg = (inst == 0) if labels is None else (labels[i].reshape(-1) == 0)
            seed_loss = (seed.square() * bg).sum()

            ids = torch.unique(inst)
            ids = ids[ids != 0]
            k_total = ids.numel()
            instance_loss = seed_loss * 0.0
            var_loss = seed_loss * 0.0
            for start in range(0, k_total, self.instance_chunk):
                masks = inst[None, :] == ids[start:start + self.instance_chunk, None]  # [K, HW]
                il, vl, sl = self._instances(emb, sigma, seed, xym, masks)
                instance_loss = instance_loss + il
                var_loss = var_loss + vl
                seed_loss = seed_loss + sl
            if k_total > 0:
                instance_loss = instance_loss / k_total
                var_loss = var_loss / k_total
            seed_loss = seed_loss / (h * w)
            loss = loss + (w_inst * instance_loss + w_var * var_loss + w_seed * seed_loss)
        return loss / max(b, 1)

    def _instances(self, emb: Tensor, sigma: Tensor, seed: Tensor, xym: Tensor,
                   masks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Summed instance, smoothness and foreground seed terms of the instances ``masks
        [K, HW]`` (bool) of one image."""
        m = masks.to(emb.dtype)
        count = m.sum(1, keepdim=True)  # [K, 1]
        if self.to_center:
            center = (m @ xym.t()) / count  # [K, 2]
        else:
            center = (m @ emb.t()) / count
        s = (m @ sigma.t()) / count  # [K, n]
        dev = sigma[None] - s.detach()[:, :, None]  # [K, n, HW]
        var = (dev.square() * m[:, None]).sum((1, 2)) / (count[:, 0] * self.n_sigma)
        scale = torch.exp(s * 10)  # [K, n], broadcast over (x, y) when n == 1
        d2 = (emb[None] - center[:, :, None]).square() * scale[:, :, None]  # [K, 2, HW]
        dist = torch.exp(-d2.sum(1))  # [K, HW]
        inst = lovasz_hinge_flat(dist * 2 - 1, masks)  # [K]
        fg = self.foreground_weight * ((seed[None] - dist.detach()).square() * m).sum()
        return inst.sum(), var.sum(), fg
