#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds qprob and runs the whole test suite: the command the README gives and CI runs.
#   tools/check.sh [preset]     preset: ci (default; CUDA build, GPU tests skip without a GPU) or host
# Prints ctest's summary, then every distinct reason a test was skipped, with how many tests it skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-ci}"
export PATH="/usr/local/cuda/bin:$PATH"
jobs="$(nproc)"

cmake --preset "$preset"
cmake --build --preset "$preset" -j "$jobs"
status=0
ctest --preset "$preset" -j "$jobs" || status=$?

log="build/$preset/Testing/Temporary/LastTest.log"
if [ -f "$log" ]; then
  reasons="$(grep -hoE '^(qprob-skip|skipped): .*' "$log" | sort | uniq -c | sort -rn || true)"
  if [ -n "$reasons" ]; then
    echo
    echo "Skipped tests and why (count, reason):"
    echo "$reasons"
  fi
fi
exit "$status"
