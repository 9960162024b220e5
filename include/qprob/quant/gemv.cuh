// SPDX-License-Identifier: Apache-2.0
#pragma once
// Fused dequantize-and-multiply for a few rows (decode-style GEMV, 1 to 16 rows): y = x W^T with W stored as
// GPTQ codes (quant/pack.hpp layout: qweight (packed_words(K), N), scales and zeros (groups(K), N), optional
// g_idx), never materialising W. Memory-bound: it reads bits/16 of the bytes an fp16 GEMV reads.
//
// Work split: a block owns kColumns * 128 output columns and one slice of K (split-K: grid.y slices of
// k_per_split inputs, a multiple of the pack block, so no pack block straddles two slices); each thread owns kColumns adjacent columns, streams their packed words (coalesced: consecutive
// threads read consecutive words of a word row) and keeps M x kColumns float32 accumulators, with x's slice
// staged in shared memory. The slices' partial sums go to a float32 workspace and a second kernel adds them in
// slice order: deterministic, no atomics. Codes are dequantized in float32 as scale * (code - zero), the
// reference's formula (reference/rtn.hpp dequantize, before its rounding to fp16).
#include <qprob/core/cuda_check.hpp>
#include <qprob/core/device_buffer.hpp>
#include <qprob/core/error.hpp>
#include <qprob/core/launch.hpp>
#include <qprob/core/numeric.cuh>
#include <qprob/core/tensor_view.hpp>
#include <qprob/policy/precision.hpp>
#include <qprob/quant/pack.hpp>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace qprob::quant {

namespace gemv_detail {

inline constexpr int kThreads = 128;
inline constexpr int kColumns = 2;     // output columns per thread
inline constexpr int kMaxRows = 16;
inline constexpr int kTargetSliceK = 1024;  // inputs per split-K slice (x slice: M x 1024 halves in smem)

template <quantized_policy P, int M>
__global__ void __launch_bounds__(kThreads) gemv_kernel(const half_t* __restrict__ x, std::int64_t ldx,
                                                        const std::uint32_t* __restrict__ qweight,
                                                        const half_t* __restrict__ scales,
                                                        const std::uint8_t* __restrict__ zeros,
                                                        const std::int32_t* __restrict__ g_idx, int k, int n,
                                                        int k_per_split, float* __restrict__ partial) {
  extern __shared__ half_t xs[];  // [M][k_per_split]
  const int split   = static_cast<int>(blockIdx.y);
  const int k_begin = split * k_per_split;
  const int k_end   = min(k, k_begin + k_per_split);
  const int width   = k_end - k_begin;
  for (int idx = threadIdx.x; idx < M * width; idx += blockDim.x) {
    const int m = idx / width, kk = idx % width;
    xs[m * k_per_split + kk] = x[m * ldx + k_begin + kk];
  }
  __syncthreads();
  const int col0 = (static_cast<int>(blockIdx.x) * kThreads + static_cast<int>(threadIdx.x)) * kColumns;
  if (col0 >= n) {
    return;
  }
  float acc[M][kColumns];
  for (int m = 0; m < M; ++m) {
    for (int c = 0; c < kColumns; ++c) {
      acc[m][c] = 0.0f;
    }
  }
  const int gw = static_cast<int>(P::group_width(k));
  std::uint32_t words[kColumns][P::pack_block_words];
  int group = -1;  // the group whose scales and zeros are loaded
  float scale[kColumns], zero[kColumns];
  for (int kb = k_begin; kb < k_end; kb += P::pack_block_values) {
    const std::int64_t word_row = static_cast<std::int64_t>(kb / P::pack_block_values) * P::pack_block_words;
    for (int w = 0; w < P::pack_block_words; ++w) {
      for (int c = 0; c < kColumns; ++c) {
        words[c][w] = col0 + c < n ? qweight[(word_row + w) * n + col0 + c] : 0u;
      }
    }
    const int values = min(P::pack_block_values, k_end - kb);
    for (int j = 0; j < values; ++j) {
      const int kk = kb + j;
      const int g  = g_idx == nullptr ? kk / gw : g_idx[kk];
      if (g != group) {  // natural groups change at group boundaries only; act-order g_idx may change anywhere
        group = g;
        for (int c = 0; c < kColumns; ++c) {
          const bool in = col0 + c < n;
          scale[c]      = in ? qprob::detail::to_float_device(scales[static_cast<std::int64_t>(g) * n + col0 + c]) : 0.0f;
          zero[c]       = in ? static_cast<float>(zeros[static_cast<std::int64_t>(g) * n + col0 + c]) : 0.0f;
        }
      }
      float w[kColumns];
      for (int c = 0; c < kColumns; ++c) {
        w[c] = scale[c] * (static_cast<float>(unpack_code<P>(words[c], j)) - zero[c]);
      }
      for (int m = 0; m < M; ++m) {
        const float xv = qprob::detail::to_float_device(xs[m * k_per_split + (kk - k_begin)]);
        for (int c = 0; c < kColumns; ++c) {
          acc[m][c] = fmaf(xv, w[c], acc[m][c]);
        }
      }
    }
  }
  for (int m = 0; m < M; ++m) {
    for (int c = 0; c < kColumns; ++c) {
      if (col0 + c < n) {
        partial[(static_cast<std::int64_t>(split) * M + m) * n + col0 + c] = acc[m][c];
      }
    }
  }
}

/// y[m, c] = sum over slices s (in order) of partial[s, m, c], rounded to fp16.
__global__ inline void gemv_reduce_kernel(const float* __restrict__ partial, int splits, int rows, int n, half_t* __restrict__ y,
                                          std::int64_t ldy) {
  const std::int64_t idx = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= static_cast<std::int64_t>(rows) * n) {
    return;
  }
  const int m = static_cast<int>(idx / n), c = static_cast<int>(idx % n);
  float s     = 0.0f;
  for (int k = 0; k < splits; ++k) {
    s += partial[(static_cast<std::int64_t>(k) * rows + m) * n + c];
  }
  y[m * ldy + c] = qprob::detail::from_float_device<half_t>(s);
}

