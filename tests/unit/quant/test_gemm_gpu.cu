// SPDX-License-Identifier: Apache-2.0
// int_gemm (quant/gemm.cuh, the fused prefill GEMM on wgmma, weights repacked by repack_for_mma) against a
// double-precision host product with the host-dequantized fp16 weights (reference::rtn_quantize codes; scale *
// (code - zero) rounded to fp16, as the engine's dequantized forward uses them): 4 and 8 bits, symmetric and
// asymmetric, groups 32 / 64 / 128 / per channel, act-order g_idx (every group exactly group-width columns, in a
// random order, as GPTQ writes them), M and N with partial 128-tiles (M = 1, 77, 300; N = 136, 1000), K of one
// to many 64-wide k tiles (the pipeline's prologue, steady state and drain, both register sets), a row stride
// larger than K; fp16 and float32 outputs, the latter also accumulated onto existing values (the engine's residual
// stream); both tile shapes (128 rows of x per block on m64n128, 256 on m64n256: partial row tiles of 1, 44 and
// 125 rows); tails split over K (2-4 parts of 1-16 k tiles, partly or wholly split grids, int_gemm's own plan
// with a workspace), run twice for the same bits and leaving the arrival counters zero. Outputs are poisoned
// first.
//
// Tolerance (tests/unit/quant/product_check.hpp): float32 accumulation and one fp16 rounding, |y - y_ref| <=
// 2^-10 |y_ref| + 1e-4 rms(y_ref); a wrong swizzle, descriptor, k step, code, scale, zero, group or fragment
// position gives errors of order rms(y) / sqrt(K) or more.
#include <qprob/core/device_buffer.hpp>
#include <qprob/policy/presets.hpp>
#include <qprob/quant/gemm.cuh>
#include <qprob/reference/rtn.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <cstdint>
#include <algorithm>
#include <numeric>
#include <random>
#include <span>
#include <stdexcept>
#include <utility>
#include <vector>

#include "product_check.hpp"
#include "support.hpp"

namespace p = qprob::policies;

namespace {

/// How check_gemm multiplies: int_gemm without a workspace (never split), int_gemm with one (its own plan, split
/// where the device's SM count makes the tail worth splitting), or one launch on a given grid (`whole` tiles
/// whole, the others in `parts` parts) with the test's own scratch, which must be left with zero counters.
struct split_case {
  enum { none, workspace, forced } mode = none;
  int whole = 0, parts = 1;
};

/// int_gemm's operands: a random (N, K) weight (entries 0.05 N(0, 1)) RTN-quantized under P, with act-order a
/// random GPTQ g_idx, repacked for int_gemm, and a random x of M rows `ldx` apart, on the device (stream 0).
template <class P>
struct gemm_operands {
  std::int64_t m, n, k, ldx;
  qprob::reference::quantized_weight q;
  std::vector<std::int32_t> g_idx;
  std::vector<qprob::half_t> x;
  qprob::device_buffer<std::uint32_t> d_q;
  qprob::device_buffer<qprob::half_t> d_s;
  qprob::device_buffer<std::uint8_t> d_z;
  qprob::device_buffer<qprob::half_t> d_x;
  qprob::quant::mma_weight<P> mw;

