// SPDX-License-Identifier: Apache-2.0
#pragma once
// Host reference forward pass of the decoder-only families qprob evaluates (llama, mistral, opt, bloom, phi,
// qwen2): plain loops in double precision, written to be read as the specification that the GPU engine and
// the golden files are checked against. It follows transformers' modeling code (5.x) operation by operation,
// in the same order where the order changes rounding, but without its float32 islands (RMSNorm input cast,
// RoPE tables and eager-attention softmax in float32): everything here is double. docs/scoring.md gives the
// scope and the tolerances it is tested to.
//
//   auto m      = qprob::reference::reference_model::from_directory("models/stories260K");
//   auto logits = m.logits(ids);                        // (T, vocab) row-major, positions 0..T-1
//   auto ll     = qprob::reference::loglikelihood(m, context_ids, continuation_ids);
//
// Per family (x: the hidden state of one position; norm is RMSNorm or LayerNorm as configured):
//   embeddings  x = E[token]; OPT-350m: x = project_in(x); BLOOM: x = embed_norm(x);
//               OPT: x += P[position + 2] (fairseq reserved rows 0 and 1)
//   pre-norm    h = norm1(x); x = attn(h) + (post_norm_residual ? h : x); h = norm2(x); x = mlp(h) + (.. ? h : x)
//               (post_norm_residual is BLOOM's apply_residual_connection_post_layernorm; off elsewhere)
//   post-norm   OPT-350m (do_layer_norm_before=false): x = norm1(x + attn(x)); x = norm2(x + mlp(x))
//   parallel    Phi: h = norm1(x); x = (attn(h) + mlp(h)) + x
//   head        final norm (none for OPT-350m); OPT-350m: project_out; logits = lm_head(x) (+ bias for Phi),
//               lm_head = E when tied
// Attention: q, k, v projections (+ biases as configured); Phi's optional per-head q/k LayerNorm; rotary on
// the first rotary_dim channels of each head (GPT-NeoX pairing i <-> i + rotary_dim/2) or ALiBi (score +=
// slope_h * key_position, BLOOM's form); scores q.k / sqrt(head_dim); causal mask, plus a sliding window
// (key j visible from query i iff i - window < j <= i) on the layers config.json marks; grouped-query heads
// share kv head h / (num_heads / num_kv_heads); softmax; o projection.
// MLP: gated (SwiGLU etc.): down(act(gate(h)) * up(h)); plain: down(act(up(h))).
//
// Hooks (for GPTQ calibration on the host, qprob compare --device cpu): logits(tokens, observer) calls the
// observer with the input rows of every linear layer of the transformer blocks (q, k, v, o, gate, up, down; not
// project_in/out or lm_head) just before it is applied, in execution order; set_linear_weight() replaces one of
// those weights (e.g. by its dequantized version). Without an observer logits() behaves exactly as before.
//
// Limits: meant for models of up to a few million parameters (CI runs stories260K and the babyllama models).
// Every weight is held as double (8 bytes per parameter) and the forward costs about 2 * parameters * T
// multiply-adds plus T^2 * hidden for attention, single-threaded; reference_options::max_parameters guards
// against loading a large checkpoint by mistake.

#include <qprob/core/error.hpp>
#include <qprob/io/safetensors.hpp>
#include <qprob/model/config.hpp>
#include <qprob/model/weights.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <numbers>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace qprob::reference {

using token_id = std::int32_t;

struct reference_options {
  /// Refuse checkpoints with more parameters than this (each is held as a double).
  std::int64_t max_parameters = 100'000'000;
};

// ---- building blocks (public: tests check their properties directly) ----------------------------------------

/// RMSNorm in place: x_i = w_i * (x_i / sqrt(mean(x^2) + eps)).
inline void rms_norm(std::span<double> x, std::span<const double> w, double eps) {
  double sum_sq = 0.0;
  for (const double v : x) {
    sum_sq += v * v;
  }
  const double inv_rms = 1.0 / std::sqrt(sum_sq / static_cast<double>(x.size()) + eps);
  for (std::size_t i = 0; i < x.size(); ++i) {
    x[i] = w[i] * (x[i] * inv_rms);
  }
}

