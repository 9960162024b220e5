// SPDX-License-Identifier: Apache-2.0
#pragma once
// The host implementation of eval::scorer: the double-precision reference forward pass, one request at a time
// (reference/forward.hpp). Exact but slow: meant for tiny models (stories260K, the babyllama models) and as
// the ground truth the GPU engine's scorer is compared with. Layer: eval (host only).

#include <qprob/core/error.hpp>
#include <qprob/eval/scorer.hpp>
#include <qprob/reference/forward.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace qprob::eval {

class reference_scorer final : public scorer {
public:
  /// `max_length`: lm-eval's max_length (left truncation of context + continuation); default
  /// reference::default_max_length(config).
  explicit reference_scorer(reference::reference_model model, std::optional<std::int64_t> max_length = std::nullopt)
      : model_(std::move(model))
      , max_length_(max_length.value_or(reference::default_max_length(model_.config()))) {
    reference::check_max_length(model_.config(), max_length_);
  }

  /// Loads `dir` with reference_model::from_directory.
  static reference_scorer from_directory(const std::filesystem::path& dir,
                                         const reference::reference_options& options = {}) {
    return reference_scorer(reference::reference_model::from_directory(dir, options));
  }

  [[nodiscard]] std::string name() const override { return "reference-cpu"; }
  [[nodiscard]] const reference::reference_model& model() const noexcept { return model_; }
  [[nodiscard]] std::optional<std::int64_t> max_length() const noexcept override { return max_length_; }

  [[nodiscard]] std::vector<loglikelihood_result> score(std::span<const encoded_request> batch) override {
    std::vector<loglikelihood_result> out;
    out.reserve(batch.size());
    for (const auto& r : batch) {
      const auto ll = reference::loglikelihood(model_, r.context, r.continuation, max_length_);
      out.push_back({ll.sum, ll.is_greedy, static_cast<std::int32_t>(r.continuation.size())});
    }
    return out;
  }

  [[nodiscard]] bool supports_next_token() const override { return true; }

  /// The last max_length tokens of each context go through the model (Hugging Face generate() would see the
  /// whole prompt; the difference only matters for prompts longer than the model's context).
  [[nodiscard]] std::vector<next_token_result> next_token(std::span<const std::vector<token_id>> contexts) override {
    std::vector<next_token_result> out;
    out.reserve(contexts.size());
    const auto V = static_cast<std::size_t>(model_.vocab_size());
    for (const auto& ctx : contexts) {
      QPROB_CHECK(!ctx.empty(), "reference_scorer::next_token: empty context");
      const auto keep  = std::min<std::size_t>(ctx.size(), static_cast<std::size_t>(max_length_));
      const std::span<const token_id> input(ctx.data() + (ctx.size() - keep), keep);
      const auto logits = model_.logits(input);
      const std::span<const double> row(logits.data() + (keep - 1) * V, V);
      const double lse = reference::log_sum_exp(row);
      next_token_result r;
      r.token = static_cast<token_id>(std::max_element(row.begin(), row.end()) - row.begin());
      r.logprob = row[static_cast<std::size_t>(r.token)] - lse;
      for (const double v : row) {
        const double lp = v - lse;
        const double p  = std::exp(lp);
        if (p > 0) {
          r.entropy -= p * lp;
        }
      }
      out.push_back(r);
    }
    return out;
  }

private:
  reference::reference_model model_;
  std::int64_t max_length_;
};

}  // namespace qprob::eval
