// SPDX-License-Identifier: Apache-2.0
// The eval layer's writers: Python's json.dumps / repr(float) text, lm-eval's sha256 hashes, one sample line
// compared byte for byte with a line built by lm-eval's own code path, the results JSON layout, MC2, and the
// atomic file writer (a failure at any stage leaves neither the target changed nor a temporary file).
//
// The expected sample line was produced in Python 3.11 by lm-eval's own steps on the same values, not by qprob:
//   h = lambda s: hashlib.sha256(s.encode("utf-8")).hexdigest()                       # utils.hash_string
//   sample = {"doc_id": 3, "doc": doc, "target": 1, "arguments": [(ctx, " " + c) for c in choices],
//             "resps": [[(ll, g)] for ...], "filtered_resps": [(ll, g) for ...], "filter": "none",
//             "metrics": ["acc", "acc_norm"], "doc_hash": h(json.dumps(doc, indent=2, ensure_ascii=False)),
//             "prompt_hash": h(ctx), "target_hash": h(str(1))}                          # evaluator.py
//   sample.update({"acc": 1.0 if argmax(lls) == gold else 0.0, "acc_norm": ... lls / len(choice) ...})
//   arguments -> {"gen_args_i": {"arg_j": ...}}; resps, filtered_resps = sanitize_list(...); target = str(target)
//   sample["qprob"] = {...}  (softmax with max subtracted, entropy -= p * log(p), as documented)
//   line = json.dumps(sample, ensure_ascii=False) + "\n"                     # evaluation_tracker.py
#include <qprob/eval/evaluate.hpp>
#include <qprob/eval/output.hpp>
#include <qprob/eval/progress.hpp>
#include <qprob/eval/python_json.hpp>
#include <qprob/io/atomic_file.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "tasks_test_util.hpp"

namespace qe = qprob::eval;
namespace qt = qprob::tasks;

namespace {

std::string read_all(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

/// Files in `dir` (to catch leftover temporaries).
std::vector<std::string> listing(const std::filesystem::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

/// The hand-made ARC-style document of the golden line.
qt::document golden_doc() {
  qt::document d;
  d.task   = "arc_easy";
  d.doc_id = 3;
  d.source = "fixture:4";
  d.fields = nlohmann::ordered_json::parse(
      R"({"id": "Q1", "question": "Why \"so\"?", "choices": {"text": ["a", "bé"], "label": ["A", "B"]}, "answerKey": "B", "n": 3, "x": 0.5, "empty": [], "obj": {}})");
  d.context = "Question: Why \"so\"?\nAnswer:";
  d.choices = {"a", "bé"};
  d.gold    = 1;
  d.labels  = {0, 1};
  d.metrics = {qt::metric::acc, qt::metric::acc_norm};
  return d;
}

qe::doc_result golden_result() {
  qe::doc_result r;
  r.doc_id  = 3;
  r.choices = {{-1.5, true, 1, 1}, {-2.25, false, 2, 2}};
  return r;
}

// The "qprob" entropies are the correctly rounded values (mpmath, 40 digits: 0.62748698173335521380...,
// 0.67587328915706388408...); numpy's -(p * log(p)).sum() on the rounded p gives 0.6274869817333553 and
// 0.675873289157064, one ulp away.
const char* const golden_line =
    R"JSON({"doc_id": 3, "doc": {"id": "Q1", "question": "Why \"so\"?", "choices": {"text": ["a", "bé"], "label": ["A", "B"]}, "answerKey": "B", "n": 3, "x": 0.5, "empty": [], "obj": {}}, "target": "1", "arguments": {"gen_args_0": {"arg_0": "Question: Why \"so\"?\nAnswer:", "arg_1": " a"}, "gen_args_1": {"arg_0": "Question: Why \"so\"?\nAnswer:", "arg_1": " bé"}}, "resps": [[["-1.5", "True"]], [["-2.25", "False"]]], "filtered_resps": [["-1.5", "True"], ["-2.25", "False"]], "filter": "none", "metrics": ["acc", "acc_norm"], "doc_hash": "49c53d8393979f47eeb165f6cceea04d5982cfd7a7b89a92e35218539af62a53", "prompt_hash": "7c6e749fd5e2cdca4db003af70577bd13072e81b27dff4b44966a72f9e52bf6b", "target_hash": "6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b", "acc": 0.0, "acc_norm": 1.0, "qprob": {"loglik": [-1.5, -2.25], "is_greedy": [true, false], "num_tokens": [1, 2], "char_len": [1, 2], "gold": 1, "sum": {"probs": [0.679178699175393, 0.32082130082460697], "pred": 0, "conf": 0.679178699175393, "p_true": 0.32082130082460697, "entropy": 0.6274869817333552}, "char_normalized": {"probs": [0.4073334000459302, 0.5926665999540697], "pred": 1, "conf": 0.5926665999540697, "p_true": 0.5926665999540697, "entropy": 0.6758732891570639}}}
)JSON";

}  // namespace

