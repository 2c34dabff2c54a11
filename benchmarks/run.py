#!/usr/bin/env python
"""Kernel timings: segops against its peers (torchvision, YOLACT's chain) and its pure-PyTorch
reference, one table, with each op's distance from its memory floor.

Usage (from the repository root)::

    python benchmarks/run.py                      # full sizes, a few minutes on 2 cores
    python benchmarks/run.py --all                # also the slow pure-PyTorch references
    python benchmarks/run.py --results            # regenerate benchmarks/RESULTS.md + chart
    python benchmarks/run.py --quick              # tiny sizes, CI smoke test (< 1 min)
    python benchmarks/run.py --device cpu --threads 1,2 --filter roi_pool
    python benchmarks/run.py --json out.json --markdown out.md --plot speedups.png
    python benchmarks/run.py --list               # show the registered cases

Timing (``timing.py``): warm-up calls first, never counted; then samples (blocks of calls for
fast ops, one call each for slow ones), reported as their median and interquartile range
(``IQR``), with the number of samples; ``torch.set_num_threads`` is pinned for each
measurement, and ``--threads 1,2`` times every case at each count side by side. A call over
2 s is timed once (no spread), after one untimed call unless that took over 10 s. ``ratio``
is ``impl time / segops time`` for the same case and thread count: above 1 means segops is
faster. Case names say what is timed: ``fwd`` is
the forward call; ``bwd-only`` is ``torch.autograd.grad(out, input, grad,
retain_graph=True)`` on a forward computed once beforehand. Outputs (or gradients) of every
implementation are compared with segops' (integer outputs, and every output of an ``exact``
case such as NMS indices, must be equal) and any mismatch is printed as a note.

Rows: ``segops``; its variants (``segops-padded``: the sync-free padded form;
``segops-deterministic`` with ``--deterministic``: the backward under
``torch.use_deterministic_algorithms(True)``); the peers, ``torchvision`` where it imports
(roi_align, roi_pool, nms, batched_nms, ``MultiScaleRoIAlign``, ``paste_masks_in_image``),
``yolact`` (YOLACT's mask chain, plain PyTorch, always) and ``detectron2`` where it
imports; and ``reference (pure PyTorch)``, segops' executable specification, which loops in
Python: the default run leaves out the references that take seconds a call (``--all``
times them).

Memory floor: each case defines the bytes its op must move at least (inputs read once,
outputs written once; the formula is in the family's module docstring). The run starts by
measuring the copy bandwidth (``Tensor.copy_`` between two large buffers) at each thread
count; ``floor (ms)`` is the bytes over it, ``time / floor`` how far a row is from it.

Progress: a bar with an ETA on a terminal (tqdm); without one (CI logs), or with
``--verbose``, a line per timed row.

The cases live in ``benchmarks/cases/``, one module per op family (``roi.py``, ``nms.py``),
with the registry (``registry.py``) and shared input builders (``inputs.py``). Adding a
family: a module whose ``register_cases()`` calls ``register(...)`` per case, listed in
``cases/__init__.py``; each case's ``setup(ctx)`` builds its inputs and returns
``{impl_name: zero-arg callable}`` (or a ``Fn`` for per-impl options); ``floor=`` gives its
memory floor. The runner does the rest: timing, ratios, cross-checking outputs against
segops, the table, JSON, Markdown and the chart (``report.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import torch
from tqdm import tqdm

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
if BENCH_DIR not in sys.path:  # imported rather than run as a script
    sys.path.insert(0, BENCH_DIR)

# The case registry and every family's cases (benchmarks/cases/); re-exported from here.
from cases import CASES, Case, Ctx, Fn, register, resolve_names  # noqa: E402,F401
from cases.registry import compare, count_differences, shapes, tolerance  # noqa: E402
from report import (fmt_ms, format_markdown, format_text_table, kept_notes_of,  # noqa: E402
                    plot_speedups)
from machine import make_header  # noqa: E402
from timing import REPEAT_CAP_S, SINGLE_CALL_S, Timing, copy_bandwidth, measure, num_threads  # noqa: E402

# Fixed order of implementations within a case; unknown names sort after these.
IMPL_ORDER = ("segops", "segops-padded", "segops-deterministic", "torchvision", "yolact",
              "detectron2", "reference")
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
# Header facts
# --------------------------------------------------------------------------------------


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
    ``torch.fx.experimental.symbolic_shapes`` (~1 s)."""
    x = torch.ones(1, requires_grad=True)
    torch.autograd.grad(x * 2, x, torch.ones(1))


