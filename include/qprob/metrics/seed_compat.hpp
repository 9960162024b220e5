// SPDX-License-Identifier: Apache-2.0
#pragma once
// seed_compat: the calibration functions of the first paper's notebook (upunaprosk/quantized-lm-confidence,
// 3_Calibration_Error_Metrics.ipynb), reproduced bit for bit *including their bugs*, so that the paper's
// tables can be matched (metrics layer, host only). They take what the notebook takes: an N x K row-major
// probability matrix y_pred and integer labels y_true. Every numpy / pandas reduction is replayed in its exact
// floating-point order (numpy pairwise sums, pandas' Kahan-compensated groupby mean). Use the correct metrics
// in reference.hpp for anything new; docs/metrics.md lists each quirk.

#include <qprob/core/error.hpp>
#include <qprob/metrics/stats.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <span>
#include <vector>

namespace qprob::metrics::seed_compat {

/// Row-major N x K probabilities plus labels, as the notebook's y_pred / y_true.
struct prob_matrix {
  std::int64_t n = 0;
  std::int64_t k = 0;
  std::span<const double> p;        ///< n * k
  std::span<const std::int32_t> y;  ///< n labels

  void validate(const char* who) const {
    QPROB_CHECK(n >= 1, who, ": needs at least one sample, got n=", n);
    QPROB_CHECK(k >= 1, who, ": needs at least one choice, got k=", k);
    QPROB_CHECK_EQ(static_cast<std::int64_t>(p.size()), n * k, who, ": probabilities must be n x k");
    QPROB_CHECK_EQ(static_cast<std::int64_t>(y.size()), n, who, ": one label per sample");
  }
  [[nodiscard]] double at(std::int64_t i, std::int64_t j) const { return p[static_cast<std::size_t>(i * k + j)]; }
  [[nodiscard]] double row_max(std::int64_t i) const {
    double m = at(i, 0);
    for (std::int64_t j = 1; j < k; ++j) {
      m = std::max(m, at(i, j));  // np.max: the value is the same whichever equal element wins
    }
    return m;
  }
  [[nodiscard]] std::int64_t row_argmax(std::int64_t i) const {
    std::int64_t a = 0;
    for (std::int64_t j = 1; j < k; ++j) {
      if (at(i, j) > at(i, a)) {
        a = j;  // np.argmax: first maximal index
      }
    }
    return a;
  }
};

/// The notebook's ace(y_true, y_pred, num_ranges) (copied from nlp-uncertainty-zoo). Quirks reproduced:
///  (1) thresholds are the *lower* edges confs_sorted[0], confs_sorted[step], ... (step = floor(N / R)) and a
///      sample's range is argmax(max_pred <= thresholds): the smallest confidence sits alone in range 0 and
///      the ranges are shifted by one;
///  (2) a sample above the last threshold has an all-false row, whose argmax is 0: the top ~N/R samples land
///      in range 0 too;
///  (3) inside a range it groups by the *true* class k and compares mean(argmax == k) with the mean *max*
///      probability (not p_k), then divides the sum by K * R whatever the number of non-empty cells.
/// N < R makes the notebook's range(0, 0, 0) raise; qprob throws invalid_argument instead.
[[nodiscard]] inline double ace(const prob_matrix& m, int num_ranges = 15) {
  m.validate("seed_compat::ace");
  QPROB_CHECK(num_ranges >= 1, "seed_compat::ace: num_ranges=", num_ranges, " must be >= 1");
  const std::int64_t n = m.n;
  const std::int64_t step = n / num_ranges;  // int(np.floor(N / num_ranges)) for positive ints
  QPROB_CHECK(step >= 1, "seed_compat::ace: n=", n, " < num_ranges=", num_ranges, " (the notebook raises here)");
  std::vector<double> max_pred(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    max_pred[static_cast<std::size_t>(i)] = m.row_max(i);
  }
  std::vector<double> confs = max_pred;
  std::sort(confs.begin(), confs.end());
  std::vector<double> thresholds;
  for (std::int64_t i = 0; i < step * num_ranges; i += step) {
    thresholds.push_back(confs[static_cast<std::size_t>(i)]);
  }
  std::vector<int> bin(static_cast<std::size_t>(n), 0);
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::size_t t = 0; t < thresholds.size(); ++t) {
      if (max_pred[static_cast<std::size_t>(i)] <= thresholds[t]) {
        bin[static_cast<std::size_t>(i)] = static_cast<int>(t);
        break;
      }
    }  // no threshold matched: argmax of an all-zero row is 0 (quirk 2)
  }
  double total = 0;  // Python float accumulation, bins outer, classes inner
  std::vector<double> cell_max;
  for (int r = 0; r < num_ranges; ++r) {
    for (std::int64_t k = 0; k < m.k; ++k) {
      cell_max.clear();
      std::int64_t hits = 0;
      for (std::int64_t i = 0; i < n; ++i) {
        if (bin[static_cast<std::size_t>(i)] == r && m.y[static_cast<std::size_t>(i)] == k) {
          cell_max.push_back(max_pred[static_cast<std::size_t>(i)]);
          hits += m.row_argmax(i) == k ? 1 : 0;
        }
      }
      if (cell_max.empty()) {
        continue;
      }
      // np.mean of an int array sums exactly (integers) then divides.
      const double acc  = static_cast<double>(hits) / static_cast<double>(cell_max.size());
      const double conf = numpy_mean(cell_max);
      total += std::fabs(acc - conf);
    }
  }
  return total / static_cast<double>(m.k * num_ranges);
}

