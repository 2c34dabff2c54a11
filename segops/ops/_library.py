"""What the per-family op modules share: the Python-side registrations of their ops (fake,
autocast, and the autograd rule of ops that are not differentiable). Argument handling is in
``segops/_args.py``; value checks are the C++ kernels' own (``csrc/<family>/checks.h``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

_HALF = (torch.float16, torch.bfloat16)

# Library handle for the Python-side registrations (autocast) of every family.
_lib = torch.library.Library("segops", "IMPL")


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


def _same_device(name: str, args: tuple) -> None:
    """Every tensor argument of a segops op is on one device: the C++ kernels check it, and
    so must the fake (meta) kernels, which run instead of them for meta and fake tensors."""
    schema = getattr(torch.ops.segops, name).default._schema
    first = None
    for arg, value in zip(schema.arguments, args):
        values = value if isinstance(value, (list, tuple)) else [value]
        for i, t in enumerate(values):
            if not isinstance(t, Tensor):
                continue
            label = arg.name if values is not value else f"{arg.name}[{i}]"
            if first is None:
                first = (label, t.device)
            elif t.device != first[1]:
                raise ValueError(f"{name}: `{label}` must be on the device of `{first[0]}` "
                                 f"({first[1]}), got {t.device}")


def fake(name: str) -> Callable:
    """Decorator: register a fake (meta) implementation for torch.ops.segops.<name>, behind
    the device check every segops kernel makes."""

    def register(fn: Callable) -> Callable:
        def checked(*args, **kwargs):
            _same_device(name, args)
            return fn(*args, **kwargs)

        torch.library.register_fake(f"segops::{name}")(checked)
        return fn

    return register


def non_differentiable(*names: str) -> None:
    """Registers ops whose outputs do not require grad, whatever their inputs: suppression,
    thresholding, pasting, clustering and cropping are not differentiated through in segops.
    (Without this, torch's fallback returns outputs that require grad and whose backward
    silently yields no gradient.)"""
    for name in names:

        def setup(ctx, inputs, output):
            outputs = output if isinstance(output, (tuple, list)) else (output,)
            ctx.mark_non_differentiable(*[o for o in outputs if isinstance(o, Tensor)])

        def backward(ctx, *grads, _name=name):
            raise RuntimeError(f"segops::{_name} is not differentiable")

        torch.library.register_autograd(f"segops::{name}", backward, setup_context=setup)