  gemm_operands(std::mt19937_64& rng, std::int64_t m_, std::int64_t n_, std::int64_t k_, std::int64_t ldx_, bool act_order)
      : m(m_), n(n_), k(k_), ldx(ldx_), q(quantized(rng, n_, k_)), g_idx(act_order ? random_g_idx(rng, k_) : std::vector<std::int32_t>{}),
        x(normal(rng, m_ * ldx_)), d_q(std::span<const std::uint32_t>(q.qweight), nullptr),
        d_s(std::span<const qprob::half_t>(q.scales), nullptr), d_z(std::span<const std::uint8_t>(q.zeros), nullptr),
        d_x(std::span<const qprob::half_t>(x), nullptr) {
    REQUIRE(qprob::quant::mma_layout_supported<P>(n, k, g_idx));
    mw = qprob::quant::repack_for_mma<P>(std::as_const(d_q).view(P::packed_words(k), n), std::as_const(d_s).view(P::groups(k), n),
                                         std::as_const(d_z).view(P::groups(k), n), g_idx, nullptr);
  }
  [[nodiscard]] qprob::device_view<const qprob::half_t, 2> xv() const {
    return qprob::device_view<const qprob::half_t, 2>(d_x.data(), {m, k}, {ldx, 1});
  }

private:
  static std::vector<qprob::half_t> normal(std::mt19937_64& rng, std::int64_t count, double scale = 1.0) {
    std::normal_distribution<double> nd(0.0, 1.0);
    std::vector<qprob::half_t> v(static_cast<std::size_t>(count));
    for (auto& e : v) {
      e = qprob::to_half(scale * nd(rng));
    }
    return v;
  }
  static qprob::reference::quantized_weight quantized(std::mt19937_64& rng, std::int64_t n, std::int64_t k) {
    const auto w = normal(rng, n * k, 0.05);
    return qprob::reference::rtn_quantize<P, qprob::half_t>(qprob::make_host_view(w.data(), n, k));
  }
  // GPTQ's act-order: column perm[i] belongs to group i / group_width
  static std::vector<std::int32_t> random_g_idx(std::mt19937_64& rng, std::int64_t k) {
    std::vector<std::int32_t> perm(static_cast<std::size_t>(k)), g(static_cast<std::size_t>(k));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    for (std::int64_t i = 0; i < k; ++i) {
      g[static_cast<std::size_t>(perm[static_cast<std::size_t>(i)])] = static_cast<std::int32_t>(i / P::group_width(k));
    }
    return g;
  }
};

template <class P, int Stages = 4, int Rows = 128>
void check_gemm(std::mt19937_64& rng, std::int64_t m, std::int64_t n, std::int64_t k, std::int64_t ldx, bool act_order = false,
                split_case split = {}) {
  std::normal_distribution<double> nd(0.0, 1.0);
  const gemm_operands<P> op(rng, m, n, k, ldx, act_order);
  const auto& x  = op.x;
  const auto& mw = op.mw;
  const auto xv  = op.xv();
  const auto ref = qprob::test::reference_product(x, ldx, qprob::test::dequantized_weight<P>(op.q, n, k, op.g_idx), m, n, k);
  cudaStream_t s = nullptr;
  CAPTURE(qprob::policy_name<P>());
  CAPTURE(Stages);
  CAPTURE(Rows);
  CAPTURE(act_order);
  CAPTURE(m);
  CAPTURE(n);
  CAPTURE(k);
  CAPTURE(split.mode);
  CAPTURE(split.whole);
  CAPTURE(split.parts);
  namespace gd = qprob::quant::gemm_detail;
  qprob::quant::gemm_workspace workspace;
  if (split.mode == split_case::workspace) {
    workspace = qprob::quant::gemm_workspace(s);
  }
  // the forced grid: row tiles x feature tiles, the first `whole` whole, the rest in `parts` parts
  constexpr int rows  = Rows == 0 ? 1 : Rows;  // (unused without a forced grid)
  const int row_tiles = static_cast<int>((m + rows - 1) / rows);
  const int tiles     = row_tiles * static_cast<int>(qprob::quant::mma_layout::padded_features(n) / gd::kBN);
  const gd::gemm_plan plan{Rows, {row_tiles, split.whole, split.parts}, split.whole + (tiles - split.whole) * split.parts};
  qprob::device_buffer<float> partials(split.mode == split_case::forced ? std::int64_t{plan.blocks} * Rows / 2 * gd::kThreads : 0, s);
  qprob::device_buffer<unsigned int> counters(split.mode == split_case::forced ? tiles : 0, s);
  counters.fill_bytes(0);
  const auto multiply = [&]<class OutT>(qprob::device_view<OutT, 2> yv, bool accumulate) {
    if constexpr (Rows != 0) {  // a forced grid names its tile rows
      if (split.mode == split_case::forced) {
        REQUIRE(!act_order);  // x is not gathered on this path
        gd::launch_int_gemm<P, Stages, OutT, Rows>(op.d_x.data(), ldx, m, k, n, mw, yv, s, accumulate, plan,
                                                   gd::split_scratch{partials.data(), counters.data()});
        return;
      }
    }
    REQUIRE(split.mode != split_case::forced);
    qprob::quant::int_gemm<P, Stages, OutT, Rows>(xv, mw, yv, s, accumulate, split.mode == split_case::workspace ? &workspace : nullptr);
  };
  double worst = 0;
  {  // fp16 y, twice: a split tile's sum does not depend on which part arrives last
    qprob::device_buffer<qprob::half_t> d_y(m * n, s);
    d_y.fill_bytes(0xff);  // NaN: unwritten outputs fail
    multiply(d_y.view(m, n), false);
    const auto first = d_y.to_host();
    const auto bad   = qprob::test::count_product_errors(ref, first, worst);
    CAPTURE(worst);
    CHECK(bad == 0);
    d_y.fill_bytes(0xff);
    multiply(d_y.view(m, n), false);
    const auto second = d_y.to_host();
    CHECK(first == second);  // half_t compares bits
  }
  // float32 y, written (over NaN) and accumulated onto random values (the residual stream's epilogue)
  std::vector<float> base(static_cast<std::size_t>(m * n));
  for (auto& v : base) {
    v = static_cast<float>(ref.rms * nd(rng));
  }
  for (const bool accumulate : {false, true}) {
    qprob::device_buffer<float> d_y(m * n, s);
    if (accumulate) {
      d_y = qprob::device_buffer<float>(std::span<const float>(base), s);
    } else {
      d_y.fill_bytes(0xff);
    }
    multiply(d_y.view(m, n), accumulate);
    const auto bad = qprob::test::count_product_errors(ref, d_y.to_host(), worst, accumulate ? base : std::vector<float>{});
    CAPTURE(accumulate);
    CAPTURE(worst);
    CHECK(bad == 0);
  }
  if (split.mode == split_case::forced) {  // every launch leaves its counters zero for the next
    const auto left = counters.to_host();
    CHECK(std::all_of(left.begin(), left.end(), [](unsigned int c) { return c == 0; }));
  }
}

}  // namespace

