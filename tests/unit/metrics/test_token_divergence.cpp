// SPDX-License-Identifier: Apache-2.0
// Per-token statistics between two models (metrics/token_divergence.hpp): compare_token on tiny vocabularies
// with values worked out by hand, the summary on hand-chosen per-position values (expected numbers derived in
// the comments), the same summary against llama.cpp's raw-sum formulas evaluated independently on random data,
// the type-7 quantile convention against numpy's np.percentile(..., method="linear") values, and malformed rows.
#include <qprob/metrics/token_divergence.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "support.hpp"

using qprob::metrics::compare_token;
using qprob::metrics::quantile_sorted;
using qprob::metrics::token_comparison;
using qprob::metrics::token_divergence_accumulator;

namespace {

constexpr double inf = std::numeric_limits<double>::infinity();

std::vector<double> logs(std::initializer_list<double> p) {
  std::vector<double> out;
  for (const double v : p) {
    out.push_back(std::log(v));
  }
  return out;
}

/// A random normalized log-probability row of length n.
std::vector<double> random_row(std::mt19937_64& rng, std::size_t n, double scale) {
  std::normal_distribution<double> z(0.0, scale);
  std::vector<double> r(n);
  double m = -inf;
  for (auto& v : r) {
    v = z(rng);
    m = std::max(m, v);
  }
  double s = 0;
  for (const double v : r) {
    s += std::exp(v - m);
  }
  const double lse = m + std::log(s);
  for (auto& v : r) {
    v -= lse;
  }
  return r;
}

std::string message_of(const auto& fn) {
  try {
    fn();
  } catch (const qprob::invalid_argument& e) {
    return e.what();
  }
  return "(no exception)";
}

}  // namespace

TEST_CASE("token divergence: a three-token vocabulary worked by hand") {
  // p = (1/2, 1/4, 1/4), q = (1/4, 1/2, 1/4): KL = 1/2 ln 2 + 1/4 ln(1/2) + 0 = ln(2) / 4.
  const auto p = logs({0.5, 0.25, 0.25});
  const auto q = logs({0.25, 0.5, 0.25});
  const auto c = compare_token(p, q, 1);
  CHECK(c.kl == doctest::Approx(std::log(2.0) / 4).epsilon(1e-14));
  CHECK(c.base_logprob == doctest::Approx(std::log(0.25)).epsilon(1e-15));
  CHECK(c.compared_logprob == doctest::Approx(std::log(0.5)).epsilon(1e-15));
  CHECK(c.delta_p == doctest::Approx(0.25).epsilon(1e-14));
  CHECK(c.base_top == 0);
  CHECK(c.compared_top == 1);
  CHECK_FALSE(c.same_top());
  // The other direction: KL(q || p) = 1/4 ln(1/2) + 1/2 ln 2 = ln(2) / 4 too (this pair is symmetric), Δp < 0.
  const auto r = compare_token(q, p, 1);
  CHECK(r.kl == doctest::Approx(std::log(2.0) / 4).epsilon(1e-14));
  CHECK(r.delta_p == doctest::Approx(-0.25).epsilon(1e-14));
  // An asymmetric pair: p = (0.9, 0.1), q = (0.5, 0.5): KL(p||q) = 0.9 ln 1.8 + 0.1 ln 0.2, KL(q||p) =
  // 0.5 ln(0.5/0.9) + 0.5 ln 5.
  CHECK(compare_token(logs({0.9, 0.1}), logs({0.5, 0.5}), 0).kl ==
        doctest::Approx(0.9 * std::log(1.8) + 0.1 * std::log(0.2)).epsilon(1e-14));
  CHECK(compare_token(logs({0.5, 0.5}), logs({0.9, 0.1}), 0).kl ==
        doctest::Approx(0.5 * std::log(0.5 / 0.9) + 0.5 * std::log(5.0)).epsilon(1e-14));
}

