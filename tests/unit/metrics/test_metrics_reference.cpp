// SPDX-License-Identifier: Apache-2.0
// Host reference of the per-model and paired metrics: hand-computed cases, invariants (JS bounds and symmetry,
// entropy <= ln K, calibrated data has ECE ~ 0, permutation invariance, bin edges), edge cases (N = 1,
// all-correct, all-wrong, ties, ragged K) and the error messages. Every expected value is either derived in
// the comment next to it or computed from the defining formula on a few numbers.
#include <qprob/metrics/reference.hpp>

#include <boost/math/distributions/beta.hpp>
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "helpers.hpp"
#include "support.hpp"

namespace m = qprob::metrics;
using m::test::rel_diff;

namespace {
// Sums of a few doubles in a different order than the reference: 1e-12 relative covers any reordering of
// <= 1e6 terms of like sign (error <= n * 2^-53 ~ 1e-10 worst case, typically sqrt(n) * 2^-53).
constexpr double reorder_tol = 1e-10;
// Hand-computed values are evaluated with the same formula in double: a few ulps.
constexpr double hand_tol = 1e-14;

m::choice_scores one_sample(std::vector<double> ll, int gold, std::vector<std::int32_t> chars = {}) {
  m::choice_scores s;
  s.add(ll, gold, chars);
  return s;
}
}  // namespace

TEST_CASE("two-choice sample: probabilities, confidence, entropy, brier, nll by hand") {
  // loglik {ln 1, ln 3} -> p = {1/4, 3/4}, gold 1.
  const auto s = one_sample({0.0, std::log(3.0)}, 1);
  const auto r = m::compute_model_metrics_reference(s.view(), {});
  CHECK(r.n == 1);
  CHECK(r.acc == 1.0);
  CHECK(rel_diff(r.conf, 0.75) < hand_tol);
  CHECK(rel_diff(r.conf_true, 0.75) < hand_tol);
  CHECK(rel_diff(r.conf_correct, 0.75) < hand_tol);
  CHECK(std::isnan(r.conf_err));  // no wrong prediction
  const double h = -(0.25 * std::log(0.25) + 0.75 * std::log(0.75));
  CHECK(rel_diff(r.entropy, h) < hand_tol);
  CHECK(rel_diff(r.entropy_bits, h / std::log(2.0)) < hand_tol);
  CHECK(rel_diff(r.brier, 0.0625 + 0.0625) < hand_tol);
  CHECK(rel_diff(r.nll, -std::log(0.75)) < hand_tol);
}

TEST_CASE("choice_probabilities is a softmax per sample over ragged choices") {
  m::choice_scores s;
  s.add(std::vector<double>{0.0, std::log(3.0)}, 0);
  s.add(std::vector<double>{std::log(1.0), std::log(2.0), std::log(5.0)}, 2);
  const auto p = m::choice_probabilities(s.view(), m::scoring::sum);
  REQUIRE(p.size() == 5);
  const double expect[] = {0.25, 0.75, 0.125, 0.25, 0.625};
  for (int j = 0; j < 5; ++j) {
    CAPTURE(j);
    CHECK(rel_diff(p[static_cast<std::size_t>(j)], expect[j]) < hand_tol);
  }
}

TEST_CASE("acc uses summed log-likelihood, acc_norm the per-character one (lm-eval)") {
  // sum: -4 > -6 -> choice 0; per char: -4/2 = -2 < -6/6 = -1 -> choice 1; gold 1.
  const auto s = one_sample({-4.0, -6.0}, 1, {2, 6});
  const auto r = m::compute_model_metrics_reference(s.view(), {});
  CHECK(r.acc == 0.0);
  CHECK(r.acc_norm == 1.0);
  m::metric_options o;
  o.score = m::scoring::char_normalized;
  const auto rn = m::compute_model_metrics_reference(s.view(), o);
  CHECK(rn.accuracy == 1.0);
  // softmax(-2, -1): p1 = 1 / (1 + e^-1)
  CHECK(rel_diff(rn.conf, 1.0 / (1.0 + std::exp(-1.0))) < hand_tol);
}

