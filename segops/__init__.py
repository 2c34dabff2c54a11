"""segops: exact, fast C++/CUDA kernels for instance segmentation.

Ops are registered as `torch.ops.segops.*` dispatcher ops when the compiled library
loads; the functions below are their documented entry points, one module per family
(`segops.ops.<family>`), re-exported here from each family's `__all__`.
"""

import torch  # noqa: F401  (loads libtorch before the extension)

from ._extension import TorchVersionWarning, load as _load
from ._version import __version__

_C = _load()  # registers torch.ops.segops.*; a clear error if it cannot load under this torch

from .ops import cluster as _cluster, masks as _masks, nms as _nms  # noqa: E402
from .ops import patches as _patches, roi as _roi  # noqa: E402
from .ops.cluster import *  # noqa: E402,F401,F403
from .ops.masks import *  # noqa: E402,F401,F403
from .ops.nms import *  # noqa: E402,F401,F403
from .ops.patches import *  # noqa: E402,F401,F403
from .ops.roi import *  # noqa: E402,F401,F403
from .poolers import MultiScaleRoIAlign  # noqa: E402
from .torchvision_compat import patch_torchvision  # noqa: E402

__all__ = sorted(
    [*_roi.__all__, *_nms.__all__, *_masks.__all__, *_cluster.__all__, *_patches.__all__]
) + [
    "MultiScaleRoIAlign", "TorchVersionWarning", "__version__", "patch_torchvision"
]
