"""Argument checks the references share (the same messages as the ops' own checks)."""

from __future__ import annotations

import torch
from torch import Tensor

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_tensor(t: object, op: str, name: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: `{name}` must be a Tensor, got {type(t).__name__}")
    return t


def check_float(t: object, op: str, name: str) -> Tensor:
    """A tensor of float32, float64, float16 or bfloat16."""
    check_tensor(t, op, name)
    if t.dtype not in FLOATS:
        raise TypeError(
            f"{op}: `{name}` must be float32, float64, float16 or bfloat16, got {t.dtype}")
    return t
