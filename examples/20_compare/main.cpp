// SPDX-License-Identifier: Apache-2.0
// qprob: the command-line front end. Subcommand `compare` quantizes a Hugging Face model (or loads a GPTQ
// checkpoint), evaluates the full and the quantized model zero-shot on multiple-choice tasks exactly like
// lm-evaluation-harness, and writes every accuracy, calibration, confidence and divergence metric plus the
// paired tests to <out>/results.json (docs/compare.md), with lm-eval-compatible samples_<task>_{full,quantized}.jsonl.
// Next-token (Price-of-Efficiency) tasks (poe_boolq_tf, poe_toxicity) are scored by the greedy token over the vocabulary.
// The job itself is qprob::compare::run_compare (include/qprob/compare/job.hpp); this file parses the command line.
//
//   qprob compare --device cpu --model ../shared/models/stories260K --data ../shared/data
//       --tasks arc_easy,boolq,hellaswag,openbookqa,piqa,xstorycloze_en --limit 8
//       --quant gptq --bits 4 --group-size 128 --nsamples 8 --seqlen 64 --out /tmp/compare     (one command line)
//   qprob compare --device cpu --model DIR --quantized /tmp/compare/quantized --data ... --tasks ... --out ...
//
// --device cuda (the default) runs on the GPU engine (compare/gpu_backend.hpp: fp16, GPTQ/RTN on the GPU);
// --device cpu is the double-precision host reference (tiny models only, what CI runs).
// Exit status: 0 done; 1 an error (printed, e.g. no usable GPU); 2 usage; 77 --skip-missing and the model or
// data directory is absent (ctest: skipped).
#include <qprob/compare/job.hpp>
#if defined(QPROB_COMPARE_WITH_ENGINE)
#include <qprob/compare/gpu_backend.hpp>
#endif

#if defined(QPROB_COMPARE_WITH_REPORT)
#  include <qprob/report/report.hpp>
#endif

#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <filesystem>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "../cli_common.hpp"

namespace {

using qprob_cli::exit_failed;
using qprob_cli::exit_skipped;
using qprob_cli::exit_usage;

struct cli_options {
  std::filesystem::path model, quantized, data, out, calib;
  std::string quant = "gptq";
  int bits = 4, group_size = 128;
  bool sym = true, desc_act = false;
  double damp_percent = 0.01;
  std::int64_t nsamples = 128, seqlen = 2048;
  std::uint64_t seed = 0;
  std::string tasks;
  std::optional<std::size_t> limit;
  std::string batch_size = "auto";
  std::string metrics_compat = "none";
  std::string device = "cuda";
  std::string quantized_linears = "dequantized";
  std::optional<std::int64_t> max_length;
  bool no_progress = false, skip_missing = false, no_report = false;
};

/// The report hook: renders tables, figures and report.html from results.json when the report layer is built
/// into this executable (examples/CMakeLists.txt defines QPROB_COMPARE_WITH_REPORT when
/// include/qprob/report/report.hpp exists); otherwise says so.
void write_report_hook(const std::filesystem::path& out) {
#if defined(QPROB_COMPARE_WITH_REPORT)
  const auto files = qprob::report::write_report(out);
  std::printf("report: %zu files written (report.html, tables/, figures/)\n", files.files.size());
#else
  std::printf("report: not built into this executable (qprob::report::write_report); results.json is complete\n");
  (void)out;
#endif
}

int run_compare(const cli_options& c) {
#if !defined(QPROB_COMPARE_WITH_ENGINE)
  if (c.device != "cpu") {
    std::fprintf(stderr, "error: --device %s: this build has no GPU engine (configure with QPROB_ENABLE_CUDA=ON); "
                 "--device cpu is the host reference path (tiny models)\n", c.device.c_str());
    return exit_usage;
  }
#endif
  for (const auto& dir : {c.model, c.data}) {
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec)) {
      std::fprintf(stderr, "%s: %s is not a directory\n", c.skip_missing ? "skipped" : "error", dir.c_str());
      return c.skip_missing ? exit_skipped : exit_failed;
    }
  }
  qprob::compare::compare_options o;
  o.model_dir = c.model;
  o.data_dir  = c.data;
  o.out_dir   = c.out;
  if (!c.quantized.empty()) {
    o.quantized_dir = c.quantized;
  }
  std::stringstream ts(c.tasks);
  for (std::string t; std::getline(ts, t, ',');) {
    if (!t.empty()) {
      o.tasks.push_back(t);
    }
  }
  o.limit          = c.limit;
  o.batch_size_arg = c.batch_size;
  if (c.batch_size == "auto") {
    // Results do not depend on it: the host reference scores one request at a time, the GPU engine plans its
    // own passes within a call (larger calls share more prefixes and fill the GEMMs better).
    o.batch_size = c.device == "cpu" ? 16 : 4096;
  } else {
    try {
      const long long v = std::stoll(c.batch_size);
      if (v < 1) {
        throw std::invalid_argument("< 1");
      }
      o.batch_size = static_cast<std::size_t>(v);
    } catch (const std::exception&) {
      std::fprintf(stderr, "error: --batch-size must be \"auto\" or a positive integer, got \"%s\"\n", c.batch_size.c_str());
      return exit_usage;
    }
  }
  o.seed_compat           = c.metrics_compat == "seed";
  o.device                = c.device;
  o.max_length            = c.max_length;
  o.progress              = !c.no_progress;
  o.quant.method          = c.quant == "rtn" ? qprob::compare::quant_method::rtn : qprob::compare::quant_method::gptq;
  o.quant.policy.bits     = c.bits;
  o.quant.policy.group_size = c.group_size == -1 ? qprob::per_channel : c.group_size;
  o.quant.policy.sym      = c.sym;
  o.quant.policy.desc_act = c.desc_act;
  o.quant.gptq.damp_percent = c.damp_percent;
  o.calib.source          = c.calib.empty() ? c.data / "wikitext2" / "wiki.test.raw" : c.calib;
  o.calib.nsamples        = c.nsamples;
  o.calib.seqlen          = c.seqlen;
  o.calib.seed            = c.seed;

