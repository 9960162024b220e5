// SPDX-License-Identifier: Apache-2.0
#pragma once
// Host double-precision reference of every confidence / calibration metric (metrics layer): plain loops in
// sample order, meant to be read as the specification (docs/metrics.md gives the same formulas). The device
// implementation (metrics.cuh) must agree with these to rounding; the parity suite ties both to
// torchmetrics / scipy.

#include <qprob/core/error.hpp>
#include <qprob/metrics/sample.hpp>
#include <qprob/metrics/seed_compat.hpp>
#include <qprob/metrics/stats.hpp>
#include <qprob/metrics/types.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <vector>

namespace qprob::metrics {

/// Checks a ragged input and throws invalid_argument naming the first offending value. `needs` selects
/// which length arrays must be present.
inline void validate_scores(const choice_scores_view& s, scoring mode, const char* who = "metrics") {
  QPROB_CHECK(s.offsets.size() >= 2, who, ": needs at least one sample (offsets has ", s.offsets.size(), " entries, need N + 1 >= 2)");
  const std::int64_t n = s.samples();
  QPROB_CHECK(s.offsets[0] == 0, who, ": offsets[0]=", s.offsets[0], " must be 0");
  for (std::int64_t i = 0; i < n; ++i) {
    QPROB_CHECK(s.offsets[static_cast<std::size_t>(i + 1)] > s.offsets[static_cast<std::size_t>(i)], who, ": sample ", i,
                " has no choices (offsets[", i, "]=", s.offsets[static_cast<std::size_t>(i)], ", offsets[", i + 1, "]=",
                s.offsets[static_cast<std::size_t>(i + 1)], ")");
  }
  const std::int64_t total = s.offsets[static_cast<std::size_t>(n)];
  QPROB_CHECK(static_cast<std::int64_t>(s.loglik.size()) == total, who, ": loglik has ", s.loglik.size(),
              " values but offsets[N]=", total);
  QPROB_CHECK(static_cast<std::int64_t>(s.gold.size()) == n, who, ": gold has ", s.gold.size(), " entries for N=", n, " samples");
  QPROB_CHECK(s.char_len.empty() || static_cast<std::int64_t>(s.char_len.size()) == total, who, ": char_len has ",
              s.char_len.size(), " values but there are ", total, " choices");
  QPROB_CHECK(s.token_len.empty() || static_cast<std::int64_t>(s.token_len.size()) == total, who, ": token_len has ",
              s.token_len.size(), " values but there are ", total, " choices");
  QPROB_CHECK(mode != scoring::char_normalized || !s.char_len.empty(), who, ": char_normalized scoring needs char_len");
  QPROB_CHECK(mode != scoring::token_normalized || !s.token_len.empty(), who, ": token_normalized scoring needs token_len");
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t k = s.offsets[static_cast<std::size_t>(i + 1)] - s.offsets[static_cast<std::size_t>(i)];
    const auto g         = s.gold[static_cast<std::size_t>(i)];
    QPROB_CHECK(g >= 0 && g < k, who, ": gold[", i, "]=", g, " is outside [0, ", k, ") choices");
  }
  for (std::int64_t j = 0; j < total; ++j) {
    QPROB_CHECK(std::isfinite(s.loglik[static_cast<std::size_t>(j)]), who, ": loglik[", j, "]=",
                s.loglik[static_cast<std::size_t>(j)], " is not finite");
    QPROB_CHECK(s.char_len.empty() || s.char_len[static_cast<std::size_t>(j)] > 0, who, ": char_len[", j, "]=",
                s.char_len[static_cast<std::size_t>(j)], " must be > 0");
    QPROB_CHECK(s.token_len.empty() || s.token_len[static_cast<std::size_t>(j)] > 0, who, ": token_len[", j, "]=",
                s.token_len[static_cast<std::size_t>(j)], " must be > 0");
  }
}

