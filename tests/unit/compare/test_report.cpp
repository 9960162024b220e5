// SPDX-License-Identifier: Apache-2.0
// The report of `qprob compare` (include/qprob/report): exact table text from a hand-written results.json,
// well-formed SVG with one bar per non-empty bin, PNG signature and size, a self-contained report.html, and
// format_error naming results.json and the key for schema violations.
#include <qprob/report/report.hpp>

#include "report_fixture.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

namespace {

namespace fs = std::filesystem;
using qprob::report::read_results;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  REQUIRE_MESSAGE(in, "cannot open ", p.string());
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

/// A fresh scratch directory per test case.
fs::path scratch(const std::string& name) {
  const auto dir = fs::temp_directory_path() / ("qprob_report_test_" + std::to_string(::getpid())) / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

qprob::report::results fixture_results() {
  return qprob::report::parse_results(qprob::test::report_fixture(), "results.json");
}

std::size_t count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto pos = text.find(what); pos != std::string::npos; pos = text.find(what, pos + what.size())) {
    ++n;
  }
  return n;
}

/// Minimal XML well-formedness: declaration first, then properly nested elements with one root <svg>.
/// Returns an empty string or what is wrong.
std::string xml_problem(const std::string& s) {
  if (s.rfind("<?xml", 0) != 0) {
    return "does not start with <?xml";
  }
  std::vector<std::string> stack;
  int roots = 0;
  for (std::size_t i = s.find('>') + 1; i < s.size();) {
    const auto lt = s.find('<', i);
    if (lt == std::string::npos) {
      break;
    }
    const auto gt = s.find('>', lt);
    if (gt == std::string::npos) {
      return "unterminated tag at " + std::to_string(lt);
    }
    const std::string tag = s.substr(lt + 1, gt - lt - 1);
    i = gt + 1;
    if (tag.empty() || tag[0] == '!' || tag[0] == '?') {
      continue;
    }
    if (tag[0] == '/') {
      if (stack.empty() || stack.back() != tag.substr(1)) {
        return "unbalanced </" + tag.substr(1) + "> at " + std::to_string(lt);
      }
      stack.pop_back();
      continue;
    }
    const std::string name = tag.substr(0, tag.find_first_of(" \n/"));
    if (stack.empty()) {
      ++roots;
      if (name != "svg") {
        return "root element is <" + name + ">";
      }
    }
    if (tag.back() != '/') {
      stack.push_back(name);
    }
  }
  if (!stack.empty()) {
    return "unclosed <" + stack.back() + ">";
  }
  return roots == 1 ? "" : "expected one root element, got " + std::to_string(roots);
}

std::uint32_t be32(const std::string& s, std::size_t at) {
  return (std::uint32_t(static_cast<unsigned char>(s[at])) << 24) | (std::uint32_t(static_cast<unsigned char>(s[at + 1])) << 16) |
         (std::uint32_t(static_cast<unsigned char>(s[at + 2])) << 8) | std::uint32_t(static_cast<unsigned char>(s[at + 3]));
}

void check_png(const std::string& png, std::uint32_t width, std::uint32_t height) {
  REQUIRE(png.size() > 33);
  CHECK(png.substr(0, 8) == std::string("\x89PNG\r\n\x1a\n", 8));
  CHECK(png.substr(12, 4) == "IHDR");
  CHECK(be32(png, 16) == width);
  CHECK(be32(png, 20) == height);
}

