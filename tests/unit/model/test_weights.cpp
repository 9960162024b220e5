// SPDX-License-Identifier: Apache-2.0
// Tensor-name mapping: the real shared models map completely; synthetic checkpoints of every family (written
// from the layout with small shapes) map under each accepted prefix; missing/unexpected/mismatched tensors are
// all listed in one error; BLOOM's fused qkv splits by head.
#include <qprob/model/weights.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string>

#include "io_test_util.hpp"
#include "support.hpp"

namespace io = qprob::io;
namespace m  = qprob::model;
using nlohmann::json;
using qprob::test::contains;
using qprob::test::format_error_message;
using qprob::test::temp_dir;

namespace {

// Small configs of each family with every structural feature switched on somewhere.
json small_config(const std::string& fam) {
  if (fam == "llama") {
    return {{"model_type", "llama"}, {"hidden_size", 16}, {"intermediate_size", 24}, {"num_hidden_layers", 2},
            {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"vocab_size", 11}, {"attention_bias", true},
            {"tie_word_embeddings", false}};
  }
  if (fam == "mistral") {
    return {{"model_type", "mistral"}, {"hidden_size", 16}, {"intermediate_size", 24}, {"num_hidden_layers", 2},
            {"num_attention_heads", 4}, {"num_key_value_heads", 1}, {"vocab_size", 11}, {"head_dim", 8}};
  }
  if (fam == "qwen2") {
    return {{"model_type", "qwen2"}, {"hidden_size", 16}, {"intermediate_size", 24}, {"num_hidden_layers", 2},
            {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"vocab_size", 11}, {"tie_word_embeddings", true}};
  }
  if (fam == "opt") {  // opt-350m style: projected embeddings, post-norm
    return {{"model_type", "opt"}, {"hidden_size", 16}, {"ffn_dim", 24}, {"num_hidden_layers", 2},
            {"num_attention_heads", 4}, {"vocab_size", 11}, {"max_position_embeddings", 9},
            {"word_embed_proj_dim", 8}, {"do_layer_norm_before", false}};
  }
  if (fam == "opt-pre") {
    return {{"model_type", "opt"}, {"hidden_size", 16}, {"ffn_dim", 24}, {"num_hidden_layers", 1},
            {"num_attention_heads", 4}, {"vocab_size", 11}, {"max_position_embeddings", 9}};
  }
  if (fam == "bloom") {
    return {{"model_type", "bloom"}, {"hidden_size", 16}, {"n_layer", 2}, {"n_head", 4}, {"vocab_size", 11}};
  }
  return {{"model_type", "phi"}, {"hidden_size", 16}, {"intermediate_size", 24}, {"num_hidden_layers", 2},
          {"num_attention_heads", 2}, {"vocab_size", 11}, {"partial_rotary_factor", 0.5}, {"qk_layernorm", true}};
}

/// Writes a checkpoint holding exactly `names` (shape from the layout, or `override_shape` for one name).
void write_checkpoint(const std::filesystem::path& file, const std::vector<m::weight_slot>& slots,
                      const std::vector<std::string>& extra = {}) {
  std::vector<std::vector<std::byte>> storage;
  std::vector<io::tensor_to_write> ts;
  storage.reserve(slots.size() + extra.size());
  for (const auto& s : slots) {
    std::int64_t n = 1;
    for (auto d : s.shape) {
      n *= d;
    }
    storage.emplace_back(static_cast<std::size_t>(n * 2));
    ts.push_back({s.hf_name, qprob::dtype::bf16, s.shape, storage.back()});
  }
  for (const auto& e : extra) {
    storage.emplace_back(4);
    ts.push_back({e, qprob::dtype::f32, {1}, storage.back()});
  }
  io::write_safetensors(file, ts);
}

std::vector<m::weight_slot> required_only(std::vector<m::weight_slot> slots) {
  std::erase_if(slots, [](const m::weight_slot& s) { return s.optional; });
  return slots;
}

}  // namespace