TEST_CASE("token-normalised scoring divides by token counts") {
  m::choice_scores s;
  const std::vector<std::int32_t> toks{4, 1};
  s.add(std::vector<double>{-8.0, -3.0}, 0, {}, toks);  // -2 vs -3 -> choice 0
  m::metric_options o;
  o.score      = m::scoring::token_normalized;
  const auto r = m::compute_model_metrics_reference(s.view(), o);
  CHECK(r.accuracy == 1.0);
  CHECK(r.acc == 0.0);  // by summed log-likelihood choice 1 wins
  CHECK(rel_diff(r.conf, 1.0 / (1.0 + std::exp(-1.0))) < hand_tol);
  CHECK(std::isnan(r.acc_norm));  // no char_len given
}

TEST_CASE("ECE, MCE, RMSCE and the reliability diagram by hand, upper-closed bins") {
  // 4 bins: 0.25 -> bin 0 (edge belongs to the lower bin), 0.75 -> bin 2, 1.0 -> bin 3.
  const std::vector<double> conf{0.25, 0.75, 0.75, 1.0};
  const std::vector<std::uint8_t> ok{0, 1, 0, 1};
  const auto c = m::equal_width_calibration(conf, ok, 4, m::bin_edges::upper_closed);
  REQUIRE(c.bins.size() == 4);
  CHECK(c.bins[0].count == 1);
  CHECK(c.bins[1].count == 0);
  CHECK(c.bins[2].count == 2);
  CHECK(c.bins[3].count == 1);
  CHECK(std::isnan(c.bins[1].mean_conf));
  CHECK(c.bins[2].accuracy == 0.5);
  // bin0 gap .25 weight .25; bin2 gap .25 weight .5; bin3 gap 0.
  CHECK(rel_diff(c.ece, 0.1875) < hand_tol);
  CHECK(rel_diff(c.mce, 0.25) < hand_tol);
  CHECK(rel_diff(c.rmsce, std::sqrt(0.75 * 0.0625)) < hand_tol);
  CHECK(rel_diff(c.uniform_average, 0.5 / 3.0) < hand_tol);
}

TEST_CASE("torchmetrics bin convention: lower-closed bins plus an overflow bin for 1.0") {
  const std::vector<double> conf{0.25, 0.5, 1.0};
  const std::vector<std::uint8_t> ok{1, 0, 1};
  const auto c = m::equal_width_calibration(conf, ok, 4, m::bin_edges::torchmetrics);
  REQUIRE(c.bins.size() == 5);
  CHECK(c.bins[1].count == 1);  // 0.25 opens bin 1
  CHECK(c.bins[2].count == 1);  // 0.5 opens bin 2
  CHECK(c.bins[4].count == 1);  // 1.0 alone in the overflow bin
  const auto u = m::equal_width_calibration(conf, ok, 4, m::bin_edges::upper_closed);
  CHECK(u.bins[0].count == 1);
  CHECK(u.bins[1].count == 1);
  CHECK(u.bins[3].count == 1);
}

TEST_CASE("confidence exactly 1.0 lands in the last bin, 0 in the first, edges in the lower bin") {
  for (int bins : {1, 2, 7, 10, 15, 100}) {
    CAPTURE(bins);
    CHECK(m::calibration_bin(1.0, bins, m::bin_edges::upper_closed) == bins - 1);
    CHECK(m::calibration_bin(0.0, bins, m::bin_edges::upper_closed) == 0);
    CHECK(m::calibration_bin(1.0, bins, m::bin_edges::torchmetrics) == bins);
    for (int k = 1; k < bins; ++k) {
      const double e = static_cast<double>(k) / bins;  // the edge as Python's k / bins computes it
      CHECK(m::calibration_bin(e, bins, m::bin_edges::upper_closed) == k - 1);
      CHECK(m::calibration_bin(std::nextafter(e, 2.0), bins, m::bin_edges::upper_closed) == k);
      CHECK(m::calibration_bin(e, bins, m::bin_edges::torchmetrics) == k);
      CHECK(m::calibration_bin(std::nextafter(e, -1.0), bins, m::bin_edges::torchmetrics) == k - 1);
    }
  }
}

