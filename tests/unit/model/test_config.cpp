// SPDX-License-Identifier: Apache-2.0
// config.json parsing: every family in transformers 4.x and 5.x spellings (fixtures written here, shaped like
// the published configs), rope scaling variants, and one check per malformed or unsupported field.
#include <qprob/model/config.hpp>

#include <doctest/doctest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "io_test_util.hpp"
#include "support.hpp"

namespace m = qprob::model;
using nlohmann::json;
using qprob::test::contains;
using qprob::test::format_error_message;

namespace {

// Published configs (values as on the Hugging Face hub), in the 4.x spelling.
json llama2_7b() {
  return json::parse(R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
    "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "hidden_act": "silu",
    "rope_theta": 10000.0, "rope_scaling": null, "tie_word_embeddings": false, "bos_token_id": 1,
    "eos_token_id": 2, "pad_token_id": 0, "torch_dtype": "float16", "attention_bias": false})");
}
json llama31_8b() {
  return json::parse(R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "hidden_act": "silu",
    "rope_theta": 500000.0, "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192, "rope_type": "llama3"}, "tie_word_embeddings": false,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "torch_dtype": "bfloat16", "mlp_bias": false})");
}
json mistral_7b() {
  return json::parse(R"({"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "vocab_size": 32000, "max_position_embeddings": 32768, "rms_norm_eps": 1e-05, "hidden_act": "silu",
    "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": false, "bos_token_id": 1,
    "eos_token_id": 2, "torch_dtype": "bfloat16"})");
}
json opt_350m() {
  return json::parse(R"({"architectures": ["OPTForCausalLM"], "model_type": "opt", "hidden_size": 1024,
    "ffn_dim": 4096, "num_hidden_layers": 24, "num_attention_heads": 16, "vocab_size": 50272,
    "max_position_embeddings": 2048, "do_layer_norm_before": false, "word_embed_proj_dim": 512,
    "activation_function": "relu", "enable_bias": true, "layer_norm_elementwise_affine": true,
    "_remove_final_layer_norm": false, "bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 1,
    "torch_dtype": "float16"})");
}
json opt_125m() {
  return json::parse(R"({"architectures": ["OPTForCausalLM"], "model_type": "opt", "hidden_size": 768,
    "ffn_dim": 3072, "num_hidden_layers": 12, "num_attention_heads": 12, "vocab_size": 50272,
    "max_position_embeddings": 2048, "do_layer_norm_before": true, "word_embed_proj_dim": 768,
    "activation_function": "relu", "enable_bias": true, "bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 1,
    "torch_dtype": "float16"})");
}
json bloom_560m() {
  return json::parse(R"({"architectures": ["BloomForCausalLM"], "model_type": "bloom", "hidden_size": 1024,
    "n_head": 16, "n_layer": 24, "vocab_size": 250880, "layer_norm_epsilon": 1e-05,
    "apply_residual_connection_post_layernorm": false, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3,
    "n_inner": null, "offset_alibi": 100, "seq_length": 2048, "slow_but_exact": false})");
}
json phi_2() {
  return json::parse(R"({"architectures": ["PhiForCausalLM"], "model_type": "phi", "hidden_size": 2560,
    "intermediate_size": 10240, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
    "vocab_size": 51200, "max_position_embeddings": 2048, "layer_norm_eps": 1e-05, "hidden_act": "gelu_new",
    "partial_rotary_factor": 0.4, "rope_theta": 10000.0, "rope_scaling": null, "qk_layernorm": false,
    "tie_word_embeddings": false, "bos_token_id": 50256, "eos_token_id": 50256, "torch_dtype": "float16"})");
}
json qwen2_05b() {
  return json::parse(R"({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
    "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
    "vocab_size": 151936, "max_position_embeddings": 131072, "rms_norm_eps": 1e-06, "hidden_act": "silu",
    "rope_theta": 1000000.0, "sliding_window": 131072, "use_sliding_window": false, "max_window_layers": 24,
    "tie_word_embeddings": true, "bos_token_id": 151643, "eos_token_id": 151643, "torch_dtype": "bfloat16"})");
}

