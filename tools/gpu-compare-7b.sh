#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The main job at real scale on the GPU machine (issue: "the full six-task comparison of a Llama-2-7B-shaped model
# completes; wall times per phase; goal < 10 minutes"): builds a random Llama-2-7B-shaped model directory with the
# Llama-2 tokenizer (tools/make_random_model.py, ~13 GB on disk, kept between runs on the same machine), then runs
# `qprob compare --device cuda` with the paper's GPTQ settings on all six tasks, full splits. Run after
# tools/gpu-check.sh has built build/gpu (with the tokenizer: stage with `tools/stage-gpu.sh --debs` and carry
# .shared, .deps and .debs). Writes compare7b.log and results.json to $OUT (or out/).
#   bash tools/gpu-compare-7b.sh [--limit N]
# QPROB_COMPARE_TIMEOUT=SECONDS stops the compare run after that long (its log, flushed line by line, still
# shows how far each phase got).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-out}"
mkdir -p "$out"
limit=()
[ "${1:-}" = "--limit" ] && limit=(--limit "$2")
cli=build/gpu/examples/qprob
if [ ! -x "$cli" ]; then
  echo "gpu-compare-7b: $cli not built (tools/gpu-check.sh builds it when the tokenizer libraries are available:"
  echo "  tools/stage-gpu.sh --debs here, carry .debs)"; exit 1
fi
if [ -f .debs/tokenizer-root.tar.xz ]; then  # the tokenizer's shared libraries, as gpu-check.sh unpacks them
  root="$(mktemp -d /tmp/debroot.XXXXXX)"
  tar -C "$root" -xJf .debs/tokenizer-root.tar.xz
  export LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
model=build/llama-2-7b-random
start=$(date +%s)
python3 tools/make_random_model.py --config bench/configs/llama-2-7b.json \
  --tokenizer .shared/tokenizers/llama2-32k-legacy --out "$model" 2>&1 | tail -3
build_s=$(( $(date +%s) - start ))
start=$(date +%s)
timeout -k 15 "${QPROB_COMPARE_TIMEOUT:-0}" "$cli" compare --device cuda --no-progress --no-report --model "$model" --data .shared/data \
  --tasks arc_easy,boolq,hellaswag,openbookqa,piqa,xstorycloze_en "${limit[@]}" \
  --quant gptq --bits 4 --group-size 128 --damp-percent 0.01 --nsamples 128 --seqlen 2048 --seed 0 \
  --out "$out/compare7b" > "$out/compare7b.log" 2>&1
rc=$?
job_s=$(( $(date +%s) - start ))
grep -E "requests in|quantized .* layers|error" "$out/compare7b.log" | head -30
[ -f "$out/compare7b/results.json" ] && cp "$out/compare7b/results.json" "$out/results.json"
rm -rf "$out/compare7b"  # keep $OUT small: results.json and the log come back
echo "gpu-compare-7b: model build ${build_s} s, compare ${job_s} s (goal < 600 s), exit status $rc"
exit $rc
