// SPDX-License-Identifier: Apache-2.0
// The double-precision RTN reference against hand-computed cases, GPTQ's conventions, and error bounds.
#include <qprob/policy/presets.hpp>
#include <qprob/reference/rtn.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "support.hpp"

namespace p = qprob::policies;
using qprob::reference::rtn_code;
using qprob::reference::rtn_params;

namespace {

// Named ceilings of the normalised mean squared error sum((w - q)^2) / sum(w^2) of RTN on Gaussian weights,
// group 128 (64 for 2 bits). A uniform quantizer with step s has error s^2/12; with the range set by the
// group's largest |w| (about 2.7 sigma for 128 samples) 4 bits give (5.4/15)^2/12 = 0.011. The ceilings are the
// measured values (4.2e-5, 0.0124, 0.056, 0.26 on 64x1024 weights) with about 1.5x headroom, so a regression that loses
// precision (a wrong scale, an off-by-one zero) fails while the seed-to-seed spread does not.
constexpr double max_rtn_nmse_8bit = 6.5e-5;
constexpr double max_rtn_nmse_4bit = 1.9e-2;
constexpr double max_rtn_nmse_3bit = 8.5e-2;
constexpr double max_rtn_nmse_2bit = 0.40;

std::vector<qprob::half_t> gaussian_weights(std::int64_t n, std::int64_t k, std::mt19937_64& rng, double sigma) {
  std::normal_distribution<double> dist(0.0, sigma);
  std::vector<qprob::half_t> w(static_cast<std::size_t>(n * k));
  for (auto& x : w) {
    x = qprob::to_half(dist(rng));
  }
  return w;
}

template <class P>
double rtn_nmse(std::int64_t n, std::int64_t k, std::mt19937_64& rng) {
  const auto w   = gaussian_weights(n, k, rng, 0.02);
  const auto q   = qprob::reference::rtn_quantize<P, qprob::half_t>(qprob::make_host_view(w.data(), n, k));
  const auto deq = qprob::reference::dequantize<P, qprob::half_t>(q);
  double err = 0;
  double ref = 0;
  for (std::size_t i = 0; i < w.size(); ++i) {
    const double a = qprob::to_double(w[i]);
    const double b = qprob::to_double(deq[i]);
    err += (a - b) * (a - b);
    ref += a * a;
  }
  REQUIRE(ref > 0);
  return err / ref;
}

}  // namespace

TEST_CASE("symmetric 4-bit parameters: scale = 2 max|w| / 15, zero 8") {
  const auto params = rtn_params<p::int4_g128>(-0.75, 0.5);
  CHECK(qprob::to_double(params.scale) == doctest::Approx(1.5 / 15).epsilon(1e-3));
  CHECK(params.scale == qprob::to_half(0.1));
  CHECK(params.zero == 8);
  CHECK(rtn_code<p::int4_g128>(-0.75, params.scale, params.zero) == 0);   // -7.5 -> -8 (even) + 8
  CHECK(rtn_code<p::int4_g128>(0.5, params.scale, params.zero) == 13);    // 0.5/0.1 ~ 5.0012 -> 5
  CHECK(rtn_code<p::int4_g128>(0.75, params.scale, params.zero) == 15);   // clamped at maxq
}

TEST_CASE("asymmetric parameters: zero = round(-xmin / scale)") {
  const auto params = rtn_params<p::int4_g128_asym>(-0.3, 1.2);
  CHECK(params.scale == qprob::to_half(0.1));
  CHECK(params.zero == 3);  // 0.3 / 0.0999755859375 = 3.0007 -> 3
  // All-positive group: the range is forced to contain 0, so the zero point is 0.
  const auto positive = rtn_params<p::int4_g128_asym>(0.5, 1.5);
  CHECK(positive.zero == 0);
  CHECK(positive.scale == qprob::to_half(0.1));
}

TEST_CASE("GPTQ conventions: all-zero groups, the symmetric all-positive quirk, the scale floor") {
  const auto zeros = rtn_params<p::int4_g128>(0.0, 0.0);  // xmin = -1, xmax = 1
  CHECK(zeros.scale == qprob::to_half(2.0 / 15));
  CHECK(rtn_code<p::int4_g128>(0.0, zeros.scale, zeros.zero) == 8);
  // No negative weight: xmin stays 0, the scale spans [0, xmax] and codes above zero saturate at 15.
  const auto positive = rtn_params<p::int4_g128>(0.25, 1.5);
  CHECK(positive.scale == qprob::to_half(0.1));
  CHECK(rtn_code<p::int4_g128>(1.5, positive.scale, positive.zero) == 15);
  // A scale below half the smallest fp16 subnormal is raised to it instead of becoming 0.
  const auto tiny = rtn_params<p::int4_g128>(-1e-9, 1e-9);
  CHECK(tiny.scale == qprob::reference::min_scale);
  CHECK(rtn_code<p::int4_g128>(1e-9, tiny.scale, tiny.zero) == 8);
}

