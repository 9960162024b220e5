#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Golden logits for the host reference forward pass (include/qprob/reference/forward.hpp), from transformers.

Writes, under --out (default tests/data/golden):
  stories260K_logits.safetensors  seq<i>.ids (int64) and seq<i>.logits (float64, [T, vocab]) for fixed sequences
  stories260K_logits.json         the sequences, and lm-eval loglikelihood requests (first ARC-Easy test items
                                  plus a trailing-space and an empty-context request): texts, the context and
                                  continuation ids transformers' tokenizer gives under lm-eval's encode-pair
                                  rules, and the summed / per-token log-probabilities and greedy flags
  tiny_<family>/                  with --families: a tiny randomly initialised model per family (config.json +
                                  model.safetensors, float32 weights) and golden.safetensors with its logits for
                                  one fixed sequence

Everything is computed on the CPU in float64. transformers keeps float32 islands even in a float64 model
(RMSNorm casts its input to float32, the RoPE tables are float32, eager attention's softmax runs in float32;
BLOOM's ALiBi slopes are float32), which limits agreement to about 1e-6. The golden values are therefore computed
with those islands lifted to float64: RMSNorm and rotary-embedding modules get a float64 forward, and
torch.nn.functional.softmax(dtype=float32) on a float64 input runs in float64. Everything else is transformers'
own code. The script also runs the unmodified model and prints (and stores in the JSON) the difference, which
must stay small (< 1e-3), so a broken patch cannot go unnoticed. The float64 inverse frequencies are computed
here from the formulas (default / linear / llama3) and checked against transformers' float32 ones (rtol 1e-6).

Run on the GPU machine (torch + transformers 5.x + safetensors; no GPU needed) from the repository root:
    python3 tests/torch/make_golden_logits.py --model .shared/models/stories260K \
        --arc .shared/data/arc_easy/ARC-Easy-Test.jsonl --out tests/data/golden --families
Exits non-zero on any problem.
"""
import argparse
import json
import math
import os
import sys
import types

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

DIFF_STOCK_LIMIT = 1e-3  # |float64-patched - stock| above this means the patch changed more than precision


def fail(msg):
    print(f"ERROR: {msg}", file=sys.stderr)
    sys.exit(1)


# ---- float64 patches -------------------------------------------------------------------------------------------

def rope_params(cfg: dict):
    """(theta, partial_rotary_factor, scaling dict) from a config.json dict, 4.x or 5.x spelling."""
    p = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = p.get("rope_theta", cfg.get("rope_theta", 10000.0))
    partial = p.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    return float(theta), float(partial), p


def inv_freq64(cfg: dict, head_dim: int):
    theta, partial, p = rope_params(cfg)
    dim = int(head_dim * partial)
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    kind = p.get("rope_type", p.get("type", "default"))
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / p["factor"]
    if kind == "llama3":
        factor, lo, hi = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
        old = p["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        out = torch.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        return torch.where(medium, smoothed, out)
    fail(f"rope type {kind} has no float64 formula here")


def patch_float64(model, cfg: dict):
    """Lifts transformers' float32 islands to float64 (see the module docstring). Returns the patched count."""
    n = 0
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg.get("num_attention_heads", cfg.get("n_head", 1))
    for mod in model.modules():
        name = type(mod).__name__
        if name.endswith("RMSNorm"):
            eps = getattr(mod, "variance_epsilon", getattr(mod, "eps", None))
            if eps is None:
                fail(f"{name} has no epsilon attribute")

            def rms_forward(self, x, _eps=eps):
                var = x.pow(2).mean(-1, keepdim=True)
                return self.weight * (x * torch.rsqrt(var + _eps))

            mod.forward = types.MethodType(rms_forward, mod)
            n += 1
        elif name.endswith("RotaryEmbedding"):
            inv64 = inv_freq64(cfg, head_dim)
            stock = mod.inv_freq.detach().to(torch.float64).cpu()
            if stock.shape != inv64.shape or not torch.allclose(stock, inv64, rtol=1e-6, atol=0):
                fail(f"{name}: float64 inverse frequencies disagree with transformers': {stock} vs {inv64}")
            scaling = float(getattr(mod, "attention_scaling", 1.0))

            def rope_forward(self, x, position_ids, _inv=inv64, _scaling=scaling):
                freqs = position_ids[..., None].to(torch.float64) * _inv.to(x.device)
                emb = torch.cat((freqs, freqs), dim=-1)
                return (emb.cos() * _scaling).to(x.dtype), (emb.sin() * _scaling).to(x.dtype)

            mod.forward = types.MethodType(rope_forward, mod)
            n += 1
    return n


class softmax_float64:
    """Within the block, softmax(x, dtype=float32) of a float64 x runs in float64."""

    def __enter__(self):
        self.orig = torch.nn.functional.softmax
        orig = self.orig

        def softmax(input, dim=None, _stacklevel=3, dtype=None):
            if dtype == torch.float32 and input.dtype == torch.float64:
                dtype = torch.float64
            return orig(input, dim=dim, _stacklevel=_stacklevel, dtype=dtype)

        torch.nn.functional.softmax = softmax
        return self

    def __exit__(self, *exc):
        torch.nn.functional.softmax = self.orig


def load64(path, cfg):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64, attn_implementation="eager")
    model.eval()
    stock = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64, attn_implementation="eager")
    stock.eval()
    patched = patch_float64(model, cfg)
    return model, stock, patched


