#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Prints the summary table of a tools/gpu-check.sh run: tests by label (from ctest's JUnit file and the ctest
label of each test), pytest results, and the benchmarks' key counters (from Google Benchmark JSON)."""
import argparse
import collections
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--build-seconds", type=int, default=0)
    ap.add_argument("--build-dir", default="build/gpu")
    ap.add_argument("--junit", help="ctest JUnit file (default: OUT/ctest.xml)")
    ap.add_argument("--merge-bench", help="write every benchmark JSON of OUT into this one file")
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

    rows = []
    merged = {}
    for f in sorted(out.glob("bench_*.json")):
        data = json.loads(f.read_text())
        merged[f.stem] = data
        for b in data.get("benchmarks", []):
            if b.get("run_type") == "aggregate":
                continue
            rows.append((b["name"].split("/manual_time")[0], b.get("label", ""), b.get("real_time", 0),
                         b.get("time_unit", ""), b.get("GB/s"), b.get("frac_of_copy"), b.get("copy_GB/s"),
                         b.get("TFLOP/s"), b.get("speedup")))
    if args.merge_bench and merged:
        pathlib.Path(args.merge_bench).write_text(json.dumps(merged, indent=1))
    if rows:
        print(f"\n{'benchmark':<48}{'label':<20}{'time':>12}{'GB/s':>9}{'of copy':>9}{'TFLOP/s':>9}")
        for name, label, t, unit, gbs, frac, _copy, tf, _sp in rows:
            fmt = lambda v, spec: format(v, spec) if isinstance(v, (int, float)) else "-"
            print(f"{name[:47]:<48}{label[:19]:<20}{t:>10.1f}{unit:>2}{fmt(gbs, '9.0f')}{fmt(frac, '9.2f')}{fmt(tf, '9.1f')}")
        copy = next((r[6] for r in rows if r[6]), None)
        if copy:
            print(f"measured device-to-device copy bandwidth: {copy:.0f} GB/s (read + write)")


if __name__ == "__main__":
    main()
