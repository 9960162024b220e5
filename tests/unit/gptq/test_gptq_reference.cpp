// SPDX-License-Identifier: Apache-2.0
// The double-precision GPTQ reference: it must beat RTN on correlated activations, reduce to RTN exactly when
// the Hessian is the identity, and handle dead inputs, act-order, static groups, partial groups and
// non-positive-definite Hessians (by raising the dampening) as AutoGPTQ/GPTQModel do.
#include <qprob/policy/presets.hpp>
#include <qprob/reference/gptq.hpp>
#include <qprob/reference/rtn.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "gptq_test_data.hpp"
#include "support.hpp"

namespace p = qprob::policies;
using qprob::test::layer_problem;

namespace {

template <class P>
std::vector<double> rtn_dequantized(const layer_problem& prob) {
  const auto q = qprob::reference::rtn_quantize<P, qprob::half_t>(qprob::make_host_view(prob.w.data(), prob.n, prob.k));
  const auto d = qprob::reference::dequantize<P, qprob::half_t>(q);
  std::vector<double> out(d.size());
  std::transform(d.begin(), d.end(), out.begin(), [](qprob::half_t v) { return qprob::to_double(v); });
  return out;
}

template <class P>
qprob::reference::gptq_result run_gptq(const layer_problem& prob, qprob::gptq_options opt = {}) {
  return qprob::reference::gptq_quantize<P, qprob::half_t>(qprob::make_host_view(prob.w.data(), prob.n, prob.k),
                                                           qprob::make_host_view(prob.h.data(), prob.k, prob.k), opt);
}

/// GPTQ's output error must be below RTN's, summed over `layers` independent layers. GPTQ is greedy and
/// promises nothing for one small layer at 2 bits: over 60 seeds a 16-row layer lost once (ratio 1.12) and 64-row
/// layers reached 0.977, while the expected ratio is about 0.8; four 64-row layers together stay well below 1.
template <class P>
void check_beats_rtn(std::int64_t n, std::int64_t k, std::mt19937_64& rng, int layers = 1) {
  CAPTURE(qprob::policy_name<P>());
  CAPTURE(n);
  CAPTURE(k);
  double e_g = 0;
  double e_r = 0;
  for (int layer = 0; layer < layers; ++layer) {
    const auto prob = qprob::test::make_layer_problem(n, k, 4 * k, rng);
    const auto gptq = run_gptq<P>(prob);
    e_g += qprob::test::reconstruction_error(prob, gptq.dequantized);
    e_r += qprob::test::reconstruction_error(prob, rtn_dequantized<P>(prob));
    // The codes must mean what the returned dequantized weights say (g_idx included for act-order).
    const auto deq = qprob::reference::dequantize<P, double>(gptq.weight);
    REQUIRE(deq.size() == gptq.dequantized.size());
    CHECK(std::equal(deq.begin(), deq.end(), gptq.dequantized.begin()));
  }
  MESSAGE(qprob::policy_name<P>(), " ", layers, " x (n=", n, ", k=", k, "): GPTQ/RTN output error ratio ", e_g / e_r);
  CHECK(e_g > 0);
  CHECK(e_g < e_r);
}

}  // namespace

TEST_CASE("GPTQ has a lower output error than RTN, 4-bit group 128 (the paper's setting)") {
  INFO("QPROB_TEST_SEED=", qprob::test::run_seed());
  auto rng = qprob::test::make_rng(51);
  check_beats_rtn<p::int4_g128>(24, 256, rng);
  check_beats_rtn<p::int4_g128>(7, 300, rng);  // partial last group, odd rows
}

TEST_CASE("GPTQ beats RTN for asymmetric, per-channel, small groups and act-order") {
  INFO("QPROB_TEST_SEED=", qprob::test::run_seed());
  auto rng = qprob::test::make_rng(52);
  check_beats_rtn<p::int4_g128_asym>(16, 256, rng);
  check_beats_rtn<p::int4_pc>(16, 192, rng);
  check_beats_rtn<p::int4_g32>(16, 100, rng);
  check_beats_rtn<p::int4_g128_act>(16, 256, rng);
}

TEST_CASE("GPTQ beats RTN at 2, 3 and 8 bits") {
  INFO("QPROB_TEST_SEED=", qprob::test::run_seed());
  auto rng = qprob::test::make_rng(53);
  check_beats_rtn<p::int2_g64>(64, 256, rng, 4);
  check_beats_rtn<p::int3_g128>(16, 256, rng);
  check_beats_rtn<p::int8_g128>(16, 256, rng);
}

TEST_CASE("with an identity Hessian no error propagates, so GPTQ's codes are RTN's codes") {
  INFO("QPROB_TEST_SEED=", qprob::test::run_seed());
  auto rng = qprob::test::make_rng(54);
  auto prob = qprob::test::make_layer_problem(9, 200, 8, rng);
  std::fill(prob.h.begin(), prob.h.end(), 0.0);
  for (std::int64_t i = 0; i < prob.k; ++i) {
    prob.h[i * prob.k + i] = 1.0;
  }
  const auto gptq = run_gptq<p::int4_g32>(prob);
  const auto rtn  = qprob::reference::rtn_quantize<p::int4_g32, qprob::half_t>(qprob::make_host_view(prob.w.data(), prob.n, prob.k));
  CHECK(gptq.weight.qweight == rtn.qweight);
  CHECK(gptq.weight.scales == rtn.scales);
  CHECK(gptq.weight.zeros == rtn.zeros);
  CHECK(gptq.report.damp_retries == 0);
}