/// Checks that two inputs describe the same samples (offsets, gold, lengths).
inline void validate_paired(const choice_scores_view& full, const choice_scores_view& quant, scoring mode) {
  validate_scores(full, mode, "paired metrics (full)");
  validate_scores(quant, mode, "paired metrics (quantized)");
  QPROB_CHECK(full.samples() == quant.samples(), "paired metrics: full has ", full.samples(), " samples, quantized ",
              quant.samples());
  for (std::size_t i = 0; i < full.offsets.size(); ++i) {
    QPROB_CHECK(full.offsets[i] == quant.offsets[i], "paired metrics: offsets[", i, "] differs: full ", full.offsets[i],
                ", quantized ", quant.offsets[i]);
  }
  for (std::size_t i = 0; i < full.gold.size(); ++i) {
    QPROB_CHECK(full.gold[i] == quant.gold[i], "paired metrics: gold[", i, "] differs: full ", full.gold[i], ", quantized ",
                quant.gold[i]);
  }
}

namespace detail {
[[nodiscard]] inline const std::int32_t* maybe_data(std::span<const std::int32_t> s) { return s.empty() ? nullptr : s.data(); }

[[nodiscard]] inline int max_choices(const choice_scores_view& s) {
  std::int64_t k = 0;
  for (std::int64_t i = 0; i < s.samples(); ++i) {
    k = std::max(k, s.offsets[static_cast<std::size_t>(i + 1)] - s.offsets[static_cast<std::size_t>(i)]);
  }
  return static_cast<int>(k);
}

/// Start of equal-mass range r of n sorted items split into R ranges: np.array_split sizes (the first n % R
/// ranges hold one extra item).
[[nodiscard]] QPROB_HOST_DEVICE inline std::int64_t equal_mass_start(std::int64_t r, std::int64_t n, std::int64_t ranges) {
  const std::int64_t base = n / ranges;
  const std::int64_t extra = n % ranges;
  return r * base + (r < extra ? r : extra);
}
}  // namespace detail

/// Per-sample evaluation of every sample (probabilities under `mode`).
[[nodiscard]] inline std::vector<sample_eval> evaluate_samples(const choice_scores_view& s, scoring mode) {
  validate_scores(s, mode);
  std::vector<sample_eval> out(static_cast<std::size_t>(s.samples()));
  for (std::int64_t i = 0; i < s.samples(); ++i) {
    out[static_cast<std::size_t>(i)] =
        evaluate_sample(s.loglik.data(), detail::maybe_data(s.char_len), detail::maybe_data(s.token_len),
                        s.offsets[static_cast<std::size_t>(i)], s.offsets[static_cast<std::size_t>(i + 1)],
                        s.gold[static_cast<std::size_t>(i)], mode);
  }
  return out;
}

/// Flat ragged choice probabilities (same layout as loglik): softmax over each sample's choice scores.
[[nodiscard]] inline std::vector<double> choice_probabilities(const choice_scores_view& s, scoring mode) {
  validate_scores(s, mode);
  std::vector<double> p(s.loglik.size());
  const auto* cl = detail::maybe_data(s.char_len);
  const auto* tl = detail::maybe_data(s.token_len);
  for (std::int64_t i = 0; i < s.samples(); ++i) {
    const auto b = s.offsets[static_cast<std::size_t>(i)], e = s.offsets[static_cast<std::size_t>(i + 1)];
    const auto st = softmax_of(s.loglik.data(), cl, tl, b, e, mode);
    for (auto j = b; j < e; ++j) {
      p[static_cast<std::size_t>(j)] = std::exp(choice_score(s.loglik[static_cast<std::size_t>(j)], cl, tl, j, mode) - st.max_score) / st.sum;
    }
  }
  return p;
}

/// Equal-width calibration errors from per-sample confidence and correctness.
struct calibration_errors {
  double ece = nan_v, mce = nan_v, rmsce = nan_v;
  double uniform_average = nan_v;  ///< netcal "ACE": unweighted mean of |acc_b - conf_b| over non-empty bins
  std::vector<reliability_bin> bins;
};

