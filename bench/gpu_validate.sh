#!/usr/bin/env bash
# GPU validation in one command, for a machine with an NVIDIA GPU: build pydl there, run
# the whole test suite on CUDA tensors, run the benchmark sweep against PyTorch, and put
# everything in one results folder. Each step ends well inside 10 minutes on an H100
# (16 cores), so steps can be run one per call where commands are time-limited.
#
#   bench/gpu_validate.sh STEP [OUTDIR]
#     STEP:   build | test | bench | all
#     OUTDIR: default $OUT if set, else bench/results/<date>_<gpu>_<commit>
#   Extra bench arguments: BENCH_ARGS="--op relu --dtype bf16" bench/gpu_validate.sh bench
#
# Writes: build.log, pytest.txt (summary), junit.xml, results.json, table.md, env.json.
# Plots are drawn afterwards from results.json: python -m bench.report --plots OUTDIR
set -euo pipefail
cd "$(dirname "$0")/.."
step=${1:-all}
PY=${PYTHON:-python3}
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr ' ' '-' || echo gpu)
out=${2:-${OUT:-bench/results/$(date +%F)_${gpu}_$(git rev-parse --short HEAD 2>/dev/null || echo nocommit)}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} PYDL_BUILD_CUDA=1

build() {
  local t=$SECONDS
  $PY -m pip install --no-build-isolation -e . > "$out/build.log" 2>&1 || { tail -50 "$out/build.log"; exit 1; }
  $PY -m pydl info | tee -a "$out/build.log"
  echo "build: $((SECONDS - t)) s"
}

tests() {
  local t=$SECONDS
  set +e
  $PY -m pytest -q -p no:cacheprovider --junitxml="$out/junit.xml" ${PYTEST_ARGS:-} > "$out/pytest_full.txt" 2>&1
  local rc=$?
  set -e
  # the summary that is committed: failures, skips with reasons, the closing line
  grep -E "^(FAILED|ERROR|SKIPPED)|passed|failed" "$out/pytest_full.txt" > "$out/pytest.txt" || true
  tail -5 "$out/pytest.txt"
  echo "tests: rc=$rc, $((SECONDS - t)) s"
  return 0
}

bench() {
  local t=$SECONDS
  $PY -m bench --out "$out" --no-plots ${BENCH_ARGS:-} > "$out/bench_log.txt" 2>&1 || true
  tail -40 "$out/bench_log.txt"
  echo "bench: $((SECONDS - t)) s"
}

case "$step" in
  build) build ;;
  test) tests ;;
  bench) bench ;;
  all) build; tests; bench ;;
  *) echo "usage: $0 build|test|bench|all [OUTDIR]" >&2; exit 2 ;;
esac
echo "results in $out"
