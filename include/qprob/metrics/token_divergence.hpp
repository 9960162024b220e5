// SPDX-License-Identifier: Apache-2.0
#pragma once
// Per-token statistics between a base and a compared language model on running text, as llama.cpp's
// `llama-perplexity --kl-divergence` prints them (REFERENCE.md A2): both perplexities, ln(PPL_q / PPL_base)
// with its error, the correlation of the per-token ln-probabilities, KL(base || compared) mean, error and
// quantiles, the change in the probability of the true next token (Δp) with its quantiles and RMS, and the
// fraction of positions where both models' top-1 tokens agree. Host, double precision; one position at a time
// (compare_token), aggregated by token_divergence_accumulator, which keeps four doubles per position (never a
// logits row). docs/perplexity.md has the formulas and how they differ from llama.cpp's. Layer: metrics.

#include <qprob/core/error.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace qprob::metrics {

/// A row counts as log-probabilities when sum(exp(row)) is within this of 1. Double log-softmax rows are
/// normalized to ~1e-15 and float32 ones (a GPU engine) to ~1e-6; raw logits are off by orders of magnitude,
/// which is the mistake this catches.
inline constexpr double logprob_row_tolerance = 1e-4;

/// What two next-token distributions say about one position.
struct token_comparison {
  double kl               = 0;  ///< KL(base || compared) = sum_i p_base,i (ln p_base,i - ln p_compared,i), nats
  double base_logprob     = 0;  ///< ln p_base(true next token)
  double compared_logprob = 0;  ///< ln p_compared(true next token)
  double delta_p          = 0;  ///< p_compared(true) - p_base(true)
  std::int64_t base_top     = 0;  ///< argmax of the base row (the first index on ties)
  std::int64_t compared_top = 0;  ///< argmax of the compared row (the first index on ties)
  [[nodiscard]] bool same_top() const noexcept { return base_top == compared_top; }
};

/// Compares two full-vocabulary log-probability rows for a position whose true next token is `target`.
/// Terms with p_base,i = 0 (ln p = -inf) contribute nothing to KL; p_base,i > 0 with p_compared,i = 0 makes it
/// +inf. KL is not clamped: rows normalized only to rounding can give a tiny negative value (llama.cpp prints
/// those too). Identical rows give exactly 0.
/// @throws invalid_argument for rows of different or zero length, `target` outside the row, a NaN or +inf
///         entry, or a row that is not normalized (see logprob_row_tolerance).
[[nodiscard]] inline token_comparison compare_token(std::span<const double> base, std::span<const double> compared,
                                                    std::int64_t target) {
  QPROB_CHECK(!base.empty(), "compare_token: empty log-probability row");
  QPROB_CHECK_EQ(base.size(), compared.size(), "compare_token: the two rows must cover the same vocabulary");
  const auto n = static_cast<std::int64_t>(base.size());
  QPROB_CHECK(target >= 0 && target < n, "compare_token: target token ", target, " is outside the vocabulary of ", n);
  token_comparison c;
  double sum_base = 0, sum_compared = 0, kl = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const double lb = base[static_cast<std::size_t>(i)];
    const double lc = compared[static_cast<std::size_t>(i)];
    QPROB_CHECK(!std::isnan(lb) && lb != std::numeric_limits<double>::infinity(), "compare_token: base row entry ", i,
                " is ", lb, " (expected a log-probability <= 0 or -inf)");
    QPROB_CHECK(!std::isnan(lc) && lc != std::numeric_limits<double>::infinity(), "compare_token: compared row entry ",
                i, " is ", lc, " (expected a log-probability <= 0 or -inf)");
    const double pb = std::exp(lb);
    sum_base += pb;
    sum_compared += std::exp(lc);
    if (pb > 0) {
      kl += pb * (lb - lc);
    }
    if (lb > base[static_cast<std::size_t>(c.base_top)]) {
      c.base_top = i;
    }
    if (lc > compared[static_cast<std::size_t>(c.compared_top)]) {
      c.compared_top = i;
    }
  }
  QPROB_CHECK(std::abs(sum_base - 1.0) <= logprob_row_tolerance, "compare_token: the base row is not normalized: ",
              "sum(exp(row)) = ", sum_base, " (pass log-softmax rows, not logits)");
  QPROB_CHECK(std::abs(sum_compared - 1.0) <= logprob_row_tolerance,
              "compare_token: the compared row is not normalized: sum(exp(row)) = ", sum_compared,
              " (pass log-softmax rows, not logits)");
  c.kl               = kl;
  c.base_logprob     = base[static_cast<std::size_t>(target)];
  c.compared_logprob = compared[static_cast<std::size_t>(target)];
  c.delta_p          = std::exp(c.compared_logprob) - std::exp(c.base_logprob);
  return c;
}

