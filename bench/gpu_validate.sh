#!/usr/bin/env bash
# GPU validation in one command, for a machine with an NVIDIA GPU: build pydl there, run
# the whole test suite on CUDA tensors, run every kernel under compute-sanitizer, run the
# benchmark sweep against PyTorch, and put everything in one results folder.
#
#   bench/gpu_validate.sh STEP [OUTDIR]
#     STEP:   build | test | sanitize | bench | all (= the four, in that order)
#             | configs (after `all`, on the same warm machine: bench/conv_configs.py, each
#               Triton conv block configuration timed alone on a few ResNet-50 layers, CONF_S
#               default 150 s; with the build's pydl already installed)
#     OUTDIR: default bench/results/<date>_<gpu>_<commit>
#
# Sized for a short lease (a GPU session here has 15 minutes of device time, 10 per
# command): `all` fits one 10-minute command -- it aims to end by DEADLINE_S (default 570 s),
# each step has a wall-clock cap and ends cleanly at it, keeping what it got:
#   (build: ~2 min on 16 cores, uncapped)
#   TEST_S (default 190)   the whole pytest suite with CUDA, 12 pytest-xdist workers (the
#                          tests with >2^31-element tensors share one, so run one at a time);
#                          shrunk if the build ran long
#   SAN_S (default 100)    compute-sanitizer over tests/gpu_sanitize.py: memcheck (cuda +
#                          triton, half the time), racecheck and synccheck (cuda, float32)
#   WARM_S (default SAN_S) bench/warm_triton.py: the sweep's Triton kernels compiled ahead of
#                          it, 8 processes (in `all`: beside the sanitizer, which keeps one
#                          core busy; the sweep then finds them in Triton's on-disk cache)
#   HOST_S (default 40)    bench/host_overhead.py, host time per call vs torch's (cuda, triton)
#   BENCH_S (default 120)  the sweep's time budget (bench --budget-s); the conv forward rows
#                          first (the conv target is the geometric mean of the ResNet-50
#                          forward layers), then the training steps, then the conv backward;
#                          a slow row is timed for ~1.5 s (fewer repeats, at least 5);
#                          by default bf16, channels_last, ResNet-50 shapes (the
#                          layers the conv target is stated on; BENCH_ARGS replaces this); no
#                          torch.compile baseline unless COMPILE=1 (each case would compile its
#                          own graph: most of a short budget)
# Extra bench arguments: BENCH_ARGS="--op relu --dtype bf16"; pytest arguments: PYTEST_ARGS.
# With $OUT set (the device tool), everything is also packed into $OUT/results.tar.gz
# (that tool brings back at most 8 files) and the summaries are copied beside it.
#
# Writes: build.log, pytest.txt, junit.xml, sanitizer.txt, results.json, table.md,
# env.json, bench_log.txt, warm_log.txt, host_overhead_{cuda,triton}.{md,json}; configs:
# conv_configs.{md,json}.
# Back on the development machine:
#   tar xzf results.tar.gz -C bench/results/
#   python -m bench.report --plots bench/results/<folder> && python -m bench.report --readme
# With the device tool, the whole check is one call:
#   run(command="PYDL_COMMIT=<short hash> bash bench/gpu_validate.sh all", timeout_s=600)
set -uo pipefail
cd "$(dirname "$0")/.."
step=${1:-all}
PY=${PYTHON:-python3}
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr ' ' '-')
# PYDL_COMMIT names the commit (pass it from the development machine: a copied working tree
# may carry stale git metadata); else git's HEAD
export PYDL_COMMIT=${PYDL_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo nocommit)}
out=${2:-bench/results/$(date +%F)_${gpu:-gpu}_$PYDL_COMMIT}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} PYDL_BUILD_CUDA=1
TEST_S=${TEST_S:-190} SAN_S=${SAN_S:-100} BENCH_S=${BENCH_S:-120} HOST_S=${HOST_S:-40}
WARM_S=${WARM_S:-$SAN_S}
# the sweep's cases, and the ones it runs first (the conv target's forward layers)
SWEEP_ARGS=${BENCH_ARGS:---dtype bf16 --layout channels_last --shapes resnet50}
FIRST=conv2d:fwd,train_step,conv2d

build() {
  local t=$SECONDS
  if ! $PY -m pip install --no-build-isolation --no-deps -e . > "$out/build.log" 2>&1; then
    tail -50 "$out/build.log"; pack; exit 1
  fi
  $PY -m pydl info | tee -a "$out/build.log"
  echo "build: $((SECONDS - t)) s"
}

tests() {
  local t=$SECONDS par="" threads=""
  # tests spread one by one over 12 workers, except those marked xdist_group("big") (tensors
  # past 2^31 elements), which share one worker so two never hold GPU memory at once. One
  # OpenMP thread each (tests/conftest.py threads_per_worker; the env var reaches the
  # subprocesses tests start): torch's default, one per core in each of 12 processes, spins
  # at every parallel region's barrier -- ~11 s a test in the first GPU run
  $PY -c "import xdist" 2>/dev/null && par="-n 12 --dist loadgroup" threads="OMP_NUM_THREADS=1"
  # SIGINT at the cap: pytest stops, still prints its summary and writes junit.xml.
  # Order (tests/conftest.py gpu_run_rank): CUDA C++ on CUDA tensors, then Triton on CUDA
  # tensors (their JIT compiles are slow the first time), then the CPU tests CI already runs
  env $threads PYDL_TEST_TRITON_LAST=1 timeout -s INT -k 20 "$TEST_S" $PY -m pytest -q -rfEs --tb=short -p no:cacheprovider $par \
    --junitxml="$out/junit.xml" ${PYTEST_ARGS:-} > "$out/pytest.txt" 2>&1
  local rc=$?
  grep -E "^(FAILED|ERROR)|passed|failed" "$out/pytest.txt" | tail -15
  echo "tests: rc=$rc (124/130: stopped at the ${TEST_S} s cap), $((SECONDS - t)) s"
}