TEST_CASE("bin index equals a linear scan of the edges on random confidences") {
  auto rng = qprob::test::make_rng(11);
  INFO("seed=", qprob::test::run_seed());
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (int t = 0; t < 20000; ++t) {
    const int bins   = 1 + t % 37;
    const double c   = u(rng);
    int expect = 0;
    while (expect < bins - 1 && c > m::uniform_edge(expect + 1, bins)) {
      ++expect;
    }
    CHECK(m::calibration_bin(c, bins, m::bin_edges::upper_closed) == expect);
  }
}

TEST_CASE("ECE is near 0 on perfectly calibrated synthetic data and large on miscalibrated data") {
  auto rng = qprob::test::make_rng(12);
  INFO("seed=", qprob::test::run_seed());
  // conf ~ 0.25 + 0.75 Beta(2, 5) (a 4-choice model's range), correct ~ Bernoulli(conf): calibrated by construction.
  const boost::math::beta_distribution<double> beta(2.0, 5.0);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const int n = 200003;
  std::vector<double> conf(n);
  std::vector<std::uint8_t> ok(n), ok_bad(n);
  for (int i = 0; i < n; ++i) {
    conf[static_cast<std::size_t>(i)] = 0.25 + 0.75 * boost::math::quantile(beta, u(rng));
    const double draw = u(rng);
    ok[static_cast<std::size_t>(i)]     = draw < conf[static_cast<std::size_t>(i)];
    ok_bad[static_cast<std::size_t>(i)] = draw < conf[static_cast<std::size_t>(i)] * conf[static_cast<std::size_t>(i)];
  }
  const auto good = m::equal_width_calibration(conf, ok, 15, m::bin_edges::upper_closed);
  const auto bad  = m::equal_width_calibration(conf, ok_bad, 15, m::bin_edges::upper_closed);
  // Sampling noise per bin ~ sqrt(p(1-p)/n_b) <= 0.5/sqrt(n/15) ~ 0.004: 0.01 is > 2 sigma of the weighted sum.
  CHECK(good.ece < 0.01);
  CHECK(good.ece > 0.0);  // exactly 0 would mean the bins were never filled
  // Overconfident by conf - conf^2 (mean ~0.2 here): far above the noise.
  CHECK(bad.ece > 0.1);
  CHECK(m::ace_equal_mass_top_label(conf, ok, 10) < 0.01);
  CHECK(m::ace_equal_mass_top_label(conf, ok_bad, 10) > 0.1);
}

TEST_CASE("equal-mass top-label ACE by hand (np.array_split ranges)") {
  // sorted: .6(0) .7(1) | .8(1) .9(1): |0.5 - 0.65| and |1 - 0.85|, unweighted mean 0.15.
  const std::vector<double> conf{0.9, 0.6, 0.7, 0.8};
  const std::vector<std::uint8_t> ok{1, 0, 1, 1};
  CHECK(rel_diff(m::ace_equal_mass_top_label(conf, ok, 2), 0.15) < 1e-13);
  // 5 items in 2 ranges: sizes 3 and 2 (the first range takes the remainder).
  const std::vector<double> c5{0.1, 0.2, 0.3, 0.4, 0.5};
  const std::vector<std::uint8_t> o5{1, 1, 1, 0, 0};
  CHECK(rel_diff(m::ace_equal_mass_top_label(c5, o5, 2), 0.5 * (std::fabs(1 - 0.2) + std::fabs(0 - 0.45))) < 1e-13);
}

TEST_CASE("Nixon ACE by hand: per class, equal-mass ranges of p_k against the gold indicator") {
  // Two samples, K = 2, R = 1: p = {.25, .75} gold 1 and {.5, .5} gold 0.
  // class 0: mean p0 = .375, mean 1[gold=0] = .5 -> .125; class 1: mean p1 = .625, frac .5 -> .125.
  m::choice_scores s;
  s.add(std::vector<double>{0.0, std::log(3.0)}, 1);
  s.add(std::vector<double>{0.0, 0.0}, 0);
  CHECK(rel_diff(m::ace_nixon(s.view(), m::scoring::sum, 1), 0.125) < hand_tol);
  // R = 2: each class range holds one sample. class 0 sorted (.25 g0, .5 g1): |0-.25| + |1-.5|;
  // class 1 sorted (.5 g0, .75 g1): |0-.5| + |1-.75| -> total 1.5 over 4 cells.
  CHECK(rel_diff(m::ace_nixon(s.view(), m::scoring::sum, 2), 1.5 / 4) < hand_tol);
}

