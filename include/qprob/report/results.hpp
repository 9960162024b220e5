// SPDX-License-Identifier: Apache-2.0
#pragma once
// The report's view of a `qprob compare` results.json: the keys tables.hpp, figures.hpp and report.hpp read,
// checked on the way in. Every missing key or wrong type throws format_error naming the file and the dotted
// key path ("tasks.boolq.full.ece"), so a schema mismatch between the pipeline and the report is found at
// once. The schema is documented in docs/compare.md, "Report inputs"; unknown keys are ignored, so the
// pipeline may write more. Numbers may be JSON null (qprob writes NaN and infinities as null): they are read
// as NaN and shown as "n/a". Tasks are kept in name order (std::map order of the keys), which is stable and
// is the order of the paper's tables (arc_easy, boolq, hellaswag, openbookqa, piqa, xstorycloze_en).
// Next-token (Price-of-Efficiency) tasks ("kind": "next_token_vocab") have no choice distribution, so they are
// read into their own list with the keys that apply to them (results::next_token_tasks).
// Layer: report (host only).

#include <qprob/core/error.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace qprob::report {

inline constexpr double nan = std::numeric_limits<double>::quiet_NaN();

/// One reliability-diagram bin of one model (metrics::reliability_bin, keys lower/upper/count/conf/acc).
struct reliability_bin {
  double lower = 0;
  double upper = 0;
  std::int64_t count = 0;
  double conf = nan;  ///< mean confidence of the bin's samples
  double acc  = nan;  ///< accuracy of the bin's samples
};

/// One confidence-shift bin over the full model's confidence (metrics::shift_bin; stderr_* are "se_*" here).
struct shift_bin {
  double lower = 0;
  double upper = 0;
  std::int64_t count = 0;
  double mean_conf_shift = nan;  ///< mean(conf_q - conf_f)
  double se_conf_shift   = nan;
  double mean_true_shift = nan;  ///< mean(p_true_q - p_true_f)
  double se_true_shift   = nan;
};

struct t_test {
  double t = nan;
  double p = nan;
};

/// Per-model, per-task metrics, as fractions (not percent); entropy in nats, entropy_bits in bits.
struct model_result {
  double acc = nan, acc_norm = nan, ece = nan, ace = nan, conf = nan, conf_err = nan, conf_true = nan;
  double entropy = nan;       ///< nats
  double entropy_bits = nan;  ///< bits: the key entropy_bits if present, else entropy / ln 2
  double brier = nan;
  std::vector<reliability_bin> reliability;
};

struct paired_result {
  double jsd = nan;                     ///< mean JS divergence, nats
  double kl = nan;                      ///< mean KL(full || quantized), nats
  double flip_rate = nan;
  double js_distance = nan;             ///< mean per-sample JS distance (scipy jensenshannon), figure 2
  double true_class_js_distance = nan;  ///< optional: paper Appendix B's true-class JS distance
  t_test ttest_conf_true;               ///< paired t-test on p_true: the significance mark of Conf_true
  std::optional<t_test> ttest_conf;     ///< optional: marks Conf when present
  std::optional<t_test> ttest_entropy;  ///< optional: marks H when present
  double mcnemar_p = nan;               ///< marks the accuracy change (dagger) in table 1
  std::vector<shift_bin> conf_shift_by_bin;
};

struct task_result {
  std::string name;
  std::int64_t n = 0;
  std::int64_t num_choices = 0;  ///< choices per sample (the maximum where it varies); 2 means binary
  model_result full;
  model_result quantized;
  paired_result paired;

  /// Table 1's calibration error: ECE for binary tasks, ACE for multi-class ones (the paper's choice).
  [[nodiscard]] bool binary() const noexcept { return num_choices == 2; }
};

/// The paired statistics of a next-token task (tasks.<task>.paired of kind next_token_vocab).
struct next_token_paired {
  double agreement = nan;               ///< fraction of documents where both models generate the same token
  double flip_rate = nan;               ///< 1 - agreement
  t_test ttest_conf;                    ///< paired t-test on the generated token's probability: marks Conf
  t_test ttest_entropy;                 ///< paired t-test on the full-vocabulary entropy: marks H
  double mcnemar_p = nan;               ///< marks the accuracy change (dagger)
};

/// A next-token (Price-of-Efficiency) task: one greedy token over the whole vocabulary per document. conf is
/// the generated token's probability, entropy is over the vocabulary; acc_norm, conf_true and brier are NaN.
struct next_token_task {
  std::string name;
  std::int64_t n = 0;
  model_result full;
  model_result quantized;
  next_token_paired paired;
};

struct results {
  std::string file;                  ///< where it was read from (error messages)
  double alpha = nan;                ///< significance level of every mark (metric_options.alpha)
  std::string full_label;            ///< model.name, else "Full"
  std::string quantized_label;       ///< quantization.label, else "+ quantized"
  nlohmann::ordered_json settings;   ///< the model / quantization / software / metric_options objects, as given
  std::vector<task_result> tasks;    ///< multiple-choice tasks, in task-name order
  std::vector<next_token_task> next_token_tasks;  ///< next-token tasks, in task-name order
};

