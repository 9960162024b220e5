// SPDX-License-Identifier: Apache-2.0
// Log-likelihood scoring throughput of the GPU engine on real requests at a real model shape: the engine is
// built with random fp16 weights from a config.json (default bench/configs/llama-2-7b.json) and scores the
// requests of a --write-requests file (default .shared/requests/llama2-hellaswag-400.json: 400 HellaSwag
// documents, 1600 requests, Llama-2 tokenizer). bench/hellaswag_transformers.py scores the same file with
// transformers the way lm-eval does; tools/gpu-check.sh runs both and prints the ratio.
//
//   export QPROB_BENCH_CONFIG=bench/configs/llama-2-7b.json
//   export QPROB_BENCH_REQUESTS=.shared/requests/llama2-hellaswag-400.json
//   build/gpu/bench/bench_scoring --benchmark_format=json
//
// The last two BM_score rows score an RTN-quantized model held dequantized (cuBLAS) or packed (fused GEMM).
//
// BM_gptq_model: the whole-model GPTQ of the same random model (issue: under 90 s for a 7B shape).
//
// Counters: tokens_per_s = request tokens (sum of lm-eval input lengths, what the transformers loop computes)
// per second of wall time (score() returns with results on the host); rows_per_s = rows the engine actually
// computed (prefix sharing: fewer); mfu = 2 * parameters * rows / time / 989.4e12 (H100 SXM dense fp16 peak);
// peak_GiB = high-water mark of the engine's stream-ordered allocations (weights included); weights_GiB.
#include <qprob/core/error.hpp>
#include <qprob/engine/engine.hpp>
#include <qprob/model/config.hpp>

#include <benchmark/benchmark.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

namespace {

using qprob::engine::token_id;

std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}

struct request_file {
  std::vector<std::vector<token_id>> ctx, cont;
  std::vector<qprob::engine::token_request> views() const {
    std::vector<qprob::engine::token_request> v;
    for (std::size_t i = 0; i < ctx.size(); ++i) {
      v.push_back({ctx[i], cont[i]});
    }
    return v;
  }
};

std::optional<request_file> load_requests(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return std::nullopt;
  }
  const auto j = nlohmann::json::parse(in);
  request_file f;
  for (const auto& r : j.at("requests")) {
    f.ctx.push_back(r.at("context").get<std::vector<token_id>>());
    f.cont.push_back(r.at("continuation").get<std::vector<token_id>>());
  }
  return f;
}

std::int64_t parameters(const qprob::model::model_config& c) {
  const auto H = c.hidden_size, I = c.intermediate_size, D = c.head_dim;
  const auto per_layer = H * (c.num_heads * D) + 2 * H * (c.num_kv_heads * D) + (c.num_heads * D) * H +
                         (c.gated_mlp ? 3 : 2) * H * I;
  return c.num_layers * per_layer + (c.tie_word_embeddings ? 1 : 2) * c.vocab_size * c.word_embed_proj_dim;
}

void BM_score(benchmark::State& state) {
  const auto config_path   = env_or("QPROB_BENCH_CONFIG", "bench/configs/llama-2-7b.json");
  const auto requests_path = env_or("QPROB_BENCH_REQUESTS", ".shared/requests/llama2-hellaswag-400.json");
  const auto reqs          = load_requests(requests_path);
  if (!reqs) {
    state.SkipWithError(("requests file not found: " + requests_path + " (tools/stage-gpu.sh makes it)").c_str());
    return;
  }
  const auto cfg = qprob::model::load_config(config_path);
  qprob::engine::engine_options o;
  o.max_batch_rows = state.range(0);
  o.gemm_rows      = state.range(2);
  o.tensor_core_attention = state.range(3) != 0;
  o.quantized     = state.range(4) == 2 ? qprob::engine::quantized_linears::packed : qprob::engine::quantized_linears::dequantized;
  auto eng        = qprob::engine::engine::random(cfg, o, 1);
  if (state.range(4) > 0) {  // RTN 4-bit g128 sym: the scoring speed of a quantized model, codes held as o.quantized says
    qprob::engine::quantize_settings qs;
    qs.use_gptq = false;
    qs.policy   = {4, 128, true, false};
    (void)eng.quantize(qs, {});
  }
  const auto v     = reqs->views();
  const bool share = state.range(1) != 0;
  (void)eng.score(v, false, share);  // warm-up: workspaces, cuBLAS heuristics
  const auto before = eng.stats();
  std::int64_t iterations = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    auto s        = eng.score(v, false, share);
    benchmark::DoNotOptimize(s.data());
    state.SetIterationTime(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    ++iterations;
  }
  const auto after   = eng.stats();
  const double tok   = static_cast<double>(after.request_tokens - before.request_tokens);
  const double rows  = static_cast<double>(after.rows_computed - before.rows_computed);
  state.counters["tokens_per_s"] = benchmark::Counter(tok, benchmark::Counter::kIsRate);
  state.counters["rows_per_s"]   = benchmark::Counter(rows, benchmark::Counter::kIsRate);
  state.counters["mfu"] = benchmark::Counter(2.0 * static_cast<double>(parameters(cfg)) * rows / 989.4e12, benchmark::Counter::kIsRate);
  state.counters["requests"]    = static_cast<double>(v.size());
  state.counters["peak_GiB"]    = static_cast<double>(after.peak_pool_bytes) / (1024.0 * 1024.0 * 1024.0);
  state.counters["weights_GiB"] = static_cast<double>(after.weight_bytes) / (1024.0 * 1024.0 * 1024.0);
  state.counters["packed_linears"] = static_cast<double>(after.packed_linears);
  (void)iterations;
}

