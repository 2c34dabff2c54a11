"""Shadow every segops op call with segops' CUDA kernels run by the CPU emulator.

With ``SEGOPS_CUDA_EMU=1`` or ``--cuda-emu`` (``SEGOPS_CUDA_EMU_SEED=<n>`` for a shuffled
schedule), conftest registers :class:`ShadowPlugin`, which builds ``tools/cuda_emu`` and runs
each test's body in :class:`Shadow`, a dispatch mode that sees
every ``torch.ops.segops.*`` call on CPU tensors (forward ops, backward ops, the ones the
public wrappers and the models make), runs the CUDA glue and kernels on the same arguments
as ``torch.ops.segops_emu.*``, and requires:

* the same exception type when the CPU op raises (the glue's checks are the CPU's), except
  where the CUDA op checks on the device: an index the CPU rejects with a ValueError must
  then trip a device-side assertion (a RuntimeError "device-side assert triggered");
* the same dtypes and shapes, and the same values bit for bit (NaN where NaN) — except
  the float-atomic backward paths, which sum in a scheduling-dependent order and are
  compared within the dtype's tolerance; under ``torch.use_deterministic_algorithms(True)``
  those take the gather path and must match bit for bit too;
* no host synchronisation in the CUDA glue (tools/cuda_emu/costs.py traces each call: no
  ``.item()``, ``nonzero``, move to the CPU or synchronising runtime call), except the one
  read-back of a documented exact-size form (``costs.EXACT_SIZE_FORMS``).

The whole test suite thereby checks CUDA == CPU on its own inputs. See tools/cuda_emu.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# Backward ops whose CUDA kernels scatter with float atomicAdd unless deterministic.
_ATOMIC_BACKWARD = {"_roi_align_backward", "_roi_pool_backward", "_multilevel_roi_align_backward"}

calls: collections.Counter[str] = collections.Counter()
_module = None


def load(seed: int):
    """Builds (incrementally) and loads the emulated ops; sets the schedule seed."""
    global _module
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "cuda_emu"))
    import build  # noqa: PLC0415  (tools/cuda_emu/build.py)

    _module = build.load()
    _module.set_schedule_seed(seed)
    return _module


def _device_assert_for(cpu_error: Exception, emu_error: Exception) -> bool:
    """The documented CPU/CUDA difference: a bad index is a ValueError on the CPU, a
    device-side assertion on CUDA."""
    return isinstance(cpu_error, ValueError) and "device-side assert triggered" in str(emu_error)


def _plain_cpu(args, kwargs) -> bool:
    leaves, _ = tree_flatten((args, kwargs))
    tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
    return all(
        type(t) in (torch.Tensor, torch.nn.Parameter) and t.device.type == "cpu" for t in tensors
    )


def _same_bits(name: str, cpu: torch.Tensor, emu: torch.Tensor) -> None:
    if cpu.is_floating_point():
        nan = cpu.isnan()
        if not torch.equal(nan, emu.isnan()):
            raise AssertionError(f"{name}: NaN positions differ between CPU and emulated CUDA")
        cpu, emu = cpu.masked_fill(nan, 0), emu.masked_fill(nan, 0)
        bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[cpu.element_size()]
        cpu, emu = cpu.contiguous().view(bits), emu.contiguous().view(bits)
    if not torch.equal(cpu, emu):
        where = (cpu != emu).nonzero()[:5].tolist()
        raise AssertionError(
            f"{name}: emulated CUDA differs from CPU at {int((cpu != emu).sum())} of "
            f"{cpu.numel()} elements, first at {where}"
        )


def compare(name: str, cpu, emu, exact: bool) -> None:
    if isinstance(cpu, (tuple, list)):
        assert len(cpu) == len(emu), f"{name}: {len(cpu)} outputs on CPU, {len(emu)} emulated"
        for i, (c, e) in enumerate(zip(cpu, emu)):
            compare(f"{name}[{i}]", c, e, exact)
    elif isinstance(cpu, torch.Tensor):
        if (cpu.dtype, cpu.shape) != (emu.dtype, emu.shape):
            raise AssertionError(
                f"{name}: CPU gives {cpu.dtype}{list(cpu.shape)}, "
                f"emulated CUDA {emu.dtype}{list(emu.shape)}"
            )
        if exact or not cpu.is_floating_point():
            _same_bits(name, cpu, emu)
        else:
            torch.testing.assert_close(emu, cpu, equal_nan=True, msg=lambda m: f"{name}: {m}")
    elif cpu != emu:
        raise AssertionError(f"{name}: CPU gives {cpu!r}, emulated CUDA {emu!r}")


class Shadow(TorchDispatchMode):
    """Runs each segops op on CPU and through the emulated CUDA kernels; compares."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace != "segops" or not _plain_cpu(args, kwargs):
            return func(*args, **kwargs)
        name = func._opname
        emu_op = getattr(getattr(torch.ops.segops_emu, name), func._overloadname)
        calls[name] += 1
        try:
            out = func(*args, **kwargs)
        except Exception as cpu_error:
            try:
                with torch.no_grad():
                    emu_op(*args, **kwargs)
            except Exception as emu_error:  # noqa: BLE001
                if type(emu_error) is not type(cpu_error) and not _device_assert_for(
                    cpu_error, emu_error
                ):
                    raise AssertionError(
                        f"{name}: CPU raised {cpu_error!r}, emulated CUDA {emu_error!r}"
                    ) from emu_error
                raise cpu_error from None
            raise AssertionError(f"{name}: CPU raised {cpu_error!r}, emulated CUDA did not")
        import costs  # noqa: PLC0415  (tools/cuda_emu/costs.py, on the path once loaded)

        with torch.no_grad():
            cost = costs.trace_call(_module, name, lambda: emu_op(*args, **kwargs))
        emu = cost.output
        allowed = costs.allowed_syncs(func, args, kwargs)
        if len(cost.syncs) > allowed:
            raise AssertionError(
                f"{name}: the CUDA glue synchronises with the host ({', '.join(cost.syncs)}); "
                f"this form may make {allowed} synchronisation(s)"
            )
        exact = name not in _ATOMIC_BACKWARD or torch.are_deterministic_algorithms_enabled()
        compare(name, out, emu, exact)
        return out


class ShadowPlugin:
    """The pytest plugin: each test's call (not its setup) runs under :class:`Shadow`,
    except tests marked ``no_cuda_emu``; a run that compared nothing fails."""

    def __init__(self, seed: int):
        self.seed = seed
        self.loaded = False

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        if item.get_closest_marker("no_cuda_emu") is not None:
            yield
            return
        if not self.loaded:
            load(self.seed)
            self.loaded = True
        with Shadow():
            yield

    def pytest_terminal_summary(self, terminalreporter):
        total = sum(calls.values())
        terminalreporter.write_line(
            f"cuda-emu: {total} op calls compared with emulated CUDA: "
            + ", ".join(f"{k} {v}" for k, v in sorted(calls.items()))
        )
        if total == 0:
            terminalreporter.write_line("cuda-emu: the run fails: it compared no op call")

    def pytest_sessionfinish(self, session, exitstatus):
        if exitstatus == 0 and session.testscollected and sum(calls.values()) == 0:
            session.exitstatus = 1
