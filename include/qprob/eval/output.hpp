// SPDX-License-Identifier: Apache-2.0
#pragma once
// Output files of an evaluation, written atomically (io/atomic_file.hpp), deterministic (no dates, no
// timings, document order):
//
//   samples JSONL: one line per document, byte-compatible with lm-eval's --log_samples lines
//     (lm_eval/evaluator.py builds the record, loggers/evaluation_tracker.py save_results_samples writes it):
//       doc_id, doc, target (str), arguments {"gen_args_<i>": {"arg_0": context, "arg_1": continuation}},
//       resps [[["<loglik>", "<is_greedy>"]], ...] and filtered_resps [["<loglik>", "<is_greedy>"], ...] (every
//       leaf str()-ed, as sanitize_list does), filter "none", metrics [names], doc_hash, prompt_hash,
//       target_hash (sha256 hex, lm-eval's hash_string), then the per-document metric values (acc, acc_norm;
//       an MC2 task's score under "acc"), all as Python's json.dumps(ensure_ascii=False) writes them;
//     plus one key "qprob" with qprob's per-document numbers (docs/tasks.md, "Outputs").
//   results JSON: lm-eval's results layout ("results" with "<metric>,none" and "<metric>_stderr,none",
//     "n-shot", "higher_is_better", "n-samples", "config") plus "qprob" with the calibration metrics.
//
// Layer: eval (host only).

#include <qprob/core/error.hpp>
#include <qprob/eval/evaluate.hpp>
#include <qprob/eval/python_json.hpp>
#include <qprob/io/atomic_file.hpp>
#include <qprob/metrics/reference.hpp>
#include <qprob/metrics/sample.hpp>
#include <qprob/tasks/types.hpp>
#include <qprob/version.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace qprob::eval {

using ojson = nlohmann::ordered_json;

/// A double for JSON; NaN and infinities become null (Python would write NaN / Infinity, which strict JSON
/// parsers reject).
[[nodiscard]] inline ojson json_number(double x) { return std::isfinite(x) ? ojson(x) : ojson(nullptr); }

/// One model's metrics on one task as JSON: the one serializer of metrics::model_metrics, used by the results
/// JSON of the evaluation drivers ("qprob.<task>.sum" / "char_normalized" / "next_token") and by `qprob compare`'s
/// results.json ("tasks.<task>.full" / "quantized"). Keys, in this order (docs/compare.md and docs/tasks.md):
///   n, n_correct, acc, acc_stderr, acc_wilson [lower, upper], acc_norm, acc_norm_stderr, accuracy, conf,
///   conf_correct, conf_err, conf_true, entropy (nats), entropy_bits, entropy_bits_x100, brier, nll, ece, mce,
///   rmsce, ace, reliability [{lower, upper, count, conf (mean confidence), acc (accuracy)}]
/// NaN (an undefined value, an empty bin's means) is written as null.
[[nodiscard]] inline ojson model_metrics_json(const metrics::model_metrics& m) {
  const auto num = json_number;
  ojson o;
  o["n"]                 = m.n;
  o["n_correct"]         = m.n_correct;
  o["acc"]               = num(m.acc);
  o["acc_stderr"]        = num(m.acc_stderr);
  o["acc_wilson"]        = ojson::array({num(m.acc_wilson.lower), num(m.acc_wilson.upper)});
  o["acc_norm"]          = num(m.acc_norm);
  o["acc_norm_stderr"]   = num(m.acc_norm_stderr);
  o["accuracy"]          = num(m.accuracy);
  o["conf"]              = num(m.conf);
  o["conf_correct"]      = num(m.conf_correct);
  o["conf_err"]          = num(m.conf_err);
  o["conf_true"]         = num(m.conf_true);
  o["entropy"]           = num(m.entropy);
  o["entropy_bits"]      = num(m.entropy_bits);
  o["entropy_bits_x100"] = num(m.entropy_bits * 100.0);
  o["brier"]             = num(m.brier);
  o["nll"]               = num(m.nll);
  o["ece"]               = num(m.ece);
  o["mce"]               = num(m.mce);
  o["rmsce"]             = num(m.rmsce);
  o["ace"]               = num(m.ace);
  ojson bins             = ojson::array();
  for (const auto& b : m.reliability) {
    bins.push_back(ojson{{"lower", b.lower}, {"upper", b.upper}, {"count", b.count}, {"conf", num(b.mean_conf)},
                         {"acc", num(b.accuracy)}});
  }
  o["reliability"] = std::move(bins);
  return o;
}

