"""SpatialEmbeddings (Neven et al., CVPR 2019), a thin definition on segops' ops (SPEC §4, §6).

Everything here is ordinary PyTorch except the step segops accelerates: inference clusters
the network's prediction with :func:`segops.cluster_seeds` (the greedy seed loop of the
original ``Cluster.cluster``, on the device, without a host synchronisation per seed).

The architecture and loss follow davyneven/SpatialEmbeddings:

* :class:`BranchedERFNet`: ERFNet's encoder (Romera et al.) shared by two ERFNet decoders,
  one for the offsets and sigma (``2 + n_sigma`` channels), one for the seed map (1 channel);
  the output is their concatenation ``[B, 3 + n_sigma, H, W]``. Module and parameter names
  are the original's, so a released ``BranchedERFNet`` state dict loads as is (strip
  ``module.`` from a ``DataParallel`` checkpoint). ``width`` scales every channel count
  (16 / 64 / 128 at ``width=1``) so that tests can run small.
* Initialisation (the original's ``init_output``, SPEC §6): the offset+sigma decoder's output
  transposed conv has weight 0 for all ``2 + n_sigma`` channels, bias 0 for the two offsets
  and bias 1 for sigma -- offsets start at 0 and sigma at 1 whatever the input.
* :class:`SpatialEmbLoss`: the original's loss (SPEC §4) -- background seed loss, per
  instance a sigma-smoothness term, a Gaussian ``dist`` around the instance centre scored by
  the Lovász hinge on ``2 * dist - 1``, and a foreground seed loss regressing the seed map
  to ``dist.detach()``.

Differences from the original, all deliberate:

* the Lovász gradient is computed on float 0/1 labels (the original computes ``1 - bool``,
  which current PyTorch rejects), in the logits' dtype (the original's float32 gradient
  cannot be dotted with float64 logits);
* the instances of an image are processed together (``instance_chunk`` at a time) instead of
  one Python iteration each; values equal the original's up to float summation order;
* the coordinate map is continued past the grid with the same step (the original crashes on
  inputs larger than 1024x2048), exactly as :func:`segops.cluster_seeds` does;
* float16/bfloat16 predictions are scored in float32;
* an image batch of size 0 gives a zero loss (the original raises).

Inputs must have a height and width divisible by 8 (ERFNet downsamples three times and
concatenates a strided conv with a max-pool, which disagree in size otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import segops
from segops.ops.cluster import spatial_coordinates

__all__ = [
    "DownsamplerBlock",
    "NonBottleneck1d",
    "non_bottleneck_1d",
    "UpsamplerBlock",
    "Encoder",
    "Decoder",
    "BranchedERFNet",
    "SpatialEmbLoss",
    "SpatialEmbeddings",
    "coordinate_map",
    "lovasz_grad",
    "lovasz_hinge_flat",
    "lovasz_hinge",
]

ERFNET_CHANNELS = (16, 64, 128)  # encoder widths after each downsampling, at width=1


def _widths(width: float) -> tuple[int, int, int]:
    """Channel counts ``(c1, c2, c3)`` for a width multiplier (16, 64, 128 at 1)."""
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise ValueError(f"ERFNet: `width` must be a positive finite number, got {width!r}")
    c1, c2, c3 = (max(1, int(round(c * width))) for c in ERFNET_CHANNELS)
    return c1, c2, c3


# ======================================================================================
# ERFNet building blocks
# ======================================================================================


class DownsamplerBlock(nn.Module):
    """ERFNet downsampler: ``cat[conv3x3/2 (noutput - ninput ch), maxpool2x2/2] -> BN -> ReLU``.

    ``[B, ninput, H, W] -> [B, noutput, H/2, W/2]`` (``H``, ``W`` even).
    """

    def __init__(self, ninput: int, noutput: int) -> None:
        super().__init__()
        if noutput <= ninput:
            raise ValueError(f"DownsamplerBlock: `noutput` ({noutput}) must exceed `ninput` "
                             f"({ninput}): the conv produces the extra channels")
        self.conv = nn.Conv2d(ninput, noutput - ninput, (3, 3), stride=2, padding=1, bias=True)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(noutput, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(torch.cat([self.conv(x), self.pool(x)], 1)))


class NonBottleneck1d(nn.Module):
    """ERFNet's factorised residual block (``non_bottleneck_1d``), shape-preserving.

    ``conv3x1 -> ReLU -> conv1x3 -> BN -> ReLU -> conv3x1 (dilation (d, 1)) -> ReLU ->
    conv1x3 (dilation (1, d)) -> BN -> Dropout2d(dropprob) -> + x -> ReLU``.
    """

    def __init__(self, chann: int, dropprob: float, dilated: int) -> None:
        super().__init__()
        self.conv3x1_1 = nn.Conv2d(chann, chann, (3, 1), stride=1, padding=(1, 0), bias=True)
        self.conv1x3_1 = nn.Conv2d(chann, chann, (1, 3), stride=1, padding=(0, 1), bias=True)
        self.bn1 = nn.BatchNorm2d(chann, eps=1e-3)
        self.conv3x1_2 = nn.Conv2d(chann, chann, (3, 1), stride=1, padding=(dilated, 0),
                                   bias=True, dilation=(dilated, 1))
        self.conv1x3_2 = nn.Conv2d(chann, chann, (1, 3), stride=1, padding=(0, dilated),
                                   bias=True, dilation=(1, dilated))
        self.bn2 = nn.BatchNorm2d(chann, eps=1e-3)
        self.dropout = nn.Dropout2d(dropprob)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.conv3x1_1(x))
        out = F.relu(self.bn1(self.conv1x3_1(out)))
        out = F.relu(self.conv3x1_2(out))
        out = self.bn2(self.conv1x3_2(out))
        if self.dropout.p != 0:
            out = self.dropout(out)
        return F.relu(out + x)


non_bottleneck_1d = NonBottleneck1d  # the original's name


class UpsamplerBlock(nn.Module):
    """ERFNet upsampler: ``ConvTranspose3x3/2 (output_padding 1) -> BN -> ReLU``.

    ``[B, ninput, H, W] -> [B, noutput, 2H, 2W]``.
    """

    def __init__(self, ninput: int, noutput: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(ninput, noutput, 3, stride=2, padding=1,
                                       output_padding=1, bias=True)
        self.bn = nn.BatchNorm2d(noutput, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class Encoder(nn.Module):
    """ERFNet encoder: ``[B, in_channels, H, W] -> [B, c3, H/8, W/8]``.

    ``Downsampler(in, c1)``; ``Downsampler(c1, c2)`` + 5 x ``non_bottleneck_1d(c2, 0.03, 1)``;
    ``Downsampler(c2, c3)`` + 2 x ``non_bottleneck_1d(c3, 0.3, d)`` for ``d`` in 2, 4, 8, 16.
    ``(c1, c2, c3) = (16, 64, 128) * width``. ``output_conv`` (1x1 to ``num_classes``) is
    used only by ``forward(x, predict=True)`` (the original's encoder pretraining).
    """

    def __init__(self, num_classes: int, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        c1, c2, c3 = _widths(width)
        if not in_channels < c1 < c2 < c3:
            raise ValueError(f"Encoder: `width`={width} gives channels {(c1, c2, c3)} that do "
                             f"not increase from in_channels={in_channels}")
        self.initial_block = DownsamplerBlock(in_channels, c1)
        layers: list[nn.Module] = [DownsamplerBlock(c1, c2)]
        layers += [NonBottleneck1d(c2, 0.03, 1) for _ in range(5)]
        layers.append(DownsamplerBlock(c2, c3))
        for _ in range(2):
            layers += [NonBottleneck1d(c3, 0.3, d) for d in (2, 4, 8, 16)]
        self.layers = nn.ModuleList(layers)
        self.output_conv = nn.Conv2d(c3, num_classes, 1, stride=1, padding=0, bias=True)
        self.channels = c3

    def forward(self, x: Tensor, predict: bool = False) -> Tensor:
        h, w = x.shape[-2:]
        if h % 8 or w % 8:
            raise ValueError(f"ERFNet: the input height and width must be divisible by 8, "
                             f"got {tuple(x.shape[-2:])}")
        out = self.initial_block(x)
        for layer in self.layers:
            out = layer(out)
        if predict:
            out = self.output_conv(out)
        return out


class Decoder(nn.Module):
    """ERFNet decoder: ``[B, c3, h, w] -> [B, num_classes, 8h, 8w]``.

    ``Upsampler(c3, c2)`` + 2 x ``non_bottleneck_1d(c2, 0, 1)``, ``Upsampler(c2, c1)`` +
    2 x ``non_bottleneck_1d(c1, 0, 1)``, ``output_conv = ConvTranspose2x2/2(c1, num_classes)``.
    """

    def __init__(self, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3 = _widths(width)
        self.layers = nn.ModuleList([
            UpsamplerBlock(c3, c2), NonBottleneck1d(c2, 0, 1), NonBottleneck1d(c2, 0, 1),
            UpsamplerBlock(c2, c1), NonBottleneck1d(c1, 0, 1), NonBottleneck1d(c1, 0, 1),
        ])
        self.output_conv = nn.ConvTranspose2d(c1, num_classes, 2, stride=2, padding=0,
                                              output_padding=0, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.output_conv(x)


class BranchedERFNet(nn.Module):
    """One ERFNet encoder, one ERFNet decoder per entry of ``num_classes``, outputs concatenated.

    ``[B, in_channels, H, W] -> [B, sum(num_classes), H, W]`` (``H``, ``W`` divisible by 8).
    For SpatialEmbeddings ``num_classes = (2 + n_sigma, 1)``: channels ``0:2`` offsets (x, y),
    ``2:2+n_sigma`` sigma, ``2+n_sigma`` the seed logit.

    Args:
        num_classes: output channels per decoder.
        width: channel multiplier (16 / 64 / 128 at 1, the original).
        encoder: a replacement encoder (e.g. pretrained) producing ``c3`` channels at H/8.
        in_channels: image channels.
        init_output: apply :meth:`init_output` with ``n_sigma = num_classes[0] - 2`` (the
            original's training script does this right after construction).
    """

    def __init__(
        self,
        num_classes: Sequence[int] = (3, 1),
        width: float = 1.0,
        encoder: nn.Module | None = None,
        in_channels: int = 3,
        init_output: bool = True,
    ) -> None:
        super().__init__()
        num_classes = [int(n) for n in num_classes]
        if not num_classes or min(num_classes) < 1:
            raise ValueError(f"BranchedERFNet: `num_classes` must be positive ints, "
                             f"got {num_classes}")
        self.num_classes = num_classes
        self.encoder = Encoder(sum(num_classes), width, in_channels) if encoder is None \
            else encoder
        self.decoders = nn.ModuleList(Decoder(n, width) for n in num_classes)
        if init_output:
            if num_classes[0] < 3:
                raise ValueError("BranchedERFNet: init_output needs the first decoder to have "
                                 f"2 + n_sigma >= 3 channels, got {num_classes[0]}")
            self.init_output(num_classes[0] - 2)

    @torch.no_grad()
    def init_output(self, n_sigma: int = 1) -> None:
        """The original's ``init_output``: zero the first decoder's output weights for the
        offsets (channels 0:2) and sigma (2:2+n_sigma); offset bias 0, sigma bias 1."""
        conv = self.decoders[0].output_conv  # ConvTranspose2d weight: [in, out, kh, kw]
        conv.weight[:, 0:2].fill_(0)
        conv.bias[0:2].fill_(0)
        conv.weight[:, 2:2 + n_sigma].fill_(0)
        conv.bias[2:2 + n_sigma].fill_(1)

    def forward(self, x: Tensor, only_encode: bool = False) -> Tensor:
        if only_encode:
            return self.encoder(x, predict=True)
        feats = self.encoder(x)
        return torch.cat([decoder(feats) for decoder in self.decoders], 1)


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
    """SpatialEmbeddings' loss (SPEC §4), averaged over the batch; returns a scalar.

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


# ======================================================================================
# Inference
# ======================================================================================


class SpatialEmbeddings(nn.Module):
    """SpatialEmbeddings: a :class:`BranchedERFNet` with decoders ``(2 + n_sigma, 1)`` and
    clustering through :func:`segops.cluster_seeds`.

    ``forward(images [B, 3, H, W]) -> [B, 3 + n_sigma, H, W]`` (offsets x, y; sigma; seed
    logit) -- what :class:`SpatialEmbLoss` (see :meth:`criterion`) and
    :func:`segops.cluster_seeds` take. :meth:`cluster` runs both for one image.

    Args:
        n_sigma: 1 or 2.
        width: ERFNet channel multiplier (1 is the original).
        grid, extent: the coordinate map shared by the loss and the clustering.
        in_channels: image channels.
    """

    def __init__(
        self,
        n_sigma: int = 1,
        width: float = 1.0,
        grid: Sequence[int] = (1024, 2048),
        extent: Sequence[float] = (1.0, 2.0),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if n_sigma not in (1, 2):
            raise ValueError(f"SpatialEmbeddings: `n_sigma` must be 1 or 2, got {n_sigma!r}")
        self.n_sigma = n_sigma
        self.grid, self.extent = _check_grid(grid, extent)
        self.net = BranchedERFNet((2 + n_sigma, 1), width=width, in_channels=in_channels)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def criterion(self, to_center: bool = True, foreground_weight: float = 10,
                  **kwargs) -> SpatialEmbLoss:
        """A :class:`SpatialEmbLoss` with this model's ``n_sigma``, grid and extent."""
        return SpatialEmbLoss(to_center, self.n_sigma, foreground_weight, self.grid,
                              self.extent, **kwargs)

    @torch.no_grad()
    def cluster(
        self,
        image: Tensor,
        threshold: float = 0.9,
        seed_threshold: float = 0.5,
        min_pixels: int = 128,
        max_instances: int | None = None,
    ) -> tuple[Tensor, ...]:
        """Instances of one image ``[3, H, W]`` (or ``[1, 3, H, W]``).

        Runs the network (in its current mode: call ``.eval()`` first, as the original's
        test script does) and :func:`segops.cluster_seeds` on the prediction
        ``[3 + n_sigma, H, W]``. ``threshold`` 0.9 is the original's test setting. Returns
        ``(instance_map int32 [H, W] (0 = none, ids 1..M), scores [M])``, or with
        ``max_instances`` the padded ``(instance_map, scores [max_instances], count)``.
        """
        if image.dim() == 3:
            image = image[None]
        if image.dim() != 4 or image.shape[0] != 1:
            raise ValueError(f"SpatialEmbeddings.cluster: `image` must be [C, H, W] or "
                             f"[1, C, H, W], got {tuple(image.shape)}")
        prediction = self.net(image)[0]
        return segops.cluster_seeds(
            prediction, n_sigma=self.n_sigma, threshold=threshold,
            seed_threshold=seed_threshold, min_pixels=min_pixels, grid=self.grid,
            extent=self.extent, max_instances=max_instances)
