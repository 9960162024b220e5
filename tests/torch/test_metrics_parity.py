# SPDX-License-Identifier: Apache-2.0
"""Parity of qprob's metrics (host reference and device implementation) with torchmetrics, scipy and numpy.

Runs on the GPU machine only (needs torch, torchmetrics, scipy; pandas is optional: the seed notebook's
2-choice ece() uses it). Builds inputs with fixed seeds -- random and adversarial: ties, confidences exactly
on bin edges, conf == 1.0, K = 2, ragged K, N = 1 -- writes them to JSON, runs the metrics_check driver
(built with the metrics tests), computes the references in float64 here and requires agreement to 1e-9
relative (1e-12 absolute near 0) for both qprob implementations. Prints the worst relative error per metric.

    cmake --build build/metrics --target metrics_check
    QPROB_BUILD_DIR=build/metrics python -m pytest -s tests/torch/test_metrics_parity.py

Reference calls (see docs/metrics.md): torchmetrics' _binning_bucketize on float64 tensors with explicit
edges k / B (its public CalibrationError casts to float32), scipy.stats.entropy, ttest_rel, wilcoxon
(method chosen like qprob: exact when n_nonzero <= 50 without ties, else asymptotic), binom.cdf (McNemar),
scipy.spatial.distance.jensenshannon (a distance; squared for the divergence), numpy for the rest.
"""
import json
import math
import os
import subprocess
import tempfile
from collections import defaultdict

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tm_cal = pytest.importorskip("torchmetrics.functional.classification.calibration_error")
stats = pytest.importorskip("scipy.stats")
from scipy import special  # noqa: E402
from scipy.spatial.distance import jensenshannon  # noqa: E402
from scipy.special import log_softmax, softmax  # noqa: E402

RTOL = 1e-9
# JS *distances* are square roots of divergences. Near 0 the square root amplifies rounding: a divergence made
# of O(1) terms carries ~4e-16 absolute rounding noise (two double ulps), which becomes sqrt(4e-16) = 2e-8 in
# the distance of a pair of (nearly) identical distributions, whatever the implementation (scipy and qprob
# differ there by exactly such amounts: js_distance_mean 1.7e-9 relative on `wide_spread`). Distances are
# therefore compared with this absolute floor on top of RTOL; the divergences themselves keep RTOL/ATOL.
DISTANCE_ATOL = 2e-8
ATOL = 1e-12
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("QPROB_BUILD_DIR", os.path.join(ROOT, "build", "metrics"))
DRIVER = os.path.join(BUILD, "tests", "unit", "metrics", "metrics_check")


# ---------------------------------------------------------------------------------------------- inputs
def random_case(name, seed, n, kmin, kmax, spread=4.0, noise=0.7, **options):
    rng = np.random.default_rng(seed)
    ks = rng.integers(kmin, kmax + 1, size=n)
    offsets = np.concatenate([[0], np.cumsum(ks)]).astype(np.int64)
    total = int(offsets[-1])
    ll = rng.normal(-20.0, spread, size=total)
    return dict(name=name, offsets=offsets.tolist(), loglik=ll.tolist(),
                loglik_quant=(ll + rng.normal(0.0, noise, size=total)).tolist(),
                char_len=rng.integers(1, 61, size=total).tolist(), token_len=rng.integers(1, 16, size=total).tolist(),
                gold=[int(rng.integers(0, k)) for k in ks], options=options)


def adversarial_case(name, rows_full, rows_quant, gold, **options):
    """Rows of log-likelihoods. Only exact-exp inputs sit on edges: ties (exp(0) = 1) and underflow
    (exp(-800) = 0), so every implementation computes the same confidence bit for bit."""
    offsets = [0]
    for r in rows_full:
        offsets.append(offsets[-1] + len(r))
    flat = [v for r in rows_full for v in r]
    return dict(name=name, offsets=offsets, loglik=flat, loglik_quant=[v for r in rows_quant for v in r],
                char_len=[1 + (i % 7) for i in range(len(flat))], token_len=[1 + (i % 3) for i in range(len(flat))],
                gold=gold, options=options)


