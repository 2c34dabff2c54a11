"""Per-op GPU costs at the benchmark sizes, counted on the CPU emulator: kernel launches,
ATen calls (and those that launch kernels, and sorts), host synchronisations, and peak
memory, for every segops implementation row of every case in benchmarks/cases.

    python tools/cuda_emu/cost_table.py [--quick] [--run] [--filter nms] [--markdown FILE]

The emulator is set up as an H100 for this (gpu_settings: greedy NMS's 2**24-word mask
budget, 132 multiprocessors), so that launch counts and scratch are a GPU's. By default the
kernels do not run (``set_dry_run``: launches are checked and counted, the
glue's allocations and ATen calls happen as they would), so that the full benchmark sizes
take seconds; ``--run`` runs them too (minutes at full size). Backward cases measure the
backward op only (their forward runs on the CPU first). See tools/cuda_emu/costs.py for
what each column counts.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "benchmarks"))

import build  # noqa: E402
import costs  # noqa: E402

IMPLS = ("segops", "segops-padded", "segops-deterministic")


def gpu_settings(module) -> None:
    """The emulator as a GPU runs the glue: NMS's real mask budget, an H100's 132 SMs."""
    module.set_nms_mask_budget_words(1 << 24)
    module.set_multiprocessors(132)


def emulator_settings(module) -> None:
    """Back to the emulator's test settings (small NMS budget, 4 SMs)."""
    module.set_nms_mask_budget_words(256)
    module.set_multiprocessors(4)


@contextlib.contextmanager
def deterministic(mode):
    """torch.use_deterministic_algorithms(mode) within (None: left alone)."""
    if mode is None:
        yield
        return
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(mode)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev)


def segops_rows(device: torch.device, quick: bool, filters=()):
    """(case, impl, Fn) of every segops row of every benchmark case (tools/gpu_profile.py
    uses it too)."""
    import segops
    from cases import CASES, Ctx, Fn, resolve_names

    ctx = Ctx(device=device, dtype=torch.float32, quick=quick, deterministic=True,
              impls=list(IMPLS), segops=segops, torchvision=None)
    for case in resolve_names(CASES, ctx):
        if filters and not any(f in case.key for f in filters):
            continue
        impls = case.setup(ctx)
        for name in IMPLS:
            if name in impls:
                spec = impls.pop(name)
                yield case, name, spec if isinstance(spec, Fn) else Fn(call=spec)
        del impls


def measure_cases(module, quick: bool, dry_run: bool, filters=()):
    """Yields (case key, impl, [CallCost], wrapper syncs) for every segops row."""
    for case, name, fn in segops_rows(torch.device("cpu"), quick, filters):
        call = fn.prepare() if fn.prepare is not None else fn.call
        with deterministic(fn.deterministic), costs.measure(module, dry_run) as m:
            call()
        yield case.key, name, m.calls, m.wrapper_syncs
        del call


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the benchmarks' --quick sizes")
    ap.add_argument("--run", action="store_true", help="run the kernels too (slow)")
    ap.add_argument("--filter", action="append", default=[], help="case key substring")
    ap.add_argument("--markdown", type=Path, help="also write the table here")
    args = ap.parse_args(argv)
    module = build.load()
    gpu_settings(module)
    rows = []
    for key, impl, calls, wrapper_syncs in measure_cases(module, args.quick, not args.run,
                                                          args.filter):
        inputs = sum(costs.tensor_bytes((c.args, c.kwargs)) for c in calls)
        r = costs.row(f"{key} [{impl}]", calls, inputs, wrapper_syncs)
        rows.append(r)
        print(" | ".join(str(v) for v in r.values()), file=sys.stderr, flush=True)
    table = costs.format_table(rows)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
