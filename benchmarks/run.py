#!/usr/bin/env python
"""Kernel timings: segops vs its pure-PyTorch reference vs peers (torchvision), one table.

Usage (from the repository root)::

    python benchmarks/run.py                      # full sizes, cuda if available else cpu
    python benchmarks/run.py --quick              # tiny sizes, CI smoke test (< 30 s on 2 cores)
    python benchmarks/run.py --device cpu --threads 1 --filter roi_align
    python benchmarks/run.py --deterministic --markdown benchmarks/RESULTS.md --json out.json
    python benchmarks/run.py --list               # show the registered cases

Every row is the median wall time of one call (``torch.utils.benchmark``, which synchronises
CUDA), and ``ratio`` is ``impl_time / segops_time`` for the same case: above 1 means segops is
faster. Case names say what is timed: ``fwd`` is the forward call; ``bwd-only`` is
``torch.autograd.grad(out, input, grad, retain_graph=True)`` on a forward computed once
beforehand (the forward is not in the timing). ``calls`` is how many calls the median is
over. Outputs (or gradients) of every implementation are compared with segops' (integer
outputs, and every output of an ``exact`` case such as NMS indices, must be equal) and any
mismatch is printed as a note under the table.

The pure-PyTorch reference loops in Python (over RoIs, over kept boxes): a call over 2 s is
timed once, and by default at full sizes only forward cases time it (``--reference all``:
its RoI backward takes minutes per call on CPU). ``--deterministic`` adds
``segops-deterministic`` rows to backward cases: the same backward under
``torch.use_deterministic_algorithms(True)``. ``segops-padded`` rows time the sync-free
(fixed-size, padded) form of an op where it has one.

The cases live in ``benchmarks/cases/``, one module per op family (``roi.py``, ``nms.py``),
with the registry (``registry.py``) and shared input builders (``inputs.py``). Adding a
family: a module whose ``register_cases()`` calls ``register(...)`` per case, listed in
``cases/__init__.py``; each case's ``setup(ctx)`` builds its inputs and returns
``{impl_name: zero-arg callable}`` (or a ``Fn`` for per-impl options). The runner does the
rest: timing, ratios, cross-checking outputs against segops, the table, JSON and Markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.utils.benchmark as tbench

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
if BENCH_DIR not in sys.path:  # imported rather than run as a script
    sys.path.insert(0, BENCH_DIR)

# The case registry and every family's cases (benchmarks/cases/); re-exported from here.
from cases import CASES, Case, Ctx, Fn, register, resolve_names  # noqa: E402,F401
from cases.registry import compare, count_differences, shapes, tolerance  # noqa: E402

# Fixed order of implementations within a case; unknown names sort after these.
IMPL_ORDER = ("segops", "segops-padded", "segops-deterministic", "torchvision", "reference")
# Implementations that belong to this project: their failure fails the run (exit code 1).
OWN_IMPLS = ("segops", "segops-padded", "segops-deterministic", "reference")


# --------------------------------------------------------------------------------------
# Imports of the things being timed
# --------------------------------------------------------------------------------------


def _import_segops():
    """Import segops: an installed one first, else the working tree this script lives in."""
    try:
        import segops  # noqa: F401
    except ImportError:
        if REPO_ROOT not in sys.path:
            sys.path.insert(0, REPO_ROOT)
        import segops  # noqa: F401
    import segops.reference  # noqa: F401

    return segops


def _import_torchvision():
    try:
        import torchvision  # noqa: F401
        import torchvision.ops  # noqa: F401
    except Exception:  # ImportError, or a torchvision built against another torch
        return None
    return torchvision


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _deterministic(mode: Optional[bool]):
    if mode is None:
        yield
        return
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(mode)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def warm_up_torch() -> None:
    """Pay torch's one-time costs before anything is timed: the first
    ``torch.autograd.grad`` with explicit grad_outputs imports
    ``torch.fx.experimental.symbolic_shapes`` (~1 s), which would land in the first
    ``bwd-only`` sample (a single-call one with --quick)."""
    x = torch.ones(1, requires_grad=True)
    torch.autograd.grad(x * 2, x, torch.ones(1))


SINGLE_CALL_S = 2.0  # a first call this slow is not repeated (0.1 s with --quick)


@dataclasses.dataclass
class Timing:
    median_s: float
    calls: int  # calls timed (warm-up excluded unless it is the only sample)
    output: Any = None


def measure(fn: Callable[[], Any], device: torch.device, min_run_time: float,
            single_call_s: float = SINGLE_CALL_S) -> Timing:
    """Median seconds per call of ``fn``, and how many calls were timed.

    Warm-up first: one call (its output is kept for cross-checking), then, unless that took
    over ``single_call_s`` seconds, a second one, which estimates the cost of a call. Fast
    calls then go through ``Timer.blocked_autorange(min_run_time)``; calls slower than a
    third of ``min_run_time`` are timed one call per run, as many runs as fit in
    ``min_run_time`` (at least one, at most 10; the second warm-up call is the first of
    them). A call over ``single_call_s`` seconds (and over ``min_run_time``) is not
    repeated: the first call is the one sample.
    """

    def timed_call():
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        return time.perf_counter() - t0, out

    first, output = timed_call()
    if first >= max(min_run_time, single_call_s):
        return Timing(first, 1, output)  # too slow to repeat: the warm-up is the sample
    second = timed_call()[0]
    estimate = min(first, second)

    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    if estimate * 3 <= min_run_time:
        m = timer.blocked_autorange(min_run_time=min_run_time)
        return Timing(m.median, len(m.times) * m.number_per_run, output)
    # Slow: the second call counts as the first sample, then one call per run.
    runs = max(1, min(10, int(min_run_time / estimate)))
    times = [second] + [timer.timeit(1).median for _ in range(runs - 1)]
    return Timing(statistics.median(times), runs, output)


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------

COLUMNS = ("op", "case", "impl", "median (ms)", "ratio to segops", "calls")


def _fmt_ms(ms: Optional[float]) -> str:
    if ms is None:
        return "error"
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def _fmt_ratio(r: Optional[float]) -> str:
    if r is None:
        return "-"
    return f"{r:.1f}" if r >= 100 else f"{r:.2f}"


def _table_cells(rows: List[Dict[str, Any]]) -> List[List[str]]:
    return [
        [
            r["op"], r["case"], r["impl"], _fmt_ms(r["median_ms"]), _fmt_ratio(r["ratio"]),
            str(r["calls"]) if r["calls"] else "-",
        ]
        for r in rows
    ]


def format_text_table(rows: List[Dict[str, Any]]) -> str:
    cells = _table_cells(rows)
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(COLUMNS)]
    numeric = (False, False, False, True, True, True)

    def line(vals):
        return "  ".join(
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, widths, numeric)
        ).rstrip()

    out = [line(COLUMNS), line(["-" * w for w in widths])]
    prev_case = None
    for r, c in zip(rows, cells):
        key = (r["op"], r["case"])
        if prev_case is not None and key != prev_case and r["op"] != prev_case[0]:
            out.append("")
        prev_case = key
        out.append(line(c))
    return "\n".join(out)


def format_markdown(rows: List[Dict[str, Any]], header: Dict[str, Any], notes: List[str]) -> str:
    commit = header["segops_commit"] or "unknown"
    if header.get("segops_dirty"):
        commit += " (+ uncommitted changes)"
    tv = header["torchvision_version"]
    lines = [
        f"### {header['device_name']} ({header['device']}), {header['date']}",
        "",
        f"- torch {header['torch_version']}" + (f", torchvision {tv}" if tv else "")
        + f", Python {header['python_version']}",
        f"- segops commit {commit}",
        f"- dtype {header['dtype']}, threads {header['threads']}, "
        f"{'quick' if header['quick'] else 'full'} sizes"
        + (", filter `" + header["filter"] + "`" if header["filter"] else "")
        + {"all": "", "fwd": ", reference timed on forward cases only",
           "none": ", reference not timed"}[header["reference"]],
        "- median of one call; ratio = impl time / segops time (> 1: segops is faster); "
        "`bwd-only` times `autograd.grad` on a precomputed forward",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * 3) + "|",
    ]
    for c in _table_cells(rows):
        lines.append("| " + " | ".join(v.replace("|", "\\|") for v in c) + " |")
    if notes:
        lines.append("")
        lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines) + "\n"


def _git(*args) -> Optional[str]:
    try:
        res = subprocess.run(
            ["git", "-C", REPO_ROOT, *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def make_header(args, device: torch.device, tv) -> Dict[str, Any]:
    commit = _git("rev-parse", "--short", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torchvision_version": getattr(tv, "__version__", None) if tv is not None else None,
        "python_version": platform.python_version(),
        "device": str(device),
        "device_name": _device_name(device),
        "segops_commit": commit,
        "segops_dirty": bool(status) if status is not None else None,
        "threads": torch.get_num_threads(),
        "dtype": str(args.dtype).replace("torch.", ""),
        "quick": args.quick,
        "filter": args.filter,
        "reference": args.reference,
        "cpu_count": os.cpu_count(),
    }


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def parse_args(argv=None):
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    p = argparse.ArgumentParser(
        description="Time segops ops against the pure-PyTorch reference and peers.",
        epilog="ratio = impl median / segops median for the same case (> 1: segops is faster).",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default=default_device,
                   help=f"device to time on (default: {default_device})")
    p.add_argument("--dtype", choices=tuple(_DTYPES), default="float32",
                   help="floating dtype of features and boxes (default: float32)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes and short timing: a smoke test (CI)")
    p.add_argument("--filter", default=None, metavar="SUBSTR",
                   help="only cases whose 'op case' contains SUBSTR; comma-separated "
                        "SUBSTRs select the union (e.g. 'roi_align,roi_pool P4')")
    p.add_argument("--impls", default=None, metavar="LIST",
                   help="comma-separated implementations to time (default: all available: "
                        + ", ".join(IMPL_ORDER) + ")")
    p.add_argument("--reference", choices=("all", "fwd", "none"), default=None,
                   help="which cases time the pure-PyTorch reference: all, forward cases only, "
                        "or none (default: all with --quick, else fwd: at full sizes its "
                        "backward takes minutes per call on CPU)")
    p.add_argument("--deterministic", action="store_true",
                   help="also time segops backward with torch.use_deterministic_algorithms(True) "
                        "(impl 'segops-deterministic'; 'segops' rows then run with it False)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch.set_num_threads(N) for the whole run (CPU scaling reports)")
    p.add_argument("--min-run-time", type=float, default=None, metavar="S",
                   help="seconds of timing per impl and case (default 1.0; 0.05 with --quick)")
    p.add_argument("--ref-min-run-time", type=float, default=None, metavar="S",
                   help="the same for the slow reference (default 0.2; 0.02 with --quick)")
    p.add_argument("--json", default=None, metavar="PATH", help="write header + rows as JSON")
    p.add_argument("--markdown", default=None, metavar="PATH",
                   help="write the table as Markdown (for benchmarks/RESULTS.md)")
    p.add_argument("--list", action="store_true", help="list the selected cases and exit")
    args = p.parse_args(argv)
    args.dtype = _DTYPES[args.dtype]
    if args.min_run_time is None:
        args.min_run_time = 0.05 if args.quick else 1.0
    if args.reference is None:
        args.reference = "all" if args.quick else "fwd"
    if args.ref_min_run_time is None:
        args.ref_min_run_time = 0.02 if args.quick else 0.2
    return args


def select_cases(cases: List[Case], pattern: Optional[str]) -> List[Case]:
    if not pattern:
        return list(cases)
    subs = [s.strip() for s in pattern.split(",") if s.strip()]
    return [c for c in cases if any(s in c.key for s in subs)]


def _impl_rank(name: str) -> int:
    return IMPL_ORDER.index(name) if name in IMPL_ORDER else len(IMPL_ORDER)


def run_case(case: Case, ctx: Ctx, args) -> tuple:
    """Time every implementation of one case; return (rows, notes)."""
    rows: List[Dict[str, Any]] = []
    notes: List[str] = []
    base = {"op": case.op, "case": case.name, "backward": case.backward, "params": case.params}
    if "reference" in ctx.impls and (
        args.reference == "none" or (args.reference == "fwd" and case.backward)
    ):
        ctx = dataclasses.replace(ctx, impls=[i for i in ctx.impls if i != "reference"])
    try:
        impls = case.setup(ctx)
    except Exception as e:  # noqa: BLE001 - report and keep going
        notes.append(f"{case.key}: setup failed: {type(e).__name__}: {e}")
        rows.append({**base, "impl": "segops", "median_ms": None, "ratio": None, "calls": 0,
                     "error": f"setup: {type(e).__name__}: {e}"})
        return rows, notes

    timings: Dict[str, Timing] = {}
    for name in sorted(impls, key=_impl_rank):
        spec = impls.pop(name)  # drop each implementation's state once it has been timed
        fn = spec if isinstance(spec, Fn) else Fn(call=spec)
        mrt = args.ref_min_run_time if name == "reference" else args.min_run_time
        row = {**base, "impl": name, "median_ms": None, "ratio": None, "calls": 0}
        try:
            call = fn.prepare() if fn.prepare is not None else fn.call
            with _deterministic(fn.deterministic):
                t = measure(call, ctx.device, mrt, 0.1 if ctx.quick else SINGLE_CALL_S)
            del call
            if fn.output is not None:
                t.output = fn.output(t.output)
            timings[name] = t
            row["median_ms"] = t.median_s * 1e3
            row["calls"] = t.calls
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            notes.append(f"{case.key} [{name}]: {row['error']}")
        rows.append(row)
        shown = row.get("error") or f"{_fmt_ms(row['median_ms'])} ms ({row['calls']} calls)"
        print(f"  {case.key} [{name}]: {shown}", file=sys.stderr, flush=True)

    seg = timings.get("segops")
    tol = tolerance(case, ctx.dtype)
    for row in rows:
        t = timings.get(row["impl"])
        if seg is None or t is None:
            continue
        row["ratio"] = t.median_s / seg.median_s
        if row["impl"] != "segops":
            diff = compare(t.output, seg.output)
            finite = diff is None or math.isfinite(diff)
            row["max_rel_diff_vs_segops"] = diff if finite else str(diff)  # JSON has no inf
            if diff is None:
                notes.append(f"{case.key} [{row['impl']}]: output not comparable with segops "
                             f"(shapes {shapes(t.output)} vs {shapes(seg.output)})")
            elif case.exact and diff != 0:
                notes.append(f"{case.key} [{row['impl']}]: differs from segops (exact case: "
                             f"{count_differences(t.output, seg.output)})")
            elif not diff <= tol:
                notes.append(f"{case.key} [{row['impl']}]: differs from segops, "
                             f"max |diff| / max(1, max|out|) = {diff:.3g} > {tol:g}")
    return rows, notes


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2

    segops = _import_segops()
    tv = _import_torchvision()
    available = ["segops", "segops-padded", "reference"] + (["torchvision"] if tv else [])
    if args.deterministic:
        available.append("segops-deterministic")
    if args.impls:
        wanted = [s.strip() for s in args.impls.split(",") if s.strip()]
        unknown = [w for w in wanted if w not in IMPL_ORDER]
        if unknown:
            print(f"error: unknown impl(s) {unknown}; known: {list(IMPL_ORDER)}",
                  file=sys.stderr)
            return 2
        impls = [w for w in wanted if w in available]
        if "segops-deterministic" in wanted:
            args.deterministic = True
            if "segops" not in impls:  # it is built from the segops backward
                impls.append("segops")
    else:
        impls = available
    ctx = Ctx(device=device, dtype=args.dtype, quick=args.quick,
              deterministic=args.deterministic, impls=impls, segops=segops, torchvision=tv)
    cases = select_cases(resolve_names(CASES, ctx), args.filter)
    if args.list:
        for c in cases:
            print(c.key)
        return 0
    if not cases:
        print(f"error: no case matches --filter {args.filter!r}; try --list", file=sys.stderr)
        return 2

    header = make_header(args, device, tv)
    print(f"segops benchmarks: {header['device_name']} ({device}), torch {torch.__version__}, "
          f"{header['dtype']}, {header['threads']} threads, "
          f"impls {', '.join(sorted(impls, key=_impl_rank))}, {len(cases)} cases",
          file=sys.stderr, flush=True)

    warm_up_torch()
    t_start = time.perf_counter()
    rows: List[Dict[str, Any]] = []
    notes: List[str] = []
    for case in cases:
        r, n = run_case(case, ctx, args)
        rows.extend(r)
        notes.extend(n)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    header["elapsed_s"] = round(time.perf_counter() - t_start, 2)

    print(format_text_table(rows))
    for n in notes:
        print(f"note: {n}")
    print(f"({len(rows)} rows in {header['elapsed_s']:.1f} s; ratio = impl / segops, "
          f"> 1 means segops is faster)")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "rows": rows, "notes": notes}, f, indent=2)
            f.write("\n")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(format_markdown(rows, header, notes))

    failed = [r for r in rows if r.get("error") and r["impl"] in OWN_IMPLS]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
