// SPDX-License-Identifier: Apache-2.0
#pragma once
// Round-to-nearest (RTN) quantization and dequantization on the GPU: the public host API. Declarations only,
// so that host-compiled code can call the preset instantiations in qprob::kernels; nvcc code that includes
// quant/rtn.cuh gets the definitions for any policy. The numerics are specified by reference/rtn.hpp and the
// storage layout by quant/pack.hpp.

#include <qprob/core/numeric.hpp>
#include <qprob/core/tensor_view.hpp>
#include <qprob/policy/precision.hpp>

#include <cuda_runtime_api.h>

#include <cstdint>

namespace qprob::quant {

/// Quantizes a (N, K) weight with GPTQ's min/max RTN rule.
/// @param[in]  w        (N, K) weights in P::compute_type, rows contiguous (stride(1) == 1)
/// @param[out] qweight  (P::packed_words(K), N) packed codes, dense
/// @param[out] scales   (P::groups(K), N) fp16 scales, dense
/// @param[out] zeros    (P::groups(K), N) zero points, dense
/// @param      stream   work is queued on this stream; nothing synchronizes
/// @throws qprob::invalid_argument on shape or layout mismatch (naming the tensor), qprob::cuda_error if a
///         launch fails. An act-order policy quantizes in natural column order (RTN has no Hessian).
template <quantized_policy P>
void rtn_quantize(device_view<const typename P::compute_type, 2> w,
                  device_view<std::uint32_t, 2> qweight,
                  device_view<half_t, 2> scales,
                  device_view<std::uint8_t, 2> zeros,
                  cudaStream_t stream);

/// Expands packed codes back to a (N, K) matrix: out = scale[g][n] * (code - zero[g][n]).
/// @param[in] maybe_g_idx  nullptr for natural groups (k / group_size), else K group indices in device memory,
///                         each in [0, P::groups(K)) (precondition, not checked on the device)
template <quantized_policy P>
void dequantize(device_view<const std::uint32_t, 2> qweight,
                device_view<const half_t, 2> scales,
                device_view<const std::uint8_t, 2> zeros,
                const std::int32_t* maybe_g_idx,
                device_view<typename P::compute_type, 2> out,
                cudaStream_t stream);

}  // namespace qprob::quant

/// Explicit instantiation of the RTN API for policy P: `QPROB_RTN_INSTANTIATE(extern template, P)` declares it
/// (the generated rtn_instances.inc), `QPROB_RTN_INSTANTIATE(template, P)` defines it (kernels/generated/).
#define QPROB_RTN_INSTANTIATE(KEYWORD, P)                                                              \
  KEYWORD void qprob::quant::rtn_quantize<P>(qprob::device_view<const typename P::compute_type, 2>,  \
                                              qprob::device_view<std::uint32_t, 2>,                    \
                                              qprob::device_view<qprob::half_t, 2>,                    \
                                              qprob::device_view<std::uint8_t, 2>,                     \
                                              cudaStream_t);                                           \
  KEYWORD void qprob::quant::dequantize<P>(qprob::device_view<const std::uint32_t, 2>,               \
                                            qprob::device_view<const qprob::half_t, 2>,              \
                                            qprob::device_view<const std::uint8_t, 2>,               \
                                            const std::int32_t*,                                     \
                                            qprob::device_view<typename P::compute_type, 2>,         \
                                            cudaStream_t)
