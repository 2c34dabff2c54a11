"""torch.export of every public op, exact-size and padded forms, strict and non-strict,
with dynamic sizes: the saved and reloaded ExportedProgram gives eager's results, on the
example inputs and on inputs of other sizes."""

from __future__ import annotations

import io

import pytest
import torch

from helpers.deploy import CASES, Wrap, assert_same

pytestmark = pytest.mark.no_cuda_emu


def _dynamic_shapes(case):
    return None if case.dynamic is None else (case.dynamic(),)  # forward(*args)


@pytest.mark.parametrize("strict", [False, True], ids=["nonstrict", "strict"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_export_roundtrip(case, strict):
    args = case.inputs(0)
    ep = torch.export.export(Wrap(case.fn), args, dynamic_shapes=_dynamic_shapes(case),
                             strict=strict)
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any(o.startswith("segops.") for o in ops), ops  # the op itself, not a fallback
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    buf.seek(0)
    loaded = torch.export.load(buf).module()
    for v in (0, 1) if case.dynamic is not None else (0,):
        args = case.inputs(v)
        expected = case.fn(*args)
        assert_same(loaded(*args), expected)
