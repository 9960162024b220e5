// SPDX-License-Identifier: Apache-2.0
// qprob-perplexity: WikiText-2 perplexity of a model and of its quantized versions, with llama.cpp's
// KL-divergence statistics between the full model and each quantized one.
//
// What it demonstrates: eval/perplexity.hpp end to end. Tokenize the text once (GPTQ's "\n\n"-joined rows,
// or llama.cpp's raw file with --convention llama.cpp), cut it into non-overlapping windows, quantize the model
// with each requested method and bit width on the host (compare/cpu_quantizer.hpp: RTN, or AutoGPTQ's
// true-sequential GPTQ calibrated on random WikiText-2 windows), then stream every window through the full
// model and every quantized one (eval::compare_perplexity; only the current window's rows are kept) and
// summarize per token: both perplexities, ln(PPL_q/PPL_fp), KL(fp || q), Δp, same top-1
// (metrics/token_divergence.hpp). Prints a table and llama.cpp's statistics blocks per quantized model and
// writes a JSON file atomically (docs/perplexity.md lists its keys).
//
// Devices: --device cpu is the double-precision host reference (single-threaded): tiny models only
// (stories260K, babyllama); the quantized model is evaluated as its fp16-dequantized weights widened to double
// (what compare does). --device cuda is the GPU engine (fp16; quantization with engine::quantize; float32
// log-softmax rows streamed to the host statistics); it keeps the full model and every quantized variant on the
// GPU at once (not yet run on a GPU). Embeddings, norms and the (tied) head stay unquantized. WikiText-2 train is not available here, so GPTQ calibrates on random windows
// of the same test text that is evaluated (docs/perplexity.md discusses the overlap).
//
//   qprob-perplexity --device cpu --model ../shared/models/stories260K --data ../shared/data --windows 16
//       --eval-seqlen 256 --out /tmp/ppl_fp.json                                   (full model only)
//   qprob-perplexity --device cpu --model ../shared/models/stories260K --data ../shared/data --windows 16
//       --eval-seqlen 256 --quant rtn,gptq --bits 2,3,4,8 --group-size 128 --nsamples 16 --seqlen 128
//       --out /tmp/ppl.json                                                         (one command line each)
//
// Exit status: 0 with "Result: PASSED" when every perplexity is finite and every mean KL is >= 0; 1 with
// "Result: FAILED" or an error message (file, field, problem) otherwise; 2 usage errors; 77 with --skip-missing when the model or data directory is absent (ctest: skipped).
#include <qprob/compare/cpu_quantizer.hpp>
#if defined(QPROB_PERPLEXITY_WITH_ENGINE)
#include <qprob/eval/gpu_perplexity.hpp>
#endif
#include <qprob/eval/perplexity.hpp>
#include <qprob/eval/progress.hpp>
#include <qprob/eval/python_json.hpp>
#include <qprob/io/atomic_file.hpp>
#include <qprob/quant/calibration.hpp>
#include <qprob/tokenizer/tokenizer.hpp>
#include <qprob/version.hpp>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "../cli_common.hpp"

namespace {

namespace fs = std::filesystem;
using ojson  = nlohmann::ordered_json;
using clock_type = std::chrono::steady_clock;

using qprob_cli::exit_failed;
using qprob_cli::exit_skipped;
using qprob_cli::exit_usage;

struct options {
  fs::path model, data, text, calib, out;
  std::vector<std::string> quant;  // rtn, gptq
  std::vector<int> bits = {4};
  int group_size        = 128;
  bool sym              = true;
  double damp_percent   = 0.01;
  std::int64_t nsamples = 128;
  std::optional<std::int64_t> seqlen;       // calibration window; default: the model's context
  std::uint64_t seed = 0;
  std::optional<std::int64_t> eval_seqlen;  // evaluation window; default: the model's context
  std::optional<std::int64_t> windows;
  std::string convention = "gptq";
  std::string device     = "cpu";
  bool no_progress = false, skip_missing = false;
};

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

/// --data is the wikitext2 folder itself or a data folder holding wikitext2/.
fs::path text_file(const options& o) {
  if (!o.text.empty()) {
    return o.text;
  }
  if (fs::exists(o.data / "wiki.test.raw")) {
    return o.data / "wiki.test.raw";
  }
  return o.data / "wikitext2" / "wiki.test.raw";
}

/// One quantized model to build and compare.
struct variant {
  qprob::compare::quant_method method;
  int bits;
  std::string label;
};

std::string fmt(const char* f, double a) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, a);
  return buf;
}

