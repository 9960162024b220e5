// SPDX-License-Identifier: Apache-2.0
#pragma once
// Host reference of the GPTQ solver (Frantar et al., ICLR 2023) in double precision and plain loops: the
// specification that quant/gptq.cuh implements on the GPU. It follows AutoGPTQ's fasterquant(), the code the
// first paper used, step for step:
//
//   W (N, K) the layer weight, H (K, K) = 2/n sum x x^T the Hessian of the layer's inputs.
//   1. per-channel policies: scale/zero per row from the original W
//   2. dead inputs (H[j][j] == 0): H[j][j] = 1 and W[:, j] = 0
//   3. static groups: scale/zero per (row, group) from W in natural column order
//   4. act-order: columns permuted by decreasing diag(H) (ties by increasing index: a stable order)
//   5. damping: H += damp * mean(diag H) * I, damp = damp_percent, raised by damp_auto_increment until the
//      Cholesky factorization succeeds (GPTQModel's damp_auto_increment; AutoGPTQ would fail)
//   6. U = upper Cholesky factor of H^-1 (H^-1 = U^T U)
//   7. blocks of block_size columns; within a block, column by column:
//        group params when a (non-static) group starts at this column, from the weights *as they were when
//        the block started* (AutoGPTQ reads the lazily updated W, not the block's running copy)
//        q = quantize(w), err = (w - q) / U[i][i], the rest of the block -= err * U[i][i+1:]
//      then the columns after the block -= Err (N x B) * U[block, after]
//   8. codes back to natural column order; g_idx[k] = group of column k (position in the processed order
//      divided by group size; natural for static groups).
// Quantization of one value is reference::rtn_code with the fp16 scale (rtn.hpp): the solver's error feedback
// sees exactly the values a checkpoint stores.

#include <qprob/core/error.hpp>
#include <qprob/core/tensor_view.hpp>
#include <qprob/policy/precision.hpp>
#include <qprob/quant/pack.hpp>
#include <qprob/reference/rtn.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

