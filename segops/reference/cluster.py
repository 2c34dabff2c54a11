"""Pure-PyTorch reference for SpatialEmbeddings' seed clustering (docs/ops/cluster.md).

The executable form of the spec and the oracle the tests compare the kernel against. It is
the greedy loop of SpatialEmbeddings' ``Cluster.cluster`` (``src/utils/utils.py``) written
plainly: one Python iteration per seed, each computing an argmax, the distances from the
seed's embedding to every masked pixel, and two counts.

Arithmetic
----------
Everything is computed in the "acc" dtype: float64 for float64 predictions, float32 for
float32, float16 and bfloat16 ones (half inputs are converted to float32 first, exactly).
The transcendental functions are not torch's: :func:`exp_p`, :func:`sigmoid_p` and
:func:`tanh_p` are the kernel's portable functions (``csrc/common/portable_math.h``)
written with torch elementwise ops, one torch op per C operation, so that each rounds once,
exactly as the C code does (which is compiled without FMA). The float32 constants are 0-dim
float32 tensors; a Python float rounded to float32 equals the C ``f`` literal for every
constant used (``tests/ops/cluster/test_cluster_reference.py`` checks this against exact rational
rounding). So this reference and the kernel agree bit for bit: the same instance map and
the same scores.

* coordinates: ``xs = linspace(0, extent_x, grid_x)`` (acc dtype), continued past ``grid_x``
  by ``extent_x + step_x * arange(1, W - grid_x + 1)`` with ``step_x = extent_x / (grid_x -
  1)`` (a Python float), then ``xs[:W]``; the same for ``ys``. They are computed on the CPU
  and moved to the prediction's device.
* ``emb_x = tanh_p(off_x) + xs[x]``, ``emb_y = tanh_p(off_y) + ys[y]``,
  ``seed = sigmoid_p(logit)``, ``mask = seed > seed_threshold`` (threshold rounded to acc).
* for a seed pixel: ``s_x = exp_p(sigma_x * 10)`` (``s_y = s_x`` when ``n_sigma == 1``),
  ``d = ((emb_x - cx) * (emb_x - cx)) * s_x + ((emb_y - cy) * (emb_y - cy)) * s_y``,
  ``proposal = exp_p(-d) > 0.5``;
* accepted iff ``count(proposal) > min_pixels`` and
  ``float32(count(proposal & unclustered)) / float32(count(proposal)) > 0.5``.

Deliberate differences from the original, part of segops' spec and so of this reference:

* instance ids are int32 (the original's ``uint8`` map wraps at the 256th instance: that
  ``uint8`` bug is not reproduced);
* inputs larger than the ``(1024, 2048)`` grid are accepted: the coordinate grid is
  continued with the same step (the original's ``xym[:, :h, :w]`` is too small there, and it
  crashes); ``grid``, ``extent``, ``seed_threshold`` (0.5) and ``min_pixels`` (128) are
  arguments (hardcoded in the original);
* the seed pixel is the argmax of the seed over the *unclustered* pixels (ties: first in
  raster order); the original takes the argmax of ``seed * unclustered``, which is the same
  whenever the masked seeds are > 0 (always, for ``seed_threshold >= 0``);
* the score is compared with ``threshold`` as a float64 (the original compares Python
  floats); ``exp``/``sigmoid``/``tanh`` are the portable versions above (torch's may differ
  by an ulp, so a pixel exactly at a decision boundary can flip);
* the padded form (``max_instances``) returns fixed-size scores plus a count and stops the
  loop once ``max_instances`` instances have been accepted;
* the output is ``(instance_map, scores)`` rather than a uint8 map and a list of
  ``{'mask': 0/255 uint8 image, 'score': float}`` dicts.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["cluster_seeds", "exp_p", "sigmoid_p", "tanh_p", "grid_coordinates"]



# --------------------------------------------------------------------------------------
# portable math (csrc/common/portable_math.h), one torch op per C operation
# --------------------------------------------------------------------------------------


def _c(value: float, like: Tensor) -> Tensor:
    """A constant as a 0-dim tensor of ``like``'s dtype (float32: the C ``f`` literal)."""
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def _pow2(k: Tensor, dtype: torch.dtype) -> Tensor:
    """``2**k`` from its bit pattern: ``(k + 127) << 23`` (float32, ``k`` int32) or
    ``(k + 1023) << 52`` (float64, ``k`` int64)."""
    bias, shift = (127, 23) if dtype == torch.float32 else (1023, 52)
    return torch.bitwise_left_shift(k + bias, shift).view(dtype)


