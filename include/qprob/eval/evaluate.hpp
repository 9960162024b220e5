// SPDX-License-Identifier: Apache-2.0
#pragma once
// Runs one task through a scorer the way lm-evaluation-harness runs a zero-shot multiple_choice task:
// documents in file order (the first `limit`), one loglikelihood request per choice (context,
// target_delimiter + choice), tokenized by lm-eval's rules (model/requests.hpp), scored in batches of
// `batch_size` requests. Results come back in document then choice order whatever the batch size, so the
// outputs are deterministic. Price-of-Efficiency documents (next_token_vocab) are scored through
// scorer::next_token: greedy next token over the whole vocabulary, correct when the gold answer string is
// contained in it (case-insensitive, stripped), as in the authors' src/0_softmax.py.
//
// From the results, to_choice_scores() builds the metrics module's ragged input (acc / acc_norm / calibration
// are its business), mc2_score() is lm-eval's TruthfulQA MC2, and summarize() computes the task's numbers.
// Layer: eval (host only).

#include <qprob/core/error.hpp>
#include <qprob/eval/scorer.hpp>
#include <qprob/metrics/reference.hpp>
#include <qprob/metrics/types.hpp>
#include <qprob/model/requests.hpp>
#include <qprob/tasks/types.hpp>
#include <qprob/tokenizer/tokenizer.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace qprob::eval {

struct eval_options {
  /// Requests per scorer::score call (and contexts per next_token call). Results do not depend on it.
  std::size_t batch_size = 1;
  /// Evaluate only the first `limit` documents (lm-eval --limit N); nullopt: all loaded documents.
  std::optional<std::size_t> limit;
  /// lm-eval's add_bos_token / prefix_token_id (model/requests.hpp).
  model::encode_options encode;
  /// lm-eval's max_length: a continuation longer than it is refused with the document named (lm-eval's HFLM
  /// asserts the same). evaluate() takes the scorer's when unset; nullopt in encode_task_requests: no check.
  std::optional<std::int64_t> max_length;
  /// Called after every batch with (requests done, requests in all); also once with (0, total) at the start.
  std::function<void(std::size_t done, std::size_t total)> progress;
};

/// One choice of a loglikelihood document.
struct choice_result {
  double loglik           = 0.0;
  bool is_greedy          = false;
  std::int32_t num_tokens = 0;  ///< continuation tokens (target_delimiter + choice, after lm-eval's split)
  std::int32_t char_len   = 0;  ///< len(choice) in Python: Unicode code points of doc_to_choice, no delimiter

  friend bool operator==(const choice_result&, const choice_result&) = default;
};

/// What the scorer said about one document.
struct doc_result {
  std::size_t doc_id = 0;
  tasks::request_kind kind = tasks::request_kind::loglikelihood;
  std::vector<choice_result> choices;  ///< loglikelihood: one per choice, in choice order
  // next_token_vocab only:
  next_token_result next;
  std::string next_text;  ///< decode([next.token])
  bool next_correct = false;

  friend bool operator==(const doc_result&, const doc_result&) = default;
};

struct eval_result {
  std::string task;
  std::string scorer;
  std::size_t requests = 0;
  std::vector<doc_result> docs;  ///< docs[i] answers task_data::docs[i]

  friend bool operator==(const eval_result&, const eval_result&) = default;
};

namespace eval_detail {

/// Python's len() of a UTF-8 string: code points (bytes that are not continuation bytes).
inline std::int32_t code_points(std::string_view s) {
  std::int32_t n = 0;
  for (const char c : s) {
    n += (static_cast<unsigned char>(c) & 0xC0) != 0x80 ? 1 : 0;
  }
  return n;
}

/// str.strip().lower() for the PoE answer match (ASCII case folding and whitespace; the answers are ASCII).
inline std::string strip_lower(std::string_view s) {
  const auto ws = [](char c) { return c == ' ' || (c >= '\t' && c <= '\r'); };
  while (!s.empty() && ws(s.front())) {
    s.remove_prefix(1);
  }
  while (!s.empty() && ws(s.back())) {
    s.remove_suffix(1);
  }
  std::string out(s);
  for (auto& c : out) {
    if (c >= 'A' && c <= 'Z') {
      c = static_cast<char>(c - 'A' + 'a');
    }
  }
  return out;
}

}  // namespace eval_detail