TEST_CASE("token divergence: ties, zero probabilities and identical rows") {
  // Ties: the first maximum is the top token in both rows (std::max_element's and llama.cpp's rule).
  const auto c = compare_token(logs({0.4, 0.4, 0.2}), logs({0.2, 0.4, 0.4}), 2);
  CHECK(c.base_top == 0);
  CHECK(c.compared_top == 1);
  // p_base = 0 terms contribute nothing: p = (1, 0, 0), q = (1/2, 1/4, 1/4) -> KL = ln 2.
  const std::vector<double> point = {0.0, -inf, -inf};
  CHECK(compare_token(point, logs({0.5, 0.25, 0.25}), 0).kl == doctest::Approx(std::log(2.0)).epsilon(1e-15));
  // The compared model gives 0 where the base does not: KL is +inf, Δp is exact.
  const auto d = compare_token(logs({0.5, 0.25, 0.25}), point, 1);
  CHECK(d.kl == inf);
  CHECK(d.delta_p == doctest::Approx(-0.25).epsilon(1e-15));
  // Identical rows: KL exactly 0, Δp exactly 0, same top.
  auto rng = qprob::test::make_rng(71);
  INFO("seed ", qprob::test::run_seed());
  for (int trial = 0; trial < 20; ++trial) {
    const auto row = random_row(rng, 97, 3.0);
    const auto e   = compare_token(row, row, trial);
    CHECK(e.kl == 0.0);
    CHECK(e.delta_p == 0.0);
    CHECK(e.same_top());
  }
}

TEST_CASE("token divergence: KL is non-negative and matches an independent long-double evaluation") {
  auto rng = qprob::test::make_rng(72);
  INFO("seed ", qprob::test::run_seed());
  for (int trial = 0; trial < 50; ++trial) {
    const std::size_t n = 2 + static_cast<std::size_t>(rng() % 300);
    const auto a        = random_row(rng, n, 0.5 + static_cast<double>(trial % 5));
    const auto b        = random_row(rng, n, 0.5 + static_cast<double>(trial % 3));
    const auto c        = compare_token(a, b, static_cast<std::int64_t>(rng() % n));
    // sum p ln(p / q) from the probabilities, in long double.
    long double ref = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const long double p = std::exp(static_cast<long double>(a[i]));
      const long double q = std::exp(static_cast<long double>(b[i]));
      ref += p * std::log(p / q);
    }
    CHECK(c.kl >= 0.0);
    // Tolerance: double rounding of n terms of size <= max |ln p - ln q| (~40 here), far below 1e-9.
    CHECK(c.kl == doctest::Approx(static_cast<double>(ref)).epsilon(1e-9).scale(1.0));
  }
}

TEST_CASE("token divergence: quantiles interpolate linearly between order statistics (type 7)") {
  const std::vector<double> ten = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  // numpy: np.percentile(range(1, 11), [0, 0.1, 25, 50, 90, 99.9, 100]) = 1, 1.009, 3.25, 5.5, 9.1, 9.991, 10.
  CHECK(quantile_sorted(ten, 0.0) == 1.0);
  CHECK(quantile_sorted(ten, 0.001) == doctest::Approx(1.009).epsilon(1e-14));
  CHECK(quantile_sorted(ten, 0.25) == doctest::Approx(3.25).epsilon(1e-14));
  CHECK(quantile_sorted(ten, 0.5) == doctest::Approx(5.5).epsilon(1e-14));
  CHECK(quantile_sorted(ten, 0.9) == doctest::Approx(9.1).epsilon(1e-14));
  CHECK(quantile_sorted(ten, 0.999) == doctest::Approx(9.991).epsilon(1e-14));
  CHECK(quantile_sorted(ten, 1.0) == 10.0);
  // Odd count: the median is the middle value.
  CHECK(quantile_sorted(std::vector<double>{-3, 0.5, 7}, 0.5) == 0.5);
  CHECK(quantile_sorted(std::vector<double>{4.25}, 0.37) == 4.25);
  CHECK(std::isnan(quantile_sorted(std::vector<double>{}, 0.5)));
  // An infinite neighbour is not reached at an exact order statistic (0 * inf would be NaN).
  CHECK(quantile_sorted(std::vector<double>{0.0, 1.0, inf}, 0.5) == 1.0);
  CHECK(quantile_sorted(std::vector<double>{0.0, 1.0, inf}, 0.75) == inf);
  CHECK(message_of([&] { (void)quantile_sorted(ten, 1.5); }).find("must be in [0, 1]") != std::string::npos);
  const auto s = qprob::metrics::summarize_quantiles(std::vector<double>{10, 9, 8, 7, 6, 5, 4, 3, 2, 1});
  CHECK(s.minimum() == 1.0);
  CHECK(s.maximum() == 10.0);
  CHECK(s.median() == doctest::Approx(5.5));
  CHECK(s.at(0.75) == doctest::Approx(7.75));
  CHECK(message_of([&] { (void)s.at(0.3); }).find("not one of summary_levels") != std::string::npos);
}

