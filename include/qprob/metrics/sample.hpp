// SPDX-License-Identifier: Apache-2.0
#pragma once
// Per-sample building blocks shared verbatim by the host reference and the device kernels (metrics layer,
// host-safe): the softmax of one sample's choice scores and what the metrics need from it, and the bin index
// functions. Sharing them makes bin membership identical on host and device (same IEEE divisions and
// comparisons), so only the order of the final sums can differ between the two.

#include <qprob/core/config.hpp>
#include <qprob/metrics/types.hpp>

#include <cmath>
#include <cstdint>

namespace qprob::metrics {

/// Upper edge k / bins of equal-width bin k - 1: one correctly rounded division, the same value Python's
/// k / bins gives, which the parity suite passes to torch.bucketize.
[[nodiscard]] QPROB_HOST_DEVICE inline double uniform_edge(int k, int bins) noexcept {
  return static_cast<double>(k) / static_cast<double>(bins);
}

/// Number of bins a convention produces: torchmetrics adds an overflow bin for conf == 1.0.
[[nodiscard]] QPROB_HOST_DEVICE inline int bin_slots(int bins, bin_edges edges) noexcept {
  return edges == bin_edges::torchmetrics ? bins + 1 : bins;
}

/// Equal-width bin of a confidence in [0, 1]. upper_closed: the b with edge(b) < conf <= edge(b + 1), with
/// conf <= 0 in bin 0 and conf >= 1 in bin bins - 1. torchmetrics: the b with edge(b) <= conf < edge(b + 1),
/// conf >= 1 in overflow bin `bins`. The first guess from ceil/floor is corrected against the exact edges, so
/// the result never depends on how conf * bins rounds. `table`, when given, holds uniform_edge(k, bins) for
/// k = 0..bins (the device pass keeps it in shared memory instead of dividing per sample).
[[nodiscard]] QPROB_HOST_DEVICE inline int calibration_bin(double conf, int bins, bin_edges edges, const double* table = nullptr) noexcept {
  const auto edge = [&](int k) { return table != nullptr ? table[k] : uniform_edge(k, bins); };
  if (edges == bin_edges::upper_closed) {
    if (!(conf > 0.0)) {
      return 0;
    }
    if (conf >= 1.0) {
      return bins - 1;
    }
    int b = static_cast<int>(std::ceil(conf * bins)) - 1;
    b     = b < 0 ? 0 : (b > bins - 1 ? bins - 1 : b);
    while (b > 0 && conf <= edge(b)) {
      --b;
    }
    while (b < bins - 1 && conf > edge(b + 1)) {
      ++b;
    }
    return b;
  }
  if (conf >= 1.0) {
    return bins;
  }
  if (!(conf > 0.0)) {
    return 0;
  }
  int b = static_cast<int>(std::floor(conf * bins));
  b     = b < 0 ? 0 : (b > bins - 1 ? bins - 1 : b);
  while (b > 0 && conf < edge(b)) {
    --b;
  }
  while (b < bins - 1 && conf >= edge(b + 1)) {
    ++b;
  }
  return b;
}

/// Lower edge of confidence-shift bin k: the ranges cover [lo, 1] with lo = 1 / K_max (no prediction can be
/// less confident), equal width (1 - lo) / bins.
[[nodiscard]] QPROB_HOST_DEVICE inline double shift_edge(int k, int bins, double lo) noexcept {
  return k == bins ? 1.0 : lo + (1.0 - lo) * static_cast<double>(k) / static_cast<double>(bins);
}

/// Confidence-shift bin: (lower, upper] like the calibration bins, conf <= lo in bin 0, conf >= 1 in the last.
[[nodiscard]] QPROB_HOST_DEVICE inline int shift_bin_index(double conf, int bins, double lo) noexcept {
  int b = 0;
  while (b < bins - 1 && conf > shift_edge(b + 1, bins, lo)) {
    ++b;
  }
  return b;
}

/// Score of one choice under a scoring mode (lengths were validated > 0 where used).
[[nodiscard]] QPROB_HOST_DEVICE inline double choice_score(double ll,
                                                           const std::int32_t* char_len,
                                                           const std::int32_t* token_len,
                                                           std::int64_t j,
                                                           scoring mode) noexcept {
  switch (mode) {
    case scoring::char_normalized: return ll / static_cast<double>(char_len[j]);
    case scoring::token_normalized: return ll / static_cast<double>(token_len[j]);
    default: return ll;
  }
}

/// Whether one choice is usable: a finite log-likelihood ((ll - ll) != 0 for inf and NaN) and positive lengths
/// (pass 1 for a length that is not given). The conditions of the reference's validate_scores, per choice.
[[nodiscard]] QPROB_HOST_DEVICE inline bool choice_valid(double ll, std::int32_t chars, std::int32_t tokens) noexcept {
  return (ll - ll) == 0.0 && chars > 0 && tokens > 0;
}

/// What the per-model metrics need from one sample.
struct sample_eval {
  double conf       = 0;  ///< max probability
  double p_true     = 0;  ///< probability of the gold choice
  double entropy    = 0;  ///< -sum p ln p, nats, with 0 ln 0 = 0
  double brier      = 0;  ///< sum_j (p_j - 1[j = gold])^2
  double nll        = 0;  ///< logsumexp(s) - s_gold, which stays finite when p_gold underflows to 0
  int pred          = 0;  ///< first index of the maximal score (numpy/torch argmax tie rule)
  bool correct      = false;
  bool correct_sum  = false;  ///< lm-eval acc: argmax of summed log-likelihoods
  bool correct_norm = false;  ///< lm-eval acc_norm: argmax of per-character log-likelihoods (false w/o char_len)
};

/// Choices whose exp(s_j - max) evaluate_sample keeps from its sum for the probabilities (more are recomputed,
/// with the same expression and so the same value).
inline constexpr int kept_exponentials = 8;

/// The first look at a sample's choices, in order: the argmax of the score under the mode (pred), of the summed
/// log-likelihood (lm-eval acc) and of the per-character log-likelihood (acc_norm). Strict > keeps the first
/// index of a tie (numpy/torch argmax).
struct sample_scan {
  double max_score = -INFINITY;
  double max_ll    = -INFINITY;
  double max_norm  = -INFINITY;
  int pred         = 0;
  int pred_sum     = 0;
  int pred_norm    = 0;

