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
#include <type_traits>
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

/// The double product x (m x k, row stride ldx) deq^T (m x n) and its root mean square.
struct product_reference {
  std::vector<double> y;
  double rms = 0;
};

inline product_reference reference_product(const std::vector<half_t>& x, std::int64_t ldx, const std::vector<double>& deq, std::int64_t m,
                                           std::int64_t n, std::int64_t k) {
  product_reference ref{std::vector<double>(static_cast<std::size_t>(m * n)), 0.0};
  for (std::int64_t r = 0; r < m; ++r) {
    for (std::int64_t c = 0; c < n; ++c) {
      double acc = 0;
      for (std::int64_t i = 0; i < k; ++i) {
        acc += to_double(x[static_cast<std::size_t>(r * ldx + i)]) * deq[static_cast<std::size_t>(c * k + i)];
      }
      ref.y[static_cast<std::size_t>(r * n + c)] = acc;
      ref.rms += acc * acc;
    }
  }
  ref.rms = std::sqrt(ref.rms / static_cast<double>(ref.y.size()));
  return ref;
}

/// The count of outputs y (dense, fp16 or float32) outside the tolerance around base + ref (base: what an
/// accumulating product added to; empty: zeros), and the worst error over rms(ref) in `worst`. fp16 y: the
/// bound above. float32 y (no rounding to 16 bits): 2^-12 (|ref| + |base|) + 1e-5 rms(ref), the float32 sums'
/// error with margin, still far below the error of any wrong operand.
template <class Y>
std::size_t count_product_errors(const product_reference& ref, const std::vector<Y>& y, double& worst, const std::vector<float>& base = {}) {
  constexpr bool half_y = std::is_same_v<Y, half_t>;
  std::size_t bad       = ref.rms > 0.0 && y.size() == ref.y.size() ? 0 : ref.y.size() + 1;  // an all-zero reference checks nothing
  worst                 = 0;
  for (std::size_t i = 0; i < ref.y.size() && i < y.size(); ++i) {
    const double b   = base.empty() ? 0.0 : static_cast<double>(base[i]);
    double got = 0;
    if constexpr (half_y) {
      got = to_double(y[i]);
    } else {
      got = static_cast<double>(y[i]);
    }
    const double err = std::abs(got - (b + ref.y[i]));
    worst            = std::max(worst, err / ref.rms);
    const double tol = half_y ? std::ldexp(std::abs(ref.y[i]), -10) + 1e-4 * ref.rms
                              : std::ldexp(std::abs(ref.y[i]) + std::abs(b), -12) + 1e-5 * ref.rms;
    bad += !(err <= tol) ? 1 : 0;
  }
  return bad;
}

/// Compares fp16 y (m x n, dense) with the double product x deq^T: count_product_errors of reference_product.
inline std::size_t product_errors(const std::vector<half_t>& x, std::int64_t ldx, const std::vector<double>& deq,
                                  const std::vector<half_t>& y, std::int64_t m, std::int64_t n, std::int64_t k, double& worst) {
  return count_product_errors(reference_product(x, ldx, deq, m, n, k), y, worst);
}

}  // namespace qprob::test
