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
over. Outputs (or gradients) of every implementation are compared with segops' and any
mismatch is printed as a note under the table.

The pure-PyTorch reference loops over RoIs in Python: at full sizes it is timed with a single
call, and only on forward cases unless ``--reference all`` (its backward takes minutes per
call on CPU). ``--deterministic`` adds ``segops-deterministic`` rows to backward cases:
the same backward under ``torch.use_deterministic_algorithms(True)``.

Adding an op family: write a function that registers its cases with ``register(...)`` (see
``_register_roi_cases``); each case's ``setup(ctx)`` builds its inputs and returns
``{impl_name: zero-arg callable}`` (or a ``Fn`` for per-impl options). The runner does the
rest: timing, ratios, cross-checking outputs against segops, the table, JSON and Markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.utils.benchmark as tbench

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Fixed order of implementations within a case; unknown names sort after these.
IMPL_ORDER = ("segops", "segops-deterministic", "torchvision", "reference")
# Implementations that belong to this project: their failure fails the run (exit code 1).
OWN_IMPLS = ("segops", "segops-deterministic", "reference")


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
# Case registry
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Fn:
    """A timed callable plus per-implementation options.

    Give either ``call`` (the zero-arg callable to time) or ``prepare`` (a zero-arg function
    returning it, run just before this implementation is timed and dropped right after: for
    state that is costly to hold, like the autograd graph of a forward pass).
    """

    call: Optional[Callable[[], Any]] = None
    deterministic: Optional[bool] = None  # None: leave torch's setting alone
    prepare: Optional[Callable[[], Callable[[], Any]]] = None


@dataclasses.dataclass
class Ctx:
    """What a case's setup needs to know to build its inputs."""

    device: torch.device
    dtype: torch.dtype
    quick: bool
    deterministic: bool  # add "segops-deterministic" rows where they make sense
    impls: Sequence[str]  # implementations requested (after availability filtering)
    segops: Any
    torchvision: Any  # module or None

    def wants(self, impl: str) -> bool:
        return impl in self.impls


@dataclasses.dataclass(frozen=True)
class Case:
    """One row group of the table. ``name`` may be a function of the Ctx (sizes differ with
    --quick); ``resolve_names`` turns it into a string before anything else looks at it."""

    op: str
    name: Union[str, Callable[[Ctx], str]]
    setup: Callable[[Ctx], Dict[str, Any]]
    backward: bool = False  # times a backward pass (see --reference)
    params: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.op} {self.name}"


CASES: List[Case] = []


def register(op: str, name, setup: Callable[[Ctx], Dict[str, Any]], backward: bool = False,
             **params) -> None:
    CASES.append(Case(op=op, name=name, setup=setup, backward=backward, params=params))


def resolve_names(cases: List[Case], ctx: Ctx) -> List[Case]:
    return [dataclasses.replace(c, name=c.name(ctx)) if callable(c.name) else c for c in cases]


# --------------------------------------------------------------------------------------
# Shared input builders
# --------------------------------------------------------------------------------------


def random_boxes(
    num: int,
    image_hw=(800, 1216),
    size_range=(16.0, 600.0),
    batch_size: int = 1,
    seed: int = 0,
) -> torch.Tensor:
    """Detector-like RoIs as a [num, 5] float64 CPU tensor (batch_index, x1, y1, x2, y2).

    Widths and heights are log-uniform in ``size_range`` pixels (independently), each box lies
    inside the image, and batch indices are spread evenly over ``batch_size`` images.
    """
    g = torch.Generator().manual_seed(seed)
    img_h, img_w = image_hw
    lo, hi = math.log(size_range[0]), math.log(size_range[1])
    w = torch.exp(torch.empty(num, dtype=torch.float64).uniform_(lo, hi, generator=g))
    h = torch.exp(torch.empty(num, dtype=torch.float64).uniform_(lo, hi, generator=g))
    w = w.clamp(max=img_w)
    h = h.clamp(max=img_h)
    x1 = torch.rand(num, dtype=torch.float64, generator=g) * (img_w - w)
    y1 = torch.rand(num, dtype=torch.float64, generator=g) * (img_h - h)
    idx = torch.arange(num, dtype=torch.float64) * batch_size // num
    return torch.stack([idx, x1, y1, x1 + w, y1 + h], dim=1)


def random_features(shape, ctx: Ctx, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float32).to(ctx.device, ctx.dtype)


def backward_only(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, seed: int = 2):
    """Run ``forward`` once on a grad-requiring copy of ``x``; return a callable timing only
    the backward: ``torch.autograd.grad(out, x, grad, retain_graph=True)``. Use it as
    ``Fn(prepare=lambda: backward_only(...))`` so the graph lives only while it is timed."""
    x = x.detach().requires_grad_(True)
    out = forward(x)
    g = torch.Generator().manual_seed(seed)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float32).to(out.device, out.dtype)

    def call():
        return torch.autograd.grad(out, x, grad, retain_graph=True)

    return call


# --------------------------------------------------------------------------------------
# roi family: roi_align, roi_pool
# --------------------------------------------------------------------------------------


def _roi_op_impls(ctx: Ctx, op: str) -> Dict[str, Callable]:
    """{impl name: roi op function} for the requested and importable implementations."""
    fns = {}
    if ctx.wants("segops"):
        fns["segops"] = getattr(ctx.segops, op)
    if ctx.wants("torchvision") and ctx.torchvision is not None:
        fns["torchvision"] = getattr(ctx.torchvision.ops, op)
    if ctx.wants("reference"):
        fns["reference"] = getattr(ctx.segops.reference, op)
    return fns