/// LayerNorm in place with the biased variance (torch.nn.LayerNorm): x_i = (x_i - mean) / sqrt(var + eps) * w_i
/// + b_i. `b` may be empty (no bias).
inline void layer_norm(std::span<double> x, std::span<const double> w, std::span<const double> b, double eps) {
  const double n = static_cast<double>(x.size());
  double mean    = 0.0;
  for (const double v : x) {
    mean += v;
  }
  mean /= n;
  double var = 0.0;
  for (const double v : x) {
    var += (v - mean) * (v - mean);
  }
  var /= n;
  const double inv_std = 1.0 / std::sqrt(var + eps);
  for (std::size_t i = 0; i < x.size(); ++i) {
    x[i] = (x[i] - mean) * inv_std * w[i] + (b.empty() ? 0.0 : b[i]);
  }
}

/// The MLP activation. `activation_name` (config.json's spelling) picks the tanh-GELU constant each family's
/// code uses: BLOOM's bloom_gelu and gelu_fast write sqrt(2/pi) truncated (0.79788456 / 0.7978845608), which
/// differs from the exact value at 1e-9 relative: enough to matter for golden comparisons at 1e-10.
inline double activate(model::activation a, std::string_view activation_name, double x) {
  constexpr double sqrt_2_over_pi = 0.79788456080286535588;  // sqrt(2/pi) to double precision
  switch (a) {
    case model::activation::silu: return x / (1.0 + std::exp(-x));
    case model::activation::relu: return x > 0.0 ? x : 0.0;
    case model::activation::gelu_erf: return 0.5 * x * (1.0 + std::erf(x / std::numbers::sqrt2));
    case model::activation::gelu_tanh:
      if (activation_name == "bloom_gelu") {
        return x * 0.5 * (1.0 + std::tanh(0.79788456 * x * (1.0 + 0.044715 * x * x)));
      }
      if (activation_name == "gelu_fast") {
        return 0.5 * x * (1.0 + std::tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)));
      }
      return 0.5 * x * (1.0 + std::tanh(sqrt_2_over_pi * (x + 0.044715 * x * x * x)));
  }
  throw invalid_argument("activate: unknown activation");
}

/// Rotary inverse frequencies inv_freq[i] = theta^(-2i / rotary_dim), i < rotary_dim / 2, with the config's
/// scaling: linear divides all by `factor`; llama3 divides the low-frequency band (wavelength > original_max /
/// low_freq_factor) by `factor`, keeps the high band (wavelength < original_max / high_freq_factor) and
/// interpolates between, as transformers' _compute_llama3_parameters.
/// @throws format_error(config_file, "rope_parameters.rope_type", ...) for dynamic, yarn and longrope.
inline std::vector<double> rope_inv_freq(const model::rotary_config& rc, const std::string& config_file = "config.json") {
  const std::int64_t dim = rc.rotary_dim;
  QPROB_CHECK(dim > 0 && dim % 2 == 0, "rope_inv_freq: rotary_dim=", dim, " must be positive and even");
  std::vector<double> inv(static_cast<std::size_t>(dim / 2));
  for (std::int64_t i = 0; i < dim / 2; ++i) {
    inv[static_cast<std::size_t>(i)] = 1.0 / std::pow(rc.theta, static_cast<double>(2 * i) / static_cast<double>(dim));
  }
  const auto& s = rc.scaling;
  switch (s.kind) {
    case model::rope_scaling_kind::none: break;
    case model::rope_scaling_kind::linear:
      for (auto& f : inv) {
        f /= s.factor;
      }
      break;
    case model::rope_scaling_kind::llama3: {
      const double old_len      = static_cast<double>(s.original_max_positions.value_or(0));
      const double low_wavelen  = old_len / s.low_freq_factor;
      const double high_wavelen = old_len / s.high_freq_factor;
      for (auto& f : inv) {
        const double wavelen = 2.0 * std::numbers::pi / f;
        if (wavelen > low_wavelen) {
          f = f / s.factor;
        } else if (wavelen >= high_wavelen) {  // the medium band: neither < high nor > low
          const double smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
          f = (1.0 - smooth) * f / s.factor + smooth * f;
        }
      }
      break;
    }
    case model::rope_scaling_kind::dynamic:
    case model::rope_scaling_kind::yarn:
    case model::rope_scaling_kind::longrope:
      throw format_error(config_file, "rope_parameters.rope_type",
                         "rope type \"" + std::string(model::to_string(s.kind)) +
                             "\" is not implemented by the reference forward pass (supported: default, linear, llama3)");
  }
  return inv;
}

