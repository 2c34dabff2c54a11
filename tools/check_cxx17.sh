#!/usr/bin/env bash
# Syntax-check every C++ source (CPU kernels, checks, CUDA glue) as C++17 against another
# torch's headers: torch 2.11 compiles extensions as C++17, 2.13 as C++20, and segops must
# build under both. The torch need not import (a CUDA wheel without its NVIDIA libraries
# will do): only its include/ folder is read.
#   bash tools/check_cxx17.sh /path/to/site-packages/torch/include
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:?usage: tools/check_cxx17.sh TORCH_INCLUDE_DIR}
PYTHON=${PYTHON:-python3}
CXX=${CXX:-g++}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
py_include=$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
common=(-std=c++17 -fsyntax-only -Wall -Werror -isystem "$T" -isystem
        "$T/torch/csrc/api/include" -isystem "$py_include" -Icsrc)
n=0
for f in csrc/*.cpp csrc/*/checks.cpp csrc/*/cpu*.cpp; do
  echo "$CXX -std=c++17 $f"
  "$CXX" "${common[@]}" -fopenmp "$f"
  n=$((n + 1))
done
for f in csrc/*/cuda.cpp csrc/segops.cpp; do
  echo "$CXX -std=c++17 -DSEGOPS_WITH_CUDA $f"
  "$CXX" "${common[@]}" -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE -DSEGOPS_WITH_CUDA \
    -DSEGOPS_CUDA_ARCHS=9.0 -isystem "$CUDA_HOME/include" "$f"
  n=$((n + 1))
done
echo "check_cxx17: $n sources are valid C++17 against $T"
