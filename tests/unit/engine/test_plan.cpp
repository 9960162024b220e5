// SPDX-License-Identifier: Apache-2.0
// The scoring engine's batch planner (engine/plan.hpp), on the host: for random requests with shared and
// distinct contexts, truncation and every batch size, each query row must see exactly the tokens of its own
// request's model input up to itself (rebuilt from the tiles, independently of how the planner laid them
// out), every continuation token must be scored once from the row lm-eval scores it from, prefix rows must
// be shared, and no padding row may exist. Also the engine options' dtype spelling (host code beside the plan).
#include <qprob/engine/engine.hpp>
#include <qprob/engine/plan.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "support.hpp"

namespace {

using qprob::engine::token_id;
using ids = std::vector<token_id>;

struct owned_request {
  ids context, continuation;
};

/// Questions with 1-5 choices sharing a context, random lengths, sometimes a one-token continuation.
std::vector<owned_request> random_requests(std::mt19937_64& rng, int questions) {
  std::uniform_int_distribution<token_id> tok(0, 999);
  std::uniform_int_distribution<int> ctx_len(1, 40), cont_len(1, 12), choices(1, 5);
  std::vector<owned_request> out;
  for (int q = 0; q < questions; ++q) {
    ids ctx(static_cast<std::size_t>(ctx_len(rng)));
    for (auto& t : ctx) {
      t = tok(rng);
    }
    const int k = choices(rng);
    for (int c = 0; c < k; ++c) {
      ids cont(static_cast<std::size_t>(cont_len(rng)));
      for (auto& t : cont) {
        t = tok(rng);
      }
      out.push_back({ctx, cont});
    }
  }
  std::shuffle(out.begin(), out.end(), rng);  // members of a group need not be adjacent
  return out;
}

std::vector<qprob::engine::token_request> views(const std::vector<owned_request>& rs) {
  std::vector<qprob::engine::token_request> v;
  for (const auto& r : rs) {
    v.push_back({r.context, r.continuation});
  }
  return v;
}

/// For every row of a batch: the tokens it attends to, ordered by position, as the tiles describe them.
std::map<std::int32_t, ids> visible_tokens(const qprob::engine::batch_plan& b) {
  std::map<std::int32_t, ids> out;
  for (const auto& t : b.tiles) {
    for (std::int32_t q = t.q_begin; q < t.q_begin + t.q_count; ++q) {
      REQUIRE_MESSAGE(!out.contains(q), "row ", q, " is the query of two tiles");
      const auto qpos = b.positions[static_cast<std::size_t>(q)];
      std::map<std::int32_t, token_id> by_pos;
      for (std::int32_t k = 0; k < t.a_count; ++k) {
        if (k <= qpos) {
          REQUIRE(by_pos.emplace(k, b.tokens[static_cast<std::size_t>(t.a_begin + k)]).second);
          CHECK(b.positions[static_cast<std::size_t>(t.a_begin + k)] == k);
        }
      }
      for (std::int32_t k = 0; k < t.b_count; ++k) {
        const auto pos = t.b_pos0 + k;
        if (pos <= qpos) {
          REQUIRE_MESSAGE(by_pos.emplace(pos, b.tokens[static_cast<std::size_t>(t.b_begin + k)]).second,
                          "position ", pos, " seen twice by row ", q);
          CHECK(b.positions[static_cast<std::size_t>(t.b_begin + k)] == pos);
        }
      }
      ids seq;
      for (std::int32_t p = 0; p <= qpos; ++p) {
        REQUIRE_MESSAGE(by_pos.contains(p), "row ", q, " cannot see position ", p);
        seq.push_back(by_pos[p]);
      }
      out[q] = seq;
    }
  }
  return out;
}

/// lm-eval's model input, written out independently: (context + continuation)[-(max_length + 1):][:-1].
ids model_input(const owned_request& r, std::int64_t max_length) {
  ids all = r.context;
  all.insert(all.end(), r.continuation.begin(), r.continuation.end());
  const auto keep = std::min<std::int64_t>(static_cast<std::int64_t>(all.size()), max_length + 1);
  return ids(all.end() - keep, all.end() - 1);
}

/// Checks every invariant of a plan against lm-eval's model input of each request.
void check_plan(const std::vector<owned_request>& rs, const std::vector<qprob::engine::batch_plan>& plan,
                const qprob::engine::plan_options& o) {
  std::vector<std::vector<int>> scored(rs.size());
  for (const auto& b : plan) {
    REQUIRE(b.positions.size() == b.tokens.size());
    CHECK((b.rows() <= o.max_batch_rows || b.groups == 1));
    const auto seen = visible_tokens(b);
    CHECK(seen.size() == b.tokens.size());  // every row is a query exactly once: no padding, no orphan row
    for (const auto& t : b.tiles) {
      CHECK(t.q_count >= 1);
      CHECK(t.q_count <= o.tile_rows);
    }
    CHECK(std::is_sorted(b.selected_rows.begin(), b.selected_rows.end()));
    CHECK(std::set<std::int32_t>(b.selected_rows.begin(), b.selected_rows.end()).size() == b.selected_rows.size());
    for (const auto& s : b.scored) {
      const auto& r   = rs[static_cast<std::size_t>(s.request)];
      const auto in   = model_input(r, o.max_length);
      const auto T    = static_cast<std::int64_t>(in.size());
      const auto n    = static_cast<std::int64_t>(r.continuation.size());
      const auto row  = b.selected_rows[static_cast<std::size_t>(s.selected)];
      // lm-eval scores continuation token j from input row T - n + j: the row must see input[: T - n + j + 1].
      const auto upto = T - n + s.token + 1;
      const ids expected(in.begin(), in.begin() + upto);
      CHECK(seen.at(row) == expected);
      CHECK(s.target == r.continuation[static_cast<std::size_t>(s.token)]);
      scored[static_cast<std::size_t>(s.request)].push_back(s.token);
    }
  }
  for (std::size_t i = 0; i < rs.size(); ++i) {
    std::vector<int> want(rs[i].continuation.size());
    for (std::size_t j = 0; j < want.size(); ++j) {
      want[j] = static_cast<int>(j);
    }
    CHECK_MESSAGE(scored[i] == want, "request ", i, ": every continuation token scored once, in order");
  }
}

}  // namespace

