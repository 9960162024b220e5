// SPDX-License-Identifier: Apache-2.0
#pragma once
// Inputs, options and results of qprob's confidence and calibration metrics (metrics layer, host-safe).
// Inputs are ragged: sample i owns choices [offsets[i], offsets[i+1]) of the flat per-choice arrays. The
// formulas and conventions are in docs/metrics.md; reference.hpp is the executable specification and
// metrics.cuh the device implementation of the same results.

#include <qprob/core/config.hpp>
#include <qprob/core/error.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

namespace qprob::metrics {

/// Which per-choice score is soft-maxed into choice probabilities (lm-eval's scoring modes).
enum class scoring {
  sum,               ///< summed continuation log-likelihood: lm-eval "acc", the seed paper's probabilities
  char_normalized,   ///< log-likelihood / choice length in characters: lm-eval "acc_norm"
  token_normalized,  ///< log-likelihood / choice length in tokens
};

/// Bin-edge convention of the equal-width calibration bins (ECE, MCE, RMSCE, reliability diagram).
enum class bin_edges {
  /// (lower, upper] with edges k/B; conf 0 joins bin 0, conf 1.0 the last bin. The qprob default, and what
  /// torch.bucketize(conf, edges, right=False) - 1 (clamped at 0) gives.
  upper_closed,
  /// [lower, upper) with edges k/B plus an overflow bin B that holds exactly conf == 1.0: what torchmetrics
  /// >= 1.0 computes (_binning_bucketize uses torch.bucketize(..., right=True) - 1 over B+1 slots).
  torchmetrics,
};

/// The ACE variants; the names collide in the literature, so each is spelled out (docs/metrics.md).
enum class ace_variant {
  nixon,                 ///< Nixon et al. 2019 adaptive CE: per class k, equal-mass ranges of p_k vs 1[gold=k]
  equal_mass_top_label,  ///< "Price of Efficiency": equal-mass ranges of top-label conf, unweighted mean
  uniform_average,       ///< netcal "Average CE" (equal_intervals=True): unweighted mean over equal-width bins
  seed_compat,           ///< the seed notebook's ace(15 ranges) for K > 2 and ece(100 bins) for K == 2, bugs included
};

/// How the Wilcoxon signed-rank p-value is computed.
enum class wilcoxon_method {
  automatic,   ///< exact if n_nonzero <= 50 and no ties, else asymptotic (scipy 'auto' minus its permutation branch)
  exact,       ///< exact null distribution (valid without ties; with ties it uses the tied statistic as is)
  asymptotic,  ///< normal approximation with tie correction, no continuity correction (scipy default)
};

/// How McNemar's p-value is computed.
enum class mcnemar_method {
  exact_binomial,           ///< 2 * BinomCDF(min(b, c); b + c, 1/2), capped at 1 (statsmodels exact=True)
  chi_squared_continuity,   ///< chi2.sf((|b - c| - 1)^2 / (b + c), 1) (statsmodels exact=False, correction=True)
};

/// Host view of one model's scores on one task. char_len is needed by acc_norm and char_normalized scoring,
/// token_len by token_normalized scoring; either may be empty otherwise.
struct choice_scores_view {
  std::span<const std::int64_t> offsets;   ///< N + 1 non-decreasing offsets, offsets[0] == 0
  std::span<const double> loglik;          ///< offsets[N] summed log-likelihoods, one per choice
  std::span<const std::int32_t> char_len;  ///< offsets[N] choice lengths in characters (> 0), or empty
  std::span<const std::int32_t> token_len; ///< offsets[N] choice lengths in tokens (> 0), or empty
  std::span<const std::int32_t> gold;      ///< N gold choice indices in [0, K_i)

  [[nodiscard]] std::int64_t samples() const noexcept {
    return offsets.empty() ? 0 : static_cast<std::int64_t>(offsets.size()) - 1;
  }
};

/// Owning host storage for choice_scores_view (tests, the parity driver, io).
struct choice_scores {
  std::vector<std::int64_t> offsets{0};
  std::vector<double> loglik;
  std::vector<std::int32_t> char_len;
  std::vector<std::int32_t> token_len;
  std::vector<std::int32_t> gold;