TEST_CASE("int_gemm equals the dequantized product: 4 and 8 bits, sym/asym, groups, partial tiles, pipeline depths") {
  auto rng = qprob::test::make_rng(0x6e40);
  INFO("seed ", qprob::test::run_seed());
  check_gemm<p::int4_g128>(rng, 300, 1000, 1024, 1024);   // 3 row tiles (last partial), 8 column tiles (last 104 wide), 16 k tiles
  check_gemm<p::int4_g128>(rng, 1, 136, 64, 72);          // one k tile (prologue only), one row, stride > K
  check_gemm<p::int4_g128>(rng, 77, 256, 128, 128);       // two k tiles
  check_gemm<p::int4_g128, 3>(rng, 130, 264, 704, 704);   // three stages; 11 k tiles
  check_gemm<p::int4_g128_asym>(rng, 129, 128, 512, 520);
  check_gemm<p::int4_g32>(rng, 64, 200, 320, 320);        // two groups per k tile
  check_gemm<p::int4_pc>(rng, 200, 136, 448, 448);        // one group for all of K
  check_gemm<p::int8_g128>(rng, 150, 264, 640, 640);      // 16 word rows per k tile
  check_gemm<p::int4_g64_asym>(rng, 33, 128, 256, 256);
  check_gemm<p::int8_pc>(rng, 40, 136, 192, 192);
  check_gemm<p::int4_g128_act>(rng, 140, 264, 1024, 1024, true);  // act-order: K permuted at repack, x gathered
  check_gemm<p::int4_g32>(rng, 16, 128, 640, 640, true);
}

