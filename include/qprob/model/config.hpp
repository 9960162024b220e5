// SPDX-License-Identifier: Apache-2.0
#pragma once
// config.json -> a typed description of a decoder-only model (qprob::model::model_config) for the families
// qprob supports: llama, mistral, opt, bloom, phi (Phi-2) and qwen2. Both transformers 4.x spellings
// (torch_dtype, top-level rope_theta / rope_scaling / partial_rotary_factor) and 5.x spellings (dtype,
// rope_parameters) are accepted. Missing or invalid fields raise format_error(config file, field, problem).

#include <qprob/core/dtype.hpp>
#include <qprob/core/error.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace qprob::model {

enum class family : std::uint8_t { llama, mistral, opt, bloom, phi, qwen2 };
enum class norm_kind : std::uint8_t { rms_norm, layer_norm };
/// gelu_erf is exact GELU ("gelu"); gelu_tanh is the tanh approximation ("gelu_new", "gelu_pytorch_tanh",
/// "gelu_fast", BLOOM's bloom_gelu).
enum class activation : std::uint8_t { silu, gelu_erf, gelu_tanh, relu };
enum class position_kind : std::uint8_t { rotary, alibi, learned };
enum class rope_scaling_kind : std::uint8_t { none, linear, dynamic, llama3, yarn, longrope };

constexpr std::string_view to_string(family f) noexcept {
  switch (f) {
    case family::llama: return "llama";
    case family::mistral: return "mistral";
    case family::opt: return "opt";
    case family::bloom: return "bloom";
    case family::phi: return "phi";
    case family::qwen2: return "qwen2";
  }
  return "?";
}
constexpr std::string_view to_string(norm_kind n) noexcept { return n == norm_kind::rms_norm ? "rms_norm" : "layer_norm"; }
constexpr std::string_view to_string(activation a) noexcept {
  switch (a) {
    case activation::silu: return "silu";
    case activation::gelu_erf: return "gelu_erf";
    case activation::gelu_tanh: return "gelu_tanh";
    case activation::relu: return "relu";
  }
  return "?";
}
constexpr std::string_view to_string(position_kind p) noexcept {
  switch (p) {
    case position_kind::rotary: return "rotary";
    case position_kind::alibi: return "alibi";
    case position_kind::learned: return "learned";
  }
  return "?";
}
constexpr std::string_view to_string(rope_scaling_kind k) noexcept {
  switch (k) {
    case rope_scaling_kind::none: return "none";
    case rope_scaling_kind::linear: return "linear";
    case rope_scaling_kind::dynamic: return "dynamic";
    case rope_scaling_kind::llama3: return "llama3";
    case rope_scaling_kind::yarn: return "yarn";
    case rope_scaling_kind::longrope: return "longrope";
  }
  return "?";
}

/// RoPE frequency scaling (transformers' rope_type). Fields not used by a kind keep their defaults.
struct rope_scaling {
  rope_scaling_kind kind = rope_scaling_kind::none;
  double factor          = 1.0;  // linear, dynamic, llama3, yarn
  // llama3: wavelengths longer than original_max / low_freq_factor are divided by factor, shorter than
  // original_max / high_freq_factor are kept, and the band between is interpolated smoothly.
  double low_freq_factor                               = 1.0;
  double high_freq_factor                              = 4.0;
  std::optional<std::int64_t> original_max_positions;  // llama3, yarn, dynamic (if given)
  // yarn
  std::optional<double> attention_factor;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
};

/// Rotary embedding of the first `rotary_dim` channels of each head (GPT-NeoX "rotate_half" pairing: channel
/// i with i + rotary_dim/2), as all six families do in transformers.
struct rotary_config {
  double theta                  = 10000.0;
  double partial_rotary_factor  = 1.0;
  std::int64_t rotary_dim       = 0;
  rope_scaling scaling;
};

struct positions_config {
  position_kind kind = position_kind::rotary;
  rotary_config rotary;           // kind == rotary
  std::int64_t learned_offset = 0;  // kind == learned: OPT's embedding table has 2 extra leading rows
};

/// Which linear layers carry a bias.
struct bias_config {
  bool q = false, k = false, v = false, o = false;
  bool mlp     = false;  // gate/up/down or fc1/fc2
  bool lm_head = false;
};

struct model_config {
  family model_family = family::llama;
  std::string model_type;
  std::vector<std::string> architectures;

