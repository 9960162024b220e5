// SPDX-License-Identifier: Apache-2.0
#pragma once
// Statistics for the metrics layer (host, double precision, Boost.Math distributions): binomial intervals,
// the paired t-test, Wilcoxon signed-rank and McNemar tests, and numpy's pairwise summation (which the
// seed_compat functions need to reproduce the notebook's np.mean bit for bit). Each function states which
// scipy / statsmodels call it matches; docs/metrics.md has the formulas.

#include <qprob/core/error.hpp>
#include <qprob/metrics/types.hpp>

#include <boost/math/distributions/binomial.hpp>
#include <boost/math/distributions/chi_squared.hpp>
#include <boost/math/distributions/normal.hpp>
#include <boost/math/distributions/students_t.hpp>
#include <boost/random/binomial_distribution.hpp>
#include <boost/random/mersenne_twister.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

namespace qprob::metrics {

inline constexpr double nan_v = std::numeric_limits<double>::quiet_NaN();

/// numpy's pairwise summation of a contiguous float64 array (umath loops_utils pairwise_sum, PW_BLOCKSIZE
/// 128, 8 accumulators): np.sum / np.mean of a 1-D contiguous array is exactly this (np.mean divides by n).
[[nodiscard]] inline double numpy_pairwise_sum(const double* a, std::int64_t n) {
  constexpr std::int64_t block = 128;
  if (n < 8) {
    double res = 0.;  // numpy starts from -0.0 only for empty reductions with an initial; 0. is its identity
    for (std::int64_t i = 0; i < n; ++i) {
      res += a[i];
    }
    return res;
  }
  if (n <= block) {
    double r[8];
    for (int j = 0; j < 8; ++j) {
      r[j] = a[j];
    }
    std::int64_t i = 8;
    for (; i < n - (n % 8); i += 8) {
      for (int j = 0; j < 8; ++j) {
        r[j] += a[i + j];
      }
    }
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) {
      res += a[i];
    }
    return res;
  }
  std::int64_t n2 = n / 2;
  n2 -= n2 % 8;
  return numpy_pairwise_sum(a, n2) + numpy_pairwise_sum(a + n2, n - n2);
}

/// np.mean of a 1-D float64 array: pairwise sum / n (NaN for an empty array, as numpy returns).
[[nodiscard]] inline double numpy_mean(std::span<const double> a) {
  if (a.empty()) {
    return nan_v;
  }
  return numpy_pairwise_sum(a.data(), static_cast<std::int64_t>(a.size())) / static_cast<double>(a.size());
}

/// Two-sided normal quantile z_{1 - (1 - level) / 2}.
[[nodiscard]] inline double normal_quantile_two_sided(double level) {
  return boost::math::quantile(boost::math::normal_distribution<double>(), 0.5 + level / 2.0);
}

/// Wilson score interval for k successes in n trials at `level` (statsmodels proportion_confint(method="wilson")).
[[nodiscard]] inline interval wilson_interval(std::int64_t k, std::int64_t n, double level) {
  QPROB_CHECK(n >= 0 && k >= 0 && k <= n, "wilson_interval: k=", k, " must be in [0, n=", n, "]");
  if (n == 0) {
    return {};
  }
  const double z   = normal_quantile_two_sided(level);
  const double nn  = static_cast<double>(n);
  const double p   = static_cast<double>(k) / nn;
  const double z2  = z * z;
  const double den = 1.0 + z2 / nn;
  const double mid = (p + z2 / (2.0 * nn)) / den;
  const double hw  = z / den * std::sqrt(p * (1.0 - p) / nn + z2 / (4.0 * nn * nn));
  return {std::max(0.0, mid - hw), std::min(1.0, mid + hw)};
}

/// Standard error of a proportion as lm-eval reports it: sample std (ddof = 1) / sqrt(n) of the 0/1 values,
/// i.e. sqrt(p (1 - p) / (n - 1)). NaN for n < 2.
[[nodiscard]] inline double proportion_stderr(std::int64_t k, std::int64_t n) {
  if (n < 2) {
    return nan_v;
  }
  const double p = static_cast<double>(k) / static_cast<double>(n);
  return std::sqrt(p * (1.0 - p) / static_cast<double>(n - 1));
}

