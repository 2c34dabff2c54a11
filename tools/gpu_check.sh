#!/usr/bin/env bash
# Everything a GPU session runs (see README): build with CUDA, the full test suite,
# compute-sanitizer (memcheck, racecheck) over the CUDA tests, and the benchmarks. Logs and
# results go to $OUT.
# Usage on the GPU machine:  STEPS=build,tests bash tools/gpu_check.sh [pytest -k expression]
# STEPS (default: all of build,tests,memcheck,racecheck,bench) splits the work over several
# device calls of at most 10 minutes each; the build stays on the warm machine between them.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/segops-gpu}
mkdir -p "$OUT"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
export PYTHONUNBUFFERED=1
SANITIZER="$CUDA_HOME/bin/compute-sanitizer"
K=${1:-}
STEPS=${STEPS:-build,tests,memcheck,racecheck,bench}
status=0
step() { echo; echo "== $*"; }
want() { [[ ",$STEPS," == *",$1,"* ]]; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"

if want build; then
  step "build ($(date +%T))"
  if ! pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
    tail -60 "$OUT/build.log"
    exit 1
  fi
fi
python -m segops | tee "$OUT/facts.txt"

if want tests; then
  step "tests ($(date +%T))"
  HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-dev} python -m pytest -q tests ${K:+-k "$K"} \
    2>&1 | tee "$OUT/tests.log" | tail -40 || status=1
fi

for tool in memcheck racecheck; do
  want "$tool" || continue
  step "compute-sanitizer $tool ($(date +%T))"
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 HYPOTHESIS_PROFILE=ci \
    "$SANITIZER" --tool "$tool" --error-exitcode 99 --print-limit 20 \
    python -m pytest -q -x -m cuda tests ${K:+-k "$K"} >"$OUT/sanitizer-$tool.log" 2>&1 ||
    status=1
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|passed|failed" "$OUT/sanitizer-$tool.log" | tail -5
done

if want bench; then
  step "benchmarks ($(date +%T))"
  python benchmarks/run.py --json "$OUT/bench.json" --markdown "$OUT/bench.md" 2>&1 |
    tee "$OUT/bench.log" || status=1
fi

step "done ($(date +%T)), status $status"
exit $status