  std::int64_t hidden_size         = 0;
  std::int64_t num_layers          = 0;
  std::int64_t num_heads           = 0;
  std::int64_t num_kv_heads        = 0;
  std::int64_t head_dim            = 0;
  std::int64_t intermediate_size   = 0;
  std::int64_t vocab_size          = 0;
  std::int64_t max_positions       = 0;  // 0 when the model has no limit of its own (ALiBi)
  std::int64_t word_embed_proj_dim = 0;  // embedding width; == hidden_size except OPT-350m

  norm_kind norm    = norm_kind::rms_norm;
  double norm_eps   = 1e-6;
  bool norm_bias    = false;  // layer norms with an additive bias
  activation act    = activation::silu;
  std::string activation_name;  // as spelled in config.json
  bool gated_mlp    = true;     // down(act(gate(x)) * up(x)) vs fc2(act(fc1(x)))

  positions_config positions;
  bias_config bias;
  bool tie_word_embeddings = false;

  // Block structure.
  bool pre_norm              = true;   // OPT: do_layer_norm_before
  bool final_norm            = true;   // OPT-350m has none
  bool embedding_norm        = false;  // BLOOM: word_embeddings_layernorm
  bool parallel_attn_mlp     = false;  // Phi: x + attn(ln(x)) + mlp(ln(x))
  bool residual_post_norm    = false;  // BLOOM: apply_residual_connection_post_layernorm
  bool qk_layernorm          = false;  // Phi option

  // Attention window: layers with layer_sliding[i] attend to at most sliding_window previous tokens.
  std::optional<std::int64_t> sliding_window;
  std::vector<bool> layer_sliding;

  std::vector<std::int64_t> bos_token_ids;
  std::vector<std::int64_t> eos_token_ids;
  std::optional<std::int64_t> pad_token_id;
  std::optional<qprob::dtype> dtype;  // "dtype" (5.x) or "torch_dtype" (4.x), if given
};

namespace detail {

/// Reads typed fields of one JSON object, naming the file and the field in every error.
class field_reader {
public:
  field_reader(const nlohmann::json& j, std::string file, std::string prefix = {})
      : j_(j), file_(std::move(file)), prefix_(std::move(prefix)) {}

  [[nodiscard]] const std::string& file() const noexcept { return file_; }
  [[nodiscard]] std::string name(std::string_view key) const { return prefix_ + std::string(key); }

  /// The value of the first present (non-null) key, or nullptr. Two present keys that disagree are an error.
  [[nodiscard]] const nlohmann::json* find(std::initializer_list<std::string_view> keys) const {
    const nlohmann::json* found = nullptr;
    std::string_view found_key;
    for (auto key : keys) {
      const auto it = j_.find(std::string(key));
      if (it == j_.end() || it->is_null()) {
        continue;
      }
      if (found != nullptr && *found != *it) {
        fail(key, "conflicts with \"" + std::string(found_key) + "\" (" + found->dump() + " vs " + it->dump() + ")");
      }
      if (found == nullptr) {
        found     = &*it;
        found_key = key;
      }
    }
    return found;
  }

  [[noreturn]] void fail(std::string_view key, const std::string& problem) const {
    throw format_error(file_, name(key), problem);
  }

  std::optional<std::int64_t> opt_int(std::initializer_list<std::string_view> keys, std::int64_t min_value) const {
    const auto* v = find(keys);
    if (v == nullptr) {
      return std::nullopt;
    }
    const auto key = *keys.begin();
    if (!v->is_number_integer() && !(v->is_number_float() && std::floor(v->get<double>()) == v->get<double>() &&
                                     std::abs(v->get<double>()) < 9.0e15)) {
      fail(key, "expected an integer, got " + v->dump());
    }
    const auto x = v->is_number_integer() ? v->get<std::int64_t>() : static_cast<std::int64_t>(v->get<double>());
    if (v->is_number_unsigned() && v->get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX)) {
      fail(key, "value " + v->dump() + " is too large");
    }
    if (x < min_value) {
      fail(key, "expected an integer >= " + std::to_string(min_value) + ", got " + v->dump());
    }
    return x;
  }
  std::int64_t req_int(std::initializer_list<std::string_view> keys, std::int64_t min_value) const {
    auto v = opt_int(keys, min_value);
    if (!v) {
      fail(*keys.begin(), "missing (required)");
    }
    return *v;
  }
  std::int64_t int_or(std::initializer_list<std::string_view> keys, std::int64_t def, std::int64_t min_value) const {
    return opt_int(keys, min_value).value_or(def);
  }

