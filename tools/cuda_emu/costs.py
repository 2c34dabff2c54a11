"""What each segops op call costs on a GPU, counted on the CPU emulator (tools/cuda_emu).

An emulated op call (``torch.ops.segops_emu.<op>``) runs the real CUDA glue and kernels, so
everything the glue asks of the device is visible here:

* ``launches``: segops' own kernel launches (exact: the launch statements executed);
* ``aten``: the ATen calls the glue makes itself (the op's direct children in the trace),
  and among them ``aten_kernels``, those that launch at least one kernel on a GPU (not a
  view, an ``empty`` or a no-op ``to``/``contiguous``; a CUDA sort is several kernels, so
  ``sorts`` counts those separately);
* ``syncs``: host synchronisations: ``.item()`` (``aten::_local_scalar_dense``), ``nonzero``
  and the other ops whose output size depends on the data, moves to the CPU, and the
  runtime's synchronising calls (cudaStreamSynchronize, device-to-host copies, ...);
* memory: ``peak_bytes``, the most bytes live at once among the allocations made during
  the call (emulated device memory is CPU memory: the allocator's profiling hook counts
  it), ``output_bytes`` what is still live at the end (the outputs). ATen's own
  temporaries are counted as the CPU kernels make them (a CUDA sort's differ).

Two ways in:

    module = build.load()
    with costs.measure(module) as m:          # public API calls, redirected to the emulator
        segops.nms(boxes, scores, 0.5)
    m.calls[0].launches, m.calls[0].syncs, m.wrapper_syncs

    record = costs.trace_call(module, "nms", lambda: torch.ops.segops_emu.nms(...))

With ``module.set_dry_run(True)`` launches are counted but run no thread, for cost tables
at benchmark sizes (the outputs are garbage then).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# Ops whose result the host must wait for (data-dependent output sizes or values read back).
SYNC_OPS = frozenset({
    "aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::equal",
    "aten::allclose", "aten::nonzero", "aten::nonzero_numpy", "aten::argwhere",
    "aten::masked_select", "aten::unique_dim", "aten::_unique", "aten::_unique2",
    "aten::unique_consecutive", "aten::unique_dim_consecutive", "aten::bincount",
    "aten::tolist", "aten::_assert_scalar",
})
# Not views, but no kernel either. (Under torch.use_deterministic_algorithms, torch fills
# every `empty` with NaN -- a kernel on a GPU, but torch's policy for every op, not the
# glue's cost: an allocation counts as none.)
_NO_KERNEL = frozenset({
    "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty",
    "aten::new_empty_strided", "aten::resize_", "aten::lift_fresh", "aten::set_",
    "aten::empty.memory_format",
})
_SORTS = frozenset({"aten::sort", "aten::argsort", "aten::msort", "aten::topk"})

# Documented exact-size forms: they read one count back to size their result. Every other
# form of every op must make no host synchronisation. op -> (argument, value) of the form.
EXACT_SIZE_FORMS: Dict[str, tuple] = {
    "cluster_seeds": ("max_instances", -1),
    "boundary_patches": ("max_out", -1),
}


@functools.lru_cache(maxsize=None)
def _is_view(name: str, overload: str) -> bool:
    try:
        schema = torch._C._get_schema(name, overload)
    except RuntimeError:
        return False
    rets = schema.returns
    return bool(rets) and all(
        r.alias_info is not None and not r.alias_info.is_write for r in rets
    )


def _launches_kernel(event: Dict[str, Any]) -> bool:
    name = event["name"]
    if name in _NO_KERNEL or name in SYNC_OPS:
        return False
    return not _is_view(name, event["overload"])


def _subtree_launches(events: List[Dict[str, Any]]) -> bool:
    """Whether an ATen call (events[0]) and what it calls launch a kernel; what an
    allocation does inside (a deterministic-mode fill) does not count."""
    if events[0]["name"] in _NO_KERNEL:
        return False
    return any(_launches_kernel(x) for x in events if x["kind"] == "aten")


@dataclasses.dataclass
class CallCost:
    """The trace of one emulated op call, summarised."""

    op: str
    launches: List[str]
    blocks: int  # thread blocks over all launches (grid sizes)
    aten: List[str]
    aten_kernels: List[str]
    sorts: int
    syncs: List[str]
    peak_bytes: int
    output_bytes: int
    allocations: int
    events: List[Dict[str, Any]] = dataclasses.field(repr=False)
    output: Any = dataclasses.field(default=None, repr=False)
    args: tuple = dataclasses.field(default=(), repr=False)
    kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def scratch_bytes(self) -> int:
        """Peak live bytes less the outputs (what the call needs beyond its result)."""
        return max(0, self.peak_bytes - self.output_bytes)

    def summary(self) -> str:
        return (f"{self.op}: {len(self.launches)} launches, {len(self.aten)} ATen calls "
                f"({len(self.aten_kernels)} launching kernels, {self.sorts} sorts), "
                f"{len(self.syncs)} syncs, peak {self.peak_bytes} B, "
                f"scratch {self.scratch_bytes} B")


def summarise(op: str, trace: Dict[str, Any]) -> CallCost:
    events = trace["events"]
    # The op call itself is the first depth-1 event; the glue's own calls are at depth 2.
    top = [e for e in events if e["kind"] == "aten" and e["depth"] == 2]
    # A direct call launches a kernel when it, or anything it calls, does.
    kernels: List[str] = []
    i = 0
    while i < len(events):
        e = events[i]
        if e["kind"] == "aten" and e["depth"] == 2:
            j = i + 1
            while j < len(events) and events[j]["depth"] > 2:
                j += 1
            if _subtree_launches(events[i:j]):
                kernels.append(e["name"])
            i = j
        else:
            i += 1
    # A synchronising call counts once, not again for what it calls (item -> _local_scalar_dense).
    syncs: List[str] = []
    inside = None
    for e in events:
        if inside is not None and e["depth"] > inside:
            continue
        inside = None
        if e["kind"] == "sync" or (e["kind"] == "aten" and (e["name"] in SYNC_OPS or e["detail"])):
            syncs.append(e["name"] + (f" ({e['detail']})" if e["detail"] else ""))
            inside = e["depth"]
    blocks = 0
    for e in events:
        if e["kind"] == "launch" and (m := re.match(r"grid \((\d+),(\d+),(\d+)\)", e["detail"])):
            blocks += int(m.group(1)) * int(m.group(2)) * int(m.group(3))
    return CallCost(
        op=op,
        launches=[e["name"] for e in events if e["kind"] == "launch"],
        blocks=blocks,
        aten=[e["name"] for e in top],
        aten_kernels=kernels,
        sorts=sum(e["name"] in _SORTS for e in top),
        syncs=syncs,
        peak_bytes=int(trace["peak_bytes"]),
        output_bytes=int(trace["live_bytes"]),
        allocations=int(trace["allocations"]),
        events=events,
    )


def trace_call(module, op: str, fn: Callable[[], Any]) -> CallCost:
    """Runs ``fn`` (one emulated op call) under the emulator's trace."""
    module.trace_begin()
    try:
        out = fn()
    finally:
        trace = module.trace_end()
    cost = summarise(op, trace)
    cost.output = out
    return cost


