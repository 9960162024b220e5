// SPDX-License-Identifier: Apache-2.0
// Statistics of the metrics layer against closed forms: Wilson and bootstrap intervals, the paired t-test
// (dof 2 has a closed-form CDF), Wilcoxon exact (enumerated by hand) and asymptotic (formula with tie
// correction, via std::erfc, independent of Boost), McNemar exact and chi-squared, numpy's pairwise summation.
#include <qprob/metrics/stats.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

#include "support.hpp"

namespace m = qprob::metrics;

namespace {
// Boost.Math distributions are accurate to a few ulps; closed forms here to 1e-15: 1e-12 relative is ample
// while still catching any wrong formula (which would be off by > 1e-3).
constexpr double dist_tol = 1e-12;
double rel(double a, double b) { return std::fabs(a - b) / std::max(std::fabs(a), std::fabs(b)); }
}  // namespace

TEST_CASE("Wilson interval: hand formula and the 8 / 10 textbook value") {
  const auto w = m::wilson_interval(8, 10, 0.95);
  // statsmodels proportion_confint(8, 10, method="wilson") = (0.4901624, 0.9433178)
  CHECK(w.lower == doctest::Approx(0.4901624).epsilon(1e-6));
  CHECK(w.upper == doctest::Approx(0.9433178).epsilon(1e-6));
  const auto all = m::wilson_interval(10, 10, 0.95);
  CHECK(all.upper == doctest::Approx(1.0).epsilon(1e-15));  // k = n: centre + half-width is 1 up to rounding
  CHECK(all.lower > 0.6);
  CHECK(std::isnan(m::wilson_interval(0, 0, 0.95).lower));
  CHECK_THROWS_AS((void)m::wilson_interval(11, 10, 0.95), qprob::invalid_argument);
}

TEST_CASE("lm-eval standard error of a proportion") {
  // values 1,1,0,0,0 -> sample std sqrt(0.3), / sqrt(5)
  CHECK(rel(m::proportion_stderr(2, 5), std::sqrt(0.3) / std::sqrt(5.0)) < 1e-15);
  CHECK(std::isnan(m::proportion_stderr(1, 1)));
}

TEST_CASE("bootstrap interval is reproducible for a seed, brackets the estimate and has Wilson's width") {
  const auto a = m::bootstrap_proportion_interval(640, 1000, 2000, 42, 0.95);
  const auto b = m::bootstrap_proportion_interval(640, 1000, 2000, 42, 0.95);
  const auto c = m::bootstrap_proportion_interval(640, 1000, 2000, 43, 0.95);
  CHECK(a.lower == b.lower);
  CHECK(a.upper == b.upper);
  CHECK((a.lower != c.lower || a.upper != c.upper));
  CHECK(a.lower < 0.64);
  CHECK(a.upper > 0.64);
  const auto w = m::wilson_interval(640, 1000, 0.95);
  // both estimate 2 * 1.96 * sqrt(.64 * .36 / 1000) = 0.0595; 2000 replicates put the percentiles within ~10%
  CHECK((a.upper - a.lower) == doctest::Approx(w.upper - w.lower).epsilon(0.15));
  CHECK(std::isnan(m::bootstrap_proportion_interval(5, 10, 0, 1, 0.95).lower));
}

TEST_CASE("paired t-test: dof 2 closed form") {
  // d = {1, 2, 3}: mean 2, sd 1, t = 2 sqrt(3), p = 1 - t / sqrt(t^2 + 2) for 2 degrees of freedom.
  const std::vector<double> a{2, 4, 6}, b{1, 2, 3};
  const auto r = m::paired_t_test(a, b, 0.05);
  const double t = 2.0 * std::sqrt(3.0);
  CHECK(rel(r.t, t) < 1e-14);
  CHECK(r.dof == 2.0);
  CHECK(rel(r.p, 1.0 - t / std::sqrt(t * t + 2.0)) < dist_tol);
  CHECK_FALSE(r.significant);  // p = 0.074
  CHECK(m::paired_t_test(a, b, 0.1).significant);
  // sign of t follows a - b
  CHECK(m::paired_t_test(b, a, 0.05).t < 0);
}

TEST_CASE("paired t-test: degenerate inputs return NaN or infinite t as scipy does") {
  const std::vector<double> one{1.0}, two{2.0};
  CHECK(std::isnan(m::paired_t_test(one, two, 0.05).p));
  const std::vector<double> a{1, 2, 3}, b{0, 1, 2};  // constant difference 1: t = +inf, p = 0
  const auto r = m::paired_t_test(a, b, 0.05);
  CHECK(std::isinf(r.t));
  CHECK(r.p == 0.0);
}