  std::optional<double> opt_double(std::initializer_list<std::string_view> keys) const {
    const auto* v = find(keys);
    if (v == nullptr) {
      return std::nullopt;
    }
    if (!v->is_number()) {
      fail(*keys.begin(), "expected a number, got " + v->dump());
    }
    const double x = v->get<double>();
    if (!std::isfinite(x)) {
      fail(*keys.begin(), "expected a finite number, got " + v->dump());
    }
    return x;
  }
  /// A number > 0 (or >= 0 when allow_zero).
  double positive_or(std::initializer_list<std::string_view> keys, double def, bool allow_zero = false) const {
    const auto v = opt_double(keys);
    if (v && (*v < 0 || (*v == 0 && !allow_zero))) {
      fail(*keys.begin(), "expected a positive number, got " + std::to_string(*v));
    }
    return v.value_or(def);
  }

  bool bool_or(std::initializer_list<std::string_view> keys, bool def) const {
    const auto* v = find(keys);
    if (v == nullptr) {
      return def;
    }
    if (!v->is_boolean()) {
      fail(*keys.begin(), "expected true or false, got " + v->dump());
    }
    return v->get<bool>();
  }

  std::optional<std::string> opt_string(std::initializer_list<std::string_view> keys) const {
    const auto* v = find(keys);
    if (v == nullptr) {
      return std::nullopt;
    }
    if (!v->is_string()) {
      fail(*keys.begin(), "expected a string, got " + v->dump());
    }
    return v->get<std::string>();
  }

  /// A token id or a list of ids (Llama-3 has several eos ids).
  std::vector<std::int64_t> ids(std::string_view key) const {
    const auto* v = find({key});
    if (v == nullptr) {
      return {};
    }
    std::vector<std::int64_t> out;
    const auto one = [&](const nlohmann::json& x) {
      if (!x.is_number_integer() || x.get<std::int64_t>() < 0) {
        fail(key, "expected a non-negative token id or a list of them, got " + v->dump());
      }
      out.push_back(x.get<std::int64_t>());
    };
    if (v->is_array()) {
      for (const auto& x : *v) {
        one(x);
      }
    } else {
      one(*v);
    }
    return out;
  }

private:
  const nlohmann::json& j_;
  std::string file_;
  std::string prefix_;
};

inline activation parse_activation(const field_reader& r, std::string_view key, const std::string& name) {
  if (name == "silu" || name == "swish") {
    return activation::silu;
  }
  if (name == "gelu") {
    return activation::gelu_erf;
  }
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast" || name == "bloom_gelu") {
    return activation::gelu_tanh;
  }
  if (name == "relu") {
    return activation::relu;
  }
  r.fail(key, "unsupported activation \"" + name + "\" (supported: silu, swish, gelu, gelu_new, gelu_pytorch_tanh, "
                                                   "gelu_fast, relu)");
}

inline std::optional<qprob::dtype> parse_torch_dtype(const field_reader& r) {
  const auto s = r.opt_string({"dtype", "torch_dtype"});
  if (!s) {
    return std::nullopt;
  }
  std::string name = *s;
  if (name.starts_with("torch.")) {
    name = name.substr(6);
  }
  if (name == "float32" || name == "float") {
    return dtype::f32;
  }
  if (name == "float16" || name == "half") {
    return dtype::f16;
  }
  if (name == "bfloat16") {
    return dtype::bf16;
  }
  if (name == "float64" || name == "double") {
    return dtype::f64;
  }
  r.fail(r.find({"dtype"}) ? "dtype" : "torch_dtype", "unsupported dtype \"" + *s + "\"");
}