  /// Choice c (visited in increasing order) with score s, log-likelihood ll and, when has_norm, ll / chars.
  QPROB_HOST_DEVICE void add(int c, double s, double ll, bool has_norm, double per_char) noexcept {
    if (s > max_score) {
      max_score = s;
      pred      = c;
    }
    if (ll > max_ll) {
      max_ll   = ll;
      pred_sum = c;
    }
    if (has_norm && per_char > max_norm) {
      max_norm  = per_char;
      pred_norm = c;
    }
  }
};

namespace detail {

/// Softmax of k scores score_of(0..k-1) after their scan, and everything derived from it. Unroll > 0: k <=
/// Unroll and the loops are unrolled with a guard, so score_of may index a register array; 0: any k.
template <int Unroll, class ScoreOf>
[[nodiscard]] QPROB_HOST_DEVICE inline sample_eval finish_sample(const sample_scan& scan, int k, int gold, bool has_norm,
                                                                 ScoreOf score_of) noexcept {
  constexpr int kept_count = Unroll > 0 ? Unroll : kept_exponentials;
  const int bound          = Unroll > 0 ? Unroll : k;
  const double max_score   = scan.max_score;
  double kept[kept_count];
  double sum = 0;
  QPROB_UNROLL
  for (int c = 0; c < bound; ++c) {
    if (c < k) {
      const double e = std::exp(score_of(c) - max_score);
      if (c < kept_count) {
        kept[c] = e;
      }
      sum += e;
    }
  }
  sample_eval r;
  r.pred                = scan.pred;
  const double log_sum  = std::log(sum);
  QPROB_UNROLL
  for (int c = 0; c < bound; ++c) {
    if (c < k) {
      const double d = score_of(c) - max_score;
      const double e = c < kept_count ? kept[c] : std::exp(d);
      const double p = e / sum;
      if (p > 0) {
        r.entropy -= p * (d - log_sum);
      }
      const double target = c == gold ? 1.0 : 0.0;
      r.brier += (p - target) * (p - target);
      if (c == gold) {
        r.p_true = p;
        r.nll    = log_sum - d;
      }
    }
  }
  r.conf         = 1.0 / sum;
  r.correct      = r.pred == gold;
  r.correct_sum  = scan.pred_sum == gold;
  r.correct_norm = has_norm && scan.pred_norm == gold;
  return r;
}

}  // namespace detail

/// Softmax of sample [begin, end) under `mode` and everything derived from it. Probabilities are
/// exp(s_j - max) / sum (softmax_of's max and sum, same expressions, same summation order, so the same bits as
/// choice_probabilities): the max choice gets exactly 1 / sum.
/// ln p_j is taken as (s_j - max) - ln(sum), the logarithm of the unrounded ratio, for the entropy (one log per
/// sample instead of one per choice; it differs from ln of the rounded p_j by about one ulp of ln p_j).
[[nodiscard]] QPROB_HOST_DEVICE inline sample_eval evaluate_sample(const double* loglik,
                                                                   const std::int32_t* char_len,
                                                                   const std::int32_t* token_len,
                                                                   std::int64_t begin,
                                                                   std::int64_t end,
                                                                   int gold,
                                                                   scoring mode) noexcept {
  const int k         = static_cast<int>(end - begin);
  const bool has_norm = char_len != nullptr;
  sample_scan scan;
  for (int c = 0; c < k; ++c) {
    const std::int64_t j = begin + c;
    scan.add(c, choice_score(loglik[j], char_len, token_len, j, mode), loglik[j], has_norm,
             has_norm ? loglik[j] / static_cast<double>(char_len[j]) : 0.0);
  }
  return detail::finish_sample<0>(scan, k, gold, has_norm, [&](int c) {
    return choice_score(loglik[begin + c], char_len, token_len, begin + c, mode);
  });
}

/// evaluate_sample for a sample of k <= MaxK choices (the same arithmetic in the same order, so the same bits)
/// that reads each choice once and keeps its score in registers; it also validates what it reads as the
/// fused pass must (finite log-likelihoods, positive lengths where given) and returns false otherwise.
template <int MaxK>
[[nodiscard]] QPROB_HOST_DEVICE inline bool evaluate_small_sample(const double* loglik,
                                                                  const std::int32_t* char_len,
                                                                  const std::int32_t* token_len,
                                                                  std::int64_t begin,
                                                                  int k,
                                                                  int gold,
                                                                  scoring mode,
                                                                  sample_eval& out) noexcept {
  const bool has_norm = char_len != nullptr;
  double score[MaxK];
  sample_scan scan;
  bool ok = true;
  QPROB_UNROLL
  for (int c = 0; c < MaxK; ++c) {
    if (c < k) {
      const std::int64_t j = begin + c;
      const double ll      = loglik[j];
      const int chars      = has_norm ? char_len[j] : 1;
      const int tokens     = token_len != nullptr ? token_len[j] : 1;
      ok                   = ok && choice_valid(ll, chars, tokens);
      const double per_char = has_norm ? ll / static_cast<double>(chars) : 0.0;
      score[c]              = mode == scoring::char_normalized    ? ll / static_cast<double>(chars)
                              : mode == scoring::token_normalized ? ll / static_cast<double>(tokens)
                                                                  : ll;
      scan.add(c, score[c], ll, has_norm, per_char);
    }
  }
  if (ok) {
    out = detail::finish_sample<MaxK>(scan, k, gold, has_norm, [&](int c) { return score[c]; });
  }
  return ok;
}

/// Max score and sum of exp(s_j - max) of one sample: p_j = exp(s_j - max) / sum.
struct softmax_stats {
  double max_score = -INFINITY;
  double sum       = 0;
};

[[nodiscard]] QPROB_HOST_DEVICE inline softmax_stats softmax_of(const double* loglik,
                                                                const std::int32_t* char_len,
                                                                const std::int32_t* token_len,
                                                                std::int64_t begin,
                                                                std::int64_t end,
                                                                scoring mode) noexcept {
  softmax_stats st;
  for (std::int64_t j = begin; j < end; ++j) {
    const double s = choice_score(loglik[j], char_len, token_len, j, mode);
    st.max_score   = s > st.max_score ? s : st.max_score;
  }
  for (std::int64_t j = begin; j < end; ++j) {
    st.sum += std::exp(choice_score(loglik[j], char_len, token_len, j, mode) - st.max_score);
  }
  return st;
}

/// Divergences between the full (p) and quantized (q) choice distributions of one sample, nats.
struct pair_eval {
  double js    = 0;  ///< 1/2 KL(p || m) + 1/2 KL(q || m), m = (p + q) / 2; in [0, ln 2]
  double kl_pq = 0;  ///< KL(p || q)
  double kl_qp = 0;  ///< KL(q || p)
};

/// Both distributions share [begin, end) (same samples, same choices). Terms with a zero probability
/// contribute 0 (0 ln 0 = 0); logs are taken of the probabilities themselves, as scipy's rel_entr does.
[[nodiscard]] QPROB_HOST_DEVICE inline pair_eval evaluate_pair(const double* ll_full,
                                                               const double* ll_quant,
                                                               const std::int32_t* char_len,
                                                               const std::int32_t* token_len,
                                                               std::int64_t begin,
                                                               std::int64_t end,
                                                               scoring mode) noexcept {
  const softmax_stats sp = softmax_of(ll_full, char_len, token_len, begin, end, mode);
  const softmax_stats sq = softmax_of(ll_quant, char_len, token_len, begin, end, mode);
  pair_eval r;
  for (std::int64_t j = begin; j < end; ++j) {
    const double p = std::exp(choice_score(ll_full[j], char_len, token_len, j, mode) - sp.max_score) / sp.sum;
    const double q = std::exp(choice_score(ll_quant[j], char_len, token_len, j, mode) - sq.max_score) / sq.sum;
    const double m = 0.5 * (p + q);
    if (p > 0) {
      r.js += 0.5 * p * std::log(p / m);
      r.kl_pq += p * std::log(p / q);  // +inf when q underflowed to 0: KL is infinite there
    }
    if (q > 0) {
      r.js += 0.5 * q * std::log(q / m);
      r.kl_qp += q * std::log(q / p);
    }
  }
  // Rounding can leave a JS of identical distributions a few ulps below 0.
  r.js = r.js < 0 ? 0.0 : r.js;
  return r;
}

}  // namespace qprob::metrics