/// ECE = sum_b (n_b / n) |acc_b - conf_b|, MCE = max_b |acc_b - conf_b|, RMSCE = sqrt(sum_b (n_b / n)(acc_b -
/// conf_b)^2), over non-empty bins; bins per `edges` (see calibration_bin).
[[nodiscard]] inline calibration_errors equal_width_calibration(std::span<const double> conf,
                                                                std::span<const std::uint8_t> correct,
                                                                int bins,
                                                                bin_edges edges) {
  QPROB_CHECK_EQ(conf.size(), correct.size(), "equal_width_calibration: one correctness flag per confidence");
  QPROB_CHECK(!conf.empty(), "equal_width_calibration: needs at least one sample");
  QPROB_CHECK(bins >= 1, "equal_width_calibration: bins=", bins, " must be >= 1");
  const int slots = bin_slots(bins, edges);
  std::vector<double> sum_conf(static_cast<std::size_t>(slots), 0.0), sum_acc(static_cast<std::size_t>(slots), 0.0);
  std::vector<std::int64_t> count(static_cast<std::size_t>(slots), 0);
  for (std::size_t i = 0; i < conf.size(); ++i) {
    QPROB_CHECK(conf[i] >= 0.0 && conf[i] <= 1.0, "equal_width_calibration: conf[", i, "]=", conf[i], " is outside [0, 1]");
    const auto b = static_cast<std::size_t>(calibration_bin(conf[i], bins, edges));
    sum_conf[b] += conf[i];
    sum_acc[b] += correct[i] ? 1.0 : 0.0;
    ++count[b];
  }
  calibration_errors r;
  r.ece = 0, r.mce = 0, r.rmsce = 0;
  double sq = 0, unweighted = 0;
  int nonempty = 0;
  const double n = static_cast<double>(conf.size());
  for (int b = 0; b < slots; ++b) {
    reliability_bin rb;
    rb.lower = b < bins ? uniform_edge(b, bins) : 1.0;
    rb.upper = b < bins ? uniform_edge(b + 1, bins) : 1.0;
    rb.count = count[static_cast<std::size_t>(b)];
    if (rb.count > 0) {
      const double c = static_cast<double>(rb.count);
      rb.mean_conf   = sum_conf[static_cast<std::size_t>(b)] / c;
      rb.accuracy    = sum_acc[static_cast<std::size_t>(b)] / c;
      const double gap = std::fabs(rb.accuracy - rb.mean_conf);
      r.ece += c / n * gap;
      sq += c / n * gap * gap;
      r.mce = std::max(r.mce, gap);
      unweighted += gap;
      ++nonempty;
    }
    r.bins.push_back(rb);
  }
  r.rmsce           = std::sqrt(sq);
  r.uniform_average = unweighted / nonempty;
  return r;
}

/// Equal-mass top-label ACE ("Price of Efficiency"; netcal ACE with equal_intervals=False): sort samples by
/// confidence (stable, ties by sample order), split into `ranges` np.array_split parts, average
/// |mean(correct) - mean(conf)| over the non-empty parts (unweighted).
[[nodiscard]] inline double ace_equal_mass_top_label(std::span<const double> conf, std::span<const std::uint8_t> correct, int ranges) {
  QPROB_CHECK_EQ(conf.size(), correct.size(), "ace_equal_mass_top_label: one correctness flag per confidence");
  QPROB_CHECK(!conf.empty(), "ace_equal_mass_top_label: needs at least one sample");
  QPROB_CHECK(ranges >= 1, "ace_equal_mass_top_label: ranges=", ranges, " must be >= 1");
  const auto n = static_cast<std::int64_t>(conf.size());
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return conf[static_cast<std::size_t>(a)] < conf[static_cast<std::size_t>(b)]; });
  double total = 0;
  int used     = 0;
  for (int r = 0; r < ranges; ++r) {
    const auto lo = detail::equal_mass_start(r, n, ranges), hi = detail::equal_mass_start(r + 1, n, ranges);
    if (hi == lo) {
      continue;
    }
    double sc = 0, sa = 0;
    for (auto j = lo; j < hi; ++j) {
      sc += conf[static_cast<std::size_t>(order[static_cast<std::size_t>(j)])];
      sa += correct[static_cast<std::size_t>(order[static_cast<std::size_t>(j)])] ? 1.0 : 0.0;
    }
    total += std::fabs(sa / static_cast<double>(hi - lo) - sc / static_cast<double>(hi - lo));
    ++used;
  }
  return total / used;
}