namespace output_detail {

inline ojson number(double x) { return json_number(x); }

/// Probabilities, prediction, confidence, gold probability and entropy (nats) of one document's choices.
inline ojson scoring_block(const doc_result& r, std::size_t gold, metrics::scoring mode) {
  std::vector<double> ll;
  std::vector<std::int32_t> chars;
  for (const auto& c : r.choices) {
    ll.push_back(c.loglik);
    chars.push_back(c.char_len);
  }
  const auto end  = static_cast<std::int64_t>(ll.size());
  const auto* cl  = chars.data();
  const auto ev   = metrics::evaluate_sample(ll.data(), cl, nullptr, 0, end, static_cast<int>(gold), mode);
  const auto st   = metrics::softmax_of(ll.data(), cl, nullptr, 0, end, mode);
  ojson probs     = ojson::array();
  for (std::int64_t j = 0; j < end; ++j) {
    probs.push_back(number(std::exp(metrics::choice_score(ll[static_cast<std::size_t>(j)], cl, nullptr, j, mode) - st.max_score) / st.sum));
  }
  ojson b;
  b["probs"]   = std::move(probs);
  b["pred"]    = ev.pred;
  b["conf"]    = number(ev.conf);
  b["p_true"]  = number(ev.p_true);
  b["entropy"] = number(ev.entropy);
  return b;
}

/// np.argmax: first index of the maximum.
inline std::size_t argmax(const std::vector<double>& v) {
  std::size_t best = 0;
  for (std::size_t j = 1; j < v.size(); ++j) {
    if (v[j] > v[best]) {
      best = j;
    }
  }
  return best;
}

}  // namespace output_detail

/// lm-eval's per-document metric values ({"acc": 1.0, "acc_norm": 0.0} or {"acc": <mc2>}), in metric_list order.
[[nodiscard]] inline ojson lm_eval_doc_metrics(const tasks::document& d, const doc_result& r) {
  ojson m = ojson::object();
  if (r.kind == tasks::request_kind::next_token_vocab) {
    m["acc"] = r.next_correct ? 1.0 : 0.0;
    return m;
  }
  std::vector<double> ll, norm;
  for (const auto& c : r.choices) {
    ll.push_back(c.loglik);
    // lm-eval divides by float(len(choice)); an empty choice gives inf/nan there, and argmax still picks one.
    norm.push_back(c.char_len > 0 ? c.loglik / static_cast<double>(c.char_len) : -INFINITY);
  }
  for (const auto metric : d.metrics) {
    switch (metric) {
      case tasks::metric::acc: m["acc"] = output_detail::argmax(ll) == d.gold ? 1.0 : 0.0; break;
      case tasks::metric::acc_norm: m["acc_norm"] = output_detail::argmax(norm) == d.gold ? 1.0 : 0.0; break;
      case tasks::metric::mc2: m["acc"] = output_detail::number(mc2_score(d, r)); break;
    }
  }
  return m;
}

