#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# qprob_gpu_guard.sh COMMAND [ARGS...]: runs the command when nvidia-smi sees a GPU; otherwise exits 77 (ctest:
# skipped, the reason printed), or fails when QPROB_REQUIRE_GPU=1 (the GPU machine), like the doctest GPU tests
# (tests/main_gpu.cpp). Prefix of the driver ctests that need a GPU (examples/CMakeLists.txt).
if ! nvidia-smi -L >/dev/null 2>&1; then
  if [ "${QPROB_REQUIRE_GPU:-}" = 1 ]; then
    echo "qprob-fail: QPROB_REQUIRE_GPU=1 but no GPU (nvidia-smi -L failed)"
    exit 1
  fi
  echo "qprob-skip: no GPU (nvidia-smi -L failed)"
  exit 77
fi
exec "$@"
