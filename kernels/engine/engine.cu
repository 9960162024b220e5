// SPDX-License-Identifier: Apache-2.0
// qprob::engine::engine (engine.hpp) for host code: the pimpl's member functions and the fp16 and bf16
// instantiations of the forward pass (engine.cuh), compiled once into qprob::kernels.
#include <qprob/core/device.hpp>
#include <qprob/engine/engine.cuh>
#include <qprob/engine/engine.hpp>

namespace qprob::engine {

namespace {

void require_gpu(int device) {
  if (const auto reason = gpu_unavailable_reason()) {
    throw error("qprob GPU engine: " + *reason);
  }
  QPROB_CUDA_TRY(cudaSetDevice(device));
}

std::unique_ptr<detail::engine_impl> make_impl(const model::model_config& cfg, const engine_options& options) {
  const auto t = options.dtype.value_or(cfg.dtype == qprob::dtype::bf16 ? activation_type::bf16 : activation_type::f16);
  if (t == activation_type::bf16) {
    return std::make_unique<detail::engine_impl_t<bfloat16_t>>(cfg, options);
  }
  if (t == activation_type::f32) {
    return std::make_unique<detail::engine_impl_t<float>>(cfg, options);
  }
  return std::make_unique<detail::engine_impl_t<half_t>>(cfg, options);
}

template <class F>
void with_impl(detail::engine_impl& impl, F&& f) {
  if (auto* p = dynamic_cast<detail::engine_impl_t<half_t>*>(&impl)) {
    f(*p);
  } else if (auto* b = dynamic_cast<detail::engine_impl_t<bfloat16_t>*>(&impl)) {
    f(*b);
  } else {
    f(dynamic_cast<detail::engine_impl_t<float>&>(impl));
  }
}

}  // namespace

engine engine::from_directory(const std::filesystem::path& dir, const engine_options& options) {
  require_gpu(options.device);
  const auto cfg  = model::load_config(dir);
  const auto ckpt = io::checkpoint::open(dir);
  auto impl       = make_impl(cfg, options);
  with_impl(*impl, [&](auto& m) { m.load(ckpt, (dir / "config.json").string()); });
  return engine(std::move(impl));
}

engine engine::random(const model::model_config& config, const engine_options& options, std::uint64_t seed) {
  require_gpu(options.device);
  auto impl = make_impl(config, options);
  with_impl(*impl, [&](auto& m) { m.init_random(seed); });
  return engine(std::move(impl));
}

engine::engine(std::unique_ptr<detail::engine_impl> impl) : impl_(std::move(impl)) {}
engine::engine(engine&&) noexcept            = default;
engine& engine::operator=(engine&&) noexcept = default;
engine::~engine()                            = default;

const model::model_config& engine::config() const noexcept { return impl_->config(); }
activation_type engine::dtype() const noexcept { return impl_->dtype(); }
std::int64_t engine::max_length() const noexcept { return impl_->max_length(); }
std::string engine::name() const {
  std::string n = "qprob-cuda";
  switch (impl_->dtype()) {
    case activation_type::f16: n += "-f16"; break;
    case activation_type::bf16: n += "-bf16"; break;
    case activation_type::f32: n += "-f32"; break;
  }
  // Packed block linears go through the fused GEMM: another summation order, so evaluations (and compare's
  // caches, keyed on the scorer's name) keep the two apart.
  return impl_->stats().packed_linears > 0 ? n + "-packed" : n;
}

std::vector<request_score> engine::score(std::span<const token_request> requests, bool token_logprobs, bool share_prefixes) {
  return impl_->score(requests, token_logprobs, share_prefixes);
}
std::vector<next_token_score> engine::next_token(std::span<const std::span<const token_id>> contexts) {
  return impl_->next_token(contexts);
}
std::vector<float> engine::logits(std::span<const token_id> tokens) { return impl_->logits(tokens); }
void engine::window_logprobs(std::span<const token_id> window,
                             const std::function<void(std::int64_t, std::span<const float>)>& on_row) {
  impl_->window_logprobs(window, on_row);
}
std::vector<quantized_layer> engine::quantize(const quantize_settings& settings, std::span<const std::vector<token_id>> windows,
                                              const quantize_progress& progress) {
  return impl_->quantize(settings, windows, progress);
}
void engine::set_quantized_weight(std::int64_t layer, model::tensor_role role, const reference::quantized_weight& q,
                                  const quant::runtime_policy& policy) {
  impl_->set_quantized_weight(layer, role, q, policy);
}
engine_stats engine::stats() const { return impl_->stats(); }

}  // namespace qprob::engine
