#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs qprob's build and test dependencies from Debian/Ubuntu packages (needs root or sudo). The CUDA 13
# toolkit (nvcc, CCCL, cuBLAS, cuSOLVER) is expected to be installed already; this script checks for it.
set -euo pipefail

packages=(
  cmake ninja-build g++ python3 git pkg-config
  doctest-dev            # tests
  libboost-dev libboost-math-dev   # statistics (Student t, normal, chi-squared ...)
  nlohmann-json3-dev     # config.json, safetensors headers, tokenizer.json, results
  libcli11-dev           # command-line drivers
  libbenchmark-dev       # bench/ (GPU machine)
  libpcre2-dev libicu-dev libsentencepiece-dev   # qprob::tokenizer (Unicode regex, normalization, SentencePiece)
  zlib1g-dev             # gzip calibration corpora (.jsonl.gz)
  libcairo2-dev fonts-dejavu-core   # report figures (PNG; SVG is written directly)
  chromium               # the report test screenshots report.html headlessly
)

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  sudo_cmd=(sudo)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "install-deps: all packages present"
fi

if ! command -v nvcc >/dev/null 2>&1 && [ ! -x /usr/local/cuda/bin/nvcc ]; then
  echo "install-deps: nvcc not found. Install the CUDA 13 toolkit, or configure the host-only build with" >&2
  echo "              cmake --preset host (no GPU code)." >&2
  exit 1
fi