/// Rotates the first 2 * inv_freq.size() channels of one head vector in place for `position`: channel i pairs
/// with i + half (rotate_half), angle = position * inv_freq[i]. Channels beyond are passed through (partial
/// rotary, Phi).
inline void apply_rotary(std::span<double> head, std::int64_t position, std::span<const double> inv_freq) {
  const std::size_t half = inv_freq.size();
  QPROB_CHECK(2 * half <= head.size(), "apply_rotary: rotary_dim=", 2 * half, " exceeds head_dim=", head.size());
  for (std::size_t i = 0; i < half; ++i) {
    const double angle = static_cast<double>(position) * inv_freq[i];
    const double c = std::cos(angle), s = std::sin(angle);
    const double x1 = head[i], x2 = head[i + half];
    head[i]        = x1 * c - x2 * s;
    head[i + half] = x2 * c + x1 * s;
  }
}

/// ALiBi slopes (BLOOM's build_alibi_tensor): with p = the largest power of two <= num_heads, head h < p gets
/// 2^(-8 (h+1) / p); the remaining heads take every other slope of the 2p sequence: 2^(-8 (2i+1) / (2p)).
inline std::vector<double> alibi_slopes(std::int64_t num_heads) {
  QPROB_CHECK(num_heads > 0, "alibi_slopes: num_heads=", num_heads);
  std::int64_t p = 1;
  while (p * 2 <= num_heads) {
    p *= 2;
  }
  // base = 2^(-(2^-(log2(p) - 3))) = 2^(-8/p), as BLOOM writes it; powers of two keep this exact.
  const double base = std::pow(2.0, -std::pow(2.0, -(std::log2(static_cast<double>(p)) - 3.0)));
  std::vector<double> slopes;
  for (std::int64_t h = 1; h <= p; ++h) {
    slopes.push_back(std::pow(base, static_cast<double>(h)));
  }
  if (p != num_heads) {
    const double extra_base     = std::pow(2.0, -std::pow(2.0, -(std::log2(static_cast<double>(2 * p)) - 3.0)));
    const std::int64_t remaining = std::min(p, num_heads - p);
    for (std::int64_t i = 0; i < remaining; ++i) {
      slopes.push_back(std::pow(extra_base, static_cast<double>(2 * i + 1)));
    }
  }
  return slopes;
}

/// log(sum(exp(row))) computed stably (max subtracted).
inline double log_sum_exp(std::span<const double> row) {
  const double m = *std::max_element(row.begin(), row.end());
  double s       = 0.0;
  for (const double v : row) {
    s += std::exp(v - m);
  }
  return m + std::log(s);
}

// ---- the model ---------------------------------------------------------------------------------------------

/// One linear layer, torch layout: w is [out, in] row-major; b is empty when the layer has no bias.
struct linear_weights {
  std::int64_t out = 0, in = 0;
  std::vector<double> w, b;
  [[nodiscard]] bool present() const noexcept { return !w.empty(); }
};

struct norm_weights {
  std::vector<double> w, b;  // b empty for RMSNorm / bias-free LayerNorm
  [[nodiscard]] bool present() const noexcept { return !w.empty(); }
};

struct layer_weights {
  norm_weights attn_norm, mlp_norm, q_norm, k_norm;
  linear_weights q, k, v, o, gate, up, down;
};

/// Called by reference_model::logits(tokens, observer) with the input of each block linear layer: the layer
/// index, the slot (tensor_role q, k, v, o, gate, up or down; BLOOM's fused qkv is reported as q, k and v),
/// and the `rows` x in_features input, row-major (one row per position). The span is valid during the call only.
using linear_observer = std::function<void(std::int64_t layer, model::tensor_role slot, std::span<const double> input,
                                           std::int64_t rows)>;

/// A model held entirely in double on the host. Immutable after construction except through
/// set_linear_weight(); logits() is const and thread-safe.
class reference_model {
public:
  /// Loads config.json and the safetensors checkpoint of `dir` (weights converted to double).
  /// @throws format_error for a bad config or checkpoint (see model/config.hpp, model/weights.hpp) and for
  ///         features the reference does not implement; invalid_argument above options.max_parameters.
  static reference_model from_directory(const std::filesystem::path& dir, const reference_options& options = {}) {
    auto cfg        = model::load_config(dir);
    const auto ckpt = io::checkpoint::open(dir);
    return from_checkpoint(std::move(cfg), ckpt, (dir / "config.json").string(), options);
  }