def _plain_cpu(args, kwargs) -> bool:
    leaves, _ = tree_flatten((args, kwargs))
    return all(
        type(t) in (torch.Tensor, torch.nn.Parameter) and t.device.type == "cpu"
        for t in leaves if isinstance(t, torch.Tensor)
    )


def argument(func, args, kwargs, name: str):
    """The value of argument `name` of an op call (positional or keyword)."""
    for i, a in enumerate(func._schema.arguments):
        if a.name == name:
            if i < len(args):
                return args[i]
            return kwargs.get(name, a.default_value)
    raise KeyError(name)


def allowed_syncs(func, args, kwargs) -> int:
    """How many host synchronisations the op call may make: 1 for a documented exact-size
    form (it reads its count back), else 0."""
    form = EXACT_SIZE_FORMS.get(func._opname)
    if form is not None and argument(func, args, kwargs, form[0]) == form[1]:
        return 1
    return 0


def emulated(func):
    """torch.ops.segops_emu's overload for a torch.ops.segops one."""
    return getattr(getattr(torch.ops.segops_emu, func._opname), func._overloadname)


class Measure(TorchDispatchMode):
    """Redirects every ``torch.ops.segops.*`` call on CPU tensors to the emulated CUDA op
    under the trace (``calls``), and records the host synchronisations made around them
    (``wrapper_syncs``: a Python wrapper's ``int(count)`` for an exact-size result)."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.calls: List[CallCost] = []
        self.wrapper_syncs: List[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "segops" and _plain_cpu(args, kwargs):
            op = emulated(func)
            with torch.no_grad():
                cost = trace_call(self.module, func._opname, lambda: op(*args, **kwargs))
            cost.args, cost.kwargs = args, kwargs
            self.calls.append(cost)
            return cost.output
        if func.name() in SYNC_OPS:
            self.wrapper_syncs.append(func.name())
        return func(*args, **kwargs)

    def by_op(self) -> Dict[str, List[CallCost]]:
        out: Dict[str, List[CallCost]] = {}
        for c in self.calls:
            out.setdefault(c.op, []).append(c)
        return out


@contextlib.contextmanager
def measure(module, dry_run: bool = False) -> Iterator[Measure]:
    """Within: every segops op call runs emulated, traced; see Measure."""
    m = Measure(module)
    module.set_dry_run(dry_run)
    try:
        with m:
            yield m
    finally:
        module.set_dry_run(False)


def tensor_bytes(x) -> int:
    leaves, _ = tree_flatten(x)
    seen, total = set(), 0
    for t in leaves:
        if isinstance(t, torch.Tensor):
            key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
    return total


def format_table(rows: List[Dict[str, Any]]) -> str:
    """Markdown table of cost rows (see tools/cuda_emu/cost_table.py)."""
    cols = ["case", "launches", "blocks", "aten", "aten kernels", "sorts", "syncs", "peak MB",
            "scratch MB", "in+out MB"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def row(case: str, calls: List[CallCost], inputs_bytes: int,
        wrapper_syncs: Optional[List[str]] = None) -> Dict[str, Any]:
    """One table row for all the op calls a case made (forward and backward)."""
    mb = lambda b: f"{b / 2**20:.1f}"  # noqa: E731
    outputs = sum(tensor_bytes(c.output) for c in calls)
    return {
        "case": case,
        "launches": sum(len(c.launches) for c in calls),
        "blocks": sum(c.blocks for c in calls),
        "aten": sum(len(c.aten) for c in calls),
        "aten kernels": sum(len(c.aten_kernels) for c in calls),
        "sorts": sum(c.sorts for c in calls),
        "syncs": sum(len(c.syncs) for c in calls) + len(wrapper_syncs or []),
        "peak MB": mb(max((c.peak_bytes for c in calls), default=0)),
        "scratch MB": mb(max((c.scratch_bytes for c in calls), default=0)),
        "in+out MB": mb(inputs_bytes + outputs),
    }