TEST_CASE("int_gemm with 256-row tiles (m64n256), two stages and the tile rows it chooses equals the dequantized product") {
  auto rng = qprob::test::make_rng(0x6e41);
  INFO("seed ", qprob::test::run_seed());
  check_gemm<p::int4_g128, 4, 256>(rng, 300, 1000, 1024, 1024);   // 2 row tiles (the second 44 rows), 8 column tiles, 16 k tiles
  check_gemm<p::int4_g128, 4, 256>(rng, 1, 136, 64, 72);          // one k tile, one row, stride > K
  check_gemm<p::int4_g128, 3, 256>(rng, 257, 264, 704, 704);      // three stages, one row in the second tile
  check_gemm<p::int4_g128, 5, 256>(rng, 512, 128, 768, 768);      // five stages, two full row tiles
  check_gemm<p::int4_g64_asym>(rng, 129, 128, 256, 256);          // (128-row tiles: the shape below in both)
  check_gemm<p::int4_g64_asym, 4, 256>(rng, 129, 128, 256, 256);
  check_gemm<p::int4_g32, 4, 256>(rng, 200, 200, 320, 320);       // two groups per k tile
  check_gemm<p::int8_g128, 4, 256>(rng, 380, 264, 640, 640);
  check_gemm<p::int8_pc, 4, 256>(rng, 40, 136, 192, 192);
  check_gemm<p::int4_g128_act, 4, 256>(rng, 270, 264, 1024, 1024, true);
  check_gemm<p::int4_g128, 2, 256>(rng, 300, 264, 512, 512);      // two stages: every refill waits for the stage just read
  check_gemm<p::int4_g128, 2, 128>(rng, 77, 136, 320, 320);
  check_gemm<p::int4_g128, 5, 0>(rng, 2100, 2048, 128, 128);      // the shape's choice: 256 rows (144 tiles, 2 waves on 132 SMs)
  check_gemm<p::int4_g128, 5, 0>(rng, 520, 1000, 192, 192);       // 128 rows (40 tiles)
}

TEST_CASE("int_gemm with the K of tail tiles split over several blocks equals the dequantized product") {
  auto rng = qprob::test::make_rng(0x6e42);
  INFO("seed ", qprob::test::run_seed());
  using S = split_case;
  // 300 x 1000: 3 x 8 tiles of 128 rows; 10 whole, 14 in 3 parts of 5 or 6 of 16 k tiles
  check_gemm<p::int4_g128, 4, 128>(rng, 300, 1000, 1024, 1024, false, {S::forced, 10, 3});
  check_gemm<p::int4_g128, 4, 256>(rng, 300, 1000, 704, 704, false, {S::forced, 0, 4});   // every tile split; 11 k tiles: 2, 3, 3, 3
  check_gemm<p::int4_g128, 3, 256>(rng, 257, 264, 128, 128, false, {S::forced, 1, 2});    // one k tile per part
  check_gemm<p::int8_g128, 5, 256>(rng, 380, 264, 640, 640, false, {S::forced, 2, 4});
  check_gemm<p::int4_g32, 2, 128>(rng, 77, 200, 320, 320, false, {S::forced, 0, 2});      // groups of 32, two stages
  check_gemm<p::int4_pc, 4, 128>(rng, 200, 136, 448, 448, false, {S::forced, 1, 3});      // one group for all of K
  check_gemm<p::int4_g64_asym, 4, 256>(rng, 129, 128, 256, 256, false, {S::forced, 0, 4});
  // int_gemm's own plan with a workspace (on an H100: 256-row tiles, 2 parts each; 128 rows, 4 parts)
  check_gemm<p::int4_g128, 5, 0>(rng, 512, 4096, 512, 512, false, {S::workspace});
  check_gemm<p::int4_g128, 5, 0>(rng, 100, 2048, 1024, 1032, false, {S::workspace});
  check_gemm<p::int4_g128_act, 5, 0>(rng, 300, 1024, 1024, 1024, true, {S::workspace});  // act-order: x gathered first
}