/// Number of documents evaluate() will process.
[[nodiscard]] inline std::size_t documents_to_evaluate(const tasks::task_data& task, const eval_options& opt) {
  return opt.limit ? std::min(*opt.limit, task.docs.size()) : task.docs.size();
}

/// Whether `text` (a decoded token) matches `answer` the Price-of-Efficiency way:
/// answer.strip().lower() in text.strip().lower().
[[nodiscard]] inline bool next_token_matches(std::string_view text, std::string_view answer) {
  return eval_detail::strip_lower(text).find(eval_detail::strip_lower(answer)) != std::string::npos;
}

/// Every request of the first documents of `task` as token ids, in the order evaluate() scores them:
/// loglikelihood requests in document then choice order, next-token contexts in document order.
struct task_requests {
  struct slot {
    std::size_t doc, choice;
  };
  std::vector<encoded_request> loglikelihood;  ///< lm-eval's encoding (model/requests.hpp)
  std::vector<slot> slots;                     ///< document and choice of each loglikelihood request
  std::vector<std::vector<token_id>> contexts; ///< next_token_vocab prompts, tok.encode(prompt, true)
  std::vector<std::size_t> context_docs;       ///< document of each context
};

/// Builds task_requests for documents_to_evaluate(task, opt) documents.
/// @throws invalid_argument naming the task, document and choice of a request lm-eval would reject (also a
///         continuation longer than opt.max_length).
[[nodiscard]] inline task_requests encode_task_requests(const tasks::task_data& task, const tokenizer& tok,
                                                        const eval_options& opt = {}) {
  task_requests out;
  const std::size_t n = documents_to_evaluate(task, opt);
  for (std::size_t i = 0; i < n; ++i) {
    const auto& d = task.docs[i];
    if (d.kind == tasks::request_kind::next_token_vocab) {
      out.contexts.push_back(tok.encode(d.context, true));  // HF tokenizer(prompt): special tokens added
      out.context_docs.push_back(i);
      continue;
    }
    for (const auto& q : d.requests()) {
      try {
        out.loglikelihood.push_back(model::encode_request(tok, q.context, q.continuation, opt.encode));
        const auto cont_tokens = static_cast<std::int64_t>(out.loglikelihood.back().continuation.size());
        if (opt.max_length && cont_tokens > *opt.max_length) {
          throw invalid_argument("the continuation has " + std::to_string(cont_tokens) + " tokens, more than max_length=" +
                                 std::to_string(*opt.max_length) +
                                 " (lm-eval refuses it too); raise --max-length (lm-eval: --model_args max_length=N)");
        }
      } catch (const invalid_argument& e) {
        throw invalid_argument(task.task + " doc " + std::to_string(d.doc_id) + " (" + d.source + ") choice " +
                               std::to_string(q.choice) + ": " + e.what());
      }
      out.slots.push_back({i, q.choice});
    }
  }
  return out;
}

