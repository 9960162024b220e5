// SPDX-License-Identifier: Apache-2.0
#pragma once
// Shared by the fused-kernel tests (test_gemv_gpu.cu, test_gemm_gpu.cu): the host dequantized weight of RTN codes
// and the comparison of a kernel's fp16 product with the double-precision one.
//
// Tolerance: the kernels accumulate in float32 (relative error ~ sqrt(K) * 2^-24 per output, far below) and
// round the result to fp16 once (2^-11 relative), so |y - y_ref| <= 2^-10 * |y_ref| + 1e-4 * rms(y_ref) covers
// the rounding with margin while any wrong code, scale, zero, group or pairing of x with W (errors of order
// |w| * |x|, i.e. of order rms(y) / sqrt(K) or more) fails it.
#include <qprob/core/numeric.hpp>
#include <qprob/quant/pack.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace qprob::test {

/// W (n x k, row-major) as the reference defines the dequantized weight: scale * (code - zero) rounded to fp16,
/// held in double; g_idx (may be empty) gives each input column's group.
template <class P, class Quantized>
std::vector<double> dequantized_weight(const Quantized& q, std::int64_t n, std::int64_t k, const std::vector<std::int32_t>& g_idx) {
  std::vector<double> deq(static_cast<std::size_t>(n * k));
  for (std::int64_t row = 0; row < n; ++row) {
    for (std::int64_t col = 0; col < k; ++col) {
      const auto grp   = g_idx.empty() ? col / P::group_width(k) : g_idx[static_cast<std::size_t>(col)];
      const auto block = col / P::pack_block_values;
      std::uint32_t blk[P::pack_block_words];
      for (int ww = 0; ww < P::pack_block_words; ++ww) {
        blk[ww] = q.qweight[static_cast<std::size_t>((block * P::pack_block_words + ww) * n + row)];
      }
      const auto code = quant::unpack_code<P>(blk, static_cast<int>(col % P::pack_block_values));
      const double s  = to_double(q.scales[static_cast<std::size_t>(grp * n + row)]);
      const double z  = q.zeros[static_cast<std::size_t>(grp * n + row)];
      deq[static_cast<std::size_t>(row * k + col)] = to_double(to_half(s * (static_cast<double>(code) - z)));
    }
  }
  return deq;
}

/// Compares y (m x n fp16, dense) with the double product x (m x k, row stride ldx) deq^T: the count of outputs
/// outside the tolerance above, and the worst error over rms(y_ref) in `worst`.
inline std::size_t product_errors(const std::vector<half_t>& x, std::int64_t ldx, const std::vector<double>& deq,
                                  const std::vector<half_t>& y, std::int64_t m, std::int64_t n, std::int64_t k, double& worst) {
  std::vector<double> ref(static_cast<std::size_t>(m * n));
  double rms = 0;
  for (std::int64_t r = 0; r < m; ++r) {
    for (std::int64_t c = 0; c < n; ++c) {
      double acc = 0;
      for (std::int64_t i = 0; i < k; ++i) {
        acc += to_double(x[static_cast<std::size_t>(r * ldx + i)]) * deq[static_cast<std::size_t>(c * k + i)];
      }
      ref[static_cast<std::size_t>(r * n + c)] = acc;
      rms += acc * acc;
    }
  }
  rms = std::sqrt(rms / static_cast<double>(ref.size()));
  std::size_t bad = rms > 0.0 ? 0 : ref.size();  // an all-zero reference would make the check meaningless
  worst           = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double err = std::abs(to_double(y[i]) - ref[i]);
    worst            = std::max(worst, err / rms);
    bad += !(err <= std::ldexp(std::abs(ref[i]), -10) + 1e-4 * rms) ? 1 : 0;
  }
  return bad;
}

}  // namespace qprob::test
