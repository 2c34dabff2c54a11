"""Timing for ``benchmarks/run.py``: medians with their spread, warm-up kept apart, thread
counts pinned, and the machine's copy bandwidth (the memory floor's yardstick).

A measurement (:func:`measure`) has three phases:

1. **Warm-up**, never counted: one call (its output is kept for the cross-check), then more
   until ``warmup_s`` (a quarter of ``min_run_time``) has passed; the fastest warm-up call
   estimates the cost of a call.
2. **Samples**: each sample is the mean time of a block of consecutive calls, the block
   as short as gives about ``target_samples`` samples in ``min_run_time`` but at least
   ``min_block_s`` long (so the clock's resolution and the loop cost nothing), a single call
   for slow calls; samples are taken until ``min_run_time`` has passed and there are at
   least ``min_samples`` of them (at most ``max_samples``).
3. **Summary**: the median of the samples, their interquartile range (``q3 - q1``; 0 for a
   single sample), the number of samples and of calls.

A call slower than ``single_call_s`` (and ``min_run_time``) is called once more, and that
second call is its one sample, marked by ``samples == 1`` (no spread): the first call pays
one-time costs (a 3.2 GB output's first huge-page faults compact memory, several seconds
that later calls do not pay); the first call's output is freed before the second, as a
caller's loop frees its last result. A first call slower than ``repeat_cap_s`` is not
repeated: it is the sample.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch

SINGLE_CALL_S = 2.0  # a first call this slow is timed once more, not in blocks (0.1 s: --quick)
REPEAT_CAP_S = 10.0  # a first call this slow is not repeated at all


@dataclasses.dataclass
class Timing:
    median_s: float
    iqr_s: float  # interquartile range of the samples (0 for one sample)
    samples: int  # samples the median is over
    calls: int  # calls timed in those samples (warm-up excluded unless it is the only call)
    output: Any = None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _quartiles(xs: List[float]) -> tuple:
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def summarise(samples: List[float], calls: int, output: Any = None) -> Timing:
    q1, q3 = _quartiles(samples)
    return Timing(statistics.median(samples), q3 - q1, len(samples), calls, output)


def measure(fn: Callable[[], Any], device: torch.device, min_run_time: float,
            single_call_s: float = SINGLE_CALL_S, repeat_cap_s: float = REPEAT_CAP_S,
            warmup_s: Optional[float] = None,
            min_samples: int = 5, max_samples: int = 200, target_samples: int = 30,
            min_block_s: float = 1e-3) -> Timing:
    """Time ``fn()`` on ``device`` (see the module docstring)."""

    def timed_block(calls: int):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(calls - 1):
            fn()
        out = fn()
        sync(device)
        return (time.perf_counter() - t0) / calls, out

    warmup_s = min_run_time / 4 if warmup_s is None else warmup_s
    first, output = timed_block(1)
    if first >= max(min_run_time, single_call_s):  # slow: one more call is the sample
        if first >= repeat_cap_s:
            return summarise([first], 1, output)  # too slow to repeat: the warm-up is it
        del output  # freed first, as a caller's loop frees its last result: the second call
        t, output = timed_block(1)  # reuses that memory instead of faulting in more
        return summarise([t], 1, output)
    estimate, spent = first, first
    while spent < warmup_s:  # more warm-up while it is short: the first call pays one-time costs
        t = timed_block(1)[0]
        estimate, spent = min(estimate, t), spent + t

    block_s = max(min_block_s, min_run_time / target_samples)
    block = max(1, int(block_s / max(estimate, 1e-9)))
    samples: List[float] = []
    spent = 0.0
    while len(samples) < max_samples and (len(samples) < min_samples or spent < min_run_time):
        t = timed_block(block)[0]
        samples.append(t)
        spent += t * block
    return summarise(samples, len(samples) * block, output)


@contextlib.contextmanager
def num_threads(n: Optional[int]) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the block (``None``: leave it alone)."""
    if n is None:
        yield
        return
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def copy_bandwidth(device: torch.device, nbytes: int = 256 << 20, repeats: int = 7) -> Dict:
    """The machine's copy bandwidth at the current thread count: the median over ``repeats``
    of ``dst.copy_(src)`` between two preallocated ``nbytes`` buffers (after one warm-up
    copy that faults the pages in), counted as ``2 * nbytes`` moved (each byte read once
    and written once). Returns ``{"bytes_per_s", "iqr_bytes_per_s", "buffer_bytes"}``."""
    n = nbytes // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - t0)
    q1, q3 = _quartiles(times)
    med = statistics.median(times)
    del src, dst
    return {"bytes_per_s": 2 * nbytes / med, "iqr_bytes_per_s": 2 * nbytes / q1 - 2 * nbytes / q3,
            "buffer_bytes": nbytes}
