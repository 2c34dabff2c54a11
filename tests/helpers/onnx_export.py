"""ONNX export helpers for tests/deploy/: export with segops.onnx's translation table, check
that a model uses standard ONNX operators only, run it in onnxruntime, and compare with
eager (indices and bools equal, floats within 1e-5 relative, bool masks of thresholded
floats outside the rounding band). Imported as ``helpers.onnx_export``."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch

import segops
import segops.onnx
from helpers.deploy import Wrap

FLOAT_TOL = dict(rtol=1e-5, atol=0)  # relative: a mask's 1e-4 background counts too
STANDARD_DOMAINS = ("", "ai.onnx")


def _cache_torchlib_registry() -> None:
    """Test speed only: torch.onnx.export rebuilds its registry of torchlib translations
    (about 500 functions, parsed from source: 1-2 s) on every call. Build it once per opset
    and hand each export a copy (fresh lists, so that the custom translations one export
    registers do not leak into the next). Exports are unchanged otherwise."""
    from torch.onnx._internal.exporter import _registration

    cls = _registration.ONNXRegistry
    if getattr(cls, "_segops_cached", False):
        return
    build = cls.from_torchlib.__func__
    built: dict = {}

    def from_torchlib(klass, *args, **kwargs):
        key = (args, tuple(sorted(kwargs.items())))
        if key not in built:
            built[key] = build(klass, *args, **kwargs)
        copy = klass()
        copy._opset_version = built[key]._opset_version
        copy.functions = {k: list(v) for k, v in built[key].functions.items()}
        return copy

    cls.from_torchlib = classmethod(from_torchlib)
    cls._segops_cached = True


_cache_torchlib_registry()


def export(fn, args: tuple, dynamic=None, opset: int | None = None) -> onnx.ModelProto:
    """`fn(*args)` exported by torch.onnx's dynamo exporter with segops' translations
    (`dynamic`: torch.export dynamic shapes of the arguments, or None)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            Wrap(fn), args, dynamo=True, verbose=False, opset_version=opset,
            dynamic_shapes=None if dynamic is None else (dynamic,),
            custom_translation_table=segops.onnx.translation_table())
    return program.model_proto


def _nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g)
            for g in attr.graphs:
                yield from _nodes(g)


def operators(model: onnx.ModelProto) -> set[tuple[str, str]]:
    """(domain, op_type) of every node, subgraphs and local functions included."""
    ops = {(n.domain, n.op_type) for n in _nodes(model.graph)}
    for f in model.functions:
        ops.add((f.domain, f.name))
        ops |= {(n.domain, n.op_type) for n in f.node}
    return ops


def assert_standard(model: onnx.ModelProto) -> list[str]:
    """Every operator is in the default ONNX domain (no custom domain, no local function)
    and the model passes onnx's checker. Returns the sorted operator names."""
    ops = operators(model)
    custom = sorted(f"{d}::{t}" for d, t in ops if d not in STANDARD_DOMAINS)
    assert not custom, f"non-standard operators: {custom}"
    assert len(model.functions) == 0, [f.name for f in model.functions]
    assert {o.domain for o in model.opset_import} <= set(STANDARD_DOMAINS), model.opset_import
    onnx.checker.check_model(model, full_check=True)
    return sorted(t for _, t in ops)


class Runner:
    """An onnxruntime session of a model; called with the eager function's arguments."""

    def __init__(self, model: onnx.ModelProto) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(model.SerializeToString(), opts,
                                            providers=["CPUExecutionProvider"])

    def __call__(self, *args) -> tuple[torch.Tensor, ...]:
        flat = [t for a in args for t in (a if isinstance(a, (list, tuple)) else [a])]
        inputs = self.session.get_inputs()
        assert len(inputs) == len(flat), (len(inputs), len(flat))
        feeds = {i.name: np.ascontiguousarray(t.numpy()) for i, t in zip(inputs, flat)}
        return tuple(torch.from_numpy(np.asarray(o)) for o in self.session.run(None, feeds))


def as_tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def compare(actual: tuple, expected: tuple, float_tol: dict = FLOAT_TOL) -> float:
    """Integer and bool outputs equal, float outputs close; returns the largest relative
    difference of the floats (0 when none)."""
    assert len(actual) == len(expected)
    worst = 0.0
    for a, e in zip(actual, expected):
        assert a.shape == e.shape and a.dtype == e.dtype, (a.shape, e.shape, a.dtype, e.dtype)
        if e.is_floating_point():
            torch.testing.assert_close(a, e, equal_nan=True, **float_tol)
            ok = torch.isfinite(e) & (e != 0)
            if ok.any():
                worst = max(worst, float(((a - e).abs()[ok] / e.abs()[ok]).max()))
        else:
            assert torch.equal(a, e), f"{(a != e).sum()} elements differ"
    return worst
