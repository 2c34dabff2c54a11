"""Thin model definitions built on segops ops, importable as `segops.models`."""