/// A value with its standard error (NaN where undefined).
struct estimate {
  double value = std::numeric_limits<double>::quiet_NaN();
  double error = std::numeric_limits<double>::quiet_NaN();
};

/// Mean and standard error of the mean, sqrt(sum (x - mean)^2 / (n (n - 1))), computed in two passes. This is
/// the quantity llama.cpp's mean_and_uncertainty computes from raw sums (it prints 0 instead for n <= 10).
/// Mean NaN for n = 0, error NaN for n < 2.
[[nodiscard]] inline estimate mean_and_error(std::span<const double> x) {
  estimate e;
  if (x.empty()) {
    return e;
  }
  double sum = 0;
  for (const double v : x) {
    sum += v;
  }
  const double n = static_cast<double>(x.size());
  e.value        = sum / n;
  if (x.size() >= 2) {
    double ss = 0;
    for (const double v : x) {
      ss += (v - e.value) * (v - e.value);
    }
    e.error = std::sqrt(ss / (n * (n - 1.0)));
  }
  return e;
}

/// The q-quantile of ascending `sorted` values by linear interpolation between order statistics: with
/// h = q (n - 1), x[floor h] + (h - floor h) (x[floor h + 1] - x[floor h]) (Hyndman and Fan's type 7: numpy's
/// default "linear", R's default, and llama.cpp's percentile()). q = 0.5 is the usual median (the mean of the
/// two middle values for even n). NaN for no values.
/// @throws invalid_argument for q outside [0, 1].
[[nodiscard]] inline double quantile_sorted(std::span<const double> sorted, double q) {
  QPROB_CHECK(q >= 0.0 && q <= 1.0, "quantile_sorted: q=", q, " must be in [0, 1]");
  if (sorted.empty()) {
    return std::numeric_limits<double>::quiet_NaN();
  }
  const double h    = q * static_cast<double>(sorted.size() - 1);
  const auto lo     = static_cast<std::size_t>(std::floor(h));
  const double frac = h - static_cast<double>(lo);
  if (frac == 0.0 || lo + 1 >= sorted.size()) {
    return sorted[lo];  // also keeps an infinite neighbour from turning 0 * inf into NaN
  }
  return sorted[lo] + frac * (sorted[lo + 1] - sorted[lo]);
}

/// The levels every quantile_summary holds: llama.cpp's KLD levels plus the quartiles it prints for Δp.
inline constexpr std::array<double, 13> summary_levels = {0.0,  0.001, 0.01, 0.05, 0.10,  0.25, 0.5,
                                                          0.75, 0.90,  0.95, 0.99, 0.999, 1.0};

/// quantile_sorted at each of summary_levels (level 0 is the minimum, 1 the maximum).
struct quantile_summary {
  std::array<double, summary_levels.size()> values{};

  [[nodiscard]] double at(double level) const {
    for (std::size_t i = 0; i < summary_levels.size(); ++i) {
      if (summary_levels[i] == level) {
        return values[i];
      }
    }
    throw invalid_argument(qprob::detail::concat("quantile_summary: level ", level, " is not one of summary_levels"));
  }
  [[nodiscard]] double minimum() const noexcept { return values.front(); }
  [[nodiscard]] double median() const noexcept { return values[6]; }
  [[nodiscard]] double maximum() const noexcept { return values.back(); }
};

