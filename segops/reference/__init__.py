"""Pure-PyTorch references: the executable form of SPEC.md and the tests' oracle."""

from .roi import roi_align, roi_pool

__all__ = ["roi_align", "roi_pool"]
from .nms import batched_nms, box_iou, fast_nms, matrix_nms, nms

__all__ += ["batched_nms", "box_iou", "fast_nms", "matrix_nms", "nms"]
