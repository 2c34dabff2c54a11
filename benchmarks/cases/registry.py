"""The case registry: what a benchmark case is, the list ``benchmarks/run.py`` runs, and how
an implementation's output is checked against segops'.

A family module (``cases/roi.py``, ``cases/nms.py``) calls :func:`register` once per case
from its ``register_cases()``, which ``cases/__init__.py`` runs for every family. This lives
in the ``cases`` package, not in ``run.py``, so that family modules can import it whether
``run.py`` is the script being run (``__main__``) or an imported module: a family importing
``run`` from the script would load a second copy of it, with its own empty ``CASES``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch


@dataclasses.dataclass
class Fn:
    """A timed callable plus per-implementation options.

    Give either ``call`` (the zero-arg callable to time) or ``prepare`` (a zero-arg function
    returning it, run just before this implementation is timed and dropped right after: for
    state that is costly to hold, like the autograd graph of a forward pass). ``output``, if
    given, maps the output to the form segops' plain output has before they are compared
    (outside the timing), e.g. cutting a padded result down to its count.
    """

    call: Optional[Callable[[], Any]] = None
    deterministic: Optional[bool] = None  # None: leave torch's setting alone
    prepare: Optional[Callable[[], Callable[[], Any]]] = None
    output: Optional[Callable[[Any], Any]] = None


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
    --quick); ``resolve_names`` turns it into a string before anything else looks at it.
    ``exact``: every implementation's output must equal segops' exactly (index outputs),
    not just within the dtype's tolerance. ``floor``: the case's memory floor, the bytes
    the op must move at least (its inputs read once, its outputs written once; each family
    documents its formula): ``floor(ctx, out)`` with ``out`` segops' output of the timed
    call (the gradients for a backward case), None when not defined.
    ``slow_reference``: the pure-PyTorch reference takes seconds a call at full size; the
    default run leaves it out (``run.py --reference all`` or ``--all`` times it)."""

    op: str
    name: Union[str, Callable[[Ctx], str]]
    setup: Callable[[Ctx], Dict[str, Any]]
    backward: bool = False  # times a backward pass (see --reference)
    exact: bool = False
    params: Dict[str, Any] = dataclasses.field(default_factory=dict)
    floor: Optional[Callable[["Ctx", Any], int]] = None
    slow_reference: bool = False

    @property
    def key(self) -> str:
        return f"{self.op} {self.name}"


CASES: List[Case] = []


def register(op: str, name, setup: Callable[[Ctx], Dict[str, Any]], backward: bool = False,
             exact: bool = False, floor: Optional[Callable[[Ctx, Any], int]] = None,
             slow_reference: bool = False, **params) -> None:
    """Add a case (see :class:`Case`); ``params`` are the op's options, for the JSON."""
    CASES.append(Case(op=op, name=name, setup=setup, backward=backward, exact=exact,
                      params=params, floor=floor, slow_reference=slow_reference))


def resolve_names(cases: List[Case], ctx: Ctx) -> List[Case]:
    return [dataclasses.replace(c, name=c.name(ctx)) if callable(c.name) else c for c in cases]


def op_impls(ctx: Ctx, op: str, torchvision: bool = True) -> Dict[str, Callable]:
    """{impl name: function} for ``op`` from segops, torchvision.ops (when ``torchvision``
    and it is importable) and segops.reference, as far as requested."""
    fns = {}
    if ctx.wants("segops"):
        fns["segops"] = getattr(ctx.segops, op)
    if torchvision and ctx.wants("torchvision") and ctx.torchvision is not None:
        fns["torchvision"] = getattr(ctx.torchvision.ops, op)
    if ctx.wants("reference"):
        fns["reference"] = getattr(ctx.segops.reference, op)
    return fns


def nbytes(*items) -> int:
    """Bytes of tensors and of ``(shape, dtype)`` pairs, nested in lists, tuples and dicts
    at will: the terms of a memory floor."""
    total = 0
    for x in items:
        if isinstance(x, torch.Tensor):
            total += x.numel() * x.element_size()
        elif isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], torch.dtype):
            total += math.prod(x[0]) * _itemsize(x[1])
        elif isinstance(x, (list, tuple)):
            total += nbytes(*x)
        elif isinstance(x, dict):
            total += nbytes(*x.values())
    return total


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# --------------------------------------------------------------------------------------
# Cross-checking outputs (the runner compares every implementation's with segops')
# --------------------------------------------------------------------------------------


def _flatten_tensors(x) -> List[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for item in x for t in _flatten_tensors(item)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _flatten_tensors(v)]
    return []


def compare(a, b) -> Optional[float]:
    """Largest |a - b| relative to max(1, max|b|) over matching tensors; None if incomparable.

    Integer and bool tensors (indices, labels, counts) count only as equal (0) or not (inf).
    """
    ta, tb = _flatten_tensors(a), _flatten_tensors(b)
    if not ta or len(ta) != len(tb) or any(x.shape != y.shape for x, y in zip(ta, tb)):
        return None
    worst = 0.0
    for x, y in zip(ta, tb):
        if x.numel() == 0:
            continue
        x, y = x.detach(), y.detach()
        if not (x.dtype.is_floating_point and y.dtype.is_floating_point):
            if not torch.equal(x.to(torch.int64), y.to(torch.int64)):
                worst = math.inf
            continue
        x, y = x.double(), y.double()
        both_nan = torch.isnan(x) & torch.isnan(y)
        diff = (x - y).abs().masked_fill(both_nan, 0).nan_to_num(nan=math.inf)
        scale = max(1.0, float(y.abs().nan_to_num(nan=0).max()))
        worst = max(worst, float(diff.max()) / scale)
    return worst


def count_differences(a, b) -> str:
    """``"k of n elements differ"`` for outputs of matching shapes (exact cases' notes)."""
    pairs = list(zip(_flatten_tensors(a), _flatten_tensors(b)))
    k = sum(int((x.detach() != y.detach()).sum()) for x, y in pairs)
    return f"{k} of {sum(x.numel() for x, _ in pairs)} elements differ"


def shapes(x) -> str:
    return ", ".join(str(list(t.shape)) for t in _flatten_tensors(x)) or type(x).__name__


def tolerance(case: Case, dtype: torch.dtype) -> float:
    """The largest ``compare`` result that counts as agreeing with segops."""
    if case.exact:
        return 0.0
    return {torch.float16: 1e-2, torch.bfloat16: 5e-2, torch.float64: 1e-9}.get(dtype, 1e-3)
