#!/usr/bin/env bash
# The CPU kernels under AddressSanitizer + UndefinedBehaviorSanitizer, halting at the first
# report: a copy of the sources is built in place (build/sanitize) with
# SEGOPS_SANITIZE=address,undefined and the op tests run against it (the registry's contract
# suite, bad-input table included, and the family tests), the sanitizer runtimes preloaded into
# Python. CI runs it; PYTHON is a Python with torch and the test requirements.
#   bash tools/check_sanitizers.sh [pytest arguments, default: tests/ops]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
case $PYTHON in */*) PYTHON=$(realpath -s "$PYTHON") ;; esac  # absolute: the build runs elsewhere
CXX=${CXX:-g++}
DIR=build/sanitize
rm -rf "$DIR" && mkdir -p "$DIR"
cp -r setup.py pyproject.toml csrc segops tests "$DIR"/
rm -f "$DIR"/segops/_C*.so
(cd "$DIR" && SEGOPS_SANITIZE=address,undefined MAX_JOBS=${MAX_JOBS:-2} \
  "$PYTHON" setup.py build_ext --inplace >build.log 2>&1) || { tail -40 "$DIR/build.log"; exit 1; }
# libstdc++ too: ASan's __cxa_throw interceptor must resolve it before torch throws.
preload="$("$CXX" -print-file-name=libasan.so) $("$CXX" -print-file-name=libubsan.so)"
preload="$preload $("$CXX" -print-file-name=libstdc++.so)"
cd "$DIR"
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(tests/ops)
LD_PRELOAD="$preload" \
ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1:detect_odr_violation=0 \
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
PYTHONPATH="$PWD" "$PYTHON" -m pytest -q -p no:cacheprovider -x "${args[@]}"