/// The full sample record of one document (see the header comment for the layout).
[[nodiscard]] inline ojson sample_record(const tasks::document& d, const doc_result& r) {
  QPROB_CHECK_EQ(d.doc_id, r.doc_id, "sample_record: result of another document");
  const bool nt = r.kind == tasks::request_kind::next_token_vocab;
  ojson rec;
  rec["doc_id"] = d.doc_id;
  rec["doc"]    = d.fields;
  rec["target"] = std::to_string(d.gold);  // doc_to_target gives the gold index; the tracker writes str(target)
  ojson args    = ojson::object();
  ojson resps = ojson::array(), filtered = ojson::array();
  if (nt) {
    // A one-token generation: lm-eval's generate_until arguments are (context, gen_kwargs), resps [["text"]].
    ojson gen_kwargs;
    gen_kwargs["max_new_tokens"] = 1;
    gen_kwargs["do_sample"]      = false;
    args["gen_args_0"]           = ojson{{"arg_0", d.context}, {"arg_1", gen_kwargs}};
    resps.push_back(ojson::array({r.next_text}));
    filtered.push_back(r.next_text);
  } else {
    QPROB_CHECK_EQ(d.choices.size(), r.choices.size(), "sample_record: doc ", d.doc_id, " choice count");
    for (std::size_t c = 0; c < d.choices.size(); ++c) {
      args["gen_args_" + std::to_string(c)] =
          ojson{{"arg_0", d.context}, {"arg_1", d.target_delimiter + d.choices[c]}};
      const ojson pair = ojson::array({python_float_repr(r.choices[c].loglik), std::string(python_bool_str(r.choices[c].is_greedy))});
      resps.push_back(ojson::array({pair}));
      filtered.push_back(pair);
    }
  }
  rec["arguments"]      = std::move(args);
  rec["resps"]          = std::move(resps);
  rec["filtered_resps"] = std::move(filtered);
  rec["filter"]         = "none";
  const ojson metric_values = lm_eval_doc_metrics(d, r);
  ojson names               = ojson::array();
  for (const auto& [k, v] : metric_values.items()) {
    names.push_back(k);
  }
  rec["metrics"]     = std::move(names);
  rec["doc_hash"]    = sha256_hex(python_json_dumps(d.fields, 2));
  rec["prompt_hash"] = sha256_hex(d.context);
  rec["target_hash"] = sha256_hex(std::to_string(d.gold));
  for (const auto& [k, v] : metric_values.items()) {
    rec[k] = v;
  }

  ojson q;
  if (nt) {
    q["token"]      = r.next.token;
    q["token_text"] = r.next_text;
    q["logprob"]    = output_detail::number(r.next.logprob);
    q["conf"]       = output_detail::number(std::exp(r.next.logprob));
    q["entropy"]    = output_detail::number(r.next.entropy);
    q["answers"]    = d.choices;
    q["correct"]    = r.next_correct;
  } else {
    ojson ll = ojson::array(), greedy = ojson::array(), toks = ojson::array(), chars = ojson::array();
    for (const auto& c : r.choices) {
      ll.push_back(output_detail::number(c.loglik));
      greedy.push_back(c.is_greedy);
      toks.push_back(c.num_tokens);
      chars.push_back(c.char_len);
    }
    q["loglik"]     = std::move(ll);
    q["is_greedy"]  = std::move(greedy);
    q["num_tokens"] = std::move(toks);
    q["char_len"]   = std::move(chars);
    q["gold"]       = d.gold;
    if (std::find(d.metrics.begin(), d.metrics.end(), tasks::metric::mc2) != d.metrics.end()) {
      q["labels"] = d.labels;
    }
    q["sum"] = output_detail::scoring_block(r, d.gold, metrics::scoring::sum);
    bool chars_ok = true;
    for (const auto& c : r.choices) {
      chars_ok = chars_ok && c.char_len > 0;
    }
    q["char_normalized"] = chars_ok ? output_detail::scoring_block(r, d.gold, metrics::scoring::char_normalized) : ojson(nullptr);
  }
  rec["qprob"] = std::move(q);
  return rec;
}

/// One JSONL line (with its '\n') exactly as lm-eval's tracker writes it: json.dumps(record, ensure_ascii=False).
[[nodiscard]] inline std::string sample_line(const tasks::document& d, const doc_result& r) {
  return python_json_dumps(sample_record(d, r)) + "\n";
}

/// Writes every evaluated document of `result` as one line, in document order, atomically.
inline void write_samples_jsonl(const std::filesystem::path& path, const tasks::task_data& task, const eval_result& result,
                                const io::atomic_write_options& options = {}) {
  QPROB_CHECK(result.docs.size() <= task.docs.size(), "write_samples_jsonl: more results than documents");
  std::string text;
  for (std::size_t i = 0; i < result.docs.size(); ++i) {
    text += sample_line(task.docs[i], result.docs[i]);
  }
  io::write_file_atomic(path, text, options);
}