def _exp_p32(x: Tensor) -> Tensor:
    nan = x != x
    lo, hi = _c(-103.972084, x), _c(88.7228394, x)
    xc = torch.where(nan, _c(0.0, x), torch.minimum(torch.maximum(x, lo), hi))
    shift = _c(12582912.0, x)
    n = (xc * _c(1.44269504088896341, x) + shift) - shift
    r = xc - n * _c(0.693359375, x)
    r = r - n * _c(-2.12194440e-4, x)
    p = _c(1.9875691500e-4, x)
    p = p * r + _c(1.3981999507e-3, x)
    p = p * r + _c(8.3334519073e-3, x)
    p = p * r + _c(4.1665795894e-2, x)
    p = p * r + _c(1.6666665459e-1, x)
    p = p * r + _c(5.0000001201e-1, x)
    y = ((p * (r * r)) + r) + _c(1.0, x)
    ni = n.to(torch.int32)
    n1 = torch.div(ni, 2, rounding_mode="trunc")
    e = (y * _pow2(n1, torch.float32)) * _pow2(ni - n1, torch.float32)
    e = torch.where(x > hi, _c(math.inf, x), e)
    e = torch.where(x < lo, _c(0.0, x), e)
    return torch.where(nan, x, e)


def _exp_p64(x: Tensor) -> Tensor:
    nan = x != x
    lo, hi = _c(-745.1332191019412, x), _c(709.782712893384, x)
    xc = torch.where(nan, _c(0.0, x), torch.minimum(torch.maximum(x, lo), hi))
    shift = _c(6755399441055744.0, x)
    n = (xc * _c(1.4426950408889634073599, x) + shift) - shift
    r = xc - n * _c(6.93145751953125e-1, x)
    r = r - n * _c(1.42860682030941723212e-6, x)
    r2 = r * r
    p = r * ((_c(1.26177193074810590878e-4, x) * r2 + _c(3.02994407707441961300e-2, x)) * r2
             + _c(9.99999999999999999910e-1, x))
    q = ((_c(3.00198505138664455042e-6, x) * r2 + _c(2.52448340349684104192e-3, x)) * r2
         + _c(2.27265548208155028766e-1, x)) * r2 + _c(2.00000000000000000009e0, x)
    y = _c(1.0, x) + _c(2.0, x) * (p / (q - p))
    ni = n.to(torch.int64)
    n1 = torch.div(ni, 2, rounding_mode="trunc")
    e = (y * _pow2(n1, torch.float64)) * _pow2(ni - n1, torch.float64)
    e = torch.where(x > hi, _c(math.inf, x), e)
    e = torch.where(x < lo, _c(0.0, x), e)
    return torch.where(nan, x, e)


def exp_p(x: Tensor) -> Tensor:
    """The kernels' portable ``exp`` of a float32 or float64 tensor (bit-identical)."""
    if x.dtype == torch.float32:
        return _exp_p32(x)
    if x.dtype == torch.float64:
        return _exp_p64(x)
    raise TypeError(f"exp_p: float32 or float64 expected, got {x.dtype}")


def sigmoid_p(z: Tensor) -> Tensor:
    """``1 / (1 + exp_p(-z))``."""
    one = _c(1.0, z)
    return one / (one + exp_p(-z))


def tanh_p(x: Tensor) -> Tensor:
    """``a = |x|; e = exp_p(-2a); t = (1 - e) / (1 + e)``, negated for ``x < 0``."""
    one = _c(1.0, x)
    a = torch.abs(x)
    e = exp_p(_c(-2.0, x) * a)
    t = (one - e) / (one + e)
    return torch.where(x < _c(0.0, x), -t, t)


# --------------------------------------------------------------------------------------
# coordinates
# --------------------------------------------------------------------------------------


def grid_coordinates(n: int, grid_n: int, extent: float, dtype: torch.dtype,
                     device: Union[str, torch.device, None] = None) -> Tensor:
    """The first ``n`` coordinates of ``linspace(0, extent, grid_n)``, continued with the
    same step past ``grid_n`` (computed on the CPU, then moved to ``device``)."""
    xs = torch.linspace(0, extent, grid_n, dtype=dtype)
    if n > grid_n:
        step = extent / (grid_n - 1)
        more = extent + step * torch.arange(1, n - grid_n + 1, dtype=dtype)
        xs = torch.cat([xs, more])
    return xs[:n].to(device)


