"""Builds segops._C: C++ always; CUDA too when torch has CUDA and a toolkit is found.

segops is compiled against the torch that will run it, so torch is not a build requirement
in pyproject.toml: install torch first, then build without isolation
(`pip install --no-build-isolation segops`, or `-e .` in a checkout). Metadata-only steps
(`python -m build --sdist`, egg_info) need no torch.

Environment:
  SEGOPS_DISABLE_CUDA=1   CPU-only build even with a CUDA torch.
  CUDA_HOME               the toolkit (must contain include/cuda_runtime_api.h).
  TORCH_CUDA_ARCH_LIST    GPU archs; defaults to the visible GPU, else DEFAULT_ARCHS.
  MAX_JOBS                parallel compile jobs (ninja).
  SEGOPS_SANITIZE         e.g. address,undefined: a sanitizer build (tools/check_sanitizers.sh).
"""

import glob
import os
import sys

from setuptools import setup

# Commands that compile the extension (and so need torch); others only write metadata.
_BUILD_COMMANDS = {"build", "build_ext", "bdist_wheel", "install", "develop", "editable_wheel"}
try:
    import torch
    from torch.utils import cpp_extension
except ImportError:
    if _BUILD_COMMANDS & set(sys.argv[1:]):
        raise SystemExit(
            "segops: building the extension needs torch, and the torch that will run segops: "
            "install torch first, then build without build isolation, e.g. "
            "`pip install --no-build-isolation segops` (or `pip install --no-build-isolation "
            "-e .` in a source checkout)."
        ) from None
    torch = None

DEFAULT_ARCHS = "7.5;8.0;8.6;8.9;9.0+PTX"
ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")  # every #include in csrc is rooted here


def want_cuda() -> bool:
    if os.environ.get("SEGOPS_DISABLE_CUDA", "0") not in ("", "0"):
        return False
    if torch.version.cuda is None:
        return False
    home = cpp_extension.CUDA_HOME
    if home is None:
        print("segops: torch has CUDA but no CUDA toolkit was found; building CPU only")
        return False
    if not os.path.exists(os.path.join(home, "include", "cuda_runtime_api.h")):
        raise RuntimeError(
            f"segops: CUDA_HOME={home} has no include/cuda_runtime_api.h. If `nvcc` on PATH "
            "is a wrapper script, point CUDA_HOME at the real toolkit, e.g. "
            "`export CUDA_HOME=/usr/local/cuda`, or set SEGOPS_DISABLE_CUDA=1."
        )
    return True


def extension():
    rel = lambda pattern: sorted(  # noqa: E731
        os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern))
    )
    # csrc/<family>/: checks.cpp and cpu.cpp always; cuda.cpp (glue) and *.cu with CUDA.
    family = [s for s in rel("csrc/*/*.cpp") if os.path.basename(s) != "cuda.cpp"]
    sources = rel("csrc/*.cpp") + family
    # -fno-trapping-math lets GCC if-convert (and so vectorise) float selects; it assumes FP
    # exceptions are masked, as they are under PyTorch, and changes no value.
    # -fopenmp at compile time only: ATen's at::parallel_for is header-inline OpenMP, serial
    # without it. Not at link time: the GOMP symbols then resolve to the libgomp that torch
    # itself loads, so torch.set_num_threads governs segops' threads too (one runtime).
    # -ffp-contract=off: no fused multiply-adds, as nvcc's --fmad=false, so that the math
    # shared through csrc/common rounds identically on CPU and CUDA.
    cxx = ["-O3", "-g0", "-fno-trapping-math", "-ffp-contract=off"]
    link = []
    sanitize = os.environ.get("SEGOPS_SANITIZE", "")  # e.g. address,undefined (tools/)
    if sanitize:
        flags = [f"-fsanitize={sanitize}", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
        cxx = ["-O1", "-g", "-fno-trapping-math", "-ffp-contract=off", *flags]
        link = flags
    if torch.backends.openmp.is_available():
        cxx.append("-fopenmp")
    # No -std here: torch's own flags pick it (C++17 for torch 2.11, C++20 for 2.13).
    # The torch version compiled against, as character codes (any character is safe on a
    # compiler command line that way); csrc/segops.cpp embeds it in segops._C.
    version_defines = [
        "-DSEGOPS_TORCH_VERSION_CHARS=" + ",".join(str(ord(c)) for c in torch.__version__)
    ]
    if not want_cuda():
        return cpp_extension.CppExtension(
            "segops._C", sources, include_dirs=[CSRC],
            extra_compile_args={"cxx": cxx + version_defines}, extra_link_args=link,
        )
    if "TORCH_CUDA_ARCH_LIST" not in os.environ and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or ";".join(
        "%d.%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())
    )
    # The arch list travels as a shell-safe token (ninja runs the compiler through a shell,
    # where ';' and quotes would break the command); csrc/segops.cpp stringifies it.
    token = ",".join(a for a in archs.replace(";", " ").replace(",", " ").split() if a)
    defines = [*version_defines, "-DSEGOPS_WITH_CUDA", f"-DSEGOPS_CUDA_ARCHS={token}"]
    # --fmad=false: the shared geometry (box corners, bins, sample positions) must round
    # exactly as on the CPU, or CUDA and CPU could disagree on a sample count.
    # The kernels need no defines (and nvcc would split the arch token at its commas).
    nvcc = ["-O3", "--fmad=false", "--expt-relaxed-constexpr"]
    return cpp_extension.CUDAExtension(
        "segops._C",
        sources + rel("csrc/*/cuda.cpp") + rel("csrc/*/*.cu"),
        include_dirs=[CSRC],
        extra_compile_args={"cxx": cxx + defines, "nvcc": nvcc},
    )


setup(
    packages=["segops", "segops.ops", "segops.reference", "segops.models", "segops.onnx"],
    package_dir={"segops": "segops", "segops.models": "models"},
    ext_modules=[extension()] if torch is not None else [],
    cmdclass=(
        {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}
        if torch is not None
        else {}
    ),
)
