// SPDX-License-Identifier: Apache-2.0
#pragma once
// RTN in GPTQ's desc_act layout, shared by the checkpoint tests and qprob_write_gptq_checkpoints: with an
// act-order policy the columns are quantized in the order of a seeded random permutation, recorded in g_idx,
// while every code stays at its original column.

#include <qprob/quant/checkpoint.hpp>
#include <qprob/reference/rtn.hpp>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

namespace qprob::test {

struct desc_act_rtn {
  reference::quantized_weight weight;     // natural column order, g_idx filled for act-order policies
  reference::quantized_weight processed;  // the RTN result in processed (permuted) order; act-order only
  std::vector<std::int64_t> perm;         // processed position -> original column; act-order only
};

template <class P>
desc_act_rtn rtn_desc_act_layout(const std::vector<float>& w, std::int64_t n, std::int64_t k, std::mt19937_64& rng) {
  desc_act_rtn out;
  if constexpr (!P::act_order) {
    out.weight = reference::rtn_quantize<P, float>(make_host_view(w.data(), n, k));
  } else {
    out.perm.resize(static_cast<std::size_t>(k));
    std::iota(out.perm.begin(), out.perm.end(), 0);
    std::shuffle(out.perm.begin(), out.perm.end(), rng);
    std::vector<float> permuted(w.size());
    for (std::int64_t r = 0; r < n; ++r) {
      for (std::int64_t i = 0; i < k; ++i) {
        permuted[static_cast<std::size_t>(r * k + i)] = w[static_cast<std::size_t>(r * k + out.perm[static_cast<std::size_t>(i)])];
      }
    }
    out.processed = reference::rtn_quantize<P, float>(make_host_view(permuted.data(), n, k));
    out.weight    = out.processed;
    auto& q       = out.weight;
    std::fill(q.qweight.begin(), q.qweight.end(), 0u);
    q.g_idx.assign(static_cast<std::size_t>(k), 0);
    for (std::int64_t i = 0; i < k; ++i) {
      const auto c = out.perm[static_cast<std::size_t>(i)];
      q.g_idx[static_cast<std::size_t>(c)] = static_cast<std::int32_t>(quant::default_group_of(i, P::group_size));
      for (std::int64_t r = 0; r < n; ++r) {
        quant::put_field(q.qweight.data() + r, n, c, P::bits, reference::code_at<P>(out.processed, r, i));
      }
    }
  }
  return out;
}

}  // namespace qprob::test