  /// Builds from a parsed config and an open checkpoint; `config_file` names the config in messages.
  static reference_model from_checkpoint(model::model_config cfg, const io::checkpoint& ckpt,
                                         const std::string& config_file = "config.json",
                                         const reference_options& options = {}) {
    reference_model m;
    m.cfg_ = std::move(cfg);
    const auto& c = m.cfg_;
    if (c.qk_layernorm && c.model_family != model::family::phi) {
      throw format_error(config_file, "qk_layernorm", "only Phi's per-head q/k LayerNorm is implemented");
    }
    const auto map      = model::map_weights(c, ckpt);
    const auto params   = map.parameters();
    QPROB_CHECK(params <= options.max_parameters, "reference_model: ", ckpt.label(), " has ", params,
                " parameters, above reference_options::max_parameters=", options.max_parameters,
                " (the host reference is meant for tiny models)");
    m.parameters_ = params;

    using R       = model::tensor_role;
    using P       = model::tensor_part;
    const auto rd = [&](R role, P part, std::int64_t layer) -> std::vector<double> {
      const auto* info = map.find(role, part, layer);
      return info == nullptr ? std::vector<double>{} : ckpt.read_as<double>(info->name);
    };
    const auto lin = [&](R role, std::int64_t layer) {
      linear_weights l;
      if (const auto* info = map.find(role, P::weight, layer)) {
        l.out = info->shape[0];
        l.in  = info->shape[1];
        l.w   = ckpt.read_as<double>(info->name);
        l.b   = rd(role, P::bias, layer);
      }
      return l;
    };
    const auto nrm = [&](R role, std::int64_t layer) { return norm_weights{rd(role, P::weight, layer), rd(role, P::bias, layer)}; };

    m.embed_tokens_    = rd(R::embed_tokens, P::weight, model::global_tensor);
    m.embed_positions_ = rd(R::embed_positions, P::weight, model::global_tensor);
    m.embed_norm_      = nrm(R::embed_norm, model::global_tensor);
    m.project_in_      = lin(R::project_in, model::global_tensor);
    m.project_out_     = lin(R::project_out, model::global_tensor);
    m.final_norm_      = nrm(R::final_norm, model::global_tensor);
    m.lm_head_         = lin(R::lm_head, model::global_tensor);
    if (!m.lm_head_.present()) {  // tied: logits = x E^T
      m.lm_head_.out = c.vocab_size;
      m.lm_head_.in  = c.word_embed_proj_dim;
      m.lm_head_.w   = m.embed_tokens_;
      m.lm_head_.b   = rd(R::lm_head, P::bias, model::global_tensor);
    }
    const auto H = c.hidden_size, D = c.head_dim;
    for (std::int64_t l = 0; l < c.num_layers; ++l) {
      layer_weights L;
      L.attn_norm = nrm(R::attn_norm, l);
      L.mlp_norm  = nrm(R::mlp_norm, l);
      L.q_norm    = nrm(R::q_norm, l);
      L.k_norm    = nrm(R::k_norm, l);
      if (c.model_family == model::family::bloom) {
        // Fused, head-interleaved query_key_value (model/weights.hpp, bloom_qkv_row).
        const auto w = rd(R::qkv, P::weight, l), b = rd(R::qkv, P::bias, l);
        const auto rows = c.num_heads * D;
        for (auto* x : {&L.q, &L.k, &L.v}) {
          x->out = rows;
          x->in  = H;
          x->w.resize(static_cast<std::size_t>(rows * H));
          x->b.resize(static_cast<std::size_t>(rows));
        }
        model::split_bloom_qkv<double>(w, c.num_heads, D, H, L.q.w, L.k.w, L.v.w);
        model::split_bloom_qkv<double>(b, c.num_heads, D, 1, L.q.b, L.k.b, L.v.b);
      } else {
        L.q = lin(R::q, l);
        L.k = lin(R::k, l);
        L.v = lin(R::v, l);
      }
      L.o    = lin(R::o, l);
      L.gate = lin(R::gate, l);
      L.up   = lin(R::up, l);
      L.down = lin(R::down, l);
      m.layers_.push_back(std::move(L));
    }
    if (c.positions.kind == model::position_kind::rotary) {
      m.inv_freq_ = rope_inv_freq(c.positions.rotary, config_file);
    } else if (c.positions.kind == model::position_kind::alibi) {
      m.alibi_ = alibi_slopes(c.num_heads);
    }
    return m;
  }

