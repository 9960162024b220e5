// SPDX-License-Identifier: Apache-2.0
// The attention kernels (engine/attention_mma.cuh on tensor cores, kernels::attention_kernel on CUDA cores)
// against a double-precision host attention over the same tiles, for every head size the tensor-core kernel
// serves (32, 64, 80, 96, 128), fp16 and bf16, multi-head and grouped-query, ALiBi, a sliding window, prefix
// sharing with multi-tile contexts and continuations (plan_requests) and long causal sequences (plan_sequences),
// plus the tensor-core kernel's batch invariance: a request's output rows are bit-identical whatever plan
// (neighbours, order, prefix sharing) it is computed in.
//
// Tolerance, per output element: the host computes softmax(q.k * scale) v in double from the same rounded
// q, k, v. The kernels accumulate in float32 (error ~ 2^-24 * sqrt(D), negligible); the tensor-core kernel
// rounds the probabilities to Act before P.V (relative u per weight: at most u * max|v| on the output) and
// normalises by the unrounded sum (again at most u * max|v|); both round the output to Act (u * |out|). So
// |out - ref| <= 4 u max|v| with u = 2^-11 (fp16) or 2^-8 (bf16). A wrong mask, a dropped or repeated key chunk,
// a wrong head or channel order moves outputs by O(|v|) and fails it; outputs are poisoned (NaN) before each
// launch, so rows the kernel skips fail too.
#include <qprob/core/cuda_check.hpp>
#include <qprob/core/device_buffer.hpp>
#include <qprob/core/stream.hpp>
#include <qprob/core/numeric.hpp>
#include <qprob/engine/attention_mma.cuh>
#include <qprob/engine/plan.hpp>
#include <qprob/reference/forward.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "support.hpp"

