#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Independent check of qprob's task scoring against transformers (issue 6: "an independent Python script
(transformers + the same prompts) computes the log-likelihood of every request of every task and qprob agrees
within 1e-2 absolute and on every argmax").

Input: a model directory (Hugging Face layout with its tokenizer files) and a folder of qprob driver outputs,
`samples_<task>.jsonl`, written by

    qprob-eval-<task> --model M --data D --out QDIR --limit 200 --device cuda|cpu [--max-length N]

Nothing of qprob's C++ is used. From every line the script takes only the prompts qprob logged
(`arguments.gen_args_<i>.arg_0` = context, `arg_1` = continuation = target delimiter + choice) and tokenizes
them itself with transformers' AutoTokenizer by lm-evaluation-harness HFLM's rules (lm-eval `main` 4e7e0d47,
`api/model.py` loglikelihood/_encode_pair, `models/huggingface.py` tok_encode/_loglikelihood_tokens; the
same rules docs/scoring.md section 1 lists):

  * empty context: cont = encode(continuation, add_special_tokens=False); context = [prefix_token_id] (custom,
    else BOS, else EOS), or cont[:1] when cont already starts with that token;
  * otherwise the context's trailing whitespace (Python str.rstrip) moves to the continuation;
    whole = tok_encode(context + continuation), ctx = tok_encode(context), cont = whole[len(ctx):];
  * tok_encode(s) = tokenizer.encode(s) with the tokenizer's own special-token rule, or add_special_tokens =
    --add-bos-token when given (lm-eval's add_bos_token); never special tokens when s starts with
    decode(prefix_token_id) (has_bos_prefix);
  * lm-eval asserts len(ctx) > 0, len(cont) > 0, len(cont) <= max_length; the model input is
    (ctx + cont)[-(max_length + 1):][:-1] and the last len(cont) rows score cont;
  * max_length = --max-length, else the config's n_positions / max_position_embeddings / n_ctx, else the
    tokenizer's model_max_length unless "infinite", else 2048 (lm-eval's resolve_max_length).