  [[nodiscard]] const model::model_config& config() const noexcept { return cfg_; }
  [[nodiscard]] std::int64_t vocab_size() const noexcept { return cfg_.vocab_size; }
  [[nodiscard]] std::int64_t parameters() const noexcept { return parameters_; }
  [[nodiscard]] const std::vector<layer_weights>& layers() const noexcept { return layers_; }

  /// The block linear layer `slot` (q, k, v, o, gate, up, down) of `layer`.
  /// @throws invalid_argument for another role, a layer out of range, or a slot the model does not have.
  [[nodiscard]] const linear_weights& linear_at(std::int64_t layer, model::tensor_role slot) const {
    return const_cast<reference_model*>(this)->linear_slot(layer, slot);
  }

  /// Replaces the weight of block linear `slot` of `layer` by `w` ([out, in] row-major, same shape; the bias is
  /// kept). Used to evaluate a quantized model as its dequantized weights. Not safe while another thread runs
  /// logits().
  /// @throws invalid_argument as linear_at, or when w.size() != out * in.
  void set_linear_weight(std::int64_t layer, model::tensor_role slot, std::vector<double> w) {
    auto& l = linear_slot(layer, slot);
    QPROB_CHECK(static_cast<std::int64_t>(w.size()) == l.out * l.in, "set_linear_weight: layer ", layer, " ",
                model::to_string(slot), " is [", l.out, ", ", l.in, "] but ", w.size(), " values were given");
    l.w = std::move(w);
  }

  /// Logits of one sequence at positions 0..T-1 (causal): a (T, vocab) row-major matrix.
  /// @throws invalid_argument for an empty sequence, a token outside the vocabulary, or (learned positions
  ///         only) T above max_position_embeddings.
  [[nodiscard]] std::vector<double> logits(std::span<const token_id> tokens) const { return logits(tokens, {}); }

  /// The same, calling `observe` (when set) with the input of every block linear layer (see linear_observer).
  [[nodiscard]] std::vector<double> logits(std::span<const token_id> tokens, const linear_observer& observe) const {
    const linear_observer* obs = observe ? &observe : nullptr;
    const auto& c = cfg_;
    const auto T  = static_cast<std::int64_t>(tokens.size());
    QPROB_CHECK(T > 0, "reference_model::logits: empty sequence");
    for (std::int64_t t = 0; t < T; ++t) {
      const auto id = tokens[static_cast<std::size_t>(t)];
      QPROB_CHECK(id >= 0 && id < c.vocab_size, "reference_model::logits: token ", id, " at position ", t,
                  " is outside vocab_size=", c.vocab_size);
    }
    if (c.positions.kind == model::position_kind::learned) {
      QPROB_CHECK_LE(T, c.max_positions, "the learned position table has max_position_embeddings rows");
    }
    const auto H = c.hidden_size, E = c.word_embed_proj_dim;

    // Embeddings.
    std::vector<double> x(static_cast<std::size_t>(T * E));
    for (std::int64_t t = 0; t < T; ++t) {
      const auto id = tokens[static_cast<std::size_t>(t)];
      std::copy_n(embed_tokens_.begin() + id * E, E, x.begin() + t * E);
    }
    if (project_in_.present()) {
      x = linear(x, T, project_in_);
    }
    if (embed_norm_.present()) {
      norm_rows(x, T, H, embed_norm_);
    }
    if (c.positions.kind == model::position_kind::learned) {
      for (std::int64_t t = 0; t < T; ++t) {
        for (std::int64_t i = 0; i < H; ++i) {
          x[idx(t * H + i)] += embed_positions_[idx((t + c.positions.learned_offset) * H + i)];
        }
      }
    }

    // Blocks.
    for (std::int64_t l = 0; l < c.num_layers; ++l) {
      const auto& L = layers_[static_cast<std::size_t>(l)];
      if (c.pre_norm) {
        auto h = x;
        norm_rows(h, T, H, L.attn_norm);
        if (c.parallel_attn_mlp) {
          const auto a = attention(h, T, l, obs);
          const auto f = mlp(h, T, L, l, obs);
          for (std::size_t i = 0; i < x.size(); ++i) {
            x[i] = (a[i] + f[i]) + x[i];
          }
          continue;
        }
        auto a = attention(h, T, l, obs);
        add_in_place(a, c.residual_post_norm ? h : x);
        x = std::move(a);
        h = x;
        norm_rows(h, T, H, L.mlp_norm);
        auto f = mlp(h, T, L, l, obs);
        add_in_place(f, c.residual_post_norm ? h : x);
        x = std::move(f);
      } else {  // OPT post-norm (do_layer_norm_before = false)
        auto a = attention(x, T, l, obs);
        add_in_place(x, a);
        norm_rows(x, T, H, L.attn_norm);
        auto f = mlp(x, T, L, l, obs);
        add_in_place(x, f);
        norm_rows(x, T, H, L.mlp_norm);
      }
    }

    // Head.
    if (final_norm_.present()) {
      norm_rows(x, T, H, final_norm_);
    }
    if (project_out_.present()) {
      x = linear(x, T, project_out_);
    }
    return linear(x, T, lm_head_);
  }

private:
  static std::size_t idx(std::int64_t i) noexcept { return static_cast<std::size_t>(i); }

