// SPDX-License-Identifier: Apache-2.0
// seed_compat: the first paper's notebook functions, bugs included. Each input is built so that one quirk
// decides the result, and the expected value is the notebook's own arithmetic written out in the same order
// (so the comparisons are exact: ==, not a tolerance).
#include <qprob/metrics/reference.hpp>
#include <qprob/metrics/seed_compat.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <vector>

namespace m  = qprob::metrics;
namespace sc = qprob::metrics::seed_compat;

TEST_CASE("seed ace quirks 1-3: shifted lower-edge ranges, top samples fall into range 0, max-prob per true class") {
  // N = 4, R = 2 -> step 2, thresholds {sorted[0], sorted[2]} = {.4, .6}. max probs .4, .5, .6, .9:
  // .4 -> range 0 (quirk 1: alone with the minimum), .5 and .6 -> range 1, .9 above every threshold -> range 0
  // (quirk 2). Range 0: class 0 = {row 0}: acc 1, conf .4; class 2 = {row 3}: acc 1, conf .9.
  // Range 1: class 1 = {rows 1, 2}: acc mean(argmax == 1) = .5, conf mean(max) = (.5 + .6) / 2 (quirk 3).
  const std::vector<double> p{0.4, 0.3, 0.3, 0.5, 0.25, 0.25, 0.2, 0.6, 0.2, 0.05, 0.05, 0.9};
  const std::vector<std::int32_t> y{0, 1, 1, 2};
  const sc::prob_matrix mat{4, 3, p, y};
  double expect = 0;
  expect += std::fabs(1.0 - 0.4);
  expect += std::fabs(1.0 - 0.9);
  expect += std::fabs(0.5 - (0.5 + 0.6) / 2.0);
  expect /= 3 * 2;
  CHECK(sc::ace(mat, 2) == expect);
  // The correct equal-mass top-label ACE of the same data differs.
  const std::vector<double> conf{0.4, 0.5, 0.6, 0.9};
  const std::vector<std::uint8_t> ok{1, 0, 1, 1};
  CHECK(m::ace_equal_mass_top_label(conf, ok, 2) != expect);
}

TEST_CASE("seed ace divides by K times R even when cells are empty, and rejects N < R") {
  // every sample in one class: K * R = 3 * 15 cells but only a few are filled
  std::vector<double> p;
  std::vector<std::int32_t> y;
  for (int i = 0; i < 30; ++i) {
    const double top = 0.4 + 0.01 * i;
    p.insert(p.end(), {top, (1 - top) / 2, (1 - top) / 2});
    y.push_back(0);
  }
  const sc::prob_matrix mat{30, 3, p, y};
  const double v = sc::ace(mat, 15);
  CHECK(v > 0.0);
  CHECK(v < 0.7 / 3);  // <= (sum over at most 15 cells of |1 - conf| <= .6) / 45
  const sc::prob_matrix small{30, 3, p, y};
  CHECK_THROWS_WITH_AS((void)sc::ace(small, 31), doctest::Contains("n=30 < num_ranges=31"), qprob::invalid_argument);
}

TEST_CASE("seed ece quirk 4: compares confidence with the label index, not correctness") {
  // two correct predictions: pred 0 (conf .7, y 0) and pred 1 (conf .8, y 1); separate bins.
  // notebook: |.7 - 0| * .5 + |.8 - 1| * .5 ; a true ECE would be |1 - .7| * .5 + |1 - .8| * .5.
  const std::vector<double> p{0.7, 0.3, 0.2, 0.8};
  const std::vector<std::int32_t> y{0, 1};
  const sc::prob_matrix mat{2, 2, p, y};
  const double expect = std::fabs(0.7 - 0.0) * 0.5 + std::fabs(0.8 - 1.0) * 0.5;
  CHECK(sc::ece(mat, 100) == expect);
  const std::vector<double> conf{0.7, 0.8};
  const std::vector<std::uint8_t> ok{1, 1};
  CHECK(m::equal_width_calibration(conf, ok, 100, m::bin_edges::upper_closed).ece != doctest::Approx(expect));
  CHECK(sc::table_ace(mat) == expect);  // K == 2 -> ece(100)
}

TEST_CASE("seed ece bins: np.arange lower edges i times 0.01 put 0.7 below the 0.7 edge") {
  const auto edges = sc::detail::notebook_bin_edges(100);
  CHECK(edges.size() == 100);
  CHECK(edges[70] == 70 * 0.01);
  CHECK(edges[70] > 0.7);                            // 70 * 0.01 = 0.7000000000000001
  CHECK(sc::detail::digitize(0.7, edges) == 70);     // so 0.7 joins [0.69, 0.70)
  CHECK(sc::detail::digitize(0.5, edges) == 51);
  CHECK(sc::detail::digitize(1.0, edges) == 100);    // 1.0 has a bin of its own
}