/// Nixon et al. 2019 adaptive calibration error: for every class (choice index) k, the probabilities p_k of
/// all samples that have a choice k, sorted ascending (stable), split into `ranges` equal-mass parts; in each
/// part |mean(1[gold = k]) - mean(p_k)|; ACE is the mean over the non-empty (k, r) cells, which is
/// 1 / (K R) sum_k sum_r for uniform K and N >= R. Ragged K: class k only covers samples with K_i > k.
[[nodiscard]] inline double ace_nixon(const choice_scores_view& s, scoring mode, int ranges) {
  QPROB_CHECK(ranges >= 1, "ace_nixon: ranges=", ranges, " must be >= 1");
  const auto p    = choice_probabilities(s, mode);
  const int k_max = detail::max_choices(s);
  double total    = 0;
  std::int64_t cells = 0;
  for (int k = 0; k < k_max; ++k) {
    std::vector<double> pk;
    std::vector<std::uint8_t> is_k;
    for (std::int64_t i = 0; i < s.samples(); ++i) {
      const auto b = s.offsets[static_cast<std::size_t>(i)], e = s.offsets[static_cast<std::size_t>(i + 1)];
      if (e - b > k) {
        pk.push_back(p[static_cast<std::size_t>(b + k)]);
        is_k.push_back(s.gold[static_cast<std::size_t>(i)] == k ? 1 : 0);
      }
    }
    const auto n = static_cast<std::int64_t>(pk.size());
    std::vector<std::int64_t> order(static_cast<std::size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return pk[static_cast<std::size_t>(a)] < pk[static_cast<std::size_t>(b)]; });
    for (int r = 0; r < ranges; ++r) {
      const auto lo = detail::equal_mass_start(r, n, ranges), hi = detail::equal_mass_start(r + 1, n, ranges);
      if (hi == lo) {
        continue;
      }
      double sp = 0, sl = 0;
      for (auto j = lo; j < hi; ++j) {
        sp += pk[static_cast<std::size_t>(order[static_cast<std::size_t>(j)])];
        sl += is_k[static_cast<std::size_t>(order[static_cast<std::size_t>(j)])];
      }
      total += std::fabs(sl / static_cast<double>(hi - lo) - sp / static_cast<double>(hi - lo));
      ++cells;
    }
  }
  return total / static_cast<double>(cells);
}

/// The seed notebook's ACE column on this input (uniform K required: the notebook builds an N x K matrix).
[[nodiscard]] inline double ace_seed_compat(const choice_scores_view& s, scoring mode, int ace_ranges, int ece_bins) {
  const auto p = choice_probabilities(s, mode);
  const std::int64_t k = s.offsets[1] - s.offsets[0];
  for (std::int64_t i = 0; i < s.samples(); ++i) {
    const auto ki = s.offsets[static_cast<std::size_t>(i + 1)] - s.offsets[static_cast<std::size_t>(i)];
    QPROB_CHECK(ki == k, "ace seed_compat: the notebook needs the same number of choices for every sample; sample ", i,
                " has ", ki, ", sample 0 has ", k);
  }
  const seed_compat::prob_matrix m{s.samples(), k, p, s.gold};
  return seed_compat::table_ace(m, ace_ranges, ece_bins);
}

