// SPDX-License-Identifier: Apache-2.0
// RTN quantization and dequantization bandwidth, per policy, at Llama-2-7B layer shapes.
//
// Both ops are memory-bound: quantize reads the fp16 weight twice (scale search, then packing; the second
// read is counted because it is real traffic) and writes bits/16 of it; dequantize reads the packed codes and
// writes fp16. The `frac_of_copy` counter is achieved GB/s over the device-to-device copy bandwidth measured
// in the same process. Correctness is checked once against the reference before timing.
//
// Search space of the tuning (policy/tuning.hpp, ops::rtn_pack): tile_n in {32, 64, 128}, tile_k = 128.
//
//   bench_quant_rtn --benchmark_min_time=0.2s
#include <qprob/qprob.hpp>

#include <benchmark/benchmark.h>

#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_common.hpp"

namespace {

namespace p = qprob::policies;

struct layer_weights {
  std::int64_t n;
  std::int64_t k;
  std::vector<qprob::half_t> host;
};

const layer_weights& weights(std::int64_t n, std::int64_t k) {
  static std::vector<layer_weights> cache;
  for (const auto& w : cache) {
    if (w.n == n && w.k == k) {
      return w;
    }
  }
  std::mt19937_64 rng(1234);
  std::normal_distribution<float> gauss(0.0f, 0.02f);
  layer_weights w{n, k, std::vector<qprob::half_t>(static_cast<std::size_t>(n * k))};
  for (auto& x : w.host) {
    x = qprob::to_half(gauss(rng));
  }
  cache.push_back(std::move(w));
  return cache.back();
}

template <class P>
struct rtn_buffers {
  std::int64_t n, k, words, groups;
  qprob::device_buffer<qprob::half_t> w;
  qprob::device_buffer<std::uint32_t> q;
  qprob::device_buffer<qprob::half_t> scales;
  qprob::device_buffer<std::uint8_t> zeros;
  qprob::device_buffer<qprob::half_t> deq;

  rtn_buffers(const layer_weights& lw, cudaStream_t s)
      : n(lw.n), k(lw.k), words(P::packed_words(lw.k)), groups(P::groups(lw.k)),
        w(std::span<const qprob::half_t>(lw.host), s), q(words * n, s), scales(groups * n, s), zeros(groups * n, s),
        deq(n * k, s) {}

  void quantize(cudaStream_t s) {
    qprob::quant::rtn_quantize<P>(std::as_const(w).view(n, k), q.view(words, n), scales.view(groups, n),
                                  zeros.view(groups, n), s);
  }
  void dequantize(cudaStream_t s) {
    qprob::quant::dequantize<P>(std::as_const(q).view(words, n), std::as_const(scales).view(groups, n),
                                std::as_const(zeros).view(groups, n), nullptr, deq.view(n, k), s);
  }
  double packed_bytes() const { return words * n * 4.0 + groups * n * 3.0; }
};

// Checks the GPU result once against the reference (on a slice of rows, to keep start-up short).
template <class P>
void verify_once(const layer_weights& lw, cudaStream_t s) {
  const std::int64_t rows = 64;
  qprob::stream vs;
  std::vector<qprob::half_t> slice(lw.host.begin(), lw.host.begin() + rows * lw.k);
  rtn_buffers<P> b(layer_weights{rows, lw.k, slice}, vs);
  b.quantize(vs);
  b.dequantize(vs);
  const auto ref = qprob::reference::rtn_quantize<P, qprob::half_t>(qprob::make_host_view(slice.data(), rows, lw.k));
  if (b.q.to_host() != ref.qweight || b.deq.to_host() != qprob::reference::dequantize<P, qprob::half_t>(ref)) {
    throw std::runtime_error("RTN kernel disagrees with the reference for " + std::string(qprob::policy_name<P>()));
  }
  (void)s;
}

template <class P>
void bm_rtn_quantize(benchmark::State& state) {
  const auto& lw = weights(state.range(0), state.range(1));
  qprob::stream s;
  verify_once<P>(lw, s);
  rtn_buffers<P> b(lw, s);
  qprob::bench::time_iterations(state, s, [&] { b.quantize(s); });
  const double bytes = 2.0 * lw.n * lw.k * 2.0 + b.packed_bytes();
  qprob::bench::report_bandwidth(state, bytes);
  state.counters["frac_of_copy"] = benchmark::Counter(
      bytes * static_cast<double>(state.iterations()) / qprob::bench::measured_copy_bandwidth(),
      benchmark::Counter::kIsRate);
  state.SetLabel(std::string(qprob::policy_name<P>()));
}

template <class P>
void bm_dequantize(benchmark::State& state) {
  const auto& lw = weights(state.range(0), state.range(1));
  qprob::stream s;
  rtn_buffers<P> b(lw, s);
  b.quantize(s);
  qprob::bench::time_iterations(state, s, [&] { b.dequantize(s); });
  const double bytes = lw.n * lw.k * 2.0 + b.packed_bytes();
  qprob::bench::report_bandwidth(state, bytes);
  state.counters["frac_of_copy"] = benchmark::Counter(
      bytes * static_cast<double>(state.iterations()) / qprob::bench::measured_copy_bandwidth(),
      benchmark::Counter::kIsRate);
  state.SetLabel(std::string(qprob::policy_name<P>()));
}

// (out, in) shapes of Llama-2-7B's projections: q/k/v/o (4096, 4096), gate/up (11008, 4096), down (4096, 11008).
void shapes(benchmark::internal::Benchmark* b) {
  b->Args({4096, 4096})->Args({11008, 4096})->Args({4096, 11008});
  b->UseManualTime()->Unit(benchmark::kMicrosecond);
}

}  // namespace

BENCHMARK_TEMPLATE(bm_rtn_quantize, p::int4_g128)->Apply(shapes);
BENCHMARK_TEMPLATE(bm_rtn_quantize, p::int8_pc)->Apply(shapes);
BENCHMARK_TEMPLATE(bm_rtn_quantize, p::int3_g128)->Apply(shapes);
BENCHMARK_TEMPLATE(bm_rtn_quantize, p::int2_g64)->Apply(shapes);
BENCHMARK_TEMPLATE(bm_dequantize, p::int4_g128)->Apply(shapes);
BENCHMARK_TEMPLATE(bm_dequantize, p::int8_pc)->Apply(shapes);
BENCHMARK_TEMPLATE(bm_dequantize, p::int3_g128)->Apply(shapes);
BENCHMARK_TEMPLATE(bm_dequantize, p::int2_g64)->Apply(shapes);

BENCHMARK_MAIN();