Next-token lines (the Price-of-Efficiency tasks poe_*, lm-eval's generate_until shape): the prompt is encoded
as tokenizer(prompt) (special tokens added, as the authors' script), its last max_length tokens are the input,
and the argmax of the last position's log-softmax (first maximum) must be qprob's `qprob.token`, its
log-probability `qprob.logprob` and the softmax entropy `qprob.entropy` within the tolerance.

The model runs in float32 (TF32 off) with --attn (default eager); the log-softmax of its float32 logits is taken
in float64 (lm-eval's softmax_dtype option; a float32 log-softmax over a 50k-250k vocabulary adds up to 2e-5 per
token of its own on a CPU). Identical (input, continuation) pairs are computed once, and inputs are batched only
with inputs of the same length (no padding, no attention mask), so identical requests give identical numbers and
no padding rule can blur the comparison.

Per choice it compares qprob.loglik (|diff| <= --atol, default 1e-2: the issue's bound), qprob.is_greedy,
qprob.num_tokens and qprob.char_len (Python len of the choice, the continuation without its one-space target
delimiter); per document the argmax over choices (np.argmax, first maximum) of the summed log-likelihoods
(acc) and of loglik / char_len (acc_norm, where the line lists that metric), each side from its own numbers.
A decision whose reference margin is below --tie-margin (2e-2 = twice the tolerance: both sides may move by
atol) is a genuine near tie: it is counted and listed separately, and a disagreement there is not a failure.
For acc_norm the margin scales as atol * (1/len_a + 1/len_b), the most the tolerance can move the gap; for
is_greedy and the next token it is the reference log-probability gap between the target (or top token) and
its best rival. Any other disagreement is a failure.

When QDIR also holds requests_<task>.json (the driver's --write-requests output: qprob's token ids), the ids
are compared exactly and every difference is listed with both sides' ids.

Output: one markdown table (task, documents, requests, max/mean |d loglik|, token-count, is_greedy and
token-id mismatches, argmax agreement x/y for acc and acc_norm, near ties, result), then the failures;
--json PATH writes the table, failures, near ties and notes. Exit status 0 when every check passes, 1 on any
failure, 2 for unusable input (a missing file, or a malformed line: the message names the file and line).

    python3 tests/torch/check_task_agreement.py --model .shared/models/stories260K --qprob out/stories \\
        --json out/agree_stories.json
    python3 tests/torch/check_task_agreement.py --model build/opt-125m-random --qprob out/opt --device cuda

Needs torch, transformers and numpy (the GPU machine has them). tools/gpu-task-agreement.sh runs it for
stories260K and random OPT-125m / BLOOM-560m models.
"""
import argparse
import glob
import inspect
import json
import math
import os
import re
import sys
import time

import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

TOKENIZER_INFINITY = 1000000000000000019884624838656  # transformers' "no limit" model_max_length
DEFAULT_MAX_LENGTH = 2048                             # lm-eval HFLM._DEFAULT_MAX_LENGTH
TARGET_DELIMITER = " "                                # every task here (docs/tasks.md)
# Work per forward pass, so that BLOOM's 250,880-entry vocabulary and long eager-attention inputs fit an 80 GB GPU
# (or this machine's 24 GB) with room to spare: the attention matrix is batch x heads x T x T float32 (2^28
# elements = 1 GiB); the kept logits are batch x rows x vocab, float32 plus the float64 log-softmax and its
# temporaries (2^27 elements: about 3 GiB together).
TOKEN_BUDGET = 16384
ATTENTION_BUDGET = 2**28
LOGIT_BUDGET = 2**27
MAX_LISTED = 20  # failures printed per task (the JSON has all)


class input_error(Exception):
    """Unusable input; the message names the file (and line)."""


# ------------------------------------------------------------------------------------------------ reading
def expect(cond, where, what):
    if not cond:
        raise input_error(f"{where}: {what}")


def is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def read_samples(path):
    """Parses samples_<task>.jsonl into documents: {doc_id, kind, line, requests | prompt, qprob fields}."""
    docs = []
    with open(path, encoding="utf-8") as f:
        for lineno, text in enumerate(f, 1):
            if not text.strip():
                continue
            where = f"{path}: line {lineno}"
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                raise input_error(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
            expect(isinstance(rec, dict), where, "not a JSON object")
            expect(isinstance(rec.get("doc_id"), int), where, "no integer doc_id")
            args = rec.get("arguments")
            expect(isinstance(args, dict) and args, where, "no arguments object")
            names = [f"gen_args_{i}" for i in range(len(args))]
            expect(sorted(args) == sorted(names), where,
                   f"arguments keys {sorted(args)} are not gen_args_0..gen_args_{len(args) - 1}")
            pairs = []
            for name in names:
                a = args[name]
                expect(isinstance(a, dict) and isinstance(a.get("arg_0"), str), where, f"{name}.arg_0 is not a string")
                pairs.append((a["arg_0"], a.get("arg_1")))
            q = rec.get("qprob")
            expect(isinstance(q, dict), where, "no qprob object")
            doc = dict(doc_id=rec["doc_id"], line=lineno, where=where)
            if isinstance(pairs[0][1], dict):  # generate_until shape: one next-token request
                expect(len(pairs) == 1, where, "a next-token line must have exactly one gen_args")
                for key in ("token", "logprob"):
                    expect(key in q, where, f"qprob.{key} missing (next-token line)")
                expect(isinstance(q["token"], int), where, "qprob.token is not an integer")
                doc.update(kind="next_token", prompt=pairs[0][0], token=q["token"], logprob=q["logprob"],
                           entropy=q.get("entropy"))
            else:
                for i, (_, cont) in enumerate(pairs):
                    expect(isinstance(cont, str), where, f"gen_args_{i}.arg_1 is not a string")
                n = len(pairs)
                for key in ("loglik", "is_greedy", "num_tokens"):
                    expect(isinstance(q.get(key), list) and len(q[key]) == n, where,
                           f"qprob.{key} is not a list of {n} (one per gen_args)")
                expect(all(isinstance(b, bool) for b in q["is_greedy"]), where, "qprob.is_greedy holds a non-bool")
                expect(all(isinstance(k, int) for k in q["num_tokens"]), where, "qprob.num_tokens holds a non-int")
                expect(all(x is None or is_number(x) for x in q["loglik"]), where, "qprob.loglik holds a non-number")
                char_len = q.get("char_len")
                expect(char_len is None or (isinstance(char_len, list) and len(char_len) == n), where,
                       f"qprob.char_len is not a list of {n}")
                metrics = rec.get("metrics") or []
                doc.update(kind="loglikelihood", requests=pairs, loglik=q["loglik"], is_greedy=q["is_greedy"],
                           num_tokens=q["num_tokens"], char_len=char_len, acc_norm="acc_norm" in metrics)
            docs.append(doc)
    expect(docs, path, "no documents")
    kinds = {d["kind"] for d in docs}
    expect(len(kinds) == 1, path, "mixes loglikelihood and next-token lines")
    ids = [d["doc_id"] for d in docs]
    expect(len(set(ids)) == len(ids), path, "repeats a doc_id")
    return docs


def read_requests(path):
    """qprob's token ids from --write-requests: {(doc_id, choice): (ctx, cont)} and {doc_id: prompt ids}."""
    with open(path, encoding="utf-8") as f:
        try:
            j = json.load(f)
        except json.JSONDecodeError as e:
            raise input_error(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    expect(isinstance(j, dict) and isinstance(j.get("requests"), list) and isinstance(j.get("contexts"), list),
           path, "no requests/contexts lists (expected qprob-eval-<task> --write-requests output)")
    # The file counts documents by position in file order, as the samples' doc_ids do for the first N documents.
    pairs, contexts = {}, {}
    for i, r in enumerate(j["requests"]):
        expect(isinstance(r, dict) and all(k in r for k in ("doc", "choice", "context", "continuation")), path,
               f"requests[{i}] lacks doc/choice/context/continuation")
        pairs[(r["doc"], r["choice"])] = (list(r["context"]), list(r["continuation"]))
    for i, c in enumerate(j["contexts"]):
        expect(isinstance(c, dict) and "doc" in c and "tokens" in c, path, f"contexts[{i}] lacks doc/tokens")
        contexts[c["doc"]] = list(c["tokens"])
    return pairs, contexts


# ------------------------------------------------------------------------------------------------ lm-eval rules
class lm_eval_encoder:
    """HFLM's request tokenization over a transformers tokenizer (see the module docstring)."""

    def __init__(self, tokenizer, add_bos_token=None, prefix_token_id=None):
        self.tok = tokenizer
        self.add_bos_token = add_bos_token
        self.custom_prefix = prefix_token_id
        self.notes = []
        self.prefix_text = None
        if self.prefix_token_id is None:
            self.notes.append("the tokenizer has neither BOS nor EOS: lm-eval's prefix_token_id is None, so HFLM's "
                              "tok_encode (decode(prefix_token_id)) would raise; this script skips the has_bos_prefix "
                              "test and refuses empty contexts")
        else:
            self.prefix_text = tokenizer.decode([self.prefix_token_id])

    @property
    def prefix_token_id(self):
        if self.custom_prefix is not None:
            return self.custom_prefix
        if self.tok.bos_token_id is not None:
            return self.tok.bos_token_id
        return self.tok.eos_token_id

    def tok_encode(self, s, add_special_tokens=None):
        kwargs = {}
        if add_special_tokens is not None:
            kwargs["add_special_tokens"] = add_special_tokens
        elif self.add_bos_token is not None:
            kwargs["add_special_tokens"] = self.add_bos_token
        if add_special_tokens is None and self.prefix_text and s.startswith(self.prefix_text):
            kwargs["add_special_tokens"] = False
        return list(self.tok.encode(s, **kwargs))

    def encode_pair(self, context, continuation):
        if context == "":
            cont = self.tok_encode(continuation, add_special_tokens=False)
            if self.prefix_token_id is None:
                raise ValueError("empty context and no prefix token (lm-eval cannot score it)")
            if cont and cont[0] == self.prefix_token_id:
                return cont[:1], cont[1:]
            return [self.prefix_token_id], cont
        n = len(context) - len(context.rstrip())
        if n > 0:
            continuation = context[-n:] + continuation
            context = context[:-n]
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context)
        return ctx, whole[len(ctx):]


def resolve_max_length(config, tokenizer):
    cfg = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if value is not None:
            return int(value)
    mml = getattr(tokenizer, "model_max_length", None)
    if mml is not None and mml != TOKENIZER_INFINITY:
        return int(mml)
    return DEFAULT_MAX_LENGTH


# ------------------------------------------------------------------------------------------------ reference
class reference_model:
    """transformers float32 forward; scores (input, targets) jobs and next-token jobs in same-length batches."""

    def __init__(self, model_dir, device, attn):
        self.device = torch.device(device)
        torch.set_float32_matmul_precision("highest")  # no TF32: float32 for real
        try:
            self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                              attn_implementation=attn)
        except (ValueError, ImportError) as e:  # a model without that attention: say so, use the default
            print(f"check_task_agreement: attn_implementation={attn} refused ({e}); using the model's default",
                  file=sys.stderr)
            self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.model.to(self.device).eval()
        params = inspect.signature(self.model.forward).parameters
        self.keep_arg = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
        cfg = self.model.config
        self.heads = int(getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None) or 16)
        self.vocab = int(self.model.get_output_embeddings().weight.shape[0])
        self.attn = getattr(cfg, "_attn_implementation", attn)
        self.forwards = 0

    def _rows_per_batch(self, length, keep):
        keep = keep if self.keep_arg else length  # without logits_to_keep the model returns every position
        rows = min(TOKEN_BUDGET // length, ATTENTION_BUDGET // (self.heads * length * length),
                   LOGIT_BUDGET // (keep * self.vocab))
        return max(1, rows)

    @torch.inference_mode()
    def _logprobs(self, ids, keep):
        """log_softmax of the float32 logits of the last `keep` positions, taken in float64: (batch, keep, vocab).
        A float32 log-softmax over 50k-250k entries adds up to ~2e-5 per token on a CPU (measured on a random
        BLOOM: 2.5e-4 on a 12-token continuation), noise of the reference's own that this check need not carry."""
        self.forwards += 1
        x = torch.tensor(ids, dtype=torch.long, device=self.device)
        if self.keep_arg:
            logits = self.model(input_ids=x, **{self.keep_arg: keep}).logits
        else:
            logits = self.model(input_ids=x).logits
        return torch.log_softmax(logits[:, -keep:].double(), dim=-1)

    def score(self, jobs):
        """jobs: set of (input, targets) tuples with len(targets) <= len(input); targets[j] follows input position
        len(input) - len(targets) + j. Returns {(input, targets): dict(loglik, is_greedy, margin)}."""
        out = {}
        by_len = {}
        for inp, tgt in jobs:
            by_len.setdefault(len(inp), []).append((inp, tgt))
        for length, group in sorted(by_len.items()):
            group.sort(key=lambda it: -len(it[1]))
            at = 0
            while at < len(group):
                keep = len(group[at][1])
                chunk = group[at:at + self._rows_per_batch(length, keep)]
                at += len(chunk)
                lp = self._logprobs([list(inp) for inp, _ in chunk], keep)
                n = torch.tensor([len(t) for _, t in chunk], device=self.device)
                tgt_host = np.zeros((len(chunk), keep), dtype=np.int64)
                for b, (_, t) in enumerate(chunk):  # right-aligned: row j of the kept block scores t[j - (keep - n)]
                    tgt_host[b, keep - len(t):] = t
                tgt = torch.from_numpy(tgt_host).to(self.device)
                valid = torch.arange(keep, device=self.device)[None, :] >= (keep - n)[:, None]
                tok_lp = lp.gather(-1, tgt[:, :, None])[:, :, 0]
                top2 = lp.topk(2, dim=-1).values
                argmax = lp.argmax(dim=-1)  # first maximum, as lm-eval's greedy_tokens
                hit = argmax == tgt
                # Margin of each position's greedy decision: target over the runner-up when it is the argmax, the
                # best token over the target when it is not.
                gap = torch.where(hit, top2[:, :, 0] - top2[:, :, 1], top2[:, :, 0] - tok_lp)
                greedy = (hit | ~valid).all(dim=1)
                inf = torch.full_like(gap, math.inf)
                margin_greedy = torch.where(valid, gap, inf).min(dim=1).values
                margin_miss = torch.where(valid & ~hit, gap, -inf).max(dim=1).values
                margin = torch.where(greedy, margin_greedy, margin_miss)
                loglik = torch.where(valid, tok_lp, torch.zeros_like(tok_lp)).sum(dim=1)
                for b, job in enumerate(chunk):
                    out[job] = dict(loglik=float(loglik[b]), is_greedy=bool(greedy[b]), margin=float(margin[b]))
        return out

    def next_token(self, inputs):
        """inputs: set of input tuples. Returns {input: dict(token, logprob, entropy, gap)}."""
        out = {}
        by_len = {}
        for inp in inputs:
            by_len.setdefault(len(inp), []).append(inp)
        for length, group in sorted(by_len.items()):
            at = 0
            while at < len(group):
                chunk = group[at:at + self._rows_per_batch(length, 1)]
                at += len(chunk)
                lp = self._logprobs([list(inp) for inp in chunk], 1)[:, 0]
                top2 = lp.topk(2, dim=-1).values
                token = lp.argmax(dim=-1)
                entropy = -(lp.exp() * lp).sum(dim=-1)
                for b, inp in enumerate(chunk):
                    out[inp] = dict(token=int(token[b]), logprob=float(top2[b, 0]), entropy=float(entropy[b]),
                                    gap=float(top2[b, 0] - top2[b, 1]))
        return out


# ------------------------------------------------------------------------------------------------ comparison
def first_argmax(values):
    return int(np.argmax(np.asarray(values, dtype=np.float64)))


def top_two(values):
    order = np.argsort(-np.asarray(values, dtype=np.float64), kind="stable")
    return order[0], (order[1] if len(order) > 1 else None)


class task_report:
    def __init__(self, task, kind):
        self.task, self.kind = task, kind
        self.documents = self.requests = 0
        self.diffs = []
        self.token_count_mismatches = self.greedy_mismatches = self.greedy_near_ties = 0
        self.id_mismatches = 0
        self.ids_checked = False
        self.acc_agree = self.acc_total = 0
        self.norm_agree = self.norm_total = 0
        self.near_tie_docs = set()
        self.failures = []
        self.near_ties = []

    def fail(self, doc, what, **detail):
        self.failures.append(dict(task=self.task, doc_id=doc["doc_id"], line=doc["line"], what=what, **detail))

    def tie(self, doc, what, **detail):
        self.near_tie_docs.add(doc["doc_id"])
        self.near_ties.append(dict(task=self.task, doc_id=doc["doc_id"], what=what, **detail))

    def row(self):
        d = np.asarray(self.diffs) if self.diffs else np.zeros(1)
        return dict(task=self.task, kind=self.kind, documents=self.documents, requests=self.requests,
                    max_abs_diff=float(d.max()), mean_abs_diff=float(d.mean()),
                    token_count_mismatches=self.token_count_mismatches if self.kind == "loglikelihood" else None,
                    is_greedy_mismatches=self.greedy_mismatches if self.kind == "loglikelihood" else None,
                    is_greedy_near_tie_flips=self.greedy_near_ties if self.kind == "loglikelihood" else None,
                    token_id_mismatches=self.id_mismatches if self.ids_checked else None,
                    argmax_acc=[self.acc_agree, self.acc_total],
                    argmax_acc_norm=[self.norm_agree, self.norm_total] if self.norm_total else None,
                    near_tie_documents=len(self.near_tie_docs), failures=len(self.failures),
                    failures_from_tokenization=sum(f.get("cause") == "tokenization" for f in self.failures),
                    result="PASS" if not self.failures else "FAIL")


def compare_loglikelihood(rep, docs, refs, prepared, qids, atol, tie_margin):
    for doc in docs:
        rep.documents += 1
        ref_ll, got_ll = [], []
        doc_tok_bad = False
        for c, (context, continuation) in enumerate(doc["requests"]):
            rep.requests += 1
            p = prepared[(doc["doc_id"], c)]
            if "error" in p:
                rep.fail(doc, "lm-eval cannot score this request", choice=c, error=p["error"])
                ref_ll.append(math.nan)
                got_ll.append(doc["loglik"][c])
                continue
            # A request tokenized differently from lm-eval fails on its ids; those failures and what follows from them
            # (loglik, counts, argmax) are marked cause="tokenization", so that other problems stand out.
            tok_bad = doc["num_tokens"][c] != len(p["cont"])
            if qids is not None:
                q = qids.get((doc["doc_id"], c))
                if q is None:
                    rep.id_mismatches += 1
                    rep.fail(doc, "no request in requests_<task>.json", choice=c)
                elif q != (p["ctx"], p["cont"]):
                    tok_bad = True
                    rep.id_mismatches += 1
                    part = "context" if q[0] != p["ctx"] else "continuation"
                    ref_ids, got_ids = (p["ctx"], q[0]) if part == "context" else (p["cont"], q[1])
                    at = next((i for i, (a, b) in enumerate(zip(ref_ids, got_ids)) if a != b),
                              min(len(ref_ids), len(got_ids)))
                    rep.fail(doc, f"{part} token ids differ from index {at}", choice=c, context=context,
                             continuation=continuation, reference_ids_from_there=ref_ids[at:],
                             qprob_ids_from_there=got_ids[at:], reference_context_ids=p["ctx"],
                             qprob_context_ids=q[0], reference_continuation_ids=p["cont"],
                             qprob_continuation_ids=q[1], cause="tokenization")
            doc_tok_bad = doc_tok_bad or tok_bad
            cause = {"cause": "tokenization"} if tok_bad else {}
            r = refs[p["input"]]
            got = doc["loglik"][c]
            ref_ll.append(r["loglik"])
            got_ll.append(got)
            if got is None or not math.isfinite(got):
                rep.fail(doc, "qprob loglik is not a finite number", choice=c, qprob=got, reference=r["loglik"])
            else:
                diff = abs(got - r["loglik"])
                rep.diffs.append(diff)
                if diff > atol:
                    rep.fail(doc, f"|loglik diff| {diff:.3g} > {atol:g}", choice=c, qprob=got, reference=r["loglik"],
                             **cause)
            if doc["num_tokens"][c] != len(p["cont"]):
                rep.token_count_mismatches += 1
                rep.fail(doc, "continuation token count differs", choice=c, qprob=doc["num_tokens"][c],
                         reference=len(p["cont"]), continuation=continuation, reference_continuation_ids=p["cont"],
                         **cause)
            if doc["is_greedy"][c] != r["is_greedy"]:
                if r["margin"] < tie_margin:
                    rep.greedy_near_ties += 1
                    rep.tie(doc, "is_greedy differs on a near tie", choice=c, margin=r["margin"],
                            qprob=doc["is_greedy"][c], reference=r["is_greedy"])
                else:
                    rep.greedy_mismatches += 1
                    rep.fail(doc, "is_greedy differs", choice=c, qprob=doc["is_greedy"][c], reference=r["is_greedy"],
                             margin=r["margin"], **cause)
            if doc["char_len"] is not None:
                want = len(continuation) - len(TARGET_DELIMITER) if continuation.startswith(TARGET_DELIMITER) else None
                if want is None or doc["char_len"][c] != want:
                    rep.fail(doc, "char_len is not len(choice)", choice=c, qprob=doc["char_len"][c], reference=want)
        if any(not math.isfinite(x) for x in ref_ll) or any(g is None or not math.isfinite(g) for g in got_ll):
            continue  # already failed above; an argmax over NaN says nothing
        cause = {"cause": "tokenization"} if doc_tok_bad else {}
        judge_argmax(rep, doc, "acc", ref_ll, got_ll, lambda a, b: tie_margin, cause)
        if doc["acc_norm"]:
            lens = [len(cont) - len(TARGET_DELIMITER) for _, cont in doc["requests"]]
            if min(lens) > 0:
                judge_argmax(rep, doc, "acc_norm", [x / n for x, n in zip(ref_ll, lens)],
                             [x / n for x, n in zip(got_ll, lens)],
                             lambda a, b: atol * (1.0 / lens[a] + 1.0 / lens[b]), cause)


def judge_argmax(rep, doc, metric, ref, got, margin_of, cause):
    r, g = first_argmax(ref), first_argmax(got)
    first, second = top_two(ref)
    gap = ref[first] - ref[second] if second is not None else math.inf
    margin = margin_of(first, second) if second is not None else 0.0
    near = gap < margin
    if metric == "acc":
        rep.acc_total += 1
        rep.acc_agree += r == g
    else:
        rep.norm_total += 1
        rep.norm_agree += r == g
    if near:
        rep.tie(doc, f"{metric} argmax near tie", reference_gap=gap, margin=margin, reference=r, qprob=g,
                agree=r == g)
    elif r != g:
        rep.fail(doc, f"{metric} argmax differs", reference=r, qprob=g, reference_gap=gap, **cause)


def compare_next_token(rep, docs, refs, prepared, qctx, atol, tie_margin):
    for doc in docs:
        rep.documents += 1
        rep.requests += 1
        p = prepared[(doc["doc_id"], 0)]
        if qctx is not None:
            q = qctx.get(doc["doc_id"])
            if q != p["ids"]:
                rep.id_mismatches += 1
                at = next((i for i, (a, b) in enumerate(zip(p["ids"], q or [])) if a != b),
                          min(len(p["ids"]), len(q or [])))
                rep.fail(doc, f"prompt token ids differ from index {at}", prompt=doc["prompt"],
                         reference_ids_from_there=p["ids"][at:], qprob_ids_from_there=(q or [])[at:],
                         reference_ids=p["ids"], qprob_ids=q, cause="tokenization")
        r = refs[p["input"]]
        rep.acc_total += 1
        agree = doc["token"] == r["token"]
        rep.acc_agree += agree
        if r["gap"] < tie_margin:
            rep.tie(doc, "next-token near tie", reference_gap=r["gap"], reference=r["token"], qprob=doc["token"],
                    agree=agree)
        elif not agree:
            rep.fail(doc, "next token differs", reference=r["token"], qprob=doc["token"], reference_gap=r["gap"])
        if agree:  # qprob's logprob is its own argmax's; compare like with like
            for key in ("logprob", "entropy"):
                got = doc[key]
                if got is None and key == "entropy":
                    continue
                if not is_number(got) or not math.isfinite(got):
                    rep.fail(doc, f"qprob {key} is not a finite number", qprob=got)
                    continue
                diff = abs(got - r[key])
                if key == "logprob":
                    rep.diffs.append(diff)
                if diff > atol:
                    rep.fail(doc, f"|{key} diff| {diff:.3g} > {atol:g}", qprob=got, reference=r[key])


# ------------------------------------------------------------------------------------------------ report
def fmt(x, spec=".2e"):
    return "-" if x is None else format(x, spec)


def dash(x):
    return "-" if x is None else str(x)


def markdown_table(rows):
    head = ("| task | documents | requests | max abs d loglik | mean abs d loglik | token-count mismatches | "
            "is_greedy mismatches (near-tie flips) | token-id mismatches | argmax acc | argmax acc_norm | "
            "near-tie documents | result |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        greedy = "-" if r["is_greedy_mismatches"] is None else \
            f"{r['is_greedy_mismatches']} ({r['is_greedy_near_tie_flips']})"
        acc = f"{r['argmax_acc'][0]}/{r['argmax_acc'][1]}" + (" (token)" if r["kind"] == "next_token" else "")
        norm = "-" if not r["argmax_acc_norm"] else f"{r['argmax_acc_norm'][0]}/{r['argmax_acc_norm'][1]}"
        lines.append(f"| {r['task']} | {r['documents']} | {r['requests']} | {fmt(r['max_abs_diff'])} | "
                     f"{fmt(r['mean_abs_diff'])} | {dash(r['token_count_mismatches'])} | {greedy} | "
                     f"{dash(r['token_id_mismatches'])} | {acc} | {norm} | {r['near_tie_documents']} | {r['result']} |")
    return "\n".join(lines)


def short(v, limit=160):
    s = json.dumps(v, ensure_ascii=False)
    return s if len(s) <= limit else s[:limit] + "..."


# ------------------------------------------------------------------------------------------------ main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="Hugging Face model directory (config, weights, tokenizer)")
    ap.add_argument("--qprob", required=True, help="folder with qprob's samples_<task>.jsonl (and optionally "
                                                    "requests_<task>.json from --write-requests)")
    ap.add_argument("--tasks", default="", help="comma-separated tasks (default: every samples_<task>.jsonl)")
    ap.add_argument("--json", help="write the table, failures, near ties and notes here")
    ap.add_argument("--label", default="", help="name of this run in the output (default: the model folder name)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--attn", default="eager", help="attn_implementation of the reference (eager or sdpa)")
    ap.add_argument("--max-length", type=int, help="lm-eval's max_length (the value given to qprob's driver)")
    ap.add_argument("--add-bos-token", choices=("true", "false"),
                    help="lm-eval's add_bos_token model argument (default: unset, the tokenizer's own rule)")
    ap.add_argument("--prefix-token-id", type=int, help="lm-eval's prefix_token_id model argument")
    ap.add_argument("--atol", type=float, default=1e-2, help="bound on |qprob - reference| log-likelihood (the "
                                                              "issue's 1e-2)")
    ap.add_argument("--tie-margin", type=float, default=2e-2,
                    help="reference margin below which a decision is a near tie (default 2 x atol)")
    args = ap.parse_args()

    t0 = time.time()
    label = args.label or os.path.basename(os.path.normpath(args.model))
    try:
        if not os.path.isdir(args.model):
            raise input_error(f"{args.model}: no such model directory")
        if not os.path.isdir(args.qprob):
            raise input_error(f"{args.qprob}: no such folder of qprob outputs")
        files = sorted(glob.glob(os.path.join(args.qprob, "samples_*.jsonl")))
        wanted = [t for t in args.tasks.split(",") if t]
        tasks = {re.sub(r"^samples_(.*)\.jsonl$", r"\1", os.path.basename(f)): f for f in files}
        for t in wanted:
            if t not in tasks:
                raise input_error(f"{os.path.join(args.qprob, 'samples_' + t + '.jsonl')}: no such file")
        if wanted:
            tasks = {t: tasks[t] for t in wanted}
        if not tasks:
            raise input_error(f"{args.qprob}: no samples_<task>.jsonl files")
        samples = {t: read_samples(f) for t, f in tasks.items()}
        qreq = {}
        for t in tasks:
            path = os.path.join(args.qprob, f"requests_{t}.json")
            if os.path.isfile(path):
                qreq[t] = read_requests(path)
    except (input_error, OSError, UnicodeDecodeError) as e:
        print(f"check_task_agreement: {e}", file=sys.stderr)
        return 2

    add_bos = None if args.add_bos_token is None else args.add_bos_token == "true"
    # As HFLM._create_tokenizer and configure_pad_token: use_fast, add_bos_token passed to the tokenizer too, and
    # a pad token chosen or added (an added "<|pad|>" is split off any text that contains it).
    tok_kwargs = {"use_fast": True} if add_bos is None else {"use_fast": True, "add_bos_token": add_bos}
    tokenizer = AutoTokenizer.from_pretrained(args.model, **tok_kwargs)
    config = AutoConfig.from_pretrained(args.model)
    if tokenizer.pad_token_id is None and not tokenizer.pad_token:
        if tokenizer.unk_token:
            tokenizer.pad_token_id = tokenizer.unk_token_id
        elif tokenizer.eos_token:
            tokenizer.pad_token_id = tokenizer.eos_token_id
        else:
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    enc = lm_eval_encoder(tokenizer, add_bos, args.prefix_token_id)
    max_length = args.max_length or resolve_max_length(config, tokenizer)
    notes = list(enc.notes)
    for t in tasks:  # the run qprob logged should be the run on this model
        res = os.path.join(args.qprob, f"results_{t}.json")
        if os.path.isfile(res):
            with open(res, encoding="utf-8") as f:
                cfg = (json.load(f).get("config") or {})
            model_args = dict(kv.split("=", 1) for kv in str(cfg.get("model_args", "")).split(",") if "=" in kv)
            m = model_args.get("pretrained")
            if m and os.path.realpath(m) != os.path.realpath(args.model):
                notes.append(f"{res}: qprob ran on {m}, not {args.model}")

    # Tokenize every request by lm-eval's rules; collect distinct model inputs.
    prepared, jobs, next_inputs = {}, set(), set()
    for t, docs in samples.items():
        for doc in docs:
            if doc["kind"] == "next_token":
                ids = list(tokenizer(doc["prompt"])["input_ids"])
                inp = tuple(ids[-max_length:])
                prepared[(t, doc["doc_id"], 0)] = dict(ids=ids, input=inp)
                next_inputs.add(inp)
                continue
            for c, (context, continuation) in enumerate(doc["requests"]):
                try:
                    ctx, cont = enc.encode_pair(context, continuation)
                    if not ctx or not cont:
                        raise ValueError(f"empty {'context' if not ctx else 'continuation'} encoding "
                                         f"(lm-eval asserts both are non-empty)")
                    if len(cont) > max_length:
                        raise ValueError(f"{len(cont)} continuation tokens > max_length {max_length} (lm-eval asserts)")
                except ValueError as e:
                    prepared[(t, doc["doc_id"], c)] = dict(error=str(e), ctx=[], cont=[])
                    continue
                job = (tuple((ctx + cont)[-(max_length + 1):][:-1]), tuple(cont))
                prepared[(t, doc["doc_id"], c)] = dict(ctx=ctx, cont=cont, input=job)
                jobs.add(job)
    t_tok = time.time() - t0

    ref = reference_model(args.model, args.device, args.attn)
    t1 = time.time()
    scored = ref.score(jobs)
    nexts = ref.next_token(next_inputs)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t_ref = time.time() - t1

    reports = []
    for t, docs in samples.items():
        kind = docs[0]["kind"]
        rep = task_report(t, kind)
        per_task = {(d, c): p for (tt, d, c), p in prepared.items() if tt == t}
        refs_t = nexts if kind == "next_token" else scored
        if kind == "next_token":
            qctx = qreq[t][1] if t in qreq else None
            rep.ids_checked = qctx is not None
            compare_next_token(rep, docs, refs_t, per_task, qctx, args.atol, args.tie_margin)
        else:
            qids = qreq[t][0] if t in qreq else None
            rep.ids_checked = qids is not None
            compare_loglikelihood(rep, docs, refs_t, per_task, qids, args.atol, args.tie_margin)
        reports.append(rep)

    rows = [r.row() for r in reports]
    failures = [f for r in reports for f in r.failures]
    near_ties = [n for r in reports for n in r.near_ties]
    passed = not failures
    print(f"\n### {label}: qprob ({args.qprob}) vs transformers {transformers.__version__} float32 "
          f"({ref.attn}, {args.device})\n")
    print(f"tokenizer {type(tokenizer).__name__}, prefix_token_id {enc.prefix_token_id}, add_bos_token "
          f"{args.add_bos_token or 'unset'}, max_length {max_length}; {len(jobs)} distinct loglikelihood inputs and "
          f"{len(next_inputs)} next-token inputs in {ref.forwards} forward passes; tokenize {t_tok:.1f} s, "
          f"reference {t_ref:.1f} s; bound |d| <= {args.atol:g}, near tie below {args.tie_margin:g}\n")
    print(markdown_table(rows))
    for n in notes:
        print(f"\nnote: {n}")
    if near_ties:
        flips = [n for n in near_ties if not n.get("agree", False)]
        print(f"\nnear ties (reference margin below the bound; not failures): {len(near_ties)}, of which "
              f"{len(flips)} decided differently by qprob")
        for n in flips[:MAX_LISTED]:
            rest = {k: v for k, v in n.items() if k not in ("task", "doc_id")}
            print(f"  {n['task']} doc {n['doc_id']}: {short(rest)}")
    if failures:
        print(f"\nFAILURES ({len(failures)}):")
        for r in reports:
            for f in r.failures[:MAX_LISTED]:
                hidden = ("task", "doc_id", "line", "what", "context", "reference_context_ids", "qprob_context_ids",
                          "reference_continuation_ids", "qprob_continuation_ids", "prompt", "reference_ids",
                          "qprob_ids")
                rest = {k: v for k, v in f.items() if k not in hidden}
                print(f"  {f['task']} doc {f['doc_id']} (samples_{f['task']}.jsonl line {f['line']}): {f['what']} "
                      f"{short(rest, 600)}")
            if len(r.failures) > MAX_LISTED:
                print(f"  {r.task}: {len(r.failures) - MAX_LISTED} more (see --json)")
    caused = sum(f.get("cause") == "tokenization" for f in failures)
    print(f"\nResult: {'PASSED' if passed else 'FAILED'} ({label}: {len(rows)} tasks, "
          f"{sum(r['requests'] for r in rows)} requests, {len(failures)} failures ({caused} are token-id differences "
          f"or follow from one, {len(failures) - caused} others), {len(near_ties)} near ties)")

    if args.json:
        out = dict(label=label, model=args.model, qprob=args.qprob, passed=passed, rows=rows, failures=failures,
                   near_ties=near_ties, notes=notes,
                   settings=dict(atol=args.atol, tie_margin=args.tie_margin, max_length=max_length,
                                 add_bos_token=args.add_bos_token, prefix_token_id=enc.prefix_token_id,
                                 tokenizer=type(tokenizer).__name__, attn=ref.attn, device=args.device,
                                 torch=torch.__version__, transformers=transformers.__version__),
                   seconds=dict(tokenize=t_tok, reference=t_ref, total=time.time() - t0))
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1, ensure_ascii=False)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