/// Scores the first documents of `task` (see the header comment).
/// @throws invalid_argument for batch_size 0, a request lm-eval would reject (model/requests.hpp), or a
///         next_token_vocab task on a scorer without next_token support; whatever the scorer throws.
[[nodiscard]] inline eval_result evaluate(const tasks::task_data& task, const tokenizer& tok, scorer& engine,
                                          const eval_options& opt = {}) {
  QPROB_CHECK(opt.batch_size > 0, "evaluate: batch_size must be > 0");
  const std::size_t n = documents_to_evaluate(task, opt);
  eval_result out;
  out.task   = task.task;
  out.scorer = engine.name();
  out.docs.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    const auto& d = task.docs[i];
    auto& r       = out.docs[i];
    r.doc_id      = d.doc_id;
    r.kind        = d.kind;
    if (d.kind == tasks::request_kind::next_token_vocab) {
      if (!engine.supports_next_token()) {
        (void)engine.next_token({});  // throws the scorer's "not supported" message
        throw invalid_argument("scorer \"" + engine.name() + "\" does not support next_token_vocab requests");
      }
      continue;
    }
    r.choices.resize(d.choices.size());
    for (std::size_t c = 0; c < d.choices.size(); ++c) {
      r.choices[c].char_len = eval_detail::code_points(d.choices[c]);
    }
  }
  eval_options checked = opt;
  if (!checked.max_length) {
    checked.max_length = engine.max_length();
  }
  const auto flat        = encode_task_requests(task, tok, checked);
  const auto& ll_requests = flat.loglikelihood;
  const auto& ll_slots    = flat.slots;
  const auto& nt_contexts = flat.contexts;
  const auto& nt_docs     = flat.context_docs;

  const std::size_t total = ll_requests.size() + nt_contexts.size();
  out.requests            = total;
  std::size_t done        = 0;
  if (opt.progress) {
    opt.progress(0, total);
  }
  for (std::size_t b = 0; b < ll_requests.size(); b += opt.batch_size) {
    const std::size_t e = std::min(ll_requests.size(), b + opt.batch_size);
    const auto res      = engine.score(std::span<const encoded_request>(ll_requests).subspan(b, e - b));
    QPROB_CHECK_EQ(res.size(), e - b, "scorer \"", engine.name(), "\" answered a batch with the wrong count");
    for (std::size_t k = 0; k < res.size(); ++k) {
      const auto& s = ll_slots[b + k];
      auto& c       = out.docs[s.doc].choices[s.choice];
      c.loglik      = res[k].loglik;
      c.is_greedy   = res[k].is_greedy;
      c.num_tokens  = res[k].num_tokens;
    }
    done += e - b;
    if (opt.progress) {
      opt.progress(done, total);
    }
  }
  for (std::size_t b = 0; b < nt_contexts.size(); b += opt.batch_size) {
    const std::size_t e = std::min(nt_contexts.size(), b + opt.batch_size);
    const auto res      = engine.next_token(std::span<const std::vector<token_id>>(nt_contexts).subspan(b, e - b));
    QPROB_CHECK_EQ(res.size(), e - b, "scorer \"", engine.name(), "\" answered a batch with the wrong count");
    for (std::size_t k = 0; k < res.size(); ++k) {
      const auto i   = nt_docs[b + k];
      const auto& d  = task.docs[i];
      auto& r        = out.docs[i];
      r.next         = res[k];
      const std::vector<token_id> one{res[k].token};
      r.next_text    = tok.decode(one, false);
      r.next_correct = d.gold < d.choices.size() && next_token_matches(r.next_text, d.choices[d.gold]);
    }
    done += e - b;
    if (opt.progress) {
      opt.progress(done, total);
    }
  }
  return out;
}

/// The metrics module's input for the loglikelihood documents of a result (next_token_vocab documents are
/// skipped): per choice loglik, char_len (omitted for the whole task if some choice is the empty string,
/// where lm-eval's acc_norm divides by zero) and token count; gold = document::gold.
[[nodiscard]] inline metrics::choice_scores to_choice_scores(const tasks::task_data& task, const eval_result& result) {
  metrics::choice_scores s;
  bool all_chars = true;
  for (std::size_t i = 0; i < result.docs.size(); ++i) {
    const auto& r = result.docs[i];
    if (r.kind != tasks::request_kind::loglikelihood) {
      continue;
    }
    std::vector<double> ll;
    std::vector<std::int32_t> chars, toks;
    for (const auto& c : r.choices) {
      ll.push_back(c.loglik);
      chars.push_back(c.char_len);
      toks.push_back(c.num_tokens);
      all_chars = all_chars && c.char_len > 0;
    }
    s.add(ll, static_cast<std::int32_t>(task.docs[i].gold), chars, toks);
  }
  if (!all_chars) {
    s.char_len.clear();
  }
  return s;
}