@torch.no_grad()
def run_logits(model, ids, patched: bool):
    x = torch.tensor([ids], dtype=torch.long)
    if patched:
        with softmax_float64():
            return model(input_ids=x).logits[0].to(torch.float64)
    return model(input_ids=x).logits[0].to(torch.float64)


# ---- lm-eval's encode-pair (lm_eval/api/model.py + models/huggingface.py, 0.4.x) ----------------------------------

def lm_eval_encode(tok, context, continuation):
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    def tok_encode(s):
        if s.startswith(tok.decode(prefix)):  # has_bos_prefix
            return tok.encode(s, add_special_tokens=False)
        return tok.encode(s)  # the tokenizer's own add_special_tokens default

    if context == "":
        cont = tok.encode(continuation, add_special_tokens=False)
        return ([prefix], cont) if cont[0] != prefix else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok_encode(context + continuation)
    ctx = tok_encode(context)
    return ctx, whole[len(ctx):]


def score(logits, cont):
    """lm-eval's _loglikelihood_tokens on the logits of input = (ctx + cont)[:-1] (no truncation needed here)."""
    lp = torch.log_softmax(logits, dim=-1)[-len(cont):]
    tok = torch.tensor(cont)
    per = lp.gather(1, tok[:, None])[:, 0]
    greedy = bool((lp.argmax(-1) == tok).all())
    return float(per.sum()), greedy, [float(v) for v in per]


def arc_requests(path, n_docs):
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= n_docs:
                break
            d = json.loads(line)
            ctx = "Question: " + d["question"]["stem"] + "\nAnswer:"  # lm-eval arc_easy doc_to_text
            for c in d["question"]["choices"]:
                out.append({"source": f"arc_easy test doc {i} choice {c['label']}", "context": ctx,
                            "continuation": " " + c["text"]})
    return out


# ---- stories260K -------------------------------------------------------------------------------------------------

