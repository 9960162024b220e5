#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Checks qprob-written GPTQ checkpoints against an independent reading of the GPTQ format.

For every directory given (a Hugging Face GPTQ model dir written by qprob with write_dequantized, e.g. by
build/<dir>/tests/unit/gptq/qprob_write_gptq_checkpoints), this script

  * unpacks qweight / qzeros / scales / g_idx with numpy following the format description (docs/gptq-format.md:
    little-endian bitstreams of `bits`-bit fields in int32 words, qweight packed along K, qzeros along N, v1
    "gptq" zero points stored minus 1, "gptq_v2" stored as is), and for 2/4/8 bits a second time with torch
    shifts the way AutoGPTQ's torch fallback does (w >> [0, bits, 2*bits, ...]) & mask,
  * dequantizes W[n, k] = fp16(scale[g_idx[k], n] * (q[k, n] - zero[g_idx[k], n])) and requires it to equal,
    bit for bit, the fp16 weights qprob wrote to qprob_dequantized.safetensors,
  * checks shapes (qweight rows = K*bits/32, qzeros columns = N*bits/32 when K, N are multiples of 32),
  * checks quantize_config.json == config.json["quantization_config"] and that transformers accepts the block
    (GPTQConfig.from_dict, AutoConfig.from_pretrained),
  * with --source, requires every non-quantized tensor to equal the source model's tensor cast to fp16.