TEST_CASE("ACE variants are distinct metrics on the same data") {
  auto rng = qprob::test::make_rng(13);
  INFO("seed=", qprob::test::run_seed());
  const auto s = m::test::random_task(3001, 4, 4, rng);
  m::metric_options o;
  double v[4];
  const m::ace_variant all[] = {m::ace_variant::nixon, m::ace_variant::equal_mass_top_label, m::ace_variant::uniform_average,
                                m::ace_variant::seed_compat};
  for (int i = 0; i < 4; ++i) {
    o.ace = all[i];
    v[i]  = m::compute_model_metrics_reference(s.view(), o).ace;
    CHECK(v[i] > 0.0);
    CHECK(v[i] < 1.0);
  }
  CHECK(v[0] != v[1]);
  CHECK(v[1] != v[2]);
  CHECK(v[1] != v[3]);
}

TEST_CASE("entropy is within 0..ln K and Brier within 0..2 for every sample") {
  auto rng = qprob::test::make_rng(14);
  INFO("seed=", qprob::test::run_seed());
  for (double spread : {0.01, 1.0, 10.0, 300.0}) {
    CAPTURE(spread);
    const auto s  = m::test::random_task(997, 1, 9, rng, spread);
    const auto ev = m::evaluate_samples(s.view(), m::scoring::sum);
    for (std::size_t i = 0; i < ev.size(); ++i) {
      const double k = static_cast<double>(s.offsets[i + 1] - s.offsets[i]);
      CHECK(ev[i].entropy >= 0.0);
      CHECK(ev[i].entropy <= std::log(k) * (1 + 1e-12));  // rounding of the K terms
      CHECK(ev[i].brier >= 0.0);
      CHECK(ev[i].brier <= 2.0 + 1e-12);
      CHECK(ev[i].conf >= 1.0 / k * (1 - 1e-12));
      CHECK(ev[i].nll >= 0.0);
    }
  }
}

TEST_CASE("uniform distributions reach the entropy maximum ln K") {
  for (int k : {1, 2, 3, 4, 7}) {
    const auto s = one_sample(std::vector<double>(static_cast<std::size_t>(k), -5.5), 0);
    const auto r = m::compute_model_metrics_reference(s.view(), {});
    CAPTURE(k);
    CHECK(std::fabs(r.entropy - std::log(static_cast<double>(k))) < 1e-14);
  }
}

TEST_CASE("ties: equal log-likelihoods predict the first choice with confidence 1/K") {
  const auto s = one_sample({-3.0, -1.0, -1.0, -1.0}, 1);
  const auto r = m::compute_model_metrics_reference(s.view(), {});
  CHECK(r.acc == 1.0);  // argmax tie rule: first maximal index (numpy/torch/lm-eval)
  CHECK(rel_diff(r.conf, 1.0 / (2.0 + std::exp(-2.0) + 1.0)) < hand_tol);
  const auto s2 = one_sample({-1.0, -1.0}, 1);
  const auto r2 = m::compute_model_metrics_reference(s2.view(), {});
  CHECK(r2.acc == 0.0);
  CHECK(r2.conf == 0.5);
}

TEST_CASE("N = 1: every metric is defined or NaN as documented") {
  const auto s = one_sample({-2.0, -1.0, -3.0}, 0);
  const auto r = m::compute_model_metrics_reference(s.view(), {});
  CHECK(r.n == 1);
  CHECK(r.acc == 0.0);
  CHECK(std::isnan(r.acc_stderr));  // sample std needs n >= 2
  CHECK(std::isnan(r.conf_correct));
  CHECK(r.conf_err == r.conf);
  CHECK(rel_diff(r.ece, r.conf) < hand_tol);  // one bin, accuracy 0
  CHECK(r.mce == r.ece);
  CHECK(r.acc_wilson.lower < 1e-15);  // k = 0: centre and half-width coincide up to rounding
  CHECK(r.acc_wilson.upper > 0.5);
}