# --------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

RESULTS_ARGS = ["--device", "cpu", "--all", "--threads", "1,2",
                "--markdown", "benchmarks/RESULTS.md", "--plot", "benchmarks/results.png"]


def _thread_list(text: str) -> List[int]:
    try:
        out = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected thread counts like 1,2; got {text!r}")
    return out


def parse_args(argv=None):
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    p = argparse.ArgumentParser(
        description="Time segops ops against their peers (torchvision, YOLACT's chain) and "
                    "the pure-PyTorch reference.",
        epilog="ratio = impl median / segops median for the same case and thread count "
               "(> 1: segops is faster).")
    p.add_argument("--device", choices=("cpu", "cuda"), default=default_device,
                   help=f"device to time on (default: {default_device})")
    p.add_argument("--dtype", choices=tuple(_DTYPES), default="float32",
                   help="floating dtype of features and boxes (default: float32)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes and short timing: a smoke test (CI)")
    p.add_argument("--all", action="store_true",
                   help="the record: time everything, the slow pure-PyTorch references "
                        "included (--reference all), with more samples (5, 0.5 s); the "
                        "default run leaves those references out")
    p.add_argument("--results", action="store_true",
                   help="regenerate benchmarks/RESULTS.md and benchmarks/results.png: "
                        "the same as " + " ".join(RESULTS_ARGS))
    p.add_argument("--filter", default=None, metavar="SUBSTR",
                   help="only cases whose 'op case' contains SUBSTR; comma-separated "
                        "SUBSTRs select the union (e.g. 'roi_align,roi_pool P4')")
    p.add_argument("--impls", default=None, metavar="LIST",
                   help="comma-separated implementations to time (default: all available: "
                        + ", ".join(IMPL_ORDER) + ")")
    p.add_argument("--reference", choices=("all", "fast", "none"), default=None,
                   help="which cases time the pure-PyTorch reference: all; fast, those whose "
                        "reference takes well under seconds a call (default; all with "
                        "--quick or --all); none")
    p.add_argument("--deterministic", action="store_true",
                   help="also time segops backward with torch.use_deterministic_algorithms(True) "
                        "(impl 'segops-deterministic'; 'segops' rows then run with it False)")
    p.add_argument("--threads", type=_thread_list, default=None, metavar="N[,N...]",
                   help="torch.set_num_threads(N) for each measurement; several counts time "
                        "every case at each, side by side (default: torch's current count; "
                        "1 with --quick)")
    p.add_argument("--min-run-time", type=float, default=None, metavar="S",
                   help="seconds of samples per impl, case and thread count (default 0.3; "
                        "0.5 with --all, 0.05 with --quick)")
    p.add_argument("--ref-min-run-time", type=float, default=None, metavar="S",
                   help="the same for the reference (default 0.2; 0.02 with --quick)")
    p.add_argument("--min-samples", type=int, default=None, metavar="N",
                   help="samples at least (default 3, 5 with --all); fast calls get about 30 "
                        "blocks of calls in --min-run-time")
    p.add_argument("--json", default=None, metavar="PATH", help="write header + rows as JSON")
    p.add_argument("--markdown", default=None, metavar="PATH",
                   help="write the report as Markdown (RESULTS.md); the part of an existing "
                        "file after its notes marker is kept")
    p.add_argument("--plot", default=None, metavar="PATH",
                   help="write a PNG chart of segops' speedup against each implementation")
    p.add_argument("--verbose", action="store_true",
                   help="a line per timed row on stderr (the default without a terminal)")
    p.add_argument("--list", action="store_true", help="list the selected cases and exit")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if args.results:
        args = p.parse_args(RESULTS_ARGS + [a for a in argv if a != "--results"])
        args.results = True
    args.argv = argv
    args.dtype = _DTYPES[args.dtype]
    if args.threads is None:  # --quick: one thread, a smoke test unhurt by a busy machine
        args.threads = [1] if args.quick else [torch.get_num_threads()]
    # The default run is a quick look (a few minutes on 2 cores); --all is the record.
    if args.min_run_time is None:
        args.min_run_time = 0.05 if args.quick else (0.5 if args.all else 0.3)
    if args.reference is None:
        args.reference = "all" if (args.quick or args.all) else "fast"
    if args.ref_min_run_time is None:
        args.ref_min_run_time = 0.02 if args.quick else 0.2
    if args.min_samples is None:
        args.min_samples = 5 if args.all else 3
    args.single_call_s = 0.1 if args.quick else SINGLE_CALL_S
    args.repeat_cap_s = REPEAT_CAP_S
    return args