  /// Appends one sample; lens may be empty when the corresponding scoring is not used.
  void add(std::span<const double> ll,
           std::int32_t gold_index,
           std::span<const std::int32_t> chars = {},
           std::span<const std::int32_t> tokens = {}) {
    loglik.insert(loglik.end(), ll.begin(), ll.end());
    char_len.insert(char_len.end(), chars.begin(), chars.end());
    token_len.insert(token_len.end(), tokens.begin(), tokens.end());
    offsets.push_back(static_cast<std::int64_t>(loglik.size()));
    gold.push_back(gold_index);
  }
  [[nodiscard]] choice_scores_view view() const noexcept { return {offsets, loglik, char_len, token_len, gold}; }
};

/// Options shared by the host reference and the device implementation. Defaults are the correct definitions.
struct metric_options {
  scoring score          = scoring::sum;
  int calibration_bins   = 15;       ///< equal-width bins of ECE / MCE / RMSCE / reliability (torchmetrics default)
  bin_edges edges        = bin_edges::upper_closed;
  ace_variant ace        = ace_variant::nixon;
  int ace_ranges         = 15;       ///< ranges R of nixon / equal_mass_top_label / uniform_average
  int seed_ace_ranges    = 15;       ///< the notebook's ace(num_ranges=15), used when K > 2
  int seed_ece_bins      = 100;      ///< the notebook's ece(n_bins=100), used when K == 2
  double confidence_level = 0.95;    ///< Wilson and bootstrap intervals
  int bootstrap_iterations = 1000;   ///< 0 disables the bootstrap interval (then NaN)
  std::uint64_t bootstrap_seed = 0x5eed;
  double alpha           = 0.05;     ///< significance level of the paired tests (paper text 0.05, code 0.01)
  int shift_bins         = 10;       ///< confidence-shift bins over [1/K, 1] of the full model's confidence
  wilcoxon_method wilcoxon = wilcoxon_method::automatic;
  mcnemar_method mcnemar = mcnemar_method::exact_binomial;