/// All per-model metrics of one task (see model_metrics for the definitions).
[[nodiscard]] inline model_metrics compute_model_metrics_reference(const choice_scores_view& s, const metric_options& opt) {
  opt.validate();
  validate_scores(s, opt.score);
  const auto ev = evaluate_samples(s, opt.score);
  const auto n  = s.samples();
  model_metrics m;
  m.n = n;
  std::int64_t n_sum = 0, n_norm = 0, n_ok = 0;
  double conf = 0, conf_ok = 0, conf_bad = 0, p_true = 0, ent = 0, brier = 0, nll = 0;
  std::vector<double> confs(static_cast<std::size_t>(n));
  std::vector<std::uint8_t> ok(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const auto& e = ev[static_cast<std::size_t>(i)];
    n_sum += e.correct_sum;
    n_norm += e.correct_norm;
    n_ok += e.correct;
    conf += e.conf;
    (e.correct ? conf_ok : conf_bad) += e.conf;
    p_true += e.p_true;
    ent += e.entropy;
    brier += e.brier;
    nll += e.nll;
    confs[static_cast<std::size_t>(i)] = e.conf;
    ok[static_cast<std::size_t>(i)]    = e.correct;
  }
  const double nn  = static_cast<double>(n);
  m.n_correct      = n_ok;
  m.acc            = static_cast<double>(n_sum) / nn;
  m.acc_stderr     = proportion_stderr(n_sum, n);
  m.acc_wilson     = wilson_interval(n_sum, n, opt.confidence_level);
  m.acc_bootstrap  = bootstrap_proportion_interval(n_sum, n, opt.bootstrap_iterations, opt.bootstrap_seed, opt.confidence_level);
  if (!s.char_len.empty()) {
    m.acc_norm        = static_cast<double>(n_norm) / nn;
    m.acc_norm_stderr = proportion_stderr(n_norm, n);
    m.acc_norm_wilson = wilson_interval(n_norm, n, opt.confidence_level);
  }
  m.accuracy     = static_cast<double>(n_ok) / nn;
  m.conf         = conf / nn;
  m.conf_correct = n_ok > 0 ? conf_ok / static_cast<double>(n_ok) : nan_v;
  m.conf_err     = n_ok < n ? conf_bad / static_cast<double>(n - n_ok) : nan_v;
  m.conf_true    = p_true / nn;
  m.entropy      = ent / nn;
  m.entropy_bits = m.entropy / std::log(2.0);
  m.brier        = brier / nn;
  m.nll          = nll / nn;
  auto cal       = equal_width_calibration(confs, ok, opt.calibration_bins, opt.edges);
  m.ece          = cal.ece;
  m.mce          = cal.mce;
  m.rmsce        = cal.rmsce;
  m.reliability  = std::move(cal.bins);
  switch (opt.ace) {
    case ace_variant::nixon: m.ace = ace_nixon(s, opt.score, opt.ace_ranges); break;
    case ace_variant::equal_mass_top_label: m.ace = ace_equal_mass_top_label(confs, ok, opt.ace_ranges); break;
    case ace_variant::uniform_average:
      m.ace = equal_width_calibration(confs, ok, opt.ace_ranges, opt.edges).uniform_average;
      break;
    case ace_variant::seed_compat: m.ace = ace_seed_compat(s, opt.score, opt.seed_ace_ranges, opt.seed_ece_bins); break;
  }
  return m;
}

/// numpy.median: middle element, or the mean of the two middle ones.
[[nodiscard]] inline double median_of(std::vector<double> v) {
  if (v.empty()) {
    return nan_v;
  }
  std::sort(v.begin(), v.end());
  const auto h = v.size() / 2;
  return v.size() % 2 ? v[h] : 0.5 * (v[h - 1] + v[h]);
}

/// JS divergence (nats) between the normalised vectors a / sum(a) and b / sum(b): the square of
/// scipy.spatial.distance.jensenshannon(a, b). Used for the paper's Appendix-B quantity on true-class
/// probability vectors.
[[nodiscard]] inline double js_divergence_normalized(std::span<const double> a, std::span<const double> b) {
  QPROB_CHECK_EQ(a.size(), b.size(), "js_divergence_normalized: vectors must have the same length");
  double sa = 0, sb = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    QPROB_CHECK(a[i] >= 0 && b[i] >= 0, "js_divergence_normalized: entry ", i, " is negative (", a[i], ", ", b[i], ")");
    sa += a[i];
    sb += b[i];
  }
  QPROB_CHECK(sa > 0 && sb > 0, "js_divergence_normalized: a vector sums to 0 (", sa, ", ", sb, ")");
  double js = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double p = a[i] / sa, q = b[i] / sb, m = 0.5 * (p + q);
    if (p > 0) {
      js += 0.5 * p * std::log(p / m);
    }
    if (q > 0) {
      js += 0.5 * q * std::log(q / m);
    }
  }
  return std::max(js, 0.0);
}

