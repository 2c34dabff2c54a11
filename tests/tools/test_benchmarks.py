"""benchmarks/: the timing summary, the memory-floor arithmetic, the report and one tiny run
of ``run.py`` end to end (columns, JSON, Markdown with kept notes, the chart)."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest
import torch

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks")
sys.path.insert(0, os.path.abspath(BENCH))

import report  # noqa: E402
import run  # noqa: E402
import timing  # noqa: E402
from cases.registry import nbytes  # noqa: E402


def test_summarise_median_and_iqr():
    t = timing.summarise([5.0, 1.0, 3.0, 2.0, 4.0], calls=10)
    assert t.median_s == 3.0
    assert t.iqr_s == pytest.approx(2.0)  # inclusive quartiles 2 and 4
    assert (t.samples, t.calls) == (5, 10)
    one = timing.summarise([7.0], calls=1)
    assert (one.median_s, one.iqr_s, one.samples) == (7.0, 0.0, 1)


def test_measure_counts_samples_apart_from_warm_up():
    calls = []
    t = timing.measure(lambda: calls.append(1), torch.device("cpu"), min_run_time=0.01,
                       min_samples=4)
    assert t.samples >= 4 and t.calls >= t.samples
    assert len(calls) > t.calls  # the warm-up calls are not among the timed ones
    assert t.median_s > 0 and t.iqr_s >= 0


def _first_call_slow(first_s: float, later_s: float):
    """A call that sleeps ``first_s`` the first time, ``later_s`` after; counts its calls."""
    calls = []

    def fn():
        calls.append(1)
        time.sleep(first_s if len(calls) == 1 else later_s)
        return torch.full((1,), float(len(calls)))

    return fn, calls


def test_measure_times_a_slow_call_once_after_its_first():
    # one-time costs (the first call's page faults) stay out of the single sample
    fn, calls = _first_call_slow(0.3, 0.0)
    t = timing.measure(fn, torch.device("cpu"), min_run_time=0.0, single_call_s=0.1,
                       repeat_cap_s=10.0)
    assert (t.samples, t.calls, len(calls)) == (1, 1, 2)
    assert t.median_s < 0.2  # the second call's time, not the first's
    assert torch.equal(t.output, torch.full((1,), 2.0))  # the timed call's output is kept


def test_measure_does_not_repeat_a_call_over_the_cap():
    fn, calls = _first_call_slow(0.3, 0.0)
    t = timing.measure(fn, torch.device("cpu"), min_run_time=0.0, single_call_s=0.1,
                       repeat_cap_s=0.2)
    assert (t.samples, t.calls, len(calls)) == (1, 1, 1)
    assert t.median_s >= 0.3


def test_nbytes_of_tensors_and_shapes():
    assert nbytes(torch.zeros(3, 4)) == 48
    assert nbytes(((2, 5), torch.int64), ((7,), torch.bool)) == 87
    assert nbytes([torch.zeros(2, dtype=torch.float16), (((3,), torch.float64),)]) == 28


def test_copy_bandwidth_is_positive():
    bw = timing.copy_bandwidth(torch.device("cpu"), nbytes=1 << 20, repeats=3)
    assert bw["bytes_per_s"] > 0 and bw["buffer_bytes"] == 1 << 20


def test_markdown_keeps_the_notes_after_the_marker(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("old table\n" + report.NOTES_MARKER + "\n\n## Hand-written\n\nkept\n")
    kept = report.kept_notes_of(str(path))
    assert "## Hand-written" in kept and "old table" not in kept


@pytest.mark.no_cuda_emu  # timings, not kernel parity
def test_run_end_to_end(tmp_path, capsys):
    paths = {k: str(tmp_path / n) for k, n in
             (("json", "b.json"), ("markdown", "b.md"), ("plot", "b.png"))}
    with open(paths["markdown"], "w") as f:
        f.write(report.NOTES_MARKER + "\nhand-written analysis\n")
    rc = run.main(["--quick", "--device", "cpu", "--filter", "roi_pool P4 13x19 C16 K32 out7 fwd",
                   "--impls", "segops,reference,torchvision", "--threads", "1,2",
                   "--json", paths["json"], "--markdown", paths["markdown"],
                   "--plot", paths["plot"]])
    assert rc == 0
    out = capsys.readouterr().out
    for column in ("IQR (ms)", "samples", "floor (ms)", "time / floor"):
        assert column in out
    data = json.load(open(paths["json"]))
    rows = data["rows"]
    assert {r["threads"] for r in rows} == {1, 2}
    seg = [r for r in rows if r["impl"] == "segops"]
    ref = [r for r in rows if r["impl"] == "reference"]
    assert seg and ref and all(r["kind"] == "reference" for r in ref)
    # roi_pool forward: features, RoIs, output and int64 argmax, each once
    assert seg[0]["floor_bytes"] == 4 * (16 * 13 * 19 + 32 * 5 + 32 * 16 * 49) + 8 * 32 * 16 * 49
    assert all(r["x_floor"] > 0 for r in seg)
    assert set(data["header"]["bandwidth"]) == {"1", "2"}
    md = open(paths["markdown"]).read()
    assert "## Memory floor" in md and "reference (pure PyTorch)" in md
    assert md.rstrip().endswith("hand-written analysis")
    with open(paths["plot"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