/// lm-eval's TruthfulQA MC2 (truthfulqa/utils.py process_results_mc2): split the choices at the first label 0
/// (everything before it is true), p = exp(ll) normalised over all choices, score = sum of the true part.
/// Computed with the maximum subtracted, which equals lm-eval's value wherever exp(ll) does not underflow
/// (lm-eval gives NaN when every exp(ll) underflows to 0).
/// @throws invalid_argument when the label list has no 0 (lm-eval's list.index(0) raises) or sizes differ.
[[nodiscard]] inline double mc2_score(std::span<const double> loglik, std::span<const int> labels) {
  QPROB_CHECK_EQ(loglik.size(), labels.size(), "mc2_score: one label per choice");
  const auto zero = std::find(labels.begin(), labels.end(), 0);
  QPROB_CHECK(zero != labels.end(), "mc2_score: no false choice (lm-eval splits at labels.index(0))");
  const auto split = static_cast<std::size_t>(zero - labels.begin());
  const double m   = *std::max_element(loglik.begin(), loglik.end());
  double all = 0, yes = 0;
  for (std::size_t j = 0; j < loglik.size(); ++j) {
    const double p = std::exp(loglik[j] - m);
    all += p;
    yes += j < split ? p : 0.0;
  }
  return yes / all;
}

/// MC2 of one document of a result.
[[nodiscard]] inline double mc2_score(const tasks::document& d, const doc_result& r) {
  std::vector<double> ll;
  for (const auto& c : r.choices) {
    ll.push_back(c.loglik);
  }
  return mc2_score(ll, d.labels);
}

/// A task's numbers: lm-eval's metrics plus qprob's confidence and calibration metrics.
struct task_summary {
  static constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  std::string task;
  tasks::request_kind kind = tasks::request_kind::loglikelihood;
  std::size_t n            = 0;  ///< documents evaluated (lm-eval n-samples "effective")
  std::size_t n_original   = 0;  ///< documents in the split (lm-eval n-samples "original")
  std::vector<tasks::metric> metrics;  ///< what lm-eval reports (the task's metric_list)
  /// Loglikelihood tasks: probabilities from summed log-likelihoods (the paper's) and from per-character
  /// normalised ones (acc_norm's scores). next_token_vocab: `sum` holds the full-vocabulary numbers (acc,
  /// accuracy, conf, conf_correct, conf_err, entropy, ece, mce, rmsce, ace = equal-mass top-label,
  /// acc_stderr, acc_wilson; the choice-based ones (conf_true, brier, nll, acc_norm) are NaN and
  /// char_normalized is unset.
  metrics::model_metrics sum;
  std::optional<metrics::model_metrics> char_normalized;
  double mc2        = nan;  ///< TruthfulQA MC2 mean (lm-eval reports it as "acc")
  double mc2_stderr = nan;  ///< sample std (ddof 1) / sqrt(n), lm-eval's mean_stderr
};

/// lm-eval's value of `m` for the summary ("acc" of an MC2 task is the MC2 score).
[[nodiscard]] inline double lm_eval_value(const task_summary& s, tasks::metric m) {
  switch (m) {
    case tasks::metric::acc: return s.sum.acc;
    case tasks::metric::acc_norm: return s.sum.acc_norm;
    case tasks::metric::mc2: return s.mc2;
  }
  return task_summary::nan;
}

[[nodiscard]] inline double lm_eval_stderr(const task_summary& s, tasks::metric m) {
  switch (m) {
    case tasks::metric::acc: return s.sum.acc_stderr;
    case tasks::metric::acc_norm: return s.sum.acc_norm_stderr;
    case tasks::metric::mc2: return s.mc2_stderr;
  }
  return task_summary::nan;
}

