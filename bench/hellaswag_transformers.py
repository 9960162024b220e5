#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The transformers side of the HellaSwag scoring benchmark (bench_scoring is qprob's side).

Builds a model from a config.json (default bench/configs/llama-2-7b.json: Llama-2-7B's shapes) with random fp16
weights directly on the GPU, attn_implementation="sdpa", and scores the requests of a qprob-eval --write-requests
file (default .shared/requests/llama2-hellaswag-400.json: 400 HellaSwag documents, 1600 requests) the way
lm-evaluation-harness' HFLM._loglikelihood_tokens does:
  * input = (context + continuation)[-(max_length + 1):][:-1], max_length = max_position_embeddings;
  * requests sorted by descending len(context + continuation) (ties: by the tokens), batches of --batch-size,
    right-padded with id 0 to the batch's longest input, no attention mask;
  * logits -> float32 -> log_softmax over the full vocabulary, the last len(continuation) rows of each input,
    gather of the continuation tokens; is_greedy = every row's argmax is the continuation token; one float() and
    one bool() per request, as HFLM does.
Timing: one warm-up batch (the longest), then torch.cuda.synchronize() around the whole loop.

Output (printed, and written as JSON with --out): tokens_per_s (sum of input lengths / seconds), seconds,
requests, tokens, peak_GiB (torch.cuda.max_memory_allocated during scoring, the weights included; the build's
peak is peak_build_GiB), weights_GiB, mfu = 2 * params * tokens / seconds / peak_flops with params = every
parameter (embeddings included, as REFERENCE.md's 47%) and peak_flops = 989.4e12, the dense fp16/bf16 tensor-core
peak of an H100 SXM (NVIDIA's datasheet: 1979 TFLOP/s with sparsity). Attention FLOPs and padded rows are not
counted, so this is a lower bound of the work done.

    python3 bench/hellaswag_transformers.py --out /tmp/hellaswag_transformers.json
"""
import argparse
import json
import os
import sys
import time

H100_SXM_DENSE_FP16_FLOPS = 989.4e12
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_requests(path):
    if not os.path.isfile(path):
        sys.exit(f"hellaswag_transformers: {path} not found: write it on the development machine with\n"
                 f"  qprob-eval-hellaswag --model <Llama-2 tokenizer dir> --data ../shared/data --limit 400 "
                 f"--write-requests {os.path.basename(path)}\nand stage it under .shared/requests/")
    with open(path) as f:
        data = json.load(f)
    reqs = data.get("requests")
    if not reqs:
        sys.exit(f"hellaswag_transformers: {path} has no \"requests\"")
    return [(list(r["context"]), list(r["continuation"])) for r in reqs], data


def build_model(config_path, dtype, attn, device, seed):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    if not os.path.isfile(config_path):
        sys.exit(f"hellaswag_transformers: {config_path} not found (a Hugging Face config.json)")
    with open(config_path) as f:
        cfg = json.load(f)
    if "model_type" not in cfg:
        sys.exit(f"hellaswag_transformers: {config_path} has no model_type")
    config = AutoConfig.for_model(**cfg)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    return model.eval(), cfg


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", default=os.path.join(ROOT, ".shared", "requests", "llama2-hellaswag-400.json"))
    ap.add_argument("--config", default=os.path.join(ROOT, "bench", "configs", "llama-2-7b.json"))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--dtype", default="float16", choices=("float16", "bfloat16"))
    ap.add_argument("--attn", default="sdpa", help="attn_implementation (lm-eval's default with transformers 5)")
    ap.add_argument("--max-length", type=int, help="default: the config's max_position_embeddings, else 2048")
    ap.add_argument("--device", default="cuda", help="cpu only to try the script with a tiny config")
    ap.add_argument("--peak-flops", type=float, default=H100_SXM_DENSE_FP16_FLOPS)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.batch_size < 1:
        sys.exit("hellaswag_transformers: --batch-size must be at least 1")

    import torch
    import torch.nn.functional as F
    import transformers

    requests, data = load_requests(args.requests)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit("hellaswag_transformers: no usable CUDA device")

    t0 = time.perf_counter()
    model, cfg = build_model(args.config, getattr(torch, args.dtype), args.attn, args.device, args.seed)
    if cuda:
        torch.cuda.synchronize()
    build_s = time.perf_counter() - t0
    peak_build = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    params = sum(p.numel() for p in model.parameters())
    weights_gib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    max_length = args.max_length or int(cfg.get("max_position_embeddings") or 2048)
    vocab = model.get_output_embeddings().weight.shape[0]
    top = max(max(c + k) for c, k in requests)
    if top >= vocab:
        sys.exit(f"hellaswag_transformers: token id {top} outside the vocabulary ({vocab}) of {args.config}")

    # lm-eval's Collator order: descending total length, then the tokens.
    order = sorted(range(len(requests)), key=lambda i: (-len(requests[i][0] + requests[i][1]),
                                                        tuple(requests[i][0] + requests[i][1])))
    inputs = []
    for ctx, cont in requests:
        if not ctx or not cont:
            sys.exit("hellaswag_transformers: empty context or continuation in the requests file")
        inputs.append(((ctx + cont)[-(max_length + 1):][:-1], cont))
    batches = [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    results = [None] * len(requests)

    @torch.inference_mode()
    def score(batch):
        longest = max(len(inputs[i][0]) for i in batch)
        ids = torch.zeros((len(batch), longest), dtype=torch.long)
        for b, i in enumerate(batch):
            ids[b, :len(inputs[i][0])] = torch.tensor(inputs[i][0])
        logits = model(ids.to(args.device)).logits
        logprobs = F.log_softmax(logits.float(), dim=-1)
        for b, i in enumerate(batch):
            inp, cont = inputs[i]
            rows = logprobs[b, len(inp) - len(cont):len(inp)]
            target = torch.tensor(cont, device=rows.device)
            greedy = (rows.argmax(dim=-1) == target).all()
            ll = rows.gather(-1, target[:, None]).sum()
            results[i] = (float(ll), bool(greedy))

    score(batches[0])  # warm-up: kernels, allocator, the largest activations
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for batch in batches:
        score(batch)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0

    tokens = sum(len(inp) for inp, _ in inputs)
    flops = 2.0 * params * tokens
    lls = [r[0] for r in results]
    finite = [v for v in lls if v == v and abs(v) != float("inf")]
    out = dict(
        name="hellaswag_transformers", tokens_per_s=tokens / seconds, seconds=seconds, requests=len(requests),
        tokens=tokens, batches=len(batches), batch_size=args.batch_size, max_length=max_length,
        peak_GiB=torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0, peak_build_GiB=peak_build,
        weights_GiB=weights_gib, params=params, mfu=flops / seconds / args.peak_flops, peak_flops=args.peak_flops,
        build_seconds=build_s, dtype=args.dtype, attn_implementation=args.attn,
        device=torch.cuda.get_device_name(0) if cuda else args.device, torch=torch.__version__,
        transformers=transformers.__version__, requests_file=os.path.relpath(args.requests, ROOT),
        task=data.get("task"), config=os.path.relpath(args.config, ROOT),
        greedy=sum(r[1] for r in results), nonfinite=len(lls) - len(finite),
        mean_loglik=sum(finite) / len(finite) if finite else None)
    print(f"hellaswag_transformers: {out['requests']} requests, {tokens} tokens in {seconds:.2f} s = "
          f"{out['tokens_per_s']:.0f} tokens/s, MFU {100 * out['mfu']:.1f}% of {args.peak_flops / 1e12:.1f} TFLOP/s; "
          f"peak {out['peak_GiB']:.2f} GiB for {weights_gib:.2f} GiB of weights ({params / 1e9:.2f} B parameters); "
          f"build {build_s:.1f} s; {out['nonfinite']} non-finite log-likelihoods")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 1 if out["nonfinite"] else 0


if __name__ == "__main__":
    sys.exit(main())