  static void add_in_place(std::vector<double>& a, const std::vector<double>& b) {
    for (std::size_t i = 0; i < a.size(); ++i) {
      a[i] = a[i] + b[i];
    }
  }

  /// y[t, o] = sum_i x[t, i] * w[o, i] + b[o] for a (T, in) input.
  static std::vector<double> linear(const std::vector<double>& x, std::int64_t T, const linear_weights& l) {
    std::vector<double> y(idx(T * l.out));
    for (std::int64_t t = 0; t < T; ++t) {
      const double* xr = x.data() + t * l.in;
      for (std::int64_t o = 0; o < l.out; ++o) {
        const double* wr = l.w.data() + o * l.in;
        double s         = 0.0;
        for (std::int64_t i = 0; i < l.in; ++i) {
          s += xr[i] * wr[i];
        }
        y[idx(t * l.out + o)] = l.b.empty() ? s : s + l.b[idx(o)];
      }
    }
    return y;
  }

  /// linear() of block layer `layer`'s `slot`, reporting the input to the observer first.
  static std::vector<double> block_linear(const std::vector<double>& x, std::int64_t T, const linear_weights& w,
                                          std::int64_t layer, model::tensor_role slot, const linear_observer* obs) {
    if (obs != nullptr) {
      (*obs)(layer, slot, std::span<const double>(x.data(), idx(T * w.in)), T);
    }
    return linear(x, T, w);
  }

  linear_weights& linear_slot(std::int64_t layer, model::tensor_role slot) {
    QPROB_CHECK(layer >= 0 && layer < static_cast<std::int64_t>(layers_.size()), "reference_model: layer ", layer,
                " is outside [0, ", layers_.size(), ")");
    auto& L = layers_[idx(layer)];
    using R = model::tensor_role;
    linear_weights* l = nullptr;
    switch (slot) {
      case R::q: l = &L.q; break;
      case R::k: l = &L.k; break;
      case R::v: l = &L.v; break;
      case R::o: l = &L.o; break;
      case R::gate: l = &L.gate; break;
      case R::up: l = &L.up; break;
      case R::down: l = &L.down; break;
      default: break;
    }
    QPROB_CHECK(l != nullptr, "reference_model: ", model::to_string(slot), " is not a block linear slot");
    QPROB_CHECK(l->present(), "reference_model: layer ", layer, " has no ", model::to_string(slot), " weight");
    return *l;
  }

  /// Normalizes each of the T rows of width n in place with the configured norm.
  void norm_rows(std::vector<double>& x, std::int64_t rows, std::int64_t n, const norm_weights& w) const {
    for (std::int64_t r = 0; r < rows; ++r) {
      std::span<double> row(x.data() + r * n, idx(n));
      if (cfg_.norm == model::norm_kind::rms_norm) {
        rms_norm(row, w.w, cfg_.norm_eps);
      } else {
        layer_norm(row, w.w, w.b, cfg_.norm_eps);
      }
    }
  }

