#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The GPU-machine workflow in one command (see docs/development.md): configure and build with every core, run
# the gpu and host tests (a missing GPU is a failure here, not a skip), the PyTorch parity suite, the
# benchmarks briefly, and print a summary table last. Logs and JSON results go to $OUT (or out/ locally).
#   tools/gpu-check.sh [--no-bench] [--bench-filter REGEX] [--tests-only] [--bench-only] [--build-only]
# QPROB_PYTEST="tests/torch/test_engine_parity.py" runs only those parity files (default: all of tests/torch).
# QPROB_BUILD_TARGETS="qprob_cli bench_gemv" builds only those targets (with --build-only: a partial run whose
# next commands use build/gpu directly).
# Engine parity (tests/torch/test_engine_parity.py) needs make_family_models.py's random models (about 3.6 GB in
# build/family_models, about 60 s on one core): the missing ones are built in the background while the C++ build
# runs, and a warm machine keeps them. QPROB_ENGINE_FAMILIES="opt-125m,bloom-560m" restricts the set.
# The HellaSwag scoring benchmark (bench_scoring and bench/hellaswag_transformers.py, each building a random
# Llama-2-7B on the GPU: about 1 min together) runs when bench/configs/llama-2-7b.json and
# .shared/requests/llama2-hellaswag-400.json exist. Wall-time budget on the H100: build 1-2 min, ctest and the
# parity suites 3-4 min, benchmarks 1-2 min: under 9 min cold.
set -uo pipefail
cd "$(dirname "$0")/.."
# Everything is written to a work folder; $OUT (what comes back from the GPU machine: at most 8 files) gets
# only summary.txt, ctest.log, ctest.xml, pytest.log, bench.json (Google Benchmark JSON of every bench_* plus
# hellaswag_transformers), engine_parity.json (written by the parity suite) and, if the build failed, build.log.
out="${OUT:-out}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d /tmp/gpu-check.XXXXXX)"
run_bench=1
run_tests=1
build_only=0
bench_filter="."
while [ $# -gt 0 ]; do
  case "$1" in
    --no-bench) run_bench=0 ;;
    --tests-only) run_bench=0 ;;
    --bench-only) run_tests=0 ;;
    --build-only) run_tests=0; run_bench=0; build_only=1 ;;
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

family_dir="${QPROB_FAMILY_MODELS_DIR:-$PWD/build/family_models}"
family_pid=""
trap '[ -n "$family_pid" ] && kill "$family_pid" 2>/dev/null' EXIT
if [ "$run_tests" = 1 ] && [ -f tests/torch/test_engine_parity.py ]; then
  # Replaces itself (execv) with make_family_models.py for the missing families, so family_pid is the builder.
  python3 - "$family_dir" > "$work/family_models.log" 2>&1 <<'PY' &
import os, sys
sys.path.insert(0, "tests/torch")
import make_family_models as m
wanted = [f for f in os.environ.get("QPROB_ENGINE_FAMILIES", "").split(",") if f] or list(m.FAMILIES)
missing = [f for f in wanted if not os.path.isfile(os.path.join(sys.argv[1], f, "qprob_manifest.json"))]
if missing:
    os.execv(sys.executable, [sys.executable, "tests/torch/make_family_models.py", "--out", sys.argv[1],
                              "--families", *missing])
PY
  family_pid=$!
fi
extra=()
# The tokenizer's development packages, if tools/stage-gpu.sh --debs packed them into .debs/: unpacked (not
# installed) into the work folder, their pkg-config files pointed there, their libraries on the loader path.
if [ -f .debs/tokenizer-root.tar.xz ]; then
  debroot="$work/debroot"
  mkdir -p "$debroot"
  tar -C "$debroot" -xJf .debs/tokenizer-root.tar.xz
  for pc in "$debroot"/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc "$debroot"/usr/share/pkgconfig/*.pc; do
    # ICU writes "prefix = /usr" (spaces) and no -L in Libs, hence the looser pattern and LIBRARY_PATH.
    [ -f "$pc" ] && sed -i -E "s#^prefix *= */usr\$#prefix=$debroot/usr#" "$pc"
  done
  export PKG_CONFIG_PATH="$debroot/usr/lib/x86_64-linux-gnu/pkgconfig:$debroot/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  export LD_LIBRARY_PATH="$debroot/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LIBRARY_PATH="$debroot/usr/lib/x86_64-linux-gnu${LIBRARY_PATH:+:$LIBRARY_PATH}"
  echo "gpu-check: tokenizer packages unpacked from .debs/tokenizer-root.tar.xz"