namespace qprob {

/// GPTQ options, named as AutoGPTQ / GPTQModel name them. Bits, group size, symmetry and act-order (desc_act)
/// come from the precision policy.
struct gptq_options {
  double damp_percent        = 0.01;  ///< dampening, a fraction of mean(diag H)
  double damp_auto_increment = 0.01;  ///< added to damp_percent after each failed Cholesky factorization
  int max_damp_retries       = 20;
  bool static_groups         = false;  ///< group scales from the unquantized weights, before the solve
  int block_size             = 128;    ///< lazy-batch block of columns
};

/// What the solver did, for logs: the dampening actually used and any warnings.
struct gptq_report {
  double damp_percent = 0;       ///< the dampening that succeeded
  int damp_retries    = 0;       ///< failed factorizations before it
  std::int64_t dead_columns = 0; ///< inputs whose Hessian diagonal was 0
  double loss         = 0;       ///< GPTQ's loss: sum over weights of (w - q)^2 / (2 U[i][i]^2)
  std::vector<std::string> warnings;
};

namespace reference {

/// Lower Cholesky factor of a symmetric (K, K) matrix in place (row-major, lower triangle used); false if it
/// is not positive definite.
inline bool cholesky_lower(std::vector<double>& a, std::int64_t k) {
  for (std::int64_t j = 0; j < k; ++j) {
    double d = a[j * k + j];
    for (std::int64_t p = 0; p < j; ++p) {
      d -= a[j * k + p] * a[j * k + p];
    }
    if (!(d > 0)) {
      return false;
    }
    d             = std::sqrt(d);
    a[j * k + j]  = d;
    for (std::int64_t i = j + 1; i < k; ++i) {
      double s = a[i * k + j];
      for (std::int64_t p = 0; p < j; ++p) {
        s -= a[i * k + p] * a[j * k + p];
      }
      a[i * k + j] = s / d;
    }
    for (std::int64_t i = 0; i < j; ++i) {
      a[i * k + j] = 0;  // clear the upper triangle
    }
  }
  return true;
}

/// U with H^-1 = U^T U, from the lower Cholesky factor L of H (row-major, full matrices).
inline std::vector<double> inverse_upper_cholesky(const std::vector<double>& l, std::int64_t k) {
  // L^-1 by forward substitution, column by column.
  std::vector<double> linv(static_cast<std::size_t>(k * k), 0.0);
  for (std::int64_t c = 0; c < k; ++c) {
    for (std::int64_t i = c; i < k; ++i) {
      double s = i == c ? 1.0 : 0.0;
      for (std::int64_t p = c; p < i; ++p) {
        s -= l[i * k + p] * linv[p * k + c];
      }
      linv[i * k + c] = s / l[i * k + i];
    }
  }
  // H^-1 = L^-T L^-1.
  std::vector<double> hinv(static_cast<std::size_t>(k * k), 0.0);
  for (std::int64_t i = 0; i < k; ++i) {
    for (std::int64_t j = 0; j <= i; ++j) {
      double s = 0;
      for (std::int64_t p = i; p < k; ++p) {
        s += linv[p * k + i] * linv[p * k + j];
      }
      hinv[i * k + j] = s;
      hinv[j * k + i] = s;
    }
  }
  if (!cholesky_lower(hinv, k)) {
    throw invalid_argument("gptq: the inverse Hessian is not positive definite");
  }
  std::vector<double> u(static_cast<std::size_t>(k * k), 0.0);
  for (std::int64_t i = 0; i < k; ++i) {
    for (std::int64_t j = i; j < k; ++j) {
      u[i * k + j] = hinv[j * k + i];
    }
  }
  return u;
}

/// Result of the reference solver: the quantized weight (natural column order, g_idx filled for act-order
/// policies) and the dequantized weights, row-major (N, K).
struct gptq_result {
  quantized_weight weight;
  std::vector<double> dequantized;
  gptq_report report;
};

/// Group of the value at processed position `pos` (see step 8).
template <quantized_policy P>
std::int64_t gptq_group_of_position(std::int64_t pos, const std::vector<std::int64_t>& perm, bool static_groups) {
  if constexpr (P::group_size == per_channel) {
    return 0;
  } else {
    return (static_groups && P::act_order ? perm[static_cast<std::size_t>(pos)] : pos) / P::group_size;
  }
}

/// Runs GPTQ on a (N, K) weight with a (K, K) Hessian.
template <quantized_policy P, class T>
[[nodiscard]] gptq_result gptq_quantize(host_view<const T, 2> weight, host_view<const double, 2> hessian, const gptq_options& options) {
  const std::int64_t n = weight.shape(0);
  const std::int64_t k = weight.shape(1);
  QPROB_CHECK(hessian.shape(0) == k && hessian.shape(1) == k, "gptq: the Hessian is (", hessian.shape(0), ", ",
              hessian.shape(1), ") but the weight has k=", k, " inputs");
  QPROB_CHECK(options.block_size > 0, "gptq: block_size=", options.block_size, " must be positive");
  QPROB_CHECK(options.damp_percent > 0, "gptq: damp_percent=", options.damp_percent, " must be positive");
  const std::int64_t groups = P::groups(k);
  std::vector<double> w(static_cast<std::size_t>(n * k));
  for (std::int64_t r = 0; r < n; ++r) {
    for (std::int64_t c = 0; c < k; ++c) {
      w[r * k + c] = widen(weight(r, c));
    }
  }
  std::vector<double> h(static_cast<std::size_t>(k * k));
  for (std::int64_t i = 0; i < k; ++i) {
    for (std::int64_t j = 0; j < k; ++j) {
      h[i * k + j] = hessian(i, j);
    }
  }
  gptq_result out;
  out.weight = quantized_weight{n, k, std::vector<std::uint32_t>(static_cast<std::size_t>(P::packed_words(k) * n)),
                                std::vector<half_t>(static_cast<std::size_t>(groups * n)),
                                std::vector<std::uint8_t>(static_cast<std::size_t>(groups * n)), {}};
  auto set_params = [&](std::int64_t g, std::int64_t r, const double* row, std::int64_t c0, std::int64_t c1) {
    double lo = row[c0];
    double hi = row[c0];
    for (std::int64_t c = c0; c < c1; ++c) {
      lo = std::min(lo, row[c]);
      hi = std::max(hi, row[c]);
    }
    const auto p = rtn_params<P>(lo, hi);
    out.weight.scales[static_cast<std::size_t>(g * n + r)] = p.scale;
    out.weight.zeros[static_cast<std::size_t>(g * n + r)]  = static_cast<std::uint8_t>(p.zero);
  };

  // 1. per-channel parameters from the original weights.
  if constexpr (P::group_size == per_channel) {
    for (std::int64_t r = 0; r < n; ++r) {
      set_params(0, r, &w[r * k], 0, k);
    }
  }
  // 2. dead inputs.
  for (std::int64_t j = 0; j < k; ++j) {
    if (h[j * k + j] == 0) {
      h[j * k + j] = 1;
      for (std::int64_t r = 0; r < n; ++r) {
        w[r * k + j] = 0;
      }
      ++out.report.dead_columns;
    }
  }
  // 3. static groups.
  const std::int64_t gw = P::group_width(k);
  if (options.static_groups && P::group_size != per_channel) {
    for (std::int64_t g = 0; g < groups; ++g) {
      for (std::int64_t r = 0; r < n; ++r) {
        set_params(g, r, &w[r * k], g * gw, std::min(k, g * gw + gw));
      }
    }
  }
  // 4. act-order.
  std::vector<std::int64_t> perm(static_cast<std::size_t>(k));
  std::iota(perm.begin(), perm.end(), 0);
  if constexpr (P::act_order) {
    std::stable_sort(perm.begin(), perm.end(), [&](std::int64_t a, std::int64_t b) { return h[a * k + a] > h[b * k + b]; });
    std::vector<double> wp(w.size());
    std::vector<double> hp(h.size());
    for (std::int64_t r = 0; r < n; ++r) {
      for (std::int64_t c = 0; c < k; ++c) {
        wp[r * k + c] = w[r * k + perm[c]];
      }
    }
    for (std::int64_t i = 0; i < k; ++i) {
      for (std::int64_t j = 0; j < k; ++j) {
        hp[i * k + j] = h[perm[i] * k + perm[j]];
      }
    }
    w.swap(wp);
    h.swap(hp);
  }
  // 5-6. dampening with automatic increase, then U.
  double mean_diag = 0;
  for (std::int64_t j = 0; j < k; ++j) {
    mean_diag += h[j * k + j];
  }
  mean_diag /= static_cast<double>(k);
  double damp = options.damp_percent;
  std::vector<double> l;
  for (int attempt = 0;; ++attempt) {
    l = h;
    for (std::int64_t j = 0; j < k; ++j) {
      l[j * k + j] += damp * mean_diag;
    }
    if (cholesky_lower(l, k)) {
      break;
    }
    QPROB_CHECK(attempt < options.max_damp_retries, "gptq: the Hessian is not positive definite even with damp_percent=",
                damp, " after ", attempt + 1, " attempts");
    out.report.warnings.push_back(detail::concat("Cholesky factorization failed with damp_percent=", damp, "; retrying with ",
                                                 damp + options.damp_auto_increment));
    damp += options.damp_auto_increment;
    ++out.report.damp_retries;
  }
  out.report.damp_percent = damp;
  const std::vector<double> u = inverse_upper_cholesky(l, k);

  // 7. the blocked column loop.
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(n * k));  // processed order
  std::vector<double> q(static_cast<std::size_t>(n * k));
  const std::int64_t bs = options.block_size;
  std::vector<double> w1;
  std::vector<double> err1;
  for (std::int64_t i1 = 0; i1 < k; i1 += bs) {
    const std::int64_t i2    = std::min(i1 + bs, k);
    const std::int64_t count = i2 - i1;
    // Group parameters for groups that start in this block, from W as it is now (see step 7).
    if (!options.static_groups && P::group_size != per_channel) {
      for (std::int64_t c = i1; c < i2; ++c) {
        if (c % gw == 0) {
          for (std::int64_t r = 0; r < n; ++r) {
            set_params(c / gw, r, &w[r * k], c, std::min(k, c + gw));
          }
        }
      }
    }
    w1.assign(static_cast<std::size_t>(n * count), 0.0);
    err1.assign(static_cast<std::size_t>(n * count), 0.0);
    for (std::int64_t r = 0; r < n; ++r) {
      for (std::int64_t c = 0; c < count; ++c) {
        w1[r * count + c] = w[r * k + i1 + c];
      }
    }
    for (std::int64_t i = 0; i < count; ++i) {
      const std::int64_t pos = i1 + i;
      const std::int64_t g   = gptq_group_of_position<P>(pos, perm, options.static_groups);
      const double d         = u[pos * k + pos];
      for (std::int64_t r = 0; r < n; ++r) {
        const half_t scale = out.weight.scales[static_cast<std::size_t>(g * n + r)];
        const int zero     = out.weight.zeros[static_cast<std::size_t>(g * n + r)];
        const double x     = w1[r * count + i];
        const auto code    = rtn_code<P>(x, scale, zero);
        const double deq   = to_double(scale) * (static_cast<double>(code) - zero);
        codes[r * k + pos] = static_cast<std::uint8_t>(code);
        q[r * k + pos]     = deq;
        const double e     = (x - deq) / d;
        out.report.loss += (x - deq) * (x - deq) / (d * d) / 2;
        err1[r * count + i] = e;
        for (std::int64_t j = i + 1; j < count; ++j) {
          w1[r * count + j] -= e * u[pos * k + i1 + j];
        }
      }
    }
    for (std::int64_t r = 0; r < n; ++r) {
      for (std::int64_t j = i2; j < k; ++j) {
        double s = 0;
        for (std::int64_t c = 0; c < count; ++c) {
          s += err1[r * count + c] * u[(i1 + c) * k + j];
        }
        w[r * k + j] -= s;
      }
    }
  }