TEST_CASE("dead inputs: zero Hessian diagonal gives zeroed columns and is reported") {
  INFO("QPROB_TEST_SEED=", qprob::test::run_seed());
  auto rng        = qprob::test::make_rng(55);
  const auto prob = qprob::test::make_layer_problem(8, 128, 256, rng, {3, 77, 127});
  const auto gptq = run_gptq<p::int4_g128>(prob);
  CHECK(gptq.report.dead_columns == 3);
  for (std::int64_t r = 0; r < prob.n; ++r) {
    for (std::int64_t c : {3, 77, 127}) {
      CHECK(gptq.dequantized[r * prob.k + c] == 0.0);  // code == zero point
    }
  }
}

TEST_CASE("act-order processes columns by decreasing Hessian diagonal and records g_idx") {
  INFO("QPROB_TEST_SEED=", qprob::test::run_seed());
  auto rng        = qprob::test::make_rng(56);
  const auto prob = qprob::test::make_layer_problem(6, 256, 512, rng);
  const auto gptq = run_gptq<p::int4_g128_act>(prob);
  REQUIRE(gptq.weight.g_idx.size() == 256);
  // The 128 columns with the largest diagonal form group 0.
  std::vector<std::int64_t> order(256);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return prob.h[a * 256 + a] > prob.h[b * 256 + b]; });
  for (std::int64_t pos = 0; pos < 256; ++pos) {
    CHECK(gptq.weight.g_idx[order[pos]] == pos / 128);
  }
  // Static groups with act-order keep natural groups.
  qprob::gptq_options opt;
  opt.static_groups      = true;
  const auto with_static = run_gptq<p::int4_g128_act>(prob, opt);
  for (std::int64_t c = 0; c < 256; ++c) {
    CHECK(with_static.weight.g_idx[c] == c / 128);
  }
}

TEST_CASE("static groups take their scales from the unquantized weights, like RTN") {
  INFO("QPROB_TEST_SEED=", qprob::test::run_seed());
  auto rng        = qprob::test::make_rng(57);
  const auto prob = qprob::test::make_layer_problem(10, 160, 320, rng);
  qprob::gptq_options opt;
  opt.static_groups = true;
  const auto gptq   = run_gptq<p::int4_g32>(prob, opt);
  const auto rtn    = qprob::reference::rtn_quantize<p::int4_g32, qprob::half_t>(qprob::make_host_view(prob.w.data(), prob.n, prob.k));
  CHECK(gptq.weight.scales == rtn.scales);
  CHECK(gptq.weight.zeros == rtn.zeros);
  CHECK(gptq.weight.qweight != rtn.qweight);  // but the codes carry GPTQ's error feedback
}

TEST_CASE("a Hessian that is not positive definite gets more dampening, with a warning") {
  const std::int64_t k = 64;
  std::vector<double> h(static_cast<std::size_t>(k * k), 0.0);
  // H = I - c v v^T with unit v: its smallest eigenvalue is 1 - c = -0.015, mean diagonal 1 - c/k.
  for (std::int64_t i = 0; i < k; ++i) {
    h[i * k + i] = 1.0;
  }
  const double c = 1.015;
  for (std::int64_t i = 0; i < k; ++i) {
    for (std::int64_t j = 0; j < k; ++j) {
      h[i * k + j] -= c / static_cast<double>(k);
    }
  }
  std::vector<qprob::half_t> w(static_cast<std::size_t>(4 * k));
  for (std::size_t i = 0; i < w.size(); ++i) {
    w[i] = qprob::to_half(0.01 * static_cast<double>(static_cast<int>(i % 13) - 6));
  }
  const auto out = qprob::reference::gptq_quantize<p::int4_g32, qprob::half_t>(qprob::make_host_view(w.data(), 4, k),
                                                                               qprob::make_host_view(h.data(), k, k), {});
  // damp 0.01 leaves -0.015 + 0.01 * 0.984 < 0; 0.02 gives +0.0047 > 0.
  CHECK(out.report.damp_retries == 1);
  CHECK(out.report.damp_percent == doctest::Approx(0.02));
  REQUIRE(out.report.warnings.size() == 1);
  CHECK(out.report.warnings[0].find("Cholesky factorization failed with damp_percent=0.01") != std::string::npos);
  qprob::gptq_options strict;
  strict.max_damp_retries = 0;
  const auto fail = [&] {
    return qprob::reference::gptq_quantize<p::int4_g32, qprob::half_t>(qprob::make_host_view(w.data(), 4, k),
                                                                        qprob::make_host_view(h.data(), k, k), strict);
  };
  CHECK_THROWS_WITH_AS(fail(), doctest::Contains("not positive definite"), qprob::invalid_argument);
}

TEST_CASE("GPTQ rejects a Hessian whose size does not match the weight") {
  std::vector<qprob::half_t> w(4 * 32, qprob::to_half(0.5));
  std::vector<double> h(31 * 31, 0.0);
  const auto bad = [&] {
    return qprob::reference::gptq_quantize<p::int4_g32, qprob::half_t>(qprob::make_host_view(w.data(), 4, 32),
                                                                        qprob::make_host_view(h.data(), 31, 31), {});
  };
  CHECK_THROWS_WITH_AS(bad(), doctest::Contains("the Hessian is (31, 31) but the weight has k=32 inputs"), qprob::invalid_argument);
}