TEST_CASE("python_float_repr matches Python's repr(float)") {
  // Values and strings from Python 3.11: repr(x).
  const std::vector<std::pair<double, std::string>> cases = {
      {0.1, "0.1"},
      {1e16, "1e+16"},
      {1e15, "1000000000000000.0"},
      {1e-5, "1e-05"},
      {0.0001, "0.0001"},
      {0.00012345, "0.00012345"},
      {-0.0, "-0.0"},
      {0.0, "0.0"},
      {123456789012345678.0, "1.2345678901234568e+17"},
      {5e-324, "5e-324"},
      {1.7976931348623157e308, "1.7976931348623157e+308"},
      {2.5, "2.5"},
      {100.0, "100.0"},
      {-141.07304160545203, "-141.07304160545203"},
      {1.0 / 3.0, "0.3333333333333333"},
      {1e22, "1e+22"},
      {9999999999999998.0, "9999999999999998.0"},
      {std::numeric_limits<double>::quiet_NaN(), "nan"},
      {-std::numeric_limits<double>::infinity(), "-inf"},
  };
  for (const auto& [x, s] : cases) {
    CHECK_MESSAGE(qe::python_float_repr(x) == s, "x=" << s);
  }
}

TEST_CASE("python_json_dumps matches json.dumps(ensure_ascii=False), flat and with indent=2") {
  const auto j = nlohmann::ordered_json::parse(R"({"a": [], "b": {}, "c": [1, "x\n\u0001é\\", 2.5, null, true], "d": {"e": -0.0}})");
  CHECK(qe::python_json_dumps(j) == R"({"a": [], "b": {}, "c": [1, "x\n\u0001é\\", 2.5, null, true], "d": {"e": -0.0}})");
  // Python: json.dumps(..., indent=2, ensure_ascii=False)
  CHECK(qe::python_json_dumps(j, 2) ==
        "{\n  \"a\": [],\n  \"b\": {},\n  \"c\": [\n    1,\n    \"x\\n\\u0001é\\\\\",\n    2.5,\n    null,\n    true\n  ],\n"
        "  \"d\": {\n    \"e\": -0.0\n  }\n}");
}

