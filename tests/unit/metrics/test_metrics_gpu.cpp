// SPDX-License-Identifier: Apache-2.0
// Device metrics against the host reference: random ragged tasks of odd sizes, adversarial inputs (ties,
// confidences on bin edges, conf == 1.0, N = 1, K = 2, huge spreads), every ACE variant and both bin
// conventions, paired metrics, run-to-run determinism and device-side input validation.
#include <qprob/metrics/reference.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "gpu_harness.hpp"
#include "helpers.hpp"
#include "support.hpp"

namespace m = qprob::metrics;
using m::test::rel_diff;

namespace {
// Device and host evaluate each sample with the same code; they differ only in the summation tree of the
// final sums (CUB tree vs left-to-right) and in exp/log last-bit differences between CUDA and glibc: both
// ~1e-16 relative per term, so 1e-10 relative (absolute 1e-13 near 0) leaves > 1e4 headroom and still
// catches any formula or indexing error.
constexpr double tol = 1e-10;

bool close(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) {
    return std::isnan(a) && std::isnan(b);
  }
  return std::fabs(a - b) <= 1e-13 || rel_diff(a, b) <= tol;
}

void compare_model(const m::model_metrics& d, const m::model_metrics& h) {
  CHECK(d.n == h.n);
  CHECK(d.n_correct == h.n_correct);
  CHECK(d.acc == h.acc);  // counts: exact
  CHECK(close(d.acc_norm, h.acc_norm));
  CHECK(close(d.acc_wilson.lower, h.acc_wilson.lower));
  CHECK(close(d.acc_bootstrap.upper, h.acc_bootstrap.upper));
  CHECK(close(d.conf, h.conf));
  CHECK(close(d.conf_correct, h.conf_correct));
  CHECK(close(d.conf_err, h.conf_err));
  CHECK(close(d.conf_true, h.conf_true));
  CHECK(close(d.entropy, h.entropy));
  CHECK(close(d.brier, h.brier));
  CHECK(close(d.nll, h.nll));
  CHECK(close(d.ece, h.ece));
  CHECK(close(d.mce, h.mce));
  CHECK(close(d.rmsce, h.rmsce));
  CHECK(close(d.ace, h.ace));
  REQUIRE(d.reliability.size() == h.reliability.size());
  for (std::size_t b = 0; b < d.reliability.size(); ++b) {
    CAPTURE(b);
    CHECK(d.reliability[b].count == h.reliability[b].count);  // same bin function: exact
    CHECK(close(d.reliability[b].mean_conf, h.reliability[b].mean_conf));
    CHECK(close(d.reliability[b].accuracy, h.reliability[b].accuracy));
  }
}

void compare_paired(const m::paired_metrics& d, const m::paired_metrics& h) {
  CHECK(d.n == h.n);
  CHECK(close(d.jsd_mean, h.jsd_mean));
  CHECK(close(d.jsd_median, h.jsd_median));
  CHECK(close(d.js_distance_mean, h.js_distance_mean));
  CHECK(close(d.js_distance_median, h.js_distance_median));
  CHECK(close(d.true_class_jsd, h.true_class_jsd));
  CHECK(close(d.kl_full_quant, h.kl_full_quant));
  CHECK(close(d.kl_quant_full, h.kl_quant_full));
  CHECK(d.flip_rate == h.flip_rate);
  CHECK(d.both_correct == h.both_correct);
  CHECK(d.full_only == h.full_only);
  CHECK(d.quant_only == h.quant_only);
  CHECK(d.both_wrong == h.both_wrong);
  CHECK(close(d.ttest_conf_true.t, h.ttest_conf_true.t));
  CHECK(close(d.ttest_conf_true.p, h.ttest_conf_true.p));
  CHECK(close(d.wilcoxon_conf_true.p, h.wilcoxon_conf_true.p));
  CHECK(close(d.mcnemar.p, h.mcnemar.p));
  REQUIRE(d.conf_shift_by_bin.size() == h.conf_shift_by_bin.size());
  for (std::size_t b = 0; b < d.conf_shift_by_bin.size(); ++b) {
    CAPTURE(b);
    CHECK(d.conf_shift_by_bin[b].count == h.conf_shift_by_bin[b].count);
    CHECK(close(d.conf_shift_by_bin[b].mean_conf_shift, h.conf_shift_by_bin[b].mean_conf_shift));
    CHECK(close(d.conf_shift_by_bin[b].stderr_conf_shift, h.conf_shift_by_bin[b].stderr_conf_shift));
    CHECK(close(d.conf_shift_by_bin[b].mean_true_shift, h.conf_shift_by_bin[b].mean_true_shift));
    CHECK(close(d.conf_shift_by_bin[b].stderr_true_shift, h.conf_shift_by_bin[b].stderr_true_shift));
  }
}
}  // namespace