namespace detail {

/// np.arange(0.0, 1.0, 1.0 / bins): length ceil(1 / (1 / bins)) (which can exceed bins by one when the
/// division rounds up), values i * step.
[[nodiscard]] inline std::vector<double> notebook_bin_edges(int bins) {
  const double step = 1.0 / static_cast<double>(bins);
  const auto len    = static_cast<std::int64_t>(std::ceil(1.0 / step));
  std::vector<double> e(static_cast<std::size_t>(len));
  for (std::int64_t i = 0; i < len; ++i) {
    e[static_cast<std::size_t>(i)] = static_cast<double>(i) * step;
  }
  return e;
}

/// np.digitize(x, edges) for increasing edges: the number of edges <= x.
[[nodiscard]] inline int digitize(double x, const std::vector<double>& edges) {
  return static_cast<int>(std::upper_bound(edges.begin(), edges.end(), x) - edges.begin());
}

/// Per-bin means as pandas' groupby(...).mean() computes them: Kahan-compensated sums in row order, divided
/// by the count; groups come out sorted by key.
struct kahan {
  double sum = 0, comp = 0;
  void add(double v) {
    const double y = v - comp;
    const double t = sum + y;
    comp           = (t - sum) - y;
    sum            = t;
  }
};
struct notebook_group {
  kahan y_pred, y;
  std::int64_t count = 0;
};

[[nodiscard]] inline std::map<int, notebook_group> notebook_groups(const prob_matrix& m, int bins) {
  const auto edges = notebook_bin_edges(bins);
  std::map<int, notebook_group> groups;
  for (std::int64_t i = 0; i < m.n; ++i) {
    const double conf = m.row_max(i);
    auto& g           = groups[digitize(conf, edges)];
    g.y_pred.add(conf);
    g.y.add(static_cast<double>(m.y[static_cast<std::size_t>(i)]));
    ++g.count;
  }
  return groups;
}

}  // namespace detail

/// The notebook's ece(y_true, y_pred, n_bins=100), used for 2-choice tasks. Quirks reproduced: it compares
/// the bin's mean max-probability with the bin mean of the *label index* y (0/1), not with correctness
/// (quirk 4), so it is an ECE only where y == 1 happens to mean "predicted correctly"; bins are np.digitize
/// over np.arange(0, 1, 1/n_bins) lower edges, i.e. [lower, upper) with 1.0 in a bin of its own.
/// Sum over groups: pandas Series.sum -> numpy pairwise sum over the sorted groups.
[[nodiscard]] inline double ece(const prob_matrix& m, int n_bins = 100) {
  m.validate("seed_compat::ece");
  QPROB_CHECK(n_bins >= 1, "seed_compat::ece: n_bins=", n_bins, " must be >= 1");
  const auto groups = detail::notebook_groups(m, n_bins);
  std::vector<double> terms;
  for (const auto& [key, g] : groups) {
    const double c      = static_cast<double>(g.count);
    const double weight = c / static_cast<double>(m.n);
    terms.push_back(std::fabs(g.y_pred.sum / c - g.y.sum / c) * weight);
  }
  return numpy_pairwise_sum(terms.data(), static_cast<std::int64_t>(terms.size()));
}

/// The notebook's mce_binary(y_true, y_pred, num_bins=100): like ece() but max over groups of the *signed*
/// difference mean(y_pred) - mean(y) (quirk 5: no abs, and the label index again).
[[nodiscard]] inline double mce_binary(const prob_matrix& m, int num_bins = 100) {
  m.validate("seed_compat::mce_binary");
  const auto groups = detail::notebook_groups(m, num_bins);
  double best       = -INFINITY;
  for (const auto& [key, g] : groups) {
    const double c = static_cast<double>(g.count);
    best           = std::max(best, g.y_pred.sum / c - g.y.sum / c);
  }
  return best;
}