/// Percentile bootstrap interval of a proportion. Resampling n 0/1 outcomes with replacement and counting the
/// ones is exactly a Binomial(n, k / n) draw, so each replicate is one binomial variate (Boost.Random's
/// binomial_distribution and mt19937_64 are fully specified algorithms: the interval is reproducible across
/// platforms for a given seed). Quantiles: sorted replicates, linear interpolation (numpy's default).
[[nodiscard]] inline interval bootstrap_proportion_interval(std::int64_t k,
                                                            std::int64_t n,
                                                            int iterations,
                                                            std::uint64_t seed,
                                                            double level) {
  QPROB_CHECK(n >= 0 && k >= 0 && k <= n, "bootstrap: k=", k, " must be in [0, n=", n, "]");
  if (n == 0 || iterations <= 0) {
    return {};
  }
  boost::random::mt19937_64 rng(seed);
  boost::random::binomial_distribution<std::int64_t, double> draw(n, static_cast<double>(k) / static_cast<double>(n));
  std::vector<double> reps(static_cast<std::size_t>(iterations));
  for (auto& r : reps) {
    r = static_cast<double>(draw(rng)) / static_cast<double>(n);
  }
  std::sort(reps.begin(), reps.end());
  const auto quantile = [&](double q) {
    const double pos = q * static_cast<double>(reps.size() - 1);
    const auto lo    = static_cast<std::size_t>(std::floor(pos));
    const auto hi    = std::min(lo + 1, reps.size() - 1);
    return reps[lo] + (pos - static_cast<double>(lo)) * (reps[hi] - reps[lo]);
  };
  const double tail = (1.0 - level) / 2.0;
  return {quantile(tail), quantile(1.0 - tail)};
}

/// Paired t-test from the mean and the sample std (ddof = 1) of the differences d = a - b: scipy.stats.ttest_rel(a, b).
/// t = mean / (sd / sqrt(n)), dof = n - 1, p = 2 * sf(|t|). NaN t/p for n < 2; zero variance gives t = +-inf
/// (p = 0) or NaN (mean 0 too), as scipy does.
[[nodiscard]] inline t_test_result paired_t_test(double mean_d, double sd_d, std::int64_t n, double alpha) {
  t_test_result r;
  if (n < 2) {
    return r;
  }
  r.dof = static_cast<double>(n - 1);
  r.t   = mean_d / (sd_d / std::sqrt(static_cast<double>(n)));
  if (std::isnan(r.t)) {
    return r;
  }
  if (std::isinf(r.t)) {
    r.p = 0.0;
  } else {
    const boost::math::students_t_distribution<double> dist(r.dof);
    r.p = std::min(1.0, 2.0 * boost::math::cdf(boost::math::complement(dist, std::fabs(r.t))));
  }
  r.significant = r.p < alpha;
  return r;
}

/// Same from the raw pairs, two-pass mean and variance.
[[nodiscard]] inline t_test_result paired_t_test(std::span<const double> a, std::span<const double> b, double alpha) {
  QPROB_CHECK_EQ(a.size(), b.size(), "paired_t_test: the two samples must pair up");
  const auto n = static_cast<std::int64_t>(a.size());
  if (n < 2) {
    return {};
  }
  double mean = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    mean += a[i] - b[i];
  }
  mean /= static_cast<double>(n);
  double ss = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double dev = (a[i] - b[i]) - mean;
    ss += dev * dev;
  }
  return paired_t_test(mean, std::sqrt(ss / static_cast<double>(n - 1)), n, alpha);
}