def make_stories(args):
    cfg = json.load(open(os.path.join(args.model, "config.json")))
    model, stock, patched = load64(args.model, cfg)
    if patched == 0:
        fail("no RMSNorm / rotary module was patched: transformers' module names changed?")
    tok = AutoTokenizer.from_pretrained(args.model)
    vocab = cfg["vocab_size"]

    text = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her "
            "friends. One day, she saw a big red ball under a tree and ran to get it. Her mom smiled and said they "
            "could play together until the sun went down.")
    story_ids = tok.encode(text)
    if len(story_ids) < 64:
        fail(f"the story text encodes to {len(story_ids)} < 64 tokens")
    g = torch.Generator().manual_seed(20261122)
    sequences = [
        ("bos_only", [tok.bos_token_id]),
        ("random17", [int(v) for v in torch.randint(0, vocab, (17,), generator=g)]),
        ("story64", story_ids[:64]),
    ]
    tensors, seq_meta, max_stock = {}, [], 0.0
    for i, (name, ids) in enumerate(sequences):
        lg = run_logits(model, ids, True)
        ls = run_logits(stock, ids, False)
        d = float((lg - ls).abs().max())
        max_stock = max(max_stock, d)
        tensors[f"seq{i}.ids"] = torch.tensor(ids, dtype=torch.int64)
        tensors[f"seq{i}.logits"] = lg.contiguous()
        seq_meta.append({"name": name, "ids": ids, "max_abs_diff_stock": d})
        print(f"  seq{i} {name:9s} T={len(ids):3d}  max|logit| {float(lg.abs().max()):8.4f}  "
              f"max|float64 - stock| {d:.3e}")

    reqs = arc_requests(args.arc, args.arc_docs)
    reqs.append({"source": "synthetic: trailing space moves to the continuation", "context": "Once upon a time ",
                 "continuation": "there was a girl."})
    reqs.append({"source": "synthetic: empty context (prefix token)", "context": "", "continuation": "Once upon a time"})
    for r in reqs:
        ctx, cont = lm_eval_encode(tok, r["context"], r["continuation"])
        inp = (ctx + cont)[:-1]
        s, greedy, per = score(run_logits(model, inp, True), cont)
        s_stock, _, _ = score(run_logits(stock, inp, False), cont)
        r.update({"context_ids": ctx, "continuation_ids": cont, "sum": s, "is_greedy": greedy,
                  "token_logprobs": per, "sum_stock": s_stock})
        max_stock = max(max_stock, abs(s - s_stock))
        print(f"  {r['source'][:48]:48s} ctx {len(ctx):3d} cont {len(cont):2d}  ll {s:10.5f}  greedy {greedy}")
    if max_stock > DIFF_STOCK_LIMIT:
        fail(f"float64-patched and stock transformers differ by {max_stock:.3e} > {DIFF_STOCK_LIMIT}")

    os.makedirs(args.out, exist_ok=True)
    st = os.path.join(args.out, "stories260K_logits.safetensors")
    save_file(tensors, st, metadata={"generator": "tests/torch/make_golden_logits.py"})
    meta = {
        "generator": "tests/torch/make_golden_logits.py",
        "model": "stories260K",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "precision": "float64 on CPU, eager attention, float32 islands lifted (see the script's docstring)",
        "max_abs_diff_stock": max_stock,
        "sequences": seq_meta,
        "requests": reqs,
    }
    with open(os.path.join(args.out, "stories260K_logits.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)
    print(f"wrote {st} ({os.path.getsize(st)} bytes) and stories260K_logits.json; "
          f"max |float64 - stock| = {max_stock:.3e}")


# ---- tiny random models per family --------------------------------------------------------------------------------

COMMON = dict(vocab_size=48, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, bos_token_id=1,
              eos_token_id=2, pad_token_id=0)
FAMILIES = {
    # GQA 4 -> 2, llama3 rope scaling, untied head, explicit head_dim, attention and MLP biases.
    "llama": dict(model_type="llama", architectures=["LlamaForCausalLM"], intermediate_size=24, num_key_value_heads=2,
                  max_position_embeddings=64, rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=False,
                  attention_bias=True, mlp_bias=True,
                  rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
                                       high_freq_factor=4.0, original_max_position_embeddings=8)),
    # linear rope scaling, tied head.
    "llama_linear": dict(model_type="llama", architectures=["LlamaForCausalLM"], intermediate_size=24,
                         num_key_value_heads=4, max_position_embeddings=64, rms_norm_eps=1e-6, hidden_act="silu",
                         tie_word_embeddings=True,
                         rope_parameters=dict(rope_type="linear", rope_theta=500.0, factor=2.0)),
    # sliding window 5 over a 12-token sequence.
    "mistral": dict(model_type="mistral", architectures=["MistralForCausalLM"], intermediate_size=24,
                    num_key_value_heads=1, max_position_embeddings=64, rms_norm_eps=1e-5, hidden_act="silu",
                    sliding_window=5, tie_word_embeddings=False, rope_parameters=dict(rope_type="default",
                                                                                     rope_theta=10000.0)),
    # q/k/v biases, sliding window on layers >= 1.
    "qwen2": dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], intermediate_size=24, num_key_value_heads=2,
                  max_position_embeddings=64, rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=True,
                  use_sliding_window=True, sliding_window=4, max_window_layers=1,
                  rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
    "opt": dict(model_type="opt", architectures=["OPTForCausalLM"], ffn_dim=24, max_position_embeddings=32,
                do_layer_norm_before=True, activation_function="relu", word_embed_proj_dim=16,
                _remove_final_layer_norm=False, enable_bias=True, tie_word_embeddings=True),
    # OPT-350m's layout: post-norm, project_in / project_out, no final norm.
    "opt350": dict(model_type="opt", architectures=["OPTForCausalLM"], ffn_dim=24, max_position_embeddings=32,
                   do_layer_norm_before=False, activation_function="relu", word_embed_proj_dim=8,
                   _remove_final_layer_norm=False, enable_bias=True, tie_word_embeddings=True),
    # 6 heads: ALiBi's non-power-of-two rule (slopes exact in float32 for 6 heads).
    "bloom": dict(model_type="bloom", architectures=["BloomForCausalLM"], hidden_size=12, n_head=6, n_layer=2,
                  layer_norm_epsilon=1e-5, apply_residual_connection_post_layernorm=False, tie_word_embeddings=True),
    "bloom_postres": dict(model_type="bloom", architectures=["BloomForCausalLM"], hidden_size=12, n_head=6, n_layer=2,
                          layer_norm_epsilon=1e-5, apply_residual_connection_post_layernorm=True,
                          tie_word_embeddings=True),
    # partial rotary (0.5), parallel block, lm_head bias, gelu_new.
    "phi": dict(model_type="phi", architectures=["PhiForCausalLM"], intermediate_size=24, num_key_value_heads=4,
                max_position_embeddings=64, layer_norm_eps=1e-5, hidden_act="gelu_new", tie_word_embeddings=False,
                qk_layernorm=False, rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                         partial_rotary_factor=0.5)),
}
TINY_SEQ = [1, 5, 17, 33, 2, 9, 40, 41, 7, 7, 23, 11]


