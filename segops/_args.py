"""Python-side argument handling of every op: type checks and conversions, nothing more.

What an argument must *be* as a Python object (a Tensor, a real number, an integer, a pair
of ints, a string) is checked here, because the dispatcher's own conversion errors name
neither the op nor the argument. What its *value* must be (shapes, dtypes, devices, ranges,
NaN, bounds) is checked once, in C++ (``csrc/<family>/checks.h``), where it also guards a raw
``torch.ops.segops.*`` call. One wording everywhere: ``<op>: `<arg>` must be ..., got ...``.

Bools are not numbers here, strings are not numbers, and an integer argument must be an
integer (``1.5`` is refused, not truncated).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# Symbolic scalars (under torch.compile / torch.export) count as what they stand for and are
# passed through unconverted (converting one would specialise the trace).
_INTEGERS = (numbers.Integral, torch.SymInt)
_REALS = (numbers.Real, torch.SymInt, torch.SymFloat)


def _what(value: object) -> str:
    """How a refused value is shown: its repr when short, else its type."""
    text = repr(value)
    return text if len(text) <= 40 else type(value).__name__


def tensor(op: str, name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{op}: `{name}` must be a Tensor, got {type(value).__name__}")
    return value


def tensors(op: str, name: str, value: object) -> list[Tensor]:
    """A list or tuple of Tensors."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{op}: `{name}` must be a list of Tensors, got {type(value).__name__}")
    return [tensor(op, f"{name}[{i}]", v) for i, v in enumerate(value)]


def real(op: str, name: str, value: object) -> float:
    """A real number (int or float, not bool) as a float; NaN passes (C++ decides)."""
    if isinstance(value, bool) or not isinstance(value, _REALS):
        raise TypeError(f"{op}: `{name}` must be a real number, got {_what(value)}")
    return value if isinstance(value, (torch.SymInt, torch.SymFloat)) else float(value)


def optional_real(op: str, name: str, value: object) -> float | None:
    return None if value is None else real(op, name, value)


def reals(op: str, name: str, value: object) -> list[float]:
    """A list or tuple of real numbers."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{op}: `{name}` must be a list of real numbers, got {_what(value)}")
    return [real(op, f"{name}[{i}]", v) for i, v in enumerate(value)]


def integer(op: str, name: str, value: object) -> int:
    """An integer (not bool) that fits in int64."""
    if isinstance(value, bool) or not isinstance(value, _INTEGERS):
        raise TypeError(f"{op}: `{name}` must be an int, got {_what(value)}")
    if isinstance(value, torch.SymInt):
        return value
    value = int(value)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{op}: `{name}` must fit in int64, got {value}")
    return value


def capacity(op: str, name: str, value: object) -> int:
    """A capacity: ``None`` (exact-size outputs, given to the op as -1) or an int >= 0."""
    if value is None:
        return -1
    value = integer(op, name, value)
    if not isinstance(value, torch.SymInt) and value < 0:  # -1 is the op's sentinel for None
        raise ValueError(f"{op}: `{name}` must be >= 0 (or None), got {value}")
    return value


def boolean(op: str, name: str, value: object) -> bool:
    if isinstance(value, torch.SymBool):
        return value
    if not isinstance(value, bool) and type(value).__name__ != "bool_":  # numpy.bool_ too
        raise TypeError(f"{op}: `{name}` must be a bool, got {_what(value)}")
    return bool(value)


def string(op: str, name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{op}: `{name}` must be a str, got {_what(value)}")
    return value


def choice(op: str, name: str, value: object, choices: Sequence[str]) -> str:
    """One of ``choices``: for the strings the Python side converts itself."""
    if string(op, name, value) not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{op}: `{name}` must be one of {options}, got {value!r}")
    return value


def size_pair(op: str, name: str, value: object) -> tuple[int, int]:
    """An int, or a pair of ints, as ``(h, w)`` (their range is checked by the op)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise TypeError(f"{op}: `{name}` must be an int or a pair of ints, got {_what(value)}")
        return integer(op, name, value[0]), integer(op, name, value[1])
    if isinstance(value, bool) or not isinstance(value, _INTEGERS):
        raise TypeError(f"{op}: `{name}` must be an int or a pair of ints, got {_what(value)}")
    v = integer(op, name, value)
    return v, v


def pair(op: str, name: str, value: object) -> tuple[object, object]:
    """A list or tuple of two entries (the caller converts each)."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{op}: `{name}` must be a pair, got {_what(value)}")
    return value[0], value[1]