namespace results_detail {

/// Reads keys of one JSON object, naming file and dotted path in every error.
class reader {
public:
  reader(const nlohmann::ordered_json& j, std::string file, std::string path)
      : j_(j), file_(std::move(file)), path_(std::move(path)) {
    if (!j_.is_object()) {
      fail(path_, std::string("expected an object, got ") + j_.type_name());
    }
  }

  [[nodiscard]] std::string key_path(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }
  [[nodiscard]] bool has(const std::string& key) const { return j_.contains(key); }

  [[nodiscard]] const nlohmann::ordered_json& at(const std::string& key) const {
    const auto it = j_.find(key);
    if (it == j_.end()) {
      fail(key_path(key), "missing required key");
    }
    return *it;
  }

  /// A number, or null (NaN).
  [[nodiscard]] double number(const std::string& key) const { return as_number(at(key), key_path(key)); }
  [[nodiscard]] double number_or(const std::string& key, double fallback) const {
    return has(key) ? number(key) : fallback;
  }

  [[nodiscard]] std::int64_t integer(const std::string& key) const {
    const auto& v = at(key);
    if (!v.is_number_integer()) {
      fail(key_path(key), std::string("expected an integer, got ") + type_of(v));
    }
    return v.get<std::int64_t>();
  }

  [[nodiscard]] reader object(const std::string& key) const { return {at(key), file_, key_path(key)}; }

  [[nodiscard]] const nlohmann::ordered_json& array(const std::string& key) const {
    const auto& v = at(key);
    if (!v.is_array()) {
      fail(key_path(key), std::string("expected an array, got ") + type_of(v));
    }
    return v;
  }

  [[nodiscard]] const std::string& file() const { return file_; }

  [[noreturn]] void fail(const std::string& field, const std::string& problem) const {
    throw format_error(file_, field, problem);
  }

  [[nodiscard]] double as_number(const nlohmann::ordered_json& v, const std::string& field) const {
    if (v.is_null()) {
      return nan;
    }
    if (!v.is_number()) {
      fail(field, std::string("expected a number (or null), got ") + type_of(v));
    }
    return v.get<double>();
  }

private:
  static std::string type_of(const nlohmann::ordered_json& v) {
    return v.is_number_float() ? std::string("a non-integer number") : std::string(v.type_name());
  }

  const nlohmann::ordered_json& j_;
  std::string file_;
  std::string path_;
};

inline t_test read_t_test(const reader& r) { return {r.number("t"), r.number("p")}; }

/// The "reliability" bins of a model block (multiple-choice and next-token alike).
inline std::vector<reliability_bin> read_reliability(const reader& r) {
  std::vector<reliability_bin> out;
  const auto& bins = r.array("reliability");
  for (std::size_t i = 0; i < bins.size(); ++i) {
    const reader b(bins[i], r.file(), r.key_path("reliability") + "[" + std::to_string(i) + "]");
    out.push_back({b.number("lower"), b.number("upper"), b.integer("count"), b.number("conf"), b.number("acc")});
  }
  return out;
}

inline model_result read_model(const reader& r) {
  model_result m;
  m.acc       = r.number("acc");
  m.acc_norm  = r.number("acc_norm");
  m.ece       = r.number("ece");
  m.ace       = r.number("ace");
  m.conf      = r.number("conf");
  m.conf_err  = r.number("conf_err");
  m.conf_true = r.number("conf_true");
  m.entropy   = r.number("entropy");
  m.entropy_bits = r.has("entropy_bits") ? r.number("entropy_bits") : m.entropy / std::log(2.0);
  m.brier     = r.number("brier");
  m.reliability = read_reliability(r);
  return m;
}

inline paired_result read_paired(const reader& r) {
  paired_result p;
  p.jsd         = r.number("jsd");
  p.kl          = r.number("kl");
  p.flip_rate   = r.number("flip_rate");
  p.js_distance = r.number("js_distance");
  p.true_class_js_distance = r.number_or("true_class_js_distance", nan);
  p.ttest_conf_true = read_t_test(r.object("ttest_conf_true"));
  if (r.has("ttest_conf")) {
    p.ttest_conf = read_t_test(r.object("ttest_conf"));
  }
  if (r.has("ttest_entropy")) {
    p.ttest_entropy = read_t_test(r.object("ttest_entropy"));
  }
  p.mcnemar_p = r.object("mcnemar").number("p");
  const auto& bins = r.array("conf_shift_by_bin");
  for (std::size_t i = 0; i < bins.size(); ++i) {
    const reader b(bins[i], r.file(), r.key_path("conf_shift_by_bin") + "[" + std::to_string(i) + "]");
    p.conf_shift_by_bin.push_back({b.number("lower"), b.number("upper"), b.integer("count"), b.number("mean_conf_shift"),
                                   b.number("se_conf_shift"), b.number("mean_true_shift"), b.number("se_true_shift")});
  }
  return p;
}

/// A next-token task's model block: the keys of read_model that are defined without a choice distribution.
inline model_result read_next_token_model(const reader& r) {
  model_result m;
  m.acc      = r.number("acc");
  m.ece      = r.number("ece");
  m.ace      = r.number("ace");
  m.conf     = r.number("conf");
  m.conf_err = r.number("conf_err");
  m.entropy  = r.number("entropy");
  m.entropy_bits = r.has("entropy_bits") ? r.number("entropy_bits") : m.entropy / std::log(2.0);
  m.reliability = read_reliability(r);
  return m;
}

inline next_token_paired read_next_token_paired(const reader& r) {
  next_token_paired p;
  p.agreement     = r.number("agreement");
  p.flip_rate     = r.number("flip_rate");
  p.ttest_conf    = read_t_test(r.object("ttest_conf"));
  p.ttest_entropy = read_t_test(r.object("ttest_entropy"));
  p.mcnemar_p     = r.object("mcnemar").number("p");
  return p;
}

inline std::string optional_string(const nlohmann::ordered_json& root, const char* object, const char* key,
                                   std::string fallback) {
  const auto o = root.find(object);
  if (o == root.end() || !o->is_object()) {
    return fallback;
  }
  const auto v = o->find(key);
  return v != o->end() && v->is_string() && !v->get<std::string>().empty() ? v->get<std::string>() : fallback;
}

}  // namespace results_detail

