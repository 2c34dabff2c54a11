"""The GPU-side tools, on the CPU: tools/gpu_profile.py runs its loops (no CUDA kernels, no
graphs there), tools/ptxas_report.py parses ptxas logs and flags spills,
tools/check_build_flags.py reads ninja files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import check_build_flags  # noqa: E402
import gpu_profile  # noqa: E402
import ptxas_report  # noqa: E402

pytestmark = pytest.mark.no_cuda_emu  # gpu_profile records op calls with its own mode


@pytest.mark.parametrize("command", ["graphs", "profile"])
def test_gpu_profile_runs_on_cpu(tmp_path, command):
    out = tmp_path / "out.json"
    argv = [command, "--device", "cpu", "--quick", "--filter", "matrix_nms", "--filter",
            "roi_align P4 13x19 C16 K32 out7 sr2", "--reps", "1", "--json", str(out)]
    assert gpu_profile.main(argv) == 0
    text = out.read_text()
    assert "matrix_nms" in text and "_roi_align_backward" in text


_LOG = """\
ptxas info    : Compiling entry function '_ZN6segops4cuda12_GLOBAL__N_16kernelIfEEvPKT_' for 'sm_90'
ptxas info    : Function properties for _ZN6segops4cuda12_GLOBAL__N_16kernelIfEEvPKT_
    16 bytes stack frame, 12 bytes spill stores, 28 bytes spill loads
ptxas info    : Used 64 registers, used 1 barriers, 16 bytes cumulative stack size, 128 bytes smem
ptxas info    : Compiling entry function '_ZN6segops4cuda12_GLOBAL__N_14fastEPi' for 'sm_90'
ptxas info    : Function properties for _ZN6segops4cuda12_GLOBAL__N_14fastEPi
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 20 registers
"""


def test_ptxas_report_parses_and_fails_on_spills(tmp_path, capsys):
    log = tmp_path / "fam_kernels.cu.log"
    log.write_text(_LOG)
    kernels = ptxas_report.parse(log, "fam")
    assert [(k.name, k.registers, k.stack, k.spill_stores, k.spill_loads, k.smem)
            for k in kernels] == [("fam::kernel<float>", 64, 16, 12, 28, 128),
                                  ("fam::fast", 20, 0, 0, 0, 0)]
    assert ptxas_report.main([str(log), "--check"]) == 1
    assert "fam::kernel<float>" in capsys.readouterr().err
    log.write_text(_LOG.replace("12 bytes spill stores, 28", "0 bytes spill stores, 0"))
    assert ptxas_report.main([str(log), "--check"]) == 0


def test_ninja_files_are_read_with_per_object_overrides(tmp_path):
    ninja = tmp_path / "build.ninja"
    ninja.write_text("cuda_cflags = -O3 $\n  --fmad=false\nbuild a.o: cuda_compile /x/a.cu\n"
                     "  cuda_cflags = -O3\nbuild b.o: compile /x/b.cpp\n")
    variables, builds, overrides = check_build_flags.parse(ninja)
    assert variables["cuda_cflags"] == "-O3   --fmad=false"
    assert builds == [("cuda_compile", "a.o", "/x/a.cu"), ("compile", "b.o", "/x/b.cpp")]
    assert overrides == ["a.o: cuda_cflags"]