/// Rotary settings from either spelling: 4.x top-level rope_theta / rope_scaling / partial_rotary_factor, or
/// 5.x rope_parameters {rope_theta, rope_type, factor, partial_rotary_factor, ...}.
inline rotary_config parse_rotary(const nlohmann::json& j, const std::string& file, std::int64_t head_dim,
                                  double default_theta, double default_partial) {
  const field_reader top(j, file);
  rotary_config rc;
  const nlohmann::json* params = nullptr;
  std::string params_name;
  if (const auto* p = top.find({"rope_parameters"})) {
    params      = p;
    params_name = "rope_parameters";
  }
  if (const auto* p = top.find({"rope_scaling"})) {
    if (params != nullptr) {
      top.fail("rope_scaling", "given together with rope_parameters; use one spelling");
    }
    params      = p;
    params_name = "rope_scaling";
  }
  if (params != nullptr && !params->is_object()) {
    top.fail(params_name, "expected an object, got " + params->dump());
  }
  static const nlohmann::json empty = nlohmann::json::object();
  const field_reader sub(params != nullptr ? *params : empty, file, params_name + ".");

  // theta and the partial factor may be top level (4.x) or inside rope_parameters (5.x), not both differently.
  const auto pick = [&](std::string_view key, double def) {
    const auto a = top.opt_double({key});
    const auto b = sub.opt_double({key});
    if (a && b && *a != *b) {
      sub.fail(key, "conflicts with top-level " + std::string(key));
    }
    const auto v = b ? b : a;
    if (v && *v <= 0) {
      (b ? sub : top).fail(key, "expected a positive number");
    }
    return v.value_or(def);
  };
  rc.theta                 = pick("rope_theta", default_theta);
  rc.partial_rotary_factor = pick("partial_rotary_factor", default_partial);
  if (rc.partial_rotary_factor > 1.0) {
    top.fail("partial_rotary_factor", "must be in (0, 1], got " + std::to_string(rc.partial_rotary_factor));
  }
  rc.rotary_dim = static_cast<std::int64_t>(static_cast<double>(head_dim) * rc.partial_rotary_factor);
  if (rc.rotary_dim <= 0 || rc.rotary_dim % 2 != 0) {
    top.fail("partial_rotary_factor", "head_dim " + std::to_string(head_dim) + " x " +
                                          std::to_string(rc.partial_rotary_factor) + " = " + std::to_string(rc.rotary_dim) +
                                          " rotary channels; must be positive and even");
  }
  if (params == nullptr) {
    return rc;
  }
  auto type = sub.opt_string({"rope_type", "type"}).value_or("default");
  auto& s   = rc.scaling;
  if (type == "default") {
    s.kind = rope_scaling_kind::none;
    return rc;
  }
  if (type == "linear") {
    s.kind = rope_scaling_kind::linear;
  } else if (type == "dynamic") {
    s.kind = rope_scaling_kind::dynamic;
  } else if (type == "llama3") {
    s.kind = rope_scaling_kind::llama3;
  } else if (type == "yarn") {
    s.kind = rope_scaling_kind::yarn;
  } else if (type == "longrope") {
    s.kind = rope_scaling_kind::longrope;
  } else {
    sub.fail("rope_type", "unsupported rope type \"" + type + "\" (supported: default, linear, dynamic, llama3, yarn, longrope)");
  }
  const auto factor = sub.opt_double({"factor"});
  if (!factor && s.kind != rope_scaling_kind::longrope) {
    sub.fail("factor", "missing (required for rope type " + type + ")");
  }
  if (factor && *factor < 1.0 && s.kind != rope_scaling_kind::longrope) {
    sub.fail("factor", "must be >= 1, got " + std::to_string(*factor));
  }
  s.factor                 = factor.value_or(1.0);
  s.original_max_positions = sub.opt_int({"original_max_position_embeddings"}, 1);
  if (s.kind == rope_scaling_kind::llama3) {
    s.low_freq_factor  = sub.positive_or({"low_freq_factor"}, 0);
    s.high_freq_factor = sub.positive_or({"high_freq_factor"}, 0);
    if (!sub.opt_double({"low_freq_factor"})) {
      sub.fail("low_freq_factor", "missing (required for llama3)");
    }
    if (!sub.opt_double({"high_freq_factor"})) {
      sub.fail("high_freq_factor", "missing (required for llama3)");
    }
    if (!s.original_max_positions) {
      sub.fail("original_max_position_embeddings", "missing (required for llama3)");
    }
    if (s.high_freq_factor <= s.low_freq_factor) {
      sub.fail("high_freq_factor", "must be greater than low_freq_factor");
    }
  }
  if (s.kind == rope_scaling_kind::yarn) {
    s.attention_factor = sub.opt_double({"attention_factor"});
    s.beta_fast        = sub.positive_or({"beta_fast"}, 32.0);
    s.beta_slow        = sub.positive_or({"beta_slow"}, 1.0);
  }
  return rc;
}