namespace {

using qprob::engine::token_id;
namespace k = qprob::engine::kernels;

struct shape {
  int head_dim, q_heads, kv_heads;
  bool alibi;
  int window;
};

/// Deterministic value of (token, position, column) in [-2, 2): the same request gets the same q, k, v rows in
/// every plan, which is what the invariance check needs.
double hashed_value(token_id tok, std::int32_t pos, std::int64_t col) {
  std::uint64_t z = (static_cast<std::uint64_t>(tok) * 1000003ull + static_cast<std::uint64_t>(pos)) * 65537ull +
                    static_cast<std::uint64_t>(col) + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return 4.0 * static_cast<double>(z >> 11) / 9007199254740992.0 - 2.0;
}

template <class Act>
Act to_act(double x) {
  if constexpr (std::is_same_v<Act, qprob::half_t>) {
    return qprob::to_half(x);
  } else {
    return qprob::to_bfloat16(x);
  }
}

template <class Act>
double unit_roundoff() {
  return std::is_same_v<Act, qprob::half_t> ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
}

/// q|k|v rows of a plan (rows x (q_heads + 2 kv_heads) * D), rounded to Act; q scaled so scores spread.
template <class Act>
std::vector<Act> make_qkv(const qprob::engine::batch_plan& b, const shape& s) {
  const std::int64_t W = static_cast<std::int64_t>(s.q_heads + 2 * s.kv_heads) * s.head_dim;
  std::vector<Act> v(static_cast<std::size_t>(b.rows() * W));
  for (std::int64_t r = 0; r < b.rows(); ++r) {
    for (std::int64_t c = 0; c < W; ++c) {
      const double x = hashed_value(b.tokens[static_cast<std::size_t>(r)], b.positions[static_cast<std::size_t>(r)], c);
      v[static_cast<std::size_t>(r * W + c)] = to_act<Act>(c < s.q_heads * s.head_dim ? 1.5 * x : x);
    }
  }
  return v;
}

/// Double-precision attention of every tile's queries: (rows, q_heads * D).
template <class Act>
std::vector<double> host_attention(const qprob::engine::batch_plan& b, const std::vector<Act>& qkv, const shape& s) {
  const int D = s.head_dim;
  const std::int64_t W = static_cast<std::int64_t>(s.q_heads + 2 * s.kv_heads) * D, QD = static_cast<std::int64_t>(s.q_heads) * D;
  const auto slopes = qprob::reference::alibi_slopes(s.q_heads);  // the engine's slopes (BLOOM's formula)
  std::vector<double> out(static_cast<std::size_t>(b.rows() * QD), 0.0);
  const auto at = [&](std::int64_t row, std::int64_t col) { return qprob::to_double(qkv[static_cast<std::size_t>(row * W + col)]); };
  for (const auto& t : b.tiles) {
    for (int qi = 0; qi < t.q_count; ++qi) {
      const std::int64_t row = t.q_begin + qi;
      const int qpos = b.positions[static_cast<std::size_t>(row)];
      for (int h = 0; h < s.q_heads; ++h) {
        const int kvh = h / (s.q_heads / s.kv_heads);
        std::vector<std::pair<double, std::int64_t>> scores;  // (score, key row)
        for (int range = 0; range < 2; ++range) {
          const int kb = range == 0 ? t.a_begin : t.b_begin, kc = range == 0 ? t.a_count : t.b_count;
          const int p0 = range == 0 ? 0 : t.b_pos0;
          for (int j = 0; j < kc; ++j) {
            const int kp = p0 + j;
            if (kp > qpos || (s.window > 0 && qpos - s.window >= kp)) {
              continue;
            }
            double dot = 0;
            for (int d = 0; d < D; ++d) {
              dot += at(row, static_cast<std::int64_t>(h) * D + d) * at(kb + j, static_cast<std::int64_t>(s.q_heads + kvh) * D + d);
            }
            double sc = dot / std::sqrt(static_cast<double>(D));
            if (s.alibi) {
              sc += slopes[static_cast<std::size_t>(h)] * kp;
            }
            scores.emplace_back(sc, kb + j);
          }
        }
        REQUIRE(!scores.empty());
        double mx = -INFINITY, sum = 0;
        for (const auto& [sc, r] : scores) {
          mx = std::max(mx, sc);
        }
        for (const auto& [sc, r] : scores) {
          sum += std::exp(sc - mx);
        }
        for (const auto& [sc, r] : scores) {
          const double pr = std::exp(sc - mx) / sum;
          for (int d = 0; d < D; ++d) {
            out[static_cast<std::size_t>(row * QD + static_cast<std::int64_t>(h) * D + d)] +=
                pr * at(r, static_cast<std::int64_t>(s.q_heads + s.kv_heads + kvh) * D + d);
          }
        }
      }
    }
  }
  return out;
}

/// Runs one kernel over a plan; returns (rows, q_heads * D) outputs.
template <class Act>
std::vector<Act> run_kernel(const qprob::engine::batch_plan& b, const std::vector<Act>& qkv, const shape& s, bool tensor_cores,
                            k::attention_path* path = nullptr) {
  qprob::stream st;
  const std::int64_t W = static_cast<std::int64_t>(s.q_heads + 2 * s.kv_heads) * s.head_dim;
  const std::int64_t QD = static_cast<std::int64_t>(s.q_heads) * s.head_dim;
  qprob::device_buffer<Act> dqkv(std::span<const Act>(qkv), st);
  const Act nan = std::is_same_v<Act, qprob::half_t> ? Act{0x7e00} : Act{0x7fc0};  // quiet NaN of each format
  const std::vector<Act> poison(static_cast<std::size_t>(b.rows() * QD), nan);
  qprob::device_buffer<Act> dout(std::span<const Act>(poison), st);
  qprob::device_buffer<qprob::engine::attention_tile> dtiles(std::span<const qprob::engine::attention_tile>(b.tiles), st);
  qprob::device_buffer<std::int32_t> dpos(std::span<const std::int32_t>(b.positions), st);
  std::vector<float> slopes_f;
  for (double x : qprob::reference::alibi_slopes(s.q_heads)) {
    slopes_f.push_back(static_cast<float>(x));
  }
  qprob::device_buffer<float> dslopes(std::span<const float>(slopes_f), st);
  k::attention_params<Act> p;
  p.qkv       = dqkv.data();
  p.ld        = W;
  p.out       = dout.data();
  p.tiles     = dtiles.data();
  p.positions = dpos.data();
  p.alibi     = s.alibi ? dslopes.data() : nullptr;
  p.head_dim  = s.head_dim;
  p.q_heads   = s.q_heads;
  p.kv_heads  = s.kv_heads;
  p.window    = s.window;
  p.scale     = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.head_dim)));
  const auto got = k::launch_attention<Act, 4>(p, static_cast<int>(b.tiles.size()), tensor_cores, st);
  QPROB_CUDA_TRY(cudaGetLastError());
  if (path != nullptr) {
    *path = got;
  }
  return dout.to_host();
}

