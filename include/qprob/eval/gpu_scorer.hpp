// SPDX-License-Identifier: Apache-2.0
#pragma once
// eval::scorer over the GPU engine (engine/engine.hpp): what the drivers use for --device cuda. The engine
// batches, shares prefixes and is batch-invariant, so the results do not depend on how evaluate() splits the
// requests. Host code; link qprob::kernels (which holds the engine) and qprob::tokenizer (eval layer).
#include <qprob/engine/engine.hpp>
#include <qprob/eval/scorer.hpp>

#include <filesystem>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace qprob::eval {

class gpu_scorer final : public scorer {
public:
  explicit gpu_scorer(engine::engine e) : engine_(std::move(e)) {}

  /// Loads `dir` onto the GPU (engine::engine::from_directory).
  static gpu_scorer from_directory(const std::filesystem::path& dir, const engine::engine_options& options = {}) {
    return gpu_scorer(engine::engine::from_directory(dir, options));
  }

  [[nodiscard]] std::string name() const override { return engine_.name(); }
  [[nodiscard]] engine::engine& engine() noexcept { return engine_; }
  [[nodiscard]] const engine::engine& engine() const noexcept { return engine_; }
  [[nodiscard]] std::optional<std::int64_t> max_length() const noexcept override { return engine_.max_length(); }

  [[nodiscard]] std::vector<loglikelihood_result> score(std::span<const encoded_request> batch) override {
    std::vector<engine::token_request> reqs;
    reqs.reserve(batch.size());
    for (const auto& r : batch) {
      reqs.push_back({r.context, r.continuation});
    }
    const auto scores = engine_.score(reqs);
    std::vector<loglikelihood_result> out;
    out.reserve(scores.size());
    for (std::size_t i = 0; i < scores.size(); ++i) {
      out.push_back({scores[i].loglik, scores[i].is_greedy, static_cast<std::int32_t>(batch[i].continuation.size())});
    }
    return out;
  }

  [[nodiscard]] bool supports_next_token() const override { return true; }

  [[nodiscard]] std::vector<next_token_result> next_token(std::span<const std::vector<token_id>> contexts) override {
    std::vector<std::span<const token_id>> views(contexts.begin(), contexts.end());
    const auto scores = engine_.next_token(views);
    std::vector<next_token_result> out;
    out.reserve(scores.size());
    for (const auto& s : scores) {
      out.push_back({s.token, s.logprob, s.entropy});
    }
    return out;
  }

private:
  engine::engine engine_;
};

}  // namespace qprob::eval
