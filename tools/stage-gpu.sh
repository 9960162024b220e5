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
want_tokenizers=0
want_debs=0
for a in "$@"; do
  case "$a" in
    --tokenizers) want_tokenizers=1 ;;
    --debs) want_debs=1 ;;
    *) echo "stage-gpu: unknown option $a (--tokenizers, --debs)" >&2; exit 2 ;;
  esac
done
if [ "$want_tokenizers" = 1 ]; then
  copy "$shared/tokenizers" .shared/tokenizers
elif [ "$want_debs" = 1 ]; then
  # The Llama-2 tokenizer (2 MB) for tools/gpu-compare-7b.sh's random 7B-shaped model; GPT-2's files (5 MB) and
  # stories260K's tokenizer.json (0.6 MB) for tools/gpu-task-agreement.sh; with their reference encodings
  # (0.4-0.6 MB each), so that the tokenizer tests on these folders run there too.
  for t in llama2-32k-legacy gpt2 stories260K-legacy; do
    mkdir -p ".shared/tokenizers/$t"
    for f in tokenizer.json vocab.json merges.txt reference_encodings.jsonl; do
      [ -f "$shared/tokenizers/$t/$f" ] && cp "$shared/tokenizers/$t/$f" ".shared/tokenizers/$t/"
    done
  done
fi
# --debs: the tokenizer's development packages (PCRE2, ICU, SentencePiece), unpacked here (dpkg -x, no install),
# pruned of static libraries, programs and docs, and packed as .debs/tokenizer-root.tar.xz (~11 MB), which
# tools/gpu-check.sh unpacks on the GPU machine so that qprob::tokenizer, the eval drivers and `qprob compare`
# build there too. Name .debs in `carry` as well.
if [ "$want_debs" = 1 ]; then
  rm -rf .debs && mkdir -p .debs/pkgs .debs/root
  (cd .debs/pkgs && apt-get download libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 \
      libicu-dev libicu72 libsentencepiece-dev libsentencepiece0 libprotobuf-lite32 >/dev/null 2>&1) \
    || { echo "stage-gpu: apt-get download failed" >&2; exit 1; }
  for f in .debs/pkgs/*.deb; do dpkg -x "$f" .debs/root; done
  find .debs/root -name '*.a' -delete
  rm -rf .debs/root/usr/share/doc .debs/root/usr/share/man .debs/root/usr/bin .debs/root/usr/sbin .debs/root/usr/share/icu
  tar -C .debs/root -cJf .debs/tokenizer-root.tar.xz .
  rm -rf .debs/pkgs .debs/root
  du -sh .debs | sed 's/^/stage-gpu: /'
fi
copy /usr/include/nlohmann .deps/include/nlohmann

# Requests as token ids (the GPU machine may lack the tokenizer's PCRE2/ICU): made here with the host-built
# qprob-eval-<task> --write-requests (build/ci or build/host; tools/check.sh builds it).
eval_bin=""
for d in build/ci build/host build/dev; do
  [ -x "$d/examples/qprob-eval-hellaswag" ] && { eval_bin="$d/examples"; break; }
done
if [ -n "$eval_bin" ]; then
  mkdir -p .shared/requests
  for task in arc_easy boolq hellaswag openbookqa piqa xstorycloze_en; do
    "$eval_bin/qprob-eval-$task" --model "$shared/models/stories260K" --data "$shared/data" --limit 200 \
      --write-requests ".shared/requests/stories260K-$task.json" > /dev/null
  done
  "$eval_bin/qprob-eval-hellaswag" --model "$shared/tokenizers/llama2-32k-legacy" --data "$shared/data" --limit 400 \
    --write-requests .shared/requests/llama2-hellaswag-400.json > /dev/null
  echo "stage-gpu: requests in .shared/requests: $(ls .shared/requests | tr '\n' ' ')"
else
  echo "stage-gpu: no host build with qprob-eval-* found; .shared/requests not made (run tools/check.sh first)" >&2
fi
du -sh .shared .deps | sed 's/^/stage-gpu: /'