/// HellaSwag-like requests with long contexts and multi-tile continuations; a few share contexts.
std::vector<std::vector<token_id>> make_tokens(std::mt19937_64& rng, int n, int max_len) {
  std::uniform_int_distribution<token_id> tok(0, 5000);
  std::uniform_int_distribution<int> len(1, max_len);
  std::vector<std::vector<token_id>> out;
  for (int i = 0; i < n; ++i) {
    std::vector<token_id> v(static_cast<std::size_t>(len(rng)));
    for (auto& t : v) {
      t = tok(rng);
    }
    out.push_back(std::move(v));
  }
  return out;
}

template <class Act>
void check_against_host(const qprob::engine::batch_plan& b, const shape& s, const char* what) {
  const auto qkv = make_qkv<Act>(b, s);
  const auto ref = host_attention(b, qkv, s);
  const double u = unit_roundoff<Act>();
  double max_v = 0;
  const std::int64_t W = static_cast<std::int64_t>(s.q_heads + 2 * s.kv_heads) * s.head_dim;
  for (std::int64_t r = 0; r < b.rows(); ++r) {
    for (std::int64_t c = static_cast<std::int64_t>(s.q_heads + s.kv_heads) * s.head_dim; c < W; ++c) {
      max_v = std::max(max_v, std::abs(qprob::to_double(qkv[static_cast<std::size_t>(r * W + c)])));
    }
  }
  const double bound = 4.0 * u * max_v;
  for (const bool tc : {true, false}) {
    k::attention_path path{};
    const auto got = run_kernel<Act>(b, qkv, s, tc, &path);
    CHECK((path == k::attention_path::tensor_core) == tc);
    double worst = 0, max_ref = 0;
    std::size_t bad = 0;
    for (std::size_t i = 0; i < ref.size(); ++i) {
      const double g = qprob::to_double(got[i]);
      const double e = std::abs(g - ref[i]);
      max_ref = std::max(max_ref, std::abs(ref[i]));
      if (!(e <= bound)) {  // NaN fails too
        ++bad;
      }
      worst = std::isnan(e) ? INFINITY : std::max(worst, e);
    }
    // One std::string: doctest prints a bare const char* as a pointer.
    const std::string label = std::string(what) + (tc ? " tensor cores" : " CUDA cores") +
                              (std::is_same_v<Act, qprob::half_t> ? " fp16" : " bf16") + " D=" + std::to_string(s.head_dim) +
                              " heads " + std::to_string(s.q_heads) + "/" + std::to_string(s.kv_heads) +
                              (s.alibi ? " alibi" : "") + (s.window > 0 ? " window" : "");
    MESSAGE(label, ": max |out - ref| ", worst, " (bound ", bound, ", max |ref| ", max_ref, ")");
    CHECK(bad == 0);
    CHECK(max_ref > 0.1);  // outputs are not all near zero
  }
}

}  // namespace

