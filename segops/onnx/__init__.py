"""ONNX export of segops models with standard ONNX operators only.

``translation_table()`` maps every segops op to an ONNX translation for torch's dynamo
exporter::

    import segops.onnx

    program = torch.onnx.export(model, args, dynamo=True,
                                custom_translation_table=segops.onnx.translation_table())

The exported graph uses the default ONNX domain only (no custom domain, so any runtime
that implements the standard operators can run it); docs/deployment.md lists the
operators each op becomes, what onnxruntime gives compared with eager, and the limits.
Ops without a standard-ONNX form (``cluster_seeds``, BPR's ``boundary_patches``,
``crop_patches`` and ``reassemble_patches``) are in the table too: their translation raises
``UnsupportedExportError`` naming the op, instead of the exporter's generic error.

Needs ``onnx``, ``onnxscript`` and ``onnxruntime`` (to run the result); segops itself
does not import this module.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import _masks, _nms, _roi
from ._common import UnsupportedExportError

__all__ = ["UnsupportedExportError", "translation_table", "UNSUPPORTED"]

# op -> why it has no standard-ONNX form
UNSUPPORTED = {
    "cluster_seeds": "its clustering loop (propose, accept, mark clustered, repeat while "
                     "seeds remain) runs a data-dependent number of iterations over the "
                     "whole image; export the network and run segops.cluster_seeds (or "
                     "segops.reference.cluster_seeds) on its output",
    "boundary_patches": "its per-instance greedy NMS over every boundary pixel has no "
                        "standard ONNX operator (NonMaxSuppression's per-class form would "
                        "need one class per instance and a patch per pixel)",
    "crop_patches": "BPR's patch pipeline (boundary_patches -> crop_patches -> "
                    "reassemble_patches) is not exported; run it with segops around the "
                    "exported refinement network",
    "reassemble_patches": "BPR's patch pipeline (boundary_patches -> crop_patches -> "
                          "reassemble_patches) is not exported; run it with segops around "
                          "the exported refinement network",
}


def _unsupported(name: str) -> Callable:
    def translate(*args, **kwargs):
        raise UnsupportedExportError(
            f"segops.onnx: `segops.{name}` has no standard-ONNX form: {UNSUPPORTED[name]}.")

    translate.__name__ = f"segops_{name}_unsupported"
    return translate


def translation_table() -> dict[Callable, Callable]:
    """The ``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``: every
    ``torch.ops.segops`` op (forward ops; backward ops are not exported) to its translation.
    """
    ops = torch.ops.segops
    table: dict[Callable, Callable] = {
        ops.roi_align.default: _roi.roi_align,
        ops.roi_pool.default: _roi.roi_pool,
        ops.multilevel_roi_align.default: _roi.multilevel_roi_align,
        ops.nms.default: _nms.nms,
        ops.batched_nms.default: _nms.batched_nms,
        ops.fast_nms.default: _nms.fast_nms,
        ops.matrix_nms.default: _nms.matrix_nms,
        ops.assemble_masks.default: _masks.assemble_masks,
        ops.assemble_masks_upsampled.default: _masks.assemble_masks_upsampled,
        ops.paste_masks.default: _masks.paste_masks,
    }
    for name in UNSUPPORTED:
        table[getattr(ops, name).default] = _unsupported(name)
    return table
