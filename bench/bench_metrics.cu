// SPDX-License-Identifier: Apache-2.0
// All per-model metrics (compute_model_metrics: validation, per-sample softmax statistics, moment sums,
// ECE/MCE/RMSCE bins, the selected ACE variant, read-back) for 10 million samples x 4 choices, one benchmark
// per ACE variant.
//
// Bandwidth is counted on the compulsory traffic only: the input read once (offsets 8 B, per choice loglik
// 8 B + char_len 4 B, gold 4 B per sample = 56 B/sample + 8 B for 4 choices).
//
// Floor: 10e6 x (8 + 4) B + 40e6 x (8 + 4) B + 8 B = 600 MB; at the H100's ~3.0 TB/s copy bandwidth
// (read + write counted) that is 0.20 ms, and the issue's goal ("at least half") is <= 0.40 ms.
//
// What the pipeline moves beyond that (docs/metrics.md, "Performance and determinism"): the fused pass reads
// the input once (all moments, counts, validation, ECE bins); equal_mass_top_label and uniform_average also
// write one 8-byte conf key per sample (80 MB); uniform_average reads it back per 16 bins, the equal-mass
// selection twice (pass 0 and the split pass) and then only its candidates' lists; Nixon reads the input a
// second time to write per-class probability keys (4 x 80 MB, with selection pass 0's histogram for K <= 4)
// and reads them once more in the split pass.
// `frac_of_copy` = compulsory GB/s / measured copy GB/s is the end-to-end efficiency against the roofline of
// a single pass. The time includes the host read-backs inside the API (and Nixon's mid-way one).
// bm_sample_pass times the fused pass alone (launcher level, no read-back).
// Correctness: before timing, the device result on a 1M-sample prefix is compared with the host reference.
//
//   bench_metrics --benchmark_min_time=0.5s
#include <qprob/core/stream.hpp>
#include <qprob/metrics/metrics.cuh>
#include <qprob/metrics/reference.hpp>

#include <benchmark/benchmark.h>

#include <cmath>
#include <random>
#include <stdexcept>
#include <string>

#include "bench_common.hpp"

namespace {

namespace m = qprob::metrics;

constexpr std::int64_t samples = 10'000'000;
constexpr int choices          = 4;
constexpr std::int64_t check_samples = 1'000'000;

const m::choice_scores& task() {
  static const m::choice_scores s = [] {
    m::choice_scores t;
    std::mt19937_64 rng(2024);
    std::normal_distribution<double> ll(-20.0, 4.0);
    std::uniform_int_distribution<int> chars(1, 60), gold(0, choices - 1);
    t.offsets.resize(samples + 1);
    t.loglik.resize(samples * choices);
    t.char_len.resize(samples * choices);
    t.gold.resize(samples);
    for (std::int64_t i = 0; i <= samples; ++i) {
      t.offsets[static_cast<std::size_t>(i)] = i * choices;
    }
    for (std::size_t j = 0; j < t.loglik.size(); ++j) {
      t.loglik[j]   = ll(rng);
      t.char_len[j] = chars(rng);
    }
    for (auto& g : t.gold) {
      g = gold(rng);
    }
    return t;
  }();
  return s;
}

void check(const m::choice_scores& s, const m::metric_options& opt, cudaStream_t st) {
  m::choice_scores_view v = s.view();
  v.offsets  = v.offsets.first(check_samples + 1);
  v.gold     = v.gold.first(check_samples);
  v.loglik   = v.loglik.first(check_samples * choices);
  v.char_len = v.char_len.first(check_samples * choices);
  const m::device_choice_scores_storage d(v, st);
  const auto dev = m::compute_model_metrics(d.view(), opt, st);
  const auto ref = m::compute_model_metrics_reference(v, opt);
  // same per-sample code, different summation trees: 1e-10 relative (see tests/unit/metrics/test_metrics_gpu.cpp)
  const auto bad = [](double a, double b) { return std::fabs(a - b) > 1e-10 * std::max(std::fabs(a), std::fabs(b)) + 1e-13; };
  if (dev.acc != ref.acc || bad(dev.conf, ref.conf) || bad(dev.entropy, ref.entropy) || bad(dev.brier, ref.brier) ||
      bad(dev.nll, ref.nll) || bad(dev.ece, ref.ece) || bad(dev.ace, ref.ace) || bad(dev.conf_true, ref.conf_true) ||
      !(dev.ece > 0)) {
    throw std::runtime_error("bench_metrics: device metrics disagree with the host reference");
  }
}

void bm_model_metrics(benchmark::State& state, m::ace_variant ace) {
  qprob::stream st;
  const auto& s = task();
  m::metric_options opt;
  opt.ace = ace;
  try {
    check(s, opt, st);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  const m::device_choice_scores_storage d(s.view(), st);
  double sink = 0;
  qprob::bench::time_iterations(state, st, [&] { sink += m::compute_model_metrics(d.view(), opt, st).ece; });
  benchmark::DoNotOptimize(sink);
  const double bytes = static_cast<double>(samples) * (8 + 4) + static_cast<double>(samples * choices) * (8 + 4) + 8;
  qprob::bench::report_bandwidth(state, bytes);
  state.counters["frac_of_copy"] = benchmark::Counter(bytes * static_cast<double>(state.iterations()) / qprob::bench::measured_copy_bandwidth(),
                                                      benchmark::Counter::kIsRate);
  state.counters["samples"] = static_cast<double>(samples);
}

}  // namespace

/// The fused per-sample pass alone (validation, moments, counts, ECE bins): the part every variant shares.
void bm_sample_pass(benchmark::State& state) {
  namespace d = qprob::metrics::detail;
  qprob::stream st;
  const auto& s = task();
  const m::device_choice_scores_storage ds(s.view(), st);
  const m::device_choice_scores v = ds.view();
  const int grid = d::sample_pass_grid(v.n, m::scoring::sum, v.char_len != nullptr);
  qprob::device_buffer<double> dpart(static_cast<std::int64_t>(d::d_fields) * grid, st), dres(d::d_fields, st);
  qprob::device_buffer<long long> ipart(static_cast<std::int64_t>(d::i_fields) * grid, st), ires(d::i_fields, st);
  const d::sample_pass_params p{v, m::scoring::sum, 15, m::bin_edges::upper_closed, nullptr, dpart.data(), ipart.data()};
  qprob::bench::time_iterations(state, st, [&] { QPROB_CUDA_TRY(d::launch_sample_pass(p, grid, dres.data(), ires.data(), st)); });
  const double bytes = static_cast<double>(samples) * (8 + 4) + static_cast<double>(samples * choices) * (8 + 4) + 8;
  qprob::bench::report_bandwidth(state, bytes);
  state.counters["frac_of_copy"] = benchmark::Counter(bytes * static_cast<double>(state.iterations()) / qprob::bench::measured_copy_bandwidth(),
                                                      benchmark::Counter::kIsRate);
}

BENCHMARK(bm_sample_pass)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(bm_model_metrics, ace_nixon, m::ace_variant::nixon)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(bm_model_metrics, ace_equal_mass_top_label, m::ace_variant::equal_mass_top_label)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(bm_model_metrics, ace_uniform_average, m::ace_variant::uniform_average)->UseManualTime()->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