TEST_CASE("all-correct and all-wrong tasks") {
  m::choice_scores good, bad;
  for (int i = 0; i < 50; ++i) {
    good.add(std::vector<double>{-1.0 - 0.01 * i, -4.0, -5.0}, 0);
    bad.add(std::vector<double>{-1.0 - 0.01 * i, -4.0, -5.0}, 2);
  }
  const auto g = m::compute_model_metrics_reference(good.view(), {});
  const auto b = m::compute_model_metrics_reference(bad.view(), {});
  CHECK(g.acc == 1.0);
  CHECK(std::isnan(g.conf_err));
  CHECK(g.conf_correct == doctest::Approx(g.conf).epsilon(1e-14));
  CHECK(g.acc_stderr == 0.0);
  CHECK(b.acc == 0.0);
  CHECK(std::isnan(b.conf_correct));
  CHECK(b.conf_err == doctest::Approx(b.conf).epsilon(1e-14));
  // all wrong: ECE = mean confidence; all right: ECE = mean (1 - confidence).
  CHECK(rel_diff(b.ece, b.conf) < 1e-13);
  CHECK(rel_diff(g.ece, 1.0 - g.conf) < 1e-12);
}

TEST_CASE("metrics are invariant under a permutation of the samples") {
  auto rng = qprob::test::make_rng(15);
  INFO("seed=", qprob::test::run_seed());
  const auto s = m::test::random_task(1013, 2, 6, rng);
  std::vector<std::size_t> perm(1013);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  m::choice_scores p;
  for (auto i : perm) {
    const auto b = s.offsets[i], e = s.offsets[i + 1];
    p.add(std::span<const double>(s.loglik.data() + b, static_cast<std::size_t>(e - b)), s.gold[i],
          std::span<const std::int32_t>(s.char_len.data() + b, static_cast<std::size_t>(e - b)),
          std::span<const std::int32_t>(s.token_len.data() + b, static_cast<std::size_t>(e - b)));
  }
  for (auto v : {m::ace_variant::nixon, m::ace_variant::equal_mass_top_label, m::ace_variant::uniform_average}) {
    m::metric_options o;
    o.ace        = v;
    const auto a = m::compute_model_metrics_reference(s.view(), o);
    const auto c = m::compute_model_metrics_reference(p.view(), o);
    CHECK(a.acc == c.acc);
    CHECK(a.acc_norm == c.acc_norm);
    CHECK(rel_diff(a.conf, c.conf) < reorder_tol);
    CHECK(rel_diff(a.entropy, c.entropy) < reorder_tol);
    CHECK(rel_diff(a.brier, c.brier) < reorder_tol);
    CHECK(rel_diff(a.ece, c.ece) < reorder_tol);
    CHECK(rel_diff(a.rmsce, c.rmsce) < reorder_tol);
    CHECK(rel_diff(a.ace, c.ace) < reorder_tol);
    CHECK(a.ece > 0.0);
    CHECK(a.ace > 0.0);
  }
}

TEST_CASE("ragged K: samples with 2..7 choices agree with per-sample hand softmax") {
  auto rng = qprob::test::make_rng(16);
  INFO("seed=", qprob::test::run_seed());
  const auto s = m::test::random_task(211, 2, 7, rng);
  const auto p = m::choice_probabilities(s.view(), m::scoring::sum);
  double conf = 0, conf_true = 0;
  for (std::size_t i = 0; i + 1 < s.offsets.size(); ++i) {
    double sum = 0, best = 0;
    for (auto j = s.offsets[i]; j < s.offsets[i + 1]; ++j) {
      sum += p[static_cast<std::size_t>(j)];
      best = std::max(best, p[static_cast<std::size_t>(j)]);
    }
    CHECK(std::fabs(sum - 1.0) < 1e-14);
    conf += best;
    conf_true += p[static_cast<std::size_t>(s.offsets[i] + s.gold[i])];
  }
  const auto r = m::compute_model_metrics_reference(s.view(), {});
  CHECK(rel_diff(r.conf, conf / 211) < 1e-13);
  CHECK(rel_diff(r.conf_true, conf_true / 211) < 1e-13);
}

