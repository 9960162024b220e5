// SPDX-License-Identifier: Apache-2.0
#pragma once
// eval::logprob_source over the GPU engine: qprob-perplexity --device cuda. Host code; link qprob::kernels.
#include <qprob/engine/engine.hpp>
#include <qprob/eval/perplexity.hpp>

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace qprob::eval {

/// logprob_source over a GPU engine (perplexity and llama.cpp-style divergence statistics, eval/perplexity.hpp):
/// the engine's float32 log-softmax rows, streamed from the device one LM-head chunk at a time, widened to
/// double. Does not own the engine.
class engine_logprob_source final : public logprob_source {
public:
  engine_logprob_source(engine::engine& e, std::string label) : engine_(&e), label_(std::move(label)) {}
  [[nodiscard]] std::string name() const override { return label_; }
  [[nodiscard]] std::int64_t vocab_size() const override { return engine_->config().vocab_size; }
  void window_logprobs(std::span<const reference::token_id> window, const row_callback& on_row) override {
    engine_->window_logprobs(window, [&](std::int64_t t, std::span<const float> row) {
      row_.assign(row.begin(), row.end());
      on_row(t, row_);
    });
  }

private:
  engine::engine* engine_;
  std::string label_;
  std::vector<double> row_;
};

}  // namespace qprob::eval
