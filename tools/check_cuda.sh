#!/usr/bin/env bash
# Compile-check every CUDA source without a GPU or a CUDA build of torch (used by CI).
#  * csrc/<family>/*.cu: torch-free kernels, compiled by nvcc for $SEGOPS_CHECK_ARCH (sm_90) with
#    the flags torch's CUDAExtension adds (no implicit half conversions) plus setup.py's, and
#    -Xptxas -v: tools/ptxas_report.py turns the logs into a register / stack / spill table
#    of every kernel and fails on a spill outside its allow-list. SEGOPS_PTXAS_REPORT=FILE
#    keeps the table (docs/cost_model/ptxas_sm90.txt is the committed one).
#  * csrc/<family>/cuda.cpp and csrc/segops.cpp with SEGOPS_WITH_CUDA: torch glue, syntax-checked
#    by the host compiler against the installed torch's headers with
#    -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE (a CPU torch ships no CUDA cmake config header).
#  * tools/check_build_flags.py: the real setup.py CUDA build's compile commands, read back,
#    give every object --fmad=false / -ffp-contract=off and no fast-math flag.
# Any compile error, spill or missing flag fails the script.
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
mkdir -p "$tmp/ptxas"
for f in csrc/*/*.cu; do
  echo "nvcc -arch=$ARCH  $f"
  log="$tmp/ptxas/$(basename "$(dirname "$f")")_$(basename "$f").log"
  # shellcheck disable=SC2086
  if ! "$NVCC" -c -arch="$ARCH" -std=c++17 -O3 --fmad=false --expt-relaxed-constexpr \
      $torch_cuda_flags -Werror all-warnings -Xptxas -v -Icsrc -o "$tmp/${f//\//_}.o" "$f" \
      2>"$log"; then
    grep -v "^ptxas info\|bytes stack frame" "$log" >&2 || true
    exit 1
  fi
  n=$((n + 1))
done
"$PYTHON" tools/ptxas_report.py "$tmp"/ptxas/*.log --check \
  --header "ptxas -v, $ARCH, $("$NVCC" --version | tail -1) (tools/check_cuda.sh)" \
  --out "${SEGOPS_PTXAS_REPORT:-$tmp/ptxas.txt}"

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
CUDA_HOME="$CUDA_HOME" "$PYTHON" tools/check_build_flags.py
echo "check_cuda: $n CUDA sources compiled cleanly"
