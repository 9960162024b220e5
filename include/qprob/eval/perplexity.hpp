// SPDX-License-Identifier: Apache-2.0
#pragma once
// Perplexity on running text (WikiText-2) and, streaming, the per-token statistics between a base model and
// compared (e.g. quantized) models (metrics/token_divergence.hpp). Layer: eval (host only).
//
//   auto tok    = qprob::tokenizer::from_directory(dir);
//   auto corpus = qprob::eval::load_perplexity_corpus("data/wikitext2/wiki.test.raw", tok,
//                                                     qprob::eval::perplexity_convention::gptq);
//   auto plan   = qprob::eval::plan_windows(corpus, {.seqlen = 256, .max_windows = 32});
//   qprob::eval::reference_logprob_source fp(qprob::reference::reference_model::from_directory(dir));
//   auto r      = qprob::eval::evaluate_perplexity(fp, corpus.tokens, plan);      // r.ppl.value
//
// Conventions (docs/perplexity.md compares them with lm-eval's wikitext task):
//   gptq       (default) what the GPTQ / AutoGPTQ papers report: the test split's rows joined with "\n\n" and
//              tokenized once (with the BOS the tokenizer adds, so only the first window starts with it), cut
//              into floor(N / seqlen) non-overlapping windows of seqlen tokens (the remainder is dropped); in
//              every window, tokens 1..seqlen-1 are predicted from their prefix in the window (seqlen - 1 per
//              window; the first token of each window is never predicted). ppl = exp(mean NLL).
//   llama_cpp  llama-perplexity's: the file's bytes tokenized as they are (with BOS), the same windows, each
//              window's first token replaced by BOS when the tokenizer adds one, and only the second half
//              scored: tokens seqlen/2 + 1 .. seqlen - 1 (seqlen - 1 - seqlen/2 per window).
//
// Models plug in through logprob_source (full-vocabulary log-softmax rows of one window); the host reference is
// reference_logprob_source, the GPU engine will add its own. Nothing keeps more than one window of rows.

#include <qprob/core/error.hpp>
#include <qprob/metrics/token_divergence.hpp>
#include <qprob/quant/calibration.hpp>
#include <qprob/reference/forward.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace qprob::eval {

// ---- the source of log-probability rows -----------------------------------------------------------------------

/// Anything that turns a window of token ids into full-vocabulary next-token log-probability rows.
class logprob_source {
public:
  /// row t: the log-softmax over the vocabulary at position t (the distribution of token t + 1).
  using row_callback = std::function<void(std::int64_t row, std::span<const double> logprobs)>;

  logprob_source()                                 = default;
  logprob_source(const logprob_source&)            = default;
  logprob_source& operator=(const logprob_source&) = default;
  logprob_source(logprob_source&&)                 = default;
  logprob_source& operator=(logprob_source&&)      = default;
  virtual ~logprob_source()                        = default;

  /// Names the source in messages and outputs ("reference-cpu", ...).
  [[nodiscard]] virtual std::string name() const = 0;
  /// Length of every row.
  [[nodiscard]] virtual std::int64_t vocab_size() const = 0;
  /// Runs the model causally on `window` and calls `on_row(t, row)` for t = 0 .. window.size() - 1 in
  /// increasing order; `row` (vocab_size() log-probabilities, normalized) is valid during the call only.
  /// Consumers skip the rows they do not score; a source may not skip rows.
  virtual void window_logprobs(std::span<const reference::token_id> window, const row_callback& on_row) = 0;
};

/// logprob_source over the double-precision host reference (reference/forward.hpp): exact, for tiny models.
class reference_logprob_source final : public logprob_source {
public:
  explicit reference_logprob_source(reference::reference_model model, std::string label = "reference-cpu")
      : model_(std::move(model))
      , label_(std::move(label)) {}

  [[nodiscard]] std::string name() const override { return label_; }
  [[nodiscard]] std::int64_t vocab_size() const override { return model_.vocab_size(); }
  [[nodiscard]] const reference::reference_model& model() const noexcept { return model_; }