TEST_CASE("Wilcoxon exact: enumerated null distribution for n = 5") {
  // d = {1, -2, 3, 4, 5}: R+ = 13, R- = 2; P(W <= 2) = 3 / 32 ({}, {1}, {2}) -> p = 6 / 32.
  const std::vector<double> a{1, -2, 3, 4, 5}, z(5, 0.0);
  const auto r = m::wilcoxon_signed_rank(a, z, m::wilcoxon_method::automatic, 0.05);
  CHECK(r.exact);
  CHECK(r.statistic == 2.0);
  CHECK(r.n_nonzero == 5);
  CHECK(rel(r.p, 6.0 / 32.0) < 1e-15);
  // all positive: p = 2 / 2^n
  const std::vector<double> pos{0.1, 0.2, 0.3, 0.4, 0.5, 0.6};
  CHECK(rel(m::wilcoxon_signed_rank(pos, std::vector<double>(6, 0.0), m::wilcoxon_method::exact, 0.05).p, 2.0 / 64.0) < 1e-15);
}

TEST_CASE("Wilcoxon asymptotic: tie-corrected normal approximation, zeros dropped") {
  // d = {1, 1, -2, 3, 3, 3, 0}: zero dropped (n = 6); ranks 1.5, 1.5, 3, 5, 5, 5; R+ = 18.
  // var = 6*7*13/24 - ((2^3-2) + (3^3-3)) / 48 = 22.125; z = (18 - 10.5) / sqrt(22.125).
  const std::vector<double> d{1, 1, -2, 3, 3, 3, 0}, z(7, 0.0);
  const auto r = m::wilcoxon_signed_rank(d, z, m::wilcoxon_method::automatic, 0.05);
  CHECK_FALSE(r.exact);  // ties: automatic picks the asymptotic method
  CHECK(r.n_nonzero == 6);
  CHECK(r.statistic == 3.0);
  const double zz = 7.5 / std::sqrt(22.125);
  CHECK(rel(r.z, zz) < 1e-14);
  CHECK(rel(r.p, std::erfc(zz / std::sqrt(2.0))) < dist_tol);
}

TEST_CASE("Wilcoxon large random sample: exact and asymptotic agree to the normal approximation error") {
  auto rng = qprob::test::make_rng(31);
  INFO("seed=", qprob::test::run_seed());
  std::normal_distribution<double> g(0.1, 1.0);
  std::vector<double> a(40), b(40, 0.0);
  for (auto& v : a) {
    v = g(rng);
  }
  const auto e = m::wilcoxon_signed_rank(a, b, m::wilcoxon_method::exact, 0.05);
  const auto n = m::wilcoxon_signed_rank(a, b, m::wilcoxon_method::asymptotic, 0.05);
  CHECK(e.exact);
  CHECK(e.statistic == n.statistic);
  // n = 40: the normal approximation of the signed-rank null is within ~0.01 absolute of the exact p
  CHECK(std::fabs(e.p - n.p) < 0.02);
}

TEST_CASE("McNemar exact binomial and chi-squared with continuity correction") {
  // b = 1, c = 6: 2 * P(X <= 1; 7, 1/2) = 2 * 8 / 128
  const auto e = m::mcnemar_test(1, 6, m::mcnemar_method::exact_binomial, 0.05);
  CHECK(rel(e.p, 0.125) < dist_tol);
  CHECK(e.statistic == 1.0);
  // chi2 = (5 - 1)^2 / 7; sf of chi2(1) = erfc(sqrt(x / 2))
  const auto c = m::mcnemar_test(1, 6, m::mcnemar_method::chi_squared_continuity, 0.05);
  CHECK(rel(c.statistic, 16.0 / 7.0) < 1e-15);
  CHECK(rel(c.p, std::erfc(std::sqrt(8.0 / 7.0))) < dist_tol);
  CHECK(m::mcnemar_test(0, 0, m::mcnemar_method::exact_binomial, 0.05).p == 1.0);
  CHECK(m::mcnemar_test(5, 5, m::mcnemar_method::exact_binomial, 0.05).p == 1.0);  // capped
  CHECK(m::mcnemar_test(0, 20, m::mcnemar_method::exact_binomial, 0.05).significant);
}

TEST_CASE("numpy pairwise summation: block order, not left-to-right") {
  // n = 16: accumulators r_j = a[j] + a[8 + j]; 1e16 cancels inside r_0 and the ones survive (14), whereas a
  // left-to-right sum loses every +1 next to 1e16 (ulp 2).
  std::vector<double> a(16, 1.0);
  a[0] = 1e16;
  a[8] = -1e16;
  CHECK(m::numpy_pairwise_sum(a.data(), 16) == 14.0);
  double seq = 0;
  for (double v : a) {
    seq += v;
  }
  CHECK(seq != 14.0);
  // n < 8 is left to right
  const double s[] = {1e16, 1.0, 1.0, -1e16};
  CHECK(m::numpy_pairwise_sum(s, 4) == ((1e16 + 1.0) + 1.0) - 1e16);
  // above 128 it splits at n/2 rounded down to a multiple of 8: a sum of ones stays exact
  std::vector<double> ones(1001, 1.0);
  CHECK(m::numpy_pairwise_sum(ones.data(), 1001) == 1001.0);
  CHECK(std::isnan(m::numpy_mean({})));
}