TEST_CASE("token divergence: the summary of four hand-chosen positions") {
  // Per position: (KL, Δp, NLL base, NLL compared, same top).
  token_divergence_accumulator acc;
  const double kl[]  = {0.0, 0.1, 0.2, 0.7};
  const double dp[]  = {0.1, -0.2, 0.0, 0.3};
  const double nb[]  = {1.0, 2.0, 3.0, 4.0};
  const double nc[]  = {1.5, 2.0, 3.5, 5.0};
  const bool same[]  = {true, true, false, true};
  for (int i = 0; i < 4; ++i) {
    token_comparison c;
    c.kl               = kl[i];
    c.delta_p          = dp[i];
    c.base_logprob     = -nb[i];
    c.compared_logprob = -nc[i];
    c.base_top         = 3;
    c.compared_top     = same[i] ? 3 : 4;
    acc.add(c);
  }
  const auto s = acc.summary();
  CHECK(s.count == 4);
  // NLL base: mean 2.5, sum of squared deviations 5, se = sqrt(5 / 12). Compared: mean 3, SS 7.5.
  CHECK(s.ln_ppl_base.value == doctest::Approx(2.5).epsilon(1e-15));
  CHECK(s.ln_ppl_base.error == doctest::Approx(std::sqrt(5.0 / 12.0)).epsilon(1e-14));
  CHECK(s.ln_ppl_compared.value == doctest::Approx(3.0).epsilon(1e-15));
  CHECK(s.ln_ppl_compared.error == doctest::Approx(std::sqrt(7.5 / 12.0)).epsilon(1e-14));
  CHECK(s.ppl_base.value == doctest::Approx(std::exp(2.5)).epsilon(1e-14));
  CHECK(s.ppl_base.error == doctest::Approx(std::exp(2.5) * std::sqrt(5.0 / 12.0)).epsilon(1e-14));
  // Cross deviations (-1.5,-1,0.5,2).(-1.5,-0.5,0.5,1.5) = 6: Pearson 6 / sqrt(7.5 * 5).
  CHECK(s.cor_ln_ppl == doctest::Approx(6.0 / std::sqrt(37.5)).epsilon(1e-14));
  // Differences (0.5, 0, 0.5, 1): mean 0.5, SS 0.5, se sqrt(0.5 / 12) = sqrt(se_c^2 + se_b^2 - 2 * 6/12).
  CHECK(s.ln_ppl_ratio.value == doctest::Approx(0.5).epsilon(1e-14));
  CHECK(s.ln_ppl_ratio.error == doctest::Approx(std::sqrt(0.5 / 12.0)).epsilon(1e-13));
  CHECK(s.ppl_ratio.value == doctest::Approx(std::exp(0.5)).epsilon(1e-14));
  CHECK(s.ppl_ratio.error == doctest::Approx(std::exp(0.5) * std::sqrt(0.5 / 12.0)).epsilon(1e-13));
  const double ec = std::exp(3.0) * std::sqrt(7.5 / 12.0), eb = std::exp(2.5) * std::sqrt(5.0 / 12.0);
  CHECK(s.ppl_difference.value == doctest::Approx(std::exp(3.0) - std::exp(2.5)).epsilon(1e-14));
  CHECK(s.ppl_difference.error ==
        doctest::Approx(std::sqrt(ec * ec + eb * eb - 2 * std::exp(3.0) * std::exp(2.5) * 0.5)).epsilon(1e-12));
  // KL: mean 0.25, SS 0.0625+0.0225+0.0025+0.2025 = 0.29; quantiles at h = 3q: median 0.15, 90 % 0.55,
  // 99.9 % 0.2 + 0.997 * 0.5 = 0.6985, 10 % 0.03.
  CHECK(s.kld.value == doctest::Approx(0.25).epsilon(1e-15));
  CHECK(s.kld.error == doctest::Approx(std::sqrt(0.29 / 12.0)).epsilon(1e-13));
  CHECK(s.kld_quantiles.median() == doctest::Approx(0.15).epsilon(1e-14));
  CHECK(s.kld_quantiles.at(0.9) == doctest::Approx(0.55).epsilon(1e-14));
  CHECK(s.kld_quantiles.at(0.999) == doctest::Approx(0.6985).epsilon(1e-14));
  CHECK(s.kld_quantiles.at(0.1) == doctest::Approx(0.03).epsilon(1e-13));
  CHECK(s.kld_quantiles.maximum() == 0.7);
  CHECK(s.kld_quantiles.minimum() == 0.0);
  // Δp: mean 0.05; sorted (-0.2, 0, 0.1, 0.3), 25 % at h = 0.75 -> -0.05. Δp^2 = (0.01, 0.04, 0, 0.09): mean
  // 0.035 = RMS^2, SS of the squares 0.0049 -> se 0.0049 / 12, RMS error 0.5 / RMS * sqrt(0.0049 / 12).
  CHECK(s.delta_p.value == doctest::Approx(0.05).epsilon(1e-14));
  CHECK(s.delta_p_quantiles.at(0.25) == doctest::Approx(-0.05).epsilon(1e-13));
  CHECK(s.rms_delta_p.value == doctest::Approx(std::sqrt(0.035)).epsilon(1e-14));
  CHECK(s.rms_delta_p.error == doctest::Approx(0.5 / std::sqrt(0.035) * std::sqrt(0.0049 / 12.0)).epsilon(1e-12));
  // Same top: 3 of 4, binomial error sqrt(0.75 * 0.25 / 3) = 0.25.
  CHECK(s.same_top_count == 3);
  CHECK(s.same_top.value == 0.75);
  CHECK(s.same_top.error == doctest::Approx(0.25).epsilon(1e-14));

  const auto text = qprob::metrics::format_llama_cpp_summary(s);
  CHECK(text.find("Mean PPL(base)                :  12.182494 ±   7.863766\n") != std::string::npos);
  CHECK(text.find("Cor(ln(PPL(Q)), ln(PPL(base))):  97.98%\n") != std::string::npos);
  CHECK(text.find("Mean ln(PPL(Q)/PPL(base))     :   0.500000 ±   0.204124\n") != std::string::npos);
  CHECK(text.find("Mean    KLD:   0.250000 ±   0.155456\n") != std::string::npos);
  CHECK(text.find("Median  KLD:   0.150000\n") != std::string::npos);
  CHECK(text.find("25.0%   Δp: -5.000%\n") != std::string::npos);
  CHECK(text.find("Same top p: 75.000 ± 25.000 %\n") != std::string::npos);
}

