"""Pure-PyTorch references: the executable form of docs/ops/ and the tests' oracle. One
module per family; this package re-exports each module's ``__all__``."""

from . import cluster as _cluster, masks as _masks, nms as _nms  # noqa: F401
from . import patches as _patches, roi as _roi  # noqa: F401
from .cluster import *  # noqa: F401,F403
from .masks import *  # noqa: F401,F403
from .nms import *  # noqa: F401,F403
from .patches import *  # noqa: F401,F403
from .roi import *  # noqa: F401,F403

__all__ = sorted(
    [*_roi.__all__, *_nms.__all__, *_masks.__all__, *_cluster.__all__, *_patches.__all__]
)
