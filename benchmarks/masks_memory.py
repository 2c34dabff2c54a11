#!/usr/bin/env python
"""Peak memory of the masks ops against the size of their output, one table.

Usage (from the repository root)::

    python benchmarks/masks_memory.py                 # full sizes, cuda if available else cpu
    python benchmarks/masks_memory.py --quick --filter paste_masks
    python benchmarks/masks_memory.py --impls segops --json memory.json

For every forward case of the masks family (``benchmarks/cases/masks.py``; the same inputs
and callables as ``run.py`` times, the reference and peers chunked as there) and every
implementation, a fresh Python process builds the case's inputs and makes one call. On the
CPU the figure is the process's peak resident memory during the call above its resident
memory just before it: the kernel's high-water mark is reset before the call
(``/proc/self/clear_refs``) and read after it (``VmHWM``); where that is not possible, the
peak is ``getrusage(RUSAGE_SELF).ru_maxrss``, which then also covers the setup (small:
masks cases' inputs are a few MB). On CUDA it is ``torch.cuda.max_memory_allocated()`` above
the memory allocated before the call (host memory is not counted). ``output MB`` is the
size of the returned tensors; ``peak / output`` near 1 means the implementation allocates
little beyond its output. One call, the first in the process: it includes one-time costs
(thread pools, allocator arenas), a few MB on the CPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
from typing import Any, Dict, List, Optional

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)

import torch  # noqa: E402

import run  # noqa: E402  (registers the cases; its imports of segops and torchvision)
from cases import CASES, Ctx, Fn, resolve_names  # noqa: E402
from cases.registry import _flatten_tensors  # noqa: E402

FAMILY_OPS = ("assemble_masks", "paste_masks")
COLUMNS = ("op", "case", "impl", "output MB", "peak MB", "peak / output")
MB = 1e6


# --------------------------------------------------------------------------------------
# The child: one implementation of one case, one call
# --------------------------------------------------------------------------------------


def _status_kb(field: str) -> Optional[int]:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark (VmHWM) to the current RSS (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # bytes on macOS, KiB elsewhere


def _ctx(args, impls: List[str]) -> Ctx:
    return Ctx(device=torch.device(args.device), dtype=run._DTYPES[args.dtype],
               quick=args.quick, deterministic=False, impls=impls,
               segops=run._import_segops(), torchvision=run._import_torchvision())


def child(args) -> Dict[str, Any]:
    """Build the case's inputs, call ``args.impl`` once, return its figures."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ctx = _ctx(args, [args.impl])
    case = next(c for c in resolve_names(CASES, ctx) if c.key == args.child)
    spec = case.setup(ctx).get(args.impl)
    if spec is None:
        return {"error": "not available"}
    fn = spec if isinstance(spec, Fn) else Fn(call=spec)
    call = fn.prepare() if fn.prepare is not None else fn.call
    gc.collect()
    res: Dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = call()
        torch.cuda.synchronize(device)
        res["peak_bytes"] = torch.cuda.max_memory_allocated(device) - before
        res["method"] = "cuda max_memory_allocated"
    else:
        reset = _reset_peak_rss()
        rss_kb = _status_kb("VmRSS")
        before = rss_kb * 1024 if (reset and rss_kb is not None) else _maxrss_bytes()
        out = call()
        hwm_kb = _status_kb("VmHWM") if reset else None
        peak = hwm_kb * 1024 if hwm_kb is not None else _maxrss_bytes()
        res["peak_bytes"] = max(0, peak - before)
        res["method"] = "VmHWM" if hwm_kb is not None else "ru_maxrss"
    res["output_bytes"] = sum(t.numel() * t.element_size() for t in _flatten_tensors(out))
    return res


# --------------------------------------------------------------------------------------
# The parent: one child per (case, impl), the table
# --------------------------------------------------------------------------------------


