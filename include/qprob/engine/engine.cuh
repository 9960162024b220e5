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
#include <qprob/engine/kernels.cuh>
#include <qprob/engine/plan.hpp>
#include <qprob/io/safetensors.hpp>
#include <qprob/model/config.hpp>
#include <qprob/model/weights.hpp>
#include <qprob/reference/forward.hpp>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
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
  [[nodiscard]] virtual engine_stats stats() const = 0;
};

template <class Act>
constexpr cudaDataType_t cuda_type() noexcept {
  return std::is_same_v<Act, half_t> ? CUDA_R_16F : CUDA_R_16BF;
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
  struct linear {
    std::int64_t out = 0, in = 0;
    device_buffer<Act> w;     // [out, in]
    device_buffer<float> b;   // [out] or empty
    [[nodiscard]] const float* bias() const noexcept { return b.empty() ? nullptr : b.data(); }
  };
  struct norm {
    device_buffer<float> w, b;
    [[nodiscard]] bool present() const noexcept { return !w.empty(); }
  };
  struct layer {
    norm attn_norm, mlp_norm;
    linear qkv, o, up, down;  // up = gate | up for gated MLPs
  };

  engine_impl_t(model::model_config cfg, const engine_options& options)
      : cfg_(std::move(cfg)), options_(options), blas_(stream_.get()) {
    QPROB_CHECK(options_.gemm_rows > 0 && options_.head_rows > 0 && options_.max_batch_rows > 0,
                "engine_options: gemm_rows=", options_.gemm_rows, ", head_rows=", options_.head_rows,
                " and max_batch_rows=", options_.max_batch_rows, " must be positive");
    max_length_ = options_.max_length.value_or(reference::default_max_length(cfg_));
    QPROB_CHECK(max_length_ > 0, "engine_options: max_length=", max_length_);
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
    lm_head_bias_ = up_f(host_f(R::lm_head, P::bias, model::global_tensor));
    stream_.synchronize();
    const auto H = cfg_.hidden_size, D = cfg_.head_dim;
    const auto QD = cfg_.num_heads * D, KVD = cfg_.num_kv_heads * D;
    for (std::int64_t l = 0; l < cfg_.num_layers; ++l) {
      layer L;
      L.attn_norm = nrm(R::attn_norm, l);
      L.mlp_norm  = nrm(R::mlp_norm, l);
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
      L.qkv = {QD + 2 * KVD, H, up_act(w), up_f(b)};
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
        L.up = {2 * cfg_.intermediate_size, H, up_act(g), up_f(bb)};
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
      return linear{out, in, rnd(out * in, 0.02f, 0.0f), bias ? rnd_f(out, 0.0f) : device_buffer<float>()};
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
      lm_head_bias_ = rnd_f(c.vocab_size, 0.0f);
    }
    for (std::int64_t l = 0; l < c.num_layers; ++l) {
      layer L;
      L.attn_norm = mk_norm(H);
      if (!c.parallel_attn_mlp) {
        L.mlp_norm = mk_norm(H);
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
    return std::is_same_v<Act, half_t> ? activation_type::f16 : activation_type::bf16;
  }
  [[nodiscard]] std::int64_t max_length() const noexcept override { return max_length_; }

  [[nodiscard]] std::vector<request_score> score(std::span<const token_request> requests, bool token_logprobs,
                                                 bool share_prefixes) override {
    plan_options po;
    po.max_length     = max_length_;
    po.max_batch_rows = options_.max_batch_rows;
    po.tile_rows      = kernels::kTileRows;
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
    const std::span<const token_id> one[1] = {tokens};
    const auto batches = plan_sequences(one, true, sequence_options());
    QPROB_CHECK(static_cast<std::int64_t>(tokens.size()) <= max_length_, "engine::logits: ", tokens.size(),
                " tokens exceed max_length=", max_length_);
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

  [[nodiscard]] engine_stats stats() const override {
    engine_stats s = stats_;
    s.weight_bytes = weight_bytes_;
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
    if (cfg_.qk_layernorm) {
      throw format_error(config_file, "qk_layernorm", "Phi's per-head q/k LayerNorm is not implemented by the GPU engine");
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
    const auto add = [&](const auto& buf) { weight_bytes_ += buf.bytes(); };
    add(embed_);
    add(positions_);
    add(project_in_.w);
    add(project_out_.w);
    add(lm_head_.w);
    for (const auto& L : layers_) {
      add(L.qkv.w);
      add(L.o.w);
      add(L.up.w);
      add(L.down.w);
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

  /// Y[rows, N] = X[rows, K] W[N, K]^T over `rows_padded` rows (a multiple of chunk), chunk rows per call.
  template <class OutT>
  void gemm(const Act* x, const Act* w, OutT* y, std::int64_t rows_padded, std::int64_t k, std::int64_t n, std::int64_t chunk) {
    const float alpha = 1.0f, beta = 0.0f;
    constexpr cudaDataType_t out_type = std::is_same_v<OutT, float> ? CUDA_R_32F : cuda_type<Act>();
    for (std::int64_t r = 0; r < rows_padded; r += chunk) {
      QPROB_CUBLAS_TRY(cublasGemmEx(blas_.get(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(chunk),
                                    static_cast<int>(k), &alpha, w, cuda_type<Act>(), static_cast<int>(k), x + r * k,
                                    cuda_type<Act>(), static_cast<int>(k), &beta, y + r * n, out_type, static_cast<int>(n),
                                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
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
        x_.buf.data(), y1, b1, y2, b2, h_base, cfg_.hidden_size);
    QPROB_CUDA_TRY(qprob::detail::post_launch(stream_));
  }

  /// Attention block of layer L on h (rows): leaves o(att) in y (float32, no bias).
  void attention_block(const layer& L, std::int64_t rows, std::int64_t rows_padded, float* y) {
    const auto H = cfg_.hidden_size, D = cfg_.head_dim;
    const auto QD = cfg_.num_heads * D, KVD = cfg_.num_kv_heads * D, W = QD + 2 * KVD;
    Act* qkv = qkv_.get(rows_padded * W, stream_);
    Act* att = att_.get(rows_padded * QD, stream_);
    gemm(h_.buf.data(), L.qkv.w.data(), qkv, rows_padded, H, W, options_.gemm_rows);
    kernels::qkv_kernel<Act><<<static_cast<unsigned>(rows), kernels::kRowThreads, 0, stream_>>>(
        qkv, W, L.qkv.bias(), positions_dev_.data(), inv_freq_.empty() ? nullptr : inv_freq_.data(), half_rotary_,
        static_cast<int>(D), static_cast<int>(cfg_.num_heads), static_cast<int>(cfg_.num_kv_heads));
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
    const dim3 grid(static_cast<unsigned>(tiles_dev_.size()), static_cast<unsigned>(cfg_.num_heads));
    const auto smem = kernels::attention_smem_bytes(static_cast<int>(D));
    with_dpl(dpl_, [&](auto k) {
      kernels::attention_kernel<Act, decltype(k)::value><<<grid, kernels::kAttnThreads, smem, stream_>>>(p);
    });
    QPROB_CUDA_TRY(qprob::detail::post_launch(stream_));
    gemm(att, L.o.w.data(), y, rows_padded, QD, H, options_.gemm_rows);
  }

  /// MLP block of layer L on h: leaves down(act(...)) in y (float32, no down bias).
  void mlp_block(const layer& L, std::int64_t rows, std::int64_t rows_padded, float* y) {
    const auto H = cfg_.hidden_size, I = cfg_.intermediate_size;
    Act* u = up_.get(rows_padded * L.up.out, stream_);
    Act* a = act_.get(rows_padded * I, stream_);
    gemm(h_.buf.data(), L.up.w.data(), u, rows_padded, H, L.up.out, options_.gemm_rows);
    kernels::mlp_act_kernel<Act><<<static_cast<unsigned>(rows), kernels::kRowThreads, 0, stream_>>>(
        u, L.up.bias(), I, cfg_.gated_mlp, kernels::activation_code(cfg_.act, cfg_.activation_name), a);
    QPROB_CUDA_TRY(qprob::detail::post_launch(stream_));
    gemm(a, L.down.w.data(), y, rows_padded, I, H, options_.gemm_rows);
  }

  /// Runs the transformer over the batch's rows; leaves the residual stream in x_.
  void forward(const batch_plan& b) {
    const auto rows = b.rows();
    if (rows == 0) {
      return;
    }
    const auto& c   = cfg_;
    const auto H = c.hidden_size, E = c.word_embed_proj_dim;
    const auto padded = round_up(rows, options_.gemm_rows);
    tokens_dev_    = device_buffer<token_id>(std::span<const token_id>(b.tokens), stream_);
    positions_dev_ = device_buffer<std::int32_t>(std::span<const std::int32_t>(b.positions), stream_);
    tiles_dev_     = device_buffer<attention_tile>(std::span<const attention_tile>(b.tiles), stream_);
    float* x  = x_.get(padded * H, stream_);
    Act* h    = h_.get(padded * std::max(H, E), stream_);
    float* y1 = y1_.get(padded * H, stream_);
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
    for (std::int64_t l = 0; l < c.num_layers; ++l) {
      const auto& L   = layers_[static_cast<std::size_t>(l)];
      const bool slid = c.sliding_window && static_cast<std::size_t>(l) < c.layer_sliding.size() &&
                        c.layer_sliding[static_cast<std::size_t>(l)];
      current_window_ = slid ? *c.sliding_window : 0;
      if (c.pre_norm) {
        launch_norm(L.attn_norm, norm_code(), x, nullptr, rows, H, h, nullptr);
        attention_block(L, rows, padded, y1);
        if (c.parallel_attn_mlp) {
          float* y2 = y2_.get(padded * H, stream_);
          mlp_block(L, rows, padded, y2);
          residual(rows, y1, L.o.bias(), y2, L.down.bias(), nullptr);
          continue;
        }
        residual(rows, y1, L.o.bias(), nullptr, nullptr, c.residual_post_norm ? h : nullptr);
        launch_norm(L.mlp_norm, norm_code(), x, nullptr, rows, H, h, nullptr);
        mlp_block(L, rows, padded, y1);
        residual(rows, y1, L.down.bias(), nullptr, nullptr, c.residual_post_norm ? h : nullptr);
      } else {  // OPT-350m post-norm: x = norm1(x + attn(x)); x = norm2(x + mlp(x))
        launch_norm(norm{}, kernels::norm_code::identity, x, nullptr, rows, H, h, nullptr);
        attention_block(L, rows, padded, y1);
        residual(rows, y1, L.o.bias(), nullptr, nullptr, nullptr);
        launch_norm(L.attn_norm, norm_code(), x, nullptr, rows, H, h, x);
        mlp_block(L, rows, padded, y1);
        residual(rows, y1, L.down.bias(), nullptr, nullptr, nullptr);
        launch_norm(L.mlp_norm, norm_code(), x, nullptr, rows, H, h, x);
      }
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
          logits, V, lm_head_bias_.empty() ? nullptr : lm_head_bias_.data(), st);
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

  // Declaration order matters: the stream outlives every buffer that frees on it.
  model::model_config cfg_;
  engine_options options_;
  qprob::stream stream_;
  cublas_handle blas_;
  std::int64_t max_length_ = 0;

  device_buffer<Act> embed_, positions_;
  norm embed_norm_, final_norm_;
  linear project_in_, project_out_, lm_head_;
  device_buffer<float> lm_head_bias_;
  std::vector<layer> layers_;
  device_buffer<float> inv_freq_, alibi_;
  int half_rotary_ = 0;
  int dpl_         = 1;
  std::int64_t current_window_ = 0;
  std::int64_t weight_bytes_   = 0;

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
