"""Reporting for ``benchmarks/run.py``: the text table, ``RESULTS.md`` (peer ratio tables,
the memory-floor table, the chart, every row) and the speedup chart (matplotlib).

A row (one implementation of one case at one thread count) is a dict with ``op``, ``case``,
``impl``, ``kind`` (``segops``, ``variant`` for segops' other forms, ``peer``,
``reference``), ``threads``, ``median_ms``, ``iqr_ms``, ``samples``, ``calls``, ``ratio``
(impl / segops, same case and threads), ``floor_ms`` and ``x_floor`` (time / floor), and
``error`` when the call failed.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

NOTES_MARKER = "<!-- Notes below this line are kept when run.py regenerates this file. -->"

KIND_LABEL = {"reference": "reference (pure PyTorch)"}


def impl_label(row: Dict[str, Any]) -> str:
    return KIND_LABEL.get(row["kind"], row["impl"])


def fmt_ms(ms: Optional[float]) -> str:
    if ms is None:
        return "error"
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_ratio(r: Optional[float]) -> str:
    if r is None:
        return "-"
    return f"{r:.1f}" if r >= 100 else f"{r:.2f}"


def _fmt_iqr(row) -> str:
    if row["median_ms"] is None or row["samples"] < 2:
        return "-"
    return fmt_ms(row["iqr_ms"])


COLUMNS = ("op", "case", "thr", "impl", "median (ms)", "IQR (ms)", "samples",
           "ratio to segops", "floor (ms)", "time / floor")
_NUMERIC = (False, False, True, False, True, True, True, True, True, True)


def table_cells(rows: List[Dict[str, Any]]) -> List[List[str]]:
    out = []
    for r in rows:
        floor = fmt_ms(r["floor_ms"]) if r.get("floor_ms") is not None and r["kind"] == "segops" \
            else ""
        out.append([
            r["op"], r["case"], str(r["threads"]), impl_label(r), fmt_ms(r["median_ms"]),
            _fmt_iqr(r), str(r["samples"]) if r["samples"] else "-", fmt_ratio(r["ratio"]),
            floor, fmt_ratio(r.get("x_floor")),
        ])
    return out


def format_text_table(rows: List[Dict[str, Any]]) -> str:
    cells = table_cells(rows)
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(COLUMNS)]

    def line(vals):
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(vals, widths, _NUMERIC)).rstrip()

    out = [line(COLUMNS), line(["-" * w for w in widths])]
    prev_op = None
    for r, c in zip(rows, cells):
        if prev_op is not None and r["op"] != prev_op:
            out.append("")
        prev_op = r["op"]
        out.append(line(c))
    return "\n".join(out)


def _md_table(header: Sequence[str], body: List[List[str]], numeric: Sequence[bool]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(v.replace("|", "\\|") for v in row) + " |" for row in body]
    return lines


def _thread_counts(rows) -> List[int]:
    return sorted({r["threads"] for r in rows})


def peer_tables(rows: List[Dict[str, Any]]) -> List[str]:
    """One table per peer: its time over segops' for every case it has, per thread count."""
    threads = _thread_counts(rows)
    peers = sorted({r["impl"] for r in rows if r["kind"] == "peer"})
    lines: List[str] = []
    for peer in peers:
        cases: Dict[tuple, Dict[int, Dict]] = {}
        for r in rows:
            if r["impl"] == peer:
                cases.setdefault((r["op"], r["case"]), {})[r["threads"]] = r
        body = []
        for (op, case), by_t in cases.items():
            cells = []
            for t in threads:
                r = by_t.get(t)
                cells.append("-" if r is None else
                             "error" if r["median_ms"] is None else fmt_ratio(r["ratio"]))
            body.append([op, case] + cells)
        head = ["op", "case"] + [f"{t} thread{'s' if t > 1 else ''}" for t in threads]
        lines += [f"### segops against {peer}", "",
                  f"{peer}'s median time over segops' (above 1: segops is faster).", ""]
        lines += _md_table(head, body, [False, False] + [True] * len(threads)) + [""]
    return lines


def floor_table(rows: List[Dict[str, Any]]) -> List[str]:
    body = []
    for r in rows:
        if r["kind"] != "segops" or r.get("floor_ms") is None or r["median_ms"] is None:
            continue
        body.append([r["op"], r["case"], str(r["threads"]), f"{r['floor_bytes'] / 1e6:.1f}",
                     fmt_ms(r["floor_ms"]), fmt_ms(r["median_ms"]), fmt_ratio(r["x_floor"])])
    head = ["op", "case", "thr", "floor (MB)", "floor (ms)", "segops (ms)", "time / floor"]
    return _md_table(head, body, [False, False, True, True, True, True, True])


