"""Building blocks of the ONNX translations: dtypes, constants, masks of finite rows,
padding to a capacity. Every function here is called while the torch.onnx exporter traces
a translation (onnxscript's tracing evaluator records the ops), on ONNX IR values."""

from __future__ import annotations

import numpy as np
from onnxscript import ir
from onnxscript import evaluator
from onnxscript import opset18 as op

FLOAT = ir.DataType.FLOAT
DOUBLE = ir.DataType.DOUBLE
INT64 = ir.DataType.INT64
BOOL = ir.DataType.BOOL
HALF = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
INT64_MAX = np.iinfo(np.int64).max


class UnsupportedExportError(RuntimeError):
    """A segops op (or one of its argument combinations) that segops.onnx cannot express
    with standard ONNX operators. The message names the op and the reason."""


def opset_version() -> int:
    """The default-domain opset of the model being exported (torch.onnx's is 20 unless
    `opset_version=` says otherwise)."""
    tracer = evaluator.default()
    opset = getattr(tracer, "opset", None)
    return int(getattr(opset, "version", 18))


def compute_dtype(*values: ir.Value) -> ir.DataType:
    """float64 if any value is float64, else float32 (segops' geometry/accumulation rule)."""
    return DOUBLE if any(v.dtype == DOUBLE for v in values) else FLOAT


def to(value: ir.Value, dtype: ir.DataType) -> ir.Value:
    """`value` cast to `dtype` (no op when its dtype is known to be `dtype` already: the
    exporter types the op's inputs, not the values built while translating it)."""
    return value if value.dtype == dtype else op.Cast(value, to=dtype)


def const(value, dtype: ir.DataType) -> ir.Value:
    """A constant tensor of `dtype` (a scalar for a Python number)."""
    return op.Constant(value=ir.tensor(np.asarray(value, dtype=dtype.numpy())))


def ints(*values: int) -> ir.Value:
    return const(list(values), INT64)


def col(x: ir.Value, i: int) -> ir.Value:
    """Column `i` of a 2-D tensor, as 1-D."""
    return op.Gather(x, const(i, INT64), axis=1)


def finite_rows(x: ir.Value, dtype: ir.DataType) -> ir.Value:
    """bool [K]: row k of `x [K, D]` (of `dtype`) has no NaN or infinite entry (x - x is 0
    exactly for finite x, NaN otherwise; a NaN sum is not equal to 0)."""
    return op.Equal(op.ReduceSum(op.Sub(x, x), ints(1), keepdims=0), const(0, dtype))


def length(x: ir.Value) -> ir.Value:
    """int64 [1]: the length of the first axis of `x`."""
    return op.Shape(x, start=0, end=1)


def first_n(x: ir.Value, n: ir.Value) -> ir.Value:
    """The first `min(n, len)` rows of `x` (`n`: int64 [1])."""
    return op.Slice(x, ints(0), n, ints(0))


def pad_to(x: ir.Value, capacity: ir.Value, fill: float | int, dtype: ir.DataType) -> ir.Value:
    """`x [M, ...]` of `dtype` (M <= capacity) padded with `fill` to `capacity` rows
    (int64 [1])."""
    missing = op.Sub(capacity, length(x))
    rest = op.Concat(missing, op.Shape(x, start=1), axis=0)
    return op.Concat(x, op.Expand(const(fill, dtype), rest), axis=0)


def scalar(n: ir.Value) -> ir.Value:
    """int64 [1] -> int64 []."""
    return op.Squeeze(n, ints(0))


def arange(n: ir.Value, dtype: ir.DataType) -> ir.Value:
    """0, 1, ..., n - 1 in `dtype` (`n`: int64 [1] or [])."""
    return op.Cast(op.Range(const(0, INT64), scalar(n) if _is_1d(n) else n, const(1, INT64)),
                   to=dtype)


def _is_1d(v: ir.Value) -> bool:
    return v.shape is not None and len(v.shape) == 1


def largest_float32_not_above(t: float) -> np.float32:
    """The largest float32 f <= t: for every float32 x, ``x > f`` iff ``x > t`` (t compared
    exactly, as segops compares a float32 IoU with a Python float)."""
    f = np.float32(t)
    if float(f) > t:
        f = np.nextafter(f, np.float32(-np.inf))
    return f


def compare(fn, values: ir.Value, threshold: float, dtype: ir.DataType) -> ir.Value:
    """``fn(values, threshold)`` in `dtype`: both rounded to it (as a tensor comparison with
    a Python scalar rounds it); half types then compare exactly in float32, which
    onnxruntime implements everywhere."""
    v, t = to(values, dtype), const(threshold, dtype)
    if dtype in HALF:
        v, t = to(v, FLOAT), to(t, FLOAT)
    return fn(v, t)
