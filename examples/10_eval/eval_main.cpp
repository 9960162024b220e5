// SPDX-License-Identifier: Apache-2.0
// qprob-eval-<task>: zero-shot evaluation of one benchmark, lm-evaluation-harness style, with confidence and
// calibration metrics. This file is the whole driver, compiled once; task_main.cpp is built once per task with
// QPROB_EVAL_TASK set (examples/CMakeLists.txt) and calls eval_main(task, ...): qprob-eval-arc_easy, -boolq,
// -hellaswag, -openbookqa, -piqa, -xstorycloze_en, -truthfulqa_mc1, -truthfulqa_mc2, -poe_boolq_tf,
// -poe_toxicity.
//
// What it demonstrates: the evaluation layer end to end. Load the task (qprob::tasks::load_task), tokenize
// every request by lm-eval's rules, score the requests through the eval::scorer interface in batches, compute
// lm-eval's acc / acc_norm (or MC2) and the calibration metrics (metrics::compute_model_metrics_reference:
// ECE with 15 equal-width bins, Nixon ACE, mean confidence, confidence on errors, gold-choice probability,
// entropy, Brier), write
//   <out>/samples_<task>.jsonl   lm-eval --log_samples lines + a "qprob" block per document
//   <out>/results_<task>.json    lm-eval's results layout + the calibration metrics
// atomically, read both back, and print the summary. docs/tasks.md ("Outputs") describes the files.
//
// Devices: --device cpu is the host reference forward pass (double precision, single-threaded): exact but
// only practical for tiny models (stories260K, babyllama); --device cuda is the GPU engine (engine/engine.hpp,
// fp16/bf16, prefix sharing, batch-invariant), which fails with a clear message where no GPU is usable.
// --write-requests FILE writes every request as token ids (JSON) and exits without loading the model's
// weights (only its tokenizer): the input of the GPU parity scripts and benchmarks. Probabilities in the calibration metrics are the softmax over each document's summed
// choice log-likelihoods (the paper's); the results JSON also has the character-normalised ones.
//
//   qprob-eval-arc_easy --model ../shared/models/stories260K --data ../shared/data --limit 8 --out /tmp/eval
//   qprob-eval-hellaswag --model ../shared/models/stories260K --data ../shared/data --limit 100 --batch-size 16
//       --out /tmp/eval --no-progress                       (one command line)
//   qprob-eval-arc_easy ... --skip-missing      # exit 77 (ctest: skipped) when the model or data dir is absent
//
// Exit status: 0 with "Result: PASSED" when the run completed and the outputs validated; 1 with
// "Result: FAILED" (or an error message) otherwise; 2 for usage errors; 77 skipped.
#include <qprob/eval/evaluate.hpp>
#include <qprob/eval/output.hpp>
#include <qprob/eval/progress.hpp>
#include <qprob/eval/reference_scorer.hpp>
#if defined(QPROB_EVAL_WITH_ENGINE)
#include <qprob/eval/gpu_scorer.hpp>
#endif
#include <qprob/io/atomic_file.hpp>
#include <qprob/tasks/load.hpp>
#include <qprob/tokenizer/tokenizer.hpp>

#include <CLI/CLI.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "../cli_common.hpp"
#include "eval_main.hpp"

