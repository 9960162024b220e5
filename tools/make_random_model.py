#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes a Hugging Face model directory with random weights at a real shape, for end-to-end GPU runs of
`qprob compare --device cuda` and the drivers where no real checkpoint exists (issue: the six-task comparison of a
Llama-2-7B-shaped model, with wall times per phase).

    python3 tools/make_random_model.py --config bench/configs/llama-2-7b.json \
        --tokenizer .shared/tokenizers/llama2-32k-legacy --out build/llama-2-7b-random

The weights are transformers' own initialisation (normal, std = initializer_range) in the config's torch dtype
(fp16 for Llama-2), built directly on the GPU when one is present, saved with save_pretrained (safetensors,
shards of 2 GB); the tokenizer files are copied next to them (stage them with `tools/stage-gpu.sh --tokenizers`).
A model directory that already holds a complete checkpoint for the same config is kept (nothing is rewritten).
Disk: about 13 GB for the 7B shape. Needs torch and transformers (the GPU machine has both).
"""
import argparse
import json
import os
import shutil
import sys
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="config.json of the shape to build")
    ap.add_argument("--tokenizer", required=True, help="folder with the tokenizer files to copy next to the weights")
    ap.add_argument("--out", required=True, help="model directory to write")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if not os.path.isfile(args.config):
        sys.exit(f"make_random_model: {args.config}: no such config file")
    if not os.path.isdir(args.tokenizer):
        sys.exit(f"make_random_model: {args.tokenizer}: no such tokenizer folder "
                 f"(tools/stage-gpu.sh --tokenizers copies ../shared/tokenizers into .shared)")
    with open(args.config) as f:
        wanted = json.load(f)
    done_marker = os.path.join(args.out, "qprob_random_model.json")
    if os.path.isfile(done_marker):
        with open(done_marker) as f:
            if json.load(f).get("config") == wanted:
                print(f"make_random_model: {args.out} is complete for this config; kept")
                return

    t0 = time.time()
    torch.manual_seed(args.seed)
    config = AutoConfig.for_model(**wanted)
    dtype = getattr(torch, str(wanted.get("torch_dtype", "float16")).replace("torch.", ""))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    tmp = args.out + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, max_shard_size="2GB")
    for name in os.listdir(args.tokenizer):
        src = os.path.join(args.tokenizer, name)
        if os.path.isfile(src) and name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            shutil.copy2(src, os.path.join(tmp, name))
    with open(os.path.join(tmp, "qprob_random_model.json"), "w") as f:
        json.dump({"config": wanted, "seed": args.seed, "dtype": str(dtype), "built_on": device}, f, indent=1)
    shutil.rmtree(args.out, ignore_errors=True)
    os.replace(tmp, args.out)  # never a half-written model directory under the final name
    params = sum(p.numel() for p in model.parameters())
    print(f"make_random_model: {params / 1e9:.2f}B parameters ({dtype}) -> {args.out} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