  void window_logprobs(std::span<const reference::token_id> window, const row_callback& on_row) override {
    const auto logits = model_.logits(window);
    const auto V      = static_cast<std::size_t>(model_.vocab_size());
    std::vector<double> row(V);
    for (std::size_t t = 0; t < window.size(); ++t) {
      const std::span<const double> z(logits.data() + t * V, V);
      const double lse = reference::log_sum_exp(z);
      for (std::size_t i = 0; i < V; ++i) {
        row[i] = z[i] - lse;
      }
      on_row(static_cast<std::int64_t>(t), row);
    }
  }

private:
  reference::reference_model model_;
  std::string label_;
};

// ---- text and windows -------------------------------------------------------------------------------------------

enum class perplexity_convention : std::uint8_t {
  gptq,       ///< every next-token prediction of non-overlapping windows (GPTQ / AutoGPTQ); the default
  llama_cpp,  ///< llama-perplexity: BOS at each window start, second half of each window scored
};

[[nodiscard]] inline std::string_view to_string(perplexity_convention c) noexcept {
  return c == perplexity_convention::gptq ? "gptq" : "llama.cpp";
}

/// "gptq" or "llama.cpp" (also "llama_cpp").
/// @throws invalid_argument for another name.
[[nodiscard]] inline perplexity_convention parse_perplexity_convention(std::string_view s) {
  if (s == "gptq") {
    return perplexity_convention::gptq;
  }
  if (s == "llama.cpp" || s == "llama_cpp") {
    return perplexity_convention::llama_cpp;
  }
  throw invalid_argument(qprob::detail::concat("perplexity convention \"", s, "\": expected gptq or llama.cpp"));
}

/// The evaluation text, tokenized once.
struct perplexity_corpus {
  std::filesystem::path file;
  perplexity_convention convention = perplexity_convention::gptq;
  std::uint64_t text_bytes = 0;                   ///< bytes of the text that was tokenized
  std::vector<reference::token_id> tokens;
  std::optional<reference::token_id> bos;         ///< the token the tokenizer prepends, if it adds one
};

/// The token a tokenizer prepends with add_special_tokens = true (Llama's BOS), if any: the first id of
/// encode("a", true) when the rest equals encode("a", false).
template <quant::calibration_tokenizer Tok>
[[nodiscard]] std::optional<reference::token_id> prepended_token(const Tok& tok) {
  const std::vector<std::int32_t> with    = tok.encode("a", true);
  const std::vector<std::int32_t> without = tok.encode("a", false);
  if (with.size() == without.size() + 1 && std::equal(without.begin(), without.end(), with.begin() + 1)) {
    return with.front();
  }
  return std::nullopt;
}

/// Reads and tokenizes the evaluation text of `file` (WikiText-2: wiki.test.raw of wikitext-2-raw-v1).
/// gptq: the rows of the file as the Hugging Face wikitext loader yields them (lines with their "\n";
/// whitespace-only lines become ""; quant::read_calibration_rows), joined with "\n\n" (GPTQ's
/// "\n\n".join(testdata['text'])); llama_cpp: the bytes as they are. Either is encoded with
/// add_special_tokens = true. A .gz file is decompressed (gptq only).
/// @throws format_error naming `file` when it is missing, a directory or unreadable.
template <quant::calibration_tokenizer Tok>
[[nodiscard]] perplexity_corpus load_perplexity_corpus(const std::filesystem::path& file, const Tok& tok,
                                                       perplexity_convention convention) {
  std::error_code ec;
  if (!std::filesystem::exists(file, ec)) {
    throw format_error(file.string(), "", "cannot open the evaluation text: no such file (for WikiText-2, "
                                          "wiki.test.raw of wikitext-2-raw-v1)");
  }
  if (std::filesystem::is_directory(file, ec)) {
    throw format_error(file.string(), "", "is a directory; expected the evaluation text file (e.g. wiki.test.raw)");
  }
  std::string text;
  if (convention == perplexity_convention::gptq) {
    quant::calibration_options o;
    o.source = file;
    o.format = quant::calibration_format::text;
    const auto rows = quant::read_calibration_rows(o);
    for (std::size_t i = 0; i < rows.size(); ++i) {
      if (i > 0) {
        text += "\n\n";
      }
      text += rows[i];
    }
  } else {
    std::ifstream in(file, std::ios::binary);
    if (!in) {
      throw format_error(file.string(), "", "cannot open the evaluation text");
    }
    std::ostringstream s;
    s << in.rdbuf();
    text = s.str();
  }
  perplexity_corpus c;
  c.file       = file;
  c.convention = convention;
  c.text_bytes = text.size();
  const std::vector<std::int32_t> ids = tok.encode(text, true);
  c.tokens.assign(ids.begin(), ids.end());
  c.bos = prepended_token(tok);
  return c;
}

