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


# SEGOPS_CUDA_EMU=1: every segops op call is also run through the CUDA kernels on the CPU
# emulator and compared with the CPU result (tests/helpers/cuda_emu_shadow.py, tools/cuda_emu);
# SEGOPS_CUDA_EMU_SEED=<n> shuffles the emulated block and thread order.
_CUDA_EMU = os.environ.get("SEGOPS_CUDA_EMU", "") not in ("", "0")


@pytest.fixture(scope="session")
def _cuda_emu_module():
    from helpers.cuda_emu_shadow import load

    return load(seed=int(os.environ.get("SEGOPS_CUDA_EMU_SEED", "0")))


@pytest.fixture(autouse=True)
def _cuda_emu_shadow(request):
    if not _CUDA_EMU or request.node.get_closest_marker("no_cuda_emu") is not None:
        yield
        return
    from helpers.cuda_emu_shadow import Shadow

    request.getfixturevalue("_cuda_emu_module")
    with Shadow():
        yield


def pytest_terminal_summary(terminalreporter):
    if not _CUDA_EMU:
        return
    from helpers.cuda_emu_shadow import calls

    total = sum(calls.values())
    terminalreporter.write_line(
        f"cuda-emu: {total} op calls compared with emulated CUDA: "
        + ", ".join(f"{k} {v}" for k, v in sorted(calls.items()))
    )
    if total == 0:
        terminalreporter.write_line("cuda-emu: the run fails: it compared no op call")


def pytest_sessionfinish(session, exitstatus):
    """A shadowed run that compared nothing must not pass."""
    if _CUDA_EMU and exitstatus == 0 and session.testscollected:
        from helpers.cuda_emu_shadow import calls

        if sum(calls.values()) == 0:
            session.exitstatus = 1
