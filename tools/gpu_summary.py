#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Prints the summary table of a tools/gpu-check.sh run: tests by label (from ctest's JUnit file and the ctest
label of each test), pytest results, the engine parity results (tests/torch/test_engine_parity.py's JSON), the
benchmarks' key counters (from Google Benchmark JSON) and the HellaSwag scoring benchmark: qprob's bench_scoring
against bench/hellaswag_transformers.py."""
import argparse
import collections
import itertools
import json
import pathlib
import subprocess
import xml.etree.ElementTree as ET


def test_labels(build_dir):
    """Maps each ctest name to its labels, via `ctest --show-only=json-v1`."""
    try:
        text = subprocess.run(["ctest", "--test-dir", str(build_dir), "--show-only=json-v1"],
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    labels = {}
    for t in json.loads(text).get("tests", []):
        for p in t.get("properties", []):
            if p.get("name") == "LABELS":
                labels[t["name"]] = p.get("value", [])
    return labels


def fmt(v, spec):
    """format(v, spec), or "-" padded to the spec's width when v is not a number."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return format(v, spec)
    return "-".rjust(int("".join(itertools.takewhile(str.isdigit, spec)) or 0))


def engine_parity_table(path):
    """One line per model and dtype: worst logit diff / bound, argmax agreement, worst loglik diff / bound over the
    request sets, is_greedy mismatches on clear requests; then the invariance checks."""
    data = json.loads(path.read_text())
    rows = data.get("rows", [])
    groups = collections.OrderedDict()
    other = []
    for r in rows:
        check = r["check"]
        if check.startswith(("prefix sharing", "batch invariance")):
            other.append(r)
            continue
        g = groups.setdefault((r["model"], r["dtype"]), dict(verdicts=[], logit=None, argmax=None, loglik=None,
                                                               greedy=0, sets=0))
        g["verdicts"].append(r["verdict"])
        if r["worst"] is None:
            continue
        if check.startswith("logits"):
            g["logit"] = (r["worst"], r["bound"])
        elif check.startswith("argmax"):
            g["argmax"] = r["worst"]
        elif check.startswith("loglik"):
            g["sets"] += 1
            ratio = r["worst"] / r["bound"] if r["bound"] else float("inf")
            if g["loglik"] is None or ratio > g["loglik"][2]:
                g["loglik"] = (r["worst"], r["bound"], ratio, check[len("loglik "):])
        elif check.startswith("is_greedy"):
            g["greedy"] += int(r["worst"])
    print(f"\nengine parity vs transformers float32 ({path.name}; bounds in tests/torch/test_engine_parity.py)")
    print(f"{'model':<18}{'dtype':<6}{'logit diff':>11}{'bound':>9}{'argmax':>9}{'loglik diff':>12}{'bound':>9}"
          f"  {'(worst set)':<22}{'greedy':>7}  verdict")
    for (model, dtype), g in groups.items():
        v = g["verdicts"]
        verdict = "FAIL" if any(x in ("FAIL", "ERROR") for x in v) else ("SKIP" if all(x == "SKIP" for x in v)
                                                                         else "PASS")
        lg, ll = g["logit"] or (None, None), g["loglik"] or (None, None, None, "")
        greedy = g["greedy"] if g["sets"] else "-"
        print(f"{model[:17]:<18}{dtype:<6}{fmt(lg[0], '11.3g')}{fmt(lg[1], '9.3g')}{fmt(g['argmax'], '9.4f')}"
              f"{fmt(ll[0], '12.3g')}{fmt(ll[1], '9.3g')}  {ll[3][:22]:<22}{greedy:>7}  {verdict}")
    for r in other:
        print(f"{r['model'][:17]:<18}{r['dtype']:<6}{r['check']}: {r['worst']} differ ({r['note']})  {r['verdict']}")


def hellaswag_table(merged):
    """qprob (bench_scoring's counters) against transformers (hellaswag_transformers.json) on the same requests."""
    tf = merged.get("hellaswag_transformers")
    qp = [b for b in merged.get("bench_scoring", {}).get("benchmarks", [])
          if b.get("run_type") != "aggregate" and "tokens_per_s" in b]
    if not tf and not qp:
        return
    print("\nHellaSwag scoring benchmark (Llama-2-7B shapes, random fp16 weights, the same 1600 requests)")
    print(f"{'scorer':<48}{'tokens/s':>10}{'peak GiB':>10}{'weights':>9}{'MFU':>7}{'vs transformers':>17}")
    base = tf.get("tokens_per_s") if tf else None
    for b in qp:
        ratio = b["tokens_per_s"] / base if base else None
        print(f"{'qprob ' + b['name'].split('/manual_time')[0]:<48.47}{fmt(b['tokens_per_s'], '10.0f')}"
              f"{fmt(b.get('peak_GiB'), '10.2f')}{fmt(b.get('weights_GiB'), '9.2f')}{fmt(b.get('mfu'), '7.1%')}"
              f"{fmt(ratio, '16.2f')}x")
    if tf:
        label = f"transformers {tf.get('transformers', '')} {tf.get('attn_implementation', '')} " \
                f"{tf.get('dtype', '')} batch {tf.get('batch_size', '')}"
        print(f"{label:<48.47}{fmt(tf.get('tokens_per_s'), '10.0f')}{fmt(tf.get('peak_GiB'), '10.2f')}"
              f"{fmt(tf.get('weights_GiB'), '9.2f')}{fmt(tf.get('mfu'), '7.1%')}{'1.00':>16}x")
        print(f"  ({tf.get('requests')} requests, {tf.get('tokens')} input tokens, {tf.get('seconds', 0):.2f} s; "
              f"MFU against {tf.get('peak_flops', 0) / 1e12:.1f} TFLOP/s)")
    else:
        print("transformers baseline: not run (bench/hellaswag_transformers.py)")


def gemv_table(merged):
    """int GEMV and prefill GEMM (bench_gemv) against cuBLAS fp16 on the same shape, from the same run: the speedup
    per shape (GEMV rows against BM_cublas_fp16, GEMM and dequantize + cuBLAS rows against BM_cublas_fp16_gemm)."""
    bench = [b for b in merged.get("bench_gemv", {}).get("benchmarks", []) if b.get("run_type") != "aggregate"]
    if not bench:
        return
    def key(name):  # "BM_int_gemv<qprob::policies::int4_g128>/16/11008/4096/manual_time" -> (kind, "16/11008/4096")
        parts = name.split("/")
        return parts[0], "/".join(p for p in parts[1:] if p != "manual_time")
    references = ("BM_cublas_fp16", "BM_cublas_fp16_gemm")
    cublas = {ref: {key(b["name"])[1]: b["real_time"] for b in bench if key(b["name"])[0] == ref} for ref in references}
    # BM_read_roofline (streaming the int4 GEMV's bytes; 4th argument: blocks per SM) is the bound on any GEMV's speedup.
    sections = (("int GEMV vs cuBLAS fp16 (M/N/K)", "BM_cublas_fp16", "goal >= 3.5x, M <= 16",
                 ("BM_int_gemv", "BM_int4_gemv_variant", "BM_int4_gemv_act_order", "BM_read_roofline")),
                ("int GEMM vs cuBLAS fp16 (M/N/K)", "BM_cublas_fp16_gemm", "goal >= 0.8x, M >= 512", ("BM_int_gemm", "BM_dequant_cublas")))
    for title, ref, goal, prefixes in sections:
        rows = []
        for b in bench:
            kind, label_shape = key(b["name"])
            shape = "/".join(label_shape.split("/")[:3]) if kind == "BM_read_roofline" else label_shape
            if not kind.startswith(prefixes) or shape not in cublas[ref] or b.get("error_occurred") or not b.get("real_time"):
                continue  # skipped benchmarks (a variant's row count out of range) have no time
            policy = kind.split("::")[-1].rstrip(">") if "::" in kind else kind
            rows.append((policy + " " + label_shape, b["real_time"], cublas[ref][shape]))
        if rows:
            print(f"\n{title:<56}{'time':>10}{'cuBLAS':>10}{'speedup':>9}  ({goal})")
            for label, t, c in rows:
                print(f"{label:<56}{t:>10.2f}{c:>10.2f}{c / t:>8.2f}x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--build-seconds", type=int, default=0)
    ap.add_argument("--build-dir", default="build/gpu")
    ap.add_argument("--junit", help="ctest JUnit file (default: OUT/ctest.xml)")
    ap.add_argument("--merge-bench", help="write every benchmark JSON of OUT into this one file")
    ap.add_argument("--engine-parity", help="engine_parity.json of tests/torch/test_engine_parity.py")
    ap.add_argument("--hellaswag-transformers", help="JSON of bench/hellaswag_transformers.py")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    print("\n================ qprob GPU check summary ================")
    gpu = (out / "gpu.txt").read_text().strip() if (out / "gpu.txt").exists() else "unknown GPU"
    print(f"device: {gpu}   build: {args.build_seconds} s")

    junit = pathlib.Path(args.junit) if args.junit else out / "ctest.xml"
    if junit.exists():
        labels = test_labels(args.build_dir)
        counts = collections.defaultdict(collections.Counter)
        for case in ET.parse(junit).getroot().iter("testcase"):
            name = case.get("name")
            status = case.get("status", "run")
            if case.find("failure") is not None:
                status = "failed"
            elif case.find("skipped") is not None or status in ("notrun", "disabled"):
                status = "skipped"
            else:
                status = "passed"
            tags = labels.get(name, ["?"])
            kind = "gpu" if "gpu" in tags else "host"
            area = next((t for t in tags if t not in ("gpu", "host")), "?")
            counts[(kind, area)][status] += 1
        print(f"\n{'tests':<18}{'passed':>8}{'failed':>8}{'skipped':>9}")
        total = collections.Counter()
        for (kind, area), c in sorted(counts.items()):
            print(f"{kind + '/' + area:<18}{c['passed']:>8}{c['failed']:>8}{c['skipped']:>9}")
            total.update(c)
        print(f"{'TOTAL':<18}{total['passed']:>8}{total['failed']:>8}{total['skipped']:>9}")

    pytest_xml = out / "pytest.xml"
    if pytest_xml.exists():
        root = ET.parse(pytest_xml).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        print(f"\npytest parity: {suite.get('tests')} tests, {suite.get('failures')} failures, "
              f"{suite.get('errors')} errors, {suite.get('skipped')} skipped")

    parity = pathlib.Path(args.engine_parity) if args.engine_parity else out / "engine_parity.json"
    if parity.exists():
        try:
            engine_parity_table(parity)
        except (ValueError, KeyError, TypeError) as e:
            print(f"\nengine parity: {parity} unreadable ({e})")

    rows = []
    merged = {}
    for f in sorted(out.glob("bench_*.json")):
        try:
            data = json.loads(f.read_text())
        except ValueError:  # a bench whose benchmarks the filter excluded writes an empty file
            continue
        merged[f.stem] = data
        for b in data.get("benchmarks", []):
            if b.get("run_type") == "aggregate":
                continue
            rows.append((b["name"].split("/manual_time")[0], b.get("label", ""), b.get("real_time", 0),
                         b.get("time_unit", ""), b.get("GB/s"), b.get("frac_of_copy"), b.get("copy_GB/s"),
                         b.get("TFLOP/s"), b.get("speedup")))
    tf_path = pathlib.Path(args.hellaswag_transformers) if args.hellaswag_transformers else \
        out / "hellaswag_transformers.json"
    if tf_path.exists():
        merged["hellaswag_transformers"] = json.loads(tf_path.read_text())
    if args.merge_bench and merged:
        pathlib.Path(args.merge_bench).write_text(json.dumps(merged, indent=1))
    if rows:
        print(f"\n{'benchmark':<48}{'label':<20}{'time':>12}{'GB/s':>9}{'of copy':>9}{'TFLOP/s':>9}")
        for name, label, t, unit, gbs, frac, _copy, tf, _sp in rows:
            print(f"{name[:47]:<48}{label[:19]:<20}{t:>10.1f}{unit:>2}{fmt(gbs, '9.0f')}{fmt(frac, '9.2f')}{fmt(tf, '9.1f')}")
        copy = next((r[6] for r in rows if r[6]), None)
        if copy:
            print(f"measured device-to-device copy bandwidth: {copy:.0f} GB/s (read + write)")
    hellaswag_table(merged)
    gemv_table(merged)


if __name__ == "__main__":
    main()