fi
# Tokenizer tests need PCRE2/ICU development files, which the GPU machine may lack (see .debs above); they are
# host tests and run in CI, so here they are optional.
extra+=(-DQPROB_REQUIRE_TOKENIZER_DEPS=OFF)
# QPROB_TEST_AREAS="core;policy;quant" restricts the build to some test areas.
[ -n "${QPROB_TEST_AREAS:-}" ] && extra+=("-DQPROB_TEST_AREAS=${QPROB_TEST_AREAS}")
if ! cmake --preset "$preset" "${extra[@]}" > "$work/build.log" 2>&1; then
  cp "$work/build.log" "$out/"; tail -40 "$work/build.log"; echo "gpu-check: configure FAILED"; exit 1
fi
targets=()
[ -n "${QPROB_BUILD_TARGETS:-}" ] && targets=(--target ${QPROB_BUILD_TARGETS})
if ! cmake --build --preset "$preset" -j "$jobs" "${targets[@]}" >> "$work/build.log" 2>&1; then
  cp "$work/build.log" "$out/"; grep -E "error|Error" -A3 "$work/build.log" | head -60; echo "gpu-check: build FAILED"; exit 1
fi
build_s=$(( $(date +%s) - start ))
if [ "$build_only" = 1 ]; then
  echo "gpu-check: built in ${build_s} s${QPROB_BUILD_TARGETS:+ (targets: $QPROB_BUILD_TARGETS)}"; exit 0
fi

ctest_status=0
if [ "$run_tests" = 1 ]; then
  ctest --preset "$preset" -j 8 --output-junit "$out/ctest.xml" > "$out/ctest.log" 2>&1 || ctest_status=$?
  grep -E "tests passed|tests failed" "$out/ctest.log" | tail -1
  grep -A200 "The following tests FAILED" "$out/ctest.log" | head -40
  if [ -n "$family_pid" ]; then
    wait "$family_pid" || { echo "gpu-check: make_family_models.py failed (the parity suite retries):"; tail -5 "$work/family_models.log"; }
    family_pid=""
  fi
  if [ -d tests/torch ] && ls tests/torch/test_*.py >/dev/null 2>&1; then
    # OUT: the engine parity suite writes engine_parity.json there.
    QPROB_BUILD_DIR="$PWD/build/$preset" QPROB_FAMILY_MODELS_DIR="$family_dir" OUT="$out" PYTHONUNBUFFERED=1 \
      python3 -m pytest -q -rA -s ${QPROB_PYTEST:-tests/torch} --junitxml="$work/pytest.xml" > "$out/pytest.log" 2>&1 || ctest_status=1
    tail -5 "$out/pytest.log"
  fi
fi

hs_requests="$PWD/.shared/requests/llama2-hellaswag-400.json"
hs_config="$PWD/bench/configs/llama-2-7b.json"
if [ "$run_bench" = 1 ]; then
  if [ -f "$hs_requests" ] && [ -f "$hs_config" ]; then
    export QPROB_BENCH_CONFIG="$hs_config" QPROB_BENCH_REQUESTS="$hs_requests"  # read by bench_scoring
  else
    echo "gpu-check: HellaSwag scoring benchmark skipped: $hs_requests or $hs_config missing"
  fi
  for b in build/$preset/bench/bench_*; do
    [ -x "$b" ] || continue
    name=$(basename "$b")
    "$b" --benchmark_filter="$bench_filter" --benchmark_min_time=0.1s --benchmark_out="$work/$name.json" \
      --benchmark_out_format=json > "$work/$name.log" 2>&1 || { echo "gpu-check: $name FAILED"; tail -20 "$work/$name.log"; ctest_status=1; }
  done
  # transformers on the same requests (the baseline of bench_scoring); the filter names it hellaswag_transformers.
  if [ -n "${QPROB_BENCH_REQUESTS:-}" ] && [[ "hellaswag_transformers scoring" =~ $bench_filter ]]; then
    if timeout 300 python3 bench/hellaswag_transformers.py --requests "$hs_requests" --config "$hs_config" \
        --out "$work/hellaswag_transformers.json" > "$work/hellaswag_transformers.log" 2>&1; then
      tail -1 "$work/hellaswag_transformers.log"
    else
      echo "gpu-check: hellaswag_transformers FAILED"; tail -20 "$work/hellaswag_transformers.log"; ctest_status=1
    fi
  fi
fi

python3 tools/gpu_summary.py "$work" --junit "$out/ctest.xml" --merge-bench "$out/bench.json" \
  --engine-parity "$out/engine_parity.json" --hellaswag-transformers "$work/hellaswag_transformers.json" \
  --build-seconds "$build_s" | tee "$out/summary.txt"
exit "$ctest_status"