def select_cases(cases: List[Case], pattern: Optional[str]) -> List[Case]:
    if not pattern:
        return list(cases)
    subs = [s.strip() for s in pattern.split(",") if s.strip()]
    return [c for c in cases if any(s in c.key for s in subs)]


def _impl_rank(name: str) -> int:
    return IMPL_ORDER.index(name) if name in IMPL_ORDER else len(IMPL_ORDER)


def impl_kind(name: str) -> str:
    if name == "segops":
        return "segops"
    if name.startswith("segops-"):
        return "variant"
    return "reference" if name == "reference" else "peer"


# --------------------------------------------------------------------------------------
# Running a case
# --------------------------------------------------------------------------------------


def _cross_check(case: Case, ctx: Ctx, rows, timings, notes) -> None:
    """Ratios to segops, and every output compared with segops' (notes on mismatches)."""
    seg = timings.get("segops")
    tol = tolerance(case, ctx.dtype)
    for row in rows:
        t = timings.get(row["impl"])
        if seg is None or t is None:
            continue
        row["ratio"] = t.median_s / seg.median_s
        if row["impl"] == "segops":
            continue
        diff = compare(t.output, seg.output)
        finite = diff is None or math.isfinite(diff)
        row["max_rel_diff_vs_segops"] = diff if finite else str(diff)  # JSON has no inf
        where = f"{case.key} [{row['impl']}, {row['threads']} threads]"
        if diff is None:
            notes.append(f"{where}: output not comparable with segops "
                         f"(shapes {shapes(t.output)} vs {shapes(seg.output)})")
        elif case.exact and diff != 0:
            notes.append(f"{where}: differs from segops (exact case: "
                         f"{count_differences(t.output, seg.output)})")
        elif not diff <= tol:
            notes.append(f"{where}: differs from segops, "
                         f"max |diff| / max(1, max|out|) = {diff:.3g} > {tol:g}")


