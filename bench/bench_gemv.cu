// SPDX-License-Identifier: Apache-2.0
// Fused int GEMV (quant/gemv.cuh) and prefill GEMM (quant/gemm.cuh) against cuBLAS fp16 on the same shapes,
// same process: y (M x N) = x (M x K) W^T at Llama-2-7B's 4096 x 11008 (up/gate), 11008 x 4096 (down) and
// 4096 x 4096 (q/k/v/o). GEMV (M = 1..16) counters: GB/s of the bytes each must read (int4: packed codes +
// scales + zeros + x; cuBLAS: the fp16 weight + x), frac_of_copy (over the device copy bandwidth measured here).
// GEMM (M >= 512) counters: TFLOP/s (2 M N K). tools/gpu_summary.py divides the cuBLAS time by the int time of
// the same shape from this one run (the issue's goals: >= 3.5x for 1-16 rows, >= 0.8x for M >= 512). L2 is
// flushed before every iteration (bench_common.hpp: by reading; QPROB_BENCH_FLUSH=write for cudaMemset).
// BM_read_roofline streams the int4 GEMV's bytes with a plain read: the bound on any GEMV's time.
//
//   bench_gemv --benchmark_min_time=0.2s
#include <qprob/core/cublas.hpp>
#include <qprob/policy/presets.hpp>
#include <qprob/quant/act_order.cuh>
#include <qprob/quant/gemm.cuh>
#include <qprob/quant/gemv.cuh>
#include <qprob/quant/rtn.cuh>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include "bench_common.hpp"

namespace {

namespace p = qprob::policies;

/// count normal(0, 0.02) halves for `seed`; cached, since every benchmark of a shape asks for the same weights
/// (generating 45M values on the host takes longer than the benchmark itself).
const std::vector<qprob::half_t>& random_half(std::int64_t count, std::uint64_t seed) {
  static std::map<std::pair<std::int64_t, std::uint64_t>, std::vector<qprob::half_t>> cache;
  auto& v = cache[{count, seed}];
  if (v.empty()) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> g(0.0f, 0.02f);
    v.resize(static_cast<std::size_t>(count));
    for (auto& x : v) {
      x = qprob::to_half(g(rng));
    }
  }
  return v;
}