TEST_CASE("real shared models: every tensor is mapped") {
  for (const std::string model : {"stories260K", "babyllama-tok105", "babyllama-tok361"}) {
    CAPTURE(model);
    std::string reason;
    const auto dir = qprob::test::shared_path("models/" + model, &reason);
    if (!dir) {
      MESSAGE(reason);
      continue;
    }
    const auto cfg  = m::load_config(*dir);
    const auto ckpt = io::checkpoint::open(*dir);
    const auto map  = m::map_weights(cfg, ckpt);
    CHECK(map.prefix() == "model.");
    CHECK(map.lm_head_tied());
    CHECK(map.ignored().empty());
    std::size_t mapped = 0;
    for (const auto& t : map.tensors()) {
      mapped += t.info != nullptr;
    }
    CHECK(mapped == ckpt.size());
    for (const auto& [name, e] : ckpt.entries()) {
      CHECK(map.slot_of(name) != nullptr);
    }
    const auto* q3 = map.find(m::tensor_role::q, m::tensor_part::weight, 3);
    REQUIRE(q3 != nullptr);
    CHECK(q3->name == "model.layers.3.self_attn.q_proj.weight");
    CHECK(map.slot_of("model.layers.4.mlp.down_proj.weight")->canonical_name() == "layers.4.down.weight");
    CHECK(map.find(m::tensor_role::embed_tokens)->shape == std::vector<std::int64_t>{cfg.vocab_size, cfg.hidden_size});
  }
}

TEST_CASE("synthetic checkpoints of every family map under every accepted prefix") {
  for (const std::string fam : {"llama", "mistral", "qwen2", "opt", "opt-pre", "bloom", "phi"}) {
    const auto cfg = m::parse_config(small_config(fam), fam + "/config.json");
    for (const auto& prefix : m::name_prefixes(cfg.model_family)) {
      CAPTURE(fam);
      CAPTURE(prefix);
      temp_dir dir("wmap");
      const auto slots = required_only(m::expected_weights(cfg, prefix));
      write_checkpoint(dir / "model.safetensors", slots);
      const auto ckpt = io::checkpoint::open(dir.path());
      const auto map  = m::map_weights(cfg, ckpt);
      CHECK(map.prefix() == prefix);
      CHECK(ckpt.size() == slots.size());
      for (const auto& s : slots) {
        const auto* slot = map.slot_of(s.hf_name);
        REQUIRE(slot != nullptr);
        CHECK(slot->role == s.role);
      }
    }
  }
}

TEST_CASE("family layouts hold the expected names and shapes") {
  const auto names = [](const m::model_config& c) {
    std::vector<std::string> out;
    for (const auto& s : m::expected_weights(c, m::name_prefixes(c.model_family).front())) {
      out.push_back(s.hf_name);
    }
    return out;
  };
  const auto has = [](const std::vector<std::string>& v, const std::string& n) {
    return std::find(v.begin(), v.end(), n) != v.end();
  };
  {
    const auto c = m::parse_config(small_config("opt"), "c");
    const auto n = names(c);
    CHECK(has(n, "model.decoder.project_in.weight"));
    CHECK(has(n, "model.decoder.project_out.weight"));
    CHECK(has(n, "model.decoder.embed_positions.weight"));
    CHECK_FALSE(has(n, "model.decoder.final_layer_norm.weight"));  // post-norm OPT has none
    CHECK(has(n, "model.decoder.layers.1.final_layer_norm.bias"));
    const auto slots = m::expected_weights(c, "model.decoder.");
    for (const auto& s : slots) {
      if (s.role == m::tensor_role::embed_positions) {
        CHECK(s.shape == std::vector<std::int64_t>{9 + 2, 16});
      }
      if (s.role == m::tensor_role::embed_tokens) {
        CHECK(s.shape == std::vector<std::int64_t>{11, 8});
      }
      if (s.role == m::tensor_role::project_in) {
        CHECK(s.shape == std::vector<std::int64_t>{16, 8});
      }
    }
    const auto pre = names(m::parse_config(small_config("opt-pre"), "c"));
    CHECK(has(pre, "model.decoder.final_layer_norm.weight"));
    CHECK_FALSE(has(pre, "model.decoder.project_in.weight"));
  }
  {
    const auto n = names(m::parse_config(small_config("phi"), "c"));
    CHECK(has(n, "lm_head.bias"));
    CHECK(has(n, "model.final_layernorm.bias"));
    CHECK(has(n, "model.layers.0.self_attn.dense.bias"));
    CHECK(has(n, "model.layers.0.self_attn.q_layernorm.weight"));
    CHECK(has(n, "model.layers.1.mlp.fc2.bias"));
    CHECK_FALSE(has(n, "model.layers.0.post_attention_layernorm.weight"));
  }
  {
    const auto n = names(m::parse_config(small_config("qwen2"), "c"));
    CHECK(has(n, "model.layers.0.self_attn.q_proj.bias"));
    CHECK_FALSE(has(n, "model.layers.0.self_attn.o_proj.bias"));
    CHECK_FALSE(has(n, "model.layers.0.mlp.up_proj.bias"));
  }
  {
    const auto n = names(m::parse_config(small_config("bloom"), "c"));
    CHECK(has(n, "transformer.word_embeddings_layernorm.bias"));
    CHECK(has(n, "transformer.h.1.self_attention.query_key_value.bias"));
    CHECK(has(n, "transformer.ln_f.weight"));
  }
}