/// The transformers 5.x spelling of a 4.x config: "dtype", and rotary settings under "rope_parameters".
json to_v5(json j) {
  if (j.contains("torch_dtype")) {
    j["dtype"] = j["torch_dtype"];
    j.erase("torch_dtype");
  }
  if (j.contains("rope_theta")) {
    json rp = j.contains("rope_scaling") && j["rope_scaling"].is_object() ? j["rope_scaling"] : json::object();
    rp["rope_theta"] = j["rope_theta"];
    if (rp.contains("type")) {  // 5.x writes only rope_type
      rp["rope_type"] = rp["type"];
      rp.erase("type");
    }
    if (!rp.contains("rope_type")) {
      rp["rope_type"] = "default";
    }
    if (j.contains("partial_rotary_factor")) {
      rp["partial_rotary_factor"] = j["partial_rotary_factor"];
      j.erase("partial_rotary_factor");
    }
    j.erase("rope_theta");
    j.erase("rope_scaling");
    j["rope_parameters"] = rp;
  }
  return j;
}

/// Parses both spellings and requires identical results; returns the 4.x one.
m::model_config parse_both(const json& v4) {
  const auto a = m::parse_config(v4, "config.json");
  const auto b = m::parse_config(to_v5(v4), "config.json");
  CHECK(m::describe(a) == m::describe(b));
  CHECK(a.positions.rotary.scaling.factor == b.positions.rotary.scaling.factor);
  return a;
}

std::string error_for(const json& j) {
  return format_error_message([&] { (void)m::parse_config(j, "dir/config.json"); });
}

}  // namespace

TEST_CASE("llama-2-7b config in 4.x and 5.x spellings") {
  const auto c = parse_both(llama2_7b());
  CHECK(c.model_family == m::family::llama);
  CHECK(c.hidden_size == 4096);
  CHECK(c.num_layers == 32);
  CHECK(c.num_heads == 32);
  CHECK(c.num_kv_heads == 32);
  CHECK(c.head_dim == 128);
  CHECK(c.intermediate_size == 11008);
  CHECK(c.vocab_size == 32000);
  CHECK(c.max_positions == 4096);
  CHECK(c.norm == m::norm_kind::rms_norm);
  CHECK(c.norm_eps == 1e-5);
  CHECK(c.act == m::activation::silu);
  CHECK(c.gated_mlp);
  CHECK(c.positions.kind == m::position_kind::rotary);
  CHECK(c.positions.rotary.theta == 10000.0);
  CHECK(c.positions.rotary.rotary_dim == 128);
  CHECK(c.positions.rotary.scaling.kind == m::rope_scaling_kind::none);
  CHECK_FALSE(c.tie_word_embeddings);
  CHECK_FALSE(c.bias.q);
  CHECK_FALSE(c.bias.mlp);
  CHECK(c.bos_token_ids == std::vector<std::int64_t>{1});
  CHECK(c.eos_token_ids == std::vector<std::int64_t>{2});
  CHECK(c.pad_token_id == 0);
  CHECK(c.dtype == qprob::dtype::f16);
  CHECK_FALSE(c.sliding_window.has_value());
}

TEST_CASE("llama-3.1 config: grouped-query heads, llama3 rope scaling and several eos ids") {
  const auto c = parse_both(llama31_8b());
  CHECK(c.num_kv_heads == 8);
  CHECK(c.positions.rotary.theta == 500000.0);
  const auto& s = c.positions.rotary.scaling;
  CHECK(s.kind == m::rope_scaling_kind::llama3);
  CHECK(s.factor == 8.0);
  CHECK(s.low_freq_factor == 1.0);
  CHECK(s.high_freq_factor == 4.0);
  CHECK(s.original_max_positions == 8192);
  CHECK(c.eos_token_ids == std::vector<std::int64_t>{128001, 128008, 128009});
  CHECK(c.dtype == qprob::dtype::bf16);
}

TEST_CASE("llama rope scaling: linear, dynamic and yarn, and the legacy type key") {
  auto j            = llama2_7b();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  auto c            = parse_both(j);
  CHECK(c.positions.rotary.scaling.kind == m::rope_scaling_kind::linear);
  CHECK(c.positions.rotary.scaling.factor == 2.0);
  j["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 4.0}};
  CHECK(parse_both(j).positions.rotary.scaling.kind == m::rope_scaling_kind::dynamic);
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 4096},
                       {"beta_fast", 16.0}, {"attention_factor", 1.1}};
  c = parse_both(j);
  CHECK(c.positions.rotary.scaling.kind == m::rope_scaling_kind::yarn);
  CHECK(c.positions.rotary.scaling.beta_fast == 16.0);
  CHECK(c.positions.rotary.scaling.beta_slow == 1.0);
  CHECK(c.positions.rotary.scaling.attention_factor == 1.1);
  CHECK(c.positions.rotary.scaling.original_max_positions == 4096);
}