struct perplexity_options {
  std::int64_t seqlen = 2048;               ///< tokens per window (GPTQ: model.seqlen)
  std::optional<std::int64_t> max_windows;  ///< evaluate only the first N windows (CI); all when unset
};

/// Which windows are evaluated and which of their rows are scored.
struct window_plan {
  perplexity_convention convention = perplexity_convention::gptq;
  std::int64_t seqlen           = 0;
  std::int64_t available        = 0;  ///< floor(tokens / seqlen)
  std::int64_t windows          = 0;  ///< evaluated: the first min(available, max_windows)
  std::int64_t first_scored_row = 0;  ///< rows first_scored_row .. seqlen - 2 are scored (row t predicts token t + 1)
  std::optional<reference::token_id> window_start_token;  ///< llama_cpp: replaces each window's first token

  [[nodiscard]] std::int64_t scored_per_window() const noexcept { return seqlen - 1 - first_scored_row; }
  [[nodiscard]] std::int64_t scored_tokens() const noexcept { return windows * scored_per_window(); }
};

/// Plans the windows over `corpus.tokens` (window i = tokens [i seqlen, (i + 1) seqlen)).
/// @throws invalid_argument for seqlen < 2 or max_windows < 1; format_error naming the corpus file when the
///         text is shorter than one window.
[[nodiscard]] inline window_plan plan_windows(const perplexity_corpus& corpus, const perplexity_options& o) {
  QPROB_CHECK(o.seqlen >= 2, "perplexity: seqlen must be at least 2 (one predicted token), got ", o.seqlen);
  QPROB_CHECK(!o.max_windows || *o.max_windows >= 1, "perplexity: max_windows must be positive, got ",
              o.max_windows.value_or(0));
  window_plan p;
  p.convention = corpus.convention;
  p.seqlen     = o.seqlen;
  p.available  = static_cast<std::int64_t>(corpus.tokens.size()) / o.seqlen;
  if (p.available < 1) {
    throw format_error(corpus.file.string(), "", qprob::detail::concat("the text tokenizes to ", corpus.tokens.size(),
                                                                " tokens: fewer than one window of seqlen=", o.seqlen));
  }
  p.windows = o.max_windows ? std::min(*o.max_windows, p.available) : p.available;
  if (corpus.convention == perplexity_convention::llama_cpp) {
    p.first_scored_row   = o.seqlen / 2;
    p.window_start_token = corpus.bos;
  }
  return p;
}

/// The model input of window `w`.
[[nodiscard]] inline std::vector<reference::token_id> window_input(std::span<const reference::token_id> tokens,
                                                                   const window_plan& plan, std::int64_t w) {
  QPROB_CHECK(w >= 0 && w < plan.windows, "window_input: window ", w, " of ", plan.windows);
  const auto start = static_cast<std::size_t>(w * plan.seqlen);
  const auto end   = start + static_cast<std::size_t>(plan.seqlen);
  QPROB_CHECK_LE(end, tokens.size(), "window_input: the plan does not fit the tokens");
  std::vector<reference::token_id> in(tokens.begin() + static_cast<std::ptrdiff_t>(start),
                                      tokens.begin() + static_cast<std::ptrdiff_t>(end));
  if (plan.window_start_token) {
    in.front() = *plan.window_start_token;
  }
  return in;
}

// ---- evaluation -------------------------------------------------------------------------------------------------

