// SPDX-License-Identifier: Apache-2.0
// GPTQ of one Llama-2-7B-shaped decoder layer: Hessian accumulation over 128 x 2048 calibration tokens for the
// four distinct layer inputs (q/k/v share one, o, gate/up share one, down), then the solve of all seven
// projections (q, k, v, o: 4096 x 4096; gate, up: 11008 x 4096; down: 4096 x 11008), 4-bit group 128 sym.
//
// Reference point (../shared/REFERENCE.md, same H100): the original PyTorch GPTQ takes 2.5 s of Hessian
// accumulation + 10.2 s of solving = 12.7 s per layer, ~405 s for 32 layers before calibration forwards.
// Floors: Hessians 262144 tokens x (3 x 4096^2 + 11008^2) x 2 = 90 TFLOP on fp16 tensor cores (~0.12 s at
// 750 TFLOP/s); the lazy block updates sum to about n k^2 fp32 FLOPs per matrix (1.1 TFLOP per layer, ~25 ms at
// ~50 TFLOP/s fp32); the sequential in-block work is latency-bound. Counters: seconds per layer, the 32-layer
// projection (calibration forwards not included), the speedup over 12.7 s, and the pool's peak memory.
//
//   bench_gptq --benchmark_min_time=0.1s
#include <qprob/qprob.hpp>

#include <benchmark/benchmark.h>

#include <cmath>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_common.hpp"

namespace {

namespace p = qprob::policies;
using P = p::int4_g128;

constexpr std::int64_t hidden       = 4096;
constexpr std::int64_t intermediate = 11008;
constexpr std::int64_t tokens       = 128 * 2048;
constexpr std::int64_t batch        = 8192;  // tokens per Hessian update, as a calibration forward would produce
constexpr double pytorch_seconds_per_layer = 12.7;

std::vector<qprob::half_t> random_half(std::int64_t count, double sigma, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, static_cast<float>(sigma));
  std::vector<qprob::half_t> v(static_cast<std::size_t>(count));
  for (auto& x : v) {
    x = qprob::to_half(g(rng));
  }
  return v;
}

struct matrix {
  std::int64_t n, k;
  int hessian;  // which of the four Hessians is its input's
};

void bm_gptq_llama2_7b_layer(benchmark::State& state) {
  qprob::bench::retain_pool_memory();
  qprob::stream s;
  // One batch of activations per distinct input width, reused for every update (values do not change the time).
  qprob::device_buffer<qprob::half_t> x_hidden(std::span<const qprob::half_t>(random_half(batch * hidden, 1.0, 1)), s);
  qprob::device_buffer<qprob::half_t> x_inter(std::span<const qprob::half_t>(random_half(batch * intermediate, 1.0, 2)), s);
  const std::vector<matrix> matrices = {{hidden, hidden, 0},       {hidden, hidden, 0},       {hidden, hidden, 0},
                                        {hidden, hidden, 1},       {intermediate, hidden, 2}, {intermediate, hidden, 2},
                                        {hidden, intermediate, 3}};
  std::vector<qprob::device_buffer<qprob::half_t>> weights;
  for (std::size_t i = 0; i < matrices.size(); ++i) {
    weights.emplace_back(std::span<const qprob::half_t>(random_half(matrices[i].n * matrices[i].k, 0.02, 10 + i)), s);
  }
  s.synchronize();
  int device = 0;
  QPROB_CUDA_TRY(cudaGetDevice(&device));
  cudaMemPool_t pool{};
  QPROB_CUDA_TRY(cudaDeviceGetDefaultMemPool(&pool, device));
  double hessian_s = 0;
  double solve_s   = 0;
  double loss      = 0;
  for (auto _ : state) {
    qprob::event start;
    qprob::event mid;
    qprob::event stop;
    start.record(s);
    std::vector<std::unique_ptr<qprob::quant::hessian_accumulator<qprob::half_t>>> h;
    for (std::int64_t k : {hidden, hidden, hidden, intermediate}) {
      h.push_back(std::make_unique<qprob::quant::hessian_accumulator<qprob::half_t>>(k, s));
    }
    for (std::int64_t t = 0; t < tokens; t += batch) {
      for (int i = 0; i < 4; ++i) {
        const auto& x = i < 3 ? x_hidden : x_inter;
        h[i]->add(x.view(batch, i < 3 ? hidden : intermediate));
      }
    }
    mid.record(s);
    loss = 0;
    for (std::size_t i = 0; i < matrices.size(); ++i) {
      const auto& m = matrices[i];
      qprob::device_buffer<std::uint32_t> q(P::packed_words(m.k) * m.n, s);
      qprob::device_buffer<qprob::half_t> scales(P::groups(m.k) * m.n, s);
      qprob::device_buffer<std::uint8_t> zeros(P::groups(m.k) * m.n, s);
      const auto report = qprob::quant::gptq_quantize<P>(std::as_const(weights[i]).view(m.n, m.k), h[m.hessian]->hessian(),
                                                         q.view(P::packed_words(m.k), m.n), scales.view(P::groups(m.k), m.n),
                                                         zeros.view(P::groups(m.k), m.n), nullptr, nullptr, {}, s);
      loss += report.loss;
    }
    stop.record(s);
    hessian_s = qprob::event::elapsed_ms(start, mid) / 1e3;
    solve_s   = qprob::event::elapsed_ms(mid, stop) / 1e3;
    state.SetIterationTime(hessian_s + solve_s);
  }
  if (!std::isfinite(loss) || loss <= 0) {
    throw std::runtime_error("GPTQ benchmark: the solver's loss is not a positive finite number");
  }
  std::uint64_t peak = 0;
  QPROB_CUDA_TRY(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &peak));
  const double layer = hessian_s + solve_s;
  state.counters["hessian_s"]     = hessian_s;
  state.counters["solve_s"]       = solve_s;
  state.counters["layer_s"]       = layer;
  state.counters["model_32_s"]    = 32 * layer;
  state.counters["vs_pytorch"]    = pytorch_seconds_per_layer / layer;
  state.counters["hessian_TFLOP/s"] = static_cast<double>(tokens) * (3.0 * hidden * hidden + 1.0 * intermediate * intermediate) * 2 / hessian_s / 1e12;
  state.counters["peak_GiB"]      = static_cast<double>(peak) / (1u << 30);
  state.SetLabel(std::string(qprob::policy_name<P>()));
}

}  // namespace

BENCHMARK(bm_gptq_llama2_7b_layer)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(2);

BENCHMARK_MAIN();