TEST_CASE("seed ece groups use pandas' Kahan-compensated mean") {
  sc::detail::kahan k;
  double naive = 0;
  k.add(1.0);
  naive += 1.0;
  for (int i = 0; i < 10; ++i) {
    k.add(1e-16);
    naive += 1e-16;
  }
  CHECK(naive == 1.0);
  CHECK(k.sum > 1.0);  // the compensation keeps the 1e-15
  // 10 samples in one bin whose plain mean and compensated mean differ in the last bit
  std::vector<double> p;
  std::vector<std::int32_t> y;
  const double vals[] = {0.9, 0.9 + 1e-16, 0.9 + 2e-16, 0.9, 0.9 + 3e-16, 0.9, 0.9 + 1e-16, 0.9, 0.9, 0.9 + 2e-16};
  double ks_sum = 0, comp = 0;
  for (double v : vals) {
    p.insert(p.end(), {v, 1 - v});
    y.push_back(0);
    const double yy = v - comp, t = ks_sum + yy;
    comp   = (t - ks_sum) - yy;
    ks_sum = t;
  }
  const sc::prob_matrix mat{10, 2, p, y};
  CHECK(sc::ece(mat, 100) == std::fabs(ks_sum / 10.0 - 0.0) * (10.0 / 10.0));
}

TEST_CASE("seed mce_binary quirk 5: signed difference, no abs") {
  // one bin, conf .6, label mean 1 -> .6 - 1 = -.4 (negative, returned as the "maximum")
  const std::vector<double> p{0.4, 0.6, 0.4, 0.6};
  const std::vector<std::int32_t> y{1, 1};
  const sc::prob_matrix mat{2, 2, p, y};
  CHECK(sc::mce_binary(mat, 100) == (0.6 + 0.6) / 2 - 1.0);
  CHECK(sc::table_mce(mat) < 0.0);
}

TEST_CASE("seed mce quirk 6: the top bin is never visited, -1 when nothing is counted") {
  // every max prob >= 0.99 -> digitize gives 100, the loop stops at 99
  const std::vector<double> p{0.995, 0.003, 0.002, 0.001, 0.998, 0.001};
  const std::vector<std::int32_t> y{0, 1};
  const sc::prob_matrix mat{2, 3, p, y};
  CHECK(sc::mce(mat, 100) == -1.0);
  // one sample below: only it counts (acc 1, conf .5)
  const std::vector<double> p2{0.995, 0.003, 0.002, 0.5, 0.3, 0.2};
  const std::vector<std::int32_t> y2{1, 0};
  CHECK(sc::mce(sc::prob_matrix{2, 3, p2, y2}, 100) == 0.5);
}

TEST_CASE("seed summary: np.mean pairwise sums, entropy in bits, NaN for an empty c_neg") {
  const std::vector<double> p{0.25, 0.75, 0.5, 0.5};
  const std::vector<std::int32_t> y{1, 0};
  const auto s = sc::summary(sc::prob_matrix{2, 2, p, y});
  CHECK(s.conf == (0.75 + 0.5) / 2);
  CHECK(s.conf_true == (0.75 + 0.5) / 2);
  CHECK(std::isnan(s.c_neg));
  const double h0 = -((0.25 * std::log2(0.25)) + (0.75 * std::log2(0.75)));
  CHECK(s.entropy_bits == (h0 + 1.0) / 2);
  // quirk 7: a zero probability makes numpy's entropy NaN (0 * log2(0) = 0 * -inf)
  const std::vector<double> z{1.0, 0.0};
  const std::vector<std::int32_t> y0{0};
  CHECK(std::isnan(sc::summary(sc::prob_matrix{1, 2, z, y0}).entropy_bits));
}

TEST_CASE("seed_compat ACE through compute_model_metrics: K > 2 uses ace(15), K == 2 uses ece(100)") {
  m::choice_scores four, two;
  for (int i = 0; i < 40; ++i) {
    four.add(std::vector<double>{-1.0 - 0.05 * i, -2.0, -2.5 + 0.01 * i, -3.0}, i % 4);
    two.add(std::vector<double>{-1.0 - 0.05 * i, -2.0}, i % 2);
  }
  m::metric_options o;
  o.ace = m::ace_variant::seed_compat;
  const auto p4 = m::choice_probabilities(four.view(), m::scoring::sum);
  const auto p2 = m::choice_probabilities(two.view(), m::scoring::sum);
  CHECK(m::compute_model_metrics_reference(four.view(), o).ace == sc::ace(sc::prob_matrix{40, 4, p4, four.gold}, 15));
  CHECK(m::compute_model_metrics_reference(two.view(), o).ace == sc::ece(sc::prob_matrix{40, 2, p2, two.gold}, 100));
  m::choice_scores ragged = four;
  ragged.add(std::vector<double>{-1.0, -2.0}, 0);
  CHECK_THROWS_WITH_AS(m::compute_model_metrics_reference(ragged.view(), o), doctest::Contains("same number of choices"),
                       qprob::invalid_argument);
}
