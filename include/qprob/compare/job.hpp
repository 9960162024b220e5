// SPDX-License-Identifier: Apache-2.0
#pragma once
// The `qprob compare` job: evaluate a full model and its quantized version on multiple-choice tasks the way
// lm-evaluation-harness does (and on next-token Price-of-Efficiency tasks: the greedy next token over the whole
// vocabulary, eval::scorer::next_token), then compute every per-model metric and the paired statistics per task,
// and write
//   <out>/results.json                          the numbers (docs/compare.md lists every key)
//   <out>/samples_<task>_{full,quantized}.jsonl lm-eval --log_samples lines (+ a "qprob" block)
//   <out>/quantized/                            the GPTQ checkpoint (when the job quantized the model)
//   <out>/cache/                                what a rerun reuses (compare/cache.hpp)
// Phases: (1) full-model evaluation per task, cached by model identity + task + settings; (2) quantization
// (RTN or GPTQ, compare/cpu_quantizer.hpp), saved as a GPTQ checkpoint and loaded back, or --quantized DIR
// loaded; (3) quantized evaluation per task, cached the same way (identity: the checkpoint's files + the
// model's); (4) metrics, samples and results.json. Every file is written atomically; a rerun (also after an
// interruption) skips each phase whose inputs are unchanged and redoes the rest.
//
// The phases run on a compare_backend: cpu_backend (device "cpu": the double-precision host reference forward
// pass and quantizer, tiny models) or gpu_backend (device "cuda", compare/gpu_backend.hpp: the GPU engine, which
// quantizes in place and then evaluates the checkpoint as loaded back). Layer: compare (host only; needs
// qprob::tokenizer; the GPU backend also qprob::kernels).

#include <qprob/compare/cache.hpp>
#include <qprob/compare/cpu_quantizer.hpp>
#include <qprob/core/error.hpp>
#include <qprob/eval/evaluate.hpp>
#include <qprob/eval/output.hpp>
#include <qprob/eval/progress.hpp>
#include <qprob/eval/python_json.hpp>
#include <qprob/eval/reference_scorer.hpp>
#include <qprob/io/atomic_file.hpp>
#include <qprob/metrics/reference.hpp>
#include <qprob/metrics/seed_compat.hpp>
#include <qprob/quant/calibration.hpp>
#include <qprob/quant/checkpoint.hpp>
#include <qprob/tasks/load.hpp>
#include <qprob/tokenizer/tokenizer.hpp>
#include <qprob/version.hpp>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace qprob::compare {

using ojson = nlohmann::ordered_json;

inline constexpr std::string_view results_format = "qprob-compare-results/1";

struct compare_options {
  std::filesystem::path model_dir;
  std::optional<std::filesystem::path> quantized_dir;  ///< load this GPTQ checkpoint instead of quantizing
  std::filesystem::path data_dir;
  std::filesystem::path out_dir;
  std::vector<std::string> tasks;
  std::optional<std::size_t> limit;
  std::size_t batch_size = 1;   ///< requests per scorer call; results do not depend on it
  std::string batch_size_arg = "1";  ///< as given ("auto" or a number), recorded in results.json
  bool seed_compat = false;     ///< --metrics-compat seed
  std::string device = "cpu";
  /// lm-eval's max_length for both models; nullopt: the model's (max_position_embeddings, else 2048).
  std::optional<std::int64_t> max_length;
  quantize_settings quant;      ///< used when quantized_dir is unset
  quant::calibration_options calib;  ///< GPTQ calibration (source, nsamples, seqlen, seed)
  bool progress = true;
  /// Log sink (one line per call, without '\n'); default: stdout.
  std::function<void(const std::string&)> log;
};

/// The engine a compare run works with. The job calls full_scorer() for phase 1, quantize() in phase 2 (unless
/// a checkpoint is reused or given), then quantized_scorer() with the checkpoint as loaded back for phase 3.
class compare_backend {
public:
  virtual ~compare_backend() = default;
  compare_backend()                                  = default;
  compare_backend(const compare_backend&)            = delete;
  compare_backend& operator=(const compare_backend&) = delete;

  [[nodiscard]] virtual const model::model_config& config() const = 0;
  [[nodiscard]] virtual std::int64_t parameters() const = 0;
  [[nodiscard]] virtual std::int64_t max_length() const = 0;
  [[nodiscard]] virtual eval::scorer& full_scorer() = 0;
  /// Quantizes the block linears `linears` (checkpoint layout) and returns them with per-layer reports.
  virtual quantize_result quantize(const std::vector<block_linear>& linears, const quantize_settings& s,
                                   const std::vector<std::vector<std::int32_t>>& windows, const quantize_progress& progress) = 0;
  /// The quantized model: the full model with the checkpoint's block linears dequantized. May reuse the full
  /// model's engine (full_scorer() must not be used afterwards).
  [[nodiscard]] virtual eval::scorer& quantized_scorer(const quant::gptq_checkpoint& ckpt) = 0;
  /// After quantized_scorer(): how the quantized weights are held, for the log (empty: nothing to say).
  [[nodiscard]] virtual std::string quantized_note() const { return {}; }
};

