"""The contract every public op must keep, driven by the op registry (tests/helpers/opinfo):
the dtype sweep against the reference, determinism, thread safety, opcheck, fake (meta)
shapes, torch.compile(fullgraph=True), gradcheck or outputs that do not require grad, the
bad-input table (each error also raised by the raw torch.ops.segops call where the C++
checks raise it), and CPU == CUDA. Family test files keep only what is specific to their ops.
"""

from __future__ import annotations

import re
import threading

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

import segops
from helpers.opinfo import (
    BY_NAME, FULL_DTYPES, OPS, Sample, assert_same_bits, compare_outputs, flat,
)


class Capture(TorchDispatchMode):
    """Records every torch.ops.segops call (op, args, kwargs) made inside it."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "segops":
            self.calls.append((func, args, kwargs))
        return func(*args, **kwargs)


def _call(op, sample: Sample):
    return op.func(*sample.args, **sample.kwargs)


def _params(dtypes=None, with_samples=True, predicate=lambda op, s: True):
    params = []
    for op in OPS:
        samples = op.samples("cpu", torch.float32)
        for dtype in dtypes or [None]:
            if dtype is not None and dtype not in op.dtypes:
                continue
            for i, s in enumerate(samples if with_samples else samples[:1]):
                if predicate(op, s):
                    suffix = f"-{str(dtype).split('.')[-1]}" if dtype is not None else ""
                    params.append(pytest.param(op.name, i, dtype,
                                               id=f"{op.name}-{s.label}{suffix}"))
    return params


def test_every_public_op_has_a_registry_entry():
    families = [getattr(segops.ops, f) for f in segops.ops.FAMILIES]
    public = {n for m in families for n in m.__all__ if n[0].islower()}  # functions, not modules
    assert public == set(BY_NAME), public ^ set(BY_NAME)
    assert public <= set(segops.__all__)
    families = {op.family for op in OPS}
    assert families == set(segops.ops.FAMILIES)


# ---- the dtype sweep, determinism, thread safety ----


@pytest.mark.parametrize("name,index,dtype", _params(dtypes=list(OPS[0].dtypes)))
def test_dtype_sweep_against_the_reference(name, index, dtype, device):
    op = BY_NAME[name]
    sample = op.samples(device, dtype)[index]
    out = _call(op, sample)
    for o in flat(out):
        assert o.device.type == device
        if o.is_floating_point():
            # float outputs are in the input's dtype, or the accumulation dtype (scores)
            assert o.dtype in (dtype, torch.float32, torch.float64)
    cpu = op.samples("cpu", dtype if dtype in FULL_DTYPES else torch.float32)[index]
    expected = op.ref(*cpu.args, **cpu.kwargs)
    if dtype in FULL_DTYPES:
        compare_outputs(op, sample, out, expected)
    else:  # half types: the reference of the float32 problem has the same shapes
        assert [o.shape for o in flat(out)] == [e.shape for e in flat(expected)]
    assert any(o.numel() > 0 for o in flat(out)) or "empty" in sample.label or "no-" in \
        sample.label or "nothing" in sample.label


@pytest.mark.parametrize("name,index,dtype", _params())
def test_deterministic_run_to_run(name, index, dtype, device):
    op = BY_NAME[name]
    sample = op.samples(device, torch.float32)[index]
    assert_same_bits(_call(op, sample), _call(op, sample), name)


@pytest.mark.parametrize("name", [op.name for op in OPS])
def test_threads_calling_at_once_get_the_single_thread_bits(name, device):
    op = BY_NAME[name]
    samples = op.samples(device, torch.float32)
    expected = [_call(op, s) for s in samples]
    results, errors = {}, []

    def worker(k):
        try:
            for _ in range(3):
                for i, s in enumerate(samples):
                    results[(k, i)] = _call(op, s)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for (k, i), out in results.items():
        assert_same_bits(out, expected[i], f"{name} thread {k} sample {i}")


# ---- opcheck and fake shapes, on the raw calls each public call makes ----


def _raw_calls(op, sample):
    with Capture() as capture:
        _call(op, sample)
    assert capture.calls, f"{op.name}: no torch.ops.segops call was made"
    return capture.calls


@pytest.mark.parametrize("name,index,dtype", _params(dtypes=[torch.float32, torch.bfloat16]))
def test_opcheck(name, index, dtype, device):
    op = BY_NAME[name]
    for func, args, kwargs in _raw_calls(op, op.samples(device, dtype)[index]):
        torch.library.opcheck(func, args, kwargs)


@pytest.mark.parametrize("name,index,dtype", _params())
def test_fake_kernels_give_the_real_shapes(name, index, dtype, device):
    op = BY_NAME[name]
    for func, args, kwargs in _raw_calls(op, op.samples(device, torch.float32)[index]):
        real = func(*args, **kwargs)
        with FakeTensorMode(shape_env=ShapeEnv()) as mode:
            fake_args = tree_map(
                lambda a: mode.from_tensor(a) if isinstance(a, torch.Tensor) else a, args)
            fake = func(*fake_args, **kwargs)
        for r, f in zip(flat(real), flat(fake)):
            assert r.dtype == f.dtype and r.device == f.device, func
            for rs, fs in zip(r.shape, f.shape):
                if isinstance(fs, int):  # a data-dependent size is symbolic
                    assert rs == fs, f"{func}: real {list(r.shape)}, fake {list(f.shape)}"


@pytest.mark.no_cuda_emu  # dynamo does not trace under the emulator's dispatch mode
@pytest.mark.parametrize("name,index,dtype",
                         _params(predicate=lambda op, s: s.fullgraph))
def test_compiles_fullgraph(name, index, dtype, device):
    op = BY_NAME[name]
    sample = op.samples(device, torch.float32)[index]
    torch._dynamo.reset()
    compiled = torch.compile(op.func, fullgraph=True, backend="aot_eager")
    assert_same_bits(compiled(*sample.args, **sample.kwargs), _call(op, sample), name)
    torch._dynamo.reset()


# ---- gradients ----


@pytest.mark.parametrize("name", [op.name for op in OPS if op.differentiable])
def test_gradcheck(name, device):
    for fn, inputs in BY_NAME[name].grad(device, torch.float64):
        assert torch.autograd.gradcheck(fn, inputs, fast_mode=False)
        assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("name,index,dtype",
                         _params(predicate=lambda op, s: not op.differentiable))
def test_outputs_of_non_differentiable_ops_do_not_require_grad(name, index, dtype, device):
    op = BY_NAME[name]
    sample = op.samples(device, torch.float64)[index]
    grad_args = tree_map(lambda a: a.detach().requires_grad_() if isinstance(a, torch.Tensor)
                         and a.is_floating_point() else a, sample.args)
    out = op.func(*grad_args, **sample.kwargs)
    assert not any(o.requires_grad for o in flat(out))


# ---- bad input ----


def _bad_params():
    return [pytest.param(op.name, i, id=f"{op.name}-{case.label}")
            for op in OPS for i, case in enumerate(op.all_bad())]


@pytest.mark.parametrize("name,index", _bad_params())
def test_bad_input(name, index):
    op = BY_NAME[name]
    case = op.all_bad()[index]
    args, kwargs = case.make("cpu")
    capture = Capture()
    with pytest.raises(case.exc, match=case.match) as info:
        with capture:
            op.func(*args, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{name}: ") or re.match(r"\w+: ", message), message
    if capture.calls:  # raised by the op's own checks: the raw call raises the same
        func, raw_args, raw_kwargs = capture.calls[-1]
        with pytest.raises(type(info.value)) as raw:
            func(*raw_args, **raw_kwargs)
        assert str(raw.value) == message
    else:  # raised by the Python wrapper: a type, or a conversion it makes itself
        assert info.type is TypeError or "must be one of" in message or \
            "must be positive" in message or "`grid`" in message or "`extent`" in message \
            or "(or None)" in message or "fit in int64" in message or "boxes[" in message \
            or "spatial_scales" in message, message


# ---- CPU == CUDA ----


@pytest.mark.cuda
@pytest.mark.parametrize("name,index,dtype", _params(dtypes=[torch.float32, torch.float16]))
def test_cpu_equals_cuda(name, index, dtype):
    op = BY_NAME[name]
    cpu, cuda = op.samples("cpu", dtype)[index], op.samples("cuda", dtype)[index]
    assert_same_bits(_call(op, cuda), _call(op, cpu), name)