int run(const options& o) {
#if !defined(QPROB_PERPLEXITY_WITH_ENGINE)
  if (o.device != "cpu") {
    std::fprintf(stderr, "error: --device %s: this build has no GPU engine (configure with QPROB_ENABLE_CUDA=ON); "
                 "--device cpu is the host reference (tiny models)\n", o.device.c_str());
    return exit_usage;
  }
#endif
  const bool cuda = o.device == "cuda";
  for (const auto& dir : {o.model, o.data}) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) {
      std::fprintf(stderr, "%s: %s is not a directory\n", o.skip_missing ? "skipped" : "error", dir.c_str());
      return o.skip_missing ? exit_skipped : exit_failed;
    }
  }
  const auto t_start = clock_type::now();
  const auto convention = qprob::eval::parse_perplexity_convention(o.convention);

  // ---- model, text, windows -------------------------------------------------------------------------------
  const auto tok  = qprob::tokenizer::from_directory(o.model);
  std::optional<qprob::reference::reference_model> fp_model;
#if defined(QPROB_PERPLEXITY_WITH_ENGINE)
  qprob::engine::engine_options eopt;
  eopt.dtype = qprob::engine::activation_type::f16;  // the quantizer's presets compute in fp16
  std::vector<std::unique_ptr<qprob::engine::engine>> engines;  // [0]: the full model
  if (cuda) {
    engines.push_back(std::make_unique<qprob::engine::engine>(qprob::engine::engine::from_directory(o.model, eopt)));
  }