  std::vector<double> mlp(const std::vector<double>& h, std::int64_t T, const layer_weights& L, std::int64_t l,
                          const linear_observer* obs) const {
    using R = model::tensor_role;
    std::vector<double> g;
    if (cfg_.gated_mlp) {  // gate before up: AutoGPTQ's true-sequential order lists [gate, up]
      g = block_linear(h, T, L.gate, l, R::gate, obs);
    }
    auto u = block_linear(h, T, L.up, l, R::up, obs);
    if (cfg_.gated_mlp) {
      for (std::size_t i = 0; i < u.size(); ++i) {
        u[i] = activate(cfg_.act, cfg_.activation_name, g[i]) * u[i];
      }
    } else {
      for (auto& v : u) {
        v = activate(cfg_.act, cfg_.activation_name, v);
      }
    }
    return block_linear(u, T, L.down, l, R::down, obs);
  }

  /// Causal self-attention of layer l over a (T, hidden) input; returns the o projection, (T, hidden).
  std::vector<double> attention(const std::vector<double>& h, std::int64_t T, std::int64_t l,
                                const linear_observer* obs) const {
    using R        = model::tensor_role;
    const auto& c  = cfg_;
    const auto& L  = layers_[idx(l)];
    const auto D   = c.head_dim, NH = c.num_heads, NKV = c.num_kv_heads;
    const auto QD  = NH * D, KVD = NKV * D;
    auto q         = block_linear(h, T, L.q, l, R::q, obs);
    auto k         = block_linear(h, T, L.k, l, R::k, obs);
    const auto v   = block_linear(h, T, L.v, l, R::v, obs);
    const auto grp = NH / NKV;
    if (L.q_norm.present()) {  // Phi qk_layernorm: a LayerNorm over each head vector, before rotary
      for (std::int64_t t = 0; t < T; ++t) {
        for (std::int64_t hd = 0; hd < NH; ++hd) {
          layer_norm({q.data() + t * QD + hd * D, idx(D)}, L.q_norm.w, L.q_norm.b, c.norm_eps);
        }
        for (std::int64_t hd = 0; hd < NKV; ++hd) {
          layer_norm({k.data() + t * KVD + hd * D, idx(D)}, L.k_norm.w, L.k_norm.b, c.norm_eps);
        }
      }
    }
    if (!inv_freq_.empty()) {
      for (std::int64_t t = 0; t < T; ++t) {
        for (std::int64_t hd = 0; hd < NH; ++hd) {
          apply_rotary({q.data() + t * QD + hd * D, idx(D)}, t, inv_freq_);
        }
        for (std::int64_t hd = 0; hd < NKV; ++hd) {
          apply_rotary({k.data() + t * KVD + hd * D, idx(D)}, t, inv_freq_);
        }
      }
    }
    const double scale      = 1.0 / std::sqrt(static_cast<double>(D));
    const bool sliding      = c.sliding_window && idx(l) < c.layer_sliding.size() && c.layer_sliding[idx(l)];
    const std::int64_t win  = sliding ? *c.sliding_window : std::numeric_limits<std::int64_t>::max();
    std::vector<double> out(idx(T * QD));
    std::vector<double> p(idx(T));
    for (std::int64_t hd = 0; hd < NH; ++hd) {
      const auto kvh = hd / grp;
      for (std::int64_t i = 0; i < T; ++i) {
        const double* qi = q.data() + i * QD + hd * D;
        // Visible keys: max(0, i - win + 1) .. i.
        const std::int64_t first = win > i ? 0 : i - win + 1;
        double m                 = -std::numeric_limits<double>::infinity();
        for (std::int64_t j = first; j <= i; ++j) {
          const double* kj = k.data() + j * KVD + kvh * D;
          double dot       = 0.0;
          for (std::int64_t d = 0; d < D; ++d) {
            dot += qi[d] * kj[d];
          }
          double s = dot * scale;
          if (!alibi_.empty()) {
            s = alibi_[idx(hd)] * static_cast<double>(j) + s;
          }
          p[idx(j)] = s;
          m         = std::max(m, s);
        }
        double z = 0.0;
        for (std::int64_t j = first; j <= i; ++j) {
          p[idx(j)] = std::exp(p[idx(j)] - m);
          z += p[idx(j)];
        }
        double* oi = out.data() + i * QD + hd * D;
        for (std::int64_t j = first; j <= i; ++j) {
          const double w   = p[idx(j)] / z;
          const double* vj = v.data() + j * KVD + kvh * D;
          for (std::int64_t d = 0; d < D; ++d) {
            oi[d] += w * vj[d];
          }
        }
      }
    }
    return block_linear(out, T, L.o, l, R::o, obs);
  }

