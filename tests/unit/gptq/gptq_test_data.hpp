// SPDX-License-Identifier: Apache-2.0
#pragma once
// Synthetic calibration data for GPTQ tests: activations with correlated inputs and uneven scales (what makes
// GPTQ beat RTN on real layers), weights, Hessians, and the reconstruction error ||W X^T - Q X^T||^2.

#include <qprob/core/numeric.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace qprob::test {

struct layer_problem {
  std::int64_t n = 0, k = 0, tokens = 0;
  std::vector<half_t> w;      // (n, k)
  std::vector<half_t> x;      // (tokens, k)
  std::vector<double> h;      // (k, k) = 2/tokens * X^T X, from the fp16 activations
};

/// X = Z * M with Z Gaussian (tokens, r) and M (r, k) random with per-column scales spread over two decades;
/// r < k makes inputs correlated; `dead` columns are exactly zero.
inline layer_problem make_layer_problem(std::int64_t n, std::int64_t k, std::int64_t tokens, std::mt19937_64& rng,
                                        std::vector<std::int64_t> dead = {}) {
  layer_problem p{n, k, tokens, {}, {}, {}};
  std::normal_distribution<double> g(0.0, 1.0);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  const std::int64_t r = k / 2 + 1;
  std::vector<double> m(static_cast<std::size_t>(r * k));
  std::vector<double> col_scale(static_cast<std::size_t>(k));
  for (std::int64_t c = 0; c < k; ++c) {
    col_scale[c] = std::pow(10.0, u(rng));
  }
  for (std::int64_t i = 0; i < r * k; ++i) {
    m[i] = g(rng) * col_scale[i % k] / std::sqrt(static_cast<double>(r));
  }
  p.x.resize(static_cast<std::size_t>(tokens * k));
  std::vector<double> z(static_cast<std::size_t>(r));
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (auto& v : z) {
      v = g(rng);
    }
    for (std::int64_t c = 0; c < k; ++c) {
      double s = 0;
      for (std::int64_t i = 0; i < r; ++i) {
        s += z[i] * m[i * k + c];
      }
      p.x[t * k + c] = to_half(s);
    }
  }
  for (std::int64_t c : dead) {
    for (std::int64_t t = 0; t < tokens; ++t) {
      p.x[t * k + c] = half_t{0};
    }
  }
  p.w.resize(static_cast<std::size_t>(n * k));
  for (auto& v : p.w) {
    v = to_half(0.02 * g(rng));
  }
  p.h.assign(static_cast<std::size_t>(k * k), 0.0);
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (std::int64_t i = 0; i < k; ++i) {
      const double xi = to_double(p.x[t * k + i]);
      if (xi == 0) {
        continue;
      }
      for (std::int64_t j = 0; j < k; ++j) {
        p.h[i * k + j] += xi * to_double(p.x[t * k + j]);
      }
    }
  }
  for (auto& v : p.h) {
    v *= 2.0 / static_cast<double>(tokens);
  }
  return p;
}

/// sum over tokens and outputs of ((W - Q) x)^2, with Q given row-major (n, k) as doubles.
inline double reconstruction_error(const layer_problem& p, const std::vector<double>& q) {
  double total = 0;
  std::vector<double> d(static_cast<std::size_t>(p.k));
  for (std::int64_t r = 0; r < p.n; ++r) {
    for (std::int64_t c = 0; c < p.k; ++c) {
      d[c] = to_double(p.w[r * p.k + c]) - q[r * p.k + c];
    }
    for (std::int64_t t = 0; t < p.tokens; ++t) {
      double s = 0;
      for (std::int64_t c = 0; c < p.k; ++c) {
        s += d[c] * to_double(p.x[t * p.k + c]);
      }
      total += s * s;
    }
  }
  return total;
}

}  // namespace qprob::test