/// Sorts a copy of `x` and reads every summary level off it.
[[nodiscard]] inline quantile_summary summarize_quantiles(std::span<const double> x) {
  std::vector<double> sorted(x.begin(), x.end());
  std::sort(sorted.begin(), sorted.end());
  quantile_summary s;
  for (std::size_t i = 0; i < summary_levels.size(); ++i) {
    s.values[i] = quantile_sorted(sorted, summary_levels[i]);
  }
  return s;
}

/// Everything llama.cpp's KL-divergence run prints, for n scored positions. "ln PPL" of a model is its mean
/// negative log-likelihood per token, so PPL = exp(ln PPL); errors propagate to first order as llama.cpp does
/// (error of exp(x) = exp(x) * error of x).
struct token_divergence_summary {
  std::int64_t count = 0;            ///< scored positions
  estimate ln_ppl_base;              ///< mean NLL of the base model ± standard error
  estimate ln_ppl_compared;          ///< mean NLL of the compared model ± standard error
  estimate ppl_base;                 ///< exp(ln_ppl_base) ± exp(.) * error
  estimate ppl_compared;             ///< exp(ln_ppl_compared) ± exp(.) * error
  double cor_ln_ppl = std::numeric_limits<double>::quiet_NaN();  ///< Pearson correlation of the per-token NLLs
  estimate ln_ppl_ratio;             ///< ln(PPL_c / PPL_b) = ln_ppl_compared - ln_ppl_base ± se of the differences
  estimate ppl_ratio;                ///< PPL_c / PPL_b ± ratio * error of ln ratio
  estimate ppl_difference;           ///< PPL_c - PPL_b ± sqrt(e_c^2 + e_b^2 - 2 PPL_c PPL_b cov(ln PPLs))
  estimate kld;                      ///< mean KL(base || compared) ± standard error, nats
  quantile_summary kld_quantiles;
  estimate delta_p;                  ///< mean p_c(true) - p_b(true) ± standard error (a fraction, not percent)
  quantile_summary delta_p_quantiles;
  estimate rms_delta_p;              ///< sqrt(mean Δp^2) ± 0.5 / rms * se(Δp^2) (0 ± 0 when every Δp is 0)
  std::int64_t same_top_count = 0;   ///< positions whose top-1 tokens agree
  estimate same_top;                 ///< same_top_count / count ± sqrt(p (1 - p) / (count - 1))
};

/// Streams positions and summarizes them. Keeps, per position, KL, Δp and both NLLs (the quantiles need every
/// value, as in llama.cpp), never a log-probability row.
class token_divergence_accumulator {
public:
  /// Adds one compared position (compare_token's result).
  void add(const token_comparison& c) {
    kl_.push_back(c.kl);
    delta_p_.push_back(c.delta_p);
    nll_base_.push_back(-c.base_logprob);
    nll_compared_.push_back(-c.compared_logprob);
    same_top_ += c.same_top() ? 1 : 0;
  }
  /// compare_token(base, compared, target), added and returned.
  token_comparison add(std::span<const double> base, std::span<const double> compared, std::int64_t target) {
    const auto c = compare_token(base, compared, target);
    add(c);
    return c;
  }

  [[nodiscard]] std::int64_t count() const noexcept { return static_cast<std::int64_t>(kl_.size()); }
  [[nodiscard]] std::span<const double> kl_values() const noexcept { return kl_; }
  [[nodiscard]] std::span<const double> delta_p_values() const noexcept { return delta_p_; }
  [[nodiscard]] std::span<const double> base_nll_values() const noexcept { return nll_base_; }
  [[nodiscard]] std::span<const double> compared_nll_values() const noexcept { return nll_compared_; }

