#!/usr/bin/env bash
# Everything a GPU session runs (see README), in steps that each fit a device call of at most
# 10 minutes (the build stays on the warm machine between calls). Logs and results go to $OUT.
#
#   STEPS=build,tests bash tools/gpu_check.sh [pytest -k expression]
#
# Steps (default: all, in this order):
#   build      pip install -e . with CUDA (TORCH_CUDA_ARCH_LIST, default 9.0)
#   tests      the full test suite on the GPU (every test marked `cuda` runs)
#   large      greedy NMS above 32768 boxes (the multi-chunk path) and at 200k boxes, and
#              cluster_seeds on a large seed region, against the CPU (tests marked `large`)
#   graphs     every op's sync-free form under torch.cuda.set_sync_debug_mode("error"),
#              captured in a CUDA graph and replayed (tools/gpu_profile.py graphs)
#   profile    per op call: kernels launched and their GPU time, achieved bandwidth of the
#              inputs + outputs against 3 TB/s, peak memory (tools/gpu_profile.py profile);
#              read against docs/cost_model/
#   memcheck, racecheck, synccheck, initcheck
#              compute-sanitizer over the CUDA tests
#   bench      benchmarks/run.py (segops beside torchvision's CUDA rows where importable)
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
STEPS=${STEPS:-build,tests,large,graphs,profile,memcheck,racecheck,synccheck,initcheck,bench}
QUICK=${QUICK:-}  # QUICK=1: the --quick benchmark sizes for graphs / profile / bench
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
python -c "import torchvision, torchvision.ops; print('torchvision', torchvision.__version__)" \
  2>/dev/null | tee -a "$OUT/facts.txt" || echo "torchvision: not importable (no torchvision rows)"

if want tests; then
  step "tests ($(date +%T))"
  HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-dev} python -m pytest -q tests ${K:+-k "$K"} \
    2>&1 | tee "$OUT/tests.log" | tail -40 || status=1
fi

if want large; then
  step "large inputs ($(date +%T))"
  SEGOPS_LARGE=1 python -m pytest -q -m large tests ${K:+-k "$K"} 2>&1 |
    tee "$OUT/large.log" | tail -20 || status=1
fi

if want graphs; then
  step "sync-free forms: sync debug mode, CUDA-graph capture and replay ($(date +%T))"
  python tools/gpu_profile.py graphs ${QUICK:+--quick} ${K:+--filter "$K"} \
    --json "$OUT/graphs.json" >"$OUT/graphs.log" 2>&1 || status=1
  grep -c "graph ok" "$OUT/graphs.log" | sed 's/$/ op calls sync-free and replayed/'
  grep -E "FAILED|synchronises|differs|capture failed" "$OUT/graphs.log" | head -20
fi

if want profile; then
  step "profile: kernels, GPU time, bandwidth, peak memory per op call ($(date +%T))"
  python tools/gpu_profile.py profile ${QUICK:+--quick} ${K:+--filter "$K"} \
    --json "$OUT/profile.json" 2>&1 | grep -v "^USDT\|^STAGE" | tee "$OUT/profile.log" |
    tail -60 || status=1
fi

for tool in memcheck racecheck synccheck initcheck; do
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
  python benchmarks/run.py ${QUICK:+--quick} --json "$OUT/bench.json" --markdown "$OUT/bench.md" \
    2>&1 | tee "$OUT/bench.log" || status=1
fi

step "done ($(date +%T)), status $status"
exit $status