def make_families(args):
    for i, (name, spec) in enumerate(FAMILIES.items()):
        cfg_dict = dict(COMMON)
        cfg_dict.update(spec)
        if spec["model_type"] == "bloom":
            for k in ("num_hidden_layers", "num_attention_heads"):
                cfg_dict.pop(k, None)
        config = transformers.AutoConfig.for_model(**cfg_dict)
        torch.manual_seed(1000 + i)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
        # Non-trivial norms and biases (the default init sets them to 1 and 0, which would hide mistakes).
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if p.dim() == 1:
                    p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "weight" in pname else 0.0))
                else:
                    p.copy_(torch.randn_like(p) * 0.35)
        d = os.path.join(args.out, f"tiny_{name}")
        model.save_pretrained(d, safe_serialization=True)
        for extra in ("generation_config.json",):
            if os.path.exists(os.path.join(d, extra)):
                os.remove(os.path.join(d, extra))
        saved_cfg = json.load(open(os.path.join(d, "config.json")))
        m64, stock, _ = load64(d, saved_cfg)
        lg = run_logits(m64, TINY_SEQ, True)
        ls = run_logits(stock, TINY_SEQ, False)
        diff = float((lg - ls).abs().max())
        if diff > DIFF_STOCK_LIMIT:
            fail(f"tiny_{name}: float64-patched and stock differ by {diff:.3e}")
        save_file({"ids": torch.tensor(TINY_SEQ, dtype=torch.int64), "logits": lg.contiguous()},
                  os.path.join(d, "golden.safetensors"), metadata={"max_abs_diff_stock": f"{diff:.3e}"})
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        print(f"  tiny_{name:14s} {sum(p.numel() for p in model.parameters()):6d} params  {size:7d} bytes  "
              f"max|logit| {float(lg.abs().max()):7.3f}  max|float64 - stock| {diff:.3e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=".shared/models/stories260K")
    ap.add_argument("--arc", default=".shared/data/arc_easy/ARC-Easy-Test.jsonl")
    ap.add_argument("--arc-docs", type=int, default=2)
    ap.add_argument("--out", default="tests/data/golden")
    ap.add_argument("--families", action="store_true", help="also write the tiny per-family models")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    for p in (args.model, args.arc):
        if not os.path.exists(p):
            fail(f"{p} does not exist")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    make_stories(args)
    if args.families:
        make_families(args)
    total = 0
    for root, _, files in os.walk(args.out):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    print(f"total size of {args.out}: {total} bytes")
    if total > 1_000_000:
        fail(f"{args.out} holds {total} bytes, above the 1 MB budget of tests/data")
    print("OK")


if __name__ == "__main__":
    main()