TEST_CASE("a metric that returned zeros would fail: random task metrics are all positive") {
  auto rng = qprob::test::make_rng(17);
  INFO("seed=", qprob::test::run_seed());
  const auto s = m::test::random_task(501, 4, 4, rng);
  const auto r = m::compute_model_metrics_reference(s.view(), {});
  for (double v : {r.acc, r.acc_norm, r.acc_stderr, r.conf, r.conf_correct, r.conf_err, r.conf_true, r.entropy, r.brier, r.nll,
                   r.ece, r.mce, r.rmsce, r.ace, r.acc_wilson.lower, r.acc_bootstrap.lower}) {
    CHECK(v > 0.0);
  }
  std::int64_t counted = 0;
  for (const auto& b : r.reliability) {
    counted += b.count;
  }
  CHECK(counted == 501);
}

TEST_CASE("paired metrics of identical models: zero divergence, no flips, tests not significant") {
  auto rng = qprob::test::make_rng(18);
  INFO("seed=", qprob::test::run_seed());
  const auto s = m::test::random_task(301, 2, 5, rng);
  const auto r = m::compute_paired_metrics_reference(s.view(), s.view(), {});
  CHECK(r.jsd_mean == 0.0);
  CHECK(r.kl_full_quant == 0.0);
  CHECK(r.kl_quant_full == 0.0);
  CHECK(r.flip_rate == 0.0);
  CHECK(r.full_only == 0);
  CHECK(r.quant_only == 0);
  CHECK(r.both_correct + r.both_wrong == 301);
  CHECK(r.mcnemar.p == 1.0);
  CHECK(std::isnan(r.ttest_conf_true.t));  // 0 / 0, as scipy returns
  CHECK(r.wilcoxon_conf_true.n_nonzero == 0);
  CHECK(r.true_class_jsd == 0.0);
}

TEST_CASE("JS and KL of one sample by hand") {
  // p = {.5, .5}, q = {.8, .2}
  const auto f = one_sample({0.0, 0.0}, 0);
  const auto q = one_sample({std::log(0.8), std::log(0.2)}, 0);
  const auto r = m::compute_paired_metrics_reference(f.view(), q.view(), {});
  const double js = 0.5 * (0.5 * std::log(0.5 / 0.65) + 0.5 * std::log(0.5 / 0.35)) +
                    0.5 * (0.8 * std::log(0.8 / 0.65) + 0.2 * std::log(0.2 / 0.35));
  CHECK(rel_diff(r.jsd_mean, js) < 1e-13);
  CHECK(rel_diff(r.js_distance_mean, std::sqrt(js)) < 1e-13);
  CHECK(rel_diff(r.kl_full_quant, 0.5 * std::log(0.5 / 0.8) + 0.5 * std::log(0.5 / 0.2)) < 1e-13);
  CHECK(rel_diff(r.kl_quant_full, 0.8 * std::log(0.8 / 0.5) + 0.2 * std::log(0.2 / 0.5)) < 1e-13);
  CHECK(r.flip_rate == 0.0);  // .5/.5 tie predicts choice 0, as does .8
}

TEST_CASE("JS is symmetric and within 0..ln 2; KL is not symmetric") {
  auto rng = qprob::test::make_rng(19);
  INFO("seed=", qprob::test::run_seed());
  const auto f  = m::test::random_task(777, 2, 6, rng, 6.0);
  const auto q  = m::test::perturbed(f, 3.0, rng);
  const auto ab = m::compute_paired_metrics_reference(f.view(), q.view(), {});
  const auto ba = m::compute_paired_metrics_reference(q.view(), f.view(), {});
  CHECK(rel_diff(ab.jsd_mean, ba.jsd_mean) < 1e-12);
  CHECK(rel_diff(ab.true_class_jsd, ba.true_class_jsd) < 1e-12);
  CHECK(ab.jsd_mean > 0.0);
  CHECK(ab.jsd_median > 0.0);
  CHECK(rel_diff(ab.kl_full_quant, ba.kl_quant_full) < 1e-12);
  CHECK(ab.kl_full_quant != ab.kl_quant_full);
  for (std::size_t i = 0; i + 1 < f.offsets.size(); ++i) {
    const auto e = m::evaluate_pair(f.loglik.data(), q.loglik.data(), nullptr, nullptr, f.offsets[i], f.offsets[i + 1], m::scoring::sum);
    CHECK(e.js >= 0.0);
    CHECK(e.js <= std::log(2.0) * (1 + 1e-12));
    CHECK(e.kl_pq >= -1e-15);  // Gibbs' inequality, up to rounding
    CHECK(e.kl_qp >= -1e-15);
  }
  // disjoint distributions reach ln 2
  const auto a = one_sample({0.0, -800.0}, 0);
  const auto b = one_sample({-800.0, 0.0}, 0);
  CHECK(m::compute_paired_metrics_reference(a.view(), b.view(), {}).jsd_mean == doctest::Approx(std::log(2.0)).epsilon(1e-12));
}