TEST_CASE("mapping errors list every missing, unexpected and mismatched tensor at once") {
  const auto cfg = m::parse_config(small_config("llama"), "config.json");
  auto slots     = required_only(m::expected_weights(cfg, "model."));
  // Drop two tensors, reshape one, add two strangers and one ignorable buffer.
  std::erase_if(slots, [](const m::weight_slot& s) {
    return s.hf_name == "model.layers.1.self_attn.k_proj.bias" || s.hf_name == "model.norm.weight";
  });
  for (auto& s : slots) {
    if (s.hf_name == "model.layers.0.mlp.up_proj.weight") {
      s.shape = {24, 17};
    }
  }
  temp_dir dir("wmap_bad");
  write_checkpoint(dir / "model.safetensors", slots,
                   {"model.layers.0.self_attn.extra.weight", "vision.tower", "model.layers.0.self_attn.rotary_emb.inv_freq"});
  const auto ckpt = io::checkpoint::open(dir.path());
  const auto msg  = format_error_message([&] { (void)m::map_weights(cfg, ckpt); });
  INFO(msg);
  CHECK(contains(msg, (dir / "model.safetensors").string() + ": tensors: checkpoint does not match the llama config"));
  CHECK(contains(msg, "2 missing: model.norm.weight, model.layers.1.self_attn.k_proj.bias"));
  CHECK(contains(msg, "2 unexpected: model.layers.0.self_attn.extra.weight, vision.tower"));
  CHECK(contains(msg, "1 mismatched: model.layers.0.mlp.up_proj.weight is [24, 17], config implies [24, 16]"));
  CHECK_FALSE(contains(msg, "inv_freq"));  // a known buffer, ignored
}

TEST_CASE("mapping: lm_head is required when untied and optional when tied; integer weights are rejected") {
  auto j   = small_config("llama");
  auto cfg = m::parse_config(j, "config.json");
  temp_dir dir("wmap_head");
  auto slots = m::expected_weights(cfg, "model.");
  std::erase_if(slots, [](const m::weight_slot& s) { return s.role == m::tensor_role::lm_head; });
  write_checkpoint(dir / "model.safetensors", slots);
  {
    const auto ckpt = io::checkpoint::open(dir.path());
    CHECK(contains(format_error_message([&] { (void)m::map_weights(cfg, ckpt); }), "1 missing: lm_head.weight"));
    j["tie_word_embeddings"] = true;
    const auto tied          = m::map_weights(m::parse_config(j, "config.json"), ckpt);
    CHECK(tied.lm_head_tied());
  }
  // A tied model that still stores lm_head maps it.
  write_checkpoint(dir / "model.safetensors", m::expected_weights(cfg, "model."));
  {
    const auto ckpt = io::checkpoint::open(dir.path());
    const auto map  = m::map_weights(m::parse_config(j, "config.json"), ckpt);
    CHECK_FALSE(map.lm_head_tied());
  }
  // Integer data where floats are expected.
  std::vector<std::byte> b(static_cast<std::size_t>(cfg.hidden_size) * 4);
  std::vector<io::tensor_to_write> ts = {{"model.norm.weight", qprob::dtype::i32, {cfg.hidden_size}, b}};
  io::write_safetensors(dir / "model.safetensors", ts);
  const auto ckpt = io::checkpoint::open(dir.path());
  CHECK(contains(format_error_message([&] { (void)m::map_weights(cfg, ckpt); }),
                 "model.norm.weight has dtype I32, expected a floating type"));
}