  [[nodiscard]] token_divergence_summary summary() const {
    token_divergence_summary s;
    s.count = count();
    if (s.count == 0) {
      return s;
    }
    const double n    = static_cast<double>(s.count);
    s.ln_ppl_base     = mean_and_error(nll_base_);
    s.ln_ppl_compared = mean_and_error(nll_compared_);
    s.ppl_base        = exp_estimate(s.ln_ppl_base);
    s.ppl_compared    = exp_estimate(s.ln_ppl_compared);

    // Covariance of the two means, sum (a - ma)(b - mb) / (n (n - 1)): llama.cpp's covariance().
    double sab = 0, saa = 0, sbb = 0;
    std::vector<double> diff(kl_.size());
    for (std::size_t i = 0; i < kl_.size(); ++i) {
      const double a = nll_compared_[i] - s.ln_ppl_compared.value;
      const double b = nll_base_[i] - s.ln_ppl_base.value;
      sab += a * b;
      saa += a * a;
      sbb += b * b;
      diff[i] = nll_compared_[i] - nll_base_[i];
    }
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const double cov_means = s.count >= 2 ? sab / (n * (n - 1.0)) : nan;
    s.cor_ln_ppl           = saa > 0 && sbb > 0 ? sab / std::sqrt(saa * sbb) : nan;
    // The difference of the means keeps exp(ln ratio) equal to PPL_c / PPL_b; its error is the standard error
    // of the per-token differences, which equals llama.cpp's sqrt(e_c^2 + e_b^2 - 2 cov) without the
    // cancellation of raw sums.
    s.ln_ppl_ratio.value = s.ln_ppl_compared.value - s.ln_ppl_base.value;
    s.ln_ppl_ratio.error = mean_and_error(diff).error;
    s.ppl_ratio          = exp_estimate(s.ln_ppl_ratio);
    s.ppl_difference.value = s.ppl_compared.value - s.ppl_base.value;
    const double var_diff  = s.ppl_compared.error * s.ppl_compared.error + s.ppl_base.error * s.ppl_base.error -
                            2.0 * s.ppl_compared.value * s.ppl_base.value * cov_means;
    s.ppl_difference.error = std::sqrt(std::max(0.0, var_diff));

    s.kld               = mean_and_error(kl_);
    s.kld_quantiles     = summarize_quantiles(kl_);
    s.delta_p           = mean_and_error(delta_p_);
    s.delta_p_quantiles = summarize_quantiles(delta_p_);
    std::vector<double> sq(delta_p_.size());
    std::transform(delta_p_.begin(), delta_p_.end(), sq.begin(), [](double d) { return d * d; });
    const auto mse       = mean_and_error(sq);
    s.rms_delta_p.value  = std::sqrt(mse.value);
    s.rms_delta_p.error  = s.rms_delta_p.value > 0 ? 0.5 / s.rms_delta_p.value * mse.error : 0.0;
    s.same_top_count     = same_top_;
    s.same_top.value     = static_cast<double>(same_top_) / n;
    s.same_top.error     = s.count >= 2 ? std::sqrt(s.same_top.value * (1.0 - s.same_top.value) / (n - 1.0)) : nan;
    return s;
  }

private:
  static estimate exp_estimate(const estimate& x) {
    const double v = std::exp(x.value);
    return {v, v * x.error};
  }

  std::vector<double> kl_, delta_p_, nll_base_, nll_compared_;
  std::int64_t same_top_ = 0;
};

namespace detail {

inline void append_format(std::string& out, const char* fmt, double a, double b = 0) {
  char buf[160];
  const int n = std::snprintf(buf, sizeof buf, fmt, a, b);
  out.append(buf, static_cast<std::size_t>(std::max(0, std::min(n, static_cast<int>(sizeof buf) - 1))));
}

}  // namespace detail

