"""Shared test configuration: hypothesis profiles, the `cuda`/`slow` markers, devices.

Hypothesis profile: ``HYPOTHESIS_PROFILE`` = ``ci`` (few examples, derandomized), ``dev``
or ``thorough`` (the GPU machine, fuzzing runs). Without it: ``ci`` when ``CI`` is set,
else ``dev``.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large]

settings.register_profile(
    "ci", max_examples=25, derandomize=True, deadline=None, print_blob=True,
    suppress_health_check=_SUPPRESS,
)
settings.register_profile(
    "dev", max_examples=100, deadline=None, print_blob=True, suppress_health_check=_SUPPRESS,
)
settings.register_profile(
    "thorough", max_examples=1000, deadline=None, print_blob=True,
    suppress_health_check=_SUPPRESS,
)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)

HAS_CUDA = torch.cuda.is_available()


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one)")
    config.addinivalue_line("markers", "slow: long-running test")
    config.addinivalue_line(
        "markers", "no_cuda_emu: not shadowed by the CUDA emulator (SEGOPS_CUDA_EMU)"
    )
    if config.getoption("--cuda-emu"):
        from helpers.cuda_emu_shadow import ShadowPlugin

        seed = int(os.environ.get("SEGOPS_CUDA_EMU_SEED", "0"))
        config.pluginmanager.register(ShadowPlugin(seed), "segops-cuda-emu")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _cuda_build_matches_machine():
    """A GPU that the build cannot use would silently skip every CUDA test: fail instead."""
    if HAS_CUDA:
        import segops

        if not segops._C.with_cuda():
            pytest.fail("a CUDA device is visible but segops was built without CUDA")


DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


@pytest.fixture(
    scope="session",
    params=[pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.cuda)],
)
def device(request) -> str:
    """Every device: cpu always, cuda (marked, so skipped without a GPU)."""
    return request.param


# SEGOPS_CUDA_EMU=1 (or --cuda-emu): every segops op call is also run through the CUDA kernels
# on the CPU emulator and compared with the CPU result (tests/helpers/cuda_emu_shadow.py,
# tools/cuda_emu), by a plugin registered only then: other runs pay nothing for it.
# SEGOPS_CUDA_EMU_SEED=<n> shuffles the emulated block and thread order.


def pytest_addoption(parser):
    parser.addoption("--cuda-emu", action="store_true",
                     default=os.environ.get("SEGOPS_CUDA_EMU", "") not in ("", "0"),
                     help="also run every segops op call through the emulated CUDA kernels")