/// Sliding-window layout: Mistral applies the window to every layer; Qwen2 to layers >= max_window_layers when
/// use_sliding_window; an explicit layer_types list (newer transformers) wins.
inline void parse_sliding(model_config& c, const field_reader& r, bool use_window, std::int64_t first_window_layer) {
  const auto window = r.opt_int({"sliding_window"}, 1);
  c.layer_sliding.assign(static_cast<std::size_t>(c.num_layers), false);
  if (const auto* types = r.find({"layer_types"})) {
    if (!types->is_array() || static_cast<std::int64_t>(types->size()) != c.num_layers) {
      r.fail("layer_types", "expected a list of num_hidden_layers=" + std::to_string(c.num_layers) + " strings");
    }
    for (std::size_t i = 0; i < types->size(); ++i) {
      const auto& t = (*types)[i];
      if (t == "sliding_attention") {
        c.layer_sliding[i] = true;
      } else if (t != "full_attention") {
        r.fail("layer_types", "entry " + std::to_string(i) + " must be \"full_attention\" or \"sliding_attention\", got " + t.dump());
      }
    }
    const bool any = std::find(c.layer_sliding.begin(), c.layer_sliding.end(), true) != c.layer_sliding.end();
    if (any && !window) {
      r.fail("sliding_window", "missing although layer_types has sliding_attention layers");
    }
    if (any) {
      c.sliding_window = window;
    }
    return;
  }
  if (use_window && window) {
    c.sliding_window = window;
    for (std::int64_t i = first_window_layer; i < c.num_layers; ++i) {
      c.layer_sliding[static_cast<std::size_t>(i)] = true;
    }
  }
}

