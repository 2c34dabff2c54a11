"""User-facing op wrappers, one module per family; each module's ``__all__`` is its public
ops, which ``segops`` re-exports (see docs/architecture.md)."""

FAMILIES = ("roi", "nms", "masks", "cluster", "patches")