TEST_CASE("Appendix-B JS: normalised true-class vectors, square of scipy's jensenshannon") {
  const std::vector<double> p{0.9, 0.5, 0.6}, q{0.7, 0.5, 0.2};
  const double sp = 2.0, sq = 1.4;
  double js = 0;
  for (int i = 0; i < 3; ++i) {
    const double a = p[static_cast<std::size_t>(i)] / sp, b = q[static_cast<std::size_t>(i)] / sq, mm = 0.5 * (a + b);
    js += 0.5 * a * std::log(a / mm) + 0.5 * b * std::log(b / mm);
  }
  CHECK(rel_diff(m::js_divergence_normalized(p, q), js) < 1e-13);
  CHECK(m::js_divergence_normalized(p, p) == 0.0);
  // scaling a vector does not change it (normalisation), as with scipy
  const std::vector<double> p2{1.8, 1.0, 1.2};
  CHECK(rel_diff(m::js_divergence_normalized(p2, q), js) < 1e-13);
}

TEST_CASE("flip rate and the 2x2 correctness table") {
  m::choice_scores f, q;
  // gold 0 everywhere; full right/right/wrong/wrong, quant right/wrong/right/wrong
  f.add(std::vector<double>{-1.0, -2.0}, 0);
  q.add(std::vector<double>{-1.0, -2.5}, 0);
  f.add(std::vector<double>{-1.0, -2.0}, 0);
  q.add(std::vector<double>{-3.0, -2.0}, 0);
  f.add(std::vector<double>{-3.0, -2.0}, 0);
  q.add(std::vector<double>{-1.0, -2.0}, 0);
  f.add(std::vector<double>{-3.0, -2.0}, 0);
  q.add(std::vector<double>{-3.5, -2.0}, 0);
  const auto r = m::compute_paired_metrics_reference(f.view(), q.view(), {});
  CHECK(r.both_correct == 1);
  CHECK(r.full_only == 1);
  CHECK(r.quant_only == 1);
  CHECK(r.both_wrong == 1);
  CHECK(r.flip_rate == 0.5);
  CHECK(r.mcnemar.b == 1);
  CHECK(r.mcnemar.c == 1);
  CHECK(r.mcnemar.p == 1.0);
}

TEST_CASE("confidence shift by bin: ranges start at 1/K, hand means and standard errors") {
  // K = 2, 2 bins over [.5, 1]: (.5, .75], (.75, 1]. full conf .6, .75, .9; quant conf .5, .7, .85.
  const std::vector<double> cf{0.6, 0.75, 0.9}, cq{0.5, 0.7, 0.85}, tf{0.6, 0.75, 0.1}, tq{0.5, 0.7, 0.15};
  const auto b = m::confidence_shift_by_bin(cf, cq, tf, tq, 2, 0.5);
  REQUIRE(b.size() == 2);
  CHECK(b[0].lower == 0.5);
  CHECK(b[0].upper == 0.75);
  CHECK(b[1].upper == 1.0);
  CHECK(b[0].count == 2);  // .75 is the upper edge of bin 0
  CHECK(b[1].count == 1);
  CHECK(rel_diff(b[0].mean_conf_shift, -0.075) < 1e-13);
  // deviations +-0.025 -> sd = sqrt(2 * 0.025^2 / 1), se = sd / sqrt(2) = 0.025
  CHECK(rel_diff(b[0].stderr_conf_shift, 0.025) < 1e-12);
  CHECK(rel_diff(b[1].mean_true_shift, 0.05) < 1e-12);
  CHECK(std::isnan(b[1].stderr_true_shift));  // one sample
  CHECK(m::shift_bin_index(0.25, 4, 0.25) == 0);  // conf == 1/K joins the first range
  CHECK(m::shift_bin_index(1.0, 4, 0.25) == 3);
}

