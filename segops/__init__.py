"""segops: exact, fast C++/CUDA kernels for instance segmentation.

Ops are registered as `torch.ops.segops.*` dispatcher ops when the compiled library
loads; the functions below are their documented, validated entry points.
"""

import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C  # registers torch.ops.segops.*
from .ops.cluster import cluster_seeds
from .ops.masks import assemble_masks, paste_masks
from .ops.nms import batched_nms, fast_nms, matrix_nms, nms
from .ops.roi import RoIAlign, RoIPool, roi_align, roi_pool

__version__ = "0.1.0"

__all__ = [
    "RoIAlign",
    "RoIPool",
    "assemble_masks",
    "batched_nms",
    "cluster_seeds",
    "fast_nms",
    "matrix_nms",
    "nms",
    "paste_masks",
    "roi_align",
    "roi_pool",
    "__version__",
]