TEST_CASE("token divergence: the summary equals llama.cpp's raw-sum formulas on random rows") {
  // llama.cpp accumulates sums and sums of squares; its formulas are evaluated here independently in long
  // double (so its cancellation does not matter) and compared with the two-pass summary.
  auto rng = qprob::test::make_rng(73);
  INFO("seed ", qprob::test::run_seed());
  token_divergence_accumulator acc;
  long double sum_nll = 0, sum_nll2 = 0, sum_base = 0, sum_base2 = 0, sum_cross = 0, sum_kl = 0, sum_kl2 = 0;
  long double sum_dp = 0, sum_dp2 = 0, sum_dp4 = 0;
  std::int64_t same = 0;
  const int n = 500;
  for (int i = 0; i < n; ++i) {
    const auto base = random_row(rng, 33, 2.0);
    auto other      = base;
    std::normal_distribution<double> noise(0.0, 0.7);
    for (auto& v : other) {
      v += noise(rng);
    }
    double m = -inf, s = 0;
    for (const double v : other) {
      m = std::max(m, v);
    }
    for (const double v : other) {
      s += std::exp(v - m);
    }
    for (auto& v : other) {
      v -= m + std::log(s);
    }
    const auto target = static_cast<std::int64_t>(rng() % 33);
    const auto c      = acc.add(base, other, target);
    const long double nll = -other[static_cast<std::size_t>(target)], nllb = -base[static_cast<std::size_t>(target)];
    sum_nll += nll;
    sum_nll2 += nll * nll;
    sum_base += nllb;
    sum_base2 += nllb * nllb;
    sum_cross += nll * nllb;
    sum_kl += c.kl;
    sum_kl2 += static_cast<long double>(c.kl) * c.kl;
    const long double dp = std::exp(-nll) - std::exp(-nllb);
    sum_dp += dp;
    sum_dp2 += dp * dp;
    sum_dp4 += dp * dp * dp * dp;
    same += c.same_top() ? 1 : 0;
  }
  const long double N = n;
  const auto mean_unc = [&](long double s1, long double s2) {
    const long double f = s1 / N;
    const long double df = std::sqrt((s2 / N - f * f) / (N - 1));
    return std::pair<double, double>(static_cast<double>(f), static_cast<double>(df));
  };
  const auto q  = mean_unc(sum_nll, sum_nll2);
  const auto b  = mean_unc(sum_base, sum_base2);
  const auto cov = static_cast<double>((sum_cross / N - (sum_nll / N) * (sum_base / N)) / (N - 1));
  const auto s  = acc.summary();
  constexpr double tol = 1e-9;  // two-pass double vs raw sums in long double over 500 values of size ~1-10
  CHECK(s.ln_ppl_compared.value == doctest::Approx(q.first).epsilon(tol));
  CHECK(s.ln_ppl_compared.error == doctest::Approx(q.second).epsilon(tol));
  CHECK(s.ln_ppl_base.error == doctest::Approx(b.second).epsilon(tol));
  CHECK(s.cor_ln_ppl == doctest::Approx(cov / (q.second * b.second)).epsilon(tol));
  CHECK(s.ln_ppl_ratio.error ==
        doctest::Approx(std::sqrt(q.second * q.second + b.second * b.second - 2 * cov)).epsilon(1e-7));
  const auto kl = mean_unc(sum_kl, sum_kl2);
  CHECK(s.kld.value == doctest::Approx(kl.first).epsilon(tol));
  CHECK(s.kld.error == doctest::Approx(kl.second).epsilon(tol));
  CHECK(s.kld.value > 0.0);
  const auto dp  = mean_unc(sum_dp, sum_dp2);
  const auto mse = mean_unc(sum_dp2, sum_dp4);
  CHECK(s.delta_p.value == doctest::Approx(dp.first).epsilon(1e-7).scale(1e-3));
  CHECK(s.delta_p.error == doctest::Approx(dp.second).epsilon(tol));
  CHECK(s.rms_delta_p.value == doctest::Approx(std::sqrt(mse.first)).epsilon(tol));
  CHECK(s.rms_delta_p.error == doctest::Approx(0.5 / std::sqrt(mse.first) * mse.second).epsilon(tol));
  CHECK(s.same_top_count == same);
  const double p = static_cast<double>(same) / n;
  CHECK(s.same_top.error == doctest::Approx(std::sqrt(p * (1 - p) / (n - 1))).epsilon(1e-14));
}