/// Called after each window of each source: (done, total) source-windows.
using window_progress = std::function<void(std::int64_t done, std::int64_t total)>;

/// One model's perplexity over the plan's scored tokens.
struct perplexity_result {
  std::string source;               ///< logprob_source::name()
  std::int64_t windows = 0;
  std::int64_t tokens  = 0;         ///< scored predictions
  double nll_sum = 0;               ///< sum of -ln p(true token), nats
  metrics::estimate ln_ppl;         ///< mean NLL ± standard error
  metrics::estimate ppl;            ///< exp(mean NLL) ± exp(mean NLL) * error (llama.cpp's "PPL = x +/- y")
  std::vector<double> window_nll;   ///< mean NLL of each window (GPTQ's per-sample loss)
};

/// Base model against each compared model on the same windows.
struct perplexity_comparison {
  perplexity_result base;
  std::vector<perplexity_result> compared;
  std::vector<metrics::token_divergence_summary> divergence;  ///< [k]: base vs compared[k]
};

namespace detail {

/// Runs `src` on window `w` and calls fn(k, row, target) for the k-th scored row, checking the source's
/// contract (rows in order, none missing, the right length, the target inside the vocabulary).
template <class Fn>
void for_each_scored_row(logprob_source& src, std::span<const reference::token_id> tokens, const window_plan& plan,
                         std::int64_t w, Fn&& fn) {
  const auto input = window_input(tokens, plan, w);
  const auto V     = src.vocab_size();
  const auto start = w * plan.seqlen;
  const auto last  = plan.seqlen - 2;
  std::int64_t next = plan.first_scored_row;
  src.window_logprobs(input, [&](std::int64_t row, std::span<const double> lp) {
    QPROB_CHECK(row >= 0 && row < plan.seqlen, "logprob source ", src.name(), ": row ", row, " outside window of ",
                plan.seqlen);
    if (row < plan.first_scored_row || row > last) {
      return;
    }
    QPROB_CHECK(row == next, "logprob source ", src.name(), ": row ", row, " delivered where row ", next, " was due");
    QPROB_CHECK(static_cast<std::int64_t>(lp.size()) == V, "logprob source ", src.name(), ": row of ", lp.size(),
                " values, vocab_size() is ", V);
    const auto target = tokens[static_cast<std::size_t>(start + row + 1)];
    QPROB_CHECK(target >= 0 && target < V, "perplexity: token ", target, " at text position ", start + row + 1,
                " is outside the vocabulary of ", src.name(), " (", V, ")");
    fn(row - plan.first_scored_row, lp, target);
    ++next;
  });
  QPROB_CHECK(next == last + 1, "logprob source ", src.name(), " delivered rows up to ", next - 1, " of window ", w,
              "; rows ", plan.first_scored_row, "..", last, " are scored");
}

inline void check_normalized(std::span<const double> lp, const logprob_source& src) {
  double s = 0;
  for (const double v : lp) {
    s += std::exp(v);
  }
  QPROB_CHECK(std::abs(s - 1.0) <= metrics::logprob_row_tolerance, "logprob source ", src.name(),
              ": a row is not normalized (sum(exp(row)) = ", s, "); rows must be log-softmax, not logits");
}

inline perplexity_result finish(std::string source, const window_plan& plan, std::span<const double> nll) {
  perplexity_result r;
  r.source  = std::move(source);
  r.windows = plan.windows;
  r.tokens  = static_cast<std::int64_t>(nll.size());
  for (const double v : nll) {
    r.nll_sum += v;
  }
  r.ln_ppl     = metrics::mean_and_error(nll);
  r.ppl.value  = std::exp(r.ln_ppl.value);
  r.ppl.error  = r.ppl.value * r.ln_ppl.error;
  const auto k = static_cast<std::size_t>(plan.scored_per_window());
  for (std::size_t w = 0; w < static_cast<std::size_t>(plan.windows); ++w) {
    r.window_nll.push_back(metrics::mean_and_error(nll.subspan(w * k, k)).value);
  }
  return r;
}

}  // namespace detail

