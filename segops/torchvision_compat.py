"""`patch_torchvision()`: run torchvision's detection ops on segops' kernels.

Replaced, in every loaded ``torchvision.*`` module that holds them under any name (so that
``torchvision.ops.nms``, ``torchvision.ops.boxes.nms`` and the names torchvision's detection
models imported are all covered):

=============================================================  =================================
torchvision function                                           segops
=============================================================  =================================
``ops.roi_align``                                               :func:`segops.roi_align`
``ops.roi_pool``                                                :func:`segops.roi_pool`
``ops.nms``                                                     :func:`segops.nms`
``ops.batched_nms``                                             :func:`segops.batched_nms`
``ops.poolers._multiscale_roi_align`` (``MultiScaleRoIAlign``)  :func:`segops.multilevel_roi_align`
``models.detection.roi_heads.paste_masks_in_image``             ``segops.paste_masks(mode="torchvision")``
=============================================================  =================================

Inputs segops does not take, and calls under ``torch.jit.trace`` (hence ONNX export), go
to torchvision's own functions: quantized tensors, ``paste_masks_in_image`` with
``padding != 1``, and a ``MultiScaleRoIAlign`` whose maps are not consecutive pyramid
levels or differ in dtype. ``torch.jit.script`` compiles torchvision's functions in place
of the replacements (each has ``__prepare_scriptable__``), so a model scripted under the
patch scripts as it would without it, and runs torchvision's kernels.
"""

from __future__ import annotations

import importlib
import math
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from types import ModuleType

import torch
from torch import Tensor

from .ops.masks import paste_masks
from .ops.nms import batched_nms as _segops_batched_nms
from .ops.nms import nms as _segops_nms
from .ops.roi import BoxesType, multilevel_roi_align
from .ops.roi import roi_align as _segops_roi_align
from .ops.roi import roi_pool as _segops_roi_pool

_ORIGINAL = "_segops_original"  # attribute of each replacement: the function it replaces
_LOCK = threading.Lock()


def _tracing() -> bool:
    return torch._C._get_tracing_state() is not None


def _roi_align(original: Callable) -> Callable:
    def roi_align(input: Tensor, boxes: BoxesType, output_size: int | Sequence[int],
                  spatial_scale: float = 1.0, sampling_ratio: int = -1,
                  aligned: bool = False) -> Tensor:
        if _tracing() or input.is_quantized:
            return original(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)
        return _segops_roi_align(input, boxes, output_size, spatial_scale, sampling_ratio,
                                 aligned)

    return roi_align


def _roi_pool(original: Callable) -> Callable:
    def roi_pool(input: Tensor, boxes: BoxesType, output_size: int | Sequence[int],
                 spatial_scale: float = 1.0) -> Tensor:
        if _tracing():
            return original(input, boxes, output_size, spatial_scale)
        return _segops_roi_pool(input, boxes, output_size, spatial_scale)

    return roi_pool


def _nms(original: Callable) -> Callable:
    def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
        if _tracing() or boxes.is_quantized:
            return original(boxes, scores, iou_threshold)
        return _segops_nms(boxes, scores, iou_threshold)

    return nms


def _batched_nms(original: Callable) -> Callable:
    def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
        if _tracing():
            return original(boxes, scores, idxs, iou_threshold)
        return _segops_batched_nms(boxes, scores, idxs, iou_threshold)

    return batched_nms


def _pyramid_levels(scales: list[float], mapper: object, level_mapper: type) -> bool:
    """Whether `mapper` is torchvision's plain LevelMapper over the consecutive levels
    `scales` (2**-k_min, 2**-(k_min + 1), ...), the case multilevel_roi_align computes."""
    if type(mapper) is not level_mapper or not 1 <= len(scales) <= 16:
        return False
    if not all(isinstance(s, float) and s > 0 and math.isfinite(s) for s in scales):
        return False
    k_min = -math.log2(scales[0])
    return (
        k_min == int(k_min)
        and all(s == scales[0] * 0.5**i for i, s in enumerate(scales))
        and mapper.k_min == k_min
        and mapper.k_max == k_min + len(scales) - 1
        and mapper.eps == 1e-6
        and isinstance(mapper.lvl0, int)
        and isinstance(mapper.s0, (int, float))
        and math.isfinite(mapper.s0)
        and mapper.s0 > 0
    )


def _multiscale_roi_align(original: Callable) -> Callable:
    level_mapper = sys.modules["torchvision.ops.poolers"].LevelMapper

    def _multiscale_roi_align(x_filtered: list[Tensor], boxes: list[Tensor],
                              output_size: Sequence[int], sampling_ratio: int,
                              scales: list[float] | None, mapper: object) -> Tensor:
        if (
            _tracing()
            or scales is None
            or len(scales) != len(x_filtered)
            or not _pyramid_levels(list(scales), mapper, level_mapper)
            or len({(f.dtype, f.device) for f in x_filtered}) != 1
            or x_filtered[0].is_quantized
        ):
            return original(x_filtered, boxes, output_size, sampling_ratio, scales, mapper)
        return multilevel_roi_align(
            x_filtered, boxes, output_size, scales, sampling_ratio, aligned=False,
            canonical_scale=mapper.s0, canonical_level=mapper.lvl0,
        )

    return _multiscale_roi_align


def _paste_masks_in_image(original: Callable) -> Callable:
    def paste_masks_in_image(masks: Tensor, boxes: Tensor, img_shape: Sequence[int],
                             padding: int = 1) -> Tensor:
        if _tracing() or padding != 1:
            return original(masks, boxes, img_shape, padding)
        h, w = img_shape
        out = paste_masks(masks, boxes, (int(h), int(w)), threshold=None, mode="torchvision")
        return out[:, None]

    return paste_masks_in_image


