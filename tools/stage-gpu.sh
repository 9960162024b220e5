#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Run on the development machine before a GPU-machine run. The GPU machine has no network and sees only the
# repository, so this copies into ignored folders what it lacks:
#   .shared/  the parts of ../shared that GPU runs read (models, benchmark data; tokenizers with --tokenizers)
#   .deps/include/  header-only dependencies not installed there (nlohmann-json, from this machine's package)
# Name both in the device tool's `carry` list. Everything that travels must stay under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
shared="${QPROB_SHARED_DIR:-../shared}"
[ -d "$shared" ] || { echo "stage-gpu: $shared not found" >&2; exit 1; }

mkdir -p .shared .deps/include
copy() { rm -rf "$2" && cp -a "$1" "$2"; }
copy "$shared/models" .shared/models
copy "$shared/data" .shared/data
rm -rf .shared/tokenizers
if [ "${1:-}" = "--tokenizers" ]; then
  copy "$shared/tokenizers" .shared/tokenizers
fi
copy /usr/include/nlohmann .deps/include/nlohmann
du -sh .shared .deps | sed 's/^/stage-gpu: /'