TEST_CASE("paired metrics on a random pair: shift bins cover all samples, t-test matches its definition") {
  auto rng = qprob::test::make_rng(20);
  INFO("seed=", qprob::test::run_seed());
  const auto f = m::test::random_task(1201, 4, 4, rng);
  const auto q = m::test::perturbed(f, 1.0, rng);
  const auto r = m::compute_paired_metrics_reference(f.view(), q.view(), {});
  std::int64_t total = 0;
  for (const auto& b : r.conf_shift_by_bin) {
    total += b.count;
  }
  CHECK(total == 1201);
  CHECK(r.conf_shift_by_bin.front().lower == 0.25);
  CHECK(r.flip_rate > 0.0);
  CHECK(r.ttest_conf_true.dof == 1200.0);
  CHECK(r.ttest_conf_true.p > 0.0);
  CHECK(r.ttest_conf_true.p <= 1.0);
  CHECK(r.both_correct + r.full_only + r.quant_only + r.both_wrong == 1201);
  CHECK(r.wilcoxon_conf_true.n_nonzero > 1000);
  CHECK_FALSE(r.wilcoxon_conf_true.exact);  // n > 50: normal approximation
}

TEST_CASE("invalid inputs throw invalid_argument naming the value") {
  m::choice_scores s;
  s.add(std::vector<double>{-1.0, -2.0, -3.0}, 1);
  s.add(std::vector<double>{-1.0, -2.0, -3.0}, 1);
  s.gold[1] = 4;
  CHECK_THROWS_WITH_AS(m::compute_model_metrics_reference(s.view(), {}), doctest::Contains("gold[1]=4 is outside [0, 3) choices"),
                       qprob::invalid_argument);
  s.gold[1] = -1;
  CHECK_THROWS_AS(m::compute_model_metrics_reference(s.view(), {}), qprob::invalid_argument);
  s.gold[1]   = 0;
  s.loglik[4] = std::nan("");
  CHECK_THROWS_WITH_AS(m::compute_model_metrics_reference(s.view(), {}), doctest::Contains("loglik[4]"), qprob::invalid_argument);
  s.loglik[4] = -2;
  m::metric_options o;
  o.score = m::scoring::char_normalized;
  CHECK_THROWS_WITH_AS(m::compute_model_metrics_reference(s.view(), o), doctest::Contains("needs char_len"), qprob::invalid_argument);
  o       = {};
  o.calibration_bins = 0;
  CHECK_THROWS_WITH_AS(m::compute_model_metrics_reference(s.view(), o), doctest::Contains("calibration_bins=0"), qprob::invalid_argument);
  m::choice_scores empty;
  CHECK_THROWS_AS(m::compute_model_metrics_reference(empty.view(), {}), qprob::invalid_argument);
  auto bad_offsets = s;
  bad_offsets.offsets[1] = 0;
  CHECK_THROWS_WITH_AS(m::compute_model_metrics_reference(bad_offsets.view(), {}), doctest::Contains("sample 0 has no choices"),
                       qprob::invalid_argument);
  auto lens = s;
  lens.char_len = {3, 0, 2, 1, 1, 1};
  CHECK_THROWS_WITH_AS(m::compute_model_metrics_reference(lens.view(), {}), doctest::Contains("char_len[1]=0"), qprob::invalid_argument);
}

TEST_CASE("paired inputs must describe the same samples") {
  m::choice_scores f, q;
  f.add(std::vector<double>{-1.0, -2.0}, 0);
  q.add(std::vector<double>{-1.0, -2.0}, 1);
  CHECK_THROWS_WITH_AS(m::compute_paired_metrics_reference(f.view(), q.view(), {}), doctest::Contains("gold[0] differs"),
                       qprob::invalid_argument);
  m::choice_scores q3;
  q3.add(std::vector<double>{-1.0, -2.0, -3.0}, 0);
  CHECK_THROWS_WITH_AS(m::compute_paired_metrics_reference(f.view(), q3.view(), {}), doctest::Contains("offsets[1] differs"),
                       qprob::invalid_argument);
}
