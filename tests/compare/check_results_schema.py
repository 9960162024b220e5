#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Checks a `qprob compare` output directory against the results.json schema of docs/compare.md.

    check_results_schema.py OUT_DIR --tasks arc_easy,boolq --limit 8 [--shared DIR]

Validates every required key and type, n > 0 (and n == --limit when given), probabilities and rates in [0, 1],
p-values in [0, 1], entropies in [0, ln K] (next-token tasks: [0, ln V] over the vocabulary), the
conf_shift_by_bin entries, the keys that must be absent from next-token tasks, and that every
samples_<task>_{full,quantized}.jsonl has n parsable lines with lm-eval's keys. Exit 0: valid; 1: invalid (every
problem printed); 77: skipped (--shared given and absent, so the run before was skipped too). stdlib only.
"""
import argparse
import json
import math
import os
import sys

problems = []


def fail(path, msg):
    problems.append(f"{path}: {msg}")


def get(obj, key, path):
    if not isinstance(obj, dict):
        fail(path, f"expected an object, got {type(obj).__name__}")
        return None
    if key not in obj:
        fail(f"{path}.{key}", "missing")
        return None
    return obj[key]


def number(obj, key, path, lo=None, hi=None, nullable=False):
    v = get(obj, key, path)
    p = f"{path}.{key}"
    if v is None:
        if key in (obj or {}) and not nullable:
            fail(p, "is null but must be a number")
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        fail(p, f"expected a finite number, got {v!r}")
        return None
    if lo is not None and v < lo - 1e-12:
        fail(p, f"{v} < {lo}")
    if hi is not None and v > hi + 1e-12:
        fail(p, f"{v} > {hi}")
    return v


def integer(obj, key, path, lo=None):
    v = get(obj, key, path)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        fail(f"{path}.{key}", f"expected an integer, got {v!r}")
        return None
    if lo is not None and v < lo:
        fail(f"{path}.{key}", f"{v} < {lo}")
    return v


# Keys of a model block that a next-token task must not have: they need a distribution over the answers.
CHOICE_ONLY_KEYS = ("acc_norm", "acc_norm_stderr", "conf_true", "brier", "nll")


def check_model(m, path, k, next_token=False):
    """k: choices (multiple-choice tasks) or the vocabulary size (next-token tasks)."""
    if next_token:
        for key in ("acc", "ece", "ace", "conf", "answer_rate"):
            number(m, key, path, 0.0, 1.0)
        for key in CHOICE_ONLY_KEYS:
            if isinstance(m, dict) and key in m:
                fail(f"{path}.{key}", "must be absent from a next-token task")
    else:
        for key in ("acc", "ece", "ace", "conf", "conf_true", "brier"):
            number(m, key, path, 0.0, 2.0 if key == "brier" else 1.0)
        number(m, "acc_norm", path, 0.0, 1.0, nullable=True)
    number(m, "conf_err", path, 0.0, 1.0, nullable=True)  # null when every prediction is right
    number(m, "conf_correct", path, 0.0, 1.0, nullable=True)  # null when every prediction is wrong
    acc, n_correct = number(m, "acc", path), integer(m, "n_correct", path, 0)
    if acc is not None and n_correct is not None and isinstance(m.get("n"), int) and m["n"] > 0:
        if abs(acc - n_correct / m["n"]) > 1e-12:
            fail(f"{path}.acc", f"{acc} != n_correct / n = {n_correct / m['n']}")
    wilson = get(m, "acc_wilson", path)
    if not (isinstance(wilson, list) and len(wilson) == 2 and all(isinstance(x, (int, float)) for x in wilson)
            and 0 <= wilson[0] <= wilson[1] <= 1):
        fail(f"{path}.acc_wilson", f"expected [lower, upper] within [0, 1], got {wilson!r}")
    conf = m.get("conf") if isinstance(m, dict) else None
    if isinstance(conf, (int, float)) and conf < 1.0 / k - 1e-9:
        fail(f"{path}.conf", f"{conf} below 1/{'V' if next_token else 'K'} = {1.0 / k}")
    ent = number(m, "entropy", path, 0.0, math.log(k))
    bits = number(m, "entropy_bits", path, 0.0, math.log2(k))
    x100 = number(m, "entropy_bits_x100", path, 0.0, 100 * math.log2(k))
    if ent is not None and bits is not None and abs(bits - ent / math.log(2)) > 1e-9:
        fail(f"{path}.entropy_bits", f"{bits} != entropy / ln 2 = {ent / math.log(2)}")
    if bits is not None and x100 is not None and abs(x100 - 100 * bits) > 1e-7:
        fail(f"{path}.entropy_bits_x100", f"{x100} != 100 * entropy_bits")
    rel = get(m, "reliability", path)
    if isinstance(rel, list):
        total = 0
        for i, b in enumerate(rel):
            bp = f"{path}.reliability[{i}]"
            number(b, "lower", bp, 0, 1)
            number(b, "upper", bp, 0, 1)
            c = integer(b, "count", bp, 0)
            total += c or 0
            number(b, "conf", bp, 0, 1, nullable=(c == 0))
            number(b, "acc", bp, 0, 1, nullable=(c == 0))
        if total != m.get("n"):
            fail(f"{path}.reliability", f"counts sum to {total}, n is {m.get('n')}")
    else:
        fail(f"{path}.reliability", "expected an array")


def check_p(obj, path, name):
    t = get(obj, name, path)
    if t is not None:
        number(t, "p", f"{path}.{name}", 0.0, 1.0)


def check_paired(p, path, n):
    number(p, "jsd", path, 0.0, math.log(2))
    number(p, "kl", path, 0.0)
    number(p, "flip_rate", path, 0.0, 1.0)
    number(p, "js_distance", path, 0.0, math.sqrt(math.log(2)))
    t = get(p, "ttest_conf_true", path)
    if t is not None:
        number(t, "t", f"{path}.ttest_conf_true")
        number(t, "p", f"{path}.ttest_conf_true", 0.0, 1.0)
    check_p(p, path, "mcnemar")
    bins = get(p, "conf_shift_by_bin", path)
    if not isinstance(bins, list) or not bins:
        fail(f"{path}.conf_shift_by_bin", "expected a non-empty array")
        return
    total, prev_upper = 0, None
    for i, b in enumerate(bins):
        bp = f"{path}.conf_shift_by_bin[{i}]"
        lo, hi = number(b, "lower", bp, 0, 1), number(b, "upper", bp, 0, 1)
        if lo is not None and hi is not None and not lo < hi:
            fail(bp, f"lower {lo} >= upper {hi}")
        if prev_upper is not None and lo is not None and abs(lo - prev_upper) > 1e-12:
            fail(bp, f"lower {lo} does not continue the previous upper {prev_upper}")
        prev_upper = hi
        c = integer(b, "count", bp, 0)
        total += c or 0
        number(b, "mean_conf_shift", bp, -1, 1, nullable=(c == 0))
        number(b, "mean_true_shift", bp, -1, 1, nullable=(c == 0))
        number(b, "se_conf_shift", bp, 0, None, nullable=(c is None or c < 2))
        number(b, "se_true_shift", bp, 0, None, nullable=(c is None or c < 2))
    if total != n:
        fail(f"{path}.conf_shift_by_bin", f"counts sum to {total}, n is {n}")


def check_next_token_paired(p, path, n):
    agree = number(p, "agreement", path, 0.0, 1.0)
    flip = number(p, "flip_rate", path, 0.0, 1.0)
    if agree is not None and flip is not None and abs(agree + flip - 1.0) > 1e-12:
        fail(f"{path}.flip_rate", f"{flip} != 1 - agreement")
    c = get(p, "correctness", path)
    if isinstance(c, dict):
        total = sum(integer(c, key, f"{path}.correctness", 0) or 0
                    for key in ("both_correct", "full_only", "quant_only", "both_wrong"))
        if total != n:
            fail(f"{path}.correctness", f"counts sum to {total}, n is {n}")
    number(p, "mean_conf_shift", path, -1.0, 1.0)
    number(p, "mean_entropy_shift", path)
    for name in ("ttest_conf", "ttest_entropy"):
        t = get(p, name, path)
        if t is not None:
            number(t, "t", f"{path}.{name}", nullable=True)  # null for n < 2 or 0/0
            number(t, "p", f"{path}.{name}", 0.0, 1.0, nullable=True)
    w = get(p, "wilcoxon_conf", path)
    if w is not None:
        number(w, "p", f"{path}.wilcoxon_conf", 0.0, 1.0, nullable=True)
    check_p(p, path, "mcnemar")
    for key in ("jsd", "kl", "js_distance", "ttest_conf_true"):
        if key in p:
            fail(f"{path}.{key}", "must be absent from a next-token task (no distribution over the answers)")
    bins = get(p, "conf_shift_by_bin", path)
    if not isinstance(bins, list) or not bins:
        fail(f"{path}.conf_shift_by_bin", "expected a non-empty array")
        return
    total = 0
    for i, b in enumerate(bins):
        bp = f"{path}.conf_shift_by_bin[{i}]"
        number(b, "lower", bp, 0, 1)
        number(b, "upper", bp, 0, 1)
        c = integer(b, "count", bp, 0)
        total += c or 0
        number(b, "mean_conf_shift", bp, -1, 1, nullable=(c == 0))
        number(b, "se_conf_shift", bp, 0, None, nullable=(c is None or c < 2))
    if total != n:
        fail(f"{path}.conf_shift_by_bin", f"counts sum to {total}, n is {n}")


def check_samples(out, task, which, n):
    f = os.path.join(out, f"samples_{task}_{which}.jsonl")
    try:
        lines = open(f, encoding="utf-8").read().splitlines()
    except OSError as e:
        fail(f, str(e))
        return
    if len(lines) != n:
        fail(f, f"{len(lines)} lines for n = {n}")
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except ValueError as e:
            fail(f"{f}:{i + 1}", f"does not parse: {e}")
            continue
        for key in ("doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "acc", "qprob"):
            if key not in rec:
                fail(f"{f}:{i + 1}", f"lacks {key}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--tasks", required=True)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--shared")
    a = ap.parse_args()
    if a.shared and not os.path.isdir(a.shared):
        print(f"skipped: {a.shared} is absent")
        return 77
    path = os.path.join(a.out, "results.json")
    try:
        doc = json.load(open(path, encoding="utf-8"))
    except (OSError, ValueError) as e:
        print(f"{path}: {e}")
        return 1
    if doc.get("format") != "qprob-compare-results/1":
        fail("format", f"expected qprob-compare-results/1, got {doc.get('format')!r}")
    for key in ("model", "quantization", "software", "settings", "metric_options"):
        if not isinstance(doc.get(key), dict):
            fail(key, "missing or not an object")
    number(doc.get("metric_options", {}), "alpha", "metric_options", 0.0, 1.0)
    for key in ("bits", "group_size", "method"):
        get(doc.get("quantization", {}), key, "quantization") if doc.get("quantization", {}).get("method") != "loaded" else None
    get(doc.get("software", {}), "qprob_version", "software")
    tasks = doc.get("tasks")
    if not isinstance(tasks, dict):
        fail("tasks", "missing or not an object")
        tasks = {}
    for task in a.tasks.split(","):
        t = tasks.get(task)
        tp = f"tasks.{task}"
        if not isinstance(t, dict):
            fail(tp, "missing")
            continue
        n = integer(t, "n", tp, 1)
        kind = get(t, "kind", tp)
        if kind is not None and kind not in ("loglikelihood", "next_token_vocab"):
            fail(f"{tp}.kind", f"expected loglikelihood or next_token_vocab, got {kind!r}")
        next_token = kind == "next_token_vocab"
        if next_token:
            k = integer(t, "vocab_size", tp, 2) or 2
            answers = get(t, "answers", tp)
            if not (isinstance(answers, list) and answers and all(isinstance(x, str) for x in answers)):
                fail(f"{tp}.answers", f"expected a non-empty list of strings, got {answers!r}")
        else:
            k = integer(t, "num_choices", tp, 2) or 2
        if a.limit is not None and n is not None and n != a.limit:
            fail(f"{tp}.n", f"{n} != --limit {a.limit}")
        for which in ("full", "quantized"):
            m = get(t, which, tp)
            if isinstance(m, dict):
                if m.get("n") != n:
                    fail(f"{tp}.{which}.n", f"{m.get('n')} != {n}")
                check_model(m, f"{tp}.{which}", k, next_token)
        p = get(t, "paired", tp)
        if isinstance(p, dict):
            (check_next_token_paired if next_token else check_paired)(p, f"{tp}.paired", n)
        if n:
            check_samples(a.out, task, "full", n)
            check_samples(a.out, task, "quantized", n)
    extra = set(tasks) - set(a.tasks.split(","))
    if extra:
        fail("tasks", f"unexpected tasks {sorted(extra)}")
    for p in problems:
        print("invalid:", p)
    print(f"{path}: {'INVALID' if problems else 'valid'} ({len(a.tasks.split(','))} tasks, {len(problems)} problems)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
