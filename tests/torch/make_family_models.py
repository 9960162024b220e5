#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Builds randomly initialised models of every family qprob maps, from the published configs (real widths, 1-2
layers), saves them with transformers' save_pretrained (safetensors), and writes a manifest per model listing
every saved tensor's name, dtype, shape and the sha256 of its raw bytes as stored in the file.

qprob_check_family_models (tests/torch/check_family_models.cpp) then loads each directory through qprob's reader,
config parser and name mapping and checks that every tensor is mapped and bit-identical to the manifest.

Run on the GPU machine (transformers 5.x + torch; no GPU needed for this step):
    python3 tests/torch/make_family_models.py --out build/family_models
    build/<dir>/tests/unit/model/qprob_check_family_models build/family_models
Disk: about 3.8 GB in total (the embeddings of the 7B configs dominate); --families limits the set.
"""
import argparse
import hashlib
import inspect
import json
import os
import struct
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM

# Published configs (Hugging Face hub), only num_hidden_layers reduced.
FAMILIES = {
    "opt-125m": dict(
        cls="OPTConfig", layers=2, dtype=torch.float32,
        config=dict(architectures=["OPTForCausalLM"], model_type="opt", _remove_final_layer_norm=False,
                    activation_function="relu", bos_token_id=2, do_layer_norm_before=True, eos_token_id=2,
                    ffn_dim=3072, hidden_size=768, max_position_embeddings=2048, num_attention_heads=12,
                    num_hidden_layers=12, pad_token_id=1, vocab_size=50272, word_embed_proj_dim=768,
                    enable_bias=True, layer_norm_elementwise_affine=True)),
    "opt-350m": dict(
        cls="OPTConfig", layers=2, dtype=torch.float16,
        config=dict(architectures=["OPTForCausalLM"], model_type="opt", _remove_final_layer_norm=False,
                    activation_function="relu", bos_token_id=2, do_layer_norm_before=False, eos_token_id=2,
                    ffn_dim=4096, hidden_size=1024, max_position_embeddings=2048, num_attention_heads=16,
                    num_hidden_layers=24, pad_token_id=1, vocab_size=50272, word_embed_proj_dim=512)),
    "bloom-560m": dict(
        cls="BloomConfig", layers=2, dtype=torch.bfloat16,
        config=dict(architectures=["BloomForCausalLM"], model_type="bloom",
                    apply_residual_connection_post_layernorm=False, bos_token_id=1, eos_token_id=2,
                    pad_token_id=3, hidden_size=1024, n_head=16, n_layer=24, layer_norm_epsilon=1e-5,
                    vocab_size=250880, slow_but_exact=False, pretraining_tp=1)),
    "mistral-7b": dict(
        cls="MistralConfig", layers=1, dtype=torch.bfloat16,
        config=dict(architectures=["MistralForCausalLM"], model_type="mistral", bos_token_id=1, eos_token_id=2,
                    hidden_act="silu", hidden_size=4096, intermediate_size=14336, max_position_embeddings=32768,
                    num_attention_heads=32, num_hidden_layers=32, num_key_value_heads=8, rms_norm_eps=1e-5,
                    rope_theta=10000.0, sliding_window=4096, tie_word_embeddings=False, vocab_size=32000)),
    "llama-2-7b": dict(
        cls="LlamaConfig", layers=1, dtype=torch.float16,
        config=dict(architectures=["LlamaForCausalLM"], model_type="llama", bos_token_id=1, eos_token_id=2,
                    hidden_act="silu", hidden_size=4096, intermediate_size=11008, max_position_embeddings=4096,
                    num_attention_heads=32, num_hidden_layers=32, num_key_value_heads=32, rms_norm_eps=1e-5,
                    rope_theta=10000.0, tie_word_embeddings=False, vocab_size=32000, pad_token_id=0)),
    "phi-2": dict(
        cls="PhiConfig", layers=1, dtype=torch.float16,
        config=dict(architectures=["PhiForCausalLM"], model_type="phi", bos_token_id=50256, eos_token_id=50256,
                    hidden_act="gelu_new", hidden_size=2560, intermediate_size=10240, layer_norm_eps=1e-5,
                    max_position_embeddings=2048, num_attention_heads=32, num_hidden_layers=32,
                    num_key_value_heads=32, partial_rotary_factor=0.4, qk_layernorm=False, rope_theta=10000.0,
                    tie_word_embeddings=False, vocab_size=51200)),
    "qwen2-0.5b": dict(
        cls="Qwen2Config", layers=2, dtype=torch.bfloat16,
        config=dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", bos_token_id=151643,
                    eos_token_id=151643, hidden_act="silu", hidden_size=896, intermediate_size=4864,
                    max_position_embeddings=131072, max_window_layers=24, num_attention_heads=14,
                    num_hidden_layers=24, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1000000.0,
                    sliding_window=131072, tie_word_embeddings=True, use_sliding_window=False,
                    vocab_size=151936)),
}

ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def read_safetensors_index(path):
    """Parses a safetensors header independently of qprob: {name: (dtype, shape, begin, end)} and data offset."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def build(name, spec, out_root, max_shard_size):
    torch.manual_seed(1234)
    cfg = dict(spec["config"])
    cfg["n_layer" if spec["cls"] == "BloomConfig" else "num_hidden_layers"] = spec["layers"]
    config = getattr(transformers, spec["cls"])(**cfg)
    model = AutoModelForCausalLM.from_config(config).to(spec["dtype"]).eval()
    out = os.path.join(out_root, name)
    os.makedirs(out, exist_ok=True)
    kwargs = {"max_shard_size": max_shard_size}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        kwargs["safe_serialization"] = True
    model.save_pretrained(out, **kwargs)

    files = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    state = model.state_dict()
    tensors = {}
    for fname in files:
        header, data_offset = read_safetensors_index(os.path.join(out, fname))
        with open(os.path.join(out, fname), "rb") as f:
            for tname, info in sorted(header.items()):
                begin, end = info["data_offsets"]
                f.seek(data_offset + begin)
                raw = f.read(end - begin)
                digest = hashlib.sha256(raw).hexdigest()
                # The bytes as saved must be the in-memory parameter (little-endian, row-major).
                param = state[tname].detach().contiguous().cpu()
                mem = hashlib.sha256(param.view(torch.uint8).numpy().tobytes()).hexdigest()
                if mem != digest:
                    raise SystemExit(f"{name}: {tname}: saved bytes differ from the parameter in memory")
                if info["dtype"] != ST_DTYPES[param.dtype] or info["shape"] != list(param.shape):
                    raise SystemExit(f"{name}: {tname}: header dtype/shape disagree with the parameter")
                tensors[tname] = {"dtype": info["dtype"], "shape": info["shape"], "sha256": digest, "file": fname}
    manifest = {
        "family": name,
        "model_type": cfg["model_type"],
        "num_hidden_layers": spec["layers"],
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "files": files,
        "tensors": tensors,
    }
    with open(os.path.join(out, "qprob_manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    size = sum(os.path.getsize(os.path.join(out, f)) for f in files)
    print(f"{name:12s} {len(tensors):4d} tensors in {len(files)} file(s), {size / 2**20:8.1f} MiB -> {out}")
    return size


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="build/family_models")
    ap.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--max-shard-size", default="400MB",
                    help="small enough that the 7B configs are saved sharded (tests the index path)")
    args = ap.parse_args()
    total = 0
    for name in args.families:
        total += build(name, FAMILIES[name], args.out, args.max_shard_size)
    print(f"total {total / 2**30:.2f} GiB")


if __name__ == "__main__":
    sys.exit(main())
