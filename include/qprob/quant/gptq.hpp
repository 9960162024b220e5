// SPDX-License-Identifier: Apache-2.0
#pragma once
// GPTQ on the GPU: the public host API. Declarations only (see quant/rtn.hpp for why); definitions are in
// quant/gptq.cuh, the specification in reference/gptq.hpp.

#include <qprob/core/device_buffer.hpp>
#include <qprob/core/numeric.hpp>
#include <qprob/core/tensor_view.hpp>
#include <qprob/policy/precision.hpp>
#include <qprob/reference/gptq.hpp>

#include <cuda_runtime_api.h>

#include <cstdint>

namespace qprob::quant {

/// Accumulates the Hessian of a linear layer's inputs, H = 2/n sum_t x_t x_t^T over n calibration tokens, in
/// float32 on the GPU (tensor cores: fp16/bf16 inputs multiply exactly into fp32 accumulators).
template <class T>
class hessian_accumulator {
public:
  hessian_accumulator(std::int64_t k, cudaStream_t stream);
  ~hessian_accumulator();
  hessian_accumulator(const hessian_accumulator&)            = delete;
  hessian_accumulator& operator=(const hessian_accumulator&) = delete;

  /// Adds the rows of x (tokens, k).
  void add(device_view<const T, 2> x);
  /// Number of tokens added.
  [[nodiscard]] std::int64_t tokens() const noexcept { return tokens_; }
  /// H = 2/n * sum x x^T, (k, k) symmetric; throws if no token was added.
  [[nodiscard]] device_view<const float, 2> hessian();

private:
  std::int64_t k_;
  std::int64_t tokens_ = 0;
  bool scaled_         = false;
  cudaStream_t stream_;
  device_buffer<float> sum_;
  void* blas_;  // cublasHandle_t, kept opaque so this header needs no cuBLAS headers
};

/// Quantizes a (N, K) weight with GPTQ given its (K, K) Hessian (float32, symmetric, device).
/// @param[out] qweight, scales, zeros  as rtn_quantize (quant/pack.hpp layout), codes in natural column order
/// @param[out] maybe_g_idx  K group indices (required for act-order policies, else may be null)
/// @param[out] maybe_dequantized  (N, K) dequantized weights in P::compute_type, or null
/// @return the dampening used, dead inputs, the GPTQ loss and warnings (e.g. raised dampening)
/// Synchronizes `stream` (the Cholesky factorization reports success through the host).
template <quantized_policy P>
gptq_report gptq_quantize(device_view<const typename P::compute_type, 2> w,
                          device_view<const float, 2> hessian,
                          device_view<std::uint32_t, 2> qweight,
                          device_view<half_t, 2> scales,
                          device_view<std::uint8_t, 2> zeros,
                          std::int32_t* maybe_g_idx,
                          typename P::compute_type* maybe_dequantized,
                          const gptq_options& options,
                          cudaStream_t stream);

}  // namespace qprob::quant

#define QPROB_GPTQ_INSTANTIATE(KEYWORD, P)                                                                    \
  KEYWORD qprob::gptq_report qprob::quant::gptq_quantize<P>(qprob::device_view<const typename P::compute_type, 2>, \
                                                            qprob::device_view<const float, 2>,               \
                                                            qprob::device_view<std::uint32_t, 2>,             \
                                                            qprob::device_view<qprob::half_t, 2>,             \
                                                            qprob::device_view<std::uint8_t, 2>,              \
                                                            std::int32_t*,                                    \
                                                            typename P::compute_type*,                        \
                                                            const qprob::gptq_options&,                       \
                                                            cudaStream_t)

#define QPROB_HESSIAN_INSTANTIATE(KEYWORD, T) KEYWORD class qprob::quant::hessian_accumulator<T>