TEST_CASE("mistral config: sliding window on every layer, explicit head_dim honoured") {
  auto c = parse_both(mistral_7b());
  CHECK(c.model_family == m::family::mistral);
  CHECK(c.sliding_window == 4096);
  REQUIRE(c.layer_sliding.size() == 32);
  CHECK(std::all_of(c.layer_sliding.begin(), c.layer_sliding.end(), [](bool b) { return b; }));
  CHECK(c.head_dim == 128);
  auto j        = mistral_7b();
  j["head_dim"] = 96;  // Mistral-Nemo style: head_dim independent of hidden/heads
  CHECK(m::parse_config(j, "config.json").head_dim == 96);
  j                   = mistral_7b();
  j["sliding_window"] = nullptr;  // Mistral v0.2+ has no window
  c                   = m::parse_config(j, "config.json");
  CHECK_FALSE(c.sliding_window.has_value());
  CHECK(std::none_of(c.layer_sliding.begin(), c.layer_sliding.end(), [](bool b) { return b; }));
}

TEST_CASE("opt-350m config: post-norm, projected embeddings, learned positions with offset 2") {
  const auto c = parse_both(opt_350m());
  CHECK(c.model_family == m::family::opt);
  CHECK(c.hidden_size == 1024);
  CHECK(c.word_embed_proj_dim == 512);
  CHECK(c.intermediate_size == 4096);
  CHECK(c.num_kv_heads == 16);
  CHECK(c.head_dim == 64);
  CHECK_FALSE(c.pre_norm);
  CHECK_FALSE(c.final_norm);
  CHECK(c.norm == m::norm_kind::layer_norm);
  CHECK(c.norm_bias);
  CHECK(c.norm_eps == 1e-5);
  CHECK(c.act == m::activation::relu);
  CHECK_FALSE(c.gated_mlp);
  CHECK(c.positions.kind == m::position_kind::learned);
  CHECK(c.positions.learned_offset == 2);
  CHECK(c.bias.q);
  CHECK(c.bias.o);
  CHECK(c.bias.mlp);
  CHECK_FALSE(c.bias.lm_head);
  CHECK(c.tie_word_embeddings);
  CHECK(c.pad_token_id == 1);
}

TEST_CASE("opt-125m config: pre-norm with a final layer norm; enable_bias and _remove_final_layer_norm") {
  auto c = parse_both(opt_125m());
  CHECK(c.pre_norm);
  CHECK(c.final_norm);
  CHECK(c.word_embed_proj_dim == 768);
  auto j                        = opt_125m();
  j["enable_bias"]              = false;
  j["_remove_final_layer_norm"] = true;
  c                             = m::parse_config(j, "config.json");
  CHECK_FALSE(c.bias.q);
  CHECK_FALSE(c.bias.mlp);
  CHECK_FALSE(c.final_norm);
}

TEST_CASE("bloom-560m config: n_head and n_layer aliases, ALiBi, embedding layer norm") {
  const auto c = parse_both(bloom_560m());
  CHECK(c.model_family == m::family::bloom);
  CHECK(c.hidden_size == 1024);
  CHECK(c.num_layers == 24);
  CHECK(c.num_heads == 16);
  CHECK(c.head_dim == 64);
  CHECK(c.intermediate_size == 4096);
  CHECK(c.positions.kind == m::position_kind::alibi);
  CHECK(c.max_positions == 0);
  CHECK(c.embedding_norm);
  CHECK(c.act == m::activation::gelu_tanh);
  CHECK(c.tie_word_embeddings);
  CHECK_FALSE(c.residual_post_norm);
  CHECK_FALSE(c.dtype.has_value());
  // The transformers spellings of the same fields (attribute_map) and the legacy n_embed.
  auto j = bloom_560m();
  j.erase("n_head");
  j.erase("n_layer");
  j.erase("hidden_size");
  j["num_attention_heads"] = 16;
  j["num_hidden_layers"]   = 24;
  j["n_embed"]             = 1024;
  CHECK(m::describe(m::parse_config(j, "config.json")) == m::describe(c));
  // Both spellings present and different: an error naming both.
  j["n_head"] = 8;
  const auto msg = error_for(j);
  CHECK(contains(msg, "dir/config.json: num_attention_heads: conflicts with \"n_head\""));
}