/// y (m x n) = x (m x k) w^T with cuBLAS fp16 (float32 accumulation), as the engine calls it.
void cublas_product(qprob::cublas_handle& blas, const qprob::half_t* w, const qprob::half_t* x, qprob::half_t* y, std::int64_t m,
                    std::int64_t n, std::int64_t k) {
  const float alpha = 1.0f, beta = 0.0f;
  QPROB_CUBLAS_TRY(cublasGemmEx(blas.get(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha,
                                w, CUDA_R_16F, static_cast<int>(k), x, CUDA_R_16F, static_cast<int>(k), &beta, y, CUDA_R_16F,
                                static_cast<int>(n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

/// Whether two fp16 results agree within 2e-3 relative to max(1, |reference|) (the checks before timing).
bool agree(const qprob::device_buffer<qprob::half_t>& got, const qprob::device_buffer<qprob::half_t>& reference) {
  const auto a = got.to_host(), b = reference.to_host();
  for (std::size_t i = 0; i < a.size(); ++i) {
    const float u = qprob::to_float(a[i]), v = qprob::to_float(b[i]);
    if (!(std::fabs(u - v) <= 2e-3f * std::max(1.0f, std::fabs(v)))) {
      return false;
    }
  }
  return true;
}

void BM_cublas_fp16(benchmark::State& state) {
  const auto m = state.range(0), n = state.range(1), k = state.range(2);
  qprob::stream s;
  qprob::cublas_handle blas(s.get());
  const auto &hw = random_half(n * k, 1), &hx = random_half(m * k, 2);
  qprob::device_buffer<qprob::half_t> w(std::span<const qprob::half_t>(hw), s), x(std::span<const qprob::half_t>(hx), s);
  qprob::device_buffer<qprob::half_t> y(m * n, s);
  qprob::bench::time_iterations(state, s, [&] { cublas_product(blas, w.data(), x.data(), y.data(), m, n, k); });
  const double bytes = static_cast<double>(n * k + m * k + m * n) * 2.0;
  state.counters["GB/s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["frac_of_copy"] =
      benchmark::Counter(bytes / qprob::bench::measured_copy_bandwidth(), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["TFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(m * n * k) / 1e12, benchmark::Counter::kIsIterationInvariantRate);
}

/// The same cuBLAS call at prefill shapes (a separate name, so the summary pairs it with int_gemm).
void BM_cublas_fp16_gemm(benchmark::State& state) { BM_cublas_fp16(state); }

/// x (m x k) and the RTN codes of a random n x k weight under P, on the device: the inputs of one GEMV benchmark.
template <class P>
struct gemv_inputs {
  qprob::device_buffer<qprob::half_t> x;
  qprob::device_buffer<std::uint32_t> q;
  qprob::device_buffer<qprob::half_t> sc;
  qprob::device_buffer<std::uint8_t> z;
  std::int64_t m, n, k;

  gemv_inputs(std::int64_t rows, std::int64_t cols, std::int64_t depth, qprob::stream& s)
      : x(std::span<const qprob::half_t>(random_half(rows * depth, 2)), s), q(P::packed_words(depth) * cols, s),
        sc(P::groups(depth) * cols, s), z(P::groups(depth) * cols, s), m(rows), n(cols), k(depth) {
    const qprob::device_buffer<qprob::half_t> w(std::span<const qprob::half_t>(random_half(n * k, 1)), s);
    qprob::quant::rtn_quantize<P>(w.view(n, k), q.view(P::packed_words(k), n), sc.view(P::groups(k), n), z.view(P::groups(k), n), s);
    s.synchronize();  // w is freed on return
  }
  /// int_gemv's default launch into y (m x n) with workspace ws.
  void int_gemv(qprob::device_buffer<qprob::half_t>& y, qprob::device_buffer<float>& ws, cudaStream_t st) const {
    qprob::quant::int_gemv<P>(x.view(m, k), q.view(P::packed_words(k), n), sc.view(P::groups(k), n), z.view(P::groups(k), n), nullptr,
                              y.view(m, n), ws.data(), st);
  }
  /// Bytes an int GEMV of rows x (cols x depth) must read: codes, scales, zero points (one byte each), x.
  static std::int64_t read_bytes(std::int64_t rows, std::int64_t cols, std::int64_t depth) {
    return P::packed_words(depth) * cols * 4 + P::groups(depth) * cols * 3 + rows * depth * 2;
  }
  /// Bytes an int GEMV must read and write.
  [[nodiscard]] double bytes() const { return static_cast<double>(read_bytes(m, n, k) + m * n * 2); }
};

template <class P>
void BM_int_gemv(benchmark::State& state) {
  const auto m = state.range(0), n = state.range(1), k = state.range(2);
  qprob::stream s;
  const gemv_inputs<P> in(m, n, k, s);
  qprob::device_buffer<qprob::half_t> y(m * n, s);
  qprob::device_buffer<float> ws(qprob::quant::int_gemv_workspace<P>(m, k, n), s);
  qprob::bench::time_iterations(state, s, [&] { in.int_gemv(y, ws, s); });
  state.counters["GB/s"] = benchmark::Counter(in.bytes(), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["frac_of_copy"] =
      benchmark::Counter(in.bytes() / qprob::bench::measured_copy_bandwidth(), benchmark::Counter::kIsIterationInvariantRate);
}

/// The memory roofline of a GEMV: the time to stream the same bytes as the int4 g128 GEMV of this shape reads
/// (codes, scales, zeros, x), with a plain vectorized read (qprob::bench::l2_read_kernel) from a cold L2, `blocks
/// per SM` (4th argument) blocks of 256 threads. No GEMV over these bytes can take less; the empty launch
/// (BM_empty_launch) is the fixed cost in every timed iteration.
void BM_read_roofline(benchmark::State& state) {
  using P      = p::int4_g128;
  const auto m = state.range(0), n = state.range(1), k = state.range(2);
  const auto bytes = (gemv_inputs<P>::read_bytes(m, n, k) + 15) / 16 * 16;
  qprob::stream s;
  qprob::device_buffer<std::uint8_t> buf(bytes, s);
  qprob::device_buffer<unsigned> sink(1, s);
  buf.fill_bytes(1);
  const auto blocks = static_cast<unsigned>(state.range(3) * qprob::current_device_info().sm_count);
  qprob::bench::time_iterations(state, s, [&] {
    qprob::bench::l2_read_kernel<<<blocks, 256, 0, s.get()>>>(reinterpret_cast<const uint4*>(buf.data()), bytes / 16, sink.data());
  });
  state.counters["GB/s"] = benchmark::Counter(static_cast<double>(bytes), benchmark::Counter::kIsIterationInvariantRate);
}

/// An empty kernel, timed like every benchmark here (events around one launch after the L2 flush).
__global__ void empty_kernel() {}
void BM_empty_launch(benchmark::State& state) {
  qprob::stream s;
  qprob::bench::time_iterations(state, s, [&] { empty_kernel<<<1, 32, 0, s.get()>>>(); });
}

/// The tensor-core kernel with explicit launch shape (warps per block, word rows per lane and stage, the
/// occupancy its registers are fitted to), to choose int_gemv's defaults from measurements: rows <= 8 use
/// XGroups 1, rows <= 16 XGroups 2.
template <int XGroups, int Warps, int Unroll, int MinBlocks>
void BM_int4_gemv_variant(benchmark::State& state) {
  using P    = p::int4_g128;
  const auto m = state.range(0), n = state.range(1), k = state.range(2);
  if (m > 8 * XGroups) {
    state.SkipWithError("rows above the variant's XGroups");
    return;
  }
  qprob::stream s;
  const gemv_inputs<P> in(m, n, k, s);
  qprob::device_buffer<qprob::half_t> y(m * n, s), y_ref(m * n, s);
  qprob::device_buffer<float> ws(qprob::quant::int_gemv_workspace<P>(m, k, n), s);
  const auto run = [&] {
    qprob::quant::gemv_detail::launch_gemv_mma<P, XGroups, Warps, Unroll, MinBlocks>(in.x.data(), k, static_cast<int>(m), in.q.data(),
                                                                                     in.sc.data(), in.z.data(), static_cast<int>(k),
                                                                                     static_cast<int>(n), y.data(), n, s.get());
  };
  // Checked against int_gemv's default launch before timing: the two differ only in how K is split over warps
  // (float32 partial sums, one fp16 rounding), far inside 2e-3 relative; a wrong variant is reported, not timed.
  run();
  in.int_gemv(y_ref, ws, s);
  if (!agree(y, y_ref)) {
    state.SkipWithError("variant disagrees with int_gemv");
    return;
  }
  qprob::bench::time_iterations(state, s, run);
  state.counters["GB/s"] = benchmark::Counter(in.bytes(), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["frac_of_copy"] =
      benchmark::Counter(in.bytes() / qprob::bench::measured_copy_bandwidth(), benchmark::Counter::kIsIterationInvariantRate);
}

/// Act-order (GPTQ desc_act g_idx: a random column permutation, exactly group-size columns per group): Reordered
/// = 0 runs int_gemv with g_idx (its generic path, a group lookup per column); 1 reorders the codes by group once
/// (order_codes_by_group, not timed) and times the gather of x's columns plus the tensor-core path. Both are
/// checked against each other before timing.
template <int Reordered>
void BM_int4_gemv_act_order(benchmark::State& state) {
  using P      = p::int4_g128_act;
  const auto m = state.range(0), n = state.range(1), k = state.range(2);
  qprob::stream s;
  const gemv_inputs<P> in(m, n, k, s);
  std::vector<std::int32_t> perm(static_cast<std::size_t>(k)), g_idx(static_cast<std::size_t>(k));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937_64(3));
  for (std::int64_t i = 0; i < k; ++i) {
    g_idx[static_cast<std::size_t>(perm[static_cast<std::size_t>(i)])] = static_cast<std::int32_t>(i / P::group_width(k));
  }
  const qprob::device_buffer<std::int32_t> d_g(std::span<const std::int32_t>(g_idx), s);
  const auto qv = in.q.view(P::packed_words(k), n);
  const auto sv = in.sc.view(P::groups(k), n);
  const auto zv = in.z.view(P::groups(k), n);
  const auto ordered = qprob::quant::order_codes_by_group<P>(qv, g_idx, s);
  qprob::device_buffer<qprob::half_t> y(m * n, s), y_ref(m * n, s);
  qprob::device_buffer<float> ws(qprob::quant::int_gemv_workspace<P>(m, k, n), s);
  const auto generic = [&](qprob::device_buffer<qprob::half_t>& out) {
    qprob::quant::int_gemv<P>(in.x.view(m, k), qv, sv, zv, d_g.data(), out.view(m, n), ws.data(), s);
  };
  const auto reordered = [&](qprob::device_buffer<qprob::half_t>& out) {
    const auto xg = qprob::quant::gather_columns(in.x.view(m, k), ordered.order.data(), s);
    qprob::quant::int_gemv<P>(std::as_const(xg).view(m, k), std::as_const(ordered.qweight).view(P::packed_words(k), n), sv, zv, nullptr,
                              out.view(m, n), ws.data(), s);
  };
  generic(y_ref);
  reordered(y);
  if (!agree(y, y_ref)) {
    state.SkipWithError("reordered act-order GEMV disagrees with the g_idx path");
    return;
  }
  qprob::bench::time_iterations(state, s, [&] { Reordered ? reordered(y) : generic(y); });
  state.counters["GB/s"] = benchmark::Counter(in.bytes(), benchmark::Counter::kIsIterationInvariantRate);
}

/// The fused prefill GEMM (int_gemm on the repacked weight, `Stages` shared-memory stages, tiles of `Rows` rows of x
/// or, for 0, the tiles int_gemm chooses for the shape; `Split`: with a gemm_workspace, so that the tiles past the
/// last whole wave may be split over K), checked before timing against cuBLAS on the dequantized weights (the
/// same fp16 operands; float32 accumulation in a different order, one fp16 rounding each: far inside 2e-3
/// relative to max(1, |y|) at these magnitudes); a disagreeing kernel is reported, not timed. The counters give
/// the plan (tile rows, tiles computed whole, parts per split tile).
template <class P, int Stages, int Rows, bool Split>
void BM_int_gemm(benchmark::State& state) {
  const auto m = state.range(0), n = state.range(1), k = state.range(2);
  qprob::stream s;
  const gemv_inputs<P> in(m, n, k, s);
  const auto qv = in.q.view(P::packed_words(k), n);
  const auto sv = in.sc.view(P::groups(k), n);
  const auto zv = in.z.view(P::groups(k), n);
  if (!qprob::quant::mma_layout_supported<P>(n, k) || !qprob::quant::int_gemm_device_supported()) {
    state.SkipWithError("int_gemm does not support this device or shape");
    return;
  }
  const auto mw = qprob::quant::repack_for_mma<P>(qv, sv, zv, {}, s);
  qprob::device_buffer<qprob::half_t> y(m * n, s), y_ref(m * n, s), w(n * k, s);
  qprob::cublas_handle blas(s.get());
  qprob::quant::dequantize<P>(qv, sv, zv, nullptr, w.view(n, k), s);
  cublas_product(blas, w.data(), in.x.data(), y_ref.data(), m, n, k);
  qprob::quant::gemm_workspace workspace;
  if (Split) {
    workspace = qprob::quant::gemm_workspace(s.get());
  }
  const auto run = [&] {
    qprob::quant::int_gemm<P, Stages, qprob::half_t, Rows>(in.x.view(m, k), mw, y.view(m, n), s, false, Split ? &workspace : nullptr);
  };
  run();
  if (!agree(y, y_ref)) {
    state.SkipWithError("int_gemm disagrees with cuBLAS on the dequantized weight");
    return;
  }
  qprob::bench::time_iterations(state, s, run);
  state.counters["TFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(m * n * k) / 1e12, benchmark::Counter::kIsIterationInvariantRate);
  const auto plan = qprob::quant::gemm_detail::plan_gemm(m, n, k, qprob::quant::gemm_detail::current_device_sms().sms, Split, Rows);
  state.counters["rows"]  = plan.rows;
  state.counters["whole"] = plan.grid.whole;
  state.counters["parts"] = plan.grid.parts;
}

/// The fallback the engine uses without int_gemm: dequantize to fp16, then cuBLAS.
template <class P>
void BM_dequant_cublas(benchmark::State& state) {
  const auto m = state.range(0), n = state.range(1), k = state.range(2);
  qprob::stream s;
  const gemv_inputs<P> in(m, n, k, s);
  qprob::device_buffer<qprob::half_t> y(m * n, s), w(n * k, s);
  qprob::cublas_handle blas(s.get());
  qprob::bench::time_iterations(state, s, [&] {
    qprob::quant::dequantize<P>(in.q.view(P::packed_words(k), n), in.sc.view(P::groups(k), n), in.z.view(P::groups(k), n), nullptr,
                                w.view(n, k), s);
    cublas_product(blas, w.data(), in.x.data(), y.data(), m, n, k);
  });
  state.counters["TFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(m * n * k) / 1e12, benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

#define QPROB_GEMV_VARIANT_SHAPES(B) \
  B->Args({1, 11008, 4096})->Args({1, 4096, 11008})->Args({8, 11008, 4096})->Args({16, 11008, 4096})->UseManualTime()->Unit(benchmark::kMicrosecond)
QPROB_GEMV_VARIANT_SHAPES(BENCHMARK_TEMPLATE(BM_int4_gemv_variant, 1, 8, 2, 3));
QPROB_GEMV_VARIANT_SHAPES(BENCHMARK_TEMPLATE(BM_int4_gemv_variant, 1, 8, 4, 3));
QPROB_GEMV_VARIANT_SHAPES(BENCHMARK_TEMPLATE(BM_int4_gemv_variant, 1, 8, 2, 4));
QPROB_GEMV_VARIANT_SHAPES(BENCHMARK_TEMPLATE(BM_int4_gemv_variant, 1, 4, 4, 6));
QPROB_GEMV_VARIANT_SHAPES(BENCHMARK_TEMPLATE(BM_int4_gemv_variant, 1, 16, 4, 1));
QPROB_GEMV_VARIANT_SHAPES(BENCHMARK_TEMPLATE(BM_int4_gemv_variant, 1, 16, 2, 2));
QPROB_GEMV_VARIANT_SHAPES(BENCHMARK_TEMPLATE(BM_int4_gemv_variant, 2, 8, 1, 3));
QPROB_GEMV_VARIANT_SHAPES(BENCHMARK_TEMPLATE(BM_int4_gemv_variant, 2, 8, 2, 3));
QPROB_GEMV_VARIANT_SHAPES(BENCHMARK_TEMPLATE(BM_int4_gemv_variant, 2, 8, 2, 2));
QPROB_GEMV_VARIANT_SHAPES(BENCHMARK_TEMPLATE(BM_int4_gemv_variant, 2, 16, 2, 1));

#define QPROB_GEMV_SHAPES(B)                                                                                      \
  B->Args({1, 11008, 4096})->Args({4, 11008, 4096})->Args({8, 11008, 4096})->Args({16, 11008, 4096})            \
      ->Args({1, 4096, 11008})->Args({16, 4096, 11008})->UseManualTime()->Unit(benchmark::kMicrosecond)
QPROB_GEMV_SHAPES(BENCHMARK(BM_cublas_fp16));
BENCHMARK(BM_read_roofline)->Args({1, 11008, 4096, 2})->Args({1, 11008, 4096, 4})->Args({1, 11008, 4096, 8})->Args({16, 11008, 4096, 4})
    ->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_empty_launch)->UseManualTime()->Unit(benchmark::kMicrosecond);
QPROB_GEMV_SHAPES(BENCHMARK_TEMPLATE(BM_int_gemv, p::int4_g128));
QPROB_GEMV_SHAPES(BENCHMARK_TEMPLATE(BM_int_gemv, p::int8_g128));

BENCHMARK_TEMPLATE(BM_int4_gemv_act_order, 0)->Args({1, 11008, 4096})->Args({16, 11008, 4096})->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_int4_gemv_act_order, 1)->Args({1, 11008, 4096})->Args({16, 11008, 4096})->UseManualTime()->Unit(benchmark::kMicrosecond);

#define QPROB_GEMM_SHAPES(B)                                                                                       \
  B->Args({512, 11008, 4096})->Args({512, 4096, 11008})->Args({512, 4096, 4096})->Args({1024, 11008, 4096})       \
      ->Args({2048, 11008, 4096})->Args({2048, 4096, 11008})->Args({4096, 4096, 4096})->UseManualTime()->Unit(benchmark::kMicrosecond)
QPROB_GEMM_SHAPES(BENCHMARK(BM_cublas_fp16_gemm));
QPROB_GEMM_SHAPES(BENCHMARK_TEMPLATE(BM_int_gemm, p::int4_g128, 5, 0, true));    // the plan int_gemm chooses, with a workspace
QPROB_GEMM_SHAPES(BENCHMARK_TEMPLATE(BM_int_gemm, p::int4_g128, 5, 0, false));   // and without (as the engine calls it)
QPROB_GEMM_SHAPES(BENCHMARK_TEMPLATE(BM_int_gemm, p::int4_g128, 5, 128, true));  // each tile shape at every size
QPROB_GEMM_SHAPES(BENCHMARK_TEMPLATE(BM_int_gemm, p::int4_g128, 5, 256, true));
QPROB_GEMM_SHAPES(BENCHMARK_TEMPLATE(BM_int_gemm, p::int4_g128, 5, 128, false));
QPROB_GEMM_SHAPES(BENCHMARK_TEMPLATE(BM_int_gemm, p::int4_g128, 5, 256, false));
QPROB_GEMM_SHAPES(BENCHMARK_TEMPLATE(BM_int_gemm, p::int8_g128, 5, 0, true));
QPROB_GEMM_SHAPES(BENCHMARK_TEMPLATE(BM_dequant_cublas, p::int4_g128));

BENCHMARK_MAIN();
