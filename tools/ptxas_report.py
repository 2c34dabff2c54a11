"""Register, stack and spill report of every CUDA kernel, from ``nvcc -Xptxas -v`` logs.

``tools/check_cuda.sh`` compiles each ``csrc/<family>/*.cu`` with ``-Xptxas -v`` and keeps
the logs; this script parses them into one table (a row per kernel instantiation, names
demangled and shortened) and fails when a kernel spills registers to local memory, unless
the kernel is listed in ALLOWED_SPILLS with the reason. ``--write`` refreshes the committed
record (docs/cost_model/ptxas_sm90.txt).

    python tools/ptxas_report.py LOG... [--out FILE] [--check]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# Kernels allowed to spill, by a substring of their shortened name, with the reason. Every
# other kernel must report "0 bytes spill stores, 0 bytes spill loads".
ALLOWED_SPILLS: dict[str, str] = {}  # none: every kernel is spill-free for sm_90

_ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(\w+)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:, used (\d+) barriers)?(?:.*?, (\d+) bytes smem)?")


@dataclass
class Kernel:
    family: str
    mangled: str
    arch: str
    registers: int = 0
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    smem: int = 0
    name: str = ""

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0


def demangle(names: list[str]) -> list[str]:
    tool = shutil.which("c++filt")
    if tool is None or not names:
        return names
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True,
                         check=True).stdout.splitlines()
    return out if len(out) == len(names) else names


def shorten(family: str, name: str) -> str:
    """`void segops::cuda::(anonymous namespace)::k<float>(args)` -> `family::k<float>`."""
    name = re.sub(r"^void ", "", name)
    name = name.replace("segops::cuda::", "").replace("(anonymous namespace)::", "")
    name = name.replace("segops::", "")
    # Drop the parameter list: the template arguments identify the instantiation.
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            cut = i
            break
    name = name[:cut]
    name = re.sub(r"\b(unsigned char|long|int|float|double)\b", lambda m: m.group(1), name)
    return f"{family}::{name}"


def parse(log: Path, family: str) -> list[Kernel]:
    kernels: list[Kernel] = []
    by_name: dict[str, Kernel] = {}
    current: Kernel | None = None
    props_for: str | None = None
    for line in log.read_text().splitlines():
        if m := _ENTRY.search(line):
            current = Kernel(family, m.group(1), m.group(2))
            kernels.append(current)
            by_name[current.mangled] = current
        elif m := _PROPS.search(line):
            props_for = m.group(1)
        elif m := _FRAME.search(line):
            k = by_name.get(props_for or "", current)
            if k is not None:
                k.stack, k.spill_stores, k.spill_loads = map(int, m.groups())
        elif (m := _USED.search(line)) and current is not None:
            current.registers = int(m.group(1))
            current.smem = int(m.group(3) or 0)
    names = demangle([k.mangled for k in kernels])
    for k, n in zip(kernels, names):
        k.name = shorten(family, n)
    return kernels


def allowed(k: Kernel) -> str | None:
    for key, why in ALLOWED_SPILLS.items():
        if key in k.name:
            return why
    return None


def table(kernels: list[Kernel], header: str) -> str:
    rows = [header, "",
            f"{'regs':>5} {'stack':>6} {'spill st':>8} {'spill ld':>8} {'smem':>6}  kernel"]
    for k in sorted(kernels, key=lambda k: k.name):
        flag = "  <- SPILLS" if k.spills else ""
        rows.append(f"{k.registers:>5} {k.stack:>6} {k.spill_stores:>8} {k.spill_loads:>8} "
                    f"{k.smem:>6}  {k.name}{flag}")
    spilling = [k for k in kernels if k.spills]
    rows += ["", f"{len(kernels)} kernels, {len(spilling)} spilling "
                 f"({sum(k.spill_stores for k in spilling)} bytes of spill stores)"]
    for k in spilling:
        why = allowed(k)
        rows.append(f"  {k.name}: " + (f"allowed: {why}" if why else "NOT ALLOWED"))
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logs", nargs="+", type=Path,
                    help="ptxas -v logs named <family>_<file>.log")
    ap.add_argument("--out", type=Path, help="write the report here (else stdout)")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 when a kernel outside ALLOWED_SPILLS spills")
    ap.add_argument("--header", default="ptxas -v report")
    args = ap.parse_args(argv)
    kernels: list[Kernel] = []
    for log in args.logs:
        kernels += parse(log, log.name.split("_", 1)[0])
    if not kernels:
        print("ptxas_report: no kernels found in the logs", file=sys.stderr)
        return 1
    text = table(kernels, args.header)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    bad = [k for k in kernels if k.spills and allowed(k) is None]
    if args.check and bad:
        for k in bad:
            print(f"ptxas_report: {k.name} ({k.arch}) spills {k.spill_stores} bytes "
                  f"(stores) / {k.spill_loads} (loads); see tools/ptxas_report.py",
                  file=sys.stderr)
        return 1
    print(f"ptxas_report: {len(kernels)} kernels, "
          f"{sum(k.spills for k in kernels)} spilling ({len(bad)} not allowed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