/// The notebook's mce(y_true, y_pred, num_bins) for K > 2 (SCE-style). Quirks reproduced: np.digitize returns
/// 1..num_bins but the loop visits bins 0..num_bins-1, so the top bin (conf >= 1 - 1/num_bins) is never
/// counted and bin 0 is always empty (quirk 6); within a bin it groups by the true class like ace(); the
/// running max starts at -1, which is returned when every cell is empty.
[[nodiscard]] inline double mce(const prob_matrix& m, int num_bins = 100) {
  m.validate("seed_compat::mce");
  const auto edges = detail::notebook_bin_edges(num_bins);
  std::vector<int> bin(static_cast<std::size_t>(m.n));
  for (std::int64_t i = 0; i < m.n; ++i) {
    bin[static_cast<std::size_t>(i)] = detail::digitize(m.row_max(i), edges);
  }
  double best = -1;
  std::vector<double> cell;
  for (int b = 0; b < num_bins; ++b) {
    for (std::int64_t k = 0; k < m.k; ++k) {
      cell.clear();
      std::int64_t hits = 0;
      for (std::int64_t i = 0; i < m.n; ++i) {
        if (bin[static_cast<std::size_t>(i)] == b && m.y[static_cast<std::size_t>(i)] == k) {
          cell.push_back(m.row_max(i));
          hits += m.row_argmax(i) == k ? 1 : 0;
        }
      }
      if (cell.empty()) {
        continue;
      }
      const double acc = static_cast<double>(hits) / static_cast<double>(cell.size());
      best             = std::max(best, std::fabs(acc - numpy_mean(cell)));
    }
  }
  return best;
}

/// The notebook's "ACE" table column: ace(num_ranges) when K > 2, ece(n_bins) when K == 2.
[[nodiscard]] inline double table_ace(const prob_matrix& m, int num_ranges = 15, int n_bins = 100) {
  return m.k > 2 ? ace(m, num_ranges) : ece(m, n_bins);
}

/// The notebook's "mce" column: mce(num_bins=100) when K > 2, mce_binary(num_bins=100) when K == 2.
[[nodiscard]] inline double table_mce(const prob_matrix& m, int num_bins = 100) {
  return m.k > 2 ? mce(m, num_bins) : mce_binary(m, num_bins);
}

/// Summary means as the notebook computes them (np.mean over Python lists -> pairwise sums). Entropy is in
/// bits: -np.sum(p * np.log2(p)) per sample, where a zero probability gives NaN in numpy (0 * -inf) and here
/// too (quirk 7). c_pos / c_neg are NaN when their list is empty (np.mean([])).
struct notebook_summary {
  double conf = 0, conf_true = 0, c_pos = 0, c_neg = 0, entropy_bits = 0;
};

[[nodiscard]] inline notebook_summary summary(const prob_matrix& m) {
  m.validate("seed_compat::summary");
  std::vector<double> conf, conf_true, pos, neg, ent;
  for (std::int64_t i = 0; i < m.n; ++i) {
    double h = 0;  // np.sum over k < 8 elements adds left to right
    std::vector<double> terms(static_cast<std::size_t>(m.k));
    for (std::int64_t j = 0; j < m.k; ++j) {
      terms[static_cast<std::size_t>(j)] = m.at(i, j) * std::log2(m.at(i, j));
    }
    h = -numpy_pairwise_sum(terms.data(), m.k);
    ent.push_back(h);
    const auto a = m.row_argmax(i);
    conf.push_back(m.at(i, a));
    conf_true.push_back(m.at(i, m.y[static_cast<std::size_t>(i)]));
    (a == m.y[static_cast<std::size_t>(i)] ? pos : neg).push_back(m.at(i, a));
  }
  return {numpy_mean(conf), numpy_mean(conf_true), numpy_mean(pos), numpy_mean(neg), numpy_mean(ent)};
}

/// The notebook's probabilities: np.exp(l - max) / np.sum(np.exp(l - max)) per row. numpy may use its own
/// SIMD exp, so these can differ from numpy's in the last bit; the bit-for-bit guarantee of this header
/// starts from a given probability matrix.
[[nodiscard]] inline std::vector<double> notebook_softmax(std::span<const double> logits, std::int64_t n, std::int64_t k) {
  QPROB_CHECK_EQ(static_cast<std::int64_t>(logits.size()), n * k, "notebook_softmax: logits must be n x k");
  std::vector<double> p(logits.size());
  for (std::int64_t i = 0; i < n; ++i) {
    const double* row = logits.data() + i * k;
    const double mx   = *std::max_element(row, row + k);
    std::vector<double> e(static_cast<std::size_t>(k));
    for (std::int64_t j = 0; j < k; ++j) {
      e[static_cast<std::size_t>(j)] = std::exp(row[j] - mx);
    }
    const double s = numpy_pairwise_sum(e.data(), k);
    for (std::int64_t j = 0; j < k; ++j) {
      p[static_cast<std::size_t>(i * k + j)] = e[static_cast<std::size_t>(j)] / s;
    }
  }
  return p;
}

}  // namespace qprob::metrics::seed_compat