TEST_CASE("device per-model metrics match the reference on random ragged tasks, every ACE variant") {
  auto rng = qprob::test::make_rng(101);
  INFO("seed=", qprob::test::run_seed());
  // K in [2, 6] covers the fused pass's register paths for K <= 4 and K <= 8; [1, 12] adds K = 1 and the
  // path that reads larger samples from memory.
  for (std::int64_t n : {1, 7, 19, 111, 989, 100003, 5003}) {
    const int k_max = n == 5003 ? 12 : 6;
    const auto s    = m::test::random_task(n, k_max == 12 ? 1 : 2, k_max, rng);
    for (auto v : {m::ace_variant::nixon, m::ace_variant::equal_mass_top_label, m::ace_variant::uniform_average}) {
      for (auto e : {m::bin_edges::upper_closed, m::bin_edges::torchmetrics}) {
        m::metric_options o;
        o.ace   = v;
        o.edges = e;
        CAPTURE(n);
        CAPTURE(k_max);
        CAPTURE(static_cast<int>(v));
        CAPTURE(static_cast<int>(e));
        const auto h = m::compute_model_metrics_reference(s.view(), o);
        const auto d = m::test::device_model_metrics(s.view(), o);
        compare_model(d, h);
        if (n > 100) {
          CHECK(d.ece > 0.0);  // zeros from skipped work would fail here
          CHECK(d.ace > 0.0);
        }
      }
    }
  }
}

TEST_CASE("device metrics: normalised scorings and seed_compat on uniform K") {
  auto rng = qprob::test::make_rng(102);
  INFO("seed=", qprob::test::run_seed());
  const auto s = m::test::random_task(4099, 4, 4, rng);
  for (auto sc : {m::scoring::sum, m::scoring::char_normalized, m::scoring::token_normalized}) {
    m::metric_options o;
    o.score = sc;
    o.ace   = m::ace_variant::seed_compat;
    CAPTURE(static_cast<int>(sc));
    const auto h = m::compute_model_metrics_reference(s.view(), o);
    const auto d = m::test::device_model_metrics(s.view(), o);
    compare_model(d, h);
    CHECK(d.ace == h.ace);  // seed_compat runs the same host code on the copied input: bit-identical
  }
  // Normalised scorings on ragged K = 1..12: every path of the fused pass (registers for K <= 4, <= 8;
  // memory beyond) divides by the same lengths.
  const auto r = m::test::random_task(3001, 1, 12, rng);
  for (auto sc : {m::scoring::char_normalized, m::scoring::token_normalized}) {
    m::metric_options o;
    o.score = sc;
    CAPTURE(static_cast<int>(sc));
    const auto h = m::compute_model_metrics_reference(r.view(), o);
    const auto d = m::test::device_model_metrics(r.view(), o);
    compare_model(d, h);
    CHECK(d.acc_norm > 0.0);
  }
}

TEST_CASE("device metrics on adversarial inputs: ties, bin edges, conf == 1.0, K = 2, N = 1") {
  m::choice_scores s;
  // ties: uniform over 2 and 4 choices (conf 0.5 / 0.25 exactly on edges of 4 and 20 bins)
  s.add(std::vector<double>{-1.0, -1.0}, 0);
  s.add(std::vector<double>{-1.0, -1.0}, 1);
  s.add(std::vector<double>{-3.0, -3.0, -3.0, -3.0}, 2);
  // conf == 1.0 after rounding (other choices underflow)
  s.add(std::vector<double>{0.0, -800.0, -900.0}, 0);
  s.add(std::vector<double>{-800.0, 0.0}, 0);
  // five-way tie: conf 1/5, the double nearest 0.2, which is also edge 3/15 and 4/20. Only exact-exp
  // inputs (exp(0) = 1, exp(-800) = 0) sit on edges here: CUDA's and glibc's exp may differ in the last bit
  // elsewhere, which would legitimately move an on-edge sample (the host tests cover {ln 1, ln 3} edges).
  s.add(std::vector<double>{-2.0, -2.0, -2.0, -2.0, -2.0}, 4);
  for (int bins : {4, 15, 20}) {
    for (auto e : {m::bin_edges::upper_closed, m::bin_edges::torchmetrics}) {
      m::metric_options o;
      o.calibration_bins = bins;
      o.edges            = e;
      o.ace              = m::ace_variant::equal_mass_top_label;
      o.ace_ranges       = 4;
      CAPTURE(bins);
      compare_model(m::test::device_model_metrics(s.view(), o), m::compute_model_metrics_reference(s.view(), o));
    }
  }
  std::mt19937_64 rng_one(5);
  const auto one = m::test::random_task(1, 2, 2, rng_one);
  compare_model(m::test::device_model_metrics(one.view(), {}), m::compute_model_metrics_reference(one.view(), {}));
}