Prints a table and exits non-zero on any mismatch. Needs numpy, torch, safetensors, transformers; not auto-gptq.

    python3 tests/torch/check_gptq_checkpoint.py --source ../shared/models/stories260K build/gptq/gptq_export/*
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from safetensors import safe_open

SIDE_FILE = "qprob_dequantized.safetensors"


def unpack_fields(words: np.ndarray, count: int, bits: int) -> np.ndarray:
    """Fields 0..count-1 of bitstreams running down axis 0 of `words` (uint32, shape (W, C)) -> (count, C)."""
    w = words.astype(np.uint64)
    j = np.arange(count, dtype=np.int64)
    bit = j * bits
    word = bit // 32
    off = (bit % 32).astype(np.uint64)
    lo = w[word] >> off[:, None]
    nxt = np.minimum(word + 1, w.shape[0] - 1)
    straddle = (off + np.uint64(bits)) > np.uint64(32)
    hi = np.where(straddle[:, None], w[nxt] << (np.uint64(32) - off)[:, None], np.uint64(0))
    return ((lo | hi) & np.uint64((1 << bits) - 1)).astype(np.int64)


def torch_unpack_rows(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    """AutoGPTQ-style unpacking for 2/4/8 bits: every int32 row holds 32/bits consecutive K entries."""
    per = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int64).view(1, per, 1)
    w = qweight.to(torch.int64) & 0xFFFFFFFF
    fields = (w.unsqueeze(1) >> shifts) & ((1 << bits) - 1)
    return fields.reshape(-1, qweight.shape[1])


def check_dir(d: str, source: str | None) -> tuple[list[str], list[str]]:
    rows, problems = [], []
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(d, "quantize_config.json")) as f:
        qc = json.load(f)
    if cfg.get("quantization_config") != qc:
        problems.append("quantize_config.json differs from config.json['quantization_config']")
    bits, group_size = int(qc["bits"]), int(qc["group_size"])
    fmt = qc.get("checkpoint_format", "gptq")
    if fmt not in ("gptq", "gptq_v2"):
        problems.append(f"unexpected checkpoint_format {fmt}")
    # transformers' view of the block.
    try:
        from transformers import AutoConfig, GPTQConfig

        g = GPTQConfig.from_dict(dict(qc))
        if g.bits != bits or g.group_size != group_size or bool(g.desc_act) != bool(qc["desc_act"]) or bool(g.sym) != bool(qc["sym"]):
            problems.append(f"GPTQConfig.from_dict changed settings: {g.to_dict()}")
        ac = AutoConfig.from_pretrained(d)
        qd = ac.quantization_config if isinstance(ac.quantization_config, dict) else ac.quantization_config.to_dict()
        if qd.get("quant_method") != "gptq" or int(qd.get("bits")) != bits:
            problems.append(f"AutoConfig quantization_config: {qd}")
    except Exception as e:  # noqa: BLE001 - report any failure of transformers' parsing
        problems.append(f"transformers rejected the quantization_config: {type(e).__name__}: {e}")

    base = qc.get("model_file_base_name") or "model"
    wfile = os.path.join(d, base + ".safetensors")
    layers = 0
    worst = 0.0
    with safe_open(wfile, framework="pt") as st, safe_open(os.path.join(d, SIDE_FILE), framework="pt") as side:
        names = set(st.keys())
        modules = sorted(n[: -len(".qweight")] for n in names if n.endswith(".qweight"))
        for m in modules:
            qweight = st.get_tensor(m + ".qweight")
            qzeros = st.get_tensor(m + ".qzeros")
            scales = st.get_tensor(m + ".scales")
            g_idx = st.get_tensor(m + ".g_idx")
            if qweight.dtype != torch.int32 or qzeros.dtype != torch.int32 or scales.dtype != torch.float16 or g_idx.dtype != torch.int32:
                problems.append(f"{m}: dtypes {qweight.dtype} {qzeros.dtype} {scales.dtype} {g_idx.dtype}")
                continue
            k = g_idx.shape[0]
            n = scales.shape[1]
            groups = scales.shape[0]
            exp_groups = 1 if group_size == -1 else -(-k // group_size)
            if groups != exp_groups or qzeros.shape[0] != groups:
                problems.append(f"{m}: {groups} scale rows / {qzeros.shape[0]} qzeros rows, expected {exp_groups}")
            if k % 32 == 0 and qweight.shape[0] != k * bits // 32:
                problems.append(f"{m}: qweight rows {qweight.shape[0]} != K*bits/32 = {k * bits // 32}")
            if n % 32 == 0 and qzeros.shape[1] != n * bits // 32:
                problems.append(f"{m}: qzeros columns {qzeros.shape[1]} != N*bits/32 = {n * bits // 32}")
            qw = qweight.numpy().view(np.uint32)
            q = unpack_fields(qw, k, bits)  # (K, N)
            zf = unpack_fields(qzeros.numpy().view(np.uint32).T.copy(), n, bits).T  # (groups, N)
            z = zf + 1 if fmt == "gptq" else zf
            if bits in (2, 4, 8):
                qt = torch_unpack_rows(qweight, bits)[:k].numpy()
                if not np.array_equal(qt, q):
                    problems.append(f"{m}: numpy and torch unpacking disagree")
            gi = g_idx.numpy().astype(np.int64)
            if gi.min() < 0 or gi.max() >= groups:
                problems.append(f"{m}: g_idx outside [0, {groups})")
                continue
            if group_size != -1 and not qc["desc_act"] and not np.array_equal(gi, np.arange(k) // group_size):
                problems.append(f"{m}: desc_act=false but g_idx is not i // group_size")
            s = scales.numpy().astype(np.float32)
            w = (s[gi, :] * (q - z[gi, :]).astype(np.float32)).astype(np.float16).T  # (N, K)
            ref = side.get_tensor(m + ".weight").numpy()
            if ref.shape != w.shape:
                problems.append(f"{m}: dequantized shape {w.shape} vs qprob {ref.shape}")
                continue
            same = np.array_equal(w.view(np.uint16), ref.view(np.uint16))
            diff = float(np.max(np.abs(w.astype(np.float64) - ref.astype(np.float64)))) if w.size else 0.0
            worst = max(worst, diff)
            if not same:
                problems.append(f"{m}: dequantized weight differs from qprob's (max |diff| {diff:g})")
            if qc["sym"] and not np.all(z == 2 ** (bits - 1)):
                problems.append(f"{m}: sym=true but zero points are not {2 ** (bits - 1)}")
            layers += 1
        dense_checked = 0
        if source:
            with safe_open(os.path.join(source, "model.safetensors"), framework="pt") as src:
                for name in src.keys():
                    if name in names:
                        a = st.get_tensor(name)
                        b = src.get_tensor(name).to(torch.float16)
                        if a.dtype != torch.float16 or not torch.equal(a.view(torch.int16), b.view(torch.int16)):
                            problems.append(f"{name}: not the source tensor in fp16")
                        dense_checked += 1
                    elif name.endswith(".weight") and (name[: -len(".weight")] + ".qweight") not in names:
                        problems.append(f"{name}: missing from the checkpoint")
    rows.append(
        f"{os.path.basename(os.path.normpath(d)):<26} {bits:>4} {group_size:>5} {str(qc['sym']):>5} "
        f"{str(qc['desc_act']):>5} {fmt:>8} {layers:>6} {dense_checked:>5} {worst:>9.3g} "
        f"{'OK' if not problems else 'FAIL'}"
    )
    return rows, problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", help="qprob-written GPTQ checkpoint directories")
    ap.add_argument("--source", help="the original model directory, to compare non-quantized tensors")
    args = ap.parse_args()
    print(f"{'checkpoint':<26} {'bits':>4} {'group':>5} {'sym':>5} {'act':>5} {'format':>8} {'layers':>6} {'dense':>5} {'max|diff|':>9} status")
    failed = False
    for d in args.dirs:
        rows, problems = check_dir(d, args.source)
        for r in rows:
            print(r)
        for p in problems:
            print(f"    {p}")
        failed = failed or bool(problems)
    print("FAIL" if failed else "all checkpoints match")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