sanitize() {
  local t=$SECONDS cs
  cs=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
  : > "$out/sanitizer.txt"
  if [ -z "$cs" ]; then echo "compute-sanitizer not found" | tee "$out/sanitizer.txt"; return; fi
  # memcheck (every kernel, both backends, f32 + bf16) gets half the time; racecheck and
  # synccheck (CUDA C++ kernels, f32) a quarter each
  for spec in "memcheck cuda,triton 2" "racecheck cuda,--quick 4" "synccheck cuda,--quick 4"; do
    set -- $spec
    local cap=$((SAN_S / $3)) backend=${2%%,--quick} extra=""
    [ "$backend" != "$2" ] && extra="--quick"
    echo "=== $1 ($backend $extra) ===" >> "$out/sanitizer.txt"
    # (4 OpenMP threads for its float64 CPU references: in `all` eight warm_triton.py
    # processes compile beside it, and torch's default 16 would spin against them)
    OMP_NUM_THREADS=4 timeout -k 10 "$cap" "$cs" --tool "$1" --print-limit 50 \
      $PY tests/gpu_sanitize.py --backend "$backend" $extra >> "$out/sanitizer.txt" 2>&1
    echo "=== $1: exit $? (124: stopped at the ${cap} s cap) ===" >> "$out/sanitizer.txt"
  done
  grep -E "^===|ERROR SUMMARY|checks passed" "$out/sanitizer.txt"
  echo "sanitize: $((SECONDS - t)) s"
}

warm() {
  local t=$SECONDS
  timeout -k 10 "$((WARM_S + 30))" $PY -m bench.warm_triton --budget-s "$WARM_S" --first $FIRST \
    $SWEEP_ARGS > "$out/warm_log.txt" 2>&1
  echo "warm: $(tail -1 "$out/warm_log.txt"), $((SECONDS - t)) s"
}

bench() {
  local t=$SECONDS b
  # the Triton compiles first, on all cores (unless `all` did it beside the sanitizer)
  [ "${WARMED:-0}" = 1 ] || warm
  # host time per call of each op against torch's (bench/host_overhead.py): first, it is
  # short. Triton gets the larger share: its first calls compile its kernels (the script
  # keeps every row it finished if the cap cuts it short)
  for b in "cuda 3" "triton 5"; do
    set -- $b
    timeout -k 5 "$((HOST_S * $2 / 8))" $PY bench/host_overhead.py --backend $1 --repeats 200 \
      --json "$out/host_overhead_$1.json" > "$out/host_overhead_$1.md" 2>&1
  done
  pack
  # the sweep checks its budget between cases only, and one case (a training step whose
  # Triton kernels autotune every layer) can run long: a hard cap at the deadline too, by
  # SIGINT, on which the sweep saves every row it finished
  local cap=$(( ${DEADLINE_S:-570} - SECONDS ))
  [ "$cap" -lt 30 ] && cap=30
  timeout -s INT -k 20 "$cap" \
    $PY -m bench --out "$out" --no-plots $([ "${COMPILE:-0}" = 1 ] || echo --no-compile) --first $FIRST --budget-s "$BENCH_S" \
    $SWEEP_ARGS > "$out/bench_log.txt" 2>&1
  tail -5 "$out/bench_log.txt"
  echo "bench: $((SECONDS - t)) s"
}

configs() {
  local t=$SECONDS
  $PY -c "import pydl._C" 2>/dev/null || build   # a fresh machine: build first
  timeout -k 10 "$((${CONF_S:-150} + 30))" $PY bench/conv_configs.py --budget-s "${CONF_S:-150}" \
    ${CONF_ARGS:-} --json "$out/conv_configs.json" > "$out/conv_configs.md" 2>&1
  tail -40 "$out/conv_configs.md"
  echo "configs: $((SECONDS - t)) s"
}

pack() {
  [ -n "${OUT:-}" ] || return 0
  tar czf "$OUT/results.tar.gz" -C "$(dirname "$out")" "$(basename "$out")"
  for f in pytest.txt sanitizer.txt table.md; do [ -f "$out/$f" ] && cp "$out/$f" "$OUT/"; done
  return 0
}

case "$step" in
  build) build ;;
  test) tests ;;
  sanitize) sanitize ;;
  bench) bench ;;
  configs) configs; pack ;;
  all)  # each step packs what exists so far: a command killed at its limit still returns it
    build; pack
    # the test cap shrinks if the build took long, so the whole run ends by DEADLINE_S
    left=$(( ${DEADLINE_S:-570} - SECONDS - SAN_S - BENCH_S - HOST_S - 30 ))
    [ "$left" -lt "$TEST_S" ] && TEST_S=$(( left > 60 ? left : 60 ))
    tests; pack
    # the sweep's Triton compiles on the cores the sanitizer leaves idle, done (or stopped
    # at WARM_S) before host_overhead.py times anything
    warm & warm_pid=$!
    sanitize; pack
    wait $warm_pid; WARMED=1 bench ;;
  *) echo "usage: $0 build|test|sanitize|bench|all|configs [OUTDIR]" >&2; exit 2 ;;
esac
pack
echo "results in $out"