TEST_CASE("device equal-mass ACE: ties, tiny probabilities and many ranges (selection and its candidate list)") {
  // The equal-mass boundaries are selected digit by digit; after the first digit, elements in a boundary's
  // digit become a candidate list and the rest are summed at once. Here: a third of the samples share one
  // score vector (equal probabilities: boundaries fall inside ties and resolve on the sample index, and one
  // first digit holds a third of each class), a tenth have probabilities down to e^-50 and a tenth around 2^-6
  // (where the first digit turns from octaves to equal widths), K is ragged (absent classes), and the range counts cross the
  // 16-slot groups.
  auto rng = qprob::test::make_rng(105);
  INFO("seed=", qprob::test::run_seed());
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  std::normal_distribution<double> ll(-20.0, 4.0);
  // K up to 4: the per-class keys' producer also histograms the first digit; K up to 5: a separate pass does
  for (int k_max : {4, 5}) {
    m::choice_scores s;
    const std::int64_t n = 60013;
    for (std::int64_t i = 0; i < n; ++i) {
      const int k = k_max - 2 + static_cast<int>(u01(rng) * 3.0) % 3;
      std::vector<double> l(static_cast<std::size_t>(k));
      const double kind = u01(rng);
      for (int j = 0; j < k; ++j) {
        if (kind < 0.33) {
          l[static_cast<std::size_t>(j)] = -1.0 - j;  // shared vector (per K)
        } else if (kind < 0.43) {
          l[static_cast<std::size_t>(j)] = j == 0 ? 0.0 : -10.0 - 40.0 * u01(rng);  // p down to e^-50
        } else if (kind < 0.53) {
          l[static_cast<std::size_t>(j)] = j == 0 ? 0.0 : -4.1 + 0.2 * (u01(rng) - 0.5);  // p around 2^-6
        } else {
          l[static_cast<std::size_t>(j)] = ll(rng);
        }
      }
      s.add(l, static_cast<int>(u01(rng) * k) % k);
    }
    for (auto v : {m::ace_variant::nixon, m::ace_variant::equal_mass_top_label}) {
      for (int ranges : {1, 2, 3, 15, 16, 17, 40, 1023}) {
        m::metric_options o;
        o.ace        = v;
        o.ace_ranges = ranges;
        CAPTURE(k_max);
        CAPTURE(static_cast<int>(v));
        CAPTURE(ranges);
        const auto h = m::compute_model_metrics_reference(s.view(), o);
        const auto d = m::test::device_model_metrics(s.view(), o);
        CHECK(close(d.ace, h.ace));
        CHECK(d.ace > 0.0);
      }
    }
  }
}

TEST_CASE("device paired metrics match the reference") {
  auto rng = qprob::test::make_rng(103);
  INFO("seed=", qprob::test::run_seed());
  for (std::int64_t n : {1, 2, 19, 49, 989, 100003}) {
    const auto f = m::test::random_task(n, 2, 5, rng);
    const auto q = m::test::perturbed(f, 0.7, rng);
    CAPTURE(n);
    const auto h = m::compute_paired_metrics_reference(f.view(), q.view(), {});
    const auto d = m::test::device_paired_metrics(f.view(), q.view(), {});
    compare_paired(d, h);
    if (n > 100) {
      CHECK(d.jsd_mean > 0.0);
      CHECK(d.kl_full_quant > 0.0);
    }
  }
}

TEST_CASE("device results are run-to-run identical (fixed-order reductions)") {
  auto rng = qprob::test::make_rng(104);
  INFO("seed=", qprob::test::run_seed());
  const auto f = m::test::random_task(300007, 4, 4, rng);
  const auto q = m::test::perturbed(f, 0.5, rng);
  const auto a = m::test::device_model_metrics(f.view(), {});
  const auto b = m::test::device_model_metrics(f.view(), {});
  CHECK(a.conf == b.conf);
  CHECK(a.entropy == b.entropy);
  CHECK(a.ece == b.ece);
  CHECK(a.ace == b.ace);
  const auto pa = m::test::device_paired_metrics(f.view(), q.view(), {});
  const auto pb = m::test::device_paired_metrics(f.view(), q.view(), {});
  CHECK(pa.jsd_mean == pb.jsd_mean);
  CHECK(pa.ttest_conf_true.t == pb.ttest_conf_true.t);
  CHECK(pa.conf_shift_by_bin[3].stderr_conf_shift == pb.conf_shift_by_bin[3].stderr_conf_shift);
}

TEST_CASE("device input validation names the offending value") {
  m::choice_scores s;
  for (int i = 0; i < 20; ++i) {
    s.add(std::vector<double>{-1.0, -2.0, -3.0}, i % 3);
  }
  s.gold[17] = 4;
  CHECK_THROWS_WITH_AS(m::test::device_model_metrics(s.view(), {}), doctest::Contains("gold[17]=4 is outside [0, 3) choices"),
                       qprob::invalid_argument);
  s.gold[17]   = 0;
  s.loglik[31] = INFINITY;
  CHECK_THROWS_WITH_AS(m::test::device_model_metrics(s.view(), {}), doctest::Contains("loglik[31]"), qprob::invalid_argument);
  s.loglik[31] = -1;
  auto q       = s;
  q.gold[3]    = 2;
  CHECK_THROWS_WITH_AS(m::test::device_paired_metrics(s.view(), q.view(), {}), doctest::Contains("sample 3"), qprob::invalid_argument);
}
