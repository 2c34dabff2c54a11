"""The op registry: one entry per public op, driving the contract tests every op must pass
(tests/ops/test_contract.py), in the spirit of PyTorch's OpInfo.

An entry says how to call the op (sample inputs, small but with real content, on any device
and dtype), what it is compared with (its pure-PyTorch reference), what is differentiable
(a gradcheck function), how its arguments may go wrong (the bad-input table, plus the type
errors generated from the kinds of its scalar arguments), and whether it exports to ONNX.
The family modules (``roi``, ``nms``, ``masks``, ``cluster``, ``patches``) define the entries;
``OPS`` lists them all. Family test files keep only what is specific to their ops.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

ALL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
FULL_DTYPES = (torch.float32, torch.float64)

# Reference tolerances on float outputs (float32 / float64 samples; the kernels follow the
# references' order of operations up to a rounding or two).
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}


@dataclass
class Sample:
    """One call: ``func(*args, **kwargs)``. ``fullgraph``: the call has no data-dependent
    output size, so ``torch.compile(fullgraph=True)`` traces it."""

    label: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    fullgraph: bool = True


@dataclass
class BadCase:
    """A call that must raise ``exc`` with a message matching ``match`` (which names the
    argument). ``make(device)`` returns ``(args, kwargs)``."""

    label: str
    make: Callable[[str], tuple]
    exc: type
    match: str


# Scalar argument kinds -> values of the wrong Python type for them (each must raise a
# TypeError naming the op and the argument). Bools are not numbers, strings are not numbers,
# integers must be integers.
WRONG_TYPES = {
    "real": [None, "0.5", True, [0.5], 1j, torch.tensor(0.5)],
    "int": [None, "1", True, 1.5, [1], 1j],
    "capacity": ["3", True, 2.5, [3]],
    "bool": [None, "yes", 1, 0.0],
    "size": [None, "7", True, 7.5, (7,), (7, 7, 7), (7, 7.5)],
    "optional_real": ["0.5", True, [0.5], 1j],  # None is a value here
    "optional_size": ["7", True, 7.5, (7,), (7, 7.5)],
    "str": [None, 1, True],
}


@dataclass
class OpInfo:
    name: str
    func: Callable
    ref: Optional[Callable]
    family: str
    samples: Callable[[str, torch.dtype], list]  # (device, dtype) -> [Sample]
    bad: Callable[[], list] = lambda: []  # -> [BadCase]
    # kwarg name -> kind (a key of WRONG_TYPES): type-error cases are generated from them,
    # replacing the kwarg in the first sample.
    scalars: dict = field(default_factory=dict)
    dtypes: tuple = ALL_DTYPES
    # (device, dtype) -> [(fn, inputs)] for gradcheck: fn(*inputs) differentiable in inputs.
    grad: Optional[Callable[[str, torch.dtype], list]] = None
    # Compare one output (op, reference) beyond the default rules (see compare_outputs).
    compare: Optional[Callable[[Sample, Any, Any], None]] = None
    onnx: bool = True  # exportable to standard ONNX operators

    @property
    def differentiable(self) -> bool:
        return self.grad is not None

    def type_cases(self) -> list:
        """The generated type errors: every wrong-typed value of every scalar argument."""
        cases = []
        for name, kind in self.scalars.items():
            for value in WRONG_TYPES[kind]:

                def make(device, _name=name, _value=value):
                    s = self.samples(device, torch.float32)[0]
                    bound = inspect.signature(self.func).bind(*s.args, **s.kwargs)
                    bound.arguments[_name] = _value
                    return bound.args, bound.kwargs

                cases.append(BadCase(f"{name}={value!r}", make, TypeError, f"`{name}`"))
        return cases

    def all_bad(self) -> list:
        return self.bad() + self.type_cases()


def flat(out) -> list:
    """An op's output as a flat list of tensors."""
    if isinstance(out, torch.Tensor):
        return [out]
    result = []
    for o in out:
        result += flat(o)
    return result


def bits(t: torch.Tensor) -> torch.Tensor:
    """A tensor's bit pattern (floats as same-width integers; NaNs canonical)."""
    if t.is_floating_point():
        t = torch.where(t.isnan(), torch.full_like(t, math.nan), t)
        width = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
        return t.contiguous().view(width)
    return t


def assert_same_bits(a, b, what: str = "") -> None:
    fa, fb = flat(a), flat(b)
    assert len(fa) == len(fb), what
    for i, (x, y) in enumerate(zip(fa, fb)):
        assert x.dtype == y.dtype and x.shape == y.shape, f"{what}[{i}]: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}"
        assert torch.equal(bits(x.cpu()), bits(y.cpu())), f"{what}[{i}]: bits differ"


def compare_outputs(op: OpInfo, sample: Sample, out, expected) -> None:
    """Op vs reference: integer and bool outputs equal, float outputs within TOL."""
    fo, fe = flat(out), flat(expected)
    assert len(fo) == len(fe), f"{op.name}: {len(fo)} outputs, reference {len(fe)}"
    for i, (o, e) in enumerate(zip(fo, fe)):
        o, e = o.cpu(), e.cpu()
        assert o.shape == e.shape, f"{op.name}[{i}]: shape {list(o.shape)} vs {list(e.shape)}"
        if o.is_floating_point():
            torch.testing.assert_close(o, e.to(o.dtype), equal_nan=True, **TOL[o.dtype])
        else:
            assert torch.equal(o, e.to(o.dtype)), f"{op.name}[{i}]: differs from the reference"
    if op.compare is not None:
        op.compare(sample, out, expected)


def _entries() -> list:
    from . import cluster, masks, nms, patches, roi

    return [*roi.OPS, *nms.OPS, *masks.OPS, *cluster.OPS, *patches.OPS]


OPS: list = _entries()
BY_NAME = {op.name: op for op in OPS}
