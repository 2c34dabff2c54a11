"""Gated-SCNN (Takikawa et al., ICCV 2019), a thin definition (docs/models.md): the gated
convolution, the shape stream and the dual-task loss.

* :class:`GatedSpatialConv` (the released ``GatedSpatialConv2d``): for shape-stream features
  ``s`` ``[B, C, H, W]`` and a regular-stream gate map ``r`` ``[B, G, H, W]`` (``G = 1`` in
  GSCNN), ``alpha = sigmoid(BN(conv1x1(ReLU(conv1x1(BN(concat[s, r]))))))`` (``[B, 1, H,
  W]``; the inner conv keeps ``C + G`` channels, the outer one maps to 1) and the output is
  ``conv1x1(s * (alpha + 1))`` (bias-free, Xavier-normal init).
* :class:`ShapeStream`: GSCNN's shape stream -- the first backbone feature, upsampled to the
  image size, through three (residual block -> upsample -> conv1x1 -> gate) stages whose
  gates are side outputs (conv1x1 -> 1 channel, upsampled) of three deeper regular-stream
  features, then conv1x1 to one channel: boundary logits. Interpolation is bilinear with
  ``align_corners=True`` as the release. (The release then fuses the sigmoid of these logits
  with an OpenCV Canny map of the image before its ASPP; that step is not included.)
* :func:`dual_task_loss`: the regulariser that ties the segmentation to its boundaries.

**The dual-task loss, paper versus release.** The paper defines, for the Gumbel-softmax
class probabilities ``p`` (``[N, K, H, W]``, temperature ``tau``), the boundary magnitude
``zeta = 1/sqrt(2) * || grad(G * p) ||`` (``G``: Gaussian smoothing; the norm runs over the
classes and both spatial directions, so ``zeta`` is ``[N, H, W]``), the same ``zeta_hat``
for the one-hot ground truth, and the loss ``sum over p+ of |zeta - zeta_hat|`` with ``p+``
the pixels where either map is non-zero. That is what ``release=False`` (the default)
computes, with ``grad`` the central difference (one-sided at the borders, ``np.gradient``)
and the sum divided by ``|p+|`` (a mean, so the scale does not depend on the image size).

The released ``DualTaskLoss`` does not compute a gradient at all: in its
``custom_functional.py`` both ``gradient_central_diff`` and ``convTri`` return their input
unchanged (``return input, input`` / ``return input`` before the real code), so
``compute_grad_mag(E)`` is ``sqrt(E^2 + E^2 + 1e-6) / max``, a normalised copy of the
per-class probabilities, and the loss is ``0.5 * mean over {g >= 1e-8} + 0.5 * mean over
{g_hat >= 1e-8}`` of ``|g - g_hat|`` -- in practice the mean absolute difference between
the (rescaled) soft prediction and the one-hot target. ``release=True`` reproduces exactly
that, including its ignore handling (logits zeroed and labels set to class 0 at ignored
pixels) and its Gumbel noise ``-log(eps - log(U + eps))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import BasicBlock

__all__ = ["GatedSpatialConv", "ShapeStream", "boundary_magnitude", "dual_task_loss",
           "DualTaskLoss"]

_UP = {"mode": "bilinear", "align_corners": True}


def _check_int(name: str, v: object, least: int, who: str) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < least:
        raise ValueError(f"{who}: `{name}` must be an int >= {least}, got {v!r}")


def _check_map(x: object, who: str, name: str, channels: int | None = None) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{who}: `{name}` must be a Tensor, got {type(x).__name__}")
    if x.dim() != 4 or (channels is not None and x.shape[1] != channels):
        want = "C" if channels is None else str(channels)
        raise ValueError(f"{who}: `{name}` must be [B, {want}, H, W], got shape "
                         f"{tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{who}: `{name}` must be a floating tensor, got {x.dtype}")


# ======================================================================================
# Gated convolution and shape stream
# ======================================================================================


class GatedSpatialConv(nn.Module):
    """Gated convolutional layer (GCL).

    Args:
        in_channels: ``C``, channels of the shape-stream features ``s``.
        out_channels: channels of the output.
        gate_channels: ``G``, channels of the gating map ``r`` (1 in GSCNN).

    ``forward(s [B, C, H, W], r [B, G, H, W]) -> [B, out_channels, H, W]``:
    ``conv1x1(s * (alpha + 1))`` with ``alpha = sigmoid(BN(conv1x1(ReLU(conv1x1(BN(
    concat[s, r]))))))``. :meth:`gate` returns ``alpha`` ``[B, 1, H, W]``.
    """

    def __init__(self, in_channels: int, out_channels: int, gate_channels: int = 1) -> None:
        super().__init__()
        _check_int("in_channels", in_channels, 1, "GatedSpatialConv")
        _check_int("out_channels", out_channels, 1, "GatedSpatialConv")
        _check_int("gate_channels", gate_channels, 1, "GatedSpatialConv")
        self.in_channels, self.gate_channels = in_channels, gate_channels
        cg = in_channels + gate_channels
        self.gate_conv = nn.Sequential(
            nn.BatchNorm2d(cg), nn.Conv2d(cg, cg, 1), nn.ReLU(), nn.Conv2d(cg, 1, 1),
            nn.BatchNorm2d(1), nn.Sigmoid(),
        )
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        nn.init.xavier_normal_(self.conv.weight)

    def gate(self, s: Tensor, r: Tensor) -> Tensor:
        """``alpha`` ``[B, 1, H, W]`` in ``(0, 1)``."""
        _check_map(s, "GatedSpatialConv", "s", self.in_channels)
        _check_map(r, "GatedSpatialConv", "r", self.gate_channels)
        if s.shape[0] != r.shape[0] or s.shape[-2:] != r.shape[-2:]:
            raise ValueError("GatedSpatialConv: `r` must match `s` in batch and size, got "
                             f"{tuple(r.shape)} for s {tuple(s.shape)}")
        return self.gate_conv(torch.cat([s, r], dim=1))

    def forward(self, s: Tensor, r: Tensor) -> Tensor:
        return self.conv(s * (self.gate(s, r) + 1))


class ShapeStream(nn.Module):
    """GSCNN's shape stream: boundary logits from the first backbone feature, gated three
    times by deeper regular-stream features.

    Args:
        in_channels: channels of the first backbone feature (64 in GSCNN's WideResNet).
        side_channels: channels of the three regular-stream features that gate the stages
            (GSCNN: 256 (mod3), 512 (mod4), 4096 (mod7)).
        widths: channels after each stage's conv1x1 (32, 16, 8).

    ``forward(feature [B, in_channels, h, w], sides [3 x [B, side_channels[i], h_i, w_i]],
    size=(H, W)) -> boundary logits [B, 1, H, W]`` (``size`` defaults to ``feature``'s).
    Stage ``i``: ``x = gate_i(conv1x1(up(res_i(x))), up(side_conv_i(sides[i])))``, starting
    from ``x = up(feature)``; then ``up(conv1x1(x) -> 1)``. ``up``: bilinear,
    ``align_corners=True``, to ``size``.
    """

    def __init__(self, in_channels: int = 64, side_channels: Sequence[int] = (256, 512, 4096),
                 widths: Sequence[int] = (32, 16, 8)) -> None:
        super().__init__()
        _check_int("in_channels", in_channels, 1, "ShapeStream")
        if len(side_channels) != 3 or len(widths) != 3:
            raise ValueError("ShapeStream: `side_channels` and `widths` must have 3 entries, "
                             f"got {tuple(side_channels)!r} and {tuple(widths)!r}")
        for c in (*side_channels, *widths):
            _check_int("side_channels/widths", c, 1, "ShapeStream")
        self.in_channels, self.side_channels = in_channels, tuple(side_channels)
        chans = (in_channels, *widths)
        self.res = nn.ModuleList(BasicBlock(chans[i], chans[i]) for i in range(3))
        self.reduce = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 1) for i in range(3))
        self.side_convs = nn.ModuleList(nn.Conv2d(c, 1, 1) for c in side_channels)
        self.gates = nn.ModuleList(GatedSpatialConv(w, w) for w in widths)
        self.fuse = nn.Conv2d(widths[-1], 1, 1, bias=False)

    def forward(self, feature: Tensor, sides: Sequence[Tensor],
                size: Sequence[int] | None = None) -> Tensor:
        _check_map(feature, "ShapeStream", "feature", self.in_channels)
        if len(sides) != 3:
            raise ValueError(f"ShapeStream: `sides` must hold 3 tensors, got {len(sides)}")
        for i, (side, c) in enumerate(zip(sides, self.side_channels)):
            _check_map(side, "ShapeStream", f"sides[{i}]", c)
            if side.shape[0] != feature.shape[0]:
                raise ValueError(f"ShapeStream: `sides[{i}]` has batch {side.shape[0]}, "
                                 f"`feature` has {feature.shape[0]}")
        size = tuple(feature.shape[-2:]) if size is None else tuple(int(s) for s in size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"ShapeStream: `size` must be (H, W) >= 1, got {size!r}")
        x = F.interpolate(feature, size=size, **_UP)
        for res, reduce, side_conv, gate, side in zip(self.res, self.reduce, self.side_convs,
                                                      self.gates, sides):
            x = reduce(F.interpolate(res(x), size=size, **_UP))
            x = gate(x, F.interpolate(side_conv(side), size=size, **_UP))
        return F.interpolate(self.fuse(x), size=size, **_UP)


# ======================================================================================
# Dual-task loss
# ======================================================================================


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian (radius ``ceil(3 sigma)``, replicate borders) per channel."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def _np_gradient(x: Tensor, dim: int) -> Tensor:
    """``np.gradient`` along ``dim``: central differences, one-sided at both ends."""
    n = x.shape[dim]
    first = x.narrow(dim, 1, 1) - x.narrow(dim, 0, 1)
    last = x.narrow(dim, n - 1, 1) - x.narrow(dim, n - 2, 1)
    inner = (x.narrow(dim, 2, n - 2) - x.narrow(dim, 0, n - 2)) * 0.5
    return torch.cat([first, inner, last], dim=dim)


def boundary_magnitude(prob: Tensor, sigma: float = 1.0) -> Tensor:
    """The paper's ``zeta = 1/sqrt(2) * ||grad(G * prob)||``.

    Args:
        prob: ``[N, K, H, W]`` class probabilities (or one-hot labels), ``H, W >= 2``.
        sigma: standard deviation of the Gaussian ``G`` in pixels; 0 disables smoothing.

    Returns:
        ``[N, H, W]``: the Euclidean norm, over the ``K`` classes and the two directions, of
        the central-difference gradient, divided by ``sqrt(2)``. Exactly 0 where the
        smoothed map is flat (and then with a zero gradient, not NaN).
    """
    _check_map(prob, "boundary_magnitude", "prob")
    if prob.shape[-2] < 2 or prob.shape[-1] < 2:
        raise ValueError(f"boundary_magnitude: `prob` must be at least 2x2, got "
                         f"{tuple(prob.shape)}")
    if not sigma >= 0:
        raise ValueError(f"boundary_magnitude: `sigma` must be >= 0, got {sigma!r}")
    if sigma > 0:
        prob = _gaussian_blur(prob, float(sigma))
    sq = (_np_gradient(prob, 3) ** 2 + _np_gradient(prob, 2) ** 2).sum(dim=1)
    pos = sq > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))),
                       torch.zeros_like(sq)) / math.sqrt(2.0)


def _gumbel_softmax(logits: Tensor, tau: float, gumbel: bool,
                    generator: torch.Generator | None) -> Tensor:
    if gumbel:
        eps = 1e-10
        u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype,
                       device=logits.device)
        logits = logits - torch.log(eps - torch.log(u + eps))  # the release's noise
    return torch.softmax(logits / tau, dim=1)


def dual_task_loss(
    seg_logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = 255,
    tau: float = 0.5,
    gumbel: bool = True,
    sigma: float = 1.0,
    threshold: float = 1e-8,
    release: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Gated-SCNN's dual-task regulariser on the segmentation's spatial gradients.

    Args:
        seg_logits: ``[N, K, H, W]`` floating segmentation logits (``H, W >= 2``).
        target: ``[N, H, W]`` int64 labels in ``[0, K)`` or ``ignore_index``.
        ignore_index: label of pixels that take no part.
        tau: Gumbel-softmax temperature (0.5 in the release).
        gumbel: add Gumbel noise (as both paper and release); ``False`` gives the plain
            tempered softmax (deterministic).
        sigma: the Gaussian ``G`` of the paper's version (ignored with ``release=True``,
            whose smoothing is a no-op).
        threshold: a pixel belongs to ``p+`` when ``zeta > threshold`` or ``zeta_hat >
            threshold`` (the release's masks use ``>=``).
        release: reproduce the released code (see the module docstring) instead of the
            paper's definition.
        generator: random generator for the Gumbel noise.

    Returns:
        A 0-d tensor in ``seg_logits``' dtype, differentiable w.r.t. ``seg_logits``.

    Paper version (default): ignored pixels get an all-zero class vector in both the
    prediction and the one-hot target and are left out of ``p+``; the result is the mean of
    ``|zeta - zeta_hat|`` over ``p+`` (0 if ``p+`` is empty).
    """
    _check_map(seg_logits, "dual_task_loss", "seg_logits")
    n, k, h, w = seg_logits.shape
    if not isinstance(target, Tensor) or target.dtype != torch.int64:
        raise TypeError("dual_task_loss: `target` must be an int64 tensor, got "
                        f"{getattr(target, 'dtype', type(target).__name__)}")
    if tuple(target.shape) != (n, h, w):
        raise ValueError(f"dual_task_loss: `target` must be [N, H, W] = {(n, h, w)}, got "
                         f"{tuple(target.shape)}")
    if h < 2 or w < 2:
        raise ValueError(f"dual_task_loss: `seg_logits` must be at least 2x2, got {(h, w)}")
    if not tau > 0:
        raise ValueError(f"dual_task_loss: `tau` must be > 0, got {tau!r}")
    ignore = target == ignore_index
    labels = torch.where(ignore, torch.zeros_like(target), target)
    if bool(((labels < 0) | (labels >= k)).any()):  # a loss may sync; say which argument
        raise ValueError(f"dual_task_loss: `target` must hold labels in [0, {k}) or "
                         f"ignore_index={ignore_index}")
    onehot = F.one_hot(labels, k).permute(0, 3, 1, 2).to(seg_logits.dtype)
    if release:
        logits = torch.where(ignore.unsqueeze(1), torch.zeros_like(seg_logits), seg_logits)
        g = _gumbel_softmax(logits, tau, gumbel, generator)

        def mag(e: Tensor) -> Tensor:  # compute_grad_mag with its no-op helpers
            m = torch.sqrt(e * e + e * e + 1e-6)
            return m / m.max()

        g, g_hat = mag(g).reshape(n, -1), mag(onehot).reshape(n, -1)
        diff = (g - g_hat).abs()
        m1 = (g >= threshold).to(diff.dtype).detach()
        m2 = (g_hat >= threshold).to(diff.dtype).detach()
        eps = 1e-10
        return (0.5 * (diff * m1).sum() / (m1.sum() + eps)
                + 0.5 * (diff * m2).sum() / (m2.sum() + eps))
    valid = (~ignore).unsqueeze(1).to(seg_logits.dtype)
    p = _gumbel_softmax(seg_logits, tau, gumbel, generator) * valid
    zeta = boundary_magnitude(p, sigma)
    zeta_hat = boundary_magnitude(onehot * valid, sigma)
    pplus = ((zeta > threshold) | (zeta_hat > threshold)) & ~ignore
    diff = torch.where(pplus, (zeta - zeta_hat).abs(), torch.zeros_like(zeta))
    return diff.sum() / pplus.sum().clamp(min=1).to(diff.dtype)


class DualTaskLoss(nn.Module):
    """Module form of :func:`dual_task_loss` (same keyword arguments, fixed at
    construction): ``forward(seg_logits [N, K, H, W], target [N, H, W]) -> 0-d loss``."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__()
        allowed = {"ignore_index", "tau", "gumbel", "sigma", "threshold", "release"}
        unknown = set(kwargs) - allowed
        if unknown:
            raise TypeError(f"DualTaskLoss: unknown arguments {sorted(unknown)}")
        self.kwargs = kwargs

    def forward(self, seg_logits: Tensor, target: Tensor) -> Tensor:
        return dual_task_loss(seg_logits, target, **self.kwargs)  # type: ignore[arg-type]
