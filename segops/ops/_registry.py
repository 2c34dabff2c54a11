"""Helpers shared by the per-family op modules: argument validation and autocast."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

_HALF = (torch.float16, torch.bfloat16)
_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# Library handle for the Python-side registrations (autocast) of every family.
_lib = torch.library.Library("segops", "IMPL")


def check_tensor(t: object, op: str, name: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: `{name}` must be a Tensor, got {type(t).__name__}")
    return t


def check_same_device(op: str, first: str, tensors: dict[str, Tensor]) -> None:
    """Every tensor in `tensors` must be on the device of `tensors[first]`."""
    device = tensors[first].device
    for name, t in tensors.items():
        if t.device != device:
            raise ValueError(
                f"{op}: `{name}` must be on the device of `{first}` ({device}), got {t.device}"
            )


def check_float(t: Tensor, op: str, name: str) -> None:
    if t.dtype not in _FLOATS:
        raise TypeError(
            f"{op}: `{name}` must be float32, float64, float16 or bfloat16, got {t.dtype}"
        )


def check_threshold(value: object, op: str, name: str = "threshold") -> float:
    """A real number that is not NaN (TypeError / ValueError otherwise), as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: `{name}` must be a float, got {type(value).__name__}")
    if math.isnan(value):
        raise ValueError(f"{op}: `{name}` must not be NaN")
    return float(value)


def pair(value: int | Sequence[int], op: str, name: str) -> tuple[int, int]:
    """An `int` or a pair of ints, each >= 0."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise TypeError(f"{op}: `{name}` must be an int or a pair of ints, got {value!r}")
    if value[0] < 0 or value[1] < 0:
        raise ValueError(f"{op}: `{name}` must be >= 0, got {tuple(value)}")
    return int(value[0]), int(value[1])


def register_autocast(name: str, *, float_args: Sequence[int]) -> None:
    """Autocast as torchvision does it: run in float32, return the input's dtype.

    Half-precision tensors among the positional arguments `float_args` (a tensor, or a
    list of tensors) are cast to float32; floating outputs are cast back to the dtype of
    the first argument (of its first tensor, for a list; other outputs, e.g. bool masks,
    are returned as they are).
    (`torch.library.register_autocast` would leave the outputs in float32.)
    """
    op = getattr(torch.ops.segops, name).default

    def upcast(t):
        return t.float() if isinstance(t, Tensor) and t.dtype in _HALF else t

    for device, key in (("cpu", "AutocastCPU"), ("cuda", "AutocastCUDA")):

        def impl(*args, _key=key):
            first = args[0][0] if isinstance(args[0], (list, tuple)) and args[0] else args[0]
            out_dtype = first.dtype if isinstance(first, Tensor) else None
            args = list(args)
            for i in float_args:
                if isinstance(args[i], (list, tuple)):
                    args[i] = [upcast(t) for t in args[i]]
                else:
                    args[i] = upcast(args[i])
            with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(_key)):
                out = op(*args)

            def back(o):
                return o.to(out_dtype) if o.is_floating_point() and out_dtype is not None else o

            return tuple(back(o) for o in out) if isinstance(out, tuple) else back(out)

        _lib.impl(name, impl, key)


def fake(name: str) -> Callable:
    """Decorator: register a fake (meta) implementation for torch.ops.segops.<name>."""
    return torch.library.register_fake(f"segops::{name}")
