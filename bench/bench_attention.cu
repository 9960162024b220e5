// SPDX-License-Identifier: Apache-2.0
// The engine's causal attention kernels on the plans the engine runs them on, Llama-2-7B heads (32 x 128, fp16):
//   windows  GPTQ's calibration batches: 4 sequences of 2048 tokens (8192 rows, plan_sequences);
//   requests HellaSwag-like scoring batches: contexts of 60-140 tokens shared by 4 continuations of 10-40.
// Tensor cores (engine/attention_mma.cuh) against the float32 CUDA-core kernel, same process; CUDA-event timing
// with L2 flushed. TFLOP/s counts 4 * D flops per visible (query, key) pair and head (q.k and p.v), so it is the
// useful work, not the work a kernel does on masked keys.
#include <qprob/engine/attention_mma.cuh>
#include <qprob/engine/plan.hpp>

#include "bench_common.hpp"

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace {

using qprob::engine::token_id;
namespace k = qprob::engine::kernels;

constexpr int kHeads = 32, kDim = 128;

qprob::engine::batch_plan make_plan(bool windows) {
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<token_id> tok(0, 31999);
  const auto seq = [&](int n) {
    std::vector<token_id> v(static_cast<std::size_t>(n));
    for (auto& t : v) {
      t = tok(rng);
    }
    return v;
  };
  qprob::engine::plan_options po;
  if (windows) {
    std::vector<std::vector<token_id>> w;
    for (int i = 0; i < 4; ++i) {
      w.push_back(seq(2048));
    }
    std::vector<std::span<const token_id>> spans(w.begin(), w.end());
    return qprob::engine::plan_sequences(spans, false, po).at(0);
  }
  std::uniform_int_distribution<int> ctx_len(60, 140), cont_len(10, 40);
  std::vector<std::vector<token_id>> ctx, cont;
  for (int q = 0; q < 60; ++q) {
    ctx.push_back(seq(ctx_len(rng)));
    for (int c = 0; c < 4; ++c) {
      cont.push_back(seq(cont_len(rng)));
    }
  }
  std::vector<qprob::engine::token_request> reqs;
  for (std::size_t i = 0; i < cont.size(); ++i) {
    reqs.push_back({ctx[i / 4], cont[i]});
  }
  return qprob::engine::plan_requests(reqs, po).at(0);
}

/// Visible (query, key) pairs of a plan (causal, no window).
double visible_pairs(const qprob::engine::batch_plan& b) {
  double n = 0;
  for (const auto& t : b.tiles) {
    for (int q = 0; q < t.q_count; ++q) {
      const int pos = b.positions[static_cast<std::size_t>(t.q_begin + q)];
      n += std::min(pos + 1, t.a_count) + std::max(0, std::min(pos + 1 - t.b_pos0, t.b_count));
    }
  }
  return n;
}

void BM_attention(benchmark::State& state) {
  const bool windows = state.range(0) != 0;
  const bool tensor  = state.range(1) != 0;
  const auto plan    = make_plan(windows);
  qprob::stream s;
  const std::int64_t W = 3 * kHeads * kDim;
  std::vector<qprob::half_t> host(static_cast<std::size_t>(plan.rows() * W));
  std::mt19937_64 rng(3);
  std::normal_distribution<double> nd(0.0, 1.0);
  for (auto& v : host) {
    v = qprob::to_half(nd(rng));
  }
  qprob::device_buffer<qprob::half_t> qkv(std::span<const qprob::half_t>(host), s);
  qprob::device_buffer<qprob::half_t> out(plan.rows() * kHeads * kDim, s);
  qprob::device_buffer<qprob::engine::attention_tile> tiles(std::span<const qprob::engine::attention_tile>(plan.tiles), s);
  qprob::device_buffer<std::int32_t> pos(std::span<const std::int32_t>(plan.positions), s);
  k::attention_params<qprob::half_t> p;
  p.qkv = qkv.data();
  p.ld = W;
  p.out = out.data();
  p.tiles = tiles.data();
  p.positions = pos.data();
  p.head_dim = kDim;
  p.q_heads = kHeads;
  p.kv_heads = kHeads;
  p.scale = static_cast<float>(1.0 / std::sqrt(double(kDim)));
  const int n_tiles = static_cast<int>(plan.tiles.size());
  qprob::bench::time_iterations(state, s, [&] {
    k::launch_attention<qprob::half_t, 4>(p, n_tiles, tensor, s);
    QPROB_CUDA_TRY(cudaGetLastError());
  });
  const double flops = 4.0 * kDim * kHeads * visible_pairs(plan);
  state.counters["TFLOP/s"] = benchmark::Counter(flops / 1e12, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["rows"]   = static_cast<double>(plan.rows());
}

}  // namespace

// Args: plan (1: GPTQ windows, 0: scoring requests), kernel (1: tensor cores, 0: CUDA cores).
BENCHMARK(BM_attention)->Args({1, 1})->Args({1, 0})->Args({0, 1})->Args({0, 0})->UseManualTime()->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