/// Checks and converts a parsed results.json; `file` names it in errors.
/// @throws format_error naming `file` and the key path for a missing key, a wrong type, an empty task list or
///         an alpha outside (0, 1).
[[nodiscard]] inline results parse_results(const nlohmann::ordered_json& root, const std::string& file) {
  using results_detail::reader;
  const reader top(root, file, "");
  results out;
  out.file = file;
  out.alpha = top.object("metric_options").number("alpha");
  if (!(out.alpha > 0 && out.alpha < 1)) {
    top.fail("metric_options.alpha", "must be in (0, 1), got " + root["metric_options"]["alpha"].dump());
  }
  out.full_label      = results_detail::optional_string(root, "model", "name", "Full");
  out.quantized_label = results_detail::optional_string(root, "quantization", "label", "+ quantized");
  out.settings        = nlohmann::ordered_json::object();
  for (const char* key : {"model", "quantization", "software", "metric_options"}) {
    if (root.contains(key)) {
      out.settings[key] = root[key];
    }
  }
  const reader tasks = top.object("tasks");
  std::map<std::string, const nlohmann::ordered_json*> sorted;
  for (const auto& [name, value] : root["tasks"].items()) {
    sorted.emplace(name, &value);
  }
  if (sorted.empty()) {
    top.fail("tasks", "no tasks");
  }
  for (const auto& [name, value] : sorted) {
    const reader t(*value, file, tasks.key_path(name));
    std::string kind = "loglikelihood";  // results.json files without "kind" hold multiple-choice tasks only
    if (t.has("kind")) {
      const auto& k = t.at("kind");
      if (!k.is_string() || (k != "loglikelihood" && k != "next_token_vocab")) {
        t.fail(t.key_path("kind"), "expected \"loglikelihood\" or \"next_token_vocab\", got " + k.dump());
      }
      kind = k.get<std::string>();
    }
    if (kind == "next_token_vocab") {
      next_token_task r;
      r.name = name;
      r.n    = t.integer("n");
      if (r.n < 0) {
        t.fail(t.key_path("n"), "must be >= 0, got " + std::to_string(r.n));
      }
      r.full      = results_detail::read_next_token_model(t.object("full"));
      r.quantized = results_detail::read_next_token_model(t.object("quantized"));
      r.paired    = results_detail::read_next_token_paired(t.object("paired"));
      out.next_token_tasks.push_back(std::move(r));
      continue;
    }
    task_result r;
    r.name        = name;
    r.n           = t.integer("n");
    r.num_choices = t.integer("num_choices");
    if (r.n < 0) {
      t.fail(t.key_path("n"), "must be >= 0, got " + std::to_string(r.n));
    }
    if (r.num_choices < 2) {
      t.fail(t.key_path("num_choices"), "must be >= 2, got " + std::to_string(r.num_choices));
    }
    r.full      = results_detail::read_model(t.object("full"));
    r.quantized = results_detail::read_model(t.object("quantized"));
    r.paired    = results_detail::read_paired(t.object("paired"));
    out.tasks.push_back(std::move(r));
  }
  return out;
}

/// Reads and checks `path` (normally <out_dir>/results.json).
/// @throws format_error naming the file for an unreadable file, invalid JSON or a schema violation.
[[nodiscard]] inline results read_results(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw format_error(path.string(), "", "cannot open the file");
  }
  std::ostringstream text;
  text << in.rdbuf();
  nlohmann::ordered_json root;
  try {
    root = nlohmann::ordered_json::parse(text.str());
  } catch (const nlohmann::json::parse_error& e) {
    throw format_error(path.string(), "", std::string("invalid JSON: ") + e.what());
  }
  return parse_results(root, path.string());
}

}  // namespace qprob::report
