#!/usr/bin/env bash
# Compile-check every CUDA source without a GPU or a CUDA build of torch (used by CI).
#  * csrc/<family>/*.cu: torch-free kernels, compiled by nvcc for $SEGOPS_CHECK_ARCH (sm_90) with
#    the flags torch's CUDAExtension adds (no implicit half conversions) plus setup.py's.
#  * csrc/<family>/cuda.cpp and csrc/segops.cpp with SEGOPS_WITH_CUDA: torch glue, syntax-checked
#    by the host compiler against the installed torch's headers with
#    -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE (a CPU torch ships no CUDA cmake config header).
# Any compile error fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
NVCC=${NVCC:-nvcc}
CXX=${CXX:-g++}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
ARCH=${SEGOPS_CHECK_ARCH:-sm_90}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

torch_cuda_flags="-D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
  -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__"
n=0
for f in csrc/*/*.cu; do
  echo "nvcc -arch=$ARCH  $f"
  # shellcheck disable=SC2086
  "$NVCC" -c -arch="$ARCH" -std=c++17 -O3 --fmad=false --expt-relaxed-constexpr \
    $torch_cuda_flags -Werror all-warnings -Icsrc -o "$tmp/${f//\//_}.o" "$f"
  n=$((n + 1))
done

mapfile -t includes < <("$PYTHON" - <<'PY'
import sysconfig
from torch.utils import cpp_extension
# -isystem: warnings inside torch's headers are not ours to fail on.
for p in cpp_extension.include_paths() + [sysconfig.get_paths()["include"]]:
    print("-isystem")
    print(p)
PY
)
for f in csrc/*/cuda.cpp csrc/segops.cpp; do
  echo "$CXX -fsyntax-only  $f"
  "$CXX" -fsyntax-only -std=c++20 -Wall -Werror -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE \
    -DSEGOPS_WITH_CUDA -DSEGOPS_CUDA_ARCHS=8.0,9.0+PTX -Icsrc "${includes[@]}" -I"$CUDA_HOME/include" "$f"
  n=$((n + 1))
done
echo "check_cuda: $n CUDA sources compiled cleanly"