inline void finish_heads(model_config& c, const field_reader& r, bool allow_head_dim_key) {
  c.num_kv_heads = r.int_or({"num_key_value_heads"}, c.num_heads, 1);
  if (c.num_heads % c.num_kv_heads != 0) {
    r.fail("num_key_value_heads", "num_attention_heads=" + std::to_string(c.num_heads) +
                                      " is not a multiple of num_key_value_heads=" + std::to_string(c.num_kv_heads));
  }
  const auto explicit_hd = allow_head_dim_key ? r.opt_int({"head_dim"}, 1) : std::nullopt;
  if (explicit_hd) {
    c.head_dim = *explicit_hd;
  } else {
    if (c.hidden_size % c.num_heads != 0) {
      r.fail("num_attention_heads", "hidden_size=" + std::to_string(c.hidden_size) +
                                        " is not a multiple of num_attention_heads=" + std::to_string(c.num_heads));
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
}

inline void common_ids(model_config& c, const field_reader& r) {
  c.bos_token_ids = r.ids("bos_token_id");
  c.eos_token_ids = r.ids("eos_token_id");
  if (const auto pad = r.opt_int({"pad_token_id"}, 0)) {
    c.pad_token_id = pad;
  }
  c.dtype = parse_torch_dtype(r);
  if (const auto* a = r.find({"architectures"})) {
    if (!a->is_array()) {
      r.fail("architectures", "expected a list of strings, got " + a->dump());
    }
    for (const auto& x : *a) {
      if (!x.is_string()) {
        r.fail("architectures", "expected a list of strings, got " + a->dump());
      }
      c.architectures.push_back(x.get<std::string>());
    }
  }
}

// ---- per family -----------------------------------------------------------------------------------------

/// llama, mistral and qwen2 share one block: RMSNorm, rotary, SwiGLU MLP.
inline void parse_llama_like(model_config& c, const nlohmann::json& j, const field_reader& r) {
  c.hidden_size       = r.req_int({"hidden_size"}, 1);
  c.num_layers        = r.req_int({"num_hidden_layers"}, 1);
  c.num_heads         = r.req_int({"num_attention_heads"}, 1);
  c.intermediate_size = r.req_int({"intermediate_size"}, 1);
  c.vocab_size        = r.req_int({"vocab_size"}, 1);
  const std::int64_t default_max = c.model_family == family::mistral ? 4096 * 32
                                   : c.model_family == family::qwen2 ? 32768
                                                                      : 2048;
  c.max_positions       = r.int_or({"max_position_embeddings"}, default_max, 1);
  finish_heads(c, r, true);
  c.word_embed_proj_dim = c.hidden_size;
  c.norm                = norm_kind::rms_norm;
  c.norm_eps            = r.positive_or({"rms_norm_eps"}, 1e-6);
  c.activation_name     = r.opt_string({"hidden_act"}).value_or("silu");
  c.act                 = parse_activation(r, "hidden_act", c.activation_name);
  c.gated_mlp           = true;
  c.positions.kind      = position_kind::rotary;
  c.positions.rotary    = parse_rotary(j, r.file(), c.head_dim, 10000.0, 1.0);
  c.tie_word_embeddings = r.bool_or({"tie_word_embeddings"}, false);
  if (c.model_family == family::llama) {
    const bool attn_bias = r.bool_or({"attention_bias"}, false);
    c.bias               = {attn_bias, attn_bias, attn_bias, attn_bias, r.bool_or({"mlp_bias"}, false), false};
    c.layer_sliding.assign(static_cast<std::size_t>(c.num_layers), false);
  } else if (c.model_family == family::mistral) {
    c.bias = {};
    parse_sliding(c, r, true, 0);
  } else {  // qwen2: q/k/v carry a bias, o and the MLP do not
    c.bias = {true, true, true, false, false, false};
    parse_sliding(c, r, r.bool_or({"use_sliding_window"}, false), r.int_or({"max_window_layers"}, c.num_layers, 0));
  }
}

inline void parse_opt(model_config& c, const nlohmann::json& j, const field_reader& r) {
  (void)j;
  c.hidden_size         = r.req_int({"hidden_size"}, 1);
  c.num_layers          = r.req_int({"num_hidden_layers"}, 1);
  c.num_heads           = r.req_int({"num_attention_heads"}, 1);
  c.intermediate_size   = r.req_int({"ffn_dim"}, 1);
  c.vocab_size          = r.req_int({"vocab_size"}, 1);
  c.max_positions       = r.int_or({"max_position_embeddings"}, 2048, 1);
  if (r.find({"num_key_value_heads"})) {
    r.fail("num_key_value_heads", "OPT has no grouped-query attention");
  }
  finish_heads(c, r, false);
  c.word_embed_proj_dim = r.int_or({"word_embed_proj_dim"}, c.hidden_size, 1);
  c.norm                = norm_kind::layer_norm;
  c.norm_eps            = 1e-5;  // fixed in OPT's modeling code, not a config field
  c.norm_bias           = true;
  if (!r.bool_or({"layer_norm_elementwise_affine"}, true)) {
    r.fail("layer_norm_elementwise_affine", "false (layer norms without weights) is not supported");
  }
  c.activation_name = r.opt_string({"activation_function"}).value_or("relu");
  c.act             = parse_activation(r, "activation_function", c.activation_name);
  c.gated_mlp       = false;
  c.positions.kind  = position_kind::learned;
  c.positions.learned_offset = 2;  // fairseq reserved the first two position rows (padding_idx + 1)
  const bool enable_bias     = r.bool_or({"enable_bias"}, true);
  c.bias                     = {enable_bias, enable_bias, enable_bias, enable_bias, enable_bias, false};
  c.pre_norm                 = r.bool_or({"do_layer_norm_before"}, true);
  c.final_norm               = c.pre_norm && !r.bool_or({"_remove_final_layer_norm"}, false);
  c.tie_word_embeddings      = r.bool_or({"tie_word_embeddings"}, true);
  c.layer_sliding.assign(static_cast<std::size_t>(c.num_layers), false);
}

inline void parse_bloom(model_config& c, const nlohmann::json& j, const field_reader& r) {
  (void)j;
  // BloomConfig's attribute_map: n_layer/n_head are the stored names; n_embed is the legacy hidden size.
  c.hidden_size       = r.req_int({"hidden_size", "n_embed"}, 1);
  c.num_layers        = r.req_int({"n_layer", "num_hidden_layers"}, 1);
  c.num_heads         = r.req_int({"n_head", "num_attention_heads"}, 1);
  c.vocab_size        = r.req_int({"vocab_size"}, 1);
  c.intermediate_size = 4 * c.hidden_size;  // BloomMLP is fixed at 4 x hidden
  if (const auto n_inner = r.opt_int({"n_inner"}, 1); n_inner && *n_inner != c.intermediate_size) {
    r.fail("n_inner", "BLOOM's MLP width is 4 x hidden_size; n_inner=" + std::to_string(*n_inner) + " is not supported");
  }
  c.max_positions = 0;  // ALiBi extrapolates; seq_length is only the training length
  finish_heads(c, r, false);
  if (c.num_kv_heads != c.num_heads) {
    r.fail("num_key_value_heads", "BLOOM has no grouped-query attention");
  }
  c.word_embed_proj_dim     = c.hidden_size;
  c.norm                    = norm_kind::layer_norm;
  c.norm_eps                = r.positive_or({"layer_norm_epsilon"}, 1e-5);
  c.norm_bias               = true;
  c.activation_name         = "bloom_gelu";
  c.act                     = activation::gelu_tanh;
  c.gated_mlp               = false;
  c.positions.kind          = position_kind::alibi;
  c.bias                    = {true, true, true, true, true, false};
  c.embedding_norm          = true;
  c.residual_post_norm      = r.bool_or({"apply_residual_connection_post_layernorm"}, false);
  c.tie_word_embeddings     = r.bool_or({"tie_word_embeddings"}, true);
  c.layer_sliding.assign(static_cast<std::size_t>(c.num_layers), false);
}

inline void parse_phi(model_config& c, const nlohmann::json& j, const field_reader& r) {
  c.hidden_size       = r.req_int({"hidden_size"}, 1);
  c.num_layers        = r.req_int({"num_hidden_layers"}, 1);
  c.num_heads         = r.req_int({"num_attention_heads"}, 1);
  c.intermediate_size = r.req_int({"intermediate_size"}, 1);
  c.vocab_size        = r.req_int({"vocab_size"}, 1);
  c.max_positions     = r.int_or({"max_position_embeddings"}, 2048, 1);
  finish_heads(c, r, false);
  c.word_embed_proj_dim = c.hidden_size;
  c.norm                = norm_kind::layer_norm;
  c.norm_eps            = r.positive_or({"layer_norm_eps"}, 1e-5);
  c.norm_bias           = true;
  c.activation_name     = r.opt_string({"hidden_act"}).value_or("gelu_new");
  c.act                 = parse_activation(r, "hidden_act", c.activation_name);
  c.gated_mlp           = false;
  c.positions.kind      = position_kind::rotary;
  c.positions.rotary    = parse_rotary(j, r.file(), c.head_dim, 10000.0, 0.5);
  c.bias                = {true, true, true, true, true, true};
  c.parallel_attn_mlp   = true;
  c.qk_layernorm        = r.bool_or({"qk_layernorm"}, false);
  c.tie_word_embeddings = r.bool_or({"tie_word_embeddings"}, false);
  c.layer_sliding.assign(static_cast<std::size_t>(c.num_layers), false);
}

}  // namespace detail

/// Parses a config.json document; `file` names it in messages.
/// @throws format_error(file, field, problem) for unknown model types and missing or invalid fields.
inline model_config parse_config(const nlohmann::json& j, const std::string& file) {
  if (!j.is_object()) {
    throw format_error(file, "", std::string("config must be a JSON object, got ") + j.type_name());
  }
  const detail::field_reader r(j, file);
  model_config c;
  const auto type = r.opt_string({"model_type"});
  if (!type) {
    r.fail("model_type", "missing (required)");
  }
  c.model_type = *type;
  struct known {
    std::string_view type;
    family fam;
    std::string_view architecture;
  };
  static constexpr known table[] = {{"llama", family::llama, "LlamaForCausalLM"},
                                    {"mistral", family::mistral, "MistralForCausalLM"},
                                    {"opt", family::opt, "OPTForCausalLM"},
                                    {"bloom", family::bloom, "BloomForCausalLM"},
                                    {"phi", family::phi, "PhiForCausalLM"},
                                    {"qwen2", family::qwen2, "Qwen2ForCausalLM"}};
  const known* match = nullptr;
  for (const auto& k : table) {
    if (k.type == c.model_type) {
      match = &k;
    }
  }
  if (match == nullptr) {
    r.fail("model_type", "unsupported model type \"" + c.model_type + "\" (supported: llama, mistral, opt, bloom, phi, qwen2)");
  }
  c.model_family = match->fam;
  detail::common_ids(c, r);
  for (const auto& a : c.architectures) {
    // Base models (LlamaModel, ...) have no lm_head; only the causal-LM class fits what qprob evaluates.
    if (a != match->architecture) {
      r.fail("architectures", "unsupported architecture \"" + a + "\" for model_type \"" + c.model_type +
                                  "\" (expected " + std::string(match->architecture) + ")");
    }
  }
  switch (c.model_family) {
    case family::llama:
    case family::mistral:
    case family::qwen2: detail::parse_llama_like(c, j, r); break;
    case family::opt: detail::parse_opt(c, j, r); break;
    case family::bloom: detail::parse_bloom(c, j, r); break;
    case family::phi: detail::parse_phi(c, j, r); break;
  }
  for (auto id : c.bos_token_ids) {
    if (id >= c.vocab_size) {
      r.fail("bos_token_id", "token id " + std::to_string(id) + " is outside vocab_size=" + std::to_string(c.vocab_size));
    }
  }
  for (auto id : c.eos_token_ids) {
    if (id >= c.vocab_size) {
      r.fail("eos_token_id", "token id " + std::to_string(id) + " is outside vocab_size=" + std::to_string(c.vocab_size));
    }
  }
  return c;
}

/// Reads `path` (a config.json, or a directory containing one) and parses it.
inline model_config load_config(const std::filesystem::path& path) {
  std::error_code ec;
  const auto file = std::filesystem::is_directory(path, ec) ? path / "config.json" : path;
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    throw format_error(file.string(), "", "cannot open");
  }
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::exception& e) {
    throw format_error(file.string(), "", std::string("malformed JSON: ") + e.what());
  }
  return parse_config(j, file.string());
}