#endif
  if (!cuda) {
    fp_model.emplace(qprob::reference::reference_model::from_directory(o.model));
  }
  const auto model_cfg  = qprob::model::load_config(o.model);
  const auto parameters = qprob::model::map_weights(model_cfg, qprob::io::checkpoint::open(o.model)).parameters();
  const auto ctx       = qprob::reference::default_max_length(model_cfg);
  const auto vocab     = model_cfg.vocab_size;
  const auto file = text_file(o);
  auto t0         = clock_type::now();
  const auto corpus = qprob::eval::load_perplexity_corpus(file, tok, convention);
  qprob::eval::perplexity_options po;
  po.seqlen      = o.eval_seqlen.value_or(ctx);
  po.max_windows = o.windows;
  const auto plan = qprob::eval::plan_windows(corpus, po);
  std::printf("model %s: %lld parameters, vocab %lld, context %lld\n", o.model.c_str(),
              static_cast<long long>(parameters), static_cast<long long>(vocab),
              static_cast<long long>(ctx));
  std::printf("text %s (%s convention): %llu bytes -> %zu tokens in %.2f s; %lld of %lld windows of %lld tokens, "
              "%lld scored tokens\n",
              file.c_str(), std::string(to_string(convention)).c_str(),
              static_cast<unsigned long long>(corpus.text_bytes), corpus.tokens.size(), seconds_since(t0),
              static_cast<long long>(plan.windows), static_cast<long long>(plan.available),
              static_cast<long long>(plan.seqlen), static_cast<long long>(plan.scored_tokens()));

  // ---- quantized variants ---------------------------------------------------------------------------------
  std::vector<variant> variants;
  for (const auto& m : o.quant) {
    for (const int b : o.bits) {
      const auto method = m == "rtn" ? qprob::compare::quant_method::rtn : qprob::compare::quant_method::gptq;
      std::string label = (m == "rtn" ? "RTN W" : "GPTQ W") + std::to_string(b) +
                          (o.group_size == -1 ? " per-channel" : " g" + std::to_string(o.group_size)) +
                          (o.sym ? "" : " asym");
      variants.push_back({method, b, label});
    }
  }
  const auto linears = variants.empty() ? std::vector<qprob::compare::block_linear>{}
                                        : qprob::compare::block_linears(o.model);
  qprob::quant::calibration_options calib;
  calib.source   = o.calib.empty() ? file : o.calib;
  calib.nsamples = o.nsamples;
  calib.seqlen   = o.seqlen.value_or(ctx);
  calib.seed     = o.seed;
  std::vector<std::vector<std::int32_t>> calib_windows;
  const bool any_gptq = std::any_of(variants.begin(), variants.end(),
                                    [](const variant& v) { return v.method == qprob::compare::quant_method::gptq; });
  if (any_gptq) {
    t0            = clock_type::now();
    calib_windows = qprob::quant::calibration_windows(calib, tok);
    std::printf("calibration: %lld windows of %lld tokens from %s (seed %llu) in %.2f s\n",
                static_cast<long long>(calib.nsamples), static_cast<long long>(calib.seqlen), calib.source.c_str(),
                static_cast<unsigned long long>(calib.seed), seconds_since(t0));
  }
  // Layers whose input width is at most the group size have one group per row: per-channel in effect.
  std::int64_t one_group_layers = 0;
  for (const auto& l : linears) {
    one_group_layers += (o.group_size == -1 || l.k <= o.group_size) ? 1 : 0;
  }

  std::vector<std::unique_ptr<qprob::eval::logprob_source>> sources;
  std::vector<ojson> quant_blocks;
  for (const auto& v : variants) {
    qprob::compare::quantize_settings qs;
    qs.method                = v.method;
    qs.policy.bits           = v.bits;
    qs.policy.group_size     = o.group_size == -1 ? qprob::per_channel : o.group_size;
    qs.policy.sym            = o.sym;
    qs.policy.desc_act       = false;
    qs.gptq.damp_percent     = o.damp_percent;
    qprob::eval::progress_bar bar("quantize " + v.label, !o.no_progress);
    t0              = clock_type::now();
    const bool gptq = v.method == qprob::compare::quant_method::gptq;
    std::size_t quantized_layers = 0;
    double mse_sum               = 0;
    const auto progress = [&](std::size_t d, std::size_t n) { bar.update(d, n); };
    if (!cuda) {
      auto work      = *fp_model;  // copy: becomes the quantized model
      const auto res = qprob::compare::quantize_model(work, linears, qs, gptq ? calib_windows : decltype(calib_windows){},
                                                      progress);
      for (const auto& r : res.reports) {
        mse_sum += r.weight_mse;
      }
      quantized_layers = res.layers.size();
      sources.push_back(std::make_unique<qprob::eval::reference_logprob_source>(std::move(work), v.label));
    }
#if defined(QPROB_PERPLEXITY_WITH_ENGINE)
    else {
      auto e = std::make_unique<qprob::engine::engine>(qprob::engine::engine::from_directory(o.model, eopt));
      qprob::engine::quantize_settings es;
      es.use_gptq = gptq;
      es.policy   = qs.policy;
      es.solver   = qs.gptq;
      const auto q = e->quantize(es, gptq ? calib_windows : decltype(calib_windows){}, progress);
      for (const auto& l : q) {
        mse_sum += l.weight_mse;
      }
      quantized_layers = q.size();
      sources.push_back(std::make_unique<qprob::eval::engine_logprob_source>(*e, v.label));
      engines.push_back(std::move(e));
    }
#endif
    bar.finish();
    const double sec = seconds_since(t0);
    ojson q;
    q["method"]     = std::string(to_string(v.method));
    q["bits"]       = v.bits;
    q["group_size"] = o.group_size;
    q["sym"]        = o.sym;
    q["desc_act"]   = false;
    q["policy"]     = qprob::quant::describe(qs.policy);
    if (gptq) {
      q["damp_percent"] = o.damp_percent;
      q["calibration"]  = ojson{{"file", calib.source.string()}, {"mode", "concatenated"}, {"nsamples", calib.nsamples},
                               {"seqlen", calib.seqlen}, {"seed", calib.seed}};
    }
    q["quantized_layers"]        = quantized_layers;
    q["layers_with_one_group"]   = one_group_layers;
    q["mean_weight_mse"]         = quantized_layers == 0 ? 0.0 : mse_sum / static_cast<double>(quantized_layers);
    q["seconds"]                 = sec;
    quant_blocks.push_back(std::move(q));
    std::printf("quantized %zu layers (%s) in %.2f s\n", quantized_layers, v.label.c_str(), sec);
  }
  if (!variants.empty() && one_group_layers > 0 && o.group_size != -1) {
    std::printf("note: %lld of %zu quantized layers have at most %d input columns: one group per row (per-channel "
                "in effect)\n",
                static_cast<long long>(one_group_layers), linears.size(), o.group_size);
  }

  // ---- evaluation -----------------------------------------------------------------------------------------
  std::unique_ptr<qprob::eval::logprob_source> fp_source;
  if (!cuda) {
    fp_source = std::make_unique<qprob::eval::reference_logprob_source>(std::move(*fp_model), "fp");
  }
