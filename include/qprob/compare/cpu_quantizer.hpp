// SPDX-License-Identifier: Apache-2.0
#pragma once
// Host quantization of a whole model for `qprob compare --device cpu`: RTN or GPTQ of every linear layer of the
// transformer blocks on the double-precision reference model (reference/forward.hpp), and the inverse step, a
// reference model whose block linears are replaced by the dequantized weights of a GPTQ checkpoint (what the
// quantized GPU kernels compute, up to their rounding). Meant for tiny models (stories260K in CI); the GPU
// quantizer will implement the same steps on the device.
//
// GPTQ follows AutoGPTQ's quantize() with true_sequential=True: decoder layers in order; within a layer the
// sub-groups [q, k, v] -> [o] -> [gate, up] -> [down] (no gate for plain MLPs; BLOOM: [query_key_value] ->
// [dense] -> [dense_h_to_4h] -> [dense_4h_to_h], AutoGPTQ's inside_layer_modules); before each sub-group the
// inputs of its linears are recomputed on every calibration window by a forward pass of the model in which all
// previously quantized linears already hold their dequantized weights (so quantization error propagates, as in
// AutoGPTQ). Each window is one "batch" of AutoGPTQ's add_batch: H = 2/nsamples * sum over windows and positions
// of x x^T (the 1/nsamples scale does not change GPTQ's result; damping is relative to mean(diag H)).
// Cost: (layers * sub-groups) full forward passes over the calibration windows; fine for tiny models only.
//
// BLOOM's fused, head-interleaved query_key_value is ONE linear layer here, as in AutoGPTQ and GPTQModel: the
// [3 * hidden, hidden] matrix (rows in the checkpoint's order, model/weights.hpp bloom_qkv_row) is quantized with
// one Hessian (its input is the attention norm's output, which the reference model reports for q, k and v
// alike) and saved under its own name "transformer.h.<i>.self_attention.query_key_value". The reference model
// holds q, k and v split; fused_weight() / install_weight() convert between the two layouts.
// Layer: compare (host only).

#include <qprob/core/error.hpp>
#include <qprob/core/numeric.hpp>
#include <qprob/core/tensor_view.hpp>
#include <qprob/io/safetensors.hpp>
#include <qprob/model/config.hpp>
#include <qprob/model/weights.hpp>
#include <qprob/quant/checkpoint.hpp>
#include <qprob/reference/forward.hpp>
#include <qprob/reference/gptq.hpp>
#include <qprob/reference/rtn.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace qprob::compare {

enum class quant_method { rtn, gptq };

[[nodiscard]] inline std::string_view to_string(quant_method m) noexcept { return m == quant_method::rtn ? "rtn" : "gptq"; }

/// One block linear layer of a source checkpoint.
struct block_linear {
  std::string name;  ///< Hugging Face module name, e.g. "model.layers.0.self_attn.q_proj"
  std::int64_t layer = 0;
  model::tensor_role role = model::tensor_role::q;  ///< q, k, v, qkv (BLOOM's fused query_key_value), o, ...
  std::int64_t n = 0;  ///< output features
  std::int64_t k = 0;  ///< input features
};

/// Every quantizable linear of the transformer blocks of the checkpoint in `model_dir`, in layout order
/// (BLOOM: query_key_value as one [3 * hidden, hidden] linear of role qkv).
/// @throws format_error / invalid_argument for an unreadable model or one without block linears.
[[nodiscard]] inline std::vector<block_linear> block_linears(const std::filesystem::path& model_dir) {
  const auto cfg  = model::load_config(model_dir);
  const auto ckpt = io::checkpoint::open(model_dir);
  const auto map  = model::map_weights(cfg, ckpt);
  std::vector<block_linear> out;
  for (const auto& t : map.tensors()) {
    if (t.info == nullptr || t.slot.part != model::tensor_part::weight || !quant::detail::is_quantized_role(t.slot.role)) {
      continue;
    }
    out.push_back({quant::detail::module_name(t.slot), t.slot.layer, t.slot.role, t.slot.shape[0], t.slot.shape[1]});
  }
  QPROB_CHECK(!out.empty(), "compare: ", model_dir.string(), " has no block linear layer to quantize");
  return out;
}