/// Computes the summary of a result. `n_original`: the split's size (0: the documents in `task`).
/// @throws invalid_argument for an empty result or a task that mixes request kinds.
[[nodiscard]] inline task_summary summarize(const tasks::task_data& task, const eval_result& result,
                                            const metrics::metric_options& opt = {}, std::size_t n_original = 0) {
  QPROB_CHECK(!result.docs.empty(), "summarize: no document was evaluated");
  task_summary s;
  s.task       = result.task;
  s.n          = result.docs.size();
  s.n_original = n_original != 0 ? n_original : task.docs.size();
  s.kind       = result.docs.front().kind;
  s.metrics    = task.docs.front().metrics;
  for (const auto& r : result.docs) {
    QPROB_CHECK(r.kind == s.kind, "summarize: task ", s.task, " mixes loglikelihood and next_token_vocab documents");
  }
  if (s.kind == tasks::request_kind::next_token_vocab) {
    std::vector<double> conf;
    std::vector<std::uint8_t> ok;
    double ent = 0, c_ok = 0, c_bad = 0;
    std::int64_t n_ok = 0;
    for (const auto& r : result.docs) {
      conf.push_back(std::exp(r.next.logprob));
      ok.push_back(r.next_correct ? 1 : 0);
      ent += r.next.entropy;
      n_ok += r.next_correct ? 1 : 0;
      (r.next_correct ? c_ok : c_bad) += conf.back();
    }
    auto& m        = s.sum;
    const auto n   = static_cast<std::int64_t>(s.n);
    const double nn = static_cast<double>(n);
    m.n            = n;
    m.n_correct    = n_ok;
    m.acc          = static_cast<double>(n_ok) / nn;
    m.acc_stderr   = metrics::proportion_stderr(n_ok, n);
    m.acc_wilson   = metrics::wilson_interval(n_ok, n, opt.confidence_level);
    m.accuracy     = m.acc;
    double csum    = 0;
    for (const double c : conf) {
      csum += c;
    }
    m.conf         = csum / nn;
    m.conf_correct = n_ok > 0 ? c_ok / static_cast<double>(n_ok) : task_summary::nan;
    m.conf_err     = n_ok < n ? c_bad / static_cast<double>(n - n_ok) : task_summary::nan;
    m.entropy      = ent / nn;
    m.entropy_bits = m.entropy / std::log(2.0);
    auto cal       = metrics::equal_width_calibration(conf, ok, opt.calibration_bins, opt.edges);
    m.ece          = cal.ece;
    m.mce          = cal.mce;
    m.rmsce        = cal.rmsce;
    m.reliability  = std::move(cal.bins);
    m.ace          = metrics::ace_equal_mass_top_label(conf, ok, opt.ace_ranges);
    return s;
  }
  const auto scores = to_choice_scores(task, result);
  auto o            = opt;
  o.score           = metrics::scoring::sum;
  s.sum             = metrics::compute_model_metrics_reference(scores.view(), o);
  if (!scores.char_len.empty()) {
    o.score           = metrics::scoring::char_normalized;
    s.char_normalized = metrics::compute_model_metrics_reference(scores.view(), o);
  }
  if (std::find(s.metrics.begin(), s.metrics.end(), tasks::metric::mc2) != s.metrics.end()) {
    std::vector<double> v;
    for (std::size_t i = 0; i < result.docs.size(); ++i) {
      v.push_back(mc2_score(task.docs[i], result.docs[i]));
    }
    double mean = 0;
    for (const double x : v) {
      mean += x;
    }
    mean /= static_cast<double>(v.size());
    s.mc2 = mean;
    if (v.size() > 1) {
      double ss = 0;
      for (const double x : v) {
        ss += (x - mean) * (x - mean);
      }
      s.mc2_stderr = std::sqrt(ss / static_cast<double>(v.size() - 1) / static_cast<double>(v.size()));
    }
  }
  return s;
}

}  // namespace qprob::eval