/// A multi-line, human-readable summary (used by qprob-inspect).
inline std::string describe(const model_config& c) {
  std::ostringstream o;
  const auto ids = [](const std::vector<std::int64_t>& v) {
    std::string s;
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (i > 0) {
        s += ',';
      }
      s += std::to_string(v[i]);
    }
    return s.empty() ? std::string("-") : s;
  };
  o << "family            " << to_string(c.model_family) << " (model_type " << c.model_type << ")\n";
  o << "hidden / layers   " << c.hidden_size << " / " << c.num_layers << "\n";
  o << "heads / kv / dim  " << c.num_heads << " / " << c.num_kv_heads << " / " << c.head_dim << "\n";
  o << "mlp               " << (c.gated_mlp ? "gated " : "") << c.intermediate_size << ", " << to_string(c.act)
    << " (" << c.activation_name << ")\n";
  o << "vocab             " << c.vocab_size;
  if (c.word_embed_proj_dim != c.hidden_size) {
    o << " (embedding width " << c.word_embed_proj_dim << ", projected)";
  }
  o << "\nmax positions     " << (c.max_positions ? std::to_string(c.max_positions) : std::string("unbounded")) << "\n";
  o << "norm              " << to_string(c.norm) << " eps " << c.norm_eps << (c.pre_norm ? ", pre-norm" : ", post-norm")
    << (c.final_norm ? "" : ", no final norm") << (c.embedding_norm ? ", embedding norm" : "")
    << (c.parallel_attn_mlp ? ", parallel attention/MLP" : "") << "\n";
  o << "positions         " << to_string(c.positions.kind);
  if (c.positions.kind == position_kind::rotary) {
    const auto& rc = c.positions.rotary;
    o << " theta " << rc.theta << ", " << rc.rotary_dim << "/" << c.head_dim << " channels, scaling "
      << to_string(rc.scaling.kind);
    if (rc.scaling.kind != rope_scaling_kind::none) {
      o << " x" << rc.scaling.factor;
    }
  } else if (c.positions.kind == position_kind::learned) {
    o << " (offset " << c.positions.learned_offset << ")";
  }
  o << "\nbiases            q" << c.bias.q << " k" << c.bias.k << " v" << c.bias.v << " o" << c.bias.o << " mlp"
    << c.bias.mlp << " lm_head" << c.bias.lm_head << "\n";
  o << "tied embeddings   " << (c.tie_word_embeddings ? "yes" : "no") << "\n";
  if (c.sliding_window) {
    std::int64_t n = 0;
    for (bool b : c.layer_sliding) {
      n += b;
    }
    o << "sliding window    " << *c.sliding_window << " on " << n << " of " << c.num_layers << " layers\n";
  }
  o << "bos / eos / pad   " << ids(c.bos_token_ids) << " / " << ids(c.eos_token_ids) << " / "
    << (c.pad_token_id ? std::to_string(*c.pad_token_id) : std::string("-")) << "\n";
  o << "dtype             " << (c.dtype ? std::string(dtype_name(*c.dtype)) : std::string("unspecified")) << "\n";
  return o.str();
}

}  // namespace qprob::model
