"""Benchmark cases, one module per op family; importing this package registers them all.

``registry`` defines what a case is (``Case``, ``Ctx``, ``Fn``, ``register``); ``inputs``
the shared input builders. Adding a family: a module with a ``register_cases()`` that calls
``register(...)`` per case, listed in ``FAMILIES`` below.
"""

from . import cluster, masks, nms, patches, roi
from .registry import CASES, Case, Ctx, Fn, op_impls, register, resolve_names

FAMILIES = (roi, nms, masks, cluster, patches)  # registration order is table order

for _family in FAMILIES:
    _family.register_cases()

__all__ = ["CASES", "Case", "Ctx", "FAMILIES", "Fn", "op_impls", "register", "resolve_names"]