/// AutoGPTQ's true-sequential sub-groups of one decoder layer.
[[nodiscard]] inline std::vector<std::vector<model::tensor_role>> sequential_groups(const model::model_config& c) {
  using R = model::tensor_role;
  if (c.model_family == model::family::bloom) {
    return {{R::qkv}, {R::o}, {R::up}, {R::down}};
  }
  if (c.gated_mlp) {
    return {{R::q, R::k, R::v}, {R::o}, {R::gate, R::up}, {R::down}};
  }
  return {{R::q, R::k, R::v}, {R::o}, {R::up}, {R::down}};
}

struct quantize_settings {
  quant_method method = quant_method::gptq;
  quant::runtime_policy policy;  ///< bits, group size (qprob convention: 0 = per channel), sym, desc_act
  gptq_options gptq;             ///< damp_percent etc. (GPTQ only)
};

/// What was done to one layer (for the results JSON and logs).
struct layer_report {
  std::string name;
  double loss         = std::numeric_limits<double>::quiet_NaN();  ///< GPTQ loss; NaN for RTN
  double damp_percent = std::numeric_limits<double>::quiet_NaN();  ///< dampening that succeeded (GPTQ)
  std::int64_t dead_columns = 0;
  double weight_mse   = 0;  ///< mean (w - dequantized w)^2 over the layer
};

struct quantize_result {
  std::vector<quant::quantized_linear> layers;  ///< in block_linears() order
  std::vector<layer_report> reports;
  /// Wall time per part of the work where the backend measures it (GPU: calibration forwards, solver).
  std::vector<std::pair<std::string, double>> phase_seconds;
};

using quantize_progress = std::function<void(std::size_t done, std::size_t total)>;

namespace detail {

[[nodiscard]] inline std::vector<double> dequantized(const reference::quantized_weight& q, const quant::runtime_policy& p) {
  const auto h = quant::dequantize_half(q, p);
  std::vector<double> w(h.size());
  std::transform(h.begin(), h.end(), w.begin(), [](half_t v) { return to_double(v); });
  return w;
}

[[nodiscard]] inline double mse(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    s += (a[i] - b[i]) * (a[i] - b[i]);
  }
  return a.empty() ? 0.0 : s / static_cast<double>(a.size());
}

}  // namespace detail

/// The current [n, k] weight of block linear `role` of `layer` of `m` in the checkpoint's layout: BLOOM's qkv
/// is fused back from the model's q, k and v (bloom_qkv_row order); any other role is the model's weight.
/// @throws invalid_argument as reference_model::linear_at.
[[nodiscard]] inline std::vector<double> fused_weight(const reference::reference_model& m, std::int64_t layer,
                                                      model::tensor_role role) {
  if (role != model::tensor_role::qkv) {
    return m.linear_at(layer, role).w;
  }
  const auto& c = m.config();
  const auto& q = m.linear_at(layer, model::tensor_role::q);
  return model::fuse_bloom_qkv<double>(q.w, m.linear_at(layer, model::tensor_role::k).w,
                                       m.linear_at(layer, model::tensor_role::v).w, c.num_heads, c.head_dim, q.in);
}

/// The [n, k] shape of block linear `role` of `layer` in the checkpoint's layout (qkv: 3 * q's rows).
[[nodiscard]] inline std::pair<std::int64_t, std::int64_t> linear_shape(const reference::reference_model& m,
                                                                        std::int64_t layer, model::tensor_role role) {
  const bool fused = role == model::tensor_role::qkv;
  const auto& l    = m.linear_at(layer, fused ? model::tensor_role::q : role);
  return {fused ? 3 * l.out : l.out, l.in};
}