  void validate() const {
    QPROB_CHECK(calibration_bins >= 1, "calibration_bins=", calibration_bins, " must be >= 1");
    QPROB_CHECK(ace_ranges >= 1, "ace_ranges=", ace_ranges, " must be >= 1");
    QPROB_CHECK(seed_ace_ranges >= 1, "seed_ace_ranges=", seed_ace_ranges, " must be >= 1");
    QPROB_CHECK(seed_ece_bins >= 1, "seed_ece_bins=", seed_ece_bins, " must be >= 1");
    QPROB_CHECK(confidence_level > 0 && confidence_level < 1, "confidence_level=", confidence_level, " must be in (0, 1)");
    QPROB_CHECK(bootstrap_iterations >= 0, "bootstrap_iterations=", bootstrap_iterations, " must be >= 0");
    QPROB_CHECK(alpha > 0 && alpha < 1, "alpha=", alpha, " must be in (0, 1)");
    QPROB_CHECK(shift_bins >= 1, "shift_bins=", shift_bins, " must be >= 1");
  }
};

struct interval {
  double lower = std::numeric_limits<double>::quiet_NaN();
  double upper = std::numeric_limits<double>::quiet_NaN();
};

/// One bin of a reliability diagram; empty bins report count 0 and NaN means.
struct reliability_bin {
  double lower = 0;  ///< bin edges as used for assignment (see bin_edges)
  double upper = 0;
  std::int64_t count = 0;
  double mean_conf = std::numeric_limits<double>::quiet_NaN();
  double accuracy  = std::numeric_limits<double>::quiet_NaN();
};

/// Per-model, per-task metrics. Probabilities come from options.score; acc and acc_norm are always the
/// lm-eval definitions (argmax of summed / character-normalised log-likelihood). NaN marks an undefined
/// value (Conf_err with no wrong prediction, acc_norm without char_len, ...).
struct model_metrics {
  static constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  std::int64_t n = 0;
  std::int64_t n_correct = 0;       ///< correct under options.score (the calibration metrics' correctness)
  double acc = nan;                 ///< lm-eval acc (summed log-likelihood argmax)
  double acc_stderr = nan;          ///< sqrt(acc (1 - acc) / (n - 1)): lm-eval's sample std / sqrt(n)
  interval acc_wilson;
  interval acc_bootstrap;
  double acc_norm = nan;            ///< lm-eval acc_norm (per-character normalised argmax)
  double acc_norm_stderr = nan;
  interval acc_norm_wilson;
  double accuracy = nan;            ///< accuracy under options.score (== acc for scoring::sum)
  double conf = nan;                ///< mean max-probability
  double conf_correct = nan;        ///< mean max-probability over correct predictions (notebook c_pos)
  double conf_err = nan;            ///< mean max-probability over wrong predictions (notebook c_neg)
  double conf_true = nan;           ///< mean probability of the gold choice
  double entropy = nan;             ///< mean predictive entropy, nats
  double entropy_bits = nan;        ///< the same in bits (the paper's tables show bits x 100)
  double brier = nan;               ///< mean over samples of sum_j (p_j - 1[j = gold])^2 (lm-eval brier_score)
  double nll = nan;                 ///< mean -ln p_gold
  double ece = nan;                 ///< sum_b (n_b / n) |acc_b - conf_b|
  double mce = nan;                 ///< max over non-empty bins |acc_b - conf_b|
  double rmsce = nan;               ///< sqrt(sum_b (n_b / n) (acc_b - conf_b)^2)
  double ace = nan;                 ///< per options.ace
  std::vector<reliability_bin> reliability;
};

/// Mean and standard error of one quantity within one confidence bin.
struct shift_bin {
  double lower = 0;
  double upper = 0;
  std::int64_t count = 0;
  double mean_conf_shift = std::numeric_limits<double>::quiet_NaN();      ///< mean(conf_q - conf_f)
  double stderr_conf_shift = std::numeric_limits<double>::quiet_NaN();    ///< std(ddof=1) / sqrt(count)
  double mean_true_shift = std::numeric_limits<double>::quiet_NaN();      ///< mean(p_true_q - p_true_f)
  double stderr_true_shift = std::numeric_limits<double>::quiet_NaN();
};

struct t_test_result {
  double t = std::numeric_limits<double>::quiet_NaN();
  double dof = std::numeric_limits<double>::quiet_NaN();
  double p = std::numeric_limits<double>::quiet_NaN();
  bool significant = false;
};

struct wilcoxon_result {
  double statistic = std::numeric_limits<double>::quiet_NaN();  ///< min(R+, R-) (scipy's two-sided statistic)
  double z = std::numeric_limits<double>::quiet_NaN();          ///< NaN for the exact method
  double p = std::numeric_limits<double>::quiet_NaN();
  std::int64_t n_nonzero = 0;
  bool exact = false;
  bool significant = false;
};

struct mcnemar_result {
  std::int64_t b = 0;  ///< full correct, quantized wrong
  std::int64_t c = 0;  ///< full wrong, quantized correct
  double statistic = std::numeric_limits<double>::quiet_NaN();  ///< min(b, c) (exact) or the chi-squared value
  double p = std::numeric_limits<double>::quiet_NaN();
  bool significant = false;
};

/// Paired metrics of a full and a quantized model on the same samples (same offsets and gold).
struct paired_metrics {
  static constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  std::int64_t n = 0;
  double jsd_mean = nan;            ///< mean over samples of JS divergence (nats) between the choice distributions
  double jsd_median = nan;
  double js_distance_mean = nan;    ///< mean of sqrt(JS divergence): scipy.spatial.distance.jensenshannon
  double js_distance_median = nan;
  double true_class_jsd = nan;      ///< paper Appendix B: JS divergence of the normalised p_true vectors (nats)
  double true_class_js_distance = nan;  ///< its square root: scipy jensenshannon(p_true_full, p_true_quant)
  double kl_full_quant = nan;       ///< mean KL(full || quantized), nats
  double kl_quant_full = nan;       ///< mean KL(quantized || full), nats
  double flip_rate = nan;           ///< fraction of samples whose argmax changed
  std::int64_t both_correct = 0, full_only = 0, quant_only = 0, both_wrong = 0;  ///< 2x2 correctness table
  double mean_conf_true_shift = nan;  ///< mean(p_true_q - p_true_f)
  t_test_result ttest_conf_true;    ///< scipy.stats.ttest_rel(p_true_full, p_true_quant)
  wilcoxon_result wilcoxon_conf_true;  ///< scipy.stats.wilcoxon(p_true_full, p_true_quant)
  mcnemar_result mcnemar;
  std::vector<shift_bin> conf_shift_by_bin;
};

}  // namespace qprob::metrics