/// Perplexity of `source` over the plan's windows of `tokens`: exp of the mean NLL over every scored token
/// (equal to GPTQ's exp(sum over windows of loss * seqlen / (windows * seqlen)), since every window scores the
/// same number of tokens).
/// @throws invalid_argument when the source breaks its contract (see logprob_source) or returns rows that are
///         not normalized; whatever the source throws.
inline perplexity_result evaluate_perplexity(logprob_source& source, std::span<const reference::token_id> tokens,
                                             const window_plan& plan, const window_progress& progress = {}) {
  std::vector<double> nll;
  nll.reserve(static_cast<std::size_t>(plan.scored_tokens()));
  for (std::int64_t w = 0; w < plan.windows; ++w) {
    detail::for_each_scored_row(source, tokens, plan, w,
                                [&](std::int64_t, std::span<const double> lp, reference::token_id t) {
                                  detail::check_normalized(lp, source);
                                  nll.push_back(-lp[static_cast<std::size_t>(t)]);
                                });
    if (progress) {
      progress(w + 1, plan.windows);
    }
  }
  return detail::finish(source.name(), plan, nll);
}

/// Evaluates `base` and every model of `compared` on the same windows, one window at a time (the base rows of
/// the current window are the only rows kept), and returns each perplexity plus the token statistics of base
/// vs each compared model (metrics::token_divergence_accumulator). The base result equals
/// evaluate_perplexity(base, ...) bit for bit.
/// @throws invalid_argument for a compared source whose vocabulary differs from the base's, and as
///         evaluate_perplexity.
inline perplexity_comparison compare_perplexity(logprob_source& base, std::span<logprob_source* const> compared,
                                                std::span<const reference::token_id> tokens, const window_plan& plan,
                                                const window_progress& progress = {}) {
  const auto V = base.vocab_size();
  for (auto* c : compared) {
    QPROB_CHECK(c != nullptr, "compare_perplexity: null compared source");
    QPROB_CHECK(c->vocab_size() == V, "compare_perplexity: ", c->name(), " has vocab_size ", c->vocab_size(), ", ",
                base.name(), " has ", V);
  }
  const auto k_rows = static_cast<std::size_t>(plan.scored_per_window());
  const auto Vs     = static_cast<std::size_t>(V);
  std::vector<double> base_rows(k_rows * Vs);  // the base model's scored rows of the current window
  std::vector<double> base_nll;
  std::vector<metrics::token_divergence_accumulator> acc(compared.size());
  const std::int64_t total = plan.windows * static_cast<std::int64_t>(1 + compared.size());
  std::int64_t done        = 0;
  for (std::int64_t w = 0; w < plan.windows; ++w) {
    detail::for_each_scored_row(base, tokens, plan, w,
                                [&](std::int64_t k, std::span<const double> lp, reference::token_id t) {
                                  detail::check_normalized(lp, base);
                                  std::copy(lp.begin(), lp.end(), base_rows.data() + static_cast<std::size_t>(k) * Vs);
                                  base_nll.push_back(-lp[static_cast<std::size_t>(t)]);
                                });
    if (progress) {
      progress(++done, total);
    }
    for (std::size_t c = 0; c < compared.size(); ++c) {
      detail::for_each_scored_row(*compared[c], tokens, plan, w,
                                  [&](std::int64_t k, std::span<const double> lp, reference::token_id t) {
                                    const auto k0 = static_cast<std::size_t>(k) * Vs;
                                    (void)acc[c].add(std::span<const double>(base_rows.data() + k0, Vs), lp, t);
                                  });
      if (progress) {
        progress(++done, total);
      }
    }
  }
  perplexity_comparison out;
  out.base = detail::finish(base.name(), plan, base_nll);
  for (std::size_t c = 0; c < compared.size(); ++c) {
    out.compared.push_back(detail::finish(compared[c]->name(), plan, acc[c].compared_nll_values()));
    out.divergence.push_back(acc[c].summary());
  }
  return out;
}

// ---- JSON ---------------------------------------------------------------------------------------------------------