/// How the run was configured (the "config" block of the results JSON).
struct run_config {
  std::string model;                ///< the model directory as given
  std::string scorer;               ///< scorer::name()
  std::string device = "cpu";
  std::size_t batch_size = 1;
  std::optional<std::size_t> limit;
  std::string data_dir;
};

namespace output_detail {

inline std::string_view ace_name(metrics::ace_variant a) {
  switch (a) {
    case metrics::ace_variant::nixon: return "nixon";
    case metrics::ace_variant::equal_mass_top_label: return "equal_mass_top_label";
    case metrics::ace_variant::uniform_average: return "uniform_average";
    case metrics::ace_variant::seed_compat: return "seed_compat";
  }
  return "?";
}

}  // namespace output_detail

/// The results document (lm-eval's layout + "qprob"), as a JSON value.
[[nodiscard]] inline ojson results_record(const std::vector<task_summary>& tasks_done, const run_config& cfg,
                                          const metrics::metric_options& opt = {}) {
  using output_detail::number;
  ojson results = ojson::object(), groups = ojson::object(), nshot = ojson::object(), hib = ojson::object(),
        nsamples = ojson::object(), qp = ojson::object();
  for (const auto& s : tasks_done) {
    ojson r;
    r["alias"] = s.task;
    ojson better = ojson::object();
    for (const auto m : s.metrics) {
      const std::string name = m == tasks::metric::mc2 ? "acc" : std::string(tasks::metric_name(m));
      r[name + ",none"]        = number(lm_eval_value(s, m));
      r[name + "_stderr,none"] = number(lm_eval_stderr(s, m));
      better[name]             = true;
    }
    results[s.task]  = std::move(r);
    groups[s.task]   = ojson::array();
    nshot[s.task]    = 0;
    hib[s.task]      = std::move(better);
    nsamples[s.task] = ojson{{"original", s.n_original}, {"effective", s.n}};
    ojson t;
    t["kind"] = std::string(tasks::request_kind_name(s.kind));
    if (s.kind == tasks::request_kind::loglikelihood) {
      t["sum"]             = model_metrics_json(s.sum);
      t["char_normalized"] = s.char_normalized ? model_metrics_json(*s.char_normalized) : ojson(nullptr);
    } else {
      t["next_token"] = model_metrics_json(s.sum);
    }
    if (!std::isnan(s.mc2)) {
      t["mc2"]        = number(s.mc2);
      t["mc2_stderr"] = number(s.mc2_stderr);
    }
    qp[s.task] = std::move(t);
  }
  ojson doc;
  doc["results"]          = std::move(results);
  doc["group_subtasks"]   = std::move(groups);
  doc["n-shot"]           = std::move(nshot);
  doc["higher_is_better"] = std::move(hib);
  doc["n-samples"]        = std::move(nsamples);
  ojson c;
  c["model"]          = "qprob";
  c["model_args"]     = "pretrained=" + cfg.model;
  c["batch_size"]     = cfg.batch_size;
  c["device"]         = cfg.device;
  c["limit"]          = cfg.limit ? ojson(*cfg.limit) : ojson(nullptr);
  c["scorer"]         = cfg.scorer;
  c["data_dir"]       = cfg.data_dir;
  c["qprob_version"]  = version_string;
  doc["config"]       = std::move(c);
  ojson mo;
  mo["calibration_bins"] = opt.calibration_bins;
  mo["bin_edges"]        = opt.edges == metrics::bin_edges::upper_closed ? "upper_closed" : "torchmetrics";
  mo["ace"]              = std::string(output_detail::ace_name(opt.ace));
  mo["ace_ranges"]       = opt.ace_ranges;
  qp["metric_options"]   = std::move(mo);
  doc["qprob"]           = std::move(qp);
  return doc;
}

/// Writes results_record(...) as json.dumps(indent=2, ensure_ascii=False) + "\n", atomically.
inline void write_results_json(const std::filesystem::path& path, const std::vector<task_summary>& tasks_done,
                               const run_config& cfg, const metrics::metric_options& opt = {},
                               const io::atomic_write_options& options = {}) {
  io::write_file_atomic(path, python_json_dumps(results_record(tasks_done, cfg, opt), 2) + "\n", options);
}

}  // namespace qprob::eval