TEST_CASE("int_gemm's rows do not depend on the tile shape: 128- and 256-row tiles give the same bits") {
  // The engine calls int_gemm on a pass's real row count, so a row's tile shape changes with the batch; batch
  // invariance (docs/engine.md) needs every output to be the same sum either way (k tiles in order, each wgmma
  // k16 step accumulated in place), which this checks bit for bit, fp16 and float32, with random data.
  auto rng = qprob::test::make_rng(0x6e43);
  INFO("seed ", qprob::test::run_seed());
  using P = p::int4_g128;
  const std::int64_t m = 300, n = 264, k = 1024;
  const gemm_operands<P> op(rng, m, n, k, k, false);
  const auto& mw = op.mw;
  const auto xv  = op.xv();
  cudaStream_t s = nullptr;
  qprob::device_buffer<qprob::half_t> h128(m * n, s), h256(m * n, s);
  qprob::device_buffer<float> f128(m * n, s), f256(m * n, s);
  qprob::quant::int_gemm<P, 4, qprob::half_t, 128>(xv, mw, h128.view(m, n), s);
  qprob::quant::int_gemm<P, 4, qprob::half_t, 256>(xv, mw, h256.view(m, n), s);
  qprob::quant::int_gemm<P, 4, float, 128>(xv, mw, f128.view(m, n), s);
  qprob::quant::int_gemm<P, 4, float, 256>(xv, mw, f256.view(m, n), s);
  const auto a = h128.to_host(), b = h256.to_host();
  const auto fa = f128.to_host(), fb = f256.to_host();
  CHECK(a == b);  // half_t compares bits
  CHECK(std::memcmp(fa.data(), fb.data(), fa.size() * sizeof(float)) == 0);
  CHECK(std::any_of(fa.begin(), fa.end(), [](float v) { return v != 0.0f; }));
}

TEST_CASE("int_gemm's plan: whole waves, split tails, a 128-row tile counted as 0.7 of a 256-row tile") {
  using qprob::quant::gemm_detail::plan_gemm;
  const auto rows = [](const auto& plan) { return plan.rows; };
  // without a workspace: tile rows by whole waves, nothing split
  CHECK(rows(plan_gemm(512, 4096, 4096, 132, false)) == 128);    // 128 tiles: one wave (0.7); 256 rows: 64 tiles, also one (1)
  CHECK(rows(plan_gemm(512, 11008, 4096, 132, false)) == 256);   // 344 tiles: 3 waves (2.1) against 172: 2 waves
  CHECK(rows(plan_gemm(1024, 11008, 4096, 132, false)) == 256);  // 6 waves (4.2) against 3
  CHECK(rows(plan_gemm(4096, 4096, 4096, 132, false)) == 256);   // 8 (5.6) against 4
  CHECK(rows(plan_gemm(100, 11008, 4096, 132, false)) == 128);   // one row tile either way
  CHECK(rows(plan_gemm(2100, 2048, 4096, 132, false)) == 256);   // 272 tiles: 3 waves (2.1) against 144: 2 waves
  CHECK(rows(plan_gemm(512, 4096, 4096, 64, false)) == 256);     // on 64 SMs: 2 waves (1.4) against 1
  CHECK(plan_gemm(512, 11008, 4096, 132, false).grid.parts == 1);
  CHECK(plan_gemm(512, 11008, 4096, 132, false).blocks == 172);
  // with one: 172 tiles of 256 rows = one whole wave + 40 tiles in 3 parts (120 blocks)
  const auto a = plan_gemm(512, 11008, 4096, 132, true);
  CHECK(a.rows == 256);
  CHECK(a.grid.row_tiles == 2);
  CHECK(a.grid.whole == 132);
  CHECK(a.grid.parts == 3);
  CHECK(a.blocks == 252);
  CHECK(a.tail_tiles() == 40);
  // 64 tiles of 256 rows in 2 parts (half a wave's time) beat 128 tiles of 128 rows (0.7)
  const auto b = plan_gemm(512, 4096, 4096, 132, true);
  CHECK(b.rows == 256);
  CHECK(b.grid.whole == 0);
  CHECK(b.grid.parts == 2);
  CHECK(b.blocks == 128);
  // 2048 x 11008: 688 tiles = 5 waves + 28 tiles in 4 parts (kMaxParts)
  const auto c = plan_gemm(2048, 11008, 4096, 132, true);
  CHECK(c.rows == 256);
  CHECK(c.grid.whole == 660);
  CHECK(c.grid.parts == 4);
  // tails of more than half a wave are not split: 344 tiles = 2 waves + 80
  const auto d = plan_gemm(1024, 11008, 4096, 132, true);
  CHECK(d.grid.parts == 1);
  CHECK(d.blocks == 344);
  // parts never exceed the k tiles: K = 128 is two
  CHECK(plan_gemm(128, 1024, 128, 132, true).grid.parts == 2);
  // every block's share of K: consecutive, covering all of it
  const auto e = plan_gemm(300, 1000, 704, 132, true, 256);
  for (int blk = 0, next = 0; blk < e.blocks; ++blk) {
    const auto w = e.grid.work_of(blk, 11);
    CHECK(w.k_begin == (w.part == 0 ? 0 : next));
    CHECK(w.k_end > w.k_begin);
    next = w.k_end;
    if (w.part == w.parts - 1) {
      CHECK(w.k_end == 11);
    }
  }
}