#if defined(QPROB_COMPARE_WITH_ENGINE)
  qprob::engine::engine_options eopt;
  eopt.quantized     = *qprob::engine::parse_quantized_linears(c.quantized_linears);  // checked by CLI11
  const auto outcome = c.device == "cuda" ? qprob::compare::run_compare_gpu(o, eopt) : qprob::compare::run_compare(o);
#else
  const auto outcome = qprob::compare::run_compare(o);
#endif
  std::printf("\n%s\n", qprob::compare::summary_table(outcome.document).c_str());
  std::printf("acc/ece/conf: fraction; H: mean predictive entropy in bits x100; jsd: mean Jensen-Shannon divergence "
              "(nats); p_t: paired t-test on p(gold); p_mcn: McNemar exact\n");
  std::printf("wrote %s and samples_<task>_{full,quantized}.jsonl in %s\n", outcome.results.c_str(), c.out.c_str());
  if (!c.no_report) {
    write_report_hook(c.out);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"qprob: quantize a model and measure what quantization does to its accuracy, calibration and confidence"};
  app.require_subcommand(1);
  auto* cmp = app.add_subcommand("compare", "evaluate a full and a quantized model on multiple-choice tasks (lm-eval "
                                            "zero-shot) and write results.json with every metric and paired test");
  cli_options c;
  cmp->add_option("--model", c.model, "Hugging Face model directory (config.json, safetensors, tokenizer)")->required();
  auto* qd = cmp->add_option("--quantized", c.quantized, "load this GPTQ checkpoint instead of quantizing");
  auto* qm = cmp->add_option("--quant", c.quant, "quantization method (default gptq)")->check(CLI::IsMember({"gptq", "rtn"}));
  qd->excludes(qm);
  cmp->add_option("--bits", c.bits, "weight bits (2, 3, 4 or 8)");
  cmp->add_option("--group-size", c.group_size, "input columns per scale (-1: one per output channel)");
  cmp->add_flag("--sym,!--no-sym", c.sym, "symmetric quantization (default) or asymmetric");
  cmp->add_flag("--desc-act", c.desc_act, "GPTQ act-order: quantize columns by decreasing Hessian diagonal");
  cmp->add_option("--damp-percent", c.damp_percent, "GPTQ dampening, fraction of mean(diag H)");
  cmp->add_option("--calib", c.calib, "calibration corpus (default <data>/wikitext2/wiki.test.raw)");
  cmp->add_option("--nsamples", c.nsamples, "calibration windows")->check(CLI::PositiveNumber);
  cmp->add_option("--seqlen", c.seqlen, "tokens per calibration window")->check(CLI::PositiveNumber);
  cmp->add_option("--seed", c.seed, "calibration window seed");
  cmp->add_option("--tasks", c.tasks, "comma-separated tasks: arc_easy,boolq,hellaswag,openbookqa,piqa,xstorycloze_en,"
                                      "truthfulqa_mc1,truthfulqa_mc2,... and the next-token (Price-of-Efficiency) tasks "
                                      "poe_boolq_tf,poe_toxicity")->required();
  cmp->add_option("--data", c.data, "benchmark data directory (the layout of shared/data)")->required();
  cmp->add_option("--limit", c.limit, "evaluate only the first N documents of each task")->check(CLI::PositiveNumber);
  cmp->add_option("--batch-size", c.batch_size, "auto or N requests per scorer call (results do not depend on it)");
  cmp->add_option("--max-length", c.max_length,
                  "lm-eval's max_length (context + continuation cut from the left; a longer continuation is an "
                  "error); default: the model's max_position_embeddings, else 2048")
      ->check(CLI::PositiveNumber);
  cmp->add_option("--metrics-compat", c.metrics_compat, "none or seed (the first paper's notebook: ACE and alpha 0.01)")
      ->check(CLI::IsMember({"none", "seed"}));
  cmp->add_option("--device", c.device, "cuda (default: the GPU engine) or cpu (host reference, tiny models)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmp->add_option("--quantized-linears", c.quantized_linears,
                  "--device cuda: how the quantized model's block linears are held: dequantized (default: fp16 "
                  "weights and cuBLAS, the fastest) or packed (4/8-bit codes and the fused dequantize-and-multiply "
                  "GEMM on sm_90, about a quarter of the weight memory; other bit widths and shapes stay dequantized)")
      ->check(CLI::IsMember({"dequantized", "packed"}));
  cmp->add_option("--out", c.out, "output directory")->required();
  cmp->add_flag("--no-progress", c.no_progress, "no progress bars (they are also off when stderr is not a terminal)");
  cmp->add_flag("--no-report", c.no_report, "do not render the report (tables, figures, report.html)");
  cmp->add_flag("--skip-missing", c.skip_missing, "exit 77 (skipped) when --model or --data is absent");
  return qprob_cli::parse_and_run(app, argc, argv, [&] { return run_compare(c); });
}