TEST_CASE_TEMPLATE("attention kernels match a double-precision host attention", Act, qprob::half_t, qprob::bfloat16_t) {
  auto rng = qprob::test::make_rng(0xa77e);
  INFO("seed ", qprob::test::run_seed());
  const shape shapes[] = {{128, 4, 4, false, 0}, {64, 6, 2, false, 0}, {80, 2, 1, false, 0},
                          {96, 3, 3, true, 0},   {32, 4, 2, false, 37}, {128, 4, 1, true, 0}};
  for (const auto& s : shapes) {
    // Requests: contexts up to 150 tokens (several 32-key chunks, several 16-row tiles), continuations up to 40,
    // every third one sharing the previous context.
    const auto ctxs  = make_tokens(rng, 8, 150);
    const auto conts = make_tokens(rng, 12, 40);
    std::vector<qprob::engine::token_request> reqs;
    for (std::size_t i = 0; i < conts.size(); ++i) {
      reqs.push_back({ctxs[i % 3 == 2 ? (i - 1) % ctxs.size() : i % ctxs.size()], conts[i]});
    }
    qprob::engine::plan_options po;
    po.max_length = 2048;
    const auto plans = qprob::engine::plan_requests(reqs, po);
    REQUIRE(plans.size() == 1);
    check_against_host<Act>(plans[0], s, "requests");
    // Whole sequences (GPTQ's calibration windows), one longer than a few hundred keys.
    const auto seqs = make_tokens(rng, 2, 300);
    std::vector<std::span<const token_id>> spans(seqs.begin(), seqs.end());
    spans.emplace_back(seqs[0].data(), 1);  // a one-token sequence: a query that sees itself only
    const auto sp = qprob::engine::plan_sequences(spans, true, po);
    REQUIRE(sp.size() == 1);
    check_against_host<Act>(sp[0], s, "sequences");
  }
}

TEST_CASE_TEMPLATE("tensor-core attention is batch-invariant: a request's rows have the same bits in every plan", Act,
                   qprob::half_t, qprob::bfloat16_t) {
  auto rng = qprob::test::make_rng(0xa77f);
  INFO("seed ", qprob::test::run_seed());
  const shape s{128, 4, 2, false, 0};
  const auto ctxs  = make_tokens(rng, 10, 120);
  const auto conts = make_tokens(rng, 30, 35);
  std::vector<qprob::engine::token_request> all;
  for (std::size_t i = 0; i < conts.size(); ++i) {
    all.push_back({ctxs[i % ctxs.size()], conts[i]});
  }
  // Output rows of the scored positions of each request, keyed by its index in `all`.
  const auto rows_of = [&](const std::vector<std::size_t>& which, bool share) {
    std::vector<qprob::engine::token_request> reqs;
    for (auto i : which) {
      reqs.push_back(all[i]);
    }
    qprob::engine::plan_options po;
    po.share_prefixes = share;
    const auto plans  = qprob::engine::plan_requests(reqs, po);
    std::map<std::size_t, std::vector<std::vector<std::uint16_t>>> out;
    for (const auto& b : plans) {
      const auto qkv = make_qkv<Act>(b, s);
      const auto got = run_kernel<Act>(b, qkv, s, true);
      const std::int64_t QD = static_cast<std::int64_t>(s.q_heads) * s.head_dim;
      for (const auto& sc : b.scored) {
        const auto row = b.selected_rows[static_cast<std::size_t>(sc.selected)];
        std::vector<std::uint16_t> bits(static_cast<std::size_t>(QD));
        std::memcpy(bits.data(), got.data() + row * QD, bits.size() * sizeof(std::uint16_t));
        out[which[static_cast<std::size_t>(sc.request)]].push_back(std::move(bits));
      }
    }
    return out;
  };
  std::vector<std::size_t> order(all.size());
  for (std::size_t i = 0; i < order.size(); ++i) {
    order[i] = i;
  }
  const auto base = rows_of(order, true);
  std::shuffle(order.begin(), order.end(), rng);
  const auto shuffled = rows_of(order, true);
  const auto unshared = rows_of(order, false);
  const std::vector<std::size_t> alone{order[0]}, few{order[3], order[1]};
  const auto single = rows_of(alone, true);
  const auto pair   = rows_of(few, true);
  std::size_t compared = 0;
  for (const auto& [req, rows] : base) {
    CHECK(shuffled.at(req) == rows);
    CHECK(unshared.at(req) == rows);
    compared += rows.size();
  }
  CHECK(single.at(order[0]) == base.at(order[0]));
  CHECK(pair.at(order[3]) == base.at(order[3]));
  CHECK(pair.at(order[1]) == base.at(order[1]));
  CHECK(compared > 100);
}