def build_cases():
    cases = []
    for edges in ("upper_closed", "torchmetrics"):
        for ace in ("nixon", "equal_mass_top_label", "uniform_average"):
            cases.append(random_case(f"k4_{edges}_{ace}", 1, 5003, 4, 4, edges=edges, ace=ace, bins=15, ace_ranges=10))
    cases.append(random_case("ragged_2_7", 2, 2999, 2, 7, ace="nixon", bins=10))
    cases.append(random_case("k2_seed", 3, 1001, 2, 2, ace="seed_compat", bins=100))
    cases.append(random_case("k4_seed", 4, 1500, 4, 4, ace="seed_compat"))
    cases.append(random_case("char_norm", 5, 777, 3, 5, score="char", ace="equal_mass_top_label"))
    cases.append(random_case("token_norm", 6, 555, 2, 4, score="token", ace="uniform_average", edges="torchmetrics"))
    cases.append(random_case("small_n_exact_wilcoxon", 7, 23, 2, 4, ace="equal_mass_top_label", ace_ranges=4))
    cases.append(random_case("n1", 8, 1, 3, 3, ace="equal_mass_top_label", ace_ranges=1))
    cases.append(random_case("wide_spread", 9, 3001, 4, 4, spread=40.0, noise=5.0))
    # ties and edges: uniform K gives conf 1/K (0.5, 0.25, 0.2 are edges of 4, 15 and 20 bins); -800 gives 1.0
    rows_f, rows_q, gold = [], [], []
    for i in range(60):
        k = (2, 4, 5, 3)[i % 4]
        if i % 5 == 0:
            row = [0.0] + [-800.0] * (k - 1)          # conf exactly 1.0
        elif i % 5 == 1:
            row = [-800.0] * (k - 1) + [0.0]
        else:
            row = [-3.0] * k                           # k-way tie
        rows_f.append(row)
        rows_q.append([-3.0] * k if i % 3 == 0 else row)
        gold.append(i % k)
    for edges in ("upper_closed", "torchmetrics"):
        for bins in (4, 15, 20):
            cases.append(adversarial_case(f"edges_{edges}_{bins}", rows_f, rows_q, gold, edges=edges, bins=bins,
                                          ace="equal_mass_top_label", ace_ranges=4, shift_bins=4))
    return cases


# ---------------------------------------------------------------------------------------------- references
def split(case, key):
    off = case["offsets"]
    arr = np.asarray(case[key], dtype=np.float64)
    return [arr[off[i]:off[i + 1]] for i in range(len(off) - 1)]


def scores(case, key):
    mode = case["options"].get("score", "sum")
    rows = split(case, key)
    if mode == "sum":
        return rows
    lens = split(case, "char_len" if mode == "char" else "token_len")
    return [r / l for r, l in zip(rows, lens)]


def equal_width_torchmetrics(conf, correct, bins, edges):
    c = torch.tensor(conf, dtype=torch.float64)
    a = torch.tensor(correct, dtype=torch.float64)
    boundaries = torch.tensor([k / bins for k in range(bins + 1)], dtype=torch.float64)
    if edges == "torchmetrics":
        acc_bin, conf_bin, prop_bin = tm_cal._binning_bucketize(c, a, boundaries)
        count = torch.zeros(bins + 1, dtype=torch.float64).scatter_add_(
            0, torch.bucketize(c, boundaries, right=True) - 1, torch.ones_like(c))
    else:  # (lower, upper]: the same scatter with right=False, clamped at 0
        idx = (torch.bucketize(c, boundaries, right=False) - 1).clamp(min=0)
        count = torch.zeros(bins, dtype=torch.float64).scatter_add_(0, idx, torch.ones_like(c))
        conf_bin = torch.nan_to_num(torch.zeros(bins, dtype=torch.float64).scatter_add_(0, idx, c) / count)
        acc_bin = torch.nan_to_num(torch.zeros(bins, dtype=torch.float64).scatter_add_(0, idx, a) / count)
        prop_bin = count / count.sum()
    gap = torch.abs(acc_bin - conf_bin)
    ece = torch.sum(gap * prop_bin).item()
    rms = math.sqrt(torch.sum((acc_bin - conf_bin) ** 2 * prop_bin).item())
    mce = torch.max(gap).item()
    nonempty = count > 0
    uniform_avg = gap[nonempty].mean().item()
    return ece, mce, rms, uniform_avg, count.numpy(), torch.where(nonempty, conf_bin, torch.nan).numpy(), \
        torch.where(nonempty, acc_bin, torch.nan).numpy()