TEST_CASE("token divergence: identical models give zero divergence and a correlation of one") {
  auto rng = qprob::test::make_rng(74);
  INFO("seed ", qprob::test::run_seed());
  token_divergence_accumulator acc;
  for (int i = 0; i < 50; ++i) {
    const auto row = random_row(rng, 40, 2.0);
    (void)acc.add(row, row, static_cast<std::int64_t>(rng() % 40));
  }
  const auto s = acc.summary();
  CHECK(s.kld.value == 0.0);
  CHECK(s.kld_quantiles.maximum() == 0.0);
  CHECK(s.delta_p.value == 0.0);
  CHECK(s.rms_delta_p.value == 0.0);
  CHECK(s.rms_delta_p.error == 0.0);
  CHECK(s.ln_ppl_ratio.value == 0.0);
  CHECK(s.ppl_ratio.value == 1.0);
  CHECK(s.cor_ln_ppl == doctest::Approx(1.0).epsilon(1e-14));
  CHECK(s.same_top.value == 1.0);
  CHECK(s.same_top.error == 0.0);
  // Nothing added: every statistic is undefined, the count 0.
  const auto empty = token_divergence_accumulator{}.summary();
  CHECK(empty.count == 0);
  CHECK(std::isnan(empty.kld.value));
  CHECK(std::isnan(empty.ppl_base.value));
}

TEST_CASE("token divergence: malformed rows are rejected with the reason") {
  const auto p = logs({0.5, 0.25, 0.25});
  CHECK(message_of([&] { (void)compare_token(p, logs({0.5, 0.5}), 0); }).find("same vocabulary") != std::string::npos);
  CHECK(message_of([&] { (void)compare_token(std::vector<double>{}, std::vector<double>{}, 0); })
            .find("empty log-probability row") != std::string::npos);
  CHECK(message_of([&] { (void)compare_token(p, p, 3); }).find("target token 3 is outside the vocabulary of 3") !=
        std::string::npos);
  CHECK(message_of([&] { (void)compare_token(p, p, -1); }).find("target token -1") != std::string::npos);
  auto nan_row = p;
  nan_row[1]   = std::numeric_limits<double>::quiet_NaN();
  CHECK(message_of([&] { (void)compare_token(p, nan_row, 0); }).find("compared row entry 1 is nan") !=
        std::string::npos);
  auto inf_row = p;
  inf_row[2]   = inf;
  CHECK(message_of([&] { (void)compare_token(inf_row, p, 0); }).find("base row entry 2 is inf") != std::string::npos);
  // Logits instead of log-probabilities: normalization is checked.
  const std::vector<double> logits = {2.0, 1.0, 0.5};
  CHECK(message_of([&] { (void)compare_token(p, logits, 0); }).find("the compared row is not normalized") !=
        std::string::npos);
  CHECK(message_of([&] { (void)compare_token(logits, p, 0); }).find("pass log-softmax rows, not logits") !=
        std::string::npos);
}