namespace {

using qprob_cli::exit_failed;
using qprob_cli::exit_skipped;
using qprob_cli::exit_usage;

struct options {
  std::filesystem::path model_dir;
  std::filesystem::path data_dir;
  std::filesystem::path out_dir = ".";
  std::optional<std::size_t> limit;
  std::optional<std::size_t> batch_size;  // default: 1 on cpu, 4096 on cuda
  std::optional<std::int64_t> max_length;  // default: the model's (max_position_embeddings, else 2048)
  std::string device     = "cpu";
  std::string dtype      = "auto";  // cuda: the engine's weights and activations
  std::filesystem::path write_requests;
  bool no_progress       = false;
  bool skip_missing      = false;
};

std::string fmt(double x, const char* spec = "%.4f") {
  if (std::isnan(x)) {
    return "n/a";
  }
  char b[64];
  std::snprintf(b, sizeof b, spec, x);
  return b;
}

/// Re-reads the written files: one parsable line per evaluated document, doc_ids in order, and a results JSON
/// that parses and names the task. Returns the problems found (empty: valid).
std::vector<std::string> validate_outputs(const std::filesystem::path& samples, const std::filesystem::path& results,
                                          const std::string& task, std::size_t docs) {
  std::vector<std::string> problems;
  std::ifstream in(samples);
  if (!in) {
    return {"cannot open " + samples.string()};
  }
  std::string line;
  std::size_t n = 0;
  while (std::getline(in, line)) {
    try {
      const auto j = nlohmann::json::parse(line);
      if (!j.contains("doc_id") || !j.contains("resps") || !j.contains("qprob")) {
        problems.push_back(samples.string() + ": line " + std::to_string(n + 1) + " lacks doc_id/resps/qprob");
      }
    } catch (const std::exception& e) {
      problems.push_back(samples.string() + ": line " + std::to_string(n + 1) + " does not parse: " + e.what());
    }
    ++n;
  }
  if (n != docs) {
    problems.push_back(samples.string() + ": " + std::to_string(n) + " lines for " + std::to_string(docs) + " documents");
  }
  std::ifstream rin(results);
  try {
    const auto j = nlohmann::json::parse(rin);
    if (!j.contains("results") || !j["results"].contains(task)) {
      problems.push_back(results.string() + ": no results." + task);
    }
  } catch (const std::exception& e) {
    problems.push_back(results.string() + " does not parse: " + e.what());
  }
  return problems;
}

/// Writes every request of the evaluated documents as token ids: {"task", "tokenizer", "documents",
/// "requests": [{"doc", "choice", "context", "continuation"}], "contexts": [{"doc", "tokens"}]}.
void write_requests_json(const std::filesystem::path& path, const std::string& task, const options& opt,
                         std::size_t docs, const qprob::eval::task_requests& reqs) {
  nlohmann::json j;
  j["task"]      = task;
  j["tokenizer"] = opt.model_dir.string();
  j["documents"] = docs;
  auto& rs       = j["requests"] = nlohmann::json::array();
  for (std::size_t i = 0; i < reqs.loglikelihood.size(); ++i) {
    rs.push_back({{"doc", reqs.slots[i].doc}, {"choice", reqs.slots[i].choice},
                  {"context", reqs.loglikelihood[i].context}, {"continuation", reqs.loglikelihood[i].continuation}});
  }
  auto& cs = j["contexts"] = nlohmann::json::array();
  for (std::size_t i = 0; i < reqs.contexts.size(); ++i) {
    cs.push_back({{"doc", reqs.context_docs[i]}, {"tokens", reqs.contexts[i]}});
  }
  qprob::io::write_file_atomic(path, j.dump() + "\n");
}

int run(const std::string& task, const options& opt) {
  for (const auto& dir : {opt.model_dir, opt.data_dir}) {
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec)) {
      std::fprintf(stderr, "%s: %s is not a directory\n", opt.skip_missing ? "skipped" : "error", dir.c_str());
      return opt.skip_missing ? exit_skipped : exit_failed;
    }
  }
  const std::size_t batch_size = opt.batch_size.value_or(opt.device == "cuda" ? 4096 : 1);
  if (batch_size == 0) {
    std::fprintf(stderr, "error: --batch-size must be at least 1\n");
    return exit_usage;
  }

  const auto data = qprob::tasks::load_task(task, opt.data_dir);  // the whole split: n-samples "original"
  const auto tok  = qprob::tokenizer::from_directory(opt.model_dir);
  qprob::eval::eval_options eo;
  eo.batch_size = batch_size;
  eo.limit      = opt.limit;
  if (!opt.write_requests.empty()) {
    const auto reqs = qprob::eval::encode_task_requests(data, tok, eo);
    write_requests_json(opt.write_requests, task, opt, qprob::eval::documents_to_evaluate(data, eo), reqs);
    std::printf("task %s: wrote %zu requests and %zu contexts to %s\nResult: PASSED\n", task.c_str(),
                reqs.loglikelihood.size(), reqs.contexts.size(), opt.write_requests.c_str());
    return 0;
  }
  std::unique_ptr<qprob::eval::scorer> scorer;
  long long max_length = 0;
  if (opt.device == "cuda") {
#if defined(QPROB_EVAL_WITH_ENGINE)
    qprob::engine::engine_options eopt;
    eopt.max_length = opt.max_length;
    eopt.dtype      = qprob::engine::parse_activation_type(opt.dtype);  // nullopt for "auto"
    auto g     = std::make_unique<qprob::eval::gpu_scorer>(qprob::engine::engine::from_directory(opt.model_dir, eopt));
    max_length = static_cast<long long>(*g->max_length());
    scorer     = std::move(g);
#else
    std::fprintf(stderr, "error: --device cuda: this build has no GPU engine (configure with QPROB_ENABLE_CUDA=ON)\n");
    return exit_usage;
#endif
  } else {
    auto r     = std::make_unique<qprob::eval::reference_scorer>(qprob::reference::reference_model::from_directory(opt.model_dir),
                                                                 opt.max_length);
    max_length = static_cast<long long>(*r->max_length());
    scorer     = std::move(r);
  }
  auto& engine = *scorer;
  std::printf("task %s: %zu documents in %s\nmodel %s: scorer %s, max_length %lld\n", task.c_str(), data.docs.size(),
              data.file.c_str(), opt.model_dir.c_str(), engine.name().c_str(), max_length);

  qprob::eval::progress_bar bar(task, !opt.no_progress);
  const auto t0 = std::chrono::steady_clock::now();
  eo.progress = [&](std::size_t done, std::size_t total) { bar.update(done, total); };
  const auto result = qprob::eval::evaluate(data, tok, engine, eo);
  bar.finish();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  const qprob::metrics::metric_options mo;  // defaults: 15 bins (lower, upper], Nixon ACE, 15 ranges
  const auto summary = qprob::eval::summarize(data, result, mo, data.docs.size());

  std::filesystem::create_directories(opt.out_dir);
  const auto samples_path = opt.out_dir / ("samples_" + task + ".jsonl");
  const auto results_path = opt.out_dir / ("results_" + task + ".json");
  qprob::eval::write_samples_jsonl(samples_path, data, result);
  qprob::eval::run_config rc;
  rc.model      = opt.model_dir.string();
  rc.scorer     = engine.name();
  rc.device     = opt.device;
  rc.batch_size = batch_size;
  rc.limit      = opt.limit;
  rc.data_dir   = opt.data_dir.string();
  qprob::eval::write_results_json(results_path, {summary}, rc, mo);

  const auto& m = summary.sum;
  std::printf("\n%s  n=%zu of %zu  (%zu requests scored in %.1f s, %.1f req/s)\n", task.c_str(), summary.n, summary.n_original,
              result.requests, seconds, seconds > 0 ? static_cast<double>(result.requests) / seconds : 0.0);
  for (const auto metric : summary.metrics) {
    const char* name = metric == qprob::tasks::metric::mc2 ? "acc (mc2)" : qprob::tasks::metric_name(metric).data();
    std::printf("  %-10s %s +- %s\n", name, fmt(qprob::eval::lm_eval_value(summary, metric)).c_str(),
                fmt(qprob::eval::lm_eval_stderr(summary, metric)).c_str());
  }
  std::printf("  calibration (%s):\n", summary.kind == qprob::tasks::request_kind::loglikelihood
                                           ? "softmax over summed choice log-likelihoods"
                                           : "full-vocabulary next token");
  std::printf("    ECE %s   ACE %s   conf %s   conf_err %s   conf_true %s\n", fmt(m.ece).c_str(), fmt(m.ace).c_str(),
              fmt(m.conf).c_str(), fmt(m.conf_err).c_str(), fmt(m.conf_true).c_str());
  std::printf("    entropy %s bits x100   Brier %s\n", fmt(m.entropy_bits * 100.0, "%.2f").c_str(), fmt(m.brier).c_str());
  std::printf("  wrote %s\n  wrote %s\n", samples_path.c_str(), results_path.c_str());

  const auto problems = validate_outputs(samples_path, results_path, task, result.docs.size());
  for (const auto& p : problems) {
    std::printf("  invalid output: %s\n", p.c_str());
  }
  std::printf("Result: %s\n", problems.empty() ? "PASSED" : "FAILED");
  return problems.empty() ? 0 : exit_failed;
}

}  // namespace