/// Replaces block linear `role` of `layer` of `m` by `w` ([n, k] in the checkpoint's layout): BLOOM's fused qkv
/// is split into the model's q, k and v (model::split_bloom_qkv); biases are kept.
/// @throws invalid_argument as reference_model::set_linear_weight.
inline void install_weight(reference::reference_model& m, std::int64_t layer, model::tensor_role role,
                           std::vector<double> w) {
  using R = model::tensor_role;
  if (role != R::qkv) {
    m.set_linear_weight(layer, role, std::move(w));
    return;
  }
  const auto& c    = m.config();
  const auto [n, k] = linear_shape(m, layer, role);
  QPROB_CHECK(static_cast<std::int64_t>(w.size()) == n * k, "install_weight: layer ", layer, " query_key_value is [",
              n, ", ", k, "] but ", w.size(), " values were given");
  const auto part = static_cast<std::size_t>(n / 3 * k);
  std::vector<double> q(part), kk(part), v(part);
  model::split_bloom_qkv<double>(w, c.num_heads, c.head_dim, k, q, kk, v);
  m.set_linear_weight(layer, R::q, std::move(q));
  m.set_linear_weight(layer, R::k, std::move(kk));
  m.set_linear_weight(layer, R::v, std::move(v));
}

/// Quantizes every linear of `linears` of the model `m` (RTN: weights only; GPTQ: with the calibration
/// `windows`, see the header comment). `m` is left with the dequantized weights in place of the quantized ones,
/// so it is the quantized model afterwards. `progress` is called after each layer.
/// @throws invalid_argument for settings no preset policy implements (quant::dispatch_policy), RTN with
///         desc_act, GPTQ without windows.
inline quantize_result quantize_model(reference::reference_model& m, const std::vector<block_linear>& linears,
                                      const quantize_settings& s, const std::vector<std::vector<std::int32_t>>& windows,
                                      const quantize_progress& progress = {}) {
  QPROB_CHECK(s.method == quant_method::gptq || !s.policy.desc_act,
              "compare: --desc-act needs --quant gptq (act-order is GPTQ's column order; RTN has none)");
  QPROB_CHECK(s.method == quant_method::rtn || !windows.empty(), "compare: GPTQ needs calibration windows");
  quantize_result out;
  out.layers.resize(linears.size());
  out.reports.resize(linears.size());
  std::map<std::pair<std::int64_t, model::tensor_role>, std::size_t> index;
  for (std::size_t i = 0; i < linears.size(); ++i) {
    index[{linears[i].layer, linears[i].role}] = i;
  }
  std::size_t done = 0;
  if (progress) {
    progress(0, linears.size());
  }
  // Quantizes linear i given its Hessian (nullptr for RTN) and installs its dequantized weight.
  const auto quantize_one = [&](std::size_t i, const std::vector<double>* hessian) {
    const auto& bl      = linears[i];
    const auto [mn, mk] = linear_shape(m, bl.layer, bl.role);
    QPROB_CHECK(mn == bl.n && mk == bl.k, "compare: ", bl.name, " is [", bl.n, ", ", bl.k, "] in the checkpoint but [",
                mn, ", ", mk, "] in the model");
    const auto current = fused_weight(m, bl.layer, bl.role);
    const auto w       = make_host_view(current.data(), bl.n, bl.k);
    layer_report rep;
    rep.name = bl.name;
    reference::quantized_weight q;
    if (hessian == nullptr) {
      q = quant::dispatch_policy(s.policy, [&](auto tag) {
        using P = typename decltype(tag)::type;
        return reference::rtn_quantize<P, double>(w);
      });
    } else {
      const auto h = make_host_view(hessian->data(), bl.k, bl.k);
      auto r       = quant::dispatch_policy(s.policy, [&](auto tag) {
        using P = typename decltype(tag)::type;
        return reference::gptq_quantize<P, double>(w, h, s.gptq);
      });
      rep.loss         = r.report.loss;
      rep.damp_percent = r.report.damp_percent;
      rep.dead_columns = r.report.dead_columns;
      q                = std::move(r.weight);
    }
    auto deq       = detail::dequantized(q, s.policy);
    rep.weight_mse = detail::mse(current, deq);
    install_weight(m, bl.layer, bl.role, std::move(deq));
    out.layers[i]  = {bl.name, std::move(q)};
    out.reports[i] = std::move(rep);
    ++done;
    if (progress) {
      progress(done, linears.size());
    }
  };

  if (s.method == quant_method::rtn) {
    for (std::size_t i = 0; i < linears.size(); ++i) {
      quantize_one(i, nullptr);
    }
    return out;
  }

  const auto groups = sequential_groups(m.config());
  for (std::int64_t layer = 0; layer < m.config().num_layers; ++layer) {
    for (const auto& group : groups) {
      std::map<model::tensor_role, std::vector<double>> hessians;
      std::vector<std::size_t> members;
      for (const auto role : group) {
        if (const auto it = index.find({layer, role}); it != index.end()) {
          members.push_back(it->second);
          const auto k = linears[it->second].k;
          hessians[role].assign(static_cast<std::size_t>(k * k), 0.0);
        }
      }
      if (members.empty()) {
        continue;
      }
      const auto observe = [&](std::int64_t l, model::tensor_role role, std::span<const double> x, std::int64_t rows) {
        if (l != layer) {
          return;
        }
        // BLOOM: the model reports the fused layer's one input as q's (and again as k's and v's: skipped).
        if (role == model::tensor_role::q && hessians.contains(model::tensor_role::qkv)) {
          role = model::tensor_role::qkv;
        }
        const auto it = hessians.find(role);
        if (it == hessians.end()) {
          return;
        }
        auto& h             = it->second;
        const std::size_t k = x.size() / static_cast<std::size_t>(rows);
        for (std::int64_t r = 0; r < rows; ++r) {
          const double* xr = x.data() + static_cast<std::size_t>(r) * k;
          for (std::size_t a = 0; a < k; ++a) {
            const double xa = xr[a];
            double* ha      = h.data() + a * k;
            for (std::size_t b = 0; b <= a; ++b) {
              ha[b] += xa * xr[b];
            }
          }
        }
      };
      for (const auto& win : windows) {
        (void)m.logits(win, observe);
      }
      const double scale = 2.0 / static_cast<double>(windows.size());
      for (auto& [role, h] : hessians) {
        const auto k = static_cast<std::size_t>(std::llround(std::sqrt(static_cast<double>(h.size()))));
        for (std::size_t a = 0; a < k; ++a) {
          for (std::size_t b = 0; b <= a; ++b) {
            h[a * k + b] *= scale;
            h[b * k + a] = h[a * k + b];
          }
        }
      }
      for (const auto i : members) {
        quantize_one(i, &hessians.at(linears[i].role));
      }
    }
  }
  return out;
}