#if defined(QPROB_PERPLEXITY_WITH_ENGINE)
  else {
    fp_source = std::make_unique<qprob::eval::engine_logprob_source>(*engines.front(), "fp");
  }
#endif
  auto& fp = *fp_source;
  std::vector<qprob::eval::logprob_source*> compared;
  for (auto& s : sources) {
    compared.push_back(s.get());
  }
  qprob::eval::progress_bar bar("evaluate", !o.no_progress);
  t0                = clock_type::now();
  const auto on_window = [&](std::int64_t d, std::int64_t n) {
    bar.update(static_cast<std::size_t>(d), static_cast<std::size_t>(n));
  };
  const auto result = qprob::eval::compare_perplexity(fp, compared, corpus.tokens, plan, on_window);
  bar.finish();
  const double eval_sec = seconds_since(t0);

  // ---- report ---------------------------------------------------------------------------------------------
  std::printf("\n%-26s %8s %12s %10s %12s %10s %9s\n", "model", "tokens", "PPL", "± err", "ln(PPL/fp)", "mean KLD",
              "same top");
  std::printf("%-26s %8lld %12.4f %10.4f %12s %10s %9s\n", "fp", static_cast<long long>(result.base.tokens),
              result.base.ppl.value, result.base.ppl.error, "", "", "");
  for (std::size_t i = 0; i < variants.size(); ++i) {
    const auto& s = result.divergence[i];
    std::printf("%-26s %8lld %12.4f %10.4f %12.6f %10.6f %8.3f%%\n", variants[i].label.c_str(),
                static_cast<long long>(s.count), result.compared[i].ppl.value, result.compared[i].ppl.error,
                s.ln_ppl_ratio.value, s.kld.value, 100.0 * s.same_top.value);
  }
  for (std::size_t i = 0; i < variants.size(); ++i) {
    std::printf("\n---- fp vs %s ----\n%s", variants[i].label.c_str(),
                qprob::metrics::format_llama_cpp_summary(result.divergence[i]).c_str());
  }

  std::vector<std::string> problems;
  const auto check_ppl = [&](const qprob::eval::perplexity_result& r) {
    if (!std::isfinite(r.ppl.value) || r.ppl.value < 1.0) {
      problems.push_back(r.source + ": perplexity " + fmt("%g", r.ppl.value) + " is not a finite value >= 1");
    }
  };
  check_ppl(result.base);
  for (std::size_t i = 0; i < variants.size(); ++i) {
    check_ppl(result.compared[i]);
    // Exact log-softmax rows make every KL term sum to >= 0 up to rounding of the row normalization.
    if (!(result.divergence[i].kld.value >= -1e-12)) {
      problems.push_back(variants[i].label + ": mean KL " + fmt("%g", result.divergence[i].kld.value) + " < 0");
    }
  }

  ojson doc;
  doc["format"] = "qprob-perplexity/1";
  doc["model"]  = ojson{{"path", o.model.string()}, {"name", o.model.filename().string()},
                       {"parameters", parameters}, {"vocab_size", vocab},
                       {"context", ctx}};
  doc["text"]   = ojson{{"file", file.string()}, {"sha256", qprob::eval::sha256_hex(read_bytes(file))},
                       {"convention", std::string(to_string(convention))},
                       {"join", convention == qprob::eval::perplexity_convention::gptq ? ojson("\n\n")
                                                                                      : ojson(nullptr)},
                       {"text_bytes", corpus.text_bytes}, {"tokens", corpus.tokens.size()},
                       {"bos", corpus.bos ? ojson(*corpus.bos) : ojson(nullptr)}};
  doc["windows"] = qprob::eval::to_json(plan);
  doc["base"]    = qprob::eval::to_json(result.base);
  doc["base"]["label"] = cuda ? "fp (checkpoint weights, GPU engine fp16)" : "fp (checkpoint weights, evaluated in double)";
  ojson cmp = ojson::array();
  for (std::size_t i = 0; i < variants.size(); ++i) {
    ojson c;
    c["label"]        = variants[i].label;
    c["quantization"] = quant_blocks[i];
    c["result"]       = qprob::eval::to_json(result.compared[i]);
    c["divergence"]   = qprob::eval::to_json(result.divergence[i]);
    cmp.push_back(std::move(c));
  }
  doc["compared"] = std::move(cmp);
  doc["software"] = ojson{{"qprob_version", qprob::version_string}, {"device", o.device}, {"source", fp.name()},
                          {"precision", cuda ? "fp16 weights and activations, float32 residual and log-softmax (GPU engine)"
                                             : "double (host reference forward pass)"}};
  doc["run"]      = ojson{{"seconds", seconds_since(t_start)}, {"evaluation_seconds", eval_sec}};
  if (!o.out.parent_path().empty()) {
    fs::create_directories(o.out.parent_path());
  }
  qprob::io::write_file_atomic(o.out, doc.dump(2) + "\n");
  std::printf("\nwrote %s; evaluation %.1f s, total %.1f s\n", o.out.c_str(), eval_sec, seconds_since(t_start));
  for (const auto& p : problems) {
    std::printf("problem: %s\n", p.c_str());
  }
  std::printf("Result: %s\n", problems.empty() ? "PASSED" : "FAILED");
  return problems.empty() ? 0 : exit_failed;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"qprob-perplexity: WikiText-2 perplexity of a model and its RTN/GPTQ quantizations, with llama.cpp's "
               "KL-divergence statistics"};
  options o;
  app.add_option("--model", o.model, "Hugging Face model directory (config.json, safetensors, tokenizer)")->required();
  app.add_option("--data", o.data, "WikiText-2 location: the wikitext2 folder (wiki.test.raw) or a data folder "
                                   "holding wikitext2/")->required();
  app.add_option("--text", o.text, "evaluation text file (default <data>/wikitext2/wiki.test.raw)");
  app.add_option("--convention", o.convention, "gptq (default: every prediction of non-overlapping windows) or "
                                               "llama.cpp (BOS per window, second half scored)")
      ->check(CLI::IsMember({"gptq", "llama.cpp"}));
  app.add_option("--eval-seqlen", o.eval_seqlen, "tokens per evaluation window (default: max_position_embeddings)")
      ->check(CLI::Range(2, 1 << 20));
  app.add_option("--windows", o.windows, "evaluate only the first N windows (default: all)")
      ->check(CLI::PositiveNumber);
  app.add_option("--quant", o.quant, "quantization methods to compare with the full model: rtn, gptq or rtn,gptq")
      ->delimiter(',')
      ->check(CLI::IsMember({"rtn", "gptq"}));
  app.add_option("--bits", o.bits, "weight bits, one or a list (2, 3, 4, 8; e.g. 2,3,4,8)")->delimiter(',')
      ->check(CLI::IsMember({2, 3, 4, 8}));
  app.add_option("--group-size", o.group_size, "input columns per scale (-1: per channel)");
  app.add_flag("--sym,!--asym", o.sym, "symmetric (default) or asymmetric quantization");
  app.add_option("--damp-percent", o.damp_percent, "GPTQ dampening, fraction of mean(diag H)");
  app.add_option("--calib", o.calib, "GPTQ calibration corpus (default: the evaluation text file)");
  app.add_option("--nsamples", o.nsamples, "GPTQ calibration windows")->check(CLI::PositiveNumber);
  app.add_option("--seqlen", o.seqlen, "tokens per calibration window (default: max_position_embeddings)")
      ->check(CLI::PositiveNumber);
  app.add_option("--seed", o.seed, "calibration window seed");
  app.add_option("--device", o.device, "cpu (host reference, tiny models) or cuda (the GPU engine)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--out", o.out, "results JSON file (written atomically)")->required();
  app.add_flag("--no-progress", o.no_progress, "no progress bars (they are also off when stderr is not a terminal)");
  app.add_flag("--skip-missing", o.skip_missing, "exit 77 (skipped) when --model or --data is absent");
  return qprob_cli::parse_and_run(app, argc, argv, [&] { return run(o); });
}