  model::model_config cfg_;
  std::int64_t parameters_ = 0;
  std::vector<double> embed_tokens_, embed_positions_;
  norm_weights embed_norm_, final_norm_;
  linear_weights project_in_, project_out_, lm_head_;
  std::vector<layer_weights> layers_;
  std::vector<double> inv_freq_;  // rotary only
  std::vector<double> alibi_;     // ALiBi only
};

// ---- scoring ------------------------------------------------------------------------------------------------

/// lm-eval's answer for one (context, continuation) request, plus the per-token terms.
struct loglikelihood_result {
  double sum     = 0.0;    ///< sum of log p(continuation token | prefix), nats
  bool is_greedy = false;  ///< every continuation token is the argmax (first index on ties) of its row
  std::vector<double> token_logprobs;
};

/// lm-eval's max_length for a model: max_position_embeddings, else 2048 (lm-eval's default; it also consults
/// the tokenizer's model_max_length, which qprob does not read: for BLOOM that is "infinite", so 2048 too).
inline std::int64_t default_max_length(const model::model_config& c) noexcept {
  return c.max_positions > 0 ? c.max_positions : 2048;
}

/// Checks a max_length asked for: positive, and within the position table of a model with learned positions
/// (OPT); rotary and ALiBi models compute any position (lm-eval lets --model_args max_length exceed the config).
/// @throws invalid_argument naming both numbers.
inline void check_max_length(const model::model_config& c, std::int64_t max_length) {
  QPROB_CHECK(max_length > 0, "max_length=", max_length, " must be positive");
  QPROB_CHECK(c.positions.kind != model::position_kind::learned || max_length <= c.max_positions, "max_length=",
              max_length, " exceeds the model's learned position table (max_position_embeddings=", c.max_positions, ")");
}

/// Scores `continuation` after `context` as lm-eval's _loglikelihood_tokens: the model input is
/// (context + continuation)[-(max_length + 1):][:-1] (left truncation, last token dropped), and the last
/// len(continuation) rows of its log-softmax score the continuation tokens.
/// @throws invalid_argument for an empty context or continuation, or a continuation longer than max_length.
inline loglikelihood_result loglikelihood(const reference_model& m, std::span<const token_id> context,
                                          std::span<const token_id> continuation,
                                          std::optional<std::int64_t> max_length = std::nullopt) {
  const auto max_len = max_length.value_or(default_max_length(m.config()));
  QPROB_CHECK(!context.empty(), "loglikelihood: empty context (lm-eval puts the prefix token there)");
  QPROB_CHECK(!continuation.empty(), "loglikelihood: empty continuation");
  QPROB_CHECK(max_len > 0, "loglikelihood: max_length=", max_len);
  QPROB_CHECK_LE(static_cast<std::int64_t>(continuation.size()), max_len, "continuation longer than max_length");
  std::vector<token_id> all(context.begin(), context.end());
  all.insert(all.end(), continuation.begin(), continuation.end());
  const auto total = static_cast<std::int64_t>(all.size());
  const auto begin = std::max<std::int64_t>(0, total - (max_len + 1));
  const std::vector<token_id> input(all.begin() + begin, all.end() - 1);
  const auto T      = static_cast<std::int64_t>(input.size());
  const auto V      = m.vocab_size();
  const auto logits = m.logits(input);
  const auto n      = static_cast<std::int64_t>(continuation.size());
  loglikelihood_result r;
  r.is_greedy = true;
  for (std::int64_t i = 0; i < n; ++i) {
    const std::span<const double> row(logits.data() + (T - n + i) * V, static_cast<std::size_t>(V));
    const auto tok   = continuation[static_cast<std::size_t>(i)];
    const double lp  = row[static_cast<std::size_t>(tok)] - log_sum_exp(row);
    const auto arg   = std::max_element(row.begin(), row.end()) - row.begin();
    r.is_greedy      = r.is_greedy && arg == tok;
    r.sum += lp;
    r.token_logprobs.push_back(lp);
  }
  return r;
}

}  // namespace qprob::reference