/// Expects a format_error whose message names results.json, `field` and `problem`.
void expect_error(const nlohmann::ordered_json& j, const std::string& field, const std::string& problem) {
  try {
    (void)qprob::report::parse_results(j, "out/results.json");
    FAIL("no format_error for ", field);
  } catch (const qprob::format_error& e) {
    INFO(e.what());
    CHECK(e.file() == "out/results.json");
    CHECK(e.field() == field);
    CHECK(std::string(e.what()).find(problem) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("report: reader keeps tasks in name order, reads null as NaN and converts entropy to bits") {
  const auto r = fixture_results();
  REQUIRE(r.tasks.size() == 3);
  CHECK(r.tasks[0].name == "arc_easy");
  CHECK(r.tasks[1].name == "boolq");
  CHECK(r.tasks[2].name == "hellaswag");
  CHECK(r.alpha == 0.05);
  CHECK(r.full_label == "Llama-7B");
  CHECK(r.quantized_label == "+ GPTQ 4-bit g128");
  CHECK(std::isnan(r.tasks[2].full.conf_err));
  CHECK(r.tasks[1].full.entropy_bits == doctest::Approx(0.5 / std::log(2.0)).epsilon(1e-15));
  CHECK(r.tasks[0].full.entropy_bits == 0.4309);  // given: taken as is
  CHECK(r.tasks[0].full.reliability.size() == 3);
  CHECK(r.tasks[0].paired.true_class_js_distance == 0.0333);
  CHECK(std::isnan(r.tasks[1].paired.true_class_js_distance));
  CHECK(r.tasks[1].paired.ttest_conf.has_value());
  CHECK_FALSE(r.tasks[0].paired.ttest_conf.has_value());
  CHECK(r.tasks[2].paired.conf_shift_by_bin[1].se_true_shift == 0.002);
}

TEST_CASE("report: number formatting and documented rounding") {
  using namespace qprob::report;
  CHECK(format_percent(0.811) == "81.10");
  CHECK(format_percent(-0.00001) == "0.00");
  CHECK(format_percent(std::nan("")) == "n/a");
  CHECK(format_percent(std::nan(""), "") == "");
  // The change comes from the unrounded values: 12.34 -> 12.35 displayed, but the change is +0.002.
  CHECK(format_percent(0.12344) == "12.34");
  CHECK(format_percent(0.12346) == "12.35");
  CHECK(format_change(0.12344, 0.12346) == "+0.00");
  CHECK(format_change(0.12346, 0.12344) == "+0.00");  // -0.002 rounds to zero: never "-0.00"
  CHECK(format_change(0.5, 0.4937) == "-0.63");
  CHECK(format_change(0.5, std::nan("")) == "n/a");
  CHECK(format_stat(3.2e-07) == "3.2e-07");
  CHECK(format_stat(0.0499) == "0.0499");
  CHECK(significant(0.0499, 0.05));
  CHECK_FALSE(significant(0.05, 0.05));
  CHECK_FALSE(significant(std::nan(""), 0.05));
}

TEST_CASE("report: table 1 Markdown and CSV") {
  const auto r = fixture_results();
  CHECK(qprob::report::to_markdown(qprob::report::table1_display(r)) ==
        "Table 1: zero-shot accuracy (Acc.) and calibration error (CE) x100, full model and after quantization (change "
        "in parentheses).\n"
        "\n"
        "| Model | arc_easy Acc.↑ | arc_easy CE↓ (ACE) | boolq Acc.↑ | boolq CE↓ (ECE) | hellaswag Acc.↑ | hellaswag CE↓ (ACE) |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        "| Llama-7B | 81.10 | 7.94 | 83.61 | 38.62 | 56.83 | 37.80 |\n"
        "| + GPTQ 4-bit g128 | 80.50 (-0.60) | 8.21 (+0.27) | 83.05† (-0.56) | 38.78 (+0.16) | 53.69 (-3.14) | 40.00 (+2.20) |\n"
        "\n"
        "CE is the expected calibration error (ECE) for binary tasks and the adaptive calibration error (ACE) for "
        "multi-class tasks, as in the paper.\n"
        "Changes are 100 x (quantized - full) from the unrounded values. † marks an accuracy change with McNemar p < "
        "0.05.\n");
  CHECK(qprob::report::to_csv(qprob::report::table1_csv(r)) ==
        "task,n,num_choices,acc_full,acc_quantized,acc_change,acc_mcnemar_p,acc_significant,ce_kind,ce_full,ce_quantized,"
        "ce_change\n"
        "arc_easy,2376,4,81.10,80.50,-0.60,0.21,0,ACE,7.94,8.21,+0.27\n"
        "boolq,3270,2,83.61,83.05,-0.56,0.001,1,ECE,38.62,38.78,+0.16\n"
        "hellaswag,10042,4,56.83,53.69,-3.14,0.05,0,ACE,37.80,40.00,+2.20\n");
}

TEST_CASE("report: confidence table (paper Tables 2, 4, 5) Markdown and CSV with significance marks") {
  const auto r = fixture_results();
  CHECK(qprob::report::to_markdown(qprob::report::table_confidence_display(r)) ==
        "Table 2: mean confidence (Conf.), confidence in wrong predictions (Conf_err), confidence in the true class "
        "(Conf_true) x100 and mean predictive entropy H (bits x100), full model and after quantization (change in "
        "parentheses).\n"
        "\n"
        "| Task | Model | Conf. | Conf_err | Conf_true | H |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: |\n"
        "| arc_easy | Llama-7B | 88.45 | 75.44 | 76.82 | 43.09 |\n"
        "| arc_easy | + GPTQ 4-bit g128 | 88.15 (-0.30) | 75.61 (+0.17) | 75.76* (-1.06) | 44.42 (+1.33) |\n"
        "| boolq | Llama-7B | 76.21 | 64.80 | 71.37 | 72.13 |\n"
        "| boolq | + GPTQ 4-bit g128 | 76.75* (+0.54) | 65.56 (+0.76) | 71.37 (+0.00) | 73.58 (+1.44) |\n"
        "| hellaswag | Llama-7B | 96.80 | n/a | 56.83 | 11.37 |\n"
        "| hellaswag | + GPTQ 4-bit g128 | 96.48 (-0.32) | 95.13 (n/a) | 53.69* (-3.14) | 12.21 (+0.84) |\n"
        "\n"
        "* marks a significant difference between the full and the quantized model at alpha = 0.05 (paired t-test; "
        "Conf_true always, Conf and H where the run tested them).\n"
        "Changes are 100 x (quantized - full) from the unrounded values; Conf_err is n/a when a model made no wrong "
        "prediction.\n");
  CHECK(qprob::report::to_csv(qprob::report::table_confidence_csv(r)) ==
        "task,n,conf_full,conf_quantized,conf_change,conf_p,conf_err_full,conf_err_quantized,conf_err_change,"
        "conf_true_full,conf_true_quantized,conf_true_change,conf_true_t,conf_true_p,conf_true_significant,"
        "entropy_bits_full,entropy_bits_quantized,entropy_bits_change,entropy_p\n"
        "arc_easy,2376,88.45,88.15,-0.30,,75.44,75.61,+0.17,76.82,75.76,-1.06,5.12,3.2e-07,1,43.09,44.42,+1.33,\n"
        "boolq,3270,76.21,76.75,+0.54,0.0027,64.80,65.56,+0.76,71.37,71.37,+0.00,0.67,0.5,0,72.13,73.58,+1.44,\n"
        "hellaswag,10042,96.80,96.48,-0.32,,,95.13,,56.83,53.69,-3.14,1.96,0.0499,1,11.37,12.21,+0.84,0.2\n");
  // A different alpha moves the marks: at 0.01 only arc_easy's Conf_true and boolq's Conf stay marked.
  auto j = qprob::test::report_fixture();
  j["metric_options"]["alpha"] = 0.01;
  const auto md = qprob::report::to_markdown(qprob::report::table_confidence_display(qprob::report::parse_results(j, "x")));
  CHECK(count(md, "*") == 2 + 1);  // two marks plus the note's leading "*"
  CHECK(md.find("53.69 (-3.14)") != std::string::npos);
}

TEST_CASE("report: paired statistics table") {
  const auto r = fixture_results();
  CHECK(qprob::report::to_csv(qprob::report::table_paired(r, "")) ==
        "task,n,jsd,kl,js_distance,flip_rate,ttest_conf_true_t,ttest_conf_true_p,mcnemar_p\n"
        "arc_easy,2376,0.0123,0.0251,0.0712,0.041,5.12,3.2e-07,0.21\n"
        "boolq,3270,0.002,0.0041,0.045,0.02,0.67,0.5,0.001\n"
        "hellaswag,10042,0.004,0.009,0.1,0.12,1.96,0.0499,0.05\n");
}

TEST_CASE("report: CSV and Markdown escape separators") {
  qprob::report::table t;
  t.header = {"a", "b"};
  t.rows = {{"x,y", "say \"hi\""}, {"p|q", "plain"}};
  CHECK(qprob::report::to_csv(t) == "a,b\n\"x,y\",\"say \"\"hi\"\"\"\np|q,plain\n");
  CHECK(qprob::report::to_markdown(t).find("| p\\|q | plain |") != std::string::npos);
}

TEST_CASE("report: SVG figures are well formed, labelled and have one bar per non-empty bin") {
  const auto r = fixture_results();
  using namespace qprob::report;
  const auto rel = to_svg(reliability_figure(r, r.tasks[0]));
  CHECK(xml_problem(rel) == "");
  CHECK(rel.find("<svg") != std::string::npos);
  CHECK(rel.find(">Confidence</text>") != std::string::npos);
  CHECK(rel.find(">Accuracy</text>") != std::string::npos);
  CHECK(rel.find(">Llama-7B</text>") != std::string::npos);
  CHECK(count(rel, "class=\"bar-full\"") == 2);       // the middle full-model bin is empty
  CHECK(count(rel, "class=\"bar-quantized\"") == 3);
  CHECK(rel.find("ACE 7.94 -&gt; 8.21") != std::string::npos);

  const auto shift = to_svg(conf_shift_figure(r, r.tasks[0]));
  CHECK(xml_problem(shift) == "");
  CHECK(shift.find(">Full-model confidence</text>") != std::string::npos);
  CHECK(shift.find(">Mean confidence shift (quantized - full)</text>") != std::string::npos);
  CHECK(count(shift, "class=\"bar-shift\"") == 1);
  CHECK(count(shift, "class=\"bar-shift highlight\"") == 1);  // the -0.02 bin
  CHECK(shift.find("mean conf shift=-0.02,") != std::string::npos);
  CHECK(count(shift, "class=\"error-bar\"") == 2);

  const auto js = to_svg(js_distance_figure(r));
  CHECK(xml_problem(js) == "");
  CHECK(js.find(">Jensen-Shannon distance</text>") != std::string::npos);
  CHECK(count(js, "class=\"bar-js\"") == 3);
  CHECK(count(js, "class=\"bar-js-true\"") == 1);  // only arc_easy has the true-class distance
  CHECK(js.find(">0.0712</text>") != std::string::npos);
  for (const char* task : {">arc_easy</text>", ">boolq</text>", ">hellaswag</text>"}) {
    CHECK(js.find(task) != std::string::npos);
  }
  // The checker itself must reject broken documents.
  CHECK(xml_problem("<?xml version=\"1.0\"?>\n<svg><rect></svg>") != "");
  CHECK(xml_problem("<svg></svg>") != "");
}

TEST_CASE("report: PNG figures have the PNG signature and twice the figure size") {
  const auto r = fixture_results();
  using namespace qprob::report;
  const auto c = reliability_figure(r, r.tasks[1]);
  CHECK(c.width == 640);
  CHECK(c.height == 420);
  check_png(to_png(c), 1280, 840);
  check_png(to_png(c, 1), 640, 420);
  check_png(to_png(js_distance_figure(r)), 1280, 840);
}

TEST_CASE("report: write_report writes every table, figure and a self-contained report.html") {
  const auto dir = qprob::test::write_results(scratch("full"), qprob::test::report_fixture());
  const auto written = qprob::report::write_report(dir);
  CHECK(written.files.size() == 6 + 2 * (1 + 2 * 3) + 1);
  CHECK(slurp(dir / "tables" / "table1.md") ==
        qprob::report::to_markdown(qprob::report::table1_display(read_results(dir / "results.json"))));
  CHECK(slurp(dir / "tables" / "table_confidence.csv").rfind("task,n,conf_full,", 0) == 0);
  for (const std::string stem : {"js_distance", "reliability_arc_easy", "reliability_boolq", "reliability_hellaswag",
                                 "conf_shift_arc_easy", "conf_shift_boolq", "conf_shift_hellaswag"}) {
    INFO(stem);
    CHECK(xml_problem(slurp(dir / "figures" / (stem + ".svg"))) == "");
    CHECK(slurp(dir / "figures" / (stem + ".png")).substr(1, 3) == "PNG");
  }
  const auto html = slurp(dir / "report.html");
  CHECK(html.rfind("<!DOCTYPE html>", 0) == 0);
  for (const char* id : {"id=\"table1\"", "id=\"table_confidence\"", "id=\"table_paired\"", "id=\"settings\""}) {
    CHECK(html.find(id) != std::string::npos);
  }
  CHECK(count(html, "<svg") == 7);
  CHECK(html.find("83.05† (-0.56)") != std::string::npos);
  CHECK(html.find("75.76* (-1.06)") != std::string::npos);
  CHECK(html.find("<td>gptq</td>") != std::string::npos);  // settings shown
  // Offline: no script, no external resources (the only URL is the SVG namespace).
  CHECK(html.find("<script") == std::string::npos);
  CHECK(html.find("src=") == std::string::npos);
  CHECK(html.find("href=") == std::string::npos);
  CHECK(count(html, "http") == count(html, "http://www.w3.org/2000/svg"));
  // Atomic writes leave no temporary files behind.
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    CHECK(e.path().filename().string().find(".tmp.") == std::string::npos);
  }
}

namespace {

/// A next-token (Price-of-Efficiency) task as `qprob compare` writes it (only the keys the report reads, plus kind).
nlohmann::ordered_json next_token_task() {
  return nlohmann::ordered_json::parse(R"json({
    "kind": "next_token_vocab", "n": 100, "answers": ["False", "True"], "vocab_size": 32000,
    "full": {"acc": 0.6, "ece": 0.1, "ace": 0.12, "conf": 0.5, "conf_err": 0.45, "entropy": 2.0,
             "reliability": [{"lower": 0.0, "upper": 0.5, "count": 60, "conf": 0.4, "acc": 0.5},
                             {"lower": 0.5, "upper": 1.0, "count": 40, "conf": 0.65, "acc": 0.75}]},
    "quantized": {"acc": 0.55, "ece": 0.11, "ace": 0.1, "conf": 0.45, "conf_err": null, "entropy": 2.1,
             "entropy_bits": 3.0,
             "reliability": [{"lower": 0.0, "upper": 0.5, "count": 100, "conf": 0.45, "acc": 0.55},
                             {"lower": 0.5, "upper": 1.0, "count": 0, "conf": null, "acc": null}]},
    "paired": {"agreement": 0.9, "flip_rate": 0.1, "ttest_conf": {"t": 2.5, "p": 0.01},
               "ttest_entropy": {"t": -1.0, "p": 0.3}, "mcnemar": {"p": 0.5}}
  })json");
}

}  // namespace

TEST_CASE("report: next-token tasks get their own table and reliability diagrams, also without choice tasks") {
  auto j                      = qprob::test::report_fixture();
  j["tasks"]["poe_boolq_tf"] = next_token_task();
  const auto r                = qprob::report::parse_results(j, "results.json");
  CHECK(r.tasks.size() == 3);  // the choice tasks are unchanged
  REQUIRE(r.next_token_tasks.size() == 1);
  CHECK(r.next_token_tasks[0].full.entropy_bits == doctest::Approx(2.0 / std::log(2.0)));
  const auto md = qprob::report::to_markdown(qprob::report::table_next_token_display(r));
  INFO(md);
  CHECK(md.find("| poe_boolq_tf | Llama-7B | 60.00 | 10.00 | 12.00 | 50.00 | 45.00 | 288.54 |  |") != std::string::npos);
  // Acc. without dagger (McNemar p 0.5), Conf. marked (t-test p 0.01), Conf_err n/a, H not marked (p 0.3).
  CHECK(md.find("| poe_boolq_tf | + GPTQ 4-bit g128 | 55.00 (-5.00) | 11.00 (+1.00) | 10.00 (-2.00) | 45.00* (-5.00) | "
                "n/a (n/a) | 300.00 (+11.46) | 90.00 |") != std::string::npos);
  const auto csv = qprob::report::to_csv(qprob::report::table_next_token_csv(r));
  CHECK(csv.find("\npoe_boolq_tf,100,60.00,55.00,-5.00,0.5,") != std::string::npos);
  // The choice tables do not list it.
  CHECK(qprob::report::to_markdown(qprob::report::table1_display(r)).find("poe_boolq_tf") == std::string::npos);

  const auto dir     = qprob::test::write_results(scratch("next_token"), j);
  const auto written = qprob::report::write_report(dir);
  CHECK(written.files.size() == 6 + 2 + 2 * (1 + 2 * 3) + 2 + 1);
  CHECK(xml_problem(slurp(dir / "figures" / "reliability_poe_boolq_tf.svg")) == "");
  CHECK_FALSE(fs::exists(dir / "figures" / "conf_shift_poe_boolq_tf.svg"));
  const auto html = slurp(dir / "report.html");
  CHECK(html.find("id=\"table_next_token\"") != std::string::npos);
  CHECK(count(html, "<svg") == 8);

  // Only next-token tasks: no choice table or figure 2, the rest as above.
  auto only     = qprob::test::report_fixture();
  only["tasks"] = nlohmann::ordered_json{{"poe_toxicity", next_token_task()}};
  const auto dir2 = qprob::test::write_results(scratch("next_token_only"), only);
  CHECK(qprob::report::write_report(dir2).files.size() == 2 + 2 + 1);
  CHECK_FALSE(fs::exists(dir2 / "tables" / "table1.md"));
  CHECK_FALSE(fs::exists(dir2 / "figures" / "js_distance.svg"));
  const auto html2 = slurp(dir2 / "report.html");
  CHECK(html2.find("id=\"table1\"") == std::string::npos);
  CHECK(html2.find("id=\"table_next_token\"") != std::string::npos);
  CHECK(count(html2, "<svg") == 1);
}

TEST_CASE("report: missing keys and wrong types name results.json and the key") {
  using J = nlohmann::ordered_json;
  auto j = qprob::test::report_fixture();
  j["tasks"]["boolq"]["full"].erase("ece");
  expect_error(j, "tasks.boolq.full.ece", "missing required key");

  j = qprob::test::report_fixture();
  j["tasks"]["arc_easy"]["n"] = "2376";
  expect_error(j, "tasks.arc_easy.n", "expected an integer, got string");

  j = qprob::test::report_fixture();
  j["tasks"]["arc_easy"]["full"]["reliability"][1]["count"] = 1.5;
  expect_error(j, "tasks.arc_easy.full.reliability[1].count", "expected an integer, got a non-integer number");

  j = qprob::test::report_fixture();
  j["tasks"]["hellaswag"]["paired"]["conf_shift_by_bin"][0].erase("se_true_shift");
  expect_error(j, "tasks.hellaswag.paired.conf_shift_by_bin[0].se_true_shift", "missing required key");

  j = qprob::test::report_fixture();
  j["tasks"]["boolq"]["paired"]["ttest_conf_true"]["p"] = "0.5";
  expect_error(j, "tasks.boolq.paired.ttest_conf_true.p", "expected a number (or null), got string");

  j = qprob::test::report_fixture();
  j["tasks"]["boolq"]["paired"]["mcnemar"] = J::array();
  expect_error(j, "tasks.boolq.paired.mcnemar", "expected an object, got array");

  j = qprob::test::report_fixture();
  j["tasks"]["boolq"]["full"]["reliability"] = J::object();
  expect_error(j, "tasks.boolq.full.reliability", "expected an array, got object");

  j = qprob::test::report_fixture();
  j.erase("metric_options");
  expect_error(j, "metric_options", "missing required key");

  j = qprob::test::report_fixture();
  j["metric_options"]["alpha"] = 1.5;
  expect_error(j, "metric_options.alpha", "must be in (0, 1)");

  j = qprob::test::report_fixture();
  j["tasks"] = J::object();
  expect_error(j, "tasks", "no tasks");

  j = qprob::test::report_fixture();
  j["tasks"]["boolq"]["num_choices"] = 1;
  expect_error(j, "tasks.boolq.num_choices", "must be >= 2");

  j = qprob::test::report_fixture();
  j["tasks"]["boolq"]["kind"] = "generate_until";
  expect_error(j, "tasks.boolq.kind", "expected \"loglikelihood\" or \"next_token_vocab\"");

  j = qprob::test::report_fixture();
  j["tasks"]["poe_boolq_tf"] = next_token_task();
  j["tasks"]["poe_boolq_tf"]["paired"].erase("agreement");
  expect_error(j, "tasks.poe_boolq_tf.paired.agreement", "missing required key");

  j = qprob::test::report_fixture();
  j["tasks"]["poe_boolq_tf"] = next_token_task();
  j["tasks"]["poe_boolq_tf"]["quantized"]["conf"] = "0.45";
  expect_error(j, "tasks.poe_boolq_tf.quantized.conf", "expected a number (or null), got string");
}

TEST_CASE("report: write_report on a bad results.json fails naming it and writes nothing") {
  const auto dir = scratch("bad");
  CHECK_THROWS_WITH_AS(qprob::report::write_report(dir), doctest::Contains("results.json: cannot open the file"),
                       qprob::format_error);
  std::ofstream(dir / "results.json") << "{\"tasks\": ";
  CHECK_THROWS_WITH_AS(qprob::report::write_report(dir), doctest::Contains("results.json: invalid JSON"), qprob::format_error);
  auto j = qprob::test::report_fixture();
  j["tasks"]["arc_easy"]["quantized"].erase("conf_true");
  qprob::test::write_results(dir, j);
  CHECK_THROWS_WITH_AS(qprob::report::write_report(dir),
                       doctest::Contains("results.json: tasks.arc_easy.quantized.conf_true: missing required key"),
                       qprob::format_error);
  CHECK_FALSE(std::filesystem::exists(dir / "report.html"));
  CHECK_FALSE(std::filesystem::exists(dir / "tables"));
}