/// Replaces every block linear of `m` named in `ckpt` by its dequantized fp16 weight (widened to double; BLOOM's
/// fused query_key_value is split into q, k and v). The
/// checkpoint must describe the same architecture (layers and shapes); its fp16 copies of the other tensors are
/// not used: the quantized model keeps `m`'s embeddings, norms and head.
/// @throws invalid_argument when the checkpoint does not fit `m` or quantizes no layer.
inline void apply_dequantized(reference::reference_model& m, const quant::gptq_checkpoint& ckpt) {
  const auto& c = m.config();
  QPROB_CHECK(ckpt.config.num_layers == c.num_layers && ckpt.config.hidden_size == c.hidden_size &&
                  ckpt.config.vocab_size == c.vocab_size,
              "compare: the quantized checkpoint ", ckpt.dir.string(), " (", ckpt.config.num_layers, " layers, hidden ",
              ckpt.config.hidden_size, ", vocab ", ckpt.config.vocab_size, ") is not a quantization of the model (",
              c.num_layers, " layers, hidden ", c.hidden_size, ", vocab ", c.vocab_size, ")");
  QPROB_CHECK(!ckpt.layers.empty(), "compare: ", ckpt.dir.string(), " has no quantized layer");
  for (const auto& l : ckpt.layers) {
    const auto [n, k] = linear_shape(m, l.layer, l.role);
    QPROB_CHECK(n == l.weight.n && k == l.weight.k, "compare: ", ckpt.dir.string(), ": ", l.name, " is [", l.weight.n,
                ", ", l.weight.k, "] but the model's is [", n, ", ", k, "]");
    install_weight(m, l.layer, l.role, detail::dequantized(l.weight, ckpt.quant.policy));
  }
}

}  // namespace qprob::compare