TEST_CASE("mapping works across shards of a sharded checkpoint") {
  const auto cfg   = m::parse_config(small_config("phi"), "config.json");
  const auto slots = m::expected_weights(cfg, "model.");
  std::vector<std::vector<std::byte>> storage;
  std::vector<io::tensor_to_write> ts;
  storage.reserve(slots.size());
  for (const auto& s : slots) {
    std::int64_t n = 1;
    for (auto d : s.shape) {
      n *= d;
    }
    storage.emplace_back(static_cast<std::size_t>(n * 4));
    ts.push_back({s.hf_name, qprob::dtype::f32, s.shape, storage.back()});
  }
  temp_dir dir("wmap_shard");
  io::write_sharded_safetensors(dir.path(), ts, 2000);
  const auto ckpt = io::checkpoint::open(dir.path());
  CHECK(ckpt.shards().size() > 1);
  const auto map = m::map_weights(cfg, ckpt);
  CHECK(map.find(m::tensor_role::lm_head, m::tensor_part::bias) != nullptr);
  CHECK(map.find(m::tensor_role::q_norm, m::tensor_part::weight, 1) != nullptr);
}

TEST_CASE("bloom fused query_key_value splits per head, not in thirds") {
  constexpr std::int64_t heads = 3, hd = 2, cols = 5;
  // Tag each fused row with (head, which, d) so the split is checked element by element.
  std::vector<int> fused(static_cast<std::size_t>(3 * heads * hd * cols));
  for (std::int64_t h = 0; h < heads; ++h) {
    for (int which = 0; which < 3; ++which) {
      for (std::int64_t d = 0; d < hd; ++d) {
        for (std::int64_t c = 0; c < cols; ++c) {
          fused[static_cast<std::size_t>(((h * 3 + which) * hd + d) * cols + c)] =
              static_cast<int>(1000 * which + 100 * h + 10 * d + c);
        }
      }
    }
  }
  std::vector<int> q(static_cast<std::size_t>(heads * hd * cols)), k(q.size()), v(q.size());
  m::split_bloom_qkv<int>(fused, heads, hd, cols, q, k, v);
  for (std::int64_t h = 0; h < heads; ++h) {
    for (std::int64_t d = 0; d < hd; ++d) {
      for (std::int64_t c = 0; c < cols; ++c) {
        const auto i = static_cast<std::size_t>((h * hd + d) * cols + c);
        CHECK(q[i] == 0 + 100 * h + 10 * d + c);
        CHECK(k[i] == 1000 + 100 * h + 10 * d + c);
        CHECK(v[i] == 2000 + 100 * h + 10 * d + c);
      }
    }
  }
  CHECK(m::bloom_qkv_row(1, 2, 1, hd) == (2 * 3 + 1) * hd + 1);
  std::vector<int> wrong(q.size() + 1);
  CHECK_THROWS_AS(m::split_bloom_qkv<int>(fused, heads, hd, cols, wrong, k, v), qprob::invalid_argument);
  // fuse_bloom_qkv is its inverse: every tagged element back in its fused place.
  CHECK(m::fuse_bloom_qkv<int>(q, k, v, heads, hd, cols) == fused);
  CHECK_THROWS_AS((void)m::fuse_bloom_qkv<int>(wrong, k, v, heads, hd, cols), qprob::invalid_argument);
}
