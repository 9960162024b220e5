// SPDX-License-Identifier: Apache-2.0
#pragma once
// Act-order (GPTQ desc_act) without a per-group gather in the kernels: the input columns of a weight are put in
// group order once, at load time, so that every group is a contiguous run of group_size columns and the fused
// kernels take their natural-group paths; x's columns are gathered in the same order once per call (one pass
// over x). This needs every group but the last to hold exactly group_size columns, as GPTQ's act-order writes
// them (g_idx[perm[i]] = i / group_size).
#include <qprob/core/cuda_check.hpp>
#include <qprob/core/device_buffer.hpp>
#include <qprob/core/error.hpp>
#include <qprob/core/launch.hpp>
#include <qprob/core/tensor_view.hpp>
#include <qprob/policy/precision.hpp>
#include <qprob/quant/pack.hpp>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <optional>
#include <span>
#include <vector>

namespace qprob::quant {

/// The column order that makes groups contiguous (stable sort of g_idx), or nullopt when g_idx does not have
/// K entries in [0, groups) with exactly group_width per group (but the last).
[[nodiscard]] inline std::optional<std::vector<std::int32_t>> act_order_permutation(const std::vector<std::int32_t>& g_idx, std::int64_t k,
                                                                                      std::int64_t groups, std::int64_t group_width) {
  if (static_cast<std::int64_t>(g_idx.size()) != k || groups < 1) {
    return std::nullopt;
  }
  std::vector<std::int64_t> count(static_cast<std::size_t>(groups), 0);
  for (const auto g : g_idx) {
    if (g < 0 || g >= groups) {
      return std::nullopt;
    }
    ++count[static_cast<std::size_t>(g)];
  }
  for (std::int64_t g = 0; g + 1 < groups; ++g) {
    if (count[static_cast<std::size_t>(g)] != group_width) {
      return std::nullopt;
    }
  }
  std::vector<std::int32_t> order(static_cast<std::size_t>(k));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::int32_t a, std::int32_t b) { return g_idx[static_cast<std::size_t>(a)] < g_idx[static_cast<std::size_t>(b)]; });
  return order;
}

namespace act_order_detail {

/// out (M, K, dense) = x (M, K) with columns gathered by `order`.
__global__ inline void gather_columns_kernel(const half_t* __restrict__ x, std::int64_t ldx, const std::int32_t* __restrict__ order,
                                             std::int64_t m, std::int64_t k, half_t* __restrict__ out) {
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < m * k;
       idx += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t r = idx / k, c = idx % k;
    out[idx]             = x[r * ldx + order[c]];
  }
}

/// Packed codes (pack.hpp layout, one word per pack block) with input columns reordered: column j of the
/// result is column order[j] of qweight; one thread per output word.
template <quantized_policy P>
__global__ void permute_codes_kernel(const std::uint32_t* __restrict__ qweight, const std::int32_t* __restrict__ order, std::int64_t n,
                                     std::int64_t k, std::uint32_t* __restrict__ out) {
  constexpr int per_word   = P::pack_block_values;
  const std::int64_t words = (k + per_word - 1) / per_word * n;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < words;
       idx += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t row = idx / n, col = idx % n;  // word row (block of input columns), output feature
    std::uint32_t word     = 0;
    for (int j = 0; j < per_word; ++j) {
      const std::int64_t dst = row * per_word + j;
      if (dst < k) {
        const std::int64_t src = order[dst];
        word |= unpack_code<P>(qweight + (src / per_word) * n + col, static_cast<int>(src % per_word)) << (P::bits * j);
      }
    }
    out[idx] = word;
  }
}

}  // namespace act_order_detail

/// y (M, K, dense, a new stream-ordered buffer) = x with columns gathered by the device array `order` (K).
[[nodiscard]] inline device_buffer<half_t> gather_columns(device_view<const half_t, 2> x, const std::int32_t* order, cudaStream_t stream) {
  const auto m = x.shape(0), k = x.shape(1);
  QPROB_CHECK(x.stride(1) == 1, "gather_columns: x rows must be contiguous");
  device_buffer<half_t> out(m * k, stream);
  if (m * k > 0) {
    act_order_detail::gather_columns_kernel<<<qprob::detail::grid_stride_blocks(m * k), 256, 0, stream>>>(x.data(), x.stride(0), order, m, k,
                                                                                                   out.data());
    QPROB_CUDA_TRY(qprob::detail::post_launch(stream));
  }
  return out;
}

/// A weight's codes with its input columns in group order, and that order (device), for int_gemv's
/// natural-group path: int_gemv(gather_columns(x, order), codes, scales, zeros, nullptr, ...) computes x W^T.
struct act_ordered_codes {
  device_buffer<std::uint32_t> qweight;  ///< (packed_words(K), N), the pack.hpp layout
  device_buffer<std::int32_t> order;     ///< K: original column of column j
};

/// Reorders the codes of an (N, K) act-order weight (2, 4 or 8 bits: one word per pack block) by group, once.
/// @throws invalid_argument when act_order_permutation refuses g_idx or the policy packs across words (3 bits).
template <quantized_policy P>
[[nodiscard]] act_ordered_codes order_codes_by_group(device_view<const std::uint32_t, 2> qweight, const std::vector<std::int32_t>& g_idx,
                                                     cudaStream_t stream) {
  static_assert(P::pack_block_words == 1, "order_codes_by_group: 2, 4 or 8 bits (3-bit blocks span words)");
  const auto n = qweight.shape(1);
  const auto k = static_cast<std::int64_t>(g_idx.size());
  QPROB_CHECK(qweight.is_contiguous() && qweight.shape(0) == P::packed_words(k), "order_codes_by_group: qweight is (", qweight.shape(0),
              ", ", n, "), expected (", P::packed_words(k), ", N) for K=", k);
  const auto order = act_order_permutation(g_idx, k, P::groups(k), P::group_width(k));
  QPROB_CHECK(order.has_value(), "order_codes_by_group: g_idx must give every group but the last exactly ", P::group_width(k),
              " columns (GPTQ act-order)");
  act_ordered_codes out{device_buffer<std::uint32_t>(qweight.shape(0) * n, stream),
                        device_buffer<std::int32_t>(std::span<const std::int32_t>(*order), stream)};
  act_order_detail::permute_codes_kernel<P><<<qprob::detail::grid_stride_blocks(out.qweight.size()), 256, 0, stream>>>(
      qweight.data(), out.order.data(), n, k, out.qweight.data());
  QPROB_CUDA_TRY(qprob::detail::post_launch(stream));
  return out;
}

}  // namespace qprob::quant
