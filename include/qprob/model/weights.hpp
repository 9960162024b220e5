// SPDX-License-Identifier: Apache-2.0
#pragma once
// One internal weight layout for every supported family, and the mapping from each family's Hugging Face
// tensor names onto it. map_weights() checks a checkpoint against a model_config and reports ALL missing,
// unexpected, wrongly shaped and non-floating tensors in a single format_error. The layout (roles) and the
// name table are documented in docs/io.md.

#include <qprob/core/error.hpp>
#include <qprob/io/safetensors.hpp>
#include <qprob/model/config.hpp>

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace qprob::model {

/// What a tensor is, independent of the family's naming. Linear weights are [out, in] as in torch.
enum class tensor_role : std::uint8_t {
  embed_tokens,     // [vocab, word_embed_proj_dim]
  embed_positions,  // OPT learned positions [max_positions + offset, hidden]
  embed_norm,       // BLOOM word_embeddings_layernorm
  project_in,       // OPT-350m: [hidden, word_embed_proj_dim]
  project_out,      // OPT-350m: [word_embed_proj_dim, hidden]
  final_norm,
  lm_head,          // [vocab, word_embed_proj_dim]; absent when tied to embed_tokens
  attn_norm,        // per layer from here on
  q,
  k,
  v,
  qkv,  // BLOOM's fused, head-interleaved query_key_value (see bloom_qkv_row)
  o,
  q_norm,  // Phi qk_layernorm
  k_norm,
  mlp_norm,  // absent for Phi (parallel block: one input_layernorm)
  gate,
  up,    // also fc1 / dense_h_to_4h
  down,  // also fc2 / dense_4h_to_h
};
enum class tensor_part : std::uint8_t { weight, bias };

constexpr std::string_view to_string(tensor_role r) noexcept {
  switch (r) {
    case tensor_role::embed_tokens: return "embed_tokens";
    case tensor_role::embed_positions: return "embed_positions";
    case tensor_role::embed_norm: return "embed_norm";
    case tensor_role::project_in: return "project_in";
    case tensor_role::project_out: return "project_out";
    case tensor_role::final_norm: return "final_norm";
    case tensor_role::lm_head: return "lm_head";
    case tensor_role::attn_norm: return "attn_norm";
    case tensor_role::q: return "q";
    case tensor_role::k: return "k";
    case tensor_role::v: return "v";
    case tensor_role::qkv: return "qkv";
    case tensor_role::o: return "o";
    case tensor_role::q_norm: return "q_norm";
    case tensor_role::k_norm: return "k_norm";
    case tensor_role::mlp_norm: return "mlp_norm";
    case tensor_role::gate: return "gate";
    case tensor_role::up: return "up";
    case tensor_role::down: return "down";
  }
  return "?";
}

inline constexpr std::int64_t global_tensor = -1;  // layer index of non-layer tensors

/// One tensor the layout expects.
struct weight_slot {
  tensor_role role;
  tensor_part part;
  std::int64_t layer = global_tensor;
  std::string hf_name;  // the checkpoint name, prefix included
  std::vector<std::int64_t> shape;
  bool optional = false;  // e.g. lm_head of a tied model

  /// "layers.3.q.weight", "lm_head.bias", ...
  [[nodiscard]] std::string canonical_name() const {
    std::string s = layer == global_tensor ? std::string() : "layers." + std::to_string(layer) + ".";
    return s + std::string(to_string(role)) + (part == tensor_part::weight ? ".weight" : ".bias");
  }
};

/// The tensors prefixes a family's checkpoints may put in front of the model body (lm_head never has one).
inline std::vector<std::string> name_prefixes(family f) {
  switch (f) {
    case family::opt: return {"model.decoder.", "decoder.", ""};
    case family::bloom: return {"transformer.", ""};
    default: return {"model.", ""};
  }
}

/// Every tensor a checkpoint of `c` holds, with body names under `prefix`.
inline std::vector<weight_slot> expected_weights(const model_config& c, const std::string& prefix) {
  using R = tensor_role;
  using P = tensor_part;
  std::vector<weight_slot> out;
  const auto H = c.hidden_size, V = c.vocab_size, I = c.intermediate_size, E = c.word_embed_proj_dim;
  const auto QD = c.num_heads * c.head_dim, KVD = c.num_kv_heads * c.head_dim;
  const auto add = [&](R role, P part, std::int64_t layer, std::string name, std::vector<std::int64_t> shape,
                       bool optional = false) {
    out.push_back({role, part, layer, std::move(name), std::move(shape), optional});
  };
  const auto linear = [&](R role, std::int64_t layer, const std::string& base, std::int64_t rows, std::int64_t cols,
                          bool bias) {
    add(role, P::weight, layer, base + ".weight", {rows, cols});
    if (bias) {
      add(role, P::bias, layer, base + ".bias", {rows});
    }
  };
  const auto norm = [&](R role, std::int64_t layer, const std::string& base, std::int64_t width) {
    add(role, P::weight, layer, base + ".weight", {width});
    if (c.norm_bias) {
      add(role, P::bias, layer, base + ".bias", {width});
    }
  };
  const auto lm_head = [&](bool bias) {
    add(R::lm_head, P::weight, global_tensor, "lm_head.weight", {V, E}, c.tie_word_embeddings);
    if (bias) {
      add(R::lm_head, P::bias, global_tensor, "lm_head.bias", {V}, c.tie_word_embeddings);
    }
  };
  switch (c.model_family) {
    case family::llama:
    case family::mistral:
    case family::qwen2:
    case family::phi: {
      const bool phi = c.model_family == family::phi;
      add(R::embed_tokens, P::weight, global_tensor, prefix + "embed_tokens.weight", {V, H});
      norm(R::final_norm, global_tensor, prefix + (phi ? "final_layernorm" : "norm"), H);
      lm_head(c.bias.lm_head);
      for (std::int64_t l = 0; l < c.num_layers; ++l) {
        const auto p = prefix + "layers." + std::to_string(l) + ".";
        norm(R::attn_norm, l, p + "input_layernorm", H);
        linear(R::q, l, p + "self_attn.q_proj", QD, H, c.bias.q);
        linear(R::k, l, p + "self_attn.k_proj", KVD, H, c.bias.k);
        linear(R::v, l, p + "self_attn.v_proj", KVD, H, c.bias.v);
        linear(R::o, l, p + (phi ? "self_attn.dense" : "self_attn.o_proj"), H, QD, c.bias.o);
        if (phi) {
          if (c.qk_layernorm) {
            norm(R::q_norm, l, p + "self_attn.q_layernorm", c.head_dim);
            norm(R::k_norm, l, p + "self_attn.k_layernorm", c.head_dim);
          }
          linear(R::up, l, p + "mlp.fc1", I, H, c.bias.mlp);
          linear(R::down, l, p + "mlp.fc2", H, I, c.bias.mlp);
        } else {
          norm(R::mlp_norm, l, p + "post_attention_layernorm", H);
          linear(R::gate, l, p + "mlp.gate_proj", I, H, c.bias.mlp);
          linear(R::up, l, p + "mlp.up_proj", I, H, c.bias.mlp);
          linear(R::down, l, p + "mlp.down_proj", H, I, c.bias.mlp);
        }
      }
      break;
    }
    case family::opt: {
      add(R::embed_tokens, P::weight, global_tensor, prefix + "embed_tokens.weight", {V, E});
      add(R::embed_positions, P::weight, global_tensor, prefix + "embed_positions.weight",
          {c.max_positions + c.positions.learned_offset, H});
      if (E != H) {
        add(R::project_in, P::weight, global_tensor, prefix + "project_in.weight", {H, E});
        add(R::project_out, P::weight, global_tensor, prefix + "project_out.weight", {E, H});
      }
      if (c.final_norm) {
        norm(R::final_norm, global_tensor, prefix + "final_layer_norm", H);
      }
      lm_head(false);
      for (std::int64_t l = 0; l < c.num_layers; ++l) {
        const auto p = prefix + "layers." + std::to_string(l) + ".";
        norm(R::attn_norm, l, p + "self_attn_layer_norm", H);
        linear(R::q, l, p + "self_attn.q_proj", H, H, c.bias.q);
        linear(R::k, l, p + "self_attn.k_proj", H, H, c.bias.k);
        linear(R::v, l, p + "self_attn.v_proj", H, H, c.bias.v);
        linear(R::o, l, p + "self_attn.out_proj", H, H, c.bias.o);
        norm(R::mlp_norm, l, p + "final_layer_norm", H);
        linear(R::up, l, p + "fc1", I, H, c.bias.mlp);
        linear(R::down, l, p + "fc2", H, I, c.bias.mlp);
      }
      break;
    }
    case family::bloom: {
      add(R::embed_tokens, P::weight, global_tensor, prefix + "word_embeddings.weight", {V, H});
      norm(R::embed_norm, global_tensor, prefix + "word_embeddings_layernorm", H);
      norm(R::final_norm, global_tensor, prefix + "ln_f", H);
      lm_head(false);
      for (std::int64_t l = 0; l < c.num_layers; ++l) {
        const auto p = prefix + "h." + std::to_string(l) + ".";
        norm(R::attn_norm, l, p + "input_layernorm", H);
        linear(R::qkv, l, p + "self_attention.query_key_value", 3 * H, H, true);
        linear(R::o, l, p + "self_attention.dense", H, H, c.bias.o);
        norm(R::mlp_norm, l, p + "post_attention_layernorm", H);
        linear(R::up, l, p + "mlp.dense_h_to_4h", I, H, c.bias.mlp);
        linear(R::down, l, p + "mlp.dense_4h_to_h", H, I, c.bias.mlp);
      }
      break;
    }
  }
  return out;
}

/// Buffers some exporters save next to the parameters; they are recomputed, never loaded.
inline bool is_ignored_buffer(std::string_view name) {
  return name.ends_with(".rotary_emb.inv_freq") || name.ends_with(".attn.masked_bias") || name.ends_with(".attn.bias");
}

struct mapped_tensor {
  weight_slot slot;
  const io::tensor_info* info;  // null for an absent optional slot
};

/// The checkpoint seen through the internal layout. Holds pointers into the checkpoint: keep it alive.
class weight_map {
public:
  weight_map() = default;
  weight_map(std::string prefix, std::vector<mapped_tensor> tensors, std::vector<std::string> ignored)
      : prefix_(std::move(prefix)), tensors_(std::move(tensors)), ignored_(std::move(ignored)) {
    for (std::size_t i = 0; i < tensors_.size(); ++i) {
      if (tensors_[i].info != nullptr) {
        by_name_.emplace(tensors_[i].info->name, i);
      }
    }
  }

  /// The prefix found in front of the body tensors ("model.", "transformer.", "model.decoder.", or "").
  [[nodiscard]] const std::string& prefix() const noexcept { return prefix_; }
  /// Every slot of the layout, in layout order (globals first, then layers); absent optional slots included.
  [[nodiscard]] const std::vector<mapped_tensor>& tensors() const noexcept { return tensors_; }
  /// Checkpoint tensors that are known non-parameter buffers.
  [[nodiscard]] const std::vector<std::string>& ignored() const noexcept { return ignored_; }

  /// The tensor for a role, or nullptr if the layout has it as an absent optional (or not at all).
  [[nodiscard]] const io::tensor_info* find(tensor_role role, tensor_part part = tensor_part::weight,
                                            std::int64_t layer = global_tensor) const {
    for (const auto& t : tensors_) {
      if (t.slot.role == role && t.slot.part == part && t.slot.layer == layer) {
        return t.info;
      }
    }
    return nullptr;
  }
  /// The slot a checkpoint tensor was mapped to, or nullptr.
  [[nodiscard]] const weight_slot* slot_of(std::string_view name) const {
    const auto it = by_name_.find(std::string(name));
    return it == by_name_.end() ? nullptr : &tensors_[it->second].slot;
  }
  /// Elements of every tensor present in the checkpoint (the model's parameter count).
  [[nodiscard]] std::int64_t parameters() const {
    std::int64_t n = 0;
    for (const auto& t : tensors_) {
      n += t.info == nullptr ? 0 : t.info->numel();
    }
    return n;
  }
  /// True when logits reuse embed_tokens (the checkpoint has no lm_head.weight).
  [[nodiscard]] bool lm_head_tied() const { return find(tensor_role::lm_head) == nullptr; }

private:
  std::string prefix_;
  std::vector<mapped_tensor> tensors_;
  std::vector<std::string> ignored_;
  std::map<std::string, std::size_t> by_name_;
};

/// Maps every tensor of `ckpt` onto the layout of `c`. Everything wrong is collected and reported together:
/// @throws format_error(ckpt.label(), "tensors", "...missing: a, b; unexpected: c; shape mismatch: ...").
inline weight_map map_weights(const model_config& c, const io::checkpoint& ckpt) {
  const auto prefixes = name_prefixes(c.model_family);
  std::string prefix  = prefixes.front();
  for (const auto& p : prefixes) {
    // The embedding is the one tensor every family has; its name decides the prefix.
    if (ckpt.find(expected_weights(c, p).front().hf_name) != nullptr) {
      prefix = p;
      break;
    }
  }
  const auto slots = expected_weights(c, prefix);
  std::vector<mapped_tensor> mapped;
  std::vector<std::string> missing, unexpected, mismatched, ignored;
  std::map<std::string, bool, std::less<>> used;
  for (const auto& s : slots) {
    const auto* info = ckpt.find(s.hf_name);
    if (info == nullptr) {
      if (!s.optional) {
        missing.push_back(s.hf_name);
      }
    } else {
      used[s.hf_name] = true;
      if (info->shape != s.shape) {
        mismatched.push_back(s.hf_name + " is " + io::shape_string(info->shape) + ", config implies " +
                             io::shape_string(s.shape));
      } else if (!io::detail::is_float_dtype(info->dtype)) {
        mismatched.push_back(s.hf_name + " has dtype " + std::string(dtype_name(info->dtype)) +
                             ", expected a floating type");
      }
    }
    mapped.push_back({s, info});
  }
  for (const auto& [name, e] : ckpt.entries()) {
    if (used.contains(name)) {
      continue;
    }
    if (is_ignored_buffer(name)) {
      ignored.push_back(name);
    } else {
      unexpected.push_back(name);
    }
  }
  if (!missing.empty() || !unexpected.empty() || !mismatched.empty()) {
    const auto list = [](const std::vector<std::string>& v) {
      std::string s;
      for (std::size_t i = 0; i < v.size(); ++i) {
        if (i > 0) {
          s += ", ";
        }
        s += v[i];
      }
      return s;
    };
    std::string problem = "checkpoint does not match the " + std::string(to_string(c.model_family)) +
                          " config (tensor prefix \"" + prefix + "\")";
    if (!missing.empty()) {
      problem += "; " + std::to_string(missing.size()) + " missing: " + list(missing);
    }
    if (!unexpected.empty()) {
      problem += "; " + std::to_string(unexpected.size()) + " unexpected: " + list(unexpected);
    }
    if (!mismatched.empty()) {
      problem += "; " + std::to_string(mismatched.size()) + " mismatched: " + list(mismatched);
    }
    throw format_error(ckpt.label(), "tensors", problem);
  }
  return weight_map(prefix, std::move(mapped), std::move(ignored));
}

// ---- BLOOM's fused query_key_value --------------------------------------------------------------------------
// BloomAttention views the fused projection output as (batch, seq, num_heads, 3, head_dim): the 3*hidden rows
// of query_key_value.weight (and entries of its bias) are grouped per head, each group holding that head's
// q rows, then its k rows, then its v rows:
//   row = head * 3 * head_dim + which * head_dim + d      (which: 0 = q, 1 = k, 2 = v)
// This is NOT [all q; all k; all v], which is what a naive split into thirds would assume.

/// Row of the fused tensor holding channel `d` of head `head` of q (which=0), k (1) or v (2).
constexpr std::int64_t bloom_qkv_row(int which, std::int64_t head, std::int64_t d, std::int64_t head_dim) noexcept {
  return (head * 3 + which) * head_dim + d;
}

/// Splits a fused [3 * num_heads * head_dim, cols] tensor (cols = hidden for the weight, 1 for the bias) into
/// q, k and v, each [num_heads * head_dim, cols] with rows in head-major order.
template <class T>
void split_bloom_qkv(std::span<const T> fused, std::int64_t num_heads, std::int64_t head_dim, std::int64_t cols,
                     std::span<T> q, std::span<T> k, std::span<T> v) {
  const auto part = num_heads * head_dim * cols;
  QPROB_CHECK_EQ(static_cast<std::int64_t>(fused.size()), 3 * part, "split_bloom_qkv: fused size");
  QPROB_CHECK(static_cast<std::int64_t>(q.size()) == part && static_cast<std::int64_t>(k.size()) == part &&
                  static_cast<std::int64_t>(v.size()) == part,
              "split_bloom_qkv: q, k and v must each hold ", part, " elements");
  const std::span<T> outs[3] = {q, k, v};
  for (std::int64_t h = 0; h < num_heads; ++h) {
    for (int which = 0; which < 3; ++which) {
      for (std::int64_t d = 0; d < head_dim; ++d) {
        const auto src = bloom_qkv_row(which, h, d, head_dim) * cols;
        const auto dst = (h * head_dim + d) * cols;
        std::copy_n(fused.begin() + src, cols, outs[which].begin() + dst);
      }
    }
  }
}

/// The inverse of split_bloom_qkv: q, k and v, each [num_heads * head_dim, cols] in head-major order,
/// interleaved per head into the fused [3 * num_heads * head_dim, cols] layout of query_key_value.
template <class T>
[[nodiscard]] std::vector<T> fuse_bloom_qkv(std::span<const T> q, std::span<const T> k, std::span<const T> v,
                                            std::int64_t num_heads, std::int64_t head_dim, std::int64_t cols) {
  const auto part = num_heads * head_dim * cols;
  QPROB_CHECK(static_cast<std::int64_t>(q.size()) == part && static_cast<std::int64_t>(k.size()) == part &&
                  static_cast<std::int64_t>(v.size()) == part,
              "fuse_bloom_qkv: q, k and v must each hold ", part, " values, got ", q.size(), ", ", k.size(), ", ", v.size());
  std::vector<T> fused(static_cast<std::size_t>(3 * part));
  const std::span<const T> parts[3] = {q, k, v};
  for (std::int64_t h = 0; h < num_heads; ++h) {
    for (int which = 0; which < 3; ++which) {
      for (std::int64_t d = 0; d < head_dim; ++d) {
        const auto src = (h * head_dim + d) * cols;
        const auto dst = bloom_qkv_row(which, h, d, head_dim) * cols;
        std::copy_n(parts[which].begin() + src, cols, fused.begin() + dst);
      }
    }
  }
  return fused;
}

}  // namespace qprob::model