TEST_CASE("plan_requests: every row sees exactly its request's prefix, every token is scored once") {
  auto rng = qprob::test::make_rng(0x9a11);
  INFO("seed ", qprob::test::run_seed());
  const auto rs = random_requests(rng, 37);
  REQUIRE(!rs.empty());
  for (const std::int64_t max_rows : {1, 13, 64, 100000}) {
    for (const std::int64_t max_length : {7, 30, 2048}) {
      for (const bool share : {true, false}) {
        qprob::engine::plan_options o;
        o.max_batch_rows = max_rows;
        o.max_length     = max_length;
        o.share_prefixes = share;
        o.tile_rows      = 5;
        CAPTURE(max_rows);
        CAPTURE(max_length);
        CAPTURE(share);
        std::vector<owned_request> ok;
        for (const auto& r : rs) {
          if (static_cast<std::int64_t>(r.continuation.size()) <= max_length) {
            ok.push_back(r);
          }
        }
        const auto ok_views = views(ok);
        check_plan(ok, qprob::engine::plan_requests(ok_views, o), o);
      }
    }
  }
}

TEST_CASE("plan_requests: shared contexts are computed once; rows match the no-sharing count otherwise") {
  // Two questions, four endings each (HellaSwag's shape), plus a one-token continuation (BoolQ's).
  const ids ctx1{1, 2, 3, 4, 5}, ctx2{9, 8};
  std::vector<owned_request> rs{{ctx1, {10, 11, 12}}, {ctx1, {13}}, {ctx2, {20, 21}}, {ctx1, {14, 15}}, {ctx1, {16, 17, 18, 19}}};
  qprob::engine::plan_options o;
  qprob::engine::plan_summary s;
  const auto v    = views(rs);
  const auto plan = qprob::engine::plan_requests(v, o, &s);
  REQUIRE(plan.size() == 1);
  CHECK(s.groups == 2);
  // ctx1: 5 prefix rows + (2 + 0 + 1 + 3) suffix rows; ctx2: 2 + 1.
  CHECK(s.rows == 5 + 6 + 2 + 1);
  // Without sharing each request's input: (5+3-1) + (5+1-1) + (2+2-1) + (5+2-1) + (5+4-1).
  CHECK(s.request_tokens == 7 + 5 + 3 + 6 + 8);
  o.share_prefixes = false;
  qprob::engine::plan_summary s2;
  (void)qprob::engine::plan_requests(v, o, &s2);
  CHECK(s2.rows == s2.request_tokens);
  check_plan(rs, plan, o);
}