/// Inputs per split-K slice for K: about kTargetSliceK, a multiple of the pack block (a block never straddles
/// two slices; groups may, each input finds its own group).
template <quantized_policy P>
constexpr int slice_k(std::int64_t k) noexcept {
  constexpr std::int64_t unit = P::pack_block_values;
  const std::int64_t per      = std::max<std::int64_t>(1, kTargetSliceK / unit) * unit;
  return static_cast<int>(std::min<std::int64_t>(per, ((k + unit - 1) / unit) * unit));
}

}  // namespace gemv_detail

/// Float32 workspace for int_gemv: splits x rows x N.
template <quantized_policy P>
std::int64_t int_gemv_workspace(std::int64_t rows, std::int64_t k, std::int64_t n) noexcept {
  const auto per = gemv_detail::slice_k<P>(k);
  return ((k + per - 1) / per) * rows * n;
}

/// y (rows, N) = x (rows, K) W^T for 1 <= rows <= 16, W given as GPTQ codes (see the header comment).
/// `workspace` holds int_gemv_workspace<P>(rows, K, N) floats. Queued on `stream`; nothing synchronizes.
/// @throws invalid_argument for shapes that do not match or rows outside [1, 16].
template <quantized_policy P>
void int_gemv(device_view<const half_t, 2> x, device_view<const std::uint32_t, 2> qweight, device_view<const half_t, 2> scales,
              device_view<const std::uint8_t, 2> zeros, const std::int32_t* maybe_g_idx, device_view<half_t, 2> y,
              float* workspace, cudaStream_t stream) {
  const auto rows = x.shape(0), k = x.shape(1), n = y.shape(1);
  QPROB_CHECK(rows >= 1 && rows <= gemv_detail::kMaxRows, "int_gemv: rows=", rows, " must be in [1, 16]");
  QPROB_CHECK(y.shape(0) == rows, "int_gemv: y has ", y.shape(0), " rows, x has ", rows);
  QPROB_CHECK(qweight.shape(0) == P::packed_words(k) && qweight.shape(1) == n, "int_gemv: qweight is (",
              qweight.shape(0), ", ", qweight.shape(1), "), expected (", P::packed_words(k), ", ", n, ")");
  QPROB_CHECK(scales.shape(0) == P::groups(k) && scales.shape(1) == n && zeros.shape(0) == P::groups(k) &&
                  zeros.shape(1) == n,
              "int_gemv: scales/zeros must be (", P::groups(k), ", ", n, ")");
  QPROB_CHECK(x.stride(1) == 1 && y.stride(1) == 1, "int_gemv: x and y rows must be contiguous");
  const int per    = gemv_detail::slice_k<P>(k);
  const int splits = static_cast<int>((k + per - 1) / per);
  const dim3 grid(static_cast<unsigned>((n + gemv_detail::kThreads * gemv_detail::kColumns - 1) /
                                        (gemv_detail::kThreads * gemv_detail::kColumns)),
                  static_cast<unsigned>(splits));
  const auto launch = [&](auto m_tag) {
    constexpr int M   = decltype(m_tag)::value;
    const auto smem   = static_cast<std::size_t>(M) * static_cast<std::size_t>(per) * sizeof(half_t);
    auto* kernel      = gemv_detail::gemv_kernel<P, M>;
    QPROB_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    kernel<<<grid, gemv_detail::kThreads, smem, stream>>>(x.data(), x.stride(0), qweight.data(), scales.data(),
                                                           zeros.data(), maybe_g_idx, static_cast<int>(k),
                                                           static_cast<int>(n), per, workspace);
  };
  switch (rows) {
#define QPROB_GEMV_CASE(R) \
  case R: launch(std::integral_constant<int, R>{}); break;
    QPROB_GEMV_CASE(1) QPROB_GEMV_CASE(2) QPROB_GEMV_CASE(3) QPROB_GEMV_CASE(4) QPROB_GEMV_CASE(5) QPROB_GEMV_CASE(6)
    QPROB_GEMV_CASE(7) QPROB_GEMV_CASE(8) QPROB_GEMV_CASE(9) QPROB_GEMV_CASE(10) QPROB_GEMV_CASE(11)
    QPROB_GEMV_CASE(12) QPROB_GEMV_CASE(13) QPROB_GEMV_CASE(14) QPROB_GEMV_CASE(15) QPROB_GEMV_CASE(16)
#undef QPROB_GEMV_CASE
    default: break;
  }
  QPROB_CUDA_TRY(qprob::detail::post_launch(stream));
  const auto total = rows * n;
  gemv_detail::gemv_reduce_kernel<<<static_cast<unsigned>((total + 255) / 256), 256, 0, stream>>>(
      workspace, splits, static_cast<int>(rows), static_cast<int>(n), y.data(), y.stride(0));
  QPROB_CUDA_TRY(qprob::detail::post_launch(stream));
}

}  // namespace qprob::quant