def equal_mass(values, hits, ranges):
    order = np.argsort(values, kind="stable")
    gaps = [abs(np.mean(hits[p]) - np.mean(values[p])) for p in np.array_split(order, ranges) if len(p)]
    return gaps


def notebook_ace(y_true, y_pred, num_ranges=15):  # the seed notebook's function, verbatim logic
    N = len(y_true)
    num_classes = y_pred.shape[1]
    confs = np.sort(np.max(y_pred, axis=1))
    step = int(np.floor(N / num_ranges))
    thresholds = np.repeat(np.array([confs[i] for i in range(0, step * num_ranges, step)])[np.newaxis, ...], N, axis=0)
    max_preds = np.repeat(np.max(y_pred, axis=1)[..., np.newaxis], num_ranges, axis=1)
    b = (max_preds <= thresholds).astype(int)
    bin_indices = np.argmax(b, axis=1)
    ace = 0
    for bin in range(num_ranges):
        bin_preds = y_pred[bin_indices == bin, :]
        bin_labels = y_true[bin_indices == bin]
        for k in range(num_classes):
            bin_class_preds = bin_preds[bin_labels == k, :]
            if bin_class_preds.shape[0] == 0:
                continue
            bin_class_acc = np.mean((np.argmax(bin_class_preds, axis=1) == k).astype(int))
            bin_class_conf = np.mean(np.max(bin_class_preds, axis=1))
            ace += abs(bin_class_acc - bin_class_conf)
    ace /= num_classes * num_ranges
    return ace


def notebook_ece(y_true, y_pred, n_bins=100):
    """Returns None when pandas is missing (the notebook's ece() needs it); that one value is then skipped."""
    try:
        import pandas as pd
    except ImportError:
        print("pandas not installed: the seed notebook's 2-choice ece() is not compared")
        return None
    n = len(y_pred)
    bins = np.arange(0.0, 1.0, 1.0 / n_bins)
    y_pred = np.max(y_pred, axis=-1)
    df = pd.DataFrame({"y_pred": y_pred, "y": y_true, "pred_bins": np.digitize(y_pred, bins)})
    grouped = df.groupby("pred_bins")
    binned = grouped.mean()
    binned["weight"] = grouped["y"].count() / n
    return (abs(binned["y_pred"] - binned["y"]) * binned["weight"]).sum()


def model_reference(case, key):
    opt = case["options"]
    gold = np.asarray(case["gold"])
    s = scores(case, key)
    p = [softmax(r) for r in s]
    pred = np.array([int(np.argmax(r)) for r in s])
    conf = np.array([pi[j] for pi, j in zip(p, pred)])
    correct = (pred == gold).astype(np.float64)
    raw = split(case, key)
    lens = split(case, "char_len")
    ref = {
        "acc": np.mean([int(np.argmax(r)) == g for r, g in zip(raw, gold)]),
        "acc_norm": np.mean([int(np.argmax(r / l)) == g for r, l, g in zip(raw, lens, gold)]),
        "accuracy": correct.mean(),
        "conf": conf.mean(),
        "conf_true": np.mean([pi[g] for pi, g in zip(p, gold)]),
        "entropy": np.mean([stats.entropy(pi) for pi in p]),
        "brier": np.mean([np.sum((pi - np.eye(len(pi))[g]) ** 2) for pi, g in zip(p, gold)]),
        "nll": np.mean([-log_softmax(r)[g] for r, g in zip(s, gold)]),
    }
    ref["entropy_bits"] = ref["entropy"] / math.log(2)
    if correct.sum() > 0:
        ref["conf_correct"] = conf[correct == 1].mean()
    if correct.sum() < len(correct):
        ref["conf_err"] = conf[correct == 0].mean()
    bins, edges = opt.get("bins", 15), opt.get("edges", "upper_closed")
    ece, mce, rms, _, count, rconf, racc = equal_width_torchmetrics(conf, correct, bins, edges)
    ref.update(ece=ece, mce=mce, rmsce=rms, rel_count=count, rel_conf=rconf, rel_acc=racc)
    ranges, ace = opt.get("ace_ranges", 15), opt.get("ace", "nixon")
    if ace == "equal_mass_top_label":
        ref["ace"] = np.mean(equal_mass(conf, correct, ranges))
    elif ace == "uniform_average":
        ref["ace"] = equal_width_torchmetrics(conf, correct, ranges, edges)[3]
    elif ace == "nixon":
        gaps = []
        for k in range(max(len(r) for r in p)):
            idx = [i for i, r in enumerate(p) if len(r) > k]
            gaps += equal_mass(np.array([p[i][k] for i in idx]), (gold[idx] == k).astype(np.float64), ranges)
        ref["ace"] = np.mean(gaps)
    else:  # seed_compat: the notebook's probabilities and functions
        logits = np.array(s)
        probs = np.array([np.exp(l - np.max(l)) / np.sum(np.exp(l - np.max(l))) for l in logits])
        value = notebook_ace(gold, probs) if probs.shape[1] > 2 else notebook_ece(gold, probs)
        if value is not None:
            ref["ace"] = value
    return ref, p, conf, pred