TEST_CASE("plan_requests: truncation keeps the last max_length + 1 tokens as lm-eval does") {
  // context 6 tokens + continuation 3, max_length 5: all = 9 tokens, input = all[-6:][:-1] = all[3:8].
  std::vector<owned_request> rs{{{1, 2, 3, 4, 5, 6}, {7, 8, 9}}};
  qprob::engine::plan_options o;
  o.max_length    = 5;
  const auto v    = views(rs);
  const auto plan = qprob::engine::plan_requests(v, o);
  REQUIRE(plan.size() == 1);
  CHECK(plan[0].tokens == ids{4, 5, 6, 7, 8});
  CHECK(plan[0].positions == std::vector<std::int32_t>{0, 1, 2, 3, 4});
  check_plan(rs, plan, o);
}

TEST_CASE("plan_requests rejects what lm-eval rejects") {
  const ids empty, one{1}, many(10, 3);
  std::vector<qprob::engine::token_request> bad_ctx{{empty, one}}, bad_cont{{one, empty}}, too_long{{one, many}};
  qprob::engine::plan_options o;
  CHECK_THROWS_WITH_AS((void)qprob::engine::plan_requests(bad_ctx, o),
                       doctest::Contains("request 0 has an empty context"), qprob::invalid_argument);
  CHECK_THROWS_WITH_AS((void)qprob::engine::plan_requests(bad_cont, o),
                       doctest::Contains("request 0 has an empty continuation"), qprob::invalid_argument);
  o.max_length = 9;
  CHECK_THROWS_WITH_AS((void)qprob::engine::plan_requests(too_long, o),
                       doctest::Contains("continuation of 10 tokens, longer than max_length=9"), qprob::invalid_argument);
  o.tile_rows = 0;
  CHECK_THROWS_AS((void)qprob::engine::plan_requests(bad_ctx, o), qprob::invalid_argument);
}

TEST_CASE("plan_sequences: whole windows, last rows or all rows, truncated to max_length") {
  const ids a{5, 6, 7, 8, 9, 10, 11}, b{1}, c{2, 3};
  const std::span<const token_id> seqs[3] = {a, b, c};
  qprob::engine::plan_options o;
  o.max_length     = 4;
  o.max_batch_rows = 4;
  o.tile_rows      = 3;
  const auto last  = qprob::engine::plan_sequences(seqs, false, o);
  // a keeps {8, 9, 10, 11} and fills a batch (4 + 1 > 4); b and c fit together in the second.
  REQUIRE(last.size() == 2);
  CHECK(last[0].tokens == ids{8, 9, 10, 11});
  CHECK(last[1].tokens == ids{1, 2, 3});
  CHECK(last[0].selected_rows == std::vector<std::int32_t>{3});
  CHECK(last[1].selected_rows == std::vector<std::int32_t>{0, 2});
  const auto seen = visible_tokens(last[1]);
  CHECK(seen.at(2) == ids{2, 3});
  CHECK(seen.at(0) == ids{1});
  const auto all = qprob::engine::plan_sequences(seqs, true, o);
  std::size_t selected = 0;
  for (const auto& p : all) {
    selected += p.selected_rows.size();
    for (std::size_t k = 0; k < p.scored.size(); ++k) {
      CHECK(p.selected_rows[static_cast<std::size_t>(p.scored[k].selected)] ==
            static_cast<std::int32_t>(p.scored[k].token) + (p.scored[k].request == 2 ? 1 : 0));
    }
  }
  CHECK(selected == 4 + 1 + 2);
  const ids empty;
  const std::span<const token_id> bad[1] = {empty};
  CHECK_THROWS_AS((void)qprob::engine::plan_sequences(bad, true, o), qprob::invalid_argument);
}

TEST_CASE("parse_activation_type reads f16, bf16 and f32 and nothing else") {
  using qprob::engine::activation_type;
  using qprob::engine::parse_activation_type;
  CHECK(parse_activation_type("f16") == activation_type::f16);
  CHECK(parse_activation_type("bf16") == activation_type::bf16);
  CHECK(parse_activation_type("f32") == activation_type::f32);
  for (const char* bad : {"auto", "", "F16", "fp16", "f64", "bf16 "}) {
    CHECK_MESSAGE(!parse_activation_type(bad).has_value(), std::string(bad));
  }
}
