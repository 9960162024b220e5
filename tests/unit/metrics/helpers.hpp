// SPDX-License-Identifier: Apache-2.0
#pragma once
// Input builders shared by the metrics tests: random ragged tasks and small hand-written ones.

#include <qprob/metrics/types.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace qprob::metrics::test {

/// n samples with k_min..k_max choices, log-likelihoods spread like real multiple-choice scores (sums of
/// ~10 token log-probs), lengths 1..60 characters / 1..15 tokens, uniformly random gold.
inline choice_scores random_task(std::int64_t n, int k_min, int k_max, std::mt19937_64& rng, double spread = 4.0) {
  choice_scores s;
  std::uniform_int_distribution<int> kd(k_min, k_max);
  std::normal_distribution<double> ll(-20.0, spread);
  std::uniform_int_distribution<int> chars(1, 60), toks(1, 15);
  for (std::int64_t i = 0; i < n; ++i) {
    const int k = kd(rng);
    std::vector<double> l(static_cast<std::size_t>(k));
    std::vector<std::int32_t> c(static_cast<std::size_t>(k)), t(static_cast<std::size_t>(k));
    for (int j = 0; j < k; ++j) {
      l[static_cast<std::size_t>(j)] = ll(rng);
      c[static_cast<std::size_t>(j)] = chars(rng);
      t[static_cast<std::size_t>(j)] = toks(rng);
    }
    s.add(l, std::uniform_int_distribution<int>(0, k - 1)(rng), c, t);
  }
  return s;
}

/// The same samples with the quantized model's log-likelihoods perturbed by N(0, noise).
inline choice_scores perturbed(const choice_scores& full, double noise, std::mt19937_64& rng) {
  choice_scores q = full;
  std::normal_distribution<double> d(0.0, noise);
  for (auto& v : q.loglik) {
    v += d(rng);
  }
  return q;
}

/// Relative difference with an absolute floor for values near 0.
inline double rel_diff(double a, double b, double floor = 1e-300) {
  return std::fabs(a - b) / std::max({std::fabs(a), std::fabs(b), floor});
}

}  // namespace qprob::metrics::test
