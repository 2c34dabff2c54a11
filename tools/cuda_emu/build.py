"""Build segops' CUDA kernels and glue for the CPU emulator (tools/cuda_emu).

The CUDA sources of every family (csrc/<family>/*.cu and the glue csrc/<family>/cuda.cpp)
are compiled with g++ against the shim headers in ``include/``:
``.cu`` files get their ``kernel<<<grid, block, shared, stream>>>(args)`` launches rewritten
to ``cuda_emu::launch(...)`` and ``extern __shared__`` arrays pointed at the emulator's
dynamic shared memory; the glue's ``TORCH_LIBRARY_IMPL(segops, CUDA, m)`` registers on CPU
instead, and everything is compiled with ``-Dsegops=segops_emu``, so the ops appear as
``torch.ops.segops_emu.*`` next to the real ``torch.ops.segops.*`` and take CPU tensors.

    python tools/cuda_emu/build.py        # build (incremental) and print the op list
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
BUILD = ROOT / "build" / "cuda_emu"

_LAUNCH = re.compile(
    r"([A-Za-z_][\w:]*(?:<[^;{}()]*?>)?)\s*<<<(.*?)>>>\s*\((\s*\))?", re.S
)
_EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+([\w:][\w:\s]*?)\s+(\w+)\s*\[\s*\]\s*;")
_IMPL = "TORCH_LIBRARY_IMPL(segops, CUDA, m)"


_SYNC_PRIMITIVES = ("__syncthreads", "__ballot_sync")
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_FUNCTION_HEAD = re.compile(r"\b(?:__global__|__device__)\b")
_NAME_BEFORE_PAREN = re.compile(r"(~?\w+|operator\s*\(\s*\)|operator\s*[\w\s]+?)\s*\(")


def _function_bodies(text: str) -> dict[str, str]:
    """Name -> body of every __global__ / __device__ function defined in `text` (bodies of
    same-named functions concatenated). Enough C++ for segops' kernels: a function's body is the
    brace-matched block after its qualifier; declarations (`;` first) have none."""
    text = _COMMENT.sub("", text)
    bodies: dict[str, str] = {}
    for head in _FUNCTION_HEAD.finditer(text):
        open_brace, semicolon = text.find("{", head.end()), text.find(";", head.end())
        if open_brace < 0 or (0 <= semicolon < open_brace):
            continue
        signature = re.sub(r"__launch_bounds__\s*\([^)]*\)", "", text[head.end():open_brace])
        names = [m.group(1) for m in _NAME_BEFORE_PAREN.finditer(signature)]
        if not names:
            continue
        depth, i = 0, open_brace
        while True:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                break
            i += 1
        name = names[0].split()[-1] if not names[0].startswith("operator") else "operator()"
        bodies[name] = bodies.get(name, "") + text[open_brace : i + 1]
    return bodies


def synchronising_functions(texts: list[str]) -> set[str]:
    """Names of the device functions that reach a barrier or warp vote, directly or through
    a call (by name, to a fixed point): their kernels run as fibers, the others directly."""
    bodies: dict[str, str] = {}
    for text in texts:
        for name, body in _function_bodies(text).items():
            bodies[name] = bodies.get(name, "") + body
    sync = {n for n, b in bodies.items() if any(p in b for p in _SYNC_PRIMITIVES)}
    while True:
        more = {
            n for n, b in bodies.items()
            if n not in sync and any(re.search(rf"\b{re.escape(s)}\s*[<(]", b) for s in sync)
        }
        if not more:
            return sync
        sync |= more


def _launcher(sync: set[str]):
    def launch(m: re.Match) -> str:
        kernel = m.group(1)
        mode = "true" if kernel.split("<")[0].split("::")[-1] in sync else "false"
        name = " ".join(kernel.split())  # the kernel as written, for the op call's trace
        head = (f"::cuda_emu::launch<{mode}>(::cuda_emu::config({m.group(2)}), "
                f"\"{name}\", {kernel}")
        return head + ")" if m.group(3) else head + ", "

    return launch


def translate_kernel_source(text: str, sync: set[str]) -> str:
    """A .cu file as C++ for the emulator; `sync`: the kernels that need fibers."""
    text = _EXTERN_SHARED.sub(
        r"\1* \2 = static_cast<\1*>(::cuda_emu::dynamic_shared());", text
    )
    return _LAUNCH.sub(_launcher(sync), text)


def translate_glue_source(text: str) -> str:
    """A CUDA glue .cpp as C++ registering its kernels for CPU tensors."""
    if _IMPL not in text:
        raise RuntimeError(f"glue source without `{_IMPL}`")
    return text.replace(_IMPL, "TORCH_LIBRARY_IMPL(segops, CPU, m)")


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def generate() -> list[str]:
    """Writes the translated sources under build/cuda_emu/src; returns every source.

    Each is named <family>_<file>.emu.cpp (JIT builds name objects by file name alone) and
    includes as the real build does, from csrc/.
    """
    out = BUILD / "src"
    out.mkdir(parents=True, exist_ok=True)
    sources = [str(HERE / "runtime.cpp"), str(HERE / "trace.cpp")]
    kernels = sorted(CSRC.glob("*/*.cu")) + [HERE / "selftest.cu"]
    sync = synchronising_functions(
        [p.read_text() for p in kernels + sorted(CSRC.glob("*/*.cuh"))]
    )
    for src in kernels + sorted(CSRC.glob("*/cuda.cpp")):
        text = src.read_text()
        if src.suffix == ".cu":
            text = translate_kernel_source(text, sync)
        else:
            text = translate_glue_source(text)
        dst = out / f"{src.parent.name}_{src.name}.emu.cpp"
        _write_if_changed(dst, f'#line 1 "{src}"\n' + text)
        sources.append(str(dst))
    # The schema and the shared argument checks, as they are (renamed by -Dsegops=segops_emu).
    sources.append(str(CSRC / "schema.cpp"))
    for src in sorted(CSRC.glob("*/checks.cpp")):
        dst = out / f"{src.parent.name}_checks.emu.cpp"
        _write_if_changed(dst, f'#include "{src.parent.name}/checks.cpp"\n')
        sources.append(str(dst))
    return sources


def load(verbose: bool = False):
    """Builds (incrementally) and imports the emulated module; registers torch.ops.segops_emu.

    With SEGOPS_CUDA_EMU_ASAN=1 the kernels and glue are built with AddressSanitizer (in
    build/cuda_emu_asan): an out-of-bounds access by any emulated thread is reported where it
    happens, as compute-sanitizer's memcheck would on a GPU. Python must then run with
    libasan and libstdc++ preloaded (see tools/cuda_emu/README.md).
    """
    from torch.utils.cpp_extension import load as load_extension

    asan = os.environ.get("SEGOPS_CUDA_EMU_ASAN", "") not in ("", "0")
    sources = generate()
    flags = ["-O2", "-g0", "-fno-trapping-math", "-ffp-contract=off", "-Dsegops=segops_emu"]
    if asan:
        flags += ["-fsanitize=address", "-fno-omit-frame-pointer"]
    build_dir = BUILD.with_name("cuda_emu_asan") if asan else BUILD
    build_dir.mkdir(parents=True, exist_ok=True)
    # Greedy NMS chunks its mask at 2^24 words on a GPU (n > 32768 boxes): at 2^8 words here
    # (set_nms_mask_budget_words) every test with more than 128 boxes runs several chunks.
    flags.append("-DSEGOPS_NMS_MASK_BUDGET_WORDS=CUDA_EMU_NMS_MASK_BUDGET_WORDS")
    return load_extension(
        name="segops_cuda_emu",
        sources=sources,
        extra_include_paths=[str(HERE / "include"), str(CSRC)],
        extra_cflags=flags,
        extra_ldflags=["-fsanitize=address"] if asan else [],
        build_directory=str(build_dir),
        verbose=verbose,
    )


if __name__ == "__main__":
    os.environ.setdefault("MAX_JOBS", "2")
    module = load(verbose="-v" in sys.argv)
    import torch

    print(module.__file__)
    print(sorted(n for n in dir(torch.ops.segops_emu) if not n.startswith("__")))