# (module defining the function, its name there, the factory of its replacement)
_TARGETS: tuple[tuple[str, str, Callable[[Callable], Callable]], ...] = (
    ("torchvision.ops.roi_align", "roi_align", _roi_align),
    ("torchvision.ops.roi_pool", "roi_pool", _roi_pool),
    ("torchvision.ops.boxes", "nms", _nms),
    ("torchvision.ops.boxes", "batched_nms", _batched_nms),
    ("torchvision.ops.poolers", "_multiscale_roi_align", _multiscale_roi_align),
    ("torchvision.models.detection.roi_heads", "paste_masks_in_image", _paste_masks_in_image),
)


def _returning(value: Callable) -> Callable[[], Callable]:
    return lambda: value


def _torchvision_modules() -> list[ModuleType]:
    return [
        m for name, m in list(sys.modules.items())
        if isinstance(m, ModuleType) and (name == "torchvision" or name.startswith("torchvision."))
    ]


class TorchvisionPatch:
    """The handle :func:`patch_torchvision` returns: a context manager whose exit (or
    :meth:`restore`) puts back every attribute it replaced.

    Attributes:
        patched: ``"module.attribute"`` of every name replaced, e.g. ``"torchvision.ops.nms"``.
    """

    def __init__(self) -> None:
        self._replaced: list[tuple[ModuleType, str, Callable, Callable]] = []
        self._wrappers: list[Callable] = []  # this handle's replacements
        self.patched: list[str] = []
        self.active = False

    def _apply(self) -> None:
        try:
            import torchvision  # noqa: F401

            for module in {m for m, _, _ in _TARGETS}:
                importlib.import_module(module)
        except Exception as e:  # torchvision missing, or its binary not matching torch
            raise ImportError(f"patch_torchvision: torchvision could not be imported: {e}") from e
        by_original: dict[int, tuple[Callable, Callable]] = {}  # id -> (original, wrapper)
        missing = []
        for module, name, factory in _TARGETS:
            original = getattr(sys.modules[module], name, None)
            if original is None:
                missing.append(f"{module}.{name}")
            elif not hasattr(original, _ORIGINAL):  # else segops' already: leave it
                wrapper = factory(original)
                setattr(wrapper, _ORIGINAL, original)
                # torch.jit.script compiles what this returns in place of the wrapper: a
                # model scripted under the patch runs torchvision's own functions.
                wrapper.__prepare_scriptable__ = _returning(original)
                wrapper.__doc__ = f"segops' replacement of {module}.{name} (patch_torchvision)"
                by_original[id(original)] = (original, wrapper)
        if missing:
            warnings.warn(
                f"patch_torchvision: this torchvision ({sys.modules['torchvision'].__version__}) "
                f"has no {', '.join(missing)}; those are left unpatched",
                stacklevel=3,
            )
        for module in _torchvision_modules():
            for attr, value in list(vars(module).items()):
                pair = by_original.get(id(value))
                if pair is not None and value is pair[0]:
                    original, wrapper = pair
                    setattr(module, attr, wrapper)
                    self._replaced.append((module, attr, original, wrapper))
                    self.patched.append(f"{module.__name__}.{attr}")
        self._wrappers = [wrapper for _, wrapper in by_original.values()]
        self.active = True

    def restore(self) -> None:
        """Put back every replaced attribute, and torchvision's function wherever a
        ``torchvision`` module imported after the patch took a replacement. Idempotent."""
        with _LOCK:
            if not self.active:
                return
            for module, attr, original, wrapper in reversed(self._replaced):
                if vars(module).get(attr) is wrapper:
                    setattr(module, attr, original)
            for module in _torchvision_modules():
                for attr, value in list(vars(module).items()):
                    if any(value is wrapper for wrapper in self._wrappers):
                        setattr(module, attr, getattr(value, _ORIGINAL))
            self.active = False

    def __enter__(self) -> TorchvisionPatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.restore()

    def __repr__(self) -> str:
        state = "active" if self.active else "restored"
        return f"TorchvisionPatch({state}, {len(self.patched)} names)"


def patch_torchvision() -> TorchvisionPatch:
    """Route torchvision's ``roi_align``, ``roi_pool``, ``nms``, ``batched_nms``, the
    pooling of ``MultiScaleRoIAlign`` and ``paste_masks_in_image`` through segops.

    Usable as a plain call (``handle = segops.patch_torchvision()``; ``handle.restore()``
    undoes it) or as a context manager (``with segops.patch_torchvision(): ...``) that
    restores every replaced attribute, by identity, on exit.

    Every ``torchvision.*`` module attribute that is one of those functions is replaced,
    so torchvision's models (Faster/Mask/Keypoint R-CNN, RetinaNet, SSD, FCOS) use segops
    whether they were built before or inside the patch. Names that *your* modules imported
    from torchvision before the call (``from torchvision.ops import nms``) keep
    torchvision's function. Patching an already patched torchvision changes nothing (the
    inner handle restores nothing). The patch is process-wide: every thread sees it.

    Results are torchvision's (see docs/torchvision.md for the measured parity), except:
    ``batched_nms`` orders equal scores by lower index (torchvision's order among them
    depends on the path it takes); ``MultiScaleRoIAlign`` may assign an RoI whose area is
    within about 1e-6 (relative) of a level threshold to the adjacent level;
    ``paste_masks_in_image`` accepts boxes far outside the image (torchvision raises).

    Raises:
        ImportError: torchvision cannot be imported.
    """
    handle = TorchvisionPatch()
    with _LOCK:
        handle._apply()
    return handle