/// The host reference path: exact, single-threaded, for tiny models.
class cpu_backend final : public compare_backend {
public:
  explicit cpu_backend(const std::filesystem::path& model_dir, std::optional<std::int64_t> max_length = std::nullopt)
      : full_(reference::reference_model::from_directory(model_dir), max_length) {}
  [[nodiscard]] const model::model_config& config() const override { return full_.model().config(); }
  [[nodiscard]] std::int64_t parameters() const override { return full_.model().parameters(); }
  [[nodiscard]] std::int64_t max_length() const override { return *full_.max_length(); }
  [[nodiscard]] eval::scorer& full_scorer() override { return full_; }
  quantize_result quantize(const std::vector<block_linear>& linears, const quantize_settings& s,
                           const std::vector<std::vector<std::int32_t>>& windows, const quantize_progress& progress) override {
    auto work = full_.model();  // copy: becomes the quantized model
    return quantize_model(work, linears, s, windows, progress);
  }
  [[nodiscard]] eval::scorer& quantized_scorer(const quant::gptq_checkpoint& ckpt) override {
    auto qmodel = full_.model();
    apply_dequantized(qmodel, ckpt);
    quantized_ = std::make_unique<eval::reference_scorer>(std::move(qmodel), *full_.max_length());
    return *quantized_;
  }

private:
  eval::reference_scorer full_;
  std::unique_ptr<eval::reference_scorer> quantized_;
};

/// What the job did, for callers and tests.
struct compare_outcome {
  std::filesystem::path results;
  std::vector<std::string> reused_full;       ///< tasks whose full-model evaluation came from the cache
  std::vector<std::string> reused_quantized;  ///< tasks whose quantized evaluation came from the cache
  bool reused_quantization = false;           ///< the checkpoint in <out>/quantized was reused
  ojson document;                             ///< results.json's contents
};

