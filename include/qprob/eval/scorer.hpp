// SPDX-License-Identifier: Apache-2.0
#pragma once
// The one interface between the evaluation layer and a model engine. evaluate() (eval/evaluate.hpp) turns a
// task into token-id requests and hands them to a scorer in batches; the scorer answers with lm-eval's
// (loglikelihood, is_greedy) per request. The host reference (eval/reference_scorer.hpp) loops over
// reference::loglikelihood; the GPU engine implements the same interface and may batch as it likes, as long
// as it answers request i with result i. Layer: eval (host only; needs qprob::tokenizer for encoded_request).

#include <qprob/core/error.hpp>
#include <qprob/model/requests.hpp>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace qprob::eval {

using token_id = tokenizer::id_type;
using model::encoded_request;

/// lm-eval's answer to one loglikelihood request.
struct loglikelihood_result {
  double loglik   = 0.0;    ///< sum of log p(continuation token | prefix), nats
  bool is_greedy  = false;  ///< every continuation token is the argmax of its row (first index on ties)
  std::int32_t num_tokens = 0;  ///< continuation tokens scored

  friend bool operator==(const loglikelihood_result&, const loglikelihood_result&) = default;
};

/// The next-token distribution over the whole vocabulary after a context (Price-of-Efficiency mode),
/// reduced to what the metrics need.
struct next_token_result {
  token_id token  = 0;    ///< argmax of the last position's logits (first index on ties): greedy generation
  double logprob  = 0.0;  ///< log softmax of that token: ln(confidence)
  double entropy  = 0.0;  ///< entropy of the full-vocabulary softmax, nats

  friend bool operator==(const next_token_result&, const next_token_result&) = default;
};

/// A model engine as the evaluation layer sees it. Not thread-safe unless an implementation says so.
class scorer {
public:
  virtual ~scorer() = default;
  scorer()                         = default;
  scorer(const scorer&)            = delete;
  scorer& operator=(const scorer&) = delete;

  /// A short description for logs and the results JSON ("reference-cpu", ...).
  [[nodiscard]] virtual std::string name() const = 0;

  /// Scores a batch of requests; result i answers batch[i]. Must not depend on how requests are batched.
  [[nodiscard]] virtual std::vector<loglikelihood_result> score(std::span<const encoded_request> batch) = 0;

  /// lm-eval's max_length (left truncation of context + continuation), if the scorer has one: evaluate()
  /// refuses a continuation longer than it, naming the document, as lm-eval's HFLM asserts.
  [[nodiscard]] virtual std::optional<std::int64_t> max_length() const { return std::nullopt; }

  /// Whether next_token() is implemented.
  [[nodiscard]] virtual bool supports_next_token() const { return false; }

  /// The greedy next token after each context (ids as tok.encode(prompt) gives them) with its log-probability
  /// and the entropy of the full-vocabulary softmax.
  /// @throws invalid_argument unless supports_next_token().
  [[nodiscard]] virtual std::vector<next_token_result> next_token(std::span<const std::vector<token_id>> contexts) {
    (void)contexts;
    throw invalid_argument("scorer \"" + name() +
                           "\": next_token_vocab requests (Price-of-Efficiency tasks) are not supported by this scorer");
  }
};

}  // namespace qprob::eval