def _fmt_mb(nbytes: Optional[float]) -> str:
    if nbytes is None:
        return "-"
    mb = nbytes / MB
    return f"{mb:.0f}" if mb >= 100 else f"{mb:.1f}" if mb >= 1 else f"{mb:.2f}"


def format_table(rows: List[Dict[str, Any]]) -> str:
    cells = []
    for r in rows:
        if r.get("error"):
            cells.append([r["op"], r["case"], r["impl"], "-", "error", "-"])
            continue
        ratio = r["peak_bytes"] / r["output_bytes"] if r["output_bytes"] else None
        cells.append([r["op"], r["case"], r["impl"], _fmt_mb(r["output_bytes"]),
                      _fmt_mb(r["peak_bytes"]), "-" if ratio is None else f"{ratio:.2f}"])
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(COLUMNS)]
    numeric = (False, False, False, True, True, True)

    def line(vals):
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(vals, widths, numeric)).rstrip()

    return "\n".join([line(COLUMNS), line(["-" * w for w in widths])] + [line(c) for c in cells])


def parse_args(argv=None):
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    p = argparse.ArgumentParser(description="Peak memory of the masks ops vs their output size.")
    p.add_argument("--device", choices=("cpu", "cuda"), default=default_device)
    p.add_argument("--dtype", choices=tuple(run._DTYPES), default="float32")
    p.add_argument("--quick", action="store_true", help="the --quick sizes of run.py")
    p.add_argument("--filter", default=None, metavar="SUBSTR",
                   help="only cases whose 'op case' contains SUBSTR (comma-separated: union)")
    p.add_argument("--impls", default=None, metavar="LIST",
                   help="comma-separated implementations (default: all the case has)")
    p.add_argument("--threads", type=int, default=None, metavar="N")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="seconds per child process (default 600)")
    p.add_argument("--json", default=None, metavar="PATH")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # case key
    p.add_argument("--impl", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return 0

    available = ["segops", "reference"] + (["torchvision"] if run._import_torchvision() else [])
    impls = available
    if args.impls:
        impls = [s.strip() for s in args.impls.split(",") if s.strip()]
    ctx = _ctx(args, impls)
    cases = [c for c in run.select_cases(resolve_names(CASES, ctx), args.filter)
             if c.op in FAMILY_OPS and not c.backward]
    if not cases:
        print(f"error: no forward masks case matches --filter {args.filter!r}", file=sys.stderr)
        return 2

    rows: List[Dict[str, Any]] = []
    common = ["--device", args.device, "--dtype", args.dtype] + (["--quick"] if args.quick
                                                                 else [])
    if args.threads is not None:
        common += ["--threads", str(args.threads)]
    for case in cases:
        names = sorted(case.setup(ctx), key=run._impl_rank)  # setup is cheap: inputs only
        gc.collect()
        for impl in names:
            row: Dict[str, Any] = {"op": case.op, "case": case.name, "impl": impl}
            cmd = [sys.executable, os.path.abspath(__file__), "--child", case.key,
                   "--impl", impl] + common
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
                if res.returncode != 0 or not lines:
                    tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
                    row["error"] = f"exit {res.returncode}: {tail}"[:300]
                else:
                    row.update(json.loads(lines[-1][len("RESULT "):]))
            except subprocess.TimeoutExpired:
                row["error"] = f"timed out after {args.timeout:g} s"
            rows.append(row)
            shown = row.get("error") or (f"output {_fmt_mb(row['output_bytes'])} MB, "
                                         f"peak {_fmt_mb(row['peak_bytes'])} MB")
            print(f"  {case.key} [{impl}]: {shown}", file=sys.stderr, flush=True)

    print(format_table(rows))
    for r in rows:
        if r.get("error"):
            print(f"note: {r['op']} {r['case']} [{r['impl']}]: {r['error']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "dtype": args.dtype, "quick": args.quick,
                       "rows": rows}, f, indent=2)
            f.write("\n")
    return 1 if any(r.get("error") and r["impl"] in run.OWN_IMPLS for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