/// Whole-model GPTQ (4-bit, group 128, sym, damp 0.01, true-sequential) of the random model on nsamples x seqlen
/// random calibration tokens (QPROB_BENCH_NSAMPLES, default 128; seqlen 2048), the paper's setting: calibration
/// forwards, Hessians and solves of every layer, timed as one wall-clock iteration.
void BM_gptq_model(benchmark::State& state) {
  const auto config_path = env_or("QPROB_BENCH_CONFIG", "bench/configs/llama-2-7b.json");
  const auto nsamples    = std::stoll(env_or("QPROB_BENCH_NSAMPLES", "128"));
  const auto cfg         = qprob::model::load_config(config_path);
  std::vector<std::vector<token_id>> windows(static_cast<std::size_t>(nsamples), std::vector<token_id>(2048));
  std::uint64_t z = 12345;
  for (auto& w : windows) {
    for (auto& t : w) {
      z = z * 6364136223846793005ull + 1442695040888963407ull;
      t = static_cast<token_id>((z >> 33) % static_cast<std::uint64_t>(cfg.vocab_size));
    }
  }
  qprob::engine::quantize_settings s;
  s.policy = {4, 128, true, false};
  std::int64_t layers = 0;
  for (auto _ : state) {
    auto eng      = qprob::engine::engine::random(cfg, {}, 1);
    const auto t0 = std::chrono::steady_clock::now();
    const auto q  = eng.quantize(s, windows);
    state.SetIterationTime(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    layers = static_cast<std::int64_t>(q.size());
    const auto st              = eng.stats();
    state.counters["peak_GiB"] = static_cast<double>(st.peak_pool_bytes) / (1024.0 * 1024.0 * 1024.0);
    state.counters["forward_s"] = st.quantize_forward_seconds;
    state.counters["solve_s"]   = st.quantize_solve_seconds;
    state.counters["cache_GiB"] = static_cast<double>(st.quantize_cache_bytes) / (1024.0 * 1024.0 * 1024.0);
  }
  state.counters["linears"]  = static_cast<double>(layers);
  state.counters["nsamples"] = static_cast<double>(nsamples);
}

}  // namespace

// Args: max_batch_rows, prefix sharing (1) or not (0), gemm_rows (the fixed GEMM block: larger blocks run cuBLAS
// closer to its peak, smaller ones pad less; 2048 measured best, docs/performance.md), tensor-core attention (1)
// or the CUDA-core kernel (0), the model: full (0), RTN 4-bit g128 held dequantized (1) or packed (2, the fused
// GEMM).
BENCHMARK(BM_score)
    ->Args({8192, 1, 2048, 1, 0})
    ->Args({8192, 1, 2048, 0, 0})
    ->Args({8192, 0, 2048, 1, 0})
    ->Args({8192, 1, 2048, 1, 1})
    ->Args({8192, 1, 2048, 1, 2})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->Iterations(3);

BENCHMARK(BM_gptq_model)->UseManualTime()->Unit(benchmark::kSecond)->Iterations(1);

BENCHMARK_MAIN();