namespace detail {
/// A JSON number, or null for NaN and infinities (JSON has no literal for them).
[[nodiscard]] inline nlohmann::ordered_json json_number(double x) {
  return std::isfinite(x) ? nlohmann::ordered_json(x) : nlohmann::ordered_json(nullptr);
}
[[nodiscard]] inline nlohmann::ordered_json json_estimate(const metrics::estimate& e) {
  return nlohmann::ordered_json{{"value", json_number(e.value)}, {"error", json_number(e.error)}};
}
[[nodiscard]] inline nlohmann::ordered_json json_quantiles(const metrics::quantile_summary& q) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  for (std::size_t i = 0; i < metrics::summary_levels.size(); ++i) {
    const double l = metrics::summary_levels[i];
    std::string key = l == 0.0 ? "min" : l == 1.0 ? "max" : l == 0.5 ? "median" : "";
    if (key.empty()) {
      char buf[16];
      std::snprintf(buf, sizeof buf, "p%g", 100.0 * l);  // p0.1, p1, ..., p99.9
      key = buf;
    }
    j[key] = json_number(q.values[i]);
  }
  return j;
}
}  // namespace detail

/// {count, ppl_base, ppl_compared, ...}: every field of the summary; fractions stay fractions (not percent);
/// NaN and infinities are null.
[[nodiscard]] inline nlohmann::ordered_json to_json(const metrics::token_divergence_summary& s) {
  using detail::json_estimate;
  nlohmann::ordered_json j;
  j["count"]           = s.count;
  j["ppl_base"]        = json_estimate(s.ppl_base);
  j["ppl_compared"]    = json_estimate(s.ppl_compared);
  j["ln_ppl_base"]     = json_estimate(s.ln_ppl_base);
  j["ln_ppl_compared"] = json_estimate(s.ln_ppl_compared);
  j["cor_ln_ppl"]      = detail::json_number(s.cor_ln_ppl);
  j["ln_ppl_ratio"]    = json_estimate(s.ln_ppl_ratio);
  j["ppl_ratio"]       = json_estimate(s.ppl_ratio);
  j["ppl_difference"]  = json_estimate(s.ppl_difference);
  j["kld"]             = json_estimate(s.kld);
  j["kld_quantiles"]   = detail::json_quantiles(s.kld_quantiles);
  j["delta_p"]         = json_estimate(s.delta_p);
  j["delta_p_quantiles"] = detail::json_quantiles(s.delta_p_quantiles);
  j["rms_delta_p"]     = json_estimate(s.rms_delta_p);
  j["same_top"]        = json_estimate(s.same_top);
  j["same_top_count"]  = s.same_top_count;
  return j;
}

/// {source, windows, tokens, nll_sum, ln_ppl, ppl, window_nll}.
[[nodiscard]] inline nlohmann::ordered_json to_json(const perplexity_result& r) {
  nlohmann::ordered_json j;
  j["source"]  = r.source;
  j["windows"] = r.windows;
  j["tokens"]  = r.tokens;
  j["nll_sum"] = detail::json_number(r.nll_sum);
  j["ln_ppl"]  = detail::json_estimate(r.ln_ppl);
  j["ppl"]     = detail::json_estimate(r.ppl);
  nlohmann::ordered_json w = nlohmann::ordered_json::array();
  for (const double v : r.window_nll) {
    w.push_back(detail::json_number(v));
  }
  j["window_nll"] = std::move(w);
  return j;
}

/// {convention, seqlen, windows, available_windows, first_scored_row, scored_per_window, scored_tokens,
///  window_start_token}.
[[nodiscard]] inline nlohmann::ordered_json to_json(const window_plan& p) {
  nlohmann::ordered_json j;
  j["convention"]        = std::string(to_string(p.convention));
  j["seqlen"]            = p.seqlen;
  j["windows"]           = p.windows;
  j["available_windows"] = p.available;
  j["first_scored_row"]  = p.first_scored_row;
  j["scored_per_window"] = p.scored_per_window();
  j["scored_tokens"]     = p.scored_tokens();
  j["window_start_token"] =
      p.window_start_token ? nlohmann::ordered_json(*p.window_start_token) : nlohmann::ordered_json(nullptr);
  return j;
}

}  // namespace qprob::eval