namespace job_detail {

inline ojson number(double x) { return eval::json_number(x); }

/// One model's block of a multiple-choice task: eval::model_metrics_json plus the task's MC2 where defined.
inline ojson model_block(const metrics::model_metrics& m, const eval::task_summary& s) {
  ojson o = eval::model_metrics_json(m);
  if (!std::isnan(s.mc2)) {
    o["mc2"]        = number(s.mc2);
    o["mc2_stderr"] = number(s.mc2_stderr);
  }
  return o;
}

inline ojson t_test_json(const metrics::t_test_result& t) {
  return ojson{{"t", number(t.t)}, {"dof", number(t.dof)}, {"p", number(t.p)}, {"significant", t.significant}};
}

/// paired_metrics plus the paired t-tests of per-sample confidence and entropy (the marks of the paper's
/// confidence tables).
inline ojson paired_block(const metrics::paired_metrics& p, const metrics::choice_scores& full,
                          const metrics::choice_scores& quant, double alpha) {
  ojson o;
  o["n"]                      = p.n;
  o["jsd"]                    = number(p.jsd_mean);
  o["jsd_median"]             = number(p.jsd_median);
  o["js_distance"]            = number(p.js_distance_mean);
  o["true_class_jsd"]         = number(p.true_class_jsd);
  o["true_class_js_distance"] = number(p.true_class_js_distance);
  o["kl"]                     = number(p.kl_full_quant);
  o["kl_quant_full"]          = number(p.kl_quant_full);
  o["flip_rate"]              = number(p.flip_rate);
  o["correctness"]            = ojson{{"both_correct", p.both_correct}, {"full_only", p.full_only},
                                      {"quant_only", p.quant_only}, {"both_wrong", p.both_wrong}};
  o["mean_conf_true_shift"]   = number(p.mean_conf_true_shift);
  o["ttest_conf_true"]        = t_test_json(p.ttest_conf_true);
  {
    const auto ef = metrics::evaluate_samples(full.view(), metrics::scoring::sum);
    const auto eq = metrics::evaluate_samples(quant.view(), metrics::scoring::sum);
    std::vector<double> cf, cq, hf, hq;
    for (std::size_t i = 0; i < ef.size(); ++i) {
      cf.push_back(ef[i].conf);
      cq.push_back(eq[i].conf);
      hf.push_back(ef[i].entropy);
      hq.push_back(eq[i].entropy);
    }
    o["ttest_conf"]    = t_test_json(metrics::paired_t_test(cf, cq, alpha));
    o["ttest_entropy"] = t_test_json(metrics::paired_t_test(hf, hq, alpha));
  }
  o["wilcoxon_conf_true"]     = ojson{{"statistic", number(p.wilcoxon_conf_true.statistic)},
                                      {"p", number(p.wilcoxon_conf_true.p)}, {"exact", p.wilcoxon_conf_true.exact},
                                      {"significant", p.wilcoxon_conf_true.significant}};
  o["mcnemar"]                = ojson{{"b", p.mcnemar.b}, {"c", p.mcnemar.c}, {"statistic", number(p.mcnemar.statistic)},
                                      {"p", number(p.mcnemar.p)}, {"significant", p.mcnemar.significant}};
  ojson bins = ojson::array();
  for (const auto& b : p.conf_shift_by_bin) {
    bins.push_back(ojson{{"lower", b.lower}, {"upper", b.upper}, {"count", b.count},
                         {"mean_conf_shift", number(b.mean_conf_shift)}, {"se_conf_shift", number(b.stderr_conf_shift)},
                         {"mean_true_shift", number(b.mean_true_shift)}, {"se_true_shift", number(b.stderr_true_shift)}});
  }
  o["conf_shift_by_bin"] = std::move(bins);
  return o;
}

/// The per-document numbers of a next-token (Price-of-Efficiency) result.
struct next_token_samples {
  std::vector<double> conf;             ///< probability of the generated (greedy) token
  std::vector<double> entropy;          ///< entropy of the full-vocabulary softmax, nats
  std::vector<eval::token_id> token;    ///< the generated token
  std::vector<std::uint8_t> correct;    ///< the gold answer is contained in the decoded token
  std::int64_t answered = 0;            ///< documents whose token matches one of the task's answer strings
};

inline next_token_samples next_token_view(const tasks::task_data& t, const eval::eval_result& r) {
  next_token_samples s;
  for (std::size_t i = 0; i < r.docs.size(); ++i) {
    const auto& d = r.docs[i];
    s.conf.push_back(std::exp(d.next.logprob));
    s.entropy.push_back(d.next.entropy);
    s.token.push_back(d.next.token);
    s.correct.push_back(d.next_correct ? 1 : 0);
    bool any = false;
    for (const auto& a : t.docs[i].choices) {
      any = any || eval::next_token_matches(d.next_text, a);
    }
    s.answered += any ? 1 : 0;
  }
  return s;
}

/// One model's block of a next-token task: the keys of eval::model_metrics_json that are defined for a
/// full-vocabulary distribution (no acc_norm, conf_true, brier, nll: there is no distribution over the
/// answers), plus answer_rate.
inline ojson next_token_model_block(const metrics::model_metrics& m, const next_token_samples& s) {
  ojson o = eval::model_metrics_json(m);
  for (const char* key : {"acc_norm", "acc_norm_stderr", "conf_true", "brier", "nll"}) {
    o.erase(key);
  }
  o["answer_rate"] = number(static_cast<double>(s.answered) / static_cast<double>(s.conf.size()));
  return o;
}

/// The paired block of a next-token task (docs/compare.md): agreement of the generated tokens, the 2x2
/// correctness table with McNemar's test, and the shifts of confidence and entropy with paired tests. No
/// divergence: the scorer keeps the generated token's probability and the entropy, not the whole distribution.
inline ojson next_token_paired_block(const next_token_samples& f, const next_token_samples& q,
                                     const metrics::metric_options& mo, std::int64_t vocab_size) {
  const auto n = static_cast<std::int64_t>(f.conf.size());
  QPROB_CHECK(n > 0 && static_cast<std::int64_t>(q.conf.size()) == n, "compare: next-token results of ", n, " and ",
              q.conf.size(), " documents cannot be paired");
  std::int64_t same = 0, both = 0, full_only = 0, quant_only = 0, neither = 0;
  double dconf = 0, dent = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const auto k = static_cast<std::size_t>(i);
    same += f.token[k] == q.token[k] ? 1 : 0;
    both += f.correct[k] && q.correct[k] ? 1 : 0;
    full_only += f.correct[k] && !q.correct[k] ? 1 : 0;
    quant_only += !f.correct[k] && q.correct[k] ? 1 : 0;
    neither += !f.correct[k] && !q.correct[k] ? 1 : 0;
    dconf += q.conf[k] - f.conf[k];
    dent += q.entropy[k] - f.entropy[k];
  }
  const double nn = static_cast<double>(n);
  ojson o;
  o["n"]                  = n;
  o["agreement"]          = number(static_cast<double>(same) / nn);
  o["flip_rate"]          = number(static_cast<double>(n - same) / nn);
  o["correctness"]        = ojson{{"both_correct", both}, {"full_only", full_only}, {"quant_only", quant_only},
                                  {"both_wrong", neither}};
  o["mean_conf_shift"]    = number(dconf / nn);
  o["mean_entropy_shift"] = number(dent / nn);
  o["ttest_conf"]         = t_test_json(metrics::paired_t_test(f.conf, q.conf, mo.alpha));
  o["ttest_entropy"]      = t_test_json(metrics::paired_t_test(f.entropy, q.entropy, mo.alpha));
  const auto w            = metrics::wilcoxon_signed_rank(f.conf, q.conf, mo.wilcoxon, mo.alpha);
  o["wilcoxon_conf"]      = ojson{{"statistic", number(w.statistic)}, {"p", number(w.p)}, {"exact", w.exact},
                                  {"significant", w.significant}};
  const auto mc           = metrics::mcnemar_test(full_only, quant_only, mo.mcnemar, mo.alpha);
  o["mcnemar"]            = ojson{{"b", mc.b}, {"c", mc.c}, {"statistic", number(mc.statistic)}, {"p", number(mc.p)},
                                  {"significant", mc.significant}};
  // A greedy token's probability is at least 1/V: bins over [1/V, 1], as the choice tasks use [1/K, 1].
  const auto bins = metrics::confidence_shift_by_bin(f.conf, q.conf, f.conf, q.conf, mo.shift_bins,
                                                     1.0 / static_cast<double>(vocab_size));
  ojson jb = ojson::array();
  for (const auto& b : bins) {
    jb.push_back(ojson{{"lower", b.lower}, {"upper", b.upper}, {"count", b.count},
                       {"mean_conf_shift", number(b.mean_conf_shift)}, {"se_conf_shift", number(b.stderr_conf_shift)}});
  }
  o["conf_shift_by_bin"] = std::move(jb);
  return o;
}

