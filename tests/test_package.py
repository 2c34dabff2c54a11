"""The package itself: its version, the torch it was compiled against, the loader's errors.

With ``SEGOPS_EXPECT_INSTALLED=1`` (CI's packaging step, which runs these tests from outside
the source tree against a wheel built from the sdist) it also checks that the segops under
test is the installed one and that the wheel carries its licence.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import segops
from segops import _extension

INSTALLED = os.environ.get("SEGOPS_EXPECT_INSTALLED", "") not in ("", "0")


def test_version_is_the_distributions():
    assert segops.__version__ == importlib.metadata.version("segops")


def test_the_torch_compiled_against_is_recorded_in_the_library():
    built = segops._C.torch_version()
    assert built, "segops._C records no torch version"
    # the loader's fallback reads the same record from the file without loading it
    assert _extension.recorded_torch_version(segops._C.__file__) == built
    assert _extension.recorded_torch_version("/nonexistent/_C.so") is None


def test_python_m_segops_prints_both_torch_versions():
    out = subprocess.run([sys.executable, "-m", "segops"], capture_output=True, text=True,
                         check=True).stdout
    assert f"torch {torch.__version__} " in out and "running" in out
    assert f"torch {segops._C.torch_version()}, compiled against" in out


def test_a_library_that_does_not_load_raises_a_named_import_error(tmp_path):
    library = tmp_path / "_C.so"
    library.write_bytes(b"\x7fELF junk segops-torch=2.99.0+cpu\x00 more junk")
    error = _extension.load_failure(library, OSError("undefined symbol: _ZN3c106detail"))
    message = str(error)
    assert isinstance(error, ImportError)
    assert "2.99.0+cpu" in message and torch.__version__ in message
    assert "pip install --no-build-isolation" in message and "undefined symbol" in message


def test_another_torch_release_warns_once_naming_both():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _extension.check_versions("2.13.0+cpu", "2.15.0+cu132")
        _extension.check_versions("2.13.0+cpu", "2.13.0+cu130")  # same release: silent
    assert len(caught) == 1 and caught[0].category is segops.TorchVersionWarning
    assert "2.13.0+cpu" in str(caught[0].message) and "2.15.0+cu132" in str(caught[0].message)


def test_import_under_another_torch_release_warns():
    code = ("import warnings, torch; torch.__version__ = '0.0.1'; "
            "warnings.simplefilter('error');\n"
            "try:\n    import segops\nexcept Warning as w:\n    print(type(w).__name__, w)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith("TorchVersionWarning") and "0.0.1" in out


@pytest.mark.skipif(not INSTALLED, reason="SEGOPS_EXPECT_INSTALLED is not set")
def test_the_installed_package_is_under_test():
    here = Path(__file__).resolve().parents[1]
    package = Path(segops.__file__).resolve()
    assert "site-packages" in package.parts, package
    assert here not in package.parents, f"segops imported from the test tree: {package}"
    files = importlib.metadata.files("segops") or []
    assert any(f.name == "LICENSE" for f in files), "the wheel carries no LICENSE"
    assert any(f.name.startswith("_C.") for f in files)