# FPN levels of an 800x1216 Mask R-CNN input: name -> stride.
_FPN_LEVELS = {"P2": 4, "P4": 16}


def _roi_sizes(ctx: Ctx, level: str) -> Dict[str, Any]:
    """Sizes for one FPN level: full Mask R-CNN sizes, or tiny ones with --quick."""
    stride = _FPN_LEVELS[level]
    if ctx.quick:
        # A quarter-size image: P2 is 50x76, P4 is 13x19; 32 RoIs, 16 channels.
        image_hw, size_range, num_rois, channels = (200, 304), (4.0, 150.0), 32, 16
    else:
        image_hw, size_range, num_rois, channels = (800, 1216), (16.0, 600.0), 1000, 256
    feat_hw = (math.ceil(image_hw[0] / stride), math.ceil(image_hw[1] / stride))
    return dict(shape=(1, channels, *feat_hw), spatial_scale=1.0 / stride, image_hw=image_hw,
                size_range=size_range, num_rois=num_rois)


def _roi_case_name(level: str, out: int, extra: str, pass_: str) -> Callable[[Ctx], str]:
    def name(ctx: Ctx) -> str:
        sz = _roi_sizes(ctx, level)
        _, c, h, w = sz["shape"]
        return f"{level} {h}x{w} C{c} K{sz['num_rois']} out{out}{extra} {pass_}"

    return name


def _make_roi_setup(op: str, level: str, out: int, kwargs: Dict[str, Any], backward: bool):
    def setup(ctx: Ctx) -> Dict[str, Any]:
        sz = _roi_sizes(ctx, level)
        boxes = random_boxes(sz["num_rois"], sz["image_hw"], sz["size_range"])
        boxes = boxes.to(ctx.device, ctx.dtype)
        x = random_features(sz["shape"], ctx)
        scale = sz["spatial_scale"]
        impls: Dict[str, Any] = {}
        for name, fn in _roi_op_impls(ctx, op).items():

            def fwd(inp, fn=fn):
                return fn(inp, boxes, out, spatial_scale=scale, **kwargs)

            if backward:
                prep = functools.partial(backward_only, fwd, x)
                if name == "segops" and ctx.deterministic:
                    impls["segops"] = Fn(prepare=prep, deterministic=False)
                    impls["segops-deterministic"] = Fn(prepare=prep, deterministic=True)
                else:
                    impls[name] = Fn(prepare=prep)
            else:
                impls[name] = lambda fwd=fwd: fwd(x)
        return impls

    return setup


def _register_roi_cases() -> None:
    """Mask R-CNN RoI heads: 1000 RoIs on P2 (1/4) and P4 (1/16) of an 800x1216 image."""
    for level in ("P2", "P4"):
        for out in (7, 14):
            # torchvision style (sampling_ratio=2, aligned=False) and
            # detectron2 style (adaptive sampling_ratio=0, aligned=True).
            for sr, aligned in ((2, False), (0, True)):
                kwargs = dict(sampling_ratio=sr, aligned=aligned)
                extra = f" sr{sr}" + (" aligned" if aligned else "")
                for pass_ in ("fwd", "bwd-only"):
                    register(
                        "roi_align",
                        _roi_case_name(level, out, extra, pass_),
                        _make_roi_setup("roi_align", level, out, kwargs, pass_ != "fwd"),
                        backward=pass_ != "fwd", level=level, output_size=out, **kwargs,
                    )
    for level in ("P2", "P4"):
        register(
            "roi_pool",
            _roi_case_name(level, 7, "", "fwd"),
            _make_roi_setup("roi_pool", level, 7, {}, False),
            level=level, output_size=7,
        )


_register_roi_cases()


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


def _flatten_tensors(x) -> List[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for item in x for t in _flatten_tensors(item)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _flatten_tensors(v)]
    return []


def compare(a, b) -> Optional[float]:
    """Largest |a - b| relative to max(1, max|b|) over matching tensors; None if incomparable."""
    ta, tb = _flatten_tensors(a), _flatten_tensors(b)
    if not ta or len(ta) != len(tb) or any(x.shape != y.shape for x, y in zip(ta, tb)):
        return None
    worst = 0.0
    for x, y in zip(ta, tb):
        if x.numel() == 0:
            continue
        x, y = x.detach().double(), y.detach().double()
        if x.dtype.is_floating_point:
            both_nan = torch.isnan(x) & torch.isnan(y)
            diff = (x - y).abs().masked_fill(both_nan, 0).nan_to_num(nan=math.inf)
            scale = max(1.0, float(y.abs().nan_to_num(nan=0).max()))
            worst = max(worst, float(diff.max()) / scale)
    return worst


def _check_tolerance(dtype: torch.dtype) -> float:
    return {torch.float16: 1e-2, torch.bfloat16: 5e-2, torch.float64: 1e-9}.get(dtype, 1e-3)


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
    tol = _check_tolerance(ctx.dtype)
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
                notes.append(f"{case.key} [{row['impl']}]: output not comparable with segops")
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
    available = ["segops", "reference"] + (["torchvision"] if tv is not None else [])
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