  // 8. natural column order.
  std::vector<std::uint32_t> natural(static_cast<std::size_t>(P::packed_words(k) / P::pack_block_words * P::pack_block_values));
  out.dequantized.assign(static_cast<std::size_t>(n * k), 0.0);
  if constexpr (P::act_order) {
    out.weight.g_idx.assign(static_cast<std::size_t>(k), 0);
    for (std::int64_t pos = 0; pos < k; ++pos) {
      out.weight.g_idx[static_cast<std::size_t>(perm[pos])] =
          static_cast<std::int32_t>(gptq_group_of_position<P>(pos, perm, options.static_groups));
    }
  }
  for (std::int64_t r = 0; r < n; ++r) {
    std::fill(natural.begin(), natural.end(), 0u);
    for (std::int64_t pos = 0; pos < k; ++pos) {
      natural[static_cast<std::size_t>(perm[pos])] = codes[r * k + pos];
      out.dequantized[r * k + perm[pos]]          = q[r * k + pos];
    }
    for (std::int64_t b = 0; b < P::packed_words(k) / P::pack_block_words; ++b) {
      std::uint32_t block[P::pack_block_words];
      quant::pack_block<P>(natural.data() + b * P::pack_block_values, block);
      for (int i = 0; i < P::pack_block_words; ++i) {
        out.weight.qweight[static_cast<std::size_t>((b * P::pack_block_words + i) * n + r)] = block[i];
      }
    }
  }
  return out;
}

}  // namespace reference
}  // namespace qprob