def js_divergence(a, b):
    """Jensen-Shannon divergence (nats) via scipy's jensenshannon, squared. For two (nearly) identical
    distributions scipy can return NaN: rounding makes its divergence slightly negative before the square root
    (it warns "invalid value encountered in sqrt"). The divergence is then that rounding residue; it is
    recomputed here with the same terms (scipy.special.rel_entr) and clamped at 0, as qprob clamps it."""
    d = jensenshannon(a, b)
    if not np.isnan(d):
        return d * d
    a = np.asarray(a, dtype=np.float64) / np.sum(a)
    b = np.asarray(b, dtype=np.float64) / np.sum(b)
    m = (a + b) / 2
    return max(0.0, 0.5 * (np.sum(special.rel_entr(a, m)) + np.sum(special.rel_entr(b, m))))


def paired_reference(case):
    _, pf, cf, predf = model_reference(case, "loglik")
    _, pq, cq, predq = model_reference(case, "loglik_quant")
    gold = np.asarray(case["gold"])
    js = np.array([js_divergence(a, b) for a, b in zip(pf, pq)])
    tf = np.array([a[g] for a, g in zip(pf, gold)])
    tq = np.array([a[g] for a, g in zip(pq, gold)])
    okf, okq = predf == gold, predq == gold
    b, c = int(np.sum(okf & ~okq)), int(np.sum(~okf & okq))
    ref = {
        "jsd_mean": js.mean(), "jsd_median": np.median(js),
        "js_distance_mean": np.sqrt(js).mean(), "js_distance_median": np.median(np.sqrt(js)),
        "true_class_jsd": js_divergence(tf, tq), "true_class_js_distance": math.sqrt(js_divergence(tf, tq)),
        "kl_full_quant": np.mean([stats.entropy(a, b_) for a, b_ in zip(pf, pq)]),
        "kl_quant_full": np.mean([stats.entropy(b_, a) for a, b_ in zip(pf, pq)]),
        "flip_rate": np.mean(predf != predq),
        "table": [int(np.sum(okf & okq)), b, c, int(np.sum(~okf & ~okq))],
        "mcnemar_p": 1.0 if b + c == 0 else min(1.0, 2 * stats.binom.cdf(min(b, c), b + c, 0.5)),
    }
    if len(gold) > 1:
        t = stats.ttest_rel(tf, tq)
        ref["ttest_t"], ref["ttest_p"] = t.statistic, t.pvalue
    d = tf - tq
    nz = d[d != 0]
    if len(nz):
        ties = len(np.unique(np.abs(nz))) < len(nz)
        method = "exact" if len(nz) <= 50 and not ties else "asymptotic"
        w = stats.wilcoxon(tf, tq, zero_method="wilcox", correction=False, method=method)
        ref["wilcoxon_statistic"], ref["wilcoxon_p"], ref["wilcoxon_exact"] = w.statistic, w.pvalue, method == "exact"
    nb = case["options"].get("shift_bins", 10)
    lo = 1.0 / max(len(r) for r in pf)
    upper = [lo + (1.0 - lo) * k / nb for k in range(1, nb)] + [1.0]
    sb = np.array([next(k for k in range(nb) if k == nb - 1 or x <= upper[k]) for x in cf])
    dc, dt = cq - cf, tq - tf
    cnt, mc, sc, mt, st = [], [], [], [], []
    for k in range(nb):
        sel = sb == k
        cnt.append(float(sel.sum()))
        mc.append(dc[sel].mean() if sel.any() else math.nan)
        mt.append(dt[sel].mean() if sel.any() else math.nan)
        sc.append(dc[sel].std(ddof=1) / math.sqrt(sel.sum()) if sel.sum() > 1 else math.nan)
        st.append(dt[sel].std(ddof=1) / math.sqrt(sel.sum()) if sel.sum() > 1 else math.nan)
    ref.update(shift_count=cnt, shift_mean_conf=mc, shift_se_conf=sc, shift_mean_true=mt, shift_se_true=st)
    return ref