TEST_CASE("repack_for_mma and int_gemm refuse what they do not support, with the reason") {
  using P = p::int4_g128;
  CHECK_FALSE(qprob::quant::mma_layout_supported<P>(128, 96));          // K not a multiple of 64
  CHECK_FALSE(qprob::quant::mma_layout_supported<P>(130, 128));         // N not a multiple of 8
  CHECK_FALSE(qprob::quant::mma_layout_supported<p::int3_g128>(128, 256));
  CHECK_FALSE(qprob::quant::mma_layout_supported<p::int4_g128_bf16>(128, 256));
  CHECK(qprob::quant::mma_layout_supported<P>(128, 256));
  std::vector<std::int32_t> uneven(256, 0);  // act-order groups must hold exactly group-width columns
  uneven[255] = 1;
  CHECK_FALSE(qprob::quant::mma_layout_supported<P>(128, 256, uneven));
  cudaStream_t s = nullptr;
  const std::int64_t k = 96, n = 128, m = 4;
  qprob::device_buffer<std::uint32_t> q(P::packed_words(k) * n, s);
  qprob::device_buffer<qprob::half_t> sc(P::groups(k) * n, s);
  qprob::device_buffer<std::uint8_t> z(P::groups(k) * n, s);
  CHECK_THROWS_AS((void)qprob::quant::repack_for_mma<P>(std::as_const(q).view(P::packed_words(k), n), std::as_const(sc).view(P::groups(k), n),
                                                        std::as_const(z).view(P::groups(k), n), {}, s),
                  qprob::invalid_argument);
  // shapes that do not match the repacked weight
  const std::int64_t k2 = 128;
  qprob::device_buffer<std::uint32_t> q2(P::packed_words(k2) * n, s);
  qprob::device_buffer<qprob::half_t> sc2(P::groups(k2) * n, s);
  qprob::device_buffer<std::uint8_t> z2(P::groups(k2) * n, s);
  const auto mw = qprob::quant::repack_for_mma<P>(std::as_const(q2).view(P::packed_words(k2), n), std::as_const(sc2).view(P::groups(k2), n),
                                                  std::as_const(z2).view(P::groups(k2), n), {}, s);
  qprob::device_buffer<qprob::half_t> x(m * 2 * k2, s), y(m * n, s);
  CHECK_THROWS_AS(qprob::quant::int_gemm<P>(std::as_const(x).view(m, 2 * k2), mw, y.view(m, n), s), qprob::invalid_argument);
  CHECK_THROWS_AS(qprob::quant::int_gemm<P>(std::as_const(x).view(m, k2), mw, y.view(m, n), s, true), qprob::invalid_argument);  // fp16 y
  qprob::quant::gemm_workspace empty;  // default-constructed: belongs to no device
  CHECK_THROWS_AS(qprob::quant::int_gemm<P>(std::as_const(x).view(m, k2), mw, y.view(m, n), s, false, &empty), qprob::invalid_argument);
}