/// Confidence shift by the full model's confidence bin (paper Figures 1 and 3).
[[nodiscard]] inline std::vector<shift_bin> confidence_shift_by_bin(std::span<const double> conf_full,
                                                                    std::span<const double> conf_quant,
                                                                    std::span<const double> true_full,
                                                                    std::span<const double> true_quant,
                                                                    int bins,
                                                                    double lo) {
  std::vector<shift_bin> out(static_cast<std::size_t>(bins));
  std::vector<std::vector<double>> dc(static_cast<std::size_t>(bins)), dt(static_cast<std::size_t>(bins));
  for (std::size_t i = 0; i < conf_full.size(); ++i) {
    const auto b = static_cast<std::size_t>(shift_bin_index(conf_full[i], bins, lo));
    dc[b].push_back(conf_quant[i] - conf_full[i]);
    dt[b].push_back(true_quant[i] - true_full[i]);
  }
  const auto mean_se = [](const std::vector<double>& v, double& mean, double& se) {
    if (v.empty()) {
      return;
    }
    double s = 0;
    for (double x : v) {
      s += x;
    }
    mean = s / static_cast<double>(v.size());
    if (v.size() < 2) {
      return;
    }
    double ss = 0;
    for (double x : v) {
      ss += (x - mean) * (x - mean);
    }
    se = std::sqrt(ss / static_cast<double>(v.size() - 1)) / std::sqrt(static_cast<double>(v.size()));
  };
  for (int b = 0; b < bins; ++b) {
    auto& o = out[static_cast<std::size_t>(b)];
    o.lower = shift_edge(b, bins, lo);
    o.upper = shift_edge(b + 1, bins, lo);
    o.count = static_cast<std::int64_t>(dc[static_cast<std::size_t>(b)].size());
    mean_se(dc[static_cast<std::size_t>(b)], o.mean_conf_shift, o.stderr_conf_shift);
    mean_se(dt[static_cast<std::size_t>(b)], o.mean_true_shift, o.stderr_true_shift);
  }
  return out;
}

/// All paired metrics of a full and a quantized model on the same samples.
[[nodiscard]] inline paired_metrics compute_paired_metrics_reference(const choice_scores_view& full,
                                                                     const choice_scores_view& quant,
                                                                     const metric_options& opt) {
  opt.validate();
  validate_paired(full, quant, opt.score);
  const auto ef = evaluate_samples(full, opt.score);
  const auto eq = evaluate_samples(quant, opt.score);
  const auto n  = full.samples();
  const auto* cl = detail::maybe_data(full.char_len);
  const auto* tl = detail::maybe_data(full.token_len);
  paired_metrics r;
  r.n = n;
  std::vector<double> js(static_cast<std::size_t>(n)), jd(static_cast<std::size_t>(n));
  std::vector<double> tf(static_cast<std::size_t>(n)), tq(static_cast<std::size_t>(n));
  std::vector<double> cf(static_cast<std::size_t>(n)), cq(static_cast<std::size_t>(n));
  double sum_js = 0, sum_jd = 0, kl_pq = 0, kl_qp = 0, shift = 0;
  std::int64_t flips = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const auto u = static_cast<std::size_t>(i);
    const auto pe = evaluate_pair(full.loglik.data(), quant.loglik.data(), cl, tl, full.offsets[u], full.offsets[u + 1], opt.score);
    js[u] = pe.js;
    jd[u] = std::sqrt(pe.js);
    sum_js += pe.js;
    sum_jd += jd[u];
    kl_pq += pe.kl_pq;
    kl_qp += pe.kl_qp;
    flips += ef[u].pred != eq[u].pred;
    const bool a = ef[u].correct, b = eq[u].correct;
    (a && b ? r.both_correct : a ? r.full_only : b ? r.quant_only : r.both_wrong) += 1;
    tf[u] = ef[u].p_true;
    tq[u] = eq[u].p_true;
    cf[u] = ef[u].conf;
    cq[u] = eq[u].conf;
    shift += tq[u] - tf[u];
  }
  const double nn          = static_cast<double>(n);
  r.jsd_mean               = sum_js / nn;
  r.js_distance_mean       = sum_jd / nn;
  r.jsd_median             = median_of(js);
  r.js_distance_median     = median_of(jd);
  r.true_class_jsd         = js_divergence_normalized(tf, tq);
  r.true_class_js_distance = std::sqrt(r.true_class_jsd);
  r.kl_full_quant          = kl_pq / nn;
  r.kl_quant_full          = kl_qp / nn;
  r.flip_rate              = static_cast<double>(flips) / nn;
  r.mean_conf_true_shift   = shift / nn;
  r.ttest_conf_true        = paired_t_test(tf, tq, opt.alpha);
  r.wilcoxon_conf_true     = wilcoxon_signed_rank(tf, tq, opt.wilcoxon, opt.alpha);
  r.mcnemar                = mcnemar_test(r.full_only, r.quant_only, opt.mcnemar, opt.alpha);
  r.conf_shift_by_bin      = confidence_shift_by_bin(cf, cq, tf, tq, opt.shift_bins, 1.0 / detail::max_choices(full));
  return r;
}

}  // namespace qprob::metrics