def run_case(case: Case, ctx: Ctx, args, bandwidth: Dict[int, Dict[str, float]],
             log: Callable[[str], None], progress: Callable[[], None] = lambda: None) -> tuple:
    """Time every implementation of one case at every thread count; return (rows, notes).
    ``progress()`` is called after each thread count."""
    rows: List[Dict[str, Any]] = []
    notes: List[str] = []
    base = {"op": case.op, "case": case.name, "backward": case.backward, "params": case.params}
    if "reference" in ctx.impls and (
        args.reference == "none" or (args.reference == "fast" and case.slow_reference)
    ):
        ctx = dataclasses.replace(ctx, impls=[i for i in ctx.impls if i != "reference"])
    try:
        impls = case.setup(ctx)
    except Exception as e:  # noqa: BLE001 - report and keep going
        notes.append(f"{case.key}: setup failed: {type(e).__name__}: {e}")
        for t in args.threads:
            rows.append({**base, "impl": "segops", "kind": "segops", "threads": t,
                         "median_ms": None, "iqr_ms": None, "ratio": None, "samples": 0,
                         "calls": 0, "error": f"setup: {type(e).__name__}: {e}"})
            progress()
        return rows, notes

    names = sorted(impls, key=_impl_rank)
    floor_bytes: Optional[int] = None
    for ti, threads in enumerate(args.threads):
        t_rows: List[Dict[str, Any]] = []
        timings: Dict[str, Timing] = {}
        with num_threads(threads):
            for name in names:
                spec = impls[name]
                if ti == len(args.threads) - 1:
                    del impls[name]  # drop each implementation's state once it is done
                fn = spec if isinstance(spec, Fn) else Fn(call=spec)
                ref = name == "reference"
                row = {**base, "impl": name, "kind": impl_kind(name), "threads": threads,
                       "median_ms": None, "iqr_ms": None, "ratio": None, "samples": 0,
                       "calls": 0}
                try:
                    call = fn.prepare() if fn.prepare is not None else fn.call
                    with _deterministic(fn.deterministic):
                        t = measure(call, ctx.device,
                                    args.ref_min_run_time if ref else args.min_run_time,
                                    single_call_s=args.single_call_s,
                                    repeat_cap_s=args.repeat_cap_s,
                                    min_samples=3 if ref else args.min_samples)
                    del call
                    if name == "segops" and case.floor is not None and floor_bytes is None:
                        floor_bytes = int(case.floor(ctx, t.output))
                    if fn.output is not None:
                        t.output = fn.output(t.output)
                    timings[name] = t
                    row.update(median_ms=t.median_s * 1e3, iqr_ms=t.iqr_s * 1e3,
                               samples=t.samples, calls=t.calls)
                except Exception as e:  # noqa: BLE001
                    row["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                    notes.append(f"{case.key} [{name}, {threads} threads]: {row['error']}")
                t_rows.append(row)
                shown = row.get("error") or (
                    f"{fmt_ms(row['median_ms'])} ms (IQR {fmt_ms(row['iqr_ms'])}, "
                    f"{row['samples']} samples)")
                log(f"  {case.key} [{name}, {threads} thr]: {shown}")
        _cross_check(case, ctx, t_rows, timings, notes)
        timings.clear()  # outputs can be GBs (paste_masks to 4000x8000)
        if floor_bytes is not None:
            floor_ms = floor_bytes / bandwidth[threads]["bytes_per_s"] * 1e3
            for row in t_rows:
                row["floor_bytes"] = floor_bytes
                row["floor_ms"] = floor_ms
                if row["median_ms"] is not None:
                    row["x_floor"] = row["median_ms"] / floor_ms
        rows.extend(t_rows)
        gc.collect()
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
        progress()
    return rows, notes


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def _available_impls(args, tv) -> List[str]:
    available = ["segops", "segops-padded", "reference", "yolact"]
    if tv:
        available += ["torchvision", "detectron2"]  # detectron2 rows appear where it imports
    if args.deterministic:
        available.append("segops-deterministic")
    return available


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2

    segops = _import_segops()
    tv = _import_torchvision()
    available = _available_impls(args, tv)
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

    header = make_header(args, device, tv, args.argv)
    print(f"segops benchmarks: {header['device_name']} ({device}), torch {torch.__version__}"
          + (f", torchvision {header['torchvision_version']}" if tv else "")
          + f", {header['dtype']}, threads {','.join(map(str, args.threads))}, "
          f"impls {', '.join(sorted(impls, key=_impl_rank))}, {len(cases)} cases",
          file=sys.stderr, flush=True)

    warm_up_torch()
    buffer = (64 << 20) if args.quick else (256 << 20)
    bandwidth = {}
    for t in args.threads:
        with num_threads(t):
            bandwidth[t] = copy_bandwidth(device, buffer)
    header["bandwidth"] = {str(t): b for t, b in bandwidth.items()}
    header["bandwidth_buffer_mb"] = buffer >> 20
    print("copy bandwidth: " + ", ".join(f"{t} thr {b['bytes_per_s'] / 1e9:.1f} GB/s"
                                         for t, b in bandwidth.items()),
          file=sys.stderr, flush=True)

    bar = tqdm(total=len(cases) * len(args.threads), unit="step", file=sys.stderr,
               dynamic_ncols=True, disable=not sys.stderr.isatty(),
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}] {postfix}")
    verbose = args.verbose or bar.disable

    def log(line: str) -> None:
        if verbose:
            if bar.disable:
                print(line, file=sys.stderr, flush=True)
            else:
                bar.write(line, file=sys.stderr)

    t_start = time.perf_counter()
    rows: List[Dict[str, Any]] = []
    notes: List[str] = []
    with bar:
        for case in cases:
            bar.set_postfix_str(case.key[:60], refresh=True)
            r, n = run_case(case, ctx, args, bandwidth, log, progress=lambda: bar.update(1))
            rows.extend(r)
            notes.extend(n)
    header["elapsed_s"] = round(time.perf_counter() - t_start, 2)

    print(format_text_table(rows))
    for n in notes:
        print(f"note: {n}")
    print(f"({len(rows)} rows in {header['elapsed_s']:.1f} s; ratio = impl / segops, "
          f"> 1 means segops is faster; time / floor: the median over the memory floor)")

    if args.plot:
        plot_speedups(rows, args.plot, f"segops speedups, {header['device_name']} "
                                       f"({header['date'][:10]})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "rows": rows, "notes": notes}, f, indent=2)
            f.write("\n")
    if args.markdown:
        kept = kept_notes_of(args.markdown)
        with open(args.markdown, "w") as f:
            f.write(format_markdown(rows, header, notes, plot_path=args.plot,
                                    markdown_path=args.markdown, kept_notes=kept))

    failed = [r for r in rows if r.get("error") and r["impl"] in OWN_IMPLS]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
