"""Loading the compiled library, ``segops._C``, against the torch that is running.

segops is compiled against one torch and records its version in the library
(``segops._C.torch_version()``). Another torch release may or may not be able to load it:
a build against torch 2.13.0 was measured to load and pass the op tests under 2.13, 2.14 and
2.15, but torch promises no binary compatibility between releases. So:

* if the library loads under a different torch release, segops warns once
  (:class:`TorchVersionWarning`, naming both versions) and carries on;
* if it does not load, the loader's message (typically an undefined C++ symbol) is replaced
  by an :class:`ImportError` naming both versions and the command that rebuilds segops.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import warnings
from pathlib import Path
from types import ModuleType

import torch

_MARKER = re.compile(rb"segops-torch=([0-9A-Za-z.+_-]+)\x00")

REBUILD = (
    "pip install --no-build-isolation --no-deps --no-cache-dir --force-reinstall segops "
    "(in a source checkout: pip install --no-build-isolation -e .)"
)


class TorchVersionWarning(UserWarning):
    """segops was compiled against another torch release than the one running."""


def _release(version: str) -> str:
    """'2.13.0+cu130' -> '2.13.0': the release, without the local build tag."""
    return version.split("+", 1)[0]


def recorded_torch_version(library: str | Path) -> str | None:
    """The torch version recorded in a segops library file, read without loading it."""
    try:
        match = _MARKER.search(Path(library).read_bytes())
    except OSError:
        return None
    return match.group(1).decode() if match else None


def load_failure(library: str | Path | None, error: BaseException) -> ImportError:
    """The ImportError to raise when ``library`` failed to load with ``error``."""
    built = recorded_torch_version(library) if library else None
    return ImportError(
        f"segops: the compiled library {library or 'segops._C'} does not load under torch "
        f"{torch.__version__}; it was built against torch {built or 'an unknown version'}. "
        f"Rebuild segops against the torch you run: {REBUILD}. "
        f"(The loader said: {str(error).splitlines()[0] if str(error) else type(error).__name__})"
    )


def check_versions(built: str, running: str = torch.__version__) -> None:
    """Warns (once per process, at import) when the releases differ."""
    if built and _release(built) != _release(running):
        warnings.warn(
            f"segops was compiled against torch {built} and is running under torch {running}; "
            f"it may work, but if an op fails, rebuild segops against this torch: {REBUILD}",
            TorchVersionWarning,
            stacklevel=3,
        )


def load() -> ModuleType:
    """Imports ``segops._C`` (registering ``torch.ops.segops.*``) or raises a clear error."""
    spec = importlib.util.find_spec("segops._C")
    if spec is None:
        raise ImportError(
            "segops: the compiled library segops._C is missing: segops was not built. Build it "
            "against the torch you run: pip install --no-build-isolation -e . (in a checkout)"
        )
    try:
        module = importlib.import_module("segops._C")
    except (ImportError, OSError) as error:
        raise load_failure(spec.origin, error) from error
    check_versions(module.torch_version())
    return module
