"""User-facing op wrappers, one module per family (see DESIGN.md)."""
