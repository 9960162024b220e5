// SPDX-License-Identifier: Apache-2.0
#pragma once
// The GPU scoring engine as host code sees it (no CUDA syntax here; the implementation is engine.cuh, compiled
// into qprob::kernels by kernels/engine.cu). One forward pass for every family qprob reads (llama, mistral,
// opt, bloom, phi, qwen2), fp16 or bf16 weights and activations, float32 residual stream, accumulation and
// log-softmax; the lm-eval loglikelihood contract with prefix sharing and batch-invariant results. docs/engine.md
// documents the numerics and the tolerances it is tested to.
//
//   auto e = qprob::engine::engine::from_directory("models/stories260K", {});
//   std::vector<qprob::engine::token_request> reqs = ...;   // context / continuation token ids
//   auto scores = e.score(reqs);                             // loglik, is_greedy, per-token log-probs
#include <qprob/engine/plan.hpp>
#include <qprob/model/config.hpp>
#include <qprob/quant/checkpoint.hpp>
#include <qprob/reference/gptq.hpp>
#include <qprob/reference/rtn.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace qprob::engine {

/// Weights and activations of the engine. f32 (cuBLAS SGEMM, no TF32) is for exact comparisons on small models
/// (e.g. parity with a float32 reference, or a full model that is not itself rounded to 16 bits); quantization
/// and quantized checkpoints need f16.
enum class activation_type : std::uint8_t { f16, bf16, f32 };

/// "f16", "bf16" or "f32" (the spelling of command-line options and of name()'s suffix); nullopt otherwise.
[[nodiscard]] inline std::optional<activation_type> parse_activation_type(std::string_view s) noexcept {
  if (s == "f16") {
    return activation_type::f16;
  }
  if (s == "bf16") {
    return activation_type::bf16;
  }
  if (s == "f32") {
    return activation_type::f32;
  }
  return std::nullopt;
}

/// How the engine holds and multiplies the block linears of a quantized model (set_quantized_weight, quantize).
enum class quantized_linears : std::uint8_t {
  /// Dequantized once to fp16 and multiplied by cuBLAS: the fastest at scoring's row counts today
  /// (docs/performance.md), with the memory of the fp16 model.
  dequantized,
  /// Kept as 4- or 8-bit codes and multiplied by the fused dequantize-and-multiply GEMM (quant/packed_linear.cuh,
  /// sm_90): about a quarter (4 bits) of the fp16 weight memory. Linears the fused GEMM does not implement (2 or
  /// 3 bits, K not a multiple of 64, ...) stay dequantized; engine_stats counts both.
  packed,
};

/// "dequantized" or "packed" (command-line spelling); nullopt otherwise.
[[nodiscard]] inline std::optional<quantized_linears> parse_quantized_linears(std::string_view s) noexcept {
  if (s == "dequantized") {
    return quantized_linears::dequantized;
  }
  if (s == "packed") {
    return quantized_linears::packed;
  }
  return std::nullopt;
}

struct engine_options {
  /// Weights and activations; nullopt: bf16 when the checkpoint (config dtype) is bf16, else f16.
  std::optional<activation_type> dtype;
  /// lm-eval's max_length; nullopt: max_position_embeddings, else 2048 (reference::default_max_length).
  std::optional<std::int64_t> max_length;
  /// Token rows per forward pass (activations grow with it; see docs/engine.md for the memory it takes).
  std::int64_t max_batch_rows = 8192;
  /// Every GEMM runs on row blocks of exactly this many rows (the last one padded), so cuBLAS always sees the
  /// same shapes and picks the same kernels: a row's result never depends on the batch it is in.
  std::int64_t gemm_rows = 2048;
  /// LM-head rows per vocabulary chunk (float32 logits exist for this many rows at a time only).
  std::int64_t head_rows = 512;
  /// Causal attention on tensor cores (fp16/bf16, head_dim 32, 64, 80, 96 or 128; engine/attention_mma.cuh);
  /// false, or any other case, runs the float32 CUDA-core kernel (comparisons and benchmarks).
  bool tensor_core_attention = true;
  /// Quantized block linears: dequantized fp16 weights (cuBLAS) or packed codes (fused GEMM).
  quantized_linears quantized = quantized_linears::dequantized;
  int device = 0;
};

/// One request's answer (lm-eval's (loglikelihood, is_greedy) plus the terms).
struct request_score {
  double loglik  = 0.0;   ///< sum of the token log-probabilities, summed in double in token order
  bool is_greedy = false;
  std::vector<float> token_logprobs;  ///< filled when asked for
};

/// Full-vocabulary statistics of the next token after a context.
struct next_token_score {
  token_id token = 0;   ///< argmax (first index on ties)
  double logprob = 0.0; ///< its log-probability
  double entropy = 0.0; ///< of the softmax over the vocabulary, nats
};

/// Memory and work counters, for benchmarks and logs.
struct engine_stats {
  std::int64_t weight_bytes      = 0;  ///< device bytes of the weights
  std::int64_t peak_pool_bytes   = 0;  ///< high-water mark of the engine's stream-ordered allocations
  std::int64_t rows_computed     = 0;  ///< token rows through the transformer since construction
  std::int64_t request_tokens    = 0;  ///< sum of request input lengths (rows without prefix sharing)
  std::int64_t forward_passes    = 0;
  double quantize_forward_seconds = 0;  ///< quantize(): calibration forwards and Hessian accumulation (wall time)
  double quantize_solve_seconds   = 0;  ///< quantize(): GPTQ / RTN solver (wall time)
  std::int64_t quantize_cache_bytes = 0;  ///< quantize(): device bytes of the reused attention outputs (0: none)
  std::int64_t packed_linears   = 0;  ///< block linears (checkpoint layout: q, k, v, o, ...) held as packed codes
  std::int64_t unpacked_linears = 0;  ///< quantized_linears::packed: block linears kept dequantized (the fused GEMM refused them)
  std::string unpacked_reason;        ///< why the most recent refusal happened (layer, role, reason)
};