def format_markdown(rows: List[Dict[str, Any]], header: Dict[str, Any], notes: List[str],
                    plot_path: Optional[str] = None, markdown_path: Optional[str] = None,
                    kept_notes: str = "") -> str:
    commit = header["segops_commit"] or "unknown"
    if header.get("segops_dirty"):
        commit += " (+ uncommitted changes)"
    tv = header["torchvision_version"]
    bw = ", ".join(f"{t} thread{'s' if int(t) > 1 else ''}: {b['bytes_per_s'] / 1e9:.1f} GB/s"
                   for t, b in header["bandwidth"].items())
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `{header['command']}` (one run; every ratio is side by side in it).",
        "",
        f"- {header['device_name']} ({header['device']}), {header['cpu_count']} CPUs usable, "
        f"{header['date']}",
        f"- torch {header['torch_version']}" + (f", torchvision {tv}" if tv else
                                                ", torchvision not importable")
        + f", Python {header['python_version']}; segops commit {commit}",
        f"- dtype {header['dtype']}; threads pinned per measurement "
        f"(`torch.set_num_threads`): {', '.join(map(str, header['threads']))}; "
        f"{'quick' if header['quick'] else 'full'} sizes"
        + (", filter `" + header["filter"] + "`" if header["filter"] else "")
        + {"all": "", "fast": "; the slow pure-PyTorch references not timed",
           "none": "; references not timed"}[header["reference"]],
        f"- timing: warm-up calls first (not counted), then the median of the samples "
        f"(blocks of calls for fast ops, one call each for slow ones; at least "
        f"{header['min_samples']}; a call over {header['single_call_s']:g} s is timed once, "
        f"after one warm-up call unless the first took over {header['repeat_cap_s']:g} s) "
        "with their interquartile range; `ratio` = impl time / segops time (above 1: segops "
        "is faster); `bwd-only` times `autograd.grad` on a precomputed forward",
        f"- memory floor: the bytes an op must move (inputs read once, outputs written once; "
        f"formulas in `benchmarks/cases/`) over the copy bandwidth measured at the start "
        f"(`Tensor.copy_` of {header['bandwidth_buffer_mb']} MB) — {bw}; `time / floor` near 1 "
        "is as fast as the memory allows",
        "",
        "## Peers",
        "",
    ]
    lines += peer_tables(rows) or ["No peer implementation ran.", ""]
    lines += ["## Memory floor (segops)", ""] + floor_table(rows) + [""]
    if plot_path:
        rel = plot_path
        if markdown_path:
            rel = os.path.relpath(os.path.abspath(plot_path),
                                  os.path.dirname(os.path.abspath(markdown_path)))
        lines += ["## Chart", "", f"![speedups of segops against each implementation]({rel})", ""]
    lines += ["## Every row", ""]
    lines += _md_table(COLUMNS, table_cells(rows), _NUMERIC)
    if notes:
        lines += ["", "Notes from the run:", ""] + [f"- {n}" for n in notes]
    lines += ["", NOTES_MARKER, ""]
    text = "\n".join(lines)
    if kept_notes.strip():
        text += kept_notes.lstrip("\n")
        if not text.endswith("\n"):
            text += "\n"
    return text


def kept_notes_of(path: str) -> str:
    """The hand-written part of an existing RESULTS.md: everything after the marker."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ""
    i = text.find(NOTES_MARKER)
    return text[i + len(NOTES_MARKER):] if i >= 0 else ""


def plot_speedups(rows: List[Dict[str, Any]], path: str, title: str) -> None:
    """A PNG of segops' speedup against every other implementation (log scale), one panel
    per thread count, one bar per (case, implementation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = _thread_counts(rows)
    others = [r for r in rows if r["kind"] in ("peer", "reference") and r["ratio"]]
    impls = sorted({impl_label(r) for r in others}, key=lambda s: (s.startswith("reference"), s))
    labels: List[str] = []
    for r in others:
        key = f"{r['op']}: {r['case']}"
        if key not in labels:
            labels.append(key)
    fig_h = 2.0 + 0.22 * max(1, len(labels)) * max(1, len(impls)) ** 0.5
    fig, axes = plt.subplots(1, len(threads) or 1,
                             figsize=(4.5 + 5.5 * max(1, len(threads)), fig_h),
                             sharey=True, squeeze=False)
    colours = plt.get_cmap("tab10")
    height = 0.8 / max(1, len(impls))
    for ax, t in zip(axes[0], threads or [None]):
        for j, impl in enumerate(impls):
            ys, xs = [], []
            for r in others:
                if r["threads"] == t and impl_label(r) == impl:
                    ys.append(labels.index(f"{r['op']}: {r['case']}") + (j - (len(impls) - 1) / 2)
                              * height)
                    xs.append(r["ratio"])
            if xs:
                ax.barh(ys, xs, height=height, color=colours(j % 10), label=impl,
                        hatch="//" if impl.startswith("reference") else None)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("impl time / segops time (> 1: segops faster)")
        ax.set_title(f"{t} thread{'s' if t and t > 1 else ''}" if t else "")
        ax.grid(axis="x", which="both", alpha=0.3)
    axes[0][0].set_yticks(range(len(labels)))
    axes[0][0].set_yticklabels([lb if len(lb) < 64 else lb[:61] + "..." for lb in labels],
                               fontsize=7)
    axes[0][0].invert_yaxis()
    if impls:
        axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig_h))
    fig.savefig(path, dpi=110)
    plt.close(fig)
