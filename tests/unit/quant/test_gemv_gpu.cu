// SPDX-License-Identifier: Apache-2.0
// int_gemv (quant/gemv.cuh) against a double-precision host product with the host-dequantized fp16 weights
// (reference::rtn_quantize codes; scale * (code - zero) rounded to fp16, as the engine's dequantized forward
// uses them): every row count 1..16, both kernels (tensor cores: 2/4/8 bits, natural groups, N % 4 == 0; generic:
// 3 bits, act-order g_idx, odd N), N with a partial 32-column tile, K with a partial last group, several
// split-K slices and a partial last chunk of word rows. Outputs are poisoned first.
// Tolerance: tests/unit/quant/product_check.hpp.
#include <qprob/policy/presets.hpp>
#include <qprob/quant/act_order.cuh>
#include <qprob/quant/gemv.cuh>
#include <qprob/reference/rtn.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <algorithm>
#include <numeric>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include "product_check.hpp"
#include "support.hpp"

namespace p = qprob::policies;

namespace {

template <class P>
void check_policy(std::mt19937_64& rng, std::int64_t n, std::int64_t k, bool shuffled_groups,
                  qprob::quant::int_gemv_path expected) {
  std::normal_distribution<double> nd(0.0, 1.0);
  std::vector<qprob::half_t> w(static_cast<std::size_t>(n * k));
  for (auto& v : w) {
    v = qprob::to_half(0.05 * nd(rng));
  }
  auto q = qprob::reference::rtn_quantize<P, qprob::half_t>(qprob::make_host_view(w.data(), n, k));
  std::vector<std::int32_t> g_idx;
  if (shuffled_groups) {  // act-order style: any valid group per input column
    std::uniform_int_distribution<std::int32_t> g(0, static_cast<std::int32_t>(P::groups(k) - 1));
    for (std::int64_t i = 0; i < k; ++i) {
      g_idx.push_back(g(rng));
    }
  }
  const auto deq = qprob::test::dequantized_weight<P>(q, n, k, g_idx);
  cudaStream_t s = nullptr;
  qprob::device_buffer<std::uint32_t> d_q(std::span<const std::uint32_t>(q.qweight), s);
  qprob::device_buffer<qprob::half_t> d_s(std::span<const qprob::half_t>(q.scales), s);
  qprob::device_buffer<std::uint8_t> d_z(std::span<const std::uint8_t>(q.zeros), s);
  qprob::device_buffer<std::int32_t> d_g(std::span<const std::int32_t>(g_idx), s);
  for (std::int64_t rows = 1; rows <= 16; rows += (rows < 4 ? 1 : 5)) {
    std::vector<qprob::half_t> x(static_cast<std::size_t>(rows * k));
    for (auto& v : x) {
      v = qprob::to_half(nd(rng));
    }
    qprob::device_buffer<qprob::half_t> d_x(std::span<const qprob::half_t>(x), s);
    qprob::device_buffer<qprob::half_t> d_y(rows * n, s);
    d_y.fill_bytes(0xff);  // NaN: unwritten outputs fail
    qprob::device_buffer<float> ws(qprob::quant::int_gemv_workspace<P>(rows, k, n), s);
    const auto xv = std::as_const(d_x).view(rows, k);
    const auto qv = std::as_const(d_q).view(P::packed_words(k), n);
    const auto sv = std::as_const(d_s).view(P::groups(k), n);
    const auto zv = std::as_const(d_z).view(P::groups(k), n);
    const auto* gv = g_idx.empty() ? nullptr : d_g.data();
    CHECK(qprob::quant::int_gemv_path_for<P>(xv, qv, sv, zv, gv) == expected);
    qprob::quant::int_gemv<P>(xv, qv, sv, zv, gv, d_y.view(rows, n), ws.data(), s);
    const auto y = d_y.to_host();
    double worst    = 0;
    const auto bad  = qprob::test::product_errors(x, k, deq, y, rows, n, k, worst);
    CAPTURE(qprob::policy_name<P>());
    CAPTURE(rows);
    CAPTURE(n);
    CAPTURE(k);
    CAPTURE(worst);
    CHECK(bad == 0);
  }
}

}  // namespace