TEST_CASE("sha256_hex: FIPS 180-4 test vectors and lm-eval's target hash") {
  CHECK(qe::sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(qe::sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(qe::sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  CHECK(qe::sha256_hex(std::string(1000, 'a')) == "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3");
  CHECK(qe::sha256_hex("0") == "5feceb66ffc86f38d952786c6d696c79c2dbc239dd4e91b46729d73a27fb57e9");
}

TEST_CASE("sample_line equals the line lm-eval writes for the same document and responses") {
  const auto line = qe::sample_line(golden_doc(), golden_result());
  CHECK(line == golden_line);
  // It is also valid JSON for a strict parser.
  const auto j = nlohmann::json::parse(line);
  CHECK(j["resps"].size() == 2);
}

TEST_CASE("sample_record: an MC2 document reports its MC2 score as acc and keeps the labels") {
  qt::document d;
  d.task    = "truthfulqa_mc2";
  d.doc_id  = 0;
  d.fields  = nlohmann::ordered_json::object();
  d.context = "Q: x\nA:";
  d.choices = {"t1", "t2", "f1"};
  d.gold    = 0;
  d.labels  = {1, 1, 0};
  d.metrics = {qt::metric::mc2};
  qe::doc_result r;
  r.choices = {{std::log(0.2), false, 1, 2}, {std::log(0.3), false, 1, 2}, {std::log(0.1), false, 1, 2}};
  const auto rec = qe::sample_record(d, r);
  CHECK(rec["metrics"] == nlohmann::ordered_json::array({"acc"}));
  // lm-eval: p = exp(ll) / sum = (0.2, 0.3, 0.1) / 0.6; acc = (0.2 + 0.3) / 0.6
  CHECK(rec["acc"].get<double>() == doctest::Approx(5.0 / 6.0).epsilon(1e-15));
  CHECK(rec["qprob"]["labels"] == nlohmann::ordered_json::array({1, 1, 0}));
}

TEST_CASE("mc2_score follows lm-eval: split at the first label 0, stable where exp(ll) underflows") {
  const std::vector<double> ll = {-1.0, -2.0, -3.0};
  const std::vector<int> lab   = {1, 0, 1};  // lm-eval counts only the choices before the first 0 as true
  const double e1 = std::exp(-1.0), e2 = std::exp(-2.0), e3 = std::exp(-3.0);
  CHECK(qe::mc2_score(ll, lab) == doctest::Approx(e1 / (e1 + e2 + e3)).epsilon(1e-15));
  const std::vector<double> tiny = {-2000.0, -2000.0 - std::log(3.0)};
  CHECK(qe::mc2_score(tiny, std::vector<int>{1, 0}) == doctest::Approx(0.75).epsilon(1e-12));
  CHECK_THROWS_AS((void)qe::mc2_score(ll, std::vector<int>{1, 1, 1}), qprob::invalid_argument);
}

TEST_CASE("results JSON: lm-eval's layout, NaN as null, deterministic") {
  qt::task_data t;
  t.task = "arc_easy";
  t.docs = {golden_doc()};
  qe::eval_result r;
  r.task = "arc_easy";
  r.docs = {golden_result()};
  const auto s = qe::summarize(t, r, {}, 2376);
  qe::run_config cfg;
  cfg.model  = "m";
  cfg.scorer = "reference-cpu";
  cfg.limit  = 1;
  const auto j = qe::results_record({s}, cfg);
  CHECK(j["results"]["arc_easy"]["acc,none"] == 0.0);
  CHECK(j["results"]["arc_easy"]["acc_norm,none"] == 1.0);
  CHECK(j["results"]["arc_easy"]["acc_stderr,none"].is_null());  // n = 1: undefined, written as null
  CHECK(j["n-samples"]["arc_easy"]["original"] == 2376);
  CHECK(j["n-samples"]["arc_easy"]["effective"] == 1);
  CHECK(j["n-shot"]["arc_easy"] == 0);
  CHECK(j["config"]["limit"] == 1);
  CHECK(j["qprob"]["arc_easy"]["sum"]["conf"].get<double>() == doctest::Approx(0.679178699175393));
  CHECK(j["qprob"]["arc_easy"]["sum"]["conf_err"].get<double>() == doctest::Approx(0.679178699175393));
  CHECK(j["qprob"]["arc_easy"]["sum"]["conf_correct"].is_null());

  qprob::test::fixture_dir dir("results");
  const auto p = dir.path() / "results.json";
  qe::write_results_json(p, {s}, cfg);
  const auto first = read_all(p);
  CHECK(nlohmann::json::parse(first)["results"]["arc_easy"]["alias"] == "arc_easy");
  qe::write_results_json(p, {s}, cfg);
  CHECK(read_all(p) == first);
}

TEST_CASE("model_metrics_json: the one metrics serializer (eval results JSON and compare results.json), keys in order") {
  qt::task_data t;
  t.task = "arc_easy";
  t.docs = {golden_doc()};
  qe::eval_result r;
  r.task = "arc_easy";
  r.docs = {golden_result()};
  const auto s = qe::summarize(t, r, {}, 2376);
  const auto j = qe::results_record({s}, qe::run_config{});
  const auto& m = j["qprob"]["arc_easy"]["sum"];
  CHECK(m == qe::model_metrics_json(s.sum));
  std::vector<std::string> keys;
  for (const auto& [k, v] : m.items()) {
    keys.push_back(k);
  }
  CHECK(keys == std::vector<std::string>{"n", "n_correct", "acc", "acc_stderr", "acc_wilson", "acc_norm",
                                         "acc_norm_stderr", "accuracy", "conf", "conf_correct", "conf_err", "conf_true",
                                         "entropy", "entropy_bits", "entropy_bits_x100", "brier", "nll", "ece", "mce",
                                         "rmsce", "ace", "reliability"});
  CHECK(m["entropy_bits_x100"].get<double>() == doctest::Approx(100 * m["entropy_bits"].get<double>()));
  CHECK(m["acc_wilson"].size() == 2);
  // Reliability bins: {lower, upper, count, conf, acc} (docs/compare.md); empty bins carry nulls.
  REQUIRE(m["reliability"].size() == 15);
  std::int64_t total = 0;
  for (const auto& b : m["reliability"]) {
    std::vector<std::string> bk;
    for (const auto& [k, v] : b.items()) {
      bk.push_back(k);
    }
    CHECK(bk == std::vector<std::string>{"lower", "upper", "count", "conf", "acc"});
    total += b["count"].get<std::int64_t>();
    CHECK(b["conf"].is_null() == (b["count"] == 0));
  }
  CHECK(total == 1);
}

TEST_CASE("write_samples_jsonl: one line per document in order, a failed write leaves the old file") {
  qt::task_data t;
  t.task    = "arc_easy";
  auto d2   = golden_doc();
  d2.doc_id = 4;
  t.docs    = {golden_doc(), d2};
  qe::eval_result r;
  r.docs       = {golden_result(), golden_result()};
  r.docs[1].doc_id = 4;
  qprob::test::fixture_dir dir("samples");
  const auto p = dir.path() / "samples.jsonl";
  qe::write_samples_jsonl(p, t, r);
  const auto text = read_all(p);
  CHECK(text.substr(0, text.find('\n') + 1) == golden_line);
  CHECK(std::count(text.begin(), text.end(), '\n') == 2);
  CHECK(text.find("{\"doc_id\": 4,") == std::strlen(golden_line));

  qprob::io::atomic_write_options fail;
  fail.on_stage = [](std::string_view s) {
    if (s == "data") {
      throw std::runtime_error("injected");
    }
  };
  r.docs.pop_back();
  CHECK_THROWS_AS(qe::write_samples_jsonl(p, t, r, fail), std::runtime_error);
  CHECK(read_all(p) == text);
  CHECK(listing(dir.path()) == std::vector<std::string>{"samples.jsonl"});

  r.docs[0].doc_id = 9;  // a result that belongs to another document is refused
  CHECK_THROWS_AS(qe::write_samples_jsonl(p, t, r), qprob::invalid_argument);
}

TEST_CASE("write_file_atomic: a failure at any stage leaves nothing behind and the old file intact") {
  qprob::test::fixture_dir dir("atomic");
  const auto p = dir.path() / "out.json";
  for (const char* stage : {"opened", "data", "synced"}) {
    CAPTURE(stage);
    qprob::io::atomic_write_options o;
    o.on_stage = [stage](std::string_view s) {
      if (s == stage) {
        throw std::runtime_error("injected failure");
      }
    };
    CHECK_THROWS_AS(qprob::io::write_file_atomic(p, "new", o), std::runtime_error);
    CHECK(listing(dir.path()).empty());  // no target, no temporary
  }
  qprob::io::write_file_atomic(p, "old");
  CHECK(read_all(p) == "old");
  for (const char* stage : {"opened", "data", "synced"}) {
    CAPTURE(stage);
    qprob::io::atomic_write_options o;
    o.on_stage = [stage](std::string_view s) {
      if (s == stage) {
        throw std::runtime_error("injected failure");
      }
    };
    CHECK_THROWS_AS(qprob::io::write_file_atomic(p, "new", o), std::runtime_error);
    CHECK(read_all(p) == "old");
    CHECK(listing(dir.path()) == std::vector<std::string>{"out.json"});
  }
  qprob::io::write_file_atomic(p, "new");
  CHECK(read_all(p) == "new");
  // A missing directory is an I/O error that names the file; nothing is created.
  CHECK_THROWS_AS(qprob::io::write_file_atomic(dir.path() / "no" / "such.json", "x"), qprob::format_error);
  CHECK(listing(dir.path()) == std::vector<std::string>{"out.json"});
}

TEST_CASE("progress_bar: rate and ETA text, silent when stderr is not a terminal") {
  qe::progress_bar bar("arc_easy", true);
  CHECK(bar.line(50, 200, 10.0) == "arc_easy [#######.......................] 50/200 requests 5.0 req/s ETA 00:30");
  CHECK(bar.line(0, 10, 0.0) == "arc_easy [..............................] 0/10 requests 0.0 req/s ETA --:--");
  qe::progress_bar off("x", false);
  CHECK_FALSE(off.enabled());
}
