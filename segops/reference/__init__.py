"""Pure-PyTorch references: the executable form of docs/ops/ and the tests' oracle."""

from .roi import multilevel_roi_align, roi_align, roi_pool

__all__ = ["multilevel_roi_align", "roi_align", "roi_pool"]
from .nms import batched_nms, box_iou, fast_nms, matrix_nms, nms

__all__ += ["batched_nms", "box_iou", "fast_nms", "matrix_nms", "nms"]
from .masks import assemble_masks, paste_masks  # noqa: E402
__all__ += ["assemble_masks", "paste_masks"]
from .cluster import cluster_seeds  # noqa: E402
__all__ += ["cluster_seeds"]
from .patches import boundary_patches, crop_patches, reassemble_patches  # noqa: E402
__all__ += ["boundary_patches", "crop_patches", "reassemble_patches"]
