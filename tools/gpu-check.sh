#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The GPU-machine workflow in one command (see docs/development.md): configure and build with every core, run
# the gpu and host tests (a missing GPU is a failure here, not a skip), the PyTorch parity suite, the
# benchmarks briefly, and print a summary table last. Logs and JSON results go to $OUT (or out/ locally).
#   tools/gpu-check.sh [--no-bench] [--bench-filter REGEX] [--tests-only]
set -uo pipefail
cd "$(dirname "$0")/.."
# Everything is written to a work folder; $OUT (what comes back from the GPU machine: at most 8 files) gets
# only summary.txt, ctest.log, ctest.xml, pytest.log, bench.json and, if the build failed, build.log.
out="${OUT:-out}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d /tmp/gpu-check.XXXXXX)"
run_bench=1
run_tests=1
bench_filter="."
while [ $# -gt 0 ]; do
  case "$1" in
    --no-bench) run_bench=0 ;;
    --tests-only) run_bench=0 ;;
    --bench-only) run_tests=0 ;;
    --bench-filter) bench_filter="$2"; shift ;;
    *) echo "gpu-check: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
export PATH="/usr/local/cuda/bin:$PATH"
export QPROB_REQUIRE_GPU=1
[ -d .shared ] && export QPROB_SHARED_DIR="$PWD/.shared"
jobs="$(nproc)"
preset=gpu
start=$(date +%s)

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$work/gpu.txt"
extra=()
# Tokenizer tests need PCRE2/ICU development files, which the GPU machine may lack; they are host tests and
# run in CI, so here they are optional.
extra+=(-DQPROB_REQUIRE_TOKENIZER_DEPS=OFF)
# QPROB_TEST_AREAS="core;policy;quant" restricts the build to some test areas.
[ -n "${QPROB_TEST_AREAS:-}" ] && extra+=("-DQPROB_TEST_AREAS=${QPROB_TEST_AREAS}")
if ! cmake --preset "$preset" "${extra[@]}" > "$work/build.log" 2>&1; then
  cp "$work/build.log" "$out/"; tail -40 "$work/build.log"; echo "gpu-check: configure FAILED"; exit 1
fi
if ! cmake --build --preset "$preset" -j "$jobs" >> "$work/build.log" 2>&1; then
  cp "$work/build.log" "$out/"; grep -E "error|Error" -A3 "$work/build.log" | head -60; echo "gpu-check: build FAILED"; exit 1
fi
build_s=$(( $(date +%s) - start ))

ctest_status=0
if [ "$run_tests" = 1 ]; then
  ctest --preset "$preset" -j 8 --output-junit "$out/ctest.xml" > "$out/ctest.log" 2>&1 || ctest_status=$?
  grep -E "tests passed|tests failed" "$out/ctest.log" | tail -1
  grep -A200 "The following tests FAILED" "$out/ctest.log" | head -40
  if [ -d tests/torch ] && ls tests/torch/test_*.py >/dev/null 2>&1; then
    QPROB_BUILD_DIR="$PWD/build/$preset" PYTHONUNBUFFERED=1 python3 -m pytest -q -rA -s tests/torch \
      --junitxml="$work/pytest.xml" > "$out/pytest.log" 2>&1 || ctest_status=1
    tail -5 "$out/pytest.log"
  fi
fi

if [ "$run_bench" = 1 ]; then
  for b in build/$preset/bench/bench_*; do
    [ -x "$b" ] || continue
    name=$(basename "$b")
    "$b" --benchmark_filter="$bench_filter" --benchmark_min_time=0.1s --benchmark_out="$work/$name.json" \
      --benchmark_out_format=json > "$work/$name.log" 2>&1 || { echo "gpu-check: $name FAILED"; tail -20 "$work/$name.log"; ctest_status=1; }
  done
fi

python3 tools/gpu_summary.py "$work" --junit "$out/ctest.xml" --merge-bench "$out/bench.json" \
  --build-seconds "$build_s" | tee "$out/summary.txt"
exit "$ctest_status"
