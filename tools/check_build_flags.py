"""Reads the compile commands of the real CUDA build back and checks the flags that CPU/GPU
bit-equality rests on reach every object.

``setup.py build_ext`` is run as a CUDA build (torch.version.cuda and CUDA_HOME set for it,
so that a CPU-only torch will do), up to the point where torch's BuildExtension has written
its ninja file; nothing is compiled. Every ``csrc/<family>/*.cu`` must then be a
``cuda_compile`` object whose nvcc flags include ``--fmad=false`` (no fused multiply-adds:
the shared geometry must round as on the CPU) and none of the flags that relax IEEE
arithmetic (fast math, flush-to-zero, approximate division or square root), and every C++
object must be compiled with ``-ffp-contract=off`` and without ``-ffast-math``.

    python tools/check_build_flags.py [--cuda-home /usr/local/cuda] [--show]
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NVCC_REQUIRED = ("--fmad=false",)
NVCC_FORBIDDEN = ("--use_fast_math", "-use_fast_math", "--ftz=true", "-ftz=true",
                  "--prec-div=false", "-prec-div=false", "--prec-sqrt=false",
                  "-prec-sqrt=false", "--fmad=true", "-fmad=true")
CXX_REQUIRED = ("-ffp-contract=off",)
CXX_FORBIDDEN = ("-ffast-math", "-Ofast", "-funsafe-math-optimizations", "-ffp-contract=fast")

# Run in a child process: patch torch so that setup.py takes its CUDA branch and stops
# once the ninja file exists.
_DRIVER = r"""
import runpy, sys
import torch
import torch.utils.cpp_extension as ce
torch.version.cuda = torch.version.cuda or "13.0"
ce.CUDA_HOME = sys.argv[1]
ce._check_cuda_version = lambda *a, **k: None
class Written(Exception):
    pass
def stop(build_directory, verbose, error_prefix):
    raise Written(build_directory)
ce._run_ninja_build = stop
sys.argv = ["setup.py", "build_ext", "--build-temp", sys.argv[2], "--build-lib", sys.argv[2]]
try:
    runpy.run_path("setup.py", run_name="__main__")
except Written:
    sys.exit(0)
sys.exit("setup.py finished without writing a ninja file (not a CUDA build?)")
"""


def ninja_file(cuda_home: str, build_dir: Path) -> Path:
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST=os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0"),
               SEGOPS_DISABLE_CUDA="0", CUDA_HOME=cuda_home)
    out = subprocess.run([sys.executable, "-c", _DRIVER, cuda_home, str(build_dir)], cwd=ROOT,
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
        raise SystemExit(f"check_build_flags: setup.py failed ({out.returncode})")
    found = sorted(build_dir.rglob("build.ninja"))
    if not found:
        raise SystemExit("check_build_flags: no build.ninja was written")
    return found[0]


def parse(path: Path):
    """(variables, [(rule, output, input)], per-build overrides) of a ninja file."""
    text = path.read_text().replace("$\n", "")
    variables, builds, overrides = {}, [], []
    for line in text.splitlines():
        if m := re.match(r"^(\w+)\s*=\s*(.*)$", line):
            variables[m.group(1)] = m.group(2)
        elif m := re.match(r"^build\s+(.+?):\s*(\w+)\s+(.+)$", line):
            builds.append((m.group(2), m.group(1).strip(), m.group(3).strip()))
        elif builds and (m := re.match(r"^\s+(\w+)\s*=", line)):
            overrides.append(f"{builds[-1][1]}: {m.group(1)}")
    return variables, builds, overrides


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cuda-home", default=os.environ.get("CUDA_HOME", "/usr/local/cuda"))
    ap.add_argument("--show", action="store_true", help="print the flags read back")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        variables, builds, overrides = parse(ninja_file(args.cuda_home, Path(tmp)))
    nvcc = shlex.split(variables.get("cuda_cflags", "")) + shlex.split(
        variables.get("cuda_post_cflags", ""))
    cxx = shlex.split(variables.get("cflags", "")) + shlex.split(variables.get("post_cflags", ""))
    if args.show:
        print("nvcc:", " ".join(nvcc))
        print("c++: ", " ".join(cxx))
    errors = []
    cu = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("csrc/*/*.cu"))
    compiled = {Path(src).resolve() for rule, _, src in builds if rule == "cuda_compile"}
    for f in cu:
        if (ROOT / f).resolve() not in compiled:
            errors.append(f"{f} is not compiled by nvcc in the setup.py build")
    cpp = [src for rule, _, src in builds if rule == "compile"]
    errors += [f"nvcc flags lack {f}" for f in NVCC_REQUIRED if f not in nvcc]
    errors += [f"nvcc flags include {f}" for f in NVCC_FORBIDDEN if f in nvcc]
    errors += [f"c++ flags lack {f}" for f in CXX_REQUIRED if f not in cxx]
    errors += [f"c++ flags include {f}" for f in CXX_FORBIDDEN if f in cxx]
    # Per-object flags would be a variable set under a build line: none may be.
    errors += [f"an object sets its own flags ({o})" for o in overrides if "flags" in o]
    for e in errors:
        print(f"check_build_flags: {e}", file=sys.stderr)
    if errors:
        return 1
    print(f"check_build_flags: {len(cu)} CUDA objects and {len(cpp)} C++ objects of the "
          f"setup.py build get {' '.join(NVCC_REQUIRED)} / {' '.join(CXX_REQUIRED)} and no "
          "fast-math flag")
    return 0


if __name__ == "__main__":
    sys.exit(main())
