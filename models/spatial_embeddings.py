"""SpatialEmbeddings (Neven et al., CVPR 2019), a thin definition on segops' ops (docs/models.md).

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
* Initialisation (the original's ``init_output``, docs/models.md): the offset+sigma decoder's output
  transposed conv has weight 0 for all ``2 + n_sigma`` channels, bias 0 for the two offsets
  and bias 1 for sigma -- offsets start at 0 and sigma at 1 whatever the input.
* :class:`SpatialEmbLoss`: the original's loss (docs/models.md) -- background seed loss, per
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

The definitions live in three files, all importable from here: ``spatial_embeddings_erfnet.py``
(the ERFNet blocks and :class:`BranchedERFNet`), ``spatial_embeddings_loss.py``
(:func:`coordinate_map`, the Lovász hinge and :class:`SpatialEmbLoss`) and this one
(:class:`SpatialEmbeddings`: the model, its criterion and clustering).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

import segops

# Re-exported: the public names of the split-out files.
from . import spatial_embeddings_erfnet as _erfnet
from .spatial_embeddings_erfnet import (
    ERFNET_CHANNELS,
    BranchedERFNet,
    Decoder,
    DownsamplerBlock,
    Encoder,
    NonBottleneck1d,
    UpsamplerBlock,
    non_bottleneck_1d,
)
from .spatial_embeddings_loss import (
    SpatialEmbLoss,
    _check_grid,
    coordinate_map,
    lovasz_grad,
    lovasz_hinge,
    lovasz_hinge_flat,
)

__all__ = [
    *_erfnet.__all__,  # the ERFNet blocks and BranchedERFNet
    "SpatialEmbLoss",
    "SpatialEmbeddings",
    "coordinate_map",
    "lovasz_grad",
    "lovasz_hinge_flat",
    "lovasz_hinge",
]


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