# ---------------------------------------------------------------------------------------------- comparison
def rel_error(got, want):
    want = float(want)
    if got is None:  # JSON has no inf/NaN: nlohmann writes both as null
        return 0.0 if not math.isfinite(want) else math.inf
    got = float(got)
    if math.isnan(want) or math.isnan(got):
        return 0.0 if (math.isnan(want) and math.isnan(got)) else math.inf
    if math.isinf(want) or math.isinf(got):
        return 0.0 if got == want else math.inf
    diff = abs(got - want)
    return 0.0 if diff <= ATOL else diff / max(abs(got), abs(want))


def compare(worst, failures, where, got, ref):
    for key, want in ref.items():
        if key not in got:
            failures.append(f"{where}: qprob reports no {key}")
            continue
        g = got[key]
        wants = np.atleast_1d(np.asarray(want, dtype=np.float64))
        gots = list(g) if isinstance(g, list) else [g]
        if wants.shape != (len(gots),):
            failures.append(f"{where}: {key} has {len(gots)} values, reference {wants.shape}")
            continue
        for i, (a, b) in enumerate(zip(gots, wants)):
            e = rel_error(a, b)
            if "js_distance" in key and a is not None and math.isfinite(float(b)) and abs(float(a) - float(b)) <= DISTANCE_ATOL:
                e = 0.0
            metric = key.split(":")[0]
            worst[metric] = max(worst[metric], e)
            if e > RTOL:
                failures.append(f"{where}: {key}[{i}] = {a!r}, reference {b!r} (rel {e:.3g})")


def test_metrics_parity():
    if not os.path.exists(DRIVER):
        pytest.fail(f"{DRIVER} not built: cmake --build {BUILD} --target metrics_check")
    cases = build_cases()
    with tempfile.TemporaryDirectory() as tmp:
        cin, cout = os.path.join(tmp, "cases.json"), os.path.join(tmp, "results.json")
        with open(cin, "w") as f:
            json.dump({"cases": cases}, f)
        subprocess.run([DRIVER, cin, cout], check=True)
        with open(cout) as f:
            results = json.load(f)
    assert results["gpu"], "metrics_check found no usable GPU: the device implementation was not tested"
    worst = {"host": defaultdict(float), "device": defaultdict(float)}
    failures = []
    for case, res in zip(cases, results["cases"]):
        assert case["name"] == res["name"]
        mref, *_ = model_reference(case, "loglik")
        qref, *_ = model_reference(case, "loglik_quant")
        pref = paired_reference(case)
        for impl in ("host", "device"):
            compare(worst[impl], failures, f"{case['name']}/{impl}", res[impl], mref)
            compare(worst[impl], failures, f"{case['name']}/{impl}_quant", res[impl + "_quant"], qref)
            compare(worst[impl], failures, f"{case['name']}/{impl}_paired", res[impl + "_paired"], pref)
    keys = sorted(set(worst["host"]) | set(worst["device"]))
    print(f"\n{'metric':<24} {'worst rel (host)':>18} {'worst rel (device)':>20}")
    for k in keys:
        print(f"{k:<24} {worst['host'][k]:>18.3e} {worst['device'][k]:>20.3e}")
    assert not failures, "\n".join(failures[:40])