# --------------------------------------------------------------------------------------
# cluster_seeds
# --------------------------------------------------------------------------------------


def cluster_seeds(prediction: Tensor, n_sigma: int = 1, threshold: float = 0.5,
                  seed_threshold: float = 0.5, min_pixels: int = 128,
                  grid: Sequence[int] = (1024, 2048), extent: Sequence[float] = (1.0, 2.0),
                  max_instances: Optional[int] = None
                  ) -> Union[Tuple[Tensor, Tensor], Tuple[Tensor, Tensor, Tensor]]:
    """Reference SpatialEmbeddings clustering (docs/ops/cluster.md).

    Args:
        prediction: ``Tensor[3 + n_sigma, H, W]``: offsets (x, y), sigma (``n_sigma``
            channels), seed logit.
        n_sigma: 1 (isotropic) or 2 (per-axis bandwidth).
        threshold: the loop stops at the first seed whose score is ``< threshold``.
        seed_threshold: pixels with ``seed > seed_threshold`` are clustered.
        min_pixels: proposals need more than this many pixels; the loop runs while more
            than this many pixels are unclustered.
        grid: ``(grid_y, grid_x)`` of the coordinate grid, ``extent``: its
            ``(extent_y, extent_x)``.
        max_instances: ``None``, or the capacity of the padded form.

    Returns:
        ``(instance_map int32 [H, W], scores [M])``, ids ``1..M`` in acceptance order (0:
        none), scores in the acc dtype; with ``max_instances``:
        ``(instance_map, scores [max_instances] padded with 0, count int64 0-dim)``.
    """
    (grid_y, grid_x), (extent_y, extent_x) = (int(g) for g in grid), (float(e) for e in extent)
    min_pixels = int(min_pixels)
    dev = prediction.device
    acc = torch.float64 if prediction.dtype == torch.float64 else torch.float32
    pred = prediction.to(acc)
    _, H, W = pred.shape

    xs = grid_coordinates(W, grid_x, extent_x, acc, dev)
    ys = grid_coordinates(H, grid_y, extent_y, acc, dev)
    emb_x = tanh_p(pred[0]) + xs[None, :]
    emb_y = tanh_p(pred[1]) + ys[:, None]
    seed = sigmoid_p(pred[2 + n_sigma])
    mask = seed > torch.tensor(float(seed_threshold), dtype=acc, device=dev)

    # the masked pixels, in raster order
    ex, ey, sd = emb_x[mask], emb_y[mask], seed[mask]
    sig_x, sig_y = pred[2][mask], pred[2 + n_sigma - 1][mask]
    n = sd.numel()
    ids = torch.zeros(n, dtype=torch.int32, device=dev)
    unclustered = torch.ones(n, dtype=torch.bool, device=dev)
    scores = []
    ten, half = torch.tensor(10.0, dtype=acc, device=dev), torch.tensor(0.5, dtype=acc, device=dev)

    if n > min_pixels:
        while int(unclustered.sum()) > min_pixels:
            if max_instances is not None and len(scores) >= max_instances:
                break
            candidates = unclustered.nonzero()[:, 0]
            i = candidates[torch.argmax(sd[candidates])]  # first maximum in raster order
            score = sd[i]
            if float(score) < threshold:
                break
            unclustered[i] = False
            s_x = exp_p(sig_x[i] * ten)
            s_y = exp_p(sig_y[i] * ten) if n_sigma == 2 else s_x
            dx, dy = ex - ex[i], ey - ey[i]
            d = (dx * dx) * s_x + (dy * dy) * s_y
            proposal = exp_p(-d) > half
            n_prop = int(proposal.sum())
            if n_prop > min_pixels:
                n_new = int((proposal & unclustered).sum())
                if np.float32(n_new) / np.float32(n_prop) > np.float32(0.5):
                    ids[proposal] = len(scores) + 1
                    scores.append(score)
            unclustered[proposal] = False

    instance_map = torch.zeros(H * W, dtype=torch.int32, device=dev)
    instance_map[mask.reshape(-1)] = ids
    instance_map = instance_map.view(H, W)
    out_scores = torch.stack(scores) if scores else torch.zeros(0, dtype=acc, device=dev)
    if max_instances is None:
        return instance_map, out_scores
    m = out_scores.numel()
    padded = torch.zeros(int(max_instances), dtype=acc, device=dev)
    padded[:m] = out_scores
    return instance_map, padded, torch.tensor(m, dtype=torch.int64, device=dev)
