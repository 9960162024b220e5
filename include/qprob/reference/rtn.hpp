// SPDX-License-Identifier: Apache-2.0
#pragma once
// Host reference of round-to-nearest (RTN) weight quantization, in double precision and plain loops: the
// specification the GPU kernels in quant/rtn.cuh must reproduce bit for bit.
//
// Per output channel n and group g (input columns sharing a scale), following GPTQ's Quantizer.find_params,
// which AutoGPTQ and GPTQModel inherit:
//   xmin = min(0, min w), xmax = max(0, max w)               the range always contains 0
//   symmetric: xmax = max(-xmin, xmax); xmin = -xmax if xmin < 0
//   xmin = -1, xmax = 1 if both are 0                        an all-zero group
//   scale = half((xmax - xmin) / maxq)                       stored in fp16, as in GPTQ checkpoints;
//           raised to the smallest fp16 subnormal if it rounds to 0 (GPTQ would divide by zero there)
//   zero  = 2^(bits-1) if symmetric, else clamp(rint(-xmin / scale), 0, maxq)
//   code  = clamp(rint(w / scale) + zero, 0, maxq)           rint rounds half to even (torch.round)
//   dequantized w = compute_type(scale * (code - zero))
// The scale and zero use the fp16-rounded scale, so dequantization reproduces exactly what the packed
// checkpoint means. Note GPTQ's symmetric quirk, kept for compatibility: a group with no negative weight keeps
// xmin = 0, so its scale spans [0, xmax] while codes above the zero point reach only (maxq - zero) * scale.

#include <qprob/core/error.hpp>
#include <qprob/core/numeric.hpp>
#include <qprob/core/tensor_view.hpp>
#include <qprob/policy/precision.hpp>
#include <qprob/quant/pack.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace qprob::reference {

/// Smallest positive fp16 value (a subnormal, 2^-24): the floor of a stored scale.
inline constexpr half_t min_scale{0x0001};

struct rtn_group_params {
  half_t scale;
  int zero;
};

/// GPTQ's scale and zero for one group of weights (given as exact doubles).
template <quantized_policy P>
[[nodiscard]] rtn_group_params rtn_params(double wmin, double wmax) {
  double xmin = std::min(0.0, wmin);
  double xmax = std::max(0.0, wmax);
  if constexpr (P::symmetric) {
    xmax = std::max(-xmin, xmax);
    if (xmin < 0) {
      xmin = -xmax;
    }
  }
  if (xmin == 0 && xmax == 0) {
    xmin = -1;
    xmax = 1;
  }
  half_t scale = to_half((xmax - xmin) / P::max_code);
  if (to_double(scale) == 0) {
    scale = min_scale;
  }
  int zero = P::symmetric_zero;
  if constexpr (!P::symmetric) {
    zero = static_cast<int>(std::clamp(std::nearbyint(-xmin / to_double(scale)), 0.0, double(P::max_code)));
  }
  return {scale, zero};
}

/// The code of one weight.
template <quantized_policy P>
[[nodiscard]] std::uint32_t rtn_code(double w, half_t scale, int zero) {
  const double q = std::nearbyint(w / to_double(scale)) + zero;  // default rounding mode: ties to even
  return static_cast<std::uint32_t>(std::clamp(q, 0.0, double(P::max_code)));
}

template <class T>
[[nodiscard]] double widen(T v) {
  if constexpr (std::is_floating_point_v<T>) {
    return static_cast<double>(v);
  } else {
    return to_double(v);
  }
}

template <class T>
[[nodiscard]] T narrow(double v) {
  if constexpr (std::is_same_v<T, half_t>) {
    return to_half(v);
  } else if constexpr (std::is_same_v<T, bfloat16_t>) {
    return to_bfloat16(v);
  } else {
    return static_cast<T>(v);
  }
}

/// A quantized weight in host memory, in the layout of quant/pack.hpp.
struct quantized_weight {
  std::int64_t n = 0;  // output channels
  std::int64_t k = 0;  // input columns
  std::vector<std::uint32_t> qweight;
  std::vector<half_t> scales;
  std::vector<std::uint8_t> zeros;
  std::vector<std::int32_t> g_idx;  // empty: default groups
};