TEST_CASE("codes round half to even, as torch.round") {
  const qprob::half_t one = qprob::to_half(1.0);
  CHECK(rtn_code<p::int4_g128>(2.5, one, 8) == 10);   // 2.5 -> 2
  CHECK(rtn_code<p::int4_g128>(3.5, one, 8) == 12);   // 3.5 -> 4
  CHECK(rtn_code<p::int4_g128>(-2.5, one, 8) == 6);   // -2.5 -> -2
  CHECK(rtn_code<p::int4_g128>(-0.5, one, 8) == 8);   // -0.5 -> -0
}

TEST_CASE("dequantization error is at most half a step for weights inside the range, odd sizes included") {
  INFO("QPROB_TEST_SEED=", qprob::test::run_seed());
  auto rng = qprob::test::make_rng(31);
  for (auto [n, k] : {std::pair<std::int64_t, std::int64_t>{1, 16}, {7, 100}, {19, 989}, {3, 257}}) {
    CAPTURE(n);
    CAPTURE(k);
    std::uniform_real_distribution<double> dist(-1.0, 1.0);
    std::vector<qprob::half_t> w(static_cast<std::size_t>(n * k));
    for (auto& x : w) {
      x = qprob::to_half(dist(rng));
    }
    using P      = qprob::precision<4, 32, false, false>;
    const auto q = qprob::reference::rtn_quantize<P, qprob::half_t>(qprob::make_host_view(w.data(), n, k));
    CHECK(static_cast<std::int64_t>(q.scales.size()) == P::groups(k) * n);
    const auto deq = qprob::reference::dequantize<P, qprob::half_t>(q);
    double worst = 0;
    for (std::int64_t r = 0; r < n; ++r) {
      for (std::int64_t c = 0; c < k; ++c) {
        const double s = qprob::to_double(q.scales[static_cast<std::size_t>(qprob::quant::default_group<P>(c) * n + r)]);
        const double e = std::abs(qprob::to_double(w[r * k + c]) - qprob::to_double(deq[r * k + c])) / s;
        worst          = std::max(worst, e);
      }
    }
    // Inside the grid the error is at most half a step. At the ends the grid can fall short of the range by
    // the zero point's rounding (half a step) plus the fp16 scale's rounding (15 * 2^-11 steps); the fp16
    // rounding of the dequantized value adds at most 15 * 2^-11 steps more. So 0.5 + 2 * 0.0074 < 0.52.
    CHECK(worst <= 0.52);
    CHECK(worst > 0.0);
  }
}

TEST_CASE("RTN error on Gaussian weights stays under the named per-bit-width ceilings") {
  INFO("QPROB_TEST_SEED=", qprob::test::run_seed());
  auto rng = qprob::test::make_rng(32);
  const double nmse8 = rtn_nmse<qprob::precision<8, 128, true, false>>(64, 1024, rng);
  const double nmse4 = rtn_nmse<p::int4_g128>(64, 1024, rng);
  const double nmse3 = rtn_nmse<p::int3_g128>(64, 1024, rng);
  const double nmse2 = rtn_nmse<p::int2_g64>(64, 1024, rng);
  MESSAGE("RTN NMSE 8/4/3/2 bits: ", nmse8, " ", nmse4, " ", nmse3, " ", nmse2);
  CHECK(nmse8 < max_rtn_nmse_8bit);
  CHECK(nmse4 < max_rtn_nmse_4bit);
  CHECK(nmse3 < max_rtn_nmse_3bit);
  CHECK(nmse2 < max_rtn_nmse_2bit);
  // Each bit removed must cost precision: a kernel that ignored the policy's bits would fail here.
  CHECK(nmse8 < nmse4);
  CHECK(nmse4 < nmse3);
  CHECK(nmse3 < nmse2);
}

TEST_CASE("dequantize follows g_idx and rejects group indices outside the weight") {
  using P = qprob::precision<4, 16, false, false>;
  const std::int64_t n = 3;
  const std::int64_t k = 32;
  std::vector<qprob::half_t> w(static_cast<std::size_t>(n * k));
  for (std::int64_t i = 0; i < n * k; ++i) {
    // Group 1 (columns 16..31) spans three times the range of group 0, so the two scales differ.
    const double scale = (i % k) >= 16 ? 3.0 : 1.0;
    w[static_cast<std::size_t>(i)] = qprob::to_half(scale * (0.01 * static_cast<double>((i * 7) % 23) - 0.1));
  }
  auto q = qprob::reference::rtn_quantize<P, qprob::half_t>(qprob::make_host_view(w.data(), n, k));
  const auto natural = qprob::reference::dequantize<P, qprob::half_t>(q);
  q.g_idx.assign(static_cast<std::size_t>(k), 0);
  for (std::int64_t c = 0; c < k; ++c) {
    q.g_idx[static_cast<std::size_t>(c)] = static_cast<std::int32_t>(c / 16);
  }
  CHECK(qprob::reference::dequantize<P, qprob::half_t>(q) == natural);  // explicit default groups: same result
  q.g_idx[5] = 1;  // column 5 now uses group 1's scale and zero
  const auto moved = qprob::reference::dequantize<P, qprob::half_t>(q);
  CHECK(moved != natural);
  q.g_idx[5] = 2;
  const auto out_of_range = [&] { return qprob::reference::dequantize<P, qprob::half_t>(q); };
  CHECK_THROWS_AS(out_of_range(), qprob::invalid_argument);
}