TEST_CASE("phi-2 config: partial rotary 0.4, parallel block, biases everywhere incl. lm_head") {
  const auto c = parse_both(phi_2());
  CHECK(c.model_family == m::family::phi);
  CHECK(c.head_dim == 80);
  CHECK(c.positions.rotary.partial_rotary_factor == 0.4);
  CHECK(c.positions.rotary.rotary_dim == 32);
  CHECK(c.parallel_attn_mlp);
  CHECK(c.norm == m::norm_kind::layer_norm);
  CHECK(c.act == m::activation::gelu_tanh);
  CHECK(c.activation_name == "gelu_new");
  CHECK(c.bias.q);
  CHECK(c.bias.o);
  CHECK(c.bias.mlp);
  CHECK(c.bias.lm_head);
  CHECK_FALSE(c.tie_word_embeddings);
  CHECK(c.bos_token_ids == std::vector<std::int64_t>{50256});
}

TEST_CASE("qwen2-0.5b config: q/k/v bias only, tied embeddings, window off unless use_sliding_window") {
  auto c = parse_both(qwen2_05b());
  CHECK(c.model_family == m::family::qwen2);
  CHECK(c.head_dim == 64);
  CHECK(c.num_kv_heads == 2);
  CHECK(c.bias.q);
  CHECK(c.bias.k);
  CHECK(c.bias.v);
  CHECK_FALSE(c.bias.o);
  CHECK_FALSE(c.bias.mlp);
  CHECK(c.tie_word_embeddings);
  CHECK(c.positions.rotary.theta == 1e6);
  CHECK(c.norm_eps == 1e-6);
  CHECK_FALSE(c.sliding_window.has_value());
  auto j                  = qwen2_05b();
  j["use_sliding_window"] = true;
  j["sliding_window"]     = 4096;
  j["max_window_layers"]  = 20;
  c                       = m::parse_config(j, "config.json");
  CHECK(c.sliding_window == 4096);
  CHECK_FALSE(c.layer_sliding[19]);
  CHECK(c.layer_sliding[20]);
  CHECK(c.layer_sliding[23]);
  // An explicit layer_types list (newer transformers) wins.
  j = qwen2_05b();
  j["num_hidden_layers"] = 2;
  j["layer_types"]       = {"full_attention", "sliding_attention"};
  c                      = m::parse_config(j, "config.json");
  CHECK(c.layer_sliding == std::vector<bool>{false, true});
  CHECK(c.sliding_window == 131072);
}

TEST_CASE("load_config reads a directory's config.json and names it in errors") {
  qprob::test::temp_dir dir("cfg");
  qprob::test::write_bytes(dir / "config.json", phi_2().dump());
  CHECK(m::load_config(dir.path()).model_family == m::family::phi);
  qprob::test::write_bytes(dir / "config.json", "{\"model_type\": ");
  const auto msg = format_error_message([&] { (void)m::load_config(dir.path()); });
  CHECK(contains(msg, (dir / "config.json").string() + ": malformed JSON"));
  const auto missing = format_error_message([&] { (void)m::load_config(dir / "nope"); });
  CHECK(contains(missing, "cannot open"));
}

TEST_CASE("real models: shared configs parse as llama") {
  for (const std::string model : {"stories260K", "babyllama-tok105", "babyllama-tok361"}) {
    std::string reason;
    const auto dir = qprob::test::shared_path("models/" + model, &reason);
    if (!dir) {
      MESSAGE(reason);
      continue;
    }
    const auto c = m::load_config(*dir);
    CHECK(c.model_family == m::family::llama);
    CHECK(c.num_layers == 5);
    CHECK(c.num_heads == 8);
    CHECK(c.num_kv_heads == 4);
    CHECK(c.tie_word_embeddings);
    CHECK(c.dtype == qprob::dtype::f32);
  }
}

// ---- malformed and unsupported ----------------------------------------------------------------------------

TEST_CASE("unsupported: unknown model_type and mismatched architectures") {
  auto j          = llama2_7b();
  j["model_type"] = "gpt_neox";
  CHECK(contains(error_for(j), "dir/config.json: model_type: unsupported model type \"gpt_neox\""));
  j = llama2_7b();
  j["architectures"] = {"LlamaForSequenceClassification"};
  CHECK(contains(error_for(j), "dir/config.json: architectures: unsupported architecture \"LlamaForSequenceClassification\""));
  j.erase("model_type");
  CHECK(contains(error_for(j), "dir/config.json: model_type: missing"));
  CHECK(contains(error_for(json::array()), "config must be a JSON object"));
}