/// RTN-quantizes a (N, K) weight matrix.
template <quantized_policy P, class T>
[[nodiscard]] quantized_weight rtn_quantize(host_view<const T, 2> w) {
  const std::int64_t n = w.shape(0);
  const std::int64_t k = w.shape(1);
  const std::int64_t groups = P::groups(k);
  const std::int64_t gw     = P::group_width(k);
  const std::int64_t words  = P::packed_words(k);
  quantized_weight out{n, k, std::vector<std::uint32_t>(static_cast<std::size_t>(words * n)),
                       std::vector<half_t>(static_cast<std::size_t>(groups * n)),
                       std::vector<std::uint8_t>(static_cast<std::size_t>(groups * n)), {}};
  std::vector<std::uint32_t> codes(static_cast<std::size_t>(words / P::pack_block_words * P::pack_block_values));
  for (std::int64_t row = 0; row < n; ++row) {
    std::fill(codes.begin(), codes.end(), 0u);
    for (std::int64_t g = 0; g < groups; ++g) {
      const std::int64_t k0 = g * gw;
      const std::int64_t k1 = std::min(k, k0 + gw);
      double lo = widen(w(row, k0));
      double hi = lo;
      for (std::int64_t c = k0; c < k1; ++c) {
        lo = std::min(lo, widen(w(row, c)));
        hi = std::max(hi, widen(w(row, c)));
      }
      const auto params = rtn_params<P>(lo, hi);
      out.scales[static_cast<std::size_t>(g * n + row)] = params.scale;
      out.zeros[static_cast<std::size_t>(g * n + row)]  = static_cast<std::uint8_t>(params.zero);
      for (std::int64_t c = k0; c < k1; ++c) {
        codes[static_cast<std::size_t>(c)] = rtn_code<P>(widen(w(row, c)), params.scale, params.zero);
      }
    }
    for (std::int64_t b = 0; b < words / P::pack_block_words; ++b) {
      std::uint32_t block[P::pack_block_words];
      quant::pack_block<P>(codes.data() + b * P::pack_block_values, block);
      for (int i = 0; i < P::pack_block_words; ++i) {
        out.qweight[static_cast<std::size_t>((b * P::pack_block_words + i) * n + row)] = block[i];
      }
    }
  }
  return out;
}

/// Code of weight (row, c) in a quantized weight.
template <quantized_policy P>
[[nodiscard]] std::uint32_t code_at(const quantized_weight& q, std::int64_t row, std::int64_t c) {
  const std::int64_t b = c / P::pack_block_values;
  std::uint32_t block[P::pack_block_words];
  for (int i = 0; i < P::pack_block_words; ++i) {
    block[i] = q.qweight[static_cast<std::size_t>((b * P::pack_block_words + i) * q.n + row)];
  }
  return quant::unpack_code<P>(block, static_cast<int>(c % P::pack_block_values));
}

/// Dequantizes into a (N, K) matrix of T.
template <quantized_policy P, class T>
[[nodiscard]] std::vector<T> dequantize(const quantized_weight& q) {
  std::vector<T> out(static_cast<std::size_t>(q.n * q.k));
  const std::int64_t groups = P::groups(q.k);
  for (std::int64_t row = 0; row < q.n; ++row) {
    for (std::int64_t c = 0; c < q.k; ++c) {
      const std::int64_t g = q.g_idx.empty() ? quant::default_group<P>(c) : q.g_idx[static_cast<std::size_t>(c)];
      QPROB_CHECK(g >= 0 && g < groups, "g_idx[", c, "]=", g, " is outside [0, ", groups, ")");
      const double scale = to_double(q.scales[static_cast<std::size_t>(g * q.n + row)]);
      const int zero     = q.zeros[static_cast<std::size_t>(g * q.n + row)];
      const double value = scale * (static_cast<double>(code_at<P>(q, row, c)) - zero);
      out[static_cast<std::size_t>(row * q.k + c)] = narrow<T>(value);
    }
  }
  return out;
}

}  // namespace qprob::reference