int qprob_examples::eval_main(const char* task, int argc, char** argv) {
  CLI::App app{std::string("qprob-eval-") + task + ": zero-shot " + task +
               " with lm-eval's prompts and metrics plus confidence/calibration metrics"};
  options opt;
  app.add_option("--model", opt.model_dir, "Hugging Face model directory (config.json, safetensors, tokenizer)")->required();
  app.add_option("--data", opt.data_dir, "benchmark data directory (the layout of shared/data)")->required();
  app.add_option("--out", opt.out_dir, "output directory for samples_<task>.jsonl and results_<task>.json");
  app.add_option("--limit", opt.limit, "evaluate only the first N documents (lm-eval --limit N)")->check(CLI::PositiveNumber);
  app.add_option("--batch-size", opt.batch_size,
                 "requests per scorer call (results do not depend on it; default 1 on cpu, 4096 on cuda)");
  app.add_option("--max-length", opt.max_length,
                 "lm-eval's max_length: context + continuation are cut to it from the left; a longer continuation is "
                 "an error (default: the model's max_position_embeddings, else 2048)")
      ->check(CLI::PositiveNumber);
  app.add_option("--device", opt.device, "cpu (host reference, tiny models) or cuda (the GPU engine)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--dtype", opt.dtype,
                 "--device cuda: weights and activations of the GPU engine (auto: bf16 for a bf16 checkpoint, else "
                 "f16; f32 for comparisons at float32 precision)")
      ->check(CLI::IsMember({"auto", "f16", "bf16", "f32"}));
  app.add_option("--write-requests", opt.write_requests,
                 "write the requests as token ids to this JSON file and exit (no model weights needed)");
  app.add_flag("--no-progress", opt.no_progress, "no progress bar (it is also off when stderr is not a terminal)");
  app.add_flag("--skip-missing", opt.skip_missing, "exit 77 (skipped) instead of failing when --model or --data is absent");
  CLI11_PARSE(app, argc, argv);
  if (opt.dtype != "auto" && opt.device != "cuda") {
    std::fprintf(stderr, "error: --dtype %s needs --device cuda (the cpu scorer computes in double precision)\n",
                 opt.dtype.c_str());
    return exit_usage;
  }
  try {
    return run(task, opt);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    std::printf("Result: FAILED\n");
    return exit_failed;
  }
}