TEST_CASE("int_gemv equals the dequantized product for 1-16 rows, every bit width, odd shapes and act-order groups") {
  auto rng = qprob::test::make_rng(0x6e3f);
  INFO("seed ", qprob::test::run_seed());
  constexpr auto tc = qprob::quant::int_gemv_path::tensor_cores;
  constexpr auto generic = qprob::quant::int_gemv_path::generic;
  // Tensor cores: 8-warp blocks (>= 256 column tiles) and 16-warp blocks; partial tiles, groups, word-row chunks.
  check_policy<p::int4_g128>(rng, 8196, 264, false, tc);   // 257 tiles, the last with one lane's 4 columns
  check_policy<p::int4_g128>(rng, 520, 2504, false, tc);   // partial tile (8 of 32), partial group, 313 word rows
  check_policy<p::int4_g128_asym>(rng, 256, 1024, false, tc);
  check_policy<p::int4_g32>(rng, 64, 1056, false, tc);
  check_policy<p::int4_pc>(rng, 36, 520, false, tc);
  check_policy<p::int8_g128>(rng, 100, 1100, false, tc);   // 4 codes per word: one mma step per word
  check_policy<p::int2_g64>(rng, 40, 704, false, tc);      // 16 codes per word: four mma steps per word
  // Generic: odd N, 3 bits, act-order.
  check_policy<p::int4_g128>(rng, 257, 2500, false, generic);  // 3 slices, partial last group, odd N
  check_policy<p::int4_g128_asym>(rng, 130, 1000, false, generic);
  check_policy<p::int4_g128_act>(rng, 96, 1536, true, generic);
  check_policy<p::int3_g128>(rng, 75, 1312, false, generic);  // 3-bit: pack blocks of 32 codes in 3 words
  check_policy<p::int8_g128>(rng, 50, 1100, false, generic);
}

TEST_CASE("act-order weights reordered once by group take the tensor-core path (order_codes_by_group + gather_columns)") {
  using P  = p::int4_g128_act;
  auto rng = qprob::test::make_rng(0x6e41);
  INFO("seed ", qprob::test::run_seed());
  const std::int64_t n = 264, k = 1000;  // a partial last group (1000 = 7 x 128 + 104)
  std::normal_distribution<double> nd(0.0, 1.0);
  std::vector<qprob::half_t> w(static_cast<std::size_t>(n * k));
  for (auto& v : w) {
    v = qprob::to_half(0.05 * nd(rng));
  }
  const auto q = qprob::reference::rtn_quantize<P, qprob::half_t>(qprob::make_host_view(w.data(), n, k));
  std::vector<std::int32_t> perm(static_cast<std::size_t>(k)), g_idx(static_cast<std::size_t>(k));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  for (std::int64_t i = 0; i < k; ++i) {  // GPTQ's act-order: column perm[i] belongs to group i / group_size
    g_idx[static_cast<std::size_t>(perm[static_cast<std::size_t>(i)])] = static_cast<std::int32_t>(i / P::group_width(k));
  }
  const auto deq = qprob::test::dequantized_weight<P>(q, n, k, g_idx);
  cudaStream_t s = nullptr;
  qprob::device_buffer<std::uint32_t> d_q(std::span<const std::uint32_t>(q.qweight), s);
  qprob::device_buffer<qprob::half_t> d_s(std::span<const qprob::half_t>(q.scales), s);
  qprob::device_buffer<std::uint8_t> d_z(std::span<const std::uint8_t>(q.zeros), s);
  const auto ordered = qprob::quant::order_codes_by_group<P>(std::as_const(d_q).view(P::packed_words(k), n), g_idx, s);
  const auto qv      = std::as_const(ordered.qweight).view(P::packed_words(k), n);
  const auto sv      = std::as_const(d_s).view(P::groups(k), n);
  const auto zv      = std::as_const(d_z).view(P::groups(k), n);
  for (std::int64_t rows : {1, 7, 16}) {
    std::vector<qprob::half_t> x(static_cast<std::size_t>(rows * k));
    for (auto& v : x) {
      v = qprob::to_half(nd(rng));
    }
    qprob::device_buffer<qprob::half_t> d_x(std::span<const qprob::half_t>(x), s);
    const auto xg = qprob::quant::gather_columns(std::as_const(d_x).view(rows, k), ordered.order.data(), s);
    const auto xv = std::as_const(xg).view(rows, k);
    qprob::device_buffer<qprob::half_t> d_y(rows * n, s);
    d_y.fill_bytes(0xff);
    qprob::device_buffer<float> ws(qprob::quant::int_gemv_workspace<P>(rows, k, n), s);
    CHECK(qprob::quant::int_gemv_path_for<P>(xv, qv, sv, zv, nullptr) == qprob::quant::int_gemv_path::tensor_cores);
    qprob::quant::int_gemv<P>(xv, qv, sv, zv, nullptr, d_y.view(rows, n), ws.data(), s);
    double worst   = 0;
    const auto bad = qprob::test::product_errors(x, k, deq, d_y.to_host(), rows, n, k, worst);
    CAPTURE(rows);
    CAPTURE(worst);
    CHECK(bad == 0);
  }
  // g_idx that GPTQ cannot have written (uneven groups) is refused with the reason
  std::vector<std::int32_t> uneven(static_cast<std::size_t>(k), 0);
  CHECK_THROWS_AS((void)qprob::quant::order_codes_by_group<P>(std::as_const(d_q).view(P::packed_words(k), n), uneven, s),
                  qprob::invalid_argument);
}
