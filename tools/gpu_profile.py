"""GPU measurements that benchmarks/run.py does not make, for tools/gpu_check.sh.

    python tools/gpu_profile.py profile [--quick] [--filter S] [--json FILE]
    python tools/gpu_profile.py graphs  [--quick] [--filter S] [--json FILE]

Both run the segops rows of the benchmark cases (benchmarks/cases: every family's ops at
the benchmark sizes, ``--quick`` for the small ones).

``profile``: per op call, under torch.profiler: the kernels launched (count, names) and
their GPU time, the call's wall time, achieved bandwidth (the op's inputs + outputs, the
least it must move, over its GPU time) against ``--peak-gbs`` (3000: H100's ~3.35 TB/s,
rounded down), and the peak memory the call adds (torch.cuda.max_memory_allocated above
what was allocated before it). Compare with docs/cost_model/.

``graphs``: every op call that a sync-free row makes (the ``segops-padded`` rows, and the
``segops`` rows of ops with no exact-size form; forward and backward) is run again on its
own under ``torch.cuda.set_sync_debug_mode("error")`` (any host synchronisation raises),
then captured in a CUDA graph and replayed; the replay must give the eager result (bit for
bit, except the float-atomic backward paths: within tolerance).

On a CPU the same code runs (``--device cpu``: no CUDA kernels, no graphs) as a smoke test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tools" / "cuda_emu"))

from cost_table import deterministic, segops_rows  # noqa: E402

EXACT_BY_DEFAULT = {"nms", "batched_nms", "fast_nms", "cluster_seeds", "boundary_patches"}
ATOMIC_BACKWARD = {"_roi_align_backward", "_roi_pool_backward", "_multilevel_roi_align_backward"}


class Recorder(TorchDispatchMode):
    """Records every torch.ops.segops call (forward and backward) with its arguments."""

    def __init__(self):
        super().__init__()
        self.calls: List[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.namespace == "segops":
            self.calls.append((func, args, kwargs))
        return out


def tensor_bytes(x) -> int:
    leaves, _ = tree_flatten(x)
    return sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------- profile


def profile_call(func, args, kwargs, device, reps: int) -> Dict[str, Any]:
    """One op call: kernels, GPU time, wall time, bytes, peak memory."""
    from torch.profiler import ProfilerActivity, profile

    func(*args, **kwargs)  # warm-up (allocator, lazy init)
    sync(device)
    walls = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = func(*args, **kwargs)
        sync(device)
        walls.append(time.perf_counter() - t0)
    peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = func(*args, **kwargs)
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) - before
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        func(*args, **kwargs)
        sync(device)
    kernels: Dict[str, List[float]] = {}  # GPU activity (kernels, memsets, copies): us each
    for e in prof.events():
        if str(getattr(e, "device_type", "")).endswith("CUDA"):
            kernels.setdefault(e.name, []).append(e.time_range.elapsed_us())
    gpu_us = sum(sum(v) for v in kernels.values())
    moved = tensor_bytes((args, kwargs)) + tensor_bytes(out)
    return {
        "op": func._opname,
        "kernels": sum(len(v) for v in kernels.values()),
        "kernel_us": {k: round(sum(v), 1) for k, v in sorted(kernels.items(),
                                                                key=lambda kv: -sum(kv[1]))},
        "gpu_us": round(gpu_us, 1),
        "wall_us": round(statistics.median(walls) * 1e6, 1),
        "in_out_bytes": moved,
        "peak_bytes": peak,
    }


def op_calls(args, sync_free_only: bool = False):
    """(case, impl, func, args, kwargs) of every segops op call the rows make, each yielded
    under its row's deterministic setting."""
    device = torch.device(args.device)
    for case, impl, fn in segops_rows(device, args.quick, args.filter):
        if sync_free_only and impl == "segops" and case.op in EXACT_BY_DEFAULT:
            continue  # the exact-size form reads its count back, as documented
        call = fn.prepare() if fn.prepare is not None else fn.call
        rec = Recorder()
        with deterministic(fn.deterministic):
            with rec:
                call()
            sync(device)
            for func, a, k in rec.calls:
                yield case, impl, func, a, k
        del call


def cmd_profile(args) -> List[Dict[str, Any]]:
    device = torch.device(args.device)
    out = []
    for case, impl, func, a, k in op_calls(args):
        r = profile_call(func, a, k, device, args.reps)
        r.update(case=case.key, impl=impl)
        if r["gpu_us"]:
            r["achieved_gbs"] = round(r["in_out_bytes"] / (r["gpu_us"] * 1e3), 1)
            r["of_peak"] = round(r["achieved_gbs"] / args.peak_gbs, 3)
        out.append(r)
        kern = ", ".join(f"{n} {v}" for n, v in list(r["kernel_us"].items())[:4])
        print(f"{case.key} [{impl}] {r['op']}: {r['kernels']} kernels, {r['gpu_us']} us GPU, "
              f"{r['wall_us']} us wall, {r.get('achieved_gbs', '-')} GB/s, "
              f"peak +{r['peak_bytes']} B; {kern}", flush=True)
    return out


# ---------------------------------------------------------------------------- graphs


def same(op: str, a, b) -> bool:
    fa, _ = tree_flatten(a)
    fb, _ = tree_flatten(b)
    for x, y in zip(fa, fb):
        if not isinstance(x, torch.Tensor):
            if x != y:
                return False
            continue
        if op in ATOMIC_BACKWARD and x.is_floating_point() and \
                not torch.are_deterministic_algorithms_enabled():
            if not torch.allclose(x, y, rtol=1e-4, atol=1e-5, equal_nan=True):
                return False
        elif x.is_floating_point():
            if not torch.equal(x.nan_to_num(0.123), y.nan_to_num(0.123)):
                return False
        elif not torch.equal(x, y):
            return False
    return len(fa) == len(fb)


def graph_check(func, args, kwargs, device) -> str:
    """'' when the call is sync-free and its graph replay matches, else what failed."""
    if device.type != "cuda":
        func(*args, **kwargs)
        return ""
    torch.cuda.set_sync_debug_mode("error")
    try:
        eager = func(*args, **kwargs)
    except RuntimeError as e:
        return f"synchronises: {str(e).splitlines()[0]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graphs requires
        func(*args, **kwargs)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            captured = func(*args, **kwargs)
    except Exception as e:  # noqa: BLE001
        return f"capture failed: {type(e).__name__}: {str(e).splitlines()[0]}"
    captured = tree_map(lambda t: t, captured)
    graph.replay()
    sync(device)
    if not same(func._opname, eager, captured):
        return "graph replay differs from the eager result"
    return ""


def cmd_graphs(args) -> List[Dict[str, Any]]:
    device = torch.device(args.device)
    out = []
    for case, impl, func, a, k in op_calls(args, sync_free_only=True):
        problem = graph_check(func, a, k, device)
        out.append({"case": case.key, "impl": impl, "op": func._opname, "ok": problem == "",
                    "problem": problem})
        print(f"{case.key} [{impl}] {func._opname}: {problem or 'sync-free, graph ok'}",
              flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("profile", "graphs"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--filter", action="append", default=[])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--peak-gbs", type=float, default=3000.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    results = cmd_profile(args) if args.command == "profile" else cmd_graphs(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    failed = [r for r in results if r.get("ok") is False]
    for r in failed:
        print(f"FAILED {r['case']} [{r['impl']}] {r['op']}: {r['problem']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