/// The seed notebook's numbers on the sum-scored probabilities (uniform K only; NaN with a note otherwise).
inline ojson seed_block(const metrics::choice_scores& s, const metrics::metric_options& mo, double* ace_out) {
  ojson o;
  *ace_out = std::numeric_limits<double>::quiet_NaN();
  try {
    *ace_out = metrics::ace_seed_compat(s.view(), metrics::scoring::sum, mo.seed_ace_ranges, mo.seed_ece_bins);
    const auto p = metrics::choice_probabilities(s.view(), metrics::scoring::sum);
    const std::int64_t k = s.offsets[1];
    const metrics::seed_compat::prob_matrix m{static_cast<std::int64_t>(s.gold.size()), k, p, s.gold};
    const auto sum = metrics::seed_compat::summary(m);
    o["ace"]          = number(*ace_out);
    o["mce"]          = number(metrics::seed_compat::table_mce(m));
    o["conf"]         = number(sum.conf);
    o["conf_true"]    = number(sum.conf_true);
    o["c_pos"]        = number(sum.c_pos);
    o["c_neg"]        = number(sum.c_neg);
    o["entropy_bits"] = number(sum.entropy_bits);
  } catch (const std::exception& e) {
    o["ace"]  = nullptr;
    o["note"] = std::string("undefined here (the notebook raises): ") + e.what();
  }
  return o;
}

/// The checks every run starts with (before any model is loaded).
inline void check_options(const compare_options& opt) {
  QPROB_CHECK(!opt.tasks.empty(), "compare: --tasks names no task");
  QPROB_CHECK(opt.batch_size > 0, "compare: batch size must be at least 1");
  for (const auto& d : {opt.model_dir, opt.data_dir}) {
    std::error_code ec;
    QPROB_CHECK(std::filesystem::is_directory(d, ec), "compare: ", d.string(), " is not a directory");
  }
}