/// Wilcoxon signed-rank test of d = a - b (scipy.stats.wilcoxon(a, b, zero_method="wilcox", correction=False,
/// alternative="two-sided", method=...)): zero differences are dropped, |d| ranked with average ranks for
/// ties, R+ = sum of ranks of d > 0, statistic min(R+, R-).
///  - exact: p = min(1, 2 min(P(W <= R+), P(W >= R+))) under the null distribution of W for n_nonzero.
///  - asymptotic: z = (R+ - n(n+1)/4) / sqrt(n(n+1)(2n+1)/24 - sum_t (t^3 - t)/48), p = 2 Phi(-|z|).
///  - automatic: exact when n_nonzero <= 50 and no |d| ties, else asymptotic. scipy's 'auto' would run a
///    random permutation test for small samples with ties; qprob never does (not reproducible).
[[nodiscard]] inline wilcoxon_result wilcoxon_signed_rank(std::span<const double> a,
                                                          std::span<const double> b,
                                                          wilcoxon_method method,
                                                          double alpha) {
  QPROB_CHECK_EQ(a.size(), b.size(), "wilcoxon_signed_rank: the two samples must pair up");
  std::vector<double> d;
  d.reserve(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double v = a[i] - b[i];
    if (v != 0.0) {
      d.push_back(v);
    }
  }
  wilcoxon_result r;
  const auto n = static_cast<std::int64_t>(d.size());
  r.n_nonzero  = n;
  if (n == 0) {
    return r;
  }
  std::vector<std::size_t> order(d.size());
  for (std::size_t i = 0; i < order.size(); ++i) {
    order[i] = i;
  }
  std::stable_sort(order.begin(), order.end(), [&](std::size_t x, std::size_t y) { return std::fabs(d[x]) < std::fabs(d[y]); });
  double r_plus = 0, r_minus = 0, tie_term = 0;
  bool ties     = false;
  for (std::size_t i = 0; i < order.size();) {
    std::size_t j = i;
    while (j + 1 < order.size() && std::fabs(d[order[j + 1]]) == std::fabs(d[order[i]])) {
      ++j;
    }
    const double t    = static_cast<double>(j - i + 1);
    const double rank = (static_cast<double>(i + 1) + static_cast<double>(j + 1)) / 2.0;  // average rank
    if (t > 1) {
      ties = true;
      tie_term += t * t * t - t;
    }
    for (std::size_t k = i; k <= j; ++k) {
      (d[order[k]] > 0 ? r_plus : r_minus) += rank;
    }
    i = j + 1;
  }
  r.statistic = std::min(r_plus, r_minus);
  const bool use_exact = method == wilcoxon_method::exact || (method == wilcoxon_method::automatic && n <= 50 && !ties);
  const double nn      = static_cast<double>(n);
  if (use_exact) {
    QPROB_CHECK(n <= 1000, "wilcoxon exact method: n_nonzero=", n, " is too large; use the asymptotic method");
    // counts[s] = number of sign patterns of ranks 1..n with positive-rank sum s; at most 2^n, so exact in
    // double up to n = 53 and a relative rounding of 2^-53 beyond.
    const std::int64_t max_sum = n * (n + 1) / 2;
    std::vector<double> counts(static_cast<std::size_t>(max_sum + 1), 0.0);
    counts[0] = 1.0;
    for (std::int64_t k = 1; k <= n; ++k) {
      for (std::int64_t s = k * (k + 1) / 2; s >= k; --s) {
        counts[static_cast<std::size_t>(s)] += counts[static_cast<std::size_t>(s - k)];
      }
    }
    const double total = std::ldexp(1.0, static_cast<int>(n));
    // With ties R+ can be a half-integer; P(W <= R+) and P(W >= R+) then use floor / ceil.
    const auto lo = static_cast<std::int64_t>(std::floor(r_plus));
    const auto hi = static_cast<std::int64_t>(std::ceil(r_plus));
    double cdf = 0, sf = 0;
    for (std::int64_t s = 0; s <= max_sum; ++s) {
      if (s <= lo) {
        cdf += counts[static_cast<std::size_t>(s)];
      }
      if (s >= hi) {
        sf += counts[static_cast<std::size_t>(s)];
      }
    }
    r.exact = true;
    r.p     = std::min(1.0, 2.0 * std::min(cdf, sf) / total);
  } else {
    const double mean = nn * (nn + 1) / 4.0;
    const double var  = nn * (nn + 1) * (2 * nn + 1) / 24.0 - tie_term / 48.0;
    r.z               = (r_plus - mean) / std::sqrt(var);
    r.p = std::min(1.0, 2.0 * boost::math::cdf(boost::math::normal_distribution<double>(), -std::fabs(r.z)));
  }
  r.significant = r.p < alpha;
  return r;
}

/// McNemar's test on the discordant counts b (full right, quantized wrong) and c (full wrong, quantized right).
/// exact_binomial: statistic min(b, c), p = min(1, 2 BinomCDF(min(b, c); b + c, 1/2)) (statsmodels
/// mcnemar(exact=True)). chi_squared_continuity: statistic (|b - c| - 1)^2 / (b + c), p = chi2(1).sf
/// (statsmodels exact=False, correction=True). No discordant pair: p = 1, statistic 0.
[[nodiscard]] inline mcnemar_result mcnemar_test(std::int64_t b, std::int64_t c, mcnemar_method method, double alpha) {
  QPROB_CHECK(b >= 0 && c >= 0, "mcnemar_test: counts b=", b, " c=", c, " must be >= 0");
  mcnemar_result r;
  r.b = b;
  r.c = c;
  if (b + c == 0) {
    r.statistic = 0;
    r.p         = 1.0;
    return r;
  }
  if (method == mcnemar_method::exact_binomial) {
    const std::int64_t m = std::min(b, c);
    r.statistic          = static_cast<double>(m);
    const boost::math::binomial_distribution<double> dist(static_cast<double>(b + c), 0.5);
    r.p = std::min(1.0, 2.0 * boost::math::cdf(dist, static_cast<double>(m)));
  } else {
    const double diff = std::fabs(static_cast<double>(b - c)) - 1.0;
    r.statistic       = diff * diff / static_cast<double>(b + c);
    r.p = boost::math::cdf(boost::math::complement(boost::math::chi_squared_distribution<double>(1.0), r.statistic));
  }
  r.significant = r.p < alpha;
  return r;
}

}  // namespace qprob::metrics