/// The summary in llama.cpp's layout (its three "======" blocks, same labels and number formats; Δp and the
/// same-top rate in percent). Returns the text; printing is the caller's business.
[[nodiscard]] inline std::string format_llama_cpp_summary(const token_divergence_summary& s) {
  std::string o;
  using detail::append_format;
  o += "====== Perplexity statistics ======\n";
  append_format(o, "Mean PPL(Q)                   : %10.6f ± %10.6f\n", s.ppl_compared.value, s.ppl_compared.error);
  append_format(o, "Mean PPL(base)                : %10.6f ± %10.6f\n", s.ppl_base.value, s.ppl_base.error);
  append_format(o, "Cor(ln(PPL(Q)), ln(PPL(base))): %6.2f%%\n", 100.0 * s.cor_ln_ppl);
  append_format(o, "Mean ln(PPL(Q)/PPL(base))     : %10.6f ± %10.6f\n", s.ln_ppl_ratio.value, s.ln_ppl_ratio.error);
  append_format(o, "Mean PPL(Q)/PPL(base)         : %10.6f ± %10.6f\n", s.ppl_ratio.value, s.ppl_ratio.error);
  append_format(o, "Mean PPL(Q)-PPL(base)         : %10.6f ± %10.6f\n", s.ppl_difference.value,
                s.ppl_difference.error);
  o += "\n====== KL divergence statistics ======\n";
  append_format(o, "Mean    KLD: %10.6f ± %10.6f\n", s.kld.value, s.kld.error);
  const auto& k = s.kld_quantiles;
  append_format(o, "Maximum KLD: %10.6f\n", k.maximum());
  append_format(o, "99.9%%   KLD: %10.6f\n", k.at(0.999));
  append_format(o, "99.0%%   KLD: %10.6f\n", k.at(0.99));
  append_format(o, "95.0%%   KLD: %10.6f\n", k.at(0.95));
  append_format(o, "90.0%%   KLD: %10.6f\n", k.at(0.90));
  append_format(o, "Median  KLD: %10.6f\n", k.median());
  append_format(o, "10.0%%   KLD: %10.6f\n", k.at(0.10));
  append_format(o, " 5.0%%   KLD: %10.6f\n", k.at(0.05));
  append_format(o, " 1.0%%   KLD: %10.6f\n", k.at(0.01));
  append_format(o, " 0.1%%   KLD: %10.6f\n", k.at(0.001));
  append_format(o, "Minimum KLD: %10.6f\n", k.minimum());
  o += "\n====== Token probability statistics ======\n";
  append_format(o, "Mean    Δp: %6.3f ± %5.3f %%\n", 100.0 * s.delta_p.value, 100.0 * s.delta_p.error);
  const auto& d = s.delta_p_quantiles;
  append_format(o, "Maximum Δp: %6.3f%%\n", 100.0 * d.maximum());
  constexpr std::array<std::pair<double, const char*>, 11> rows = {{
      {0.999, "99.9%%   Δp: %6.3f%%\n"},
      {0.99, "99.0%%   Δp: %6.3f%%\n"},
      {0.95, "95.0%%   Δp: %6.3f%%\n"},
      {0.90, "90.0%%   Δp: %6.3f%%\n"},
      {0.75, "75.0%%   Δp: %6.3f%%\n"},
      {0.5, "Median  Δp: %6.3f%%\n"},
      {0.25, "25.0%%   Δp: %6.3f%%\n"},
      {0.10, "10.0%%   Δp: %6.3f%%\n"},
      {0.05, " 5.0%%   Δp: %6.3f%%\n"},
      {0.01, " 1.0%%   Δp: %6.3f%%\n"},
      {0.001, " 0.1%%   Δp: %6.3f%%\n"},
  }};
  for (const auto& [level, fmt] : rows) {
    append_format(o, fmt, 100.0 * d.at(level));
  }
  append_format(o, "Minimum Δp: %6.3f%%\n", 100.0 * d.minimum());
  append_format(o, "RMS Δp    : %6.3f ± %5.3f %%\n", 100.0 * s.rms_delta_p.value, 100.0 * s.rms_delta_p.error);
  append_format(o, "Same top p: %6.3f ± %5.3f %%\n", 100.0 * s.same_top.value, 100.0 * s.same_top.error);
  return o;
}

}  // namespace qprob::metrics