inline std::string read_all(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace job_detail

/// Runs the whole job (see the header comment). Prints progress and log lines; returns what it did.
/// @throws invalid_argument / format_error for bad options, models, data or checkpoints.
/// Runs the job on `backend` (see compare_backend).
inline compare_outcome run_compare(const compare_options& opt, compare_backend& backend) {
  namespace fs = std::filesystem;
  using clock = std::chrono::steady_clock;
  const auto log = [&](const std::string& s) {
    if (opt.log) {
      opt.log(s);
    } else {
      std::printf("%s\n", s.c_str());
      std::fflush(stdout);
    }
  };
  job_detail::check_options(opt);
  const auto t_start = clock::now();
  fs::create_directories(opt.out_dir / "cache");
  compare_outcome outcome;

  // ---- inputs ----------------------------------------------------------------------------------------------
  std::vector<tasks::task_data> task_data;
  for (const auto& name : opt.tasks) {
    auto t = tasks::load_task(name, opt.data_dir);
    QPROB_CHECK(!t.docs.empty(), "compare: task ", name, " has no documents in ", t.file.string());
    task_data.push_back(std::move(t));
  }
  const auto tok        = tokenizer::from_directory(opt.model_dir);
  auto& full            = backend.full_scorer();
  const std::string scorer_name = full.name();
  const std::string model_hash = file_set_hash(opt.model_dir);
  log("model " + opt.model_dir.string() + ": " + std::to_string(backend.parameters()) + " parameters, sha256 " +
      model_hash.substr(0, 16) + "..., scorer " + scorer_name);

  metrics::metric_options mo;  // the correct definitions (docs/metrics.md)
  if (opt.seed_compat) {
    mo.alpha = 0.01;  // the seed code's significance level; ACE is replaced below
  }

  eval::eval_options eo;
  eo.batch_size = opt.batch_size;
  eo.limit      = opt.limit;

  // Evaluates (or reuses) every task for one model; `identity` names the model in the cache key.
  const auto evaluate_all = [&](eval::scorer& engine, std::int64_t max_length, const std::string& identity,
                                const std::string& which, std::vector<std::string>& reused) {
    std::vector<eval::eval_result> results;
    for (const auto& t : task_data) {
      const std::size_t n = eval::documents_to_evaluate(t, eo);
      nlohmann::json km;
      km["model"]      = identity;
      km["task"]       = t.task;
      km["data_file"]  = t.file.filename().string();
      km["data_sha256"] = file_hash(t.file);
      km["n"]          = n;
      km["scorer"]     = engine.name();
      km["max_length"] = max_length;
      km["encode"]     = t.docs.front().kind == tasks::request_kind::next_token_vocab
                             ? "tokenizer.encode(prompt, add_special_tokens=true); greedy next token over the vocabulary"
                             : "lm-eval defaults (add_bos_token unset, prefix token BOS)";
      km["qprob"]      = version_string;
      const auto key   = cache_key(km);
      const auto path  = opt.out_dir / "cache" / ("eval-" + key + ".json");
      std::string why;
      if (auto cached = read_eval_cache(path, km, t, n, &why)) {
        log("reused cached " + which + " evaluation for " + t.task);
        reused.push_back(t.task);
        results.push_back(std::move(*cached));
        continue;
      }
      if (why != "absent") {
        log("ignoring cache file " + path.string() + ": " + why + "; recomputing");
      }
      eval::progress_bar bar(which + " " + t.task, opt.progress);
      auto o     = eo;
      o.progress = [&](std::size_t done, std::size_t total) { bar.update(done, total); };
      const auto t0 = clock::now();
      auto r        = eval::evaluate(t, tok, engine, o);
      bar.finish();
      const double sec = std::chrono::duration<double>(clock::now() - t0).count();
      log(which + " " + t.task + ": " + std::to_string(r.requests) + " requests in " + std::to_string(sec) + " s");
      write_eval_cache(path, km, r);
      results.push_back(std::move(r));
    }
    return results;
  };

  // ---- phase 1: full model ---------------------------------------------------------------------------------
  const auto full_results = evaluate_all(full, backend.max_length(), "files:" + model_hash, "full", outcome.reused_full);

  // ---- phase 2: quantization -------------------------------------------------------------------------------
  ojson qblock;
  fs::path ckpt_dir;
  if (opt.quantized_dir) {
    ckpt_dir          = *opt.quantized_dir;
    qblock["method"]  = "loaded";
    qblock["source"]  = ckpt_dir.string();
  } else {
    ckpt_dir                = opt.out_dir / "quantized";
    const auto& qs          = opt.quant;
    const bool gptq         = qs.method == quant_method::gptq;
    nlohmann::json km;
    km["model"]        = "files:" + model_hash;
    km["method"]       = std::string(to_string(qs.method));
    km["bits"]         = qs.policy.bits;
    km["group_size"]   = qs.policy.gptq_group_size();
    km["sym"]          = qs.policy.sym;
    km["desc_act"]     = qs.policy.desc_act;
    if (gptq) {
      km["damp_percent"] = qs.gptq.damp_percent;
      km["calib"]        = {{"file", opt.calib.source.filename().string()}, {"sha256", file_hash(opt.calib.source)},
                            {"nsamples", opt.calib.nsamples}, {"seqlen", opt.calib.seqlen}, {"seed", opt.calib.seed}};
    }
    km["qprob"]             = version_string;
    const auto key          = cache_key(km);
    const auto marker       = opt.out_dir / "cache" / "quantization.json";
    bool reuse              = false;
    try {
      const auto m = ojson::parse(job_detail::read_all(marker));  // ordered: the report keeps its key order
      reuse = m.at("key").get<std::string>() == key && fs::is_directory(ckpt_dir) &&
              m.at("checkpoint_sha256").get<std::string>() == file_set_hash(ckpt_dir);
      if (reuse) {
        qblock = m.at("report");
      }
    } catch (const std::exception&) {
      reuse = false;
    }
    if (reuse) {
      log("reused quantized checkpoint " + ckpt_dir.string());
      outcome.reused_quantization = true;
    } else {
      std::vector<std::vector<std::int32_t>> windows;
      if (gptq) {
        windows = quant::calibration_windows(opt.calib, tok);
      }
      const auto linears = block_linears(opt.model_dir);
      eval::progress_bar bar("quantize " + std::string(to_string(qs.method)), opt.progress);
      const auto t0  = clock::now();
      // Without progress bars (logs, batch jobs) every tenth of the work gets a log line with the time so far, so
      // that a run stopped by a time limit shows how far quantization got.
      std::size_t logged_tenths = 0;
      const auto res = backend.quantize(linears, qs, windows, [&](std::size_t d, std::size_t n) {
        bar.update(d, n);
        if (!opt.progress && n > 0 && d * 10 / n > logged_tenths) {
          logged_tenths = d * 10 / n;
          log("quantize " + std::string(to_string(qs.method)) + ": " + std::to_string(d) + "/" + std::to_string(n) +
              " steps in " + std::to_string(std::chrono::duration<double>(clock::now() - t0).count()) + " s");
        }
      });
      bar.finish();
      const double sec = std::chrono::duration<double>(clock::now() - t0).count();
      quant::gptq_save_options so;
      so.policy       = qs.policy;
      so.damp_percent = gptq ? qs.gptq.damp_percent : 0.01;
      so.overwrite    = true;
      so.model_name_or_path = opt.model_dir.filename().string();
      quant::save_gptq_checkpoint(ckpt_dir, opt.model_dir, res.layers, so);
      qblock["method"]     = std::string(to_string(qs.method));
      qblock["bits"]       = qs.policy.bits;
      qblock["group_size"] = qs.policy.gptq_group_size();
      qblock["sym"]        = qs.policy.sym;
      qblock["desc_act"]   = qs.policy.desc_act;
      if (gptq) {
        qblock["damp_percent"] = qs.gptq.damp_percent;
        qblock["calibration"]  = ojson{{"file", opt.calib.source.string()}, {"nsamples", opt.calib.nsamples},
                                       {"seqlen", opt.calib.seqlen}, {"seed", opt.calib.seed}, {"mode", "concatenated"}};
      }
      qblock["checkpoint"] = ckpt_dir.string();
      qblock["seconds"]    = sec;
      std::string phases;
      for (const auto& [name, seconds] : res.phase_seconds) {
        qblock["phase_seconds"][name] = seconds;
        phases += (phases.empty() ? "" : ", ") + name + " " + std::to_string(seconds) + " s";
      }
      ojson layers         = ojson::array();
      for (const auto& r : res.reports) {
        layers.push_back(ojson{{"name", r.name}, {"weight_mse", r.weight_mse}, {"gptq_loss", job_detail::number(r.loss)},
                               {"damp_percent", job_detail::number(r.damp_percent)}, {"dead_columns", r.dead_columns}});
      }
      qblock["layers"] = std::move(layers);
      ojson mk;
      mk["key"]               = key;
      mk["key_material"]      = ojson::parse(km.dump());
      mk["checkpoint_sha256"] = file_set_hash(ckpt_dir);
      mk["report"]            = qblock;
      io::write_file_atomic(marker, mk.dump(2) + "\n");
      log("quantized " + std::to_string(res.layers.size()) + " layers (" + std::string(to_string(qs.method)) + ", " +
          quant::describe(qs.policy) + ") in " + std::to_string(sec) + " s" + (phases.empty() ? "" : " (" + phases + ")") +
          " -> " + ckpt_dir.string());
    }
  }
  // Both paths evaluate the checkpoint as loaded back, so --quantized <out>/quantized reproduces the numbers.
  const auto ckpt = quant::load_gptq_checkpoint(ckpt_dir);
  {
    const auto& rp  = ckpt.quant.policy;
    std::string lab = opt.quantized_dir ? std::string("GPTQ ckpt") : (opt.quant.method == quant_method::rtn ? "RTN" : "GPTQ");
    lab += " W" + std::to_string(rp.bits) + (rp.group_size == per_channel ? " per-channel" : " g" + std::to_string(rp.group_size));
    qblock["label"] = lab + (rp.sym ? "" : " asym") + (rp.desc_act ? " act-order" : "");
  }
  qblock["format"]          = ckpt.quant.format == quant::gptq_format::v1 ? "gptq" : "gptq_v2";
  qblock["policy"]          = quant::describe(ckpt.quant.policy);
  qblock["quantized_layers"] = ckpt.layers.size();
  const std::string ckpt_hash = file_set_hash(ckpt_dir);
  qblock["checkpoint_sha256"] = ckpt_hash;

  // ---- phase 3: quantized model ----------------------------------------------------------------------------
  auto& quantized           = backend.quantized_scorer(ckpt);
  const auto quantized_note = backend.quantized_note();
  if (!quantized_note.empty()) {
    log("quantized model: " + quantized_note);
  }
  const auto quant_results = evaluate_all(quantized, backend.max_length(),
                                          "files:" + model_hash + "+gptq:" + ckpt_hash, "quantized",
                                          outcome.reused_quantized);

  // ---- phase 4: metrics and outputs ------------------------------------------------------------------------
  ojson tasks_json = ojson::object();
  for (std::size_t i = 0; i < task_data.size(); ++i) {
    const auto& t  = task_data[i];
    const auto& rf = full_results[i];
    const auto& rq = quant_results[i];
    const auto sf  = eval::summarize(t, rf, mo, t.docs.size());
    const auto sq  = eval::summarize(t, rq, mo, t.docs.size());
    const auto samples_full  = "samples_" + t.task + "_full.jsonl";
    const auto samples_quant = "samples_" + t.task + "_quantized.jsonl";
    eval::write_samples_jsonl(opt.out_dir / samples_full, t, rf);
    eval::write_samples_jsonl(opt.out_dir / samples_quant, t, rq);
    ojson tj;
    tj["kind"]       = std::string(tasks::request_kind_name(sf.kind));
    tj["n"]          = sf.n;
    tj["n_original"] = sf.n_original;
    ojson lm         = ojson::array();
    for (const auto m : sf.metrics) {
      lm.push_back(m == tasks::metric::mc2 ? "mc2" : std::string(tasks::metric_name(m)));
    }
    if (sf.kind == tasks::request_kind::next_token_vocab) {
      // Price-of-Efficiency: one greedy token over the whole vocabulary per document (docs/compare.md).
      const auto nf     = job_detail::next_token_view(t, rf);
      const auto nq     = job_detail::next_token_view(t, rq);
      tj["answers"]     = t.docs.front().choices;
      tj["vocab_size"]  = backend.config().vocab_size;
      tj["lm_eval_metrics"] = std::move(lm);
      tj["full"]        = job_detail::next_token_model_block(sf.sum, nf);
      tj["quantized"]   = job_detail::next_token_model_block(sq.sum, nq);
      tj["paired"]      = job_detail::next_token_paired_block(nf, nq, mo, backend.config().vocab_size);
      tj["samples"]     = ojson{{"full", samples_full}, {"quantized", samples_quant}};
      tasks_json[t.task] = std::move(tj);
      continue;
    }
    const auto cf  = eval::to_choice_scores(t, rf);
    const auto cq  = eval::to_choice_scores(t, rq);
    auto pmo       = mo;
    pmo.score      = metrics::scoring::sum;
    const auto pm  = metrics::compute_paired_metrics_reference(cf.view(), cq.view(), pmo);
    std::int64_t kmax = 0;
    for (std::size_t d = 0; d + 1 < cf.offsets.size(); ++d) {
      kmax = std::max(kmax, cf.offsets[d + 1] - cf.offsets[d]);
    }
    tj["num_choices"] = kmax;
    tj["lm_eval_metrics"] = std::move(lm);
    auto fb = job_detail::model_block(sf.sum, sf);
    auto qb = job_detail::model_block(sq.sum, sq);
    if (opt.seed_compat) {
      double a = 0;
      fb["seed_compat"] = job_detail::seed_block(cf, mo, &a);
      fb["ace"]         = job_detail::number(a);
      qb["seed_compat"] = job_detail::seed_block(cq, mo, &a);
      qb["ace"]         = job_detail::number(a);
    }
    tj["full"]      = std::move(fb);
    tj["quantized"] = std::move(qb);
    tj["paired"]    = job_detail::paired_block(pm, cf, cq, mo.alpha);
    tj["samples"]   = ojson{{"full", samples_full}, {"quantized", samples_quant}};
    tasks_json[t.task] = std::move(tj);
  }

  ojson doc;
  doc["format"] = results_format;
  doc["model"]  = ojson{{"path", opt.model_dir.string()}, {"name", opt.model_dir.filename().string()},
                        {"family", std::string(model::to_string(backend.config().model_family))},
                        {"parameters", backend.parameters()}, {"sha256", model_hash},
                        {"hash_method", "sha256 over name, size and full bytes of each file (<= 64 MiB; larger: "
                                        "first/last MiB + mtime)"}};
  doc["quantization"] = std::move(qblock);
  ojson mob;
  mob["metrics_compat"]   = opt.seed_compat ? "seed" : "none";
  mob["probabilities"]    = "softmax over summed choice log-likelihoods (lm-eval acc scoring)";
  mob["calibration_bins"] = mo.calibration_bins;
  mob["bin_edges"]        = "upper_closed";
  mob["ace"]              = opt.seed_compat ? "seed_compat" : "nixon";
  mob["ace_ranges"]       = opt.seed_compat ? mo.seed_ace_ranges : mo.ace_ranges;
  mob["alpha"]            = mo.alpha;
  mob["shift_bins"]       = mo.shift_bins;
  mob["mcnemar"]          = "exact_binomial";
  mob["next_token"]       = ojson{{"probabilities", "softmax over the full vocabulary at the prompt's last position; "
                                                    "conf = probability of the greedy token"},
                                  {"correct", "gold answer.strip().lower() in decoded token.strip().lower()"},
                                  {"ace", "equal_mass_top_label"}, {"ace_ranges", mo.ace_ranges}};
  doc["settings"] = ojson{{"tasks", opt.tasks}, {"data_dir", opt.data_dir.string()},
                          {"limit", opt.limit ? ojson(*opt.limit) : ojson(nullptr)}, {"batch_size", opt.batch_size_arg},
                          {"num_fewshot", 0}, {"max_length", backend.max_length()}};
  doc["metric_options"] = std::move(mob);
  const std::string precision =
      opt.device == "cpu" ? std::string("float64 host reference; quantized linears as fp16 dequantized weights")
                          : "GPU engine: " + std::string(scorer_name.find("bf16") != std::string::npos ? "bf16" : "fp16") +
                                " weights and activations, float32 accumulation and residual stream; quantized model: " +
                                (quantized_note.empty() ? std::string("fp16 dequantized weights") : quantized_note);
  doc["software"] = ojson{{"qprob_version", version_string}, {"device", opt.device}, {"scorer", scorer_name},
                          {"quantized_scorer", quantized.name()}, {"precision", precision},
#if defined(__clang__)
                          {"compiler", "clang " __clang_version__},
#elif defined(__GNUC__)
                          {"compiler", "gcc " __VERSION__},
#else
                          {"compiler", "unknown"},
#endif
                          {"cpp_standard", static_cast<long>(__cplusplus)}};
  doc["tasks"] = std::move(tasks_json);
  doc["run"]   = ojson{{"seconds", std::chrono::duration<double>(clock::now() - t_start).count()},
                       {"reused_full", outcome.reused_full}, {"reused_quantized", outcome.reused_quantized},
                       {"reused_quantization", outcome.reused_quantization}};
  outcome.results = opt.out_dir / "results.json";
  io::write_file_atomic(outcome.results, eval::python_json_dumps(doc, 2) + "\n");
  outcome.document = std::move(doc);
  return outcome;
}

/// The one-screen summary of a results document. Next-token tasks (kind next_token_vocab) show conf = p(generated
/// token), H over the whole vocabulary and p_t of the t-test on conf; conf_true and jsd are n/a for them.
[[nodiscard]] inline std::string summary_table(const ojson& doc) {
  std::string out;
  char line[256];
  static const ojson null_value;
  const auto get = [](const ojson& o, const char* key) -> const ojson& {
    const auto it = o.find(key);
    return it == o.end() ? null_value : *it;
  };
  const auto f = [](const ojson& v, double scale = 1.0) -> std::string {
    if (!v.is_number()) {
      return "n/a";
    }
    char b[32];
    std::snprintf(b, sizeof b, "%.3f", v.get<double>() * scale);
    return b;
  };
  std::snprintf(line, sizeof line, "%-16s %5s | %-13s | %-13s | %-13s | %-13s | %-15s | %6s %6s %7s %7s\n", "task", "n",
                "acc f/q", "ece f/q", "conf f/q", "conf_true f/q", "H bitsx100", "jsd", "flip", "p_t", "p_mcn");
  out += line;
  out += std::string(141, '-') + "\n";
  bool any_next_token = false;
  for (const auto& [name, t] : doc.at("tasks").items()) {
    const auto& a         = t.at("full");
    const auto& b         = t.at("quantized");
    const auto& p         = t.at("paired");
    const bool next_token = get(t, "kind") == "next_token_vocab";
    any_next_token        = any_next_token || next_token;
    const auto pair = [&](const char* k, double s = 1.0) { return f(get(a, k), s) + "/" + f(get(b, k), s); };
    const auto& p_t = get(p, next_token ? "ttest_conf" : "ttest_conf_true");
    std::snprintf(line, sizeof line, "%-16s %5lld | %-13s | %-13s | %-13s | %-13s | %-15s | %6s %6s %7s %7s\n",
                  (name + (next_token ? " (nt)" : "")).c_str(), static_cast<long long>(t.at("n").get<std::int64_t>()),
                  pair("acc").c_str(), pair("ece").c_str(), pair("conf").c_str(), pair("conf_true").c_str(),
                  pair("entropy_bits", 100.0).c_str(), f(get(p, "jsd")).c_str(), f(get(p, "flip_rate")).c_str(),
                  f(p_t.is_object() ? get(p_t, "p") : null_value).c_str(), f(get(get(p, "mcnemar"), "p")).c_str());
    out += line;
  }
  if (any_next_token) {
    out += "(nt) next-token task: conf = p(generated token), H over the whole vocabulary, flip = the generated token "
           "changed, p_t = t-test on conf\n";
  }
  return out;
}

/// Runs the job on the host reference path (device "cpu"); device "cuda" needs compare/gpu_backend.hpp.
/// @throws invalid_argument for another device.
inline compare_outcome run_compare(const compare_options& opt) {
  QPROB_CHECK(opt.device == "cpu", "compare: --device ", opt.device,
              " needs the GPU backend (compare/gpu_backend.hpp, linked with qprob::kernels)");
  job_detail::check_options(opt);
  cpu_backend backend(opt.model_dir, opt.max_length);
  return run_compare(opt, backend);
}

}  // namespace qprob::compare
