"""segops: exact, fast C++/CUDA kernels for instance segmentation.

Ops are registered as `torch.ops.segops.*` dispatcher ops when the compiled library
loads; the functions below are their documented, validated entry points.
"""

import torch  # noqa: F401  (loads libtorch before the extension)

from ._extension import TorchVersionWarning, load as _load
from ._version import __version__

_C = _load()  # registers torch.ops.segops.*; a clear error if it cannot load under this torch
from .ops.cluster import cluster_seeds
from .ops.masks import assemble_masks, paste_masks
from .ops.patches import boundary_patches, crop_patches, reassemble_patches
from .ops.nms import batched_nms, fast_nms, matrix_nms, nms
from .ops.roi import RoIAlign, RoIPool, multilevel_roi_align, roi_align, roi_pool
from .poolers import MultiScaleRoIAlign
from .torchvision_compat import patch_torchvision

__all__ = [
    "MultiScaleRoIAlign",
    "RoIAlign",
    "TorchVersionWarning",
    "RoIPool",
    "assemble_masks",
    "batched_nms",
    "boundary_patches",
    "cluster_seeds",
    "crop_patches",
    "fast_nms",
    "matrix_nms",
    "multilevel_roi_align",
    "nms",
    "paste_masks",
    "patch_torchvision",
    "reassemble_patches",
    "roi_align",
    "roi_pool",
    "__version__",
]