TEST_CASE("malformed: missing required fields name the field") {
  for (const std::string field : {"hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"}) {
    auto j = llama2_7b();
    j.erase(field);
    CHECK(contains(error_for(j), "dir/config.json: " + field + ": missing (required)"));
  }
  auto j = opt_125m();
  j.erase("ffn_dim");
  CHECK(contains(error_for(j), "dir/config.json: ffn_dim: missing"));
  j = bloom_560m();
  j.erase("n_head");
  CHECK(contains(error_for(j), "dir/config.json: n_head: missing"));
}

TEST_CASE("malformed: wrong types and out-of-range values") {
  auto j           = llama2_7b();
  j["hidden_size"] = "4096";
  CHECK(contains(error_for(j), "hidden_size: expected an integer, got \"4096\""));
  j                = llama2_7b();
  j["hidden_size"] = -8;
  CHECK(contains(error_for(j), "hidden_size: expected an integer >= 1, got -8"));
  j                = llama2_7b();
  j["hidden_size"] = 4096.5;
  CHECK(contains(error_for(j), "hidden_size: expected an integer"));
  j                 = llama2_7b();
  j["rms_norm_eps"] = 0;
  CHECK(contains(error_for(j), "rms_norm_eps: expected a positive number"));
  j                        = llama2_7b();
  j["tie_word_embeddings"] = 1;
  CHECK(contains(error_for(j), "tie_word_embeddings: expected true or false"));
  j                        = llama2_7b();
  j["num_key_value_heads"] = 5;
  CHECK(contains(error_for(j), "num_key_value_heads: num_attention_heads=32 is not a multiple of num_key_value_heads=5"));
  j                        = llama2_7b();
  j["num_attention_heads"] = 48;
  j["num_key_value_heads"] = 48;
  CHECK(contains(error_for(j), "num_attention_heads: hidden_size=4096 is not a multiple"));
  j               = llama2_7b();
  j["hidden_act"] = "mish";
  CHECK(contains(error_for(j), "hidden_act: unsupported activation \"mish\""));
  j                 = llama2_7b();
  j["torch_dtype"]  = "int8";
  CHECK(contains(error_for(j), "torch_dtype: unsupported dtype \"int8\""));
  j                 = llama2_7b();
  j["eos_token_id"] = 32000;
  CHECK(contains(error_for(j), "eos_token_id: token id 32000 is outside vocab_size=32000"));
  j                 = llama2_7b();
  j["bos_token_id"] = "<s>";
  CHECK(contains(error_for(j), "bos_token_id: expected a non-negative token id"));
}

TEST_CASE("malformed: rope settings") {
  auto j            = llama2_7b();
  j["rope_scaling"] = {{"rope_type", "ntk-by-parts"}, {"factor", 2.0}};
  CHECK(contains(error_for(j), "rope_scaling.rope_type: unsupported rope type \"ntk-by-parts\""));
  j["rope_scaling"] = {{"rope_type", "linear"}};
  CHECK(contains(error_for(j), "rope_scaling.factor: missing"));
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0}};
  CHECK(contains(error_for(j), "rope_scaling.original_max_position_embeddings: missing"));
  j["rope_scaling"] = "linear";
  CHECK(contains(error_for(j), "rope_scaling: expected an object"));
  j                   = to_v5(llama2_7b());
  j["rope_scaling"]   = {{"rope_type", "linear"}, {"factor", 2.0}};
  CHECK(contains(error_for(j), "rope_scaling: given together with rope_parameters"));
  j                                   = to_v5(llama2_7b());
  j["rope_theta"]                     = 5.0;  // top-level and rope_parameters disagree
  CHECK(contains(error_for(j), "rope_parameters.rope_theta: conflicts with top-level rope_theta"));
  j                          = phi_2();
  j["partial_rotary_factor"] = 1.5;
  CHECK(contains(error_for(j), "partial_rotary_factor: must be in (0, 1]"));
  j                          = phi_2();
  j["partial_rotary_factor"] = 0.01;  // 80 * 0.01 = 0 channels
  CHECK(contains(error_for(j), "partial_rotary_factor: head_dim 80"));
}

TEST_CASE("malformed: family-specific fields") {
  auto j       = bloom_560m();
  j["n_inner"] = 1000;
  CHECK(contains(error_for(j), "n_inner: BLOOM's MLP width is 4 x hidden_size"));
  j                                  = opt_125m();
  j["layer_norm_elementwise_affine"] = false;
  CHECK(contains(error_for(j), "layer_norm_elementwise_affine"));
  j                = qwen2_05b();
  j["layer_types"] = {"full_attention"};
  CHECK(contains(error_for(j), "layer_types: expected a list of num_hidden_layers=24 strings"));
}
