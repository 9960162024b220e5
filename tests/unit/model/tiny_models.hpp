// SPDX-License-Identifier: Apache-2.0
#pragma once
// Hand-built tiny models for the reference-forward tests: a config.json of each family and random weights for
// exactly the tensors the weight map expects (model/weights.hpp, expected_weights), written with qprob's
// safetensors writer into a temporary directory.

#include <qprob/io/safetensors.hpp>
#include <qprob/model/config.hpp>
#include <qprob/model/weights.hpp>

#include "io_test_util.hpp"

#include <nlohmann/json.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace qprob::test {

using tensor_map = std::map<std::string, std::vector<float>>;

/// config.json of a tiny model per family (vocab 40, hidden 16 or 12, 2 layers), spelled as config.json files are.
inline nlohmann::json tiny_config(const std::string& family) {
  using nlohmann::json;
  if (family == "llama") {
    return json{{"model_type", "llama"}, {"vocab_size", 40}, {"hidden_size", 16}, {"intermediate_size", 24},
                {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
                {"max_position_embeddings", 64}, {"rms_norm_eps", 1e-5}, {"tie_word_embeddings", false}};
  }
  if (family == "mistral") {
    return json{{"model_type", "mistral"}, {"vocab_size", 40}, {"hidden_size", 16}, {"intermediate_size", 24},
                {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 1},
                {"max_position_embeddings", 64}, {"sliding_window", 3}, {"rms_norm_eps", 1e-5}};
  }
  if (family == "qwen2") {
    return json{{"model_type", "qwen2"}, {"vocab_size", 40}, {"hidden_size", 16}, {"intermediate_size", 24},
                {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
                {"max_position_embeddings", 64}, {"rope_theta", 1000000.0}, {"tie_word_embeddings", true}};
  }
  if (family == "opt") {
    return json{{"model_type", "opt"}, {"vocab_size", 40}, {"hidden_size", 16}, {"ffn_dim", 24},
                {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"max_position_embeddings", 32},
                {"do_layer_norm_before", true}, {"activation_function", "relu"}};
  }
  if (family == "opt350") {
    return json{{"model_type", "opt"}, {"vocab_size", 40}, {"hidden_size", 16}, {"ffn_dim", 24},
                {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"max_position_embeddings", 32},
                {"do_layer_norm_before", false}, {"word_embed_proj_dim", 8}, {"activation_function", "relu"}};
  }
  if (family == "bloom") {
    return json{{"model_type", "bloom"}, {"vocab_size", 40}, {"hidden_size", 12}, {"n_head", 6}, {"n_layer", 2},
                {"layer_norm_epsilon", 1e-5}};
  }
  if (family == "phi") {
    return json{{"model_type", "phi"}, {"vocab_size", 40}, {"hidden_size", 16}, {"intermediate_size", 24},
                {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"max_position_embeddings", 64},
                {"partial_rotary_factor", 0.5}, {"qk_layernorm", true}, {"hidden_act", "gelu_new"}};
  }
  throw std::runtime_error("tiny_config: unknown family " + family);
}

/// Random weights for every expected tensor of `cfg` (norm weights around 1, biases and matrices around 0).
inline tensor_map tiny_weights(const nlohmann::json& cfg, std::uint64_t seed) {
  const auto c      = model::parse_config(cfg, "config.json");
  const auto prefix = model::name_prefixes(c.model_family).front();
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  tensor_map out;
  for (const auto& s : model::expected_weights(c, prefix)) {
    if (s.optional) {
      continue;  // tied lm_head
    }
    std::int64_t numel = 1;
    for (auto d : s.shape) {
      numel *= d;
    }
    const bool norm_weight = s.shape.size() == 1 && s.part == model::tensor_part::weight;
    std::vector<float> v(static_cast<std::size_t>(numel));
    for (auto& x : v) {
      x = norm_weight ? 1.0f + 0.3f * n01(rng) : (s.shape.size() == 1 ? 0.3f : 0.35f) * n01(rng);
    }
    out.emplace(s.hf_name, std::move(v));
  }
  return out;
}

/// Writes config.json and model.safetensors (float32) into `dir`.
inline void write_model(const std::filesystem::path& dir, const nlohmann::json& cfg, const tensor_map& tensors) {
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << cfg.dump(1);
  const auto c      = model::parse_config(cfg, "config.json");
  const auto prefix = model::name_prefixes(c.model_family).front();
  std::vector<io::tensor_to_write> w;
  for (const auto& s : model::expected_weights(c, prefix)) {
    const auto it = tensors.find(s.hf_name);
    if (it == tensors.end()) {
      continue;
    }
    w.push_back({s.hf_name, dtype::f32, s.shape, std::as_bytes(std::span<const float>(it->second))});
  }
  io::write_safetensors(dir / "model.safetensors", w);
}

}  // namespace qprob::test