/// What engine::quantize does.
struct quantize_settings {
  bool use_gptq = true;          ///< GPTQ (needs calibration windows) or round-to-nearest
  quant::runtime_policy policy;  ///< bits, group size, symmetry, act-order (a preset of quant::dispatch_policy)
  gptq_options solver;           ///< damp_percent, static_groups, block size
};

/// One quantized block linear, in the checkpoint's layout: roles q, k, v (BLOOM: qkv, the fused head-interleaved
/// query_key_value), o, gate, up, down.
struct quantized_layer {
  std::int64_t layer = 0;
  model::tensor_role role = model::tensor_role::q;
  reference::quantized_weight weight;  ///< codes, scales, zeros (true zero points), g_idx (act-order)
  gptq_report report;                  ///< GPTQ's dampening, dead columns, loss (RTN: zeros)
  double weight_mse = 0;               ///< mean (w - dequantized w)^2
};

using quantize_progress = std::function<void(std::size_t done, std::size_t total)>;

namespace detail {
class engine_impl;
}

class engine {
public:
  /// Loads config.json and the safetensors checkpoint of `dir` onto the GPU.
  /// @throws format_error for a bad config/checkpoint or an unsupported feature (naming the file and field),
  ///         cuda_error when no GPU is usable.
  static engine from_directory(const std::filesystem::path& dir, const engine_options& options = {});
  /// A model with the config's shapes and random weights (benchmarks at real shapes without a checkpoint):
  /// linear weights uniform with standard deviation 0.02, norms 1, biases 0; deterministic in `seed`.
  static engine random(const model::model_config& config, const engine_options& options = {}, std::uint64_t seed = 0);

  engine(engine&&) noexcept;
  engine& operator=(engine&&) noexcept;
  ~engine();

  [[nodiscard]] const model::model_config& config() const noexcept;
  [[nodiscard]] activation_type dtype() const noexcept;
  [[nodiscard]] std::int64_t max_length() const noexcept;
  /// "qprob-cuda-f16" / "qprob-cuda-bf16" / "qprob-cuda-f32", with "-packed" appended while block linears are held
  /// packed (engine_options::quantized), so that results and caches tell the two computations apart.
  [[nodiscard]] std::string name() const;

  /// lm-eval loglikelihood of every request; result i answers requests[i], bit-identical whatever the other
  /// requests are. `share_prefixes=false` computes each request's context separately (same results).
  [[nodiscard]] std::vector<request_score> score(std::span<const token_request> requests, bool token_logprobs = false,
                                                 bool share_prefixes = true);
  /// Greedy next token after each context (the last max_length tokens), with the full-vocabulary entropy.
  [[nodiscard]] std::vector<next_token_score> next_token(std::span<const std::span<const token_id>> contexts);
  /// Float32 logits (T, vocab) of one sequence at every position (tests, parity scripts).
  [[nodiscard]] std::vector<float> logits(std::span<const token_id> tokens);
  /// Full-vocabulary log-softmax rows of one window, streamed: on_row(t, row) for t = 0..T-1 in order.
  void window_logprobs(std::span<const token_id> window,
                       const std::function<void(std::int64_t, std::span<const float>)>& on_row);

  /// Quantizes every block linear in place (the engine computes with the quantized weights afterwards, held as
  /// engine_options::quantized says; calibration forwards use the dequantized fp16 weights either way) and
  /// returns the quantized layers in layer order, q k v (or qkv) o [gate] up down within a layer. GPTQ follows
  /// AutoGPTQ with true_sequential: decoder layers in order, each layer's inputs computed by the already
  /// quantized layers before it; within a layer the sub-groups [q k v] [o] [gate up] [down], each one's inputs
  /// recomputed with the earlier sub-groups quantized; H = 2/tokens sum x x^T over every window position.
  /// `windows`: calibration token windows (each at most max_length tokens), GPTQ only.
  /// @throws invalid_argument for a bf16 engine (the solver's presets compute in fp16), a policy without a
  ///         preset, GPTQ without windows, RTN with desc_act, an engine whose linears are packed already.
  std::vector<quantized_layer> quantize(const quantize_settings& settings, std::span<const std::vector<token_id>> windows,
                                        const quantize_progress& progress = {});

  /// Replaces block linear (layer, role) by `q` (checkpoint layout; BLOOM's fused qkv is split into q, k and v)
  /// under the preset of `policy`: loading a GPTQ checkpoint. engine_options::quantized chooses how it is held:
  /// dequantized to fp16 on the GPU, or packed for the fused GEMM (falling back to dequantized, counted in
  /// engine_stats, where the fused GEMM does not implement the policy or shape).
  /// @throws invalid_argument for a bf16 engine, a role or shape the model does not have, a policy without a
  ///         preset, codes/scales/zeros of the wrong sizes.
  void set_quantized_weight(std::int64_t layer, model::tensor_role role, const reference::quantized_weight& q,
                            const quant::runtime_policy& policy);

  [[nodiscard]] engine_stats stats() const;

private:
  explicit engine(std::unique_ptr<detail::engine_impl> impl);
  std::unique_ptr<detail::engine_impl> impl_;
};

}  // namespace qprob::engine
