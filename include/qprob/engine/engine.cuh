// SPDX-License-Identifier: Apache-2.0
#pragma once
// The GPU forward pass and scoring engine (implementation of engine.hpp), templated on the activation type.
// Per forward pass (a batch_plan of packed rows, see plan.hpp):
//
//   x (float32)  = embeddings [+ learned positions] [BLOOM: LayerNorm]          embed_kernel, norm_kernel
//   per layer    h = norm1(x)                                                    norm_kernel
//                qkv = h W_qkv^T (one GEMM, q|k|v fused at load); + bias; rotary  cuBLAS, qkv_kernel
//                att = causal attention over the plan's tiles                     attention_kernel
//                y1  = att W_o^T (float32 out)                                    cuBLAS
//                x  += y1 + b_o (or h + ... for BLOOM's post-norm residual)       residual_kernel
//                h = norm2(x); u = h W_up^T (gate|up fused); a = act(...);        norm, cuBLAS, mlp_act_kernel
//                y1 = a W_down^T; x += y1 + b_down                                cuBLAS, residual_kernel
//                (Phi: attention and MLP both read norm1(x); x += (y_att + y_mlp); OPT-350m: post-norm)
//   head         the selected rows only: final norm, [project_out], then head_rows rows at a time:
//                logits = h W_lm^T (float32), + bias, max/argmax/logsumexp/entropy   vocab_stats_kernel
//                target log-probabilities                                          gather_targets_kernel
//
// Every GEMM is issued on blocks of exactly gemm_rows rows (engine_options), so cuBLAS sees one shape per
// weight and picks one kernel; rows never interact inside a GEMM, the row-wise kernels reduce in a fixed order
// and the attention of a query depends only on its own request (plan.hpp): results are batch-invariant.
#include <qprob/core/cublas.hpp>
#include <qprob/core/cuda_check.hpp>
#include <qprob/core/device_buffer.hpp>
#include <qprob/core/error.hpp>
#include <qprob/core/launch.hpp>
#include <qprob/core/numeric.hpp>
#include <qprob/core/stream.hpp>
#include <qprob/engine/engine.hpp>
#include <qprob/engine/attention_mma.cuh>
#include <qprob/engine/kernels.cuh>
#include <qprob/engine/plan.hpp>
#include <qprob/io/safetensors.hpp>
#include <qprob/model/config.hpp>
#include <qprob/model/weights.hpp>
#include <qprob/quant/gptq.hpp>
#include <qprob/quant/packed_linear.cuh>
#include <qprob/quant/rtn.hpp>
#include <qprob/reference/forward.hpp>

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace qprob::engine::detail {

/// The virtual interface engine.hpp's pimpl holds (one implementation per activation type).
class engine_impl {
public:
  virtual ~engine_impl() = default;
  [[nodiscard]] virtual const model::model_config& config() const noexcept = 0;
  [[nodiscard]] virtual activation_type dtype() const noexcept = 0;
  [[nodiscard]] virtual std::int64_t max_length() const noexcept = 0;
  [[nodiscard]] virtual std::vector<request_score> score(std::span<const token_request> requests, bool token_logprobs,
                                                         bool share_prefixes) = 0;
  [[nodiscard]] virtual std::vector<next_token_score> next_token(std::span<const std::span<const token_id>> contexts) = 0;
  [[nodiscard]] virtual std::vector<float> logits(std::span<const token_id> tokens) = 0;
  virtual void window_logprobs(std::span<const token_id> window,
                               const std::function<void(std::int64_t, std::span<const float>)>& on_row) = 0;
  [[nodiscard]] virtual std::vector<quantized_layer> quantize(const quantize_settings& settings,
                                                               std::span<const std::vector<token_id>> windows,
                                                               const quantize_progress& progress) = 0;
  virtual void set_quantized_weight(std::int64_t layer, model::tensor_role role, const reference::quantized_weight& q,
                                    const quant::runtime_policy& policy) = 0;
  [[nodiscard]] virtual engine_stats stats() const = 0;
};

/// Where run_layer() stops: after reporting the input of a sub-group's linears (GPTQ's Hessian passes), or
/// after the whole layer.
enum class layer_stage : int { qkv_input, o_input, up_input, down_input, all };

/// Partial sums of (a - b)^2 over a grid-stride range, one per block (summed on the host in block order).
template <class T>
__global__ void squared_difference_kernel(const T* __restrict__ a, const T* __restrict__ b, std::int64_t n,
                                          double* __restrict__ partial) {
  using reduce = cub::BlockReduce<double, 256>;
  __shared__ typename reduce::TempStorage tmp;
  double s = 0.0;
  for (std::int64_t i = blockIdx.x * 256ll + threadIdx.x; i < n; i += static_cast<std::int64_t>(gridDim.x) * 256) {
    const double d = static_cast<double>(kernels::load_f(a + i)) - static_cast<double>(kernels::load_f(b + i));
    s += d * d;
  }
  s = reduce(tmp).Sum(s);
  if (threadIdx.x == 0) {
    partial[blockIdx.x] = s;
  }
}

template <class Act>
constexpr cudaDataType_t cuda_type() noexcept {
  return std::is_same_v<Act, half_t> ? CUDA_R_16F : std::is_same_v<Act, bfloat16_t> ? CUDA_R_16BF : CUDA_R_32F;
}

inline std::int64_t round_up(std::int64_t v, std::int64_t m) noexcept { return (v + m - 1) / m * m; }

/// A growable device workspace: keeps its allocation when asked for less.
template <class T>
struct workspace {
  device_buffer<T> buf;
  T* get(std::int64_t count, cudaStream_t stream) {
    if (buf.size() < count) {
      buf = device_buffer<T>();
      buf = device_buffer<T>(count, stream);
      buf.fill_bytes(0);  // padded GEMM rows read defined values
    }
    return buf.data();
  }
};

template <class Act>
class engine_impl_t final : public engine_impl {
public:
  /// Rows [row0, row0 + rows) of a block linear held as codes for the fused GEMM (quantized_linears::packed).
  struct packed_part {
    std::int64_t row0 = 0, rows = 0;
    std::unique_ptr<quant::packed_linear> w;
  };
  struct linear {
    std::int64_t out = 0, in = 0;
    device_buffer<Act> w;     // [out, in]; released once packed parts cover every row
    device_buffer<float> b;   // [out] or empty
    std::vector<packed_part> packed;  // sorted by row0, disjoint; W's other rows come from w
    [[nodiscard]] const float* bias() const noexcept { return b.empty() ? nullptr : b.data(); }
  };
  struct norm {
    device_buffer<float> w, b;
    [[nodiscard]] bool present() const noexcept { return !w.empty(); }
  };
  struct layer {
    norm attn_norm, mlp_norm, q_norm, k_norm;
    linear qkv, o, up, down;  // up = gate | up for gated MLPs
  };

  engine_impl_t(model::model_config cfg, const engine_options& options)
      : cfg_(std::move(cfg)), options_(options), blas_(stream_.get()) {
    QPROB_CHECK(options_.gemm_rows > 0 && options_.head_rows > 0 && options_.max_batch_rows > 0,
                "engine_options: gemm_rows=", options_.gemm_rows, ", head_rows=", options_.head_rows,
                " and max_batch_rows=", options_.max_batch_rows, " must be positive");
    max_length_ = options_.max_length.value_or(reference::default_max_length(cfg_));
    reference::check_max_length(cfg_, max_length_);
    QPROB_CUBLAS_TRY(cublasSetMathMode(blas_.get(), static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH |
                                                                               CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
    cudaMemPool_t pool = nullptr;
    QPROB_CUDA_TRY(cudaDeviceGetDefaultMemPool(&pool, options_.device));
    std::uint64_t zero = 0;
    QPROB_CUDA_TRY(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &zero));
    // Keep freed per-batch buffers in the pool (as PyTorch's caching allocator does) instead of returning
    // them to the driver at every synchronisation.
    std::uint64_t keep = UINT64_MAX;
    QPROB_CUDA_TRY(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
    check_supported("config.json");
  }

  // ---- loading --------------------------------------------------------------------------------------------

  void load(const io::checkpoint& ckpt, const std::string& config_file) {
    check_supported(config_file);
    const auto map = model::map_weights(cfg_, ckpt);
    using R = model::tensor_role;
    using P = model::tensor_part;
    const auto host = [&](R role, P part, std::int64_t layer) -> std::vector<Act> {
      const auto* info = map.find(role, part, layer);
      return info == nullptr ? std::vector<Act>{} : ckpt.read_as<Act>(info->name);
    };
    const auto host_f = [&](R role, P part, std::int64_t layer) -> std::vector<float> {
      const auto* info = map.find(role, part, layer);
      return info == nullptr ? std::vector<float>{} : ckpt.read_as<float>(info->name);
    };
    const auto up_act = [&](const std::vector<Act>& v) { return device_buffer<Act>(std::span<const Act>(v), stream_); };
    const auto up_f   = [&](const std::vector<float>& v) { return device_buffer<float>(std::span<const float>(v), stream_); };
    const auto lin = [&](R role, std::int64_t layer) {
      linear l;
      if (const auto* info = map.find(role, P::weight, layer)) {
        l.out = info->shape[0];
        l.in  = info->shape[1];
        l.w   = up_act(ckpt.read_as<Act>(info->name));
        l.b   = up_f(host_f(role, P::bias, layer));
      }
      return l;
    };
    const auto nrm = [&](R role, std::int64_t layer) { return norm{up_f(host_f(role, P::weight, layer)), up_f(host_f(role, P::bias, layer))}; };
    // Each upload reads pageable host memory: synchronise before the host vector goes away.
    embed_       = up_act(host(R::embed_tokens, P::weight, model::global_tensor));
    positions_   = up_act(host(R::embed_positions, P::weight, model::global_tensor));
    stream_.synchronize();
    embed_norm_  = nrm(R::embed_norm, model::global_tensor);
    project_in_  = lin(R::project_in, model::global_tensor);
    project_out_ = lin(R::project_out, model::global_tensor);
    final_norm_  = nrm(R::final_norm, model::global_tensor);
    lm_head_     = lin(R::lm_head, model::global_tensor);
    if (lm_head_.w.empty()) {  // tied to embed_tokens; a bias of its own is still possible
      lm_head_.b = up_f(host_f(R::lm_head, P::bias, model::global_tensor));
    }
    stream_.synchronize();
    const auto H = cfg_.hidden_size, D = cfg_.head_dim;
    const auto QD = cfg_.num_heads * D, KVD = cfg_.num_kv_heads * D;
    for (std::int64_t l = 0; l < cfg_.num_layers; ++l) {
      layer L;
      L.attn_norm = nrm(R::attn_norm, l);
      L.mlp_norm  = nrm(R::mlp_norm, l);
      L.q_norm    = nrm(R::q_norm, l);
      L.k_norm    = nrm(R::k_norm, l);
      // q | k | v as one [QD + 2 KVD, H] weight.
      std::vector<Act> w(static_cast<std::size_t>((QD + 2 * KVD) * H));
      std::vector<float> b;
      if (cfg_.model_family == model::family::bloom) {
        const auto fw = host(R::qkv, P::weight, l);
        const auto fb = host_f(R::qkv, P::bias, l);
        const auto part = static_cast<std::size_t>(QD * H);
        std::span<Act> ws(w);
        model::split_bloom_qkv<Act>(fw, cfg_.num_heads, D, H, ws.subspan(0, part), ws.subspan(part, part), ws.subspan(2 * part, part));
        if (!fb.empty()) {
          b.resize(static_cast<std::size_t>(3 * QD));
          std::span<float> bs(b);
          model::split_bloom_qkv<float>(fb, cfg_.num_heads, D, 1, bs.subspan(0, static_cast<std::size_t>(QD)),
                                        bs.subspan(static_cast<std::size_t>(QD), static_cast<std::size_t>(QD)),
                                        bs.subspan(static_cast<std::size_t>(2 * QD), static_cast<std::size_t>(QD)));
        }
      } else {
        std::size_t at = 0;
        bool any_bias  = false;
        std::vector<float> parts_b[3];
        const R roles[3] = {R::q, R::k, R::v};
        for (int i = 0; i < 3; ++i) {
          const auto part = host(roles[i], P::weight, l);
          std::copy(part.begin(), part.end(), w.begin() + static_cast<std::ptrdiff_t>(at));
          at += part.size();
          parts_b[i] = host_f(roles[i], P::bias, l);
          any_bias   = any_bias || !parts_b[i].empty();
        }
        if (any_bias) {
          const std::int64_t widths[3] = {QD, KVD, KVD};
          for (int i = 0; i < 3; ++i) {
            if (parts_b[i].empty()) {
              parts_b[i].assign(static_cast<std::size_t>(widths[i]), 0.0f);
            }
            b.insert(b.end(), parts_b[i].begin(), parts_b[i].end());
          }
        }
      }
      L.qkv = {QD + 2 * KVD, H, up_act(w), up_f(b), {}};
      L.o   = lin(R::o, l);
      if (cfg_.gated_mlp) {
        auto g = host(R::gate, P::weight, l);
        auto u = host(R::up, P::weight, l);
        const auto gb = host_f(R::gate, P::bias, l), ub = host_f(R::up, P::bias, l);
        g.insert(g.end(), u.begin(), u.end());
        std::vector<float> bb;
        if (!gb.empty() || !ub.empty()) {
          bb = gb.empty() ? std::vector<float>(static_cast<std::size_t>(cfg_.intermediate_size), 0.0f) : gb;
          if (ub.empty()) {
            bb.resize(static_cast<std::size_t>(2 * cfg_.intermediate_size), 0.0f);
          } else {
            bb.insert(bb.end(), ub.begin(), ub.end());
          }
        }
        L.up = {2 * cfg_.intermediate_size, H, up_act(g), up_f(bb), {}};
      } else {
        L.up = lin(R::up, l);
      }
      L.down = lin(R::down, l);
      stream_.synchronize();
      layers_.push_back(std::move(L));
    }
    finish_setup();
  }

  /// Random weights with the config's shapes (see engine::random).
  void init_random(std::uint64_t seed) {
    check_supported("config");
    std::uint64_t counter = seed * 0x100000001B3ull;
    const auto rnd = [&](std::int64_t n, float scale, float offset) {
      device_buffer<Act> w(n, stream_);
      kernels::fill_random_kernel<Act><<<1024, 256, 0, stream_>>>(w.data(), n, ++counter, scale, offset);
      QPROB_CUDA_TRY(qprob::detail::post_launch(stream_));
      return w;
    };
    const auto rnd_f = [&](std::int64_t n, float offset) {
      device_buffer<float> w(n, stream_);
      kernels::fill_random_kernel<float><<<256, 256, 0, stream_>>>(w.data(), n, ++counter, 0.0f, offset);
      QPROB_CUDA_TRY(qprob::detail::post_launch(stream_));
      return w;
    };
    const auto& c = cfg_;
    const auto H = c.hidden_size, E = c.word_embed_proj_dim, D = c.head_dim, I = c.intermediate_size;
    const auto QD = c.num_heads * D, KVD = c.num_kv_heads * D;
    const bool ln = c.norm == model::norm_kind::layer_norm;
    const auto mk_norm = [&](std::int64_t n) { return norm{rnd_f(n, 1.0f), ln && c.norm_bias ? rnd_f(n, 0.0f) : device_buffer<float>()}; };
    const auto mk_lin = [&](std::int64_t out, std::int64_t in, bool bias) {
      return linear{out, in, rnd(out * in, 0.02f, 0.0f), bias ? rnd_f(out, 0.0f) : device_buffer<float>(), {}};
    };
    embed_ = rnd(c.vocab_size * E, 0.02f, 0.0f);
    if (c.positions.kind == model::position_kind::learned) {
      positions_ = rnd((c.max_positions + c.positions.learned_offset) * H, 0.02f, 0.0f);
    }
    if (c.embedding_norm) {
      embed_norm_ = mk_norm(H);
    }
    if (E != H) {
      project_in_  = mk_lin(H, E, false);
      project_out_ = mk_lin(E, H, false);
    }
    if (c.final_norm) {
      final_norm_ = mk_norm(H);
    }
    if (!c.tie_word_embeddings) {
      lm_head_ = mk_lin(c.vocab_size, E, false);
    }
    if (c.bias.lm_head) {
      lm_head_.b = rnd_f(c.vocab_size, 0.0f);
    }
    for (std::int64_t l = 0; l < c.num_layers; ++l) {
      layer L;
      L.attn_norm = mk_norm(H);
      if (!c.parallel_attn_mlp) {
        L.mlp_norm = mk_norm(H);
      }
      if (c.qk_layernorm) {
        L.q_norm = mk_norm(D);
        L.k_norm = mk_norm(D);
      }
      L.qkv  = mk_lin(QD + 2 * KVD, H, c.bias.q || c.bias.k || c.bias.v);
      L.o    = mk_lin(H, QD, c.bias.o);
      L.up   = mk_lin(c.gated_mlp ? 2 * I : I, H, c.bias.mlp);
      L.down = mk_lin(H, I, c.bias.mlp);
      layers_.push_back(std::move(L));
    }
    finish_setup();
  }

  // ---- engine_impl --------------------------------------------------------------------------------------

  [[nodiscard]] const model::model_config& config() const noexcept override { return cfg_; }
  [[nodiscard]] activation_type dtype() const noexcept override {
    return std::is_same_v<Act, half_t> ? activation_type::f16
           : std::is_same_v<Act, bfloat16_t> ? activation_type::bf16
                                             : activation_type::f32;
  }
  [[nodiscard]] std::int64_t max_length() const noexcept override { return max_length_; }

  [[nodiscard]] std::vector<request_score> score(std::span<const token_request> requests, bool token_logprobs,
                                                 bool share_prefixes) override {
    auto po           = sequence_options();
    po.share_prefixes = share_prefixes;
    plan_summary summary;
    const auto batches = plan_requests(requests, po, &summary);
    std::vector<request_score> out(requests.size());
    for (auto& r : out) {
      r.is_greedy = true;
    }
    for (std::size_t i = 0; i < requests.size(); ++i) {
      out[i].token_logprobs.assign(requests[i].continuation.size(), 0.0f);
    }
    for (const auto& b : batches) {
      forward(b);
      std::vector<float> lp;
      std::vector<std::uint8_t> greedy;
      head_targets(b, lp, greedy);
      for (std::size_t k = 0; k < b.scored.size(); ++k) {
        const auto& t = b.scored[k];
        auto& r       = out[static_cast<std::size_t>(t.request)];
        r.token_logprobs[static_cast<std::size_t>(t.token)] = lp[k];
        r.is_greedy = r.is_greedy && greedy[k] != 0;
      }
    }
    stats_.request_tokens += summary.request_tokens;
    for (auto& r : out) {
      double s = 0.0;  // token order, double: independent of batching
      for (const float v : r.token_logprobs) {
        s += static_cast<double>(v);
      }
      r.loglik = s;
      if (!token_logprobs) {
        r.token_logprobs.clear();
        r.token_logprobs.shrink_to_fit();
      }
    }
    return out;
  }

  [[nodiscard]] std::vector<next_token_score> next_token(std::span<const std::span<const token_id>> contexts) override {
    const auto batches = plan_sequences(contexts, false, sequence_options());
    std::vector<next_token_score> out(contexts.size());
    for (const auto& b : batches) {
      forward(b);
      head_rows_each(b, [&](std::int64_t first, std::int64_t count, const float*, const std::vector<kernels::row_stats>& st) {
        for (std::int64_t k = 0; k < count; ++k) {
          const auto& t = b.scored[static_cast<std::size_t>(first + k)];
          const auto& s = st[static_cast<std::size_t>(k)];
          out[static_cast<std::size_t>(t.request)] = {s.argmax, static_cast<double>(s.max) - static_cast<double>(s.lse),
                                                      static_cast<double>(s.entropy)};
        }
      }, false);
    }
    return out;
  }

  [[nodiscard]] std::vector<float> logits(std::span<const token_id> tokens) override {
    QPROB_CHECK(static_cast<std::int64_t>(tokens.size()) <= max_length_, "engine::logits: ", tokens.size(),
                " tokens exceed max_length=", max_length_);
    const std::span<const token_id> one[1] = {tokens};
    const auto batches = plan_sequences(one, true, sequence_options());
    const auto V = cfg_.vocab_size;
    std::vector<float> out(tokens.size() * static_cast<std::size_t>(V));
    for (const auto& b : batches) {
      forward(b);
      head_rows_each(b, [&](std::int64_t first, std::int64_t count, const float* host_logits, const std::vector<kernels::row_stats>&) {
        std::copy_n(host_logits, count * V, out.begin() + first * V);
      }, true);
    }
    return out;
  }

  void window_logprobs(std::span<const token_id> window,
                       const std::function<void(std::int64_t, std::span<const float>)>& on_row) override {
    const std::span<const token_id> one[1] = {window};
    QPROB_CHECK(static_cast<std::int64_t>(window.size()) <= max_length_, "engine::window_logprobs: ", window.size(),
                " tokens exceed max_length=", max_length_);
    const auto batches = plan_sequences(one, true, sequence_options());
    const auto V       = static_cast<std::size_t>(cfg_.vocab_size);
    std::vector<float> row(V);
    for (const auto& b : batches) {
      forward(b);
      head_rows_each(b, [&](std::int64_t first, std::int64_t count, const float* host_logits, const std::vector<kernels::row_stats>& st) {
        for (std::int64_t k = 0; k < count; ++k) {
          const float lse = st[static_cast<std::size_t>(k)].lse;
          for (std::size_t v = 0; v < V; ++v) {
            row[v] = host_logits[static_cast<std::size_t>(k) * V + v] - lse;
          }
          on_row(first + k, row);
        }
      }, true);
    }
  }

  [[nodiscard]] std::vector<quantized_layer> quantize(const quantize_settings& settings,
                                                       std::span<const std::vector<token_id>> windows,
                                                       const quantize_progress& progress) override {
    if constexpr (!std::is_same_v<Act, half_t>) {
      throw invalid_argument("engine::quantize: the GPU quantizer's presets compute in fp16; load the model with "
                             "dtype f16 (this engine is not)");
    } else {
      QPROB_CHECK(settings.use_gptq || !settings.policy.desc_act,
                  "engine::quantize: desc_act needs GPTQ (act-order is GPTQ's column order; RTN has none)");
      QPROB_CHECK(!settings.use_gptq || !windows.empty(), "engine::quantize: GPTQ needs calibration windows");
      for (const auto& L : layers_) {
        QPROB_CHECK(L.qkv.packed.empty() && L.o.packed.empty() && L.up.packed.empty() && L.down.packed.empty(),
                    "engine::quantize: the block linears are packed quantized weights already; quantize a full model");
      }
      auto out = quant::dispatch_policy(settings.policy, [&](auto tag) {
        using P = typename decltype(tag)::type;
        return quantize_with<P>(settings, windows, progress);
      });
      // The calibration forwards needed the dequantized fp16 weights; from here on the codes are what is held.
      if (options_.quantized == quantized_linears::packed) {
        for (const auto& ql : out) {
          set_quantized_weight(ql.layer, ql.role, ql.weight, settings.policy);
        }
      }
      return out;
    }
  }

  void set_quantized_weight(std::int64_t layer_index, model::tensor_role role, const reference::quantized_weight& q,
                            const quant::runtime_policy& policy) override {
    if constexpr (!std::is_same_v<Act, half_t>) {
      throw invalid_argument("engine::set_quantized_weight: quantized checkpoints dequantize to fp16; load the model "
                             "with dtype f16 (this engine is not)");
    } else {
      QPROB_CHECK(layer_index >= 0 && layer_index < cfg_.num_layers, "engine::set_quantized_weight: layer ", layer_index,
                  " outside [0, ", cfg_.num_layers, ")");
      auto& L            = layers_[static_cast<std::size_t>(layer_index)];
      const auto slices  = slices_of(L);
      const bool fused   = role == model::tensor_role::qkv;
      const linear_slice* target = nullptr;
      for (const auto& sl : slices) {
        if (sl.role == (fused ? model::tensor_role::q : role)) {
          target = &sl;
        }
      }
      QPROB_CHECK(target != nullptr, "engine::set_quantized_weight: layer ", layer_index, " has no ", model::to_string(role));
      const std::int64_t n = fused ? 3 * cfg_.num_heads * cfg_.head_dim : target->rows;
      const std::int64_t k = target->lin->in;
      QPROB_CHECK(fused == (cfg_.model_family == model::family::bloom) || !fused,
                  "engine::set_quantized_weight: a fused qkv belongs to BLOOM only");
      QPROB_CHECK(q.n == n && q.k == k, "engine::set_quantized_weight: layer ", layer_index, " ", model::to_string(role),
                  " is [", q.n, ", ", q.k, "] in the checkpoint but [", n, ", ", k, "] in the model");
      linear& lin        = *target->lin;
      const auto row0    = fused ? std::int64_t{0} : target->row0;
      if (options_.quantized == quantized_linears::packed) {
        // BLOOM: the engine's q | k | v order of the fused rows (the checkpoint interleaves them per head).
        const reference::quantized_weight* wq = &q;
        reference::quantized_weight reordered;
        if (fused) {
          reordered = bloom_rows_to_engine(q);
          wq        = &reordered;
        }
        auto packed = quant::dispatch_policy(policy, [&](auto tag) { return quant::pack_linear<typename decltype(tag)::type>(*wq, stream_); });
        if (packed.linear) {
          install_packed(lin, row0, n, std::move(packed.linear));
          unpacked_.erase({layer_index, role});
          return;
        }
        unpacked_[{layer_index, role}] = "layer " + std::to_string(layer_index) + " " + std::string(model::to_string(role)) + ": " + packed.reason;
        last_unpacked_                  = unpacked_[{layer_index, role}];
      }
      device_buffer<half_t> deq(n * k, stream_);
      quant::dispatch_policy(policy, [&](auto tag) {
        using P          = typename decltype(tag)::type;
        const auto words = P::packed_words(k), groups = P::groups(k);
        QPROB_CHECK(static_cast<std::int64_t>(q.qweight.size()) == words * n &&
                        static_cast<std::int64_t>(q.scales.size()) == groups * n &&
                        static_cast<std::int64_t>(q.zeros.size()) == groups * n,
                    "engine::set_quantized_weight: layer ", layer_index, " ", model::to_string(role),
                    ": qweight/scales/zeros sizes do not match ", quant::describe(policy));
        device_buffer<std::uint32_t> qw(std::span<const std::uint32_t>(q.qweight), stream_);
        device_buffer<half_t> sc(std::span<const half_t>(q.scales), stream_);
        device_buffer<std::uint8_t> z(std::span<const std::uint8_t>(q.zeros), stream_);
        device_buffer<std::int32_t> g(std::span<const std::int32_t>(q.g_idx), stream_);
        quant::dequantize<P>(std::as_const(qw).view(words, n), std::as_const(sc).view(groups, n), std::as_const(z).view(groups, n),
                             q.g_idx.empty() ? nullptr : g.data(), deq.view(n, k), stream_);
        stream_.synchronize();  // the uploads read host memory owned by the caller
        return 0;
      });
      if (lin.w.empty()) {  // every row was packed before: the dequantized rows need the fp16 matrix back
        lin.w = device_buffer<Act>(lin.out * lin.in, stream_);
      }
      std::erase_if(lin.packed, [&](const packed_part& p) { return p.row0 == row0; });
      const auto bytes = static_cast<std::size_t>(k) * sizeof(half_t);
      if (!fused) {
        QPROB_CUDA_TRY(cudaMemcpyAsync(lin.w.data() + row0 * k, deq.data(), static_cast<std::size_t>(n) * bytes,
                                       cudaMemcpyDeviceToDevice, stream_));
      } else {  // BLOOM: fused row bloom_qkv_row(which, head, d) is row head * D + d of q, k or v
        const auto D = cfg_.head_dim, part = cfg_.num_heads * D;
        for (int which = 0; which < 3; ++which) {
          for (std::int64_t h = 0; h < cfg_.num_heads; ++h) {
            // The D rows of one head are contiguous on both sides.
            QPROB_CUDA_TRY(cudaMemcpyAsync(L.qkv.w.data() + (which * part + h * D) * k,
                                           deq.data() + model::bloom_qkv_row(which, h, 0, D) * k,
                                           static_cast<std::size_t>(D) * bytes, cudaMemcpyDeviceToDevice, stream_));
          }
        }
      }
      stream_.synchronize();
    }
  }

  [[nodiscard]] engine_stats stats() const override {
    engine_stats s = stats_;
    s.weight_bytes = count_weight_bytes();
    for (const auto& L : layers_) {
      s.packed_linears += static_cast<std::int64_t>(L.qkv.packed.size() + L.o.packed.size() + L.up.packed.size() + L.down.packed.size());
    }
    s.unpacked_linears = static_cast<std::int64_t>(unpacked_.size());
    s.unpacked_reason  = unpacked_.empty() ? std::string() : last_unpacked_;
    cudaMemPool_t pool = nullptr;
    std::uint64_t peak = 0;
    if (cudaDeviceGetDefaultMemPool(&pool, options_.device) == cudaSuccess &&
        cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &peak) == cudaSuccess) {
      s.peak_pool_bytes = static_cast<std::int64_t>(peak);
    }
    return s;
  }

private:
  /// Features of the config the engine does not implement yet, refused up front with the field named.
  void check_supported(const std::string& config_file) const {
    if (cfg_.qk_layernorm && cfg_.model_family != model::family::phi) {
      throw format_error(config_file, "qk_layernorm", "only Phi's per-head q/k LayerNorm is implemented");
    }
    if (cfg_.head_dim > 32 * 8) {
      throw format_error(config_file, "head_dim", "head_dim=" + std::to_string(cfg_.head_dim) +
                                                      " is above the GPU attention kernel's limit of 256");
    }
    if (cfg_.num_kv_heads <= 0 || cfg_.num_heads % cfg_.num_kv_heads != 0) {
      throw format_error(config_file, "num_key_value_heads", "num_attention_heads=" + std::to_string(cfg_.num_heads) +
                                                                 " is not a multiple of num_key_value_heads=" +
                                                                 std::to_string(cfg_.num_kv_heads));
    }
  }

  /// The planner's options of this engine (requests and whole sequences alike).
  [[nodiscard]] plan_options sequence_options() const {
    plan_options po;
    po.max_length     = max_length_;
    po.max_batch_rows = options_.max_batch_rows;
    po.tile_rows      = kernels::kTileRows;
    return po;
  }

  void finish_setup() {
    if (cfg_.positions.kind == model::position_kind::rotary) {
      const auto inv = reference::rope_inv_freq(cfg_.positions.rotary);
      std::vector<float> f(inv.begin(), inv.end());
      inv_freq_ = device_buffer<float>(std::span<const float>(f), stream_);
      half_rotary_ = static_cast<int>(f.size());
      stream_.synchronize();
    } else if (cfg_.positions.kind == model::position_kind::alibi) {
      const auto s = reference::alibi_slopes(cfg_.num_heads);
      std::vector<float> f(s.begin(), s.end());
      alibi_ = device_buffer<float>(std::span<const float>(f), stream_);
      stream_.synchronize();
    }
    const auto smem = kernels::attention_smem_bytes(static_cast<int>(cfg_.head_dim));
    dpl_            = static_cast<int>((cfg_.head_dim + 31) / 32);
    with_dpl(dpl_, [&](auto k) {
      QPROB_CUDA_TRY(cudaFuncSetAttribute(kernels::attention_kernel<Act, decltype(k)::value>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    });
  }

  template <class F>
  static void with_dpl(int dpl, F&& f) {
    switch (dpl) {
      case 1: f(std::integral_constant<int, 1>{}); break;
      case 2: f(std::integral_constant<int, 2>{}); break;
      case 3: f(std::integral_constant<int, 3>{}); break;
      case 4: f(std::integral_constant<int, 4>{}); break;
      case 5: f(std::integral_constant<int, 5>{}); break;
      case 6: f(std::integral_constant<int, 6>{}); break;
      case 7: f(std::integral_constant<int, 7>{}); break;
      case 8: f(std::integral_constant<int, 8>{}); break;
      default: throw invalid_argument("engine: head_dim above 256");
    }
  }

  /// Y[rows, N] = X[rows, K] W[N, K]^T (+ Y when accumulate: the float32 residual stream takes the o / down
  /// projection in the GEMM's epilogue, acc + y rounded once as the residual kernel would) over `rows_padded`
  /// rows (a multiple of chunk), chunk rows per call; Y's rows are ldy apart (0: N).
  template <class OutT>
  void gemm(const Act* x, const Act* w, OutT* y, std::int64_t rows_padded, std::int64_t k, std::int64_t n, std::int64_t chunk,
            bool accumulate = false, std::int64_t ldy = 0) {
    static_assert(std::is_same_v<OutT, float> || std::is_same_v<OutT, Act>);
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    constexpr cudaDataType_t out_type = std::is_same_v<OutT, float> ? CUDA_R_32F : cuda_type<Act>();
    ldy = ldy == 0 ? n : ldy;
    for (std::int64_t r = 0; r < rows_padded; r += chunk) {
      QPROB_CUBLAS_TRY(cublasGemmEx(blas_.get(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(chunk),
                                    static_cast<int>(k), &alpha, w, cuda_type<Act>(), static_cast<int>(k), x + r * k,
                                    cuda_type<Act>(), static_cast<int>(k), &beta, y + r * ldy, out_type, static_cast<int>(ldy),
                                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
  }

  /// A block linear's product, as gemm() (X has L.in columns, Y L.out): its packed parts by the fused GEMM over
  /// the `rows` real rows (its results do not depend on the row count), its other rows by gemm().
  template <class OutT>
  void linear_gemm(const linear& L, const Act* x, OutT* y, std::int64_t rows, std::int64_t rows_padded, bool accumulate = false) {
    const auto dense = [&](std::int64_t from, std::int64_t to) {
      if (to > from) {
        gemm(x, L.w.data() + from * L.in, y + from, rows_padded, L.in, to - from, options_.gemm_rows, accumulate, L.out);
      }
    };
    if constexpr (std::is_same_v<Act, half_t>) {
      std::int64_t next = 0;  // the first row of W not computed yet
      for (const auto& p : L.packed) {
        dense(next, p.row0);
        const device_view<const half_t, 2> xv(x, {rows, L.in}, {L.in, 1});
        const device_view<OutT, 2> yv(y + p.row0, {rows, p.rows}, {L.out, 1});
        if constexpr (std::is_same_v<OutT, float>) {
          p.w->multiply(xv, yv, accumulate, stream_);
        } else {
          p.w->multiply(xv, yv, stream_);
        }
        next = p.row0 + p.rows;
      }
      dense(next, L.out);
    } else {
      dense(0, L.out);
    }
  }

  void launch_norm(const norm& nw, kernels::norm_code code, const float* x, const std::int32_t* rows_map, std::int64_t rows,
                   std::int64_t n, Act* out_act, float* out_f32) {
    if (rows == 0) {
      return;
    }
    kernels::norm_kernel<Act><<<static_cast<unsigned>(rows), kernels::kRowThreads, 0, stream_>>>(
        x, rows_map, n, nw.present() ? code : kernels::norm_code::identity, nw.present() ? nw.w.data() : nullptr,
        nw.b.empty() ? nullptr : nw.b.data(), static_cast<float>(cfg_.norm_eps), out_act, out_f32);
    QPROB_CUDA_TRY(qprob::detail::post_launch(stream_));
  }

  [[nodiscard]] kernels::norm_code norm_code() const noexcept {
    return cfg_.norm == model::norm_kind::rms_norm ? kernels::norm_code::rms : kernels::norm_code::layer;
  }

  void residual(std::int64_t rows, const float* y1, const float* b1, const float* y2, const float* b2, const Act* h_base) {
    kernels::residual_kernel<Act><<<static_cast<unsigned>(rows), kernels::kRowThreads, 0, stream_>>>(
        x_cur_, y1, b1, y2, b2, h_base, cfg_.hidden_size);
    QPROB_CUDA_TRY(qprob::detail::post_launch(stream_));
  }

  /// Attention block of layer L on h (rows): leaves o(att) in y (float32, no bias), or adds it to y when
  /// `accumulate` (y is then the residual stream). `report(stage, input, k)` sees the inputs of the q|k|v and o
  /// projections; true from it means stop here (returns true).
  template <class Report>
  bool attention_block(const layer& L, std::int64_t rows, std::int64_t rows_padded, float* y, Report&& report,
                       bool accumulate = false) {
    const auto H = cfg_.hidden_size, QD = cfg_.num_heads * cfg_.head_dim;
    if (report(layer_stage::qkv_input, h_.buf.data(), H)) {
      return true;
    }
    // GPTQ's later sub-groups reuse the attention output computed once after q|k|v were quantized (att_cache_).
    Act* att = att_cache_.out != nullptr ? att_cache_.out : att_.get(rows_padded * QD, stream_);
    if (att_cache_.out == nullptr || !att_cache_.ready) {
      compute_attention(L, rows, rows_padded, att);
    }
    if (report(layer_stage::o_input, att, QD)) {
      return true;
    }
    linear_gemm(L.o, att, y, rows, rows_padded, accumulate);
    return false;
  }

  /// q|k|v projection, positions and causal attention of layer L over the plan's rows: att (rows x q heads x D).
  void compute_attention(const layer& L, std::int64_t rows, std::int64_t rows_padded, Act* att) {
    const auto D = cfg_.head_dim;
    const auto QD = cfg_.num_heads * D, KVD = cfg_.num_kv_heads * D, W = QD + 2 * KVD;
    Act* qkv = qkv_.get(rows_padded * W, stream_);
    linear_gemm(L.qkv, h_.buf.data(), qkv, rows, rows_padded);
    kernels::qkv_kernel<Act><<<static_cast<unsigned>(rows), kernels::kRowThreads, 0, stream_>>>(
        qkv, W, L.qkv.bias(), positions_dev_.data(), inv_freq_.empty() ? nullptr : inv_freq_.data(), half_rotary_,
        static_cast<int>(D), static_cast<int>(cfg_.num_heads), static_cast<int>(cfg_.num_kv_heads),
        kernels::head_norms{L.q_norm.present() ? L.q_norm.w.data() : nullptr, L.q_norm.b.empty() ? nullptr : L.q_norm.b.data(),
                            L.k_norm.present() ? L.k_norm.w.data() : nullptr, L.k_norm.b.empty() ? nullptr : L.k_norm.b.data(),
                            static_cast<float>(cfg_.norm_eps)});
    QPROB_CUDA_TRY(qprob::detail::post_launch(stream_));
    kernels::attention_params<Act> p;
    p.qkv       = qkv;
    p.ld        = W;
    p.out       = att;
    p.tiles     = tiles_dev_.data();
    p.positions = positions_dev_.data();
    p.alibi     = alibi_.empty() ? nullptr : alibi_.data();
    p.head_dim  = static_cast<int>(D);
    p.q_heads   = static_cast<int>(cfg_.num_heads);
    p.kv_heads  = static_cast<int>(cfg_.num_kv_heads);
    p.window    = current_window_;
    p.scale     = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
    with_dpl(dpl_, [&](auto k) {
      kernels::launch_attention<Act, decltype(k)::value>(p, static_cast<int>(tiles_dev_.size()), options_.tensor_core_attention,
                                                         stream_);
    });
    QPROB_CUDA_TRY(qprob::detail::post_launch(stream_));
  }

  /// MLP block of layer L on h: leaves down(act(...)) in y (float32, no down bias) or adds it to y; stops like
  /// attention_block.
  template <class Report>
  bool mlp_block(const layer& L, std::int64_t rows, std::int64_t rows_padded, float* y, Report&& report,
                 bool accumulate = false) {
    const auto H = cfg_.hidden_size, I = cfg_.intermediate_size;
    Act* u = up_.get(rows_padded * L.up.out, stream_);
    Act* a = act_.get(rows_padded * I, stream_);
    if (report(layer_stage::up_input, h_.buf.data(), H)) {
      return true;
    }
    linear_gemm(L.up, h_.buf.data(), u, rows, rows_padded);
    kernels::mlp_act_kernel<Act><<<static_cast<unsigned>(rows), kernels::kRowThreads, 0, stream_>>>(
        u, L.up.bias(), I, cfg_.gated_mlp, kernels::activation_code(cfg_.act, cfg_.activation_name), a);
    QPROB_CUDA_TRY(qprob::detail::post_launch(stream_));
    if (report(layer_stage::down_input, a, I)) {
      return true;
    }
    linear_gemm(L.down, a, y, rows, rows_padded, accumulate);
    return false;
  }

  /// Copies a plan's rows, positions and tiles to the device (the inputs of embed() and run_layer()).
  void upload_plan(const batch_plan& b) {
    tokens_dev_    = device_buffer<token_id>(std::span<const token_id>(b.tokens), stream_);
    positions_dev_ = device_buffer<std::int32_t>(std::span<const std::int32_t>(b.positions), stream_);
    tiles_dev_     = device_buffer<attention_tile>(std::span<const attention_tile>(b.tiles), stream_);
  }

  /// Embeddings of the uploaded plan's `rows` rows into x (float32, [padded, hidden]).
  void embed(float* x, std::int64_t rows, std::int64_t padded) {
    const auto& c = cfg_;
    const auto H = c.hidden_size, E = c.word_embed_proj_dim;
    Act* h = h_.get(padded * std::max(H, E), stream_);
    const bool learned = c.positions.kind == model::position_kind::learned;
    const auto R = static_cast<unsigned>(rows);
    if (project_in_.w.empty()) {
      kernels::embed_kernel<Act, float><<<R, kernels::kRowThreads, 0, stream_>>>(
          embed_.data(), tokens_dev_.data(), learned ? positions_.data() : nullptr, positions_dev_.data(),
          c.positions.learned_offset, E, x);
      QPROB_CUDA_TRY(qprob::detail::post_launch(stream_));
    } else {
      kernels::embed_kernel<Act, Act><<<R, kernels::kRowThreads, 0, stream_>>>(
          embed_.data(), tokens_dev_.data(), nullptr, positions_dev_.data(), 0, E, h);
      QPROB_CUDA_TRY(qprob::detail::post_launch(stream_));
      gemm(h, project_in_.w.data(), x, padded, E, H, options_.gemm_rows);
      if (learned) {
        kernels::add_positions_kernel<Act><<<R, kernels::kRowThreads, 0, stream_>>>(
            positions_.data(), positions_dev_.data(), c.positions.learned_offset, H, x);
        QPROB_CUDA_TRY(qprob::detail::post_launch(stream_));
      }
    }
    if (embed_norm_.present()) {
      launch_norm(embed_norm_, norm_code(), x, nullptr, rows, H, h, x);
    }
  }

  /// Called with the device input (rows x k, Act, dense) of a block linear sub-group just before it is applied.
  using input_observer = std::function<void(layer_stage, const Act*, std::int64_t rows, std::int64_t k)>;

  /// Decoder layer l over the uploaded plan's rows, updating x in place, reporting linear inputs to `observe`
  /// (may be null) and returning right after reporting `stop` (x is then unspecified).
  void run_layer(std::int64_t l, float* x, std::int64_t rows, std::int64_t padded, const input_observer* observe,
                 layer_stage stop) {
    const auto& c   = cfg_;
    const auto H    = c.hidden_size;
    const auto& L   = layers_[static_cast<std::size_t>(l)];
    Act* h          = h_.get(padded * std::max(H, c.word_embed_proj_dim), stream_);
    float* y1       = y1_.get(padded * H, stream_);
    const bool slid = c.sliding_window && static_cast<std::size_t>(l) < c.layer_sliding.size() &&
                      c.layer_sliding[static_cast<std::size_t>(l)];
    current_window_ = slid ? *c.sliding_window : 0;
    x_cur_          = x;
    const auto report = [&](layer_stage st, const Act* in, std::int64_t k) {
      if (observe != nullptr) {
        (*observe)(st, in, rows, k);
      }
      return st == stop;
    };
    if (c.pre_norm) {
      // x += o(att) and x += down(...) in the GEMMs' epilogue where no bias or post-norm residual intervenes.
      const bool fuse_o = !c.parallel_attn_mlp && L.o.bias() == nullptr && !c.residual_post_norm;
      launch_norm(L.attn_norm, norm_code(), x, nullptr, rows, H, h, nullptr);
      if (attention_block(L, rows, padded, fuse_o ? x : y1, report, fuse_o)) {
        return;
      }
      if (c.parallel_attn_mlp) {
        float* y2 = y2_.get(padded * H, stream_);
        if (mlp_block(L, rows, padded, y2, report)) {
          return;
        }
        residual(rows, y1, L.o.bias(), y2, L.down.bias(), nullptr);
        return;
      }
      if (!fuse_o) {
        residual(rows, y1, L.o.bias(), nullptr, nullptr, c.residual_post_norm ? h : nullptr);
      }
      launch_norm(L.mlp_norm, norm_code(), x, nullptr, rows, H, h, nullptr);
      const bool fuse_down = L.down.bias() == nullptr && !c.residual_post_norm;
      if (mlp_block(L, rows, padded, fuse_down ? x : y1, report, fuse_down)) {
        return;
      }
      if (!fuse_down) {
        residual(rows, y1, L.down.bias(), nullptr, nullptr, c.residual_post_norm ? h : nullptr);
      }
    } else {  // OPT-350m post-norm: x = norm1(x + attn(x)); x = norm2(x + mlp(x))
      launch_norm(norm{}, kernels::norm_code::identity, x, nullptr, rows, H, h, nullptr);
      if (attention_block(L, rows, padded, y1, report)) {
        return;
      }
      residual(rows, y1, L.o.bias(), nullptr, nullptr, nullptr);
      launch_norm(L.attn_norm, norm_code(), x, nullptr, rows, H, h, x);
      if (mlp_block(L, rows, padded, y1, report)) {
        return;
      }
      residual(rows, y1, L.down.bias(), nullptr, nullptr, nullptr);
      launch_norm(L.mlp_norm, norm_code(), x, nullptr, rows, H, h, x);
    }
  }

  /// Runs the transformer over the batch's rows; leaves the residual stream in x_.
  void forward(const batch_plan& b) {
    const auto rows = b.rows();
    if (rows == 0) {
      return;
    }
    const auto padded = round_up(rows, options_.gemm_rows);
    upload_plan(b);
    float* x = x_.get(padded * cfg_.hidden_size, stream_);
    embed(x, rows, padded);
    for (std::int64_t l = 0; l < cfg_.num_layers; ++l) {
      run_layer(l, x, rows, padded, nullptr, layer_stage::all);
    }
    stats_.rows_computed += rows;
    stats_.forward_passes += 1;
  }

  /// The LM head over the batch's selected rows, head_rows rows at a time: on_chunk(first, count, logits,
  /// stats) with logits on the host when copy_logits (else null) and the row statistics on the host.
  template <class F>
  void head_rows_each(const batch_plan& b, F&& on_chunk, bool copy_logits) {
    const auto S = static_cast<std::int64_t>(b.selected_rows.size());
    if (S == 0) {
      return;
    }
    const auto& c = cfg_;
    const auto H = c.hidden_size, E = c.word_embed_proj_dim, V = c.vocab_size;
    const auto chunk   = options_.head_rows;
    // Rows of hs / ho: whole GEMM blocks for project_out, whole head chunks for the LM head.
    const auto padded_g = round_up(S, options_.gemm_rows);
    const auto padded   = std::max(padded_g, round_up(S, chunk));
    selected_dev_       = device_buffer<std::int32_t>(std::span<const std::int32_t>(b.selected_rows), stream_);
    Act* hs             = hs_.get(padded * H, stream_);
    launch_norm(final_norm_, norm_code(), x_.buf.data(), selected_dev_.data(), S, H, hs, nullptr);
    const Act* head_in = hs;
    if (!project_out_.w.empty()) {
      Act* ho = ho_.get(padded * E, stream_);
      gemm(hs, project_out_.w.data(), ho, padded_g, H, E, options_.gemm_rows);
      head_in = ho;
    }
    const Act* lm_w = lm_head_.w.empty() ? embed_.data() : lm_head_.w.data();
    float* logits   = logits_.get(chunk * V, stream_);
    kernels::row_stats* st = stats_dev_.get(chunk, stream_);
    std::vector<float> host_logits(copy_logits ? static_cast<std::size_t>(chunk * V) : 0);
    std::vector<kernels::row_stats> host_stats(static_cast<std::size_t>(chunk));
    for (std::int64_t first = 0; first < S; first += chunk) {
      const auto count = std::min(chunk, S - first);
      gemm(head_in + first * E, lm_w, logits, chunk, E, V, chunk);
      kernels::vocab_stats_kernel<<<static_cast<unsigned>(count), kernels::kRowThreads, 0, stream_>>>(
          logits, V, lm_head_.bias(), st);
      QPROB_CUDA_TRY(qprob::detail::post_launch(stream_));
      chunk_hook_(first, count, logits, st);
      QPROB_CUDA_TRY(cudaMemcpyAsync(host_stats.data(), st, static_cast<std::size_t>(count) * sizeof(kernels::row_stats),
                                     cudaMemcpyDeviceToHost, stream_));
      if (copy_logits) {
        QPROB_CUDA_TRY(cudaMemcpyAsync(host_logits.data(), logits, static_cast<std::size_t>(count * V) * sizeof(float),
                                       cudaMemcpyDeviceToHost, stream_));
      }
      stream_.synchronize();
      on_chunk(first, count, copy_logits ? host_logits.data() : nullptr, host_stats);
    }
    chunk_hook_ = [](std::int64_t, std::int64_t, const float*, const kernels::row_stats*) {};
  }

  /// Log-probabilities and greedy flags of every scored token of the batch (in b.scored order).
  void head_targets(const batch_plan& b, std::vector<float>& logprob, std::vector<std::uint8_t>& greedy) {
    const auto chunk = options_.head_rows;
    const auto n     = b.scored.size();
    // Scored tokens grouped by vocabulary chunk, with chunk-local rows.
    std::vector<std::int32_t> order(n);
    for (std::size_t k = 0; k < n; ++k) {
      order[k] = static_cast<std::int32_t>(k);
    }
    std::stable_sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t c) {
      return b.scored[static_cast<std::size_t>(a)].selected < b.scored[static_cast<std::size_t>(c)].selected;
    });
    std::vector<std::int32_t> rows(n);
    std::vector<token_id> targets(n);
    for (std::size_t k = 0; k < n; ++k) {
      const auto& t = b.scored[static_cast<std::size_t>(order[k])];
      rows[k]       = static_cast<std::int32_t>(t.selected % chunk);
      targets[k]    = t.target;
    }
    device_buffer<std::int32_t> rows_dev(std::span<const std::int32_t>(rows), stream_);
    device_buffer<token_id> targets_dev(std::span<const token_id>(targets), stream_);
    device_buffer<float> lp_dev(static_cast<std::int64_t>(n), stream_);
    device_buffer<std::uint8_t> greedy_dev(static_cast<std::int64_t>(n), stream_);
    std::size_t next = 0;
    const auto V     = cfg_.vocab_size;
    chunk_hook_ = [&](std::int64_t first, std::int64_t count, const float* logits, const kernels::row_stats* st) {
      std::size_t end = next;
      while (end < n && b.scored[static_cast<std::size_t>(order[end])].selected < first + count) {
        ++end;
      }
      const auto m = static_cast<std::int64_t>(end - next);
      if (m > 0) {
        kernels::gather_targets_kernel<<<static_cast<unsigned>((m + 255) / 256), 256, 0, stream_>>>(
            logits, V, st, rows_dev.data() + next, targets_dev.data() + next, m, lp_dev.data() + next, greedy_dev.data() + next);
        QPROB_CUDA_TRY(qprob::detail::post_launch(stream_));
      }
      next = end;
    };
    head_rows_each(b, [](std::int64_t, std::int64_t, const float*, const std::vector<kernels::row_stats>&) {}, false);
    const auto lp_sorted = lp_dev.to_host();
    const auto gr_sorted = greedy_dev.to_host();
    logprob.assign(n, 0.0f);
    greedy.assign(n, 0);
    for (std::size_t k = 0; k < n; ++k) {
      logprob[static_cast<std::size_t>(order[k])] = lp_sorted[k];
      greedy[static_cast<std::size_t>(order[k])]  = gr_sorted[k];
    }
  }

  /// Device bytes of every weight the engine holds (fp16 matrices, packed codes, embeddings).
  [[nodiscard]] std::int64_t count_weight_bytes() const {
    std::int64_t b = embed_.bytes() + positions_.bytes() + project_in_.w.bytes() + project_out_.w.bytes() + lm_head_.w.bytes();
    for (const auto& L : layers_) {
      for (const linear* lin : {&L.qkv, &L.o, &L.up, &L.down}) {
        b += lin->w.bytes();
        for (const auto& p : lin->packed) {
          b += p.w->bytes();
        }
      }
    }
    return b;
  }

  /// Rows [row0, row0 + rows) of `lin` become a packed part (replacing one of the same rows); the fp16 matrix is
  /// released once packed parts cover every row.
  void install_packed(linear& lin, std::int64_t row0, std::int64_t rows, std::unique_ptr<quant::packed_linear> w) {
    std::erase_if(lin.packed, [&](const packed_part& p) { return p.row0 == row0; });
    lin.packed.push_back({row0, rows, std::move(w)});
    std::sort(lin.packed.begin(), lin.packed.end(), [](const packed_part& a, const packed_part& b) { return a.row0 < b.row0; });
    std::int64_t covered = 0;
    for (const auto& p : lin.packed) {
      covered += p.rows;
    }
    if (covered == lin.out) {
      lin.w = device_buffer<Act>();
    }
  }

  /// Copies output feature `from` of src (whose word rows and groups are src_n entries apart) to feature `to` of
  /// dst (dst_n apart): its word of every qweight row, its scale and zero point of every group.
  static void copy_feature(const reference::quantized_weight& src, std::int64_t src_n, std::int64_t from,
                           reference::quantized_weight& dst, std::int64_t dst_n, std::int64_t to, std::int64_t word_rows,
                           std::int64_t groups) {
    for (std::int64_t r = 0; r < word_rows; ++r) {
      dst.qweight[static_cast<std::size_t>(r * dst_n + to)] = src.qweight[static_cast<std::size_t>(r * src_n + from)];
    }
    for (std::int64_t g = 0; g < groups; ++g) {
      dst.scales[static_cast<std::size_t>(g * dst_n + to)] = src.scales[static_cast<std::size_t>(g * src_n + from)];
      dst.zeros[static_cast<std::size_t>(g * dst_n + to)]  = src.zeros[static_cast<std::size_t>(g * src_n + from)];
    }
  }

  /// BLOOM's fused query_key_value (rows interleaved per head, model::bloom_qkv_row) with its output features
  /// (qweight, scales and zero-point columns) in the engine's q | k | v order.
  [[nodiscard]] reference::quantized_weight bloom_rows_to_engine(const reference::quantized_weight& q) const {
    const auto D = cfg_.head_dim, part = cfg_.num_heads * D, n = q.n;
    QPROB_CHECK(n == 3 * part && q.qweight.size() % static_cast<std::size_t>(n) == 0 && q.scales.size() % static_cast<std::size_t>(n) == 0 &&
                    q.zeros.size() == q.scales.size(),
                "engine::set_quantized_weight: BLOOM's query_key_value codes do not have ", n, " output columns");
    reference::quantized_weight out{q.n, q.k, std::vector<std::uint32_t>(q.qweight.size()), std::vector<half_t>(q.scales.size()),
                                    std::vector<std::uint8_t>(q.zeros.size()), q.g_idx};
    const auto word_rows = static_cast<std::int64_t>(q.qweight.size()) / n, groups = static_cast<std::int64_t>(q.scales.size()) / n;
    for (int which = 0; which < 3; ++which) {
      for (std::int64_t h = 0; h < cfg_.num_heads; ++h) {
        for (std::int64_t d = 0; d < D; ++d) {
          copy_feature(q, n, model::bloom_qkv_row(which, h, d, D), out, n, which * part + h * D + d, word_rows, groups);
        }
      }
    }
    return out;
  }

  /// A block linear in the checkpoint's layout as rows of one of the engine's fused weights.
  struct linear_slice {
    model::tensor_role role;
    linear* lin;
    std::int64_t row0, rows;
    layer_stage input;  // the run_layer() stage whose reported input feeds it
  };

  [[nodiscard]] std::vector<linear_slice> slices_of(layer& L) {
    using R       = model::tensor_role;
    const auto QD = cfg_.num_heads * cfg_.head_dim, KVD = cfg_.num_kv_heads * cfg_.head_dim, I = cfg_.intermediate_size;
    std::vector<linear_slice> s{{R::q, &L.qkv, 0, QD, layer_stage::qkv_input},
                                {R::k, &L.qkv, QD, KVD, layer_stage::qkv_input},
                                {R::v, &L.qkv, QD + KVD, KVD, layer_stage::qkv_input},
                                {R::o, &L.o, 0, L.o.out, layer_stage::o_input}};
    if (cfg_.gated_mlp) {
      s.push_back({R::gate, &L.up, 0, I, layer_stage::up_input});
      s.push_back({R::up, &L.up, I, I, layer_stage::up_input});
    } else {
      s.push_back({R::up, &L.up, 0, L.up.out, layer_stage::up_input});
    }
    s.push_back({R::down, &L.down, 0, L.down.out, layer_stage::down_input});
    return s;
  }

  /// Quantizes one slice (RTN when hessian is null), replaces its rows by the dequantized weights and returns
  /// the codes on the host.
  template <class P>
  quantized_layer quantize_slice(std::int64_t layer_index, const linear_slice& sl, const float* hessian,
                                 const quantize_settings& settings) {
    const auto n = sl.rows, k = sl.lin->in;
    const auto words = P::packed_words(k), groups = P::groups(k);
    device_buffer<std::uint32_t> qw(words * n, stream_);
    device_buffer<half_t> scales(groups * n, stream_);
    device_buffer<std::uint8_t> zeros(groups * n, stream_);
    device_buffer<std::int32_t> g_idx(P::act_order ? k : 0, stream_);
    device_buffer<half_t> deq(n * k, stream_);
    half_t* w_ptr = sl.lin->w.data() + sl.row0 * k;
    const auto w  = make_device_view(static_cast<const half_t*>(w_ptr), n, k);
    quantized_layer out;
    out.layer = layer_index;
    out.role  = sl.role;
    if (hessian == nullptr) {
      quant::rtn_quantize<P>(w, qw.view(words, n), scales.view(groups, n), zeros.view(groups, n), stream_);
      quant::dequantize<P>(qw.view(words, n), scales.view(groups, n), zeros.view(groups, n), nullptr, deq.view(n, k), stream_);
    } else {
      out.report = quant::gptq_quantize<P>(w, make_device_view(hessian, k, k), qw.view(words, n), scales.view(groups, n),
                                           zeros.view(groups, n), P::act_order ? g_idx.data() : nullptr, deq.data(),
                                           settings.solver, stream_);
    }
    // Mean squared change of the weights, then the dequantized weights replace the originals.
    constexpr int blocks = 256;
    device_buffer<double> partial(blocks, stream_);
    squared_difference_kernel<half_t><<<blocks, 256, 0, stream_>>>(w_ptr, deq.data(), n * k, partial.data());
    QPROB_CUDA_TRY(qprob::detail::post_launch(stream_));
    const auto parts = partial.to_host();
    double sum = 0;
    for (const double v : parts) {
      sum += v;
    }
    out.weight_mse = sum / static_cast<double>(n * k);
    QPROB_CUDA_TRY(cudaMemcpyAsync(w_ptr, deq.data(), static_cast<std::size_t>(n * k) * sizeof(half_t),
                                   cudaMemcpyDeviceToDevice, stream_));
    out.weight = {n, k, qw.to_host(), scales.to_host(), zeros.to_host(), P::act_order ? g_idx.to_host() : std::vector<std::int32_t>{}};
    return out;
  }

  /// BLOOM's checkpoint holds q, k and v as one head-interleaved query_key_value (model::bloom_qkv_row): the
  /// three slices' columns (output channels) are interleaved back. GPTQ treats rows independently given the
  /// shared Hessian, so this equals quantizing the fused matrix at once.
  [[nodiscard]] quantized_layer fuse_bloom_qkv(std::vector<quantized_layer>&& qkv) const {
    const auto D = cfg_.head_dim, heads = cfg_.num_heads, part = heads * D;
    const auto& q = qkv[0].weight;
    quantized_layer out;
    out.layer  = qkv[0].layer;
    out.role   = model::tensor_role::qkv;
    out.weight.n = 3 * part;
    out.weight.k = q.k;
    out.weight.g_idx = q.g_idx;
    const auto words  = static_cast<std::int64_t>(q.qweight.size()) / part;
    const auto groups = static_cast<std::int64_t>(q.scales.size()) / part;
    out.weight.qweight.resize(static_cast<std::size_t>(words * 3 * part));
    out.weight.scales.resize(static_cast<std::size_t>(groups * 3 * part));
    out.weight.zeros.resize(static_cast<std::size_t>(groups * 3 * part));
    for (int which = 0; which < 3; ++which) {
      const auto& src = qkv[static_cast<std::size_t>(which)].weight;
      for (std::int64_t h = 0; h < heads; ++h) {
        for (std::int64_t d = 0; d < D; ++d) {
          copy_feature(src, part, h * D + d, out.weight, 3 * part, model::bloom_qkv_row(which, h, d, D), words, groups);
        }
      }
      const auto& rep = qkv[static_cast<std::size_t>(which)].report;
      out.report.loss += rep.loss;
      out.report.damp_percent = std::max(out.report.damp_percent, rep.damp_percent);
      out.report.damp_retries = std::max(out.report.damp_retries, rep.damp_retries);
      out.report.dead_columns = rep.dead_columns;
      out.report.warnings.insert(out.report.warnings.end(), rep.warnings.begin(), rep.warnings.end());
      out.weight_mse += qkv[static_cast<std::size_t>(which)].weight_mse / 3.0;  // three equal-sized parts
    }
    return out;
  }

  template <class P>
  std::vector<quantized_layer> quantize_with(const quantize_settings& settings, std::span<const std::vector<token_id>> windows,
                                             const quantize_progress& progress) {
    const bool bloom = cfg_.model_family == model::family::bloom;
    std::size_t total = 0;
    for (auto& L : layers_) {
      total += bloom ? slices_of(L).size() - 2 : slices_of(L).size();
    }
    std::size_t done = 0;
    if (progress) {
      progress(0, total);
    }
    std::vector<quantized_layer> out;
    const auto emit = [&](std::vector<quantized_layer>&& group) {
      if (bloom && !group.empty() && group[0].role == model::tensor_role::q) {
        out.push_back(fuse_bloom_qkv(std::move(group)));
        ++done;
      } else {
        for (auto& g : group) {
          out.push_back(std::move(g));
          ++done;
        }
      }
      if (progress) {
        progress(done, total);
      }
    };
    // GPTQ's calibration rows: every window is one sequence; passes of at most max_batch_rows rows. The
    // residual stream of every pass is kept between layers (float32, rows x hidden). RTN needs none of it.
    const bool gptq = settings.use_gptq;
    std::vector<std::span<const token_id>> spans;
    for (std::size_t i = 0; gptq && i < windows.size(); ++i) {
      QPROB_CHECK(!windows[i].empty() && static_cast<std::int64_t>(windows[i].size()) <= max_length_,
                  "engine::quantize: calibration window ", i, " has ", windows[i].size(),
                  " tokens; windows must be non-empty and at most max_length=", max_length_);
      spans.emplace_back(windows[i]);
    }
    const auto plans = plan_sequences(spans, false, sequence_options());
    const auto H     = cfg_.hidden_size;
    std::vector<device_buffer<float>> xs;
    for (const auto& b : plans) {
      const auto padded = round_up(b.rows(), options_.gemm_rows);
      xs.emplace_back(padded * H, stream_);
      xs.back().fill_bytes(0);
      upload_plan(b);
      embed(xs.back().data(), b.rows(), padded);
    }
    // The attention output of every calibration row (rows x q heads x head_dim, ~2 GiB for 128 x 2048 tokens
    // of a 7B model), computed once per layer after q|k|v are quantized and reused by the o, MLP and final
    // passes, when it fits beside a 2 GiB margin for the solver; otherwise those passes recompute it.
    std::vector<device_buffer<Act>> att_cache;
    if (gptq) {
      std::vector<std::int64_t> elems;  // per batch: padded rows x q heads x head_dim
      std::int64_t need = 0;
      for (const auto& b : plans) {
        elems.push_back(round_up(b.rows(), options_.gemm_rows) * cfg_.num_heads * cfg_.head_dim);
        need += elems.back() * static_cast<std::int64_t>(sizeof(Act));
      }
      std::size_t free_bytes = 0, total_bytes = 0;
      QPROB_CUDA_TRY(cudaMemGetInfo(&free_bytes, &total_bytes));
      if (need + (std::int64_t{2} << 30) < static_cast<std::int64_t>(free_bytes)) {
        for (const auto e : elems) {
          att_cache.emplace_back(e, stream_);
        }
        stats_.quantize_cache_bytes = need;
      }
    }
    const auto use_cache = [&](std::size_t bi, bool ready) {
      att_cache_.out   = att_cache.empty() ? nullptr : att_cache[bi].data();
      att_cache_.ready = ready;
    };
    struct cache_reset {
      decltype(att_cache_)& c;
      ~cache_reset() { c = {}; }
    } reset_on_exit{att_cache_};
    using clock = std::chrono::steady_clock;
    auto lap_start = clock::now();
    const auto lap = [&](double& into) {  // wall time since the last lap, the stream drained
      stream_.synchronize();
      const auto now = clock::now();
      into += std::chrono::duration<double>(now - lap_start).count();
      lap_start = now;
    };
    const layer_stage stages[4] = {layer_stage::qkv_input, layer_stage::o_input, layer_stage::up_input, layer_stage::down_input};
    for (std::int64_t l = 0; l < cfg_.num_layers; ++l) {
      auto& L           = layers_[static_cast<std::size_t>(l)];
      const auto slices = slices_of(L);
      for (const auto stage : stages) {
        std::vector<const linear_slice*> members;
        for (const auto& sl : slices) {
          if (sl.input == stage) {
            members.push_back(&sl);
          }
        }
        const float* hessian = nullptr;  // RTN
        std::optional<quant::hessian_accumulator<half_t>> acc;
        if (gptq) {
          const auto k = members.front()->lin->in;
          acc.emplace(k, stream_);
          const input_observer observe = [&](layer_stage st, const Act* in, std::int64_t rows, std::int64_t kk) {
            if (st == stage) {
              QPROB_CHECK_EQ(kk, k, "engine::quantize: input width");
              acc->add(make_device_view(in, rows, kk));
            }
          };
          for (std::size_t bi = 0; bi < plans.size(); ++bi) {
            const auto rows   = plans[bi].rows();
            const auto padded = round_up(rows, options_.gemm_rows);
            upload_plan(plans[bi]);
            float* scratch = x_.get(padded * H, stream_);  // run_layer may modify x before it stops
            QPROB_CUDA_TRY(cudaMemcpyAsync(scratch, xs[bi].data(), static_cast<std::size_t>(padded * H) * sizeof(float),
                                           cudaMemcpyDeviceToDevice, stream_));
            if (stage != layer_stage::qkv_input) {
              use_cache(bi, stage != layer_stage::o_input);  // the o stage fills it, later ones read it
            }
            run_layer(l, scratch, rows, padded, &observe, stage);
          }
          hessian = acc->hessian().data();
          lap(stats_.quantize_forward_seconds);
        }
        std::vector<quantized_layer> group;
        for (const auto* sl : members) {
          group.push_back(quantize_slice<P>(l, *sl, hessian, settings));
        }
        lap(stats_.quantize_solve_seconds);
        emit(std::move(group));
      }
      for (std::size_t bi = 0; gptq && bi < plans.size(); ++bi) {  // the quantized layer's outputs feed the next layer
        const auto rows = plans[bi].rows();
        upload_plan(plans[bi]);
        use_cache(bi, true);
        run_layer(l, xs[bi].data(), rows, round_up(rows, options_.gemm_rows), nullptr, layer_stage::all);
      }
      att_cache_ = {};
      lap(stats_.quantize_forward_seconds);
    }
    return out;
  }

  // Declaration order matters: the stream outlives every buffer that frees on it.
  model::model_config cfg_;
  engine_options options_;
  qprob::stream stream_;
  cublas_handle blas_;
  std::int64_t max_length_ = 0;

  device_buffer<Act> embed_, positions_;
  norm embed_norm_, final_norm_;
  linear project_in_, project_out_, lm_head_;
  std::vector<layer> layers_;
  device_buffer<float> inv_freq_, alibi_;
  int half_rotary_ = 0;
  int dpl_         = 1;
  std::int64_t current_window_ = 0;
  /// Set by quantize_with for one batch: attention_block writes its attention output to `out` (ready false) or
  /// takes it from there (ready true) instead of recomputing q|k|v and attention.
  struct {
    Act* out   = nullptr;
    bool ready = false;
  } att_cache_;
  float* x_cur_                = nullptr;  // the residual stream run_layer() works on
  /// quantized_linears::packed: the block linears (layer, checkpoint role) the fused GEMM refused, with the reason.
  std::map<std::pair<std::int64_t, model::tensor_role>, std::string> unpacked_;
  std::string last_unpacked_;

  device_buffer<token_id> tokens_dev_;
  device_buffer<std::int32_t> positions_dev_, selected_dev_;
  device_buffer<attention_tile> tiles_dev_;
  workspace<float> x_, y1_, y2_, logits_;
  workspace<Act> h_, qkv_, att_, up_, act_, hs_, ho_;
  workspace<kernels::row_stats> stats_dev_;
  std::function<void(std::int64_t, std::int64_t, const float*, const kernels::row_stats*)> chunk_hook_ =
      [](std::int64_t, std::int64_t, const float*, const kernels::row_stats*) {};
  engine_stats stats_;
};

}  // namespace qprob::engine::detail
