"""segops.patch_torchvision where torchvision cannot be imported: a clear ImportError (runs
with or without torchvision installed)."""

from __future__ import annotations

import sys

import pytest

import segops


def test_missing_torchvision_raises_import_error(monkeypatch):
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # `import torchvision` fails
    with pytest.raises(ImportError, match="patch_torchvision: torchvision could not be imported"):
        segops.patch_torchvision()
