// SPDX-License-Identifier: Apache-2.0
#pragma once
// How the GPU engine lays out a set of loglikelihood requests as packed token rows (host only, no CUDA): the
// part of the scoring engine that decides what is computed, tested on the host in CI. docs/engine.md has the
// picture; in short:
//
//   request i (lm-eval's contract, model/requests.hpp lm_eval_model_input):
//     input   = (context + continuation)[-(max_length + 1):][:-1],  T tokens, n = len(continuation)
//     prefix  = input[: T - n + 1]    the (possibly truncated) context; its last row predicts continuation[0]
//     suffix  = input[T - n + 1 :]    continuation[:-1]; row j predicts continuation[j + 1]
//   requests whose prefixes are the same token sequence form a group: the prefix rows are computed once and
//   every member's suffix attends to them (prefix sharing; HellaSwag's four endings share one context).
//   A batch is a list of groups packed back to back, at most max_batch_rows rows (a group larger than that
//   gets a batch of its own): no padding between sequences.
//
// Attention is described by query tiles: up to tile_rows consecutive rows of one segment (a prefix, or one
// member's suffix) with the key rows they may see as two contiguous ranges: the prefix rows (range a) and, for
// a suffix, the suffix rows (range b). A query attends to the keys of those ranges whose position is <= its
// own (and inside the sliding window, applied by the kernel from positions). What a request's rows compute
// depends only on the request's own tokens, never on its neighbours: together with fixed-shape GEMMs this is
// what makes the engine batch-invariant.
#include <qprob/core/error.hpp>

#include <algorithm>
#include <cstdint>
#include <map>
#include <span>
#include <vector>

namespace qprob::engine {

using token_id = std::int32_t;

/// One loglikelihood request as token ids (what lm-eval's encoder produced).
struct token_request {
  std::span<const token_id> context;
  std::span<const token_id> continuation;
};

/// The rows of one query tile and the key ranges its queries may see (row indices into the batch).
struct attention_tile {
  std::int32_t q_begin = 0, q_count = 0;  ///< query rows [q_begin, q_begin + q_count)
  std::int32_t a_begin = 0, a_count = 0;  ///< prefix key rows; positions 0 .. a_count - 1
  std::int32_t b_begin = 0, b_count = 0;  ///< suffix key rows; positions b_pos0 .. b_pos0 + b_count - 1
  std::int32_t b_pos0  = 0;
};

/// One continuation token to score: row `row` of the selected rows predicts `target`.
struct scored_token {
  std::int32_t selected  = 0;  ///< index into batch_plan::selected_rows
  token_id target        = 0;
  std::int32_t request   = 0;  ///< index into the requests handed to plan_requests
  std::int32_t token     = 0;  ///< index of the token within the request's continuation
};

/// One forward pass worth of work.
struct batch_plan {
  std::vector<token_id> tokens;          ///< one per row
  std::vector<std::int32_t> positions;   ///< position id of each row (0 at the first prefix token)
  std::vector<attention_tile> tiles;
  std::vector<std::int32_t> selected_rows;  ///< rows whose logits are needed, ascending, each once
  std::vector<scored_token> scored;         ///< in request order, then token order
  std::int64_t groups = 0;                  ///< distinct prefixes in this batch

  [[nodiscard]] std::int64_t rows() const noexcept { return static_cast<std::int64_t>(tokens.size()); }
};

struct plan_options {
  std::int64_t max_length     = 2048;  ///< lm-eval's max_length (left truncation)
  std::int64_t max_batch_rows = 8192;  ///< rows per forward pass (a larger single group still gets one pass)
  std::int32_t tile_rows      = 16;    ///< query rows per attention tile
  bool share_prefixes         = true;  ///< false: every request gets its own prefix rows (for tests/benchmarks)
};

/// What plan_requests did, for logs and benchmarks.
struct plan_summary {
  std::int64_t requests = 0, groups = 0, batches = 0;
  std::int64_t rows = 0;            ///< rows computed
  std::int64_t request_tokens = 0;  ///< sum of T over requests: the rows without prefix sharing
};

/// Splits `requests` into batches. Requests keep their indices (scored_token::request) whatever the order
/// in which their groups are placed.
/// @throws invalid_argument for an empty context or continuation, a continuation longer than max_length, or
///         non-positive options.
inline std::vector<batch_plan> plan_requests(std::span<const token_request> requests, const plan_options& options,
                                             plan_summary* summary = nullptr) {
  QPROB_CHECK(options.max_length > 0 && options.max_batch_rows > 0 && options.tile_rows > 0,
              "plan_requests: max_length=", options.max_length, ", max_batch_rows=", options.max_batch_rows,
              " and tile_rows=", options.tile_rows, " must be positive");
  struct member {
    std::int32_t request;
    std::vector<token_id> suffix;
    std::span<const token_id> continuation;
  };
  struct group {
    std::vector<token_id> prefix;
    std::vector<member> members;
  };
  std::vector<group> groups;
  std::map<std::vector<token_id>, std::size_t> by_prefix;
  plan_summary s;
  s.requests = static_cast<std::int64_t>(requests.size());
  for (std::size_t i = 0; i < requests.size(); ++i) {
    const auto& r = requests[i];
    QPROB_CHECK(!r.context.empty(), "plan_requests: request ", i, " has an empty context (lm-eval puts the prefix token there)");
    QPROB_CHECK(!r.continuation.empty(), "plan_requests: request ", i, " has an empty continuation");
    const auto n = static_cast<std::int64_t>(r.continuation.size());
    QPROB_CHECK(n <= options.max_length, "plan_requests: request ", i, " has a continuation of ", n,
                " tokens, longer than max_length=", options.max_length);
    std::vector<token_id> all(r.context.begin(), r.context.end());
    all.insert(all.end(), r.continuation.begin(), r.continuation.end());
    const auto total = static_cast<std::int64_t>(all.size());
    const auto begin = std::max<std::int64_t>(0, total - (options.max_length + 1));
    const std::int64_t T = total - 1 - begin;  // model input length
    const std::int64_t p = T - n + 1;          // prefix rows (>= 1 because the context is not empty)
    std::vector<token_id> prefix(all.begin() + begin, all.begin() + begin + p);
    member m{static_cast<std::int32_t>(i), std::vector<token_id>(all.begin() + begin + p, all.begin() + begin + T),
             r.continuation};
    s.request_tokens += T;
    if (options.share_prefixes) {
      const auto [it, inserted] = by_prefix.try_emplace(prefix, groups.size());
      if (inserted) {
        groups.push_back({std::move(prefix), {}});
      }
      groups[it->second].members.push_back(std::move(m));
    } else {
      groups.push_back({std::move(prefix), {}});
      groups.back().members.push_back(std::move(m));
    }
  }

  std::vector<batch_plan> batches;
  const auto group_rows = [](const group& g) {
    std::int64_t rows = static_cast<std::int64_t>(g.prefix.size());
    for (const auto& m : g.members) {
      rows += static_cast<std::int64_t>(m.suffix.size());
    }
    return rows;
  };
  const auto add_tiles = [&](batch_plan& b, std::int32_t q_begin, std::int32_t q_count, std::int32_t a_begin,
                             std::int32_t a_count, bool suffix, std::int32_t b_pos0) {
    for (std::int32_t t = 0; t < q_count; t += options.tile_rows) {
      attention_tile tile;
      tile.q_begin = q_begin + t;
      tile.q_count = std::min(options.tile_rows, q_count - t);
      tile.a_begin = a_begin;
      tile.a_count = suffix ? a_count : t + tile.q_count;  // a prefix query sees the prefix up to itself
      tile.b_begin = suffix ? q_begin : 0;
      tile.b_count = suffix ? t + tile.q_count : 0;
      tile.b_pos0  = suffix ? b_pos0 : 0;
      b.tiles.push_back(tile);
    }
  };
  std::vector<std::pair<std::int32_t, scored_token>> pending;  // (request, token) ordering is restored below
  for (const auto& g : groups) {
    const auto rows = group_rows(g);
    if (batches.empty() || (batches.back().rows() > 0 && batches.back().rows() + rows > options.max_batch_rows)) {
      batches.emplace_back();
    }
    auto& b = batches.back();
    b.groups += 1;
    const auto p_begin = static_cast<std::int32_t>(b.rows());
    const auto p       = static_cast<std::int32_t>(g.prefix.size());
    for (std::int32_t j = 0; j < p; ++j) {
      b.tokens.push_back(g.prefix[static_cast<std::size_t>(j)]);
      b.positions.push_back(j);
    }
    add_tiles(b, p_begin, p, p_begin, p, false, 0);
    const auto last_prefix = static_cast<std::int32_t>(b.selected_rows.size());
    b.selected_rows.push_back(p_begin + p - 1);
    for (const auto& m : g.members) {
      const auto s_begin = static_cast<std::int32_t>(b.rows());
      const auto n       = static_cast<std::int32_t>(m.suffix.size());
      for (std::int32_t j = 0; j < n; ++j) {
        b.tokens.push_back(m.suffix[static_cast<std::size_t>(j)]);
        b.positions.push_back(p + j);
      }
      add_tiles(b, s_begin, n, p_begin, p, true, p);
      b.scored.push_back({last_prefix, m.continuation[0], m.request, 0});
      for (std::int32_t j = 0; j < n; ++j) {
        b.scored.push_back({static_cast<std::int32_t>(b.selected_rows.size()), m.continuation[static_cast<std::size_t>(j + 1)],
                            m.request, j + 1});
        b.selected_rows.push_back(s_begin + j);
      }
    }
  }
  for (auto& b : batches) {
    // selected_rows is ascending by construction (rows are appended in order); scored goes to request order.
    std::stable_sort(b.scored.begin(), b.scored.end(), [](const scored_token& x, const scored_token& y) {
      return x.request != y.request ? x.request < y.request : x.token < y.token;
    });
    s.rows += b.rows();
    s.groups += b.groups;
  }
  s.batches = static_cast<std::int64_t>(batches.size());
  if (summary != nullptr) {
    *summary = s;
  }
  return batches;
}

/// Plans whole sequences (next-token distributions, full logits): each sequence is a prefix of its own with no
/// suffix. `all_rows` selects every row of every sequence, in order; otherwise only the last row of each.
/// scored_token::request is the sequence index, token the row within the sequence and target 0 (the caller
/// decides what to read from each selected row). Sequences longer than max_length keep their last max_length
/// tokens.
/// @throws invalid_argument for an empty sequence or non-positive options.
inline std::vector<batch_plan> plan_sequences(std::span<const std::span<const token_id>> sequences, bool all_rows,
                                              const plan_options& options) {
  QPROB_CHECK(options.max_length > 0 && options.max_batch_rows > 0 && options.tile_rows > 0,
              "plan_sequences: max_length=", options.max_length, ", max_batch_rows=", options.max_batch_rows,
              " and tile_rows=", options.tile_rows, " must be positive");
  std::vector<batch_plan> batches;
  for (std::size_t i = 0; i < sequences.size(); ++i) {
    const auto& seq = sequences[i];
    QPROB_CHECK(!seq.empty(), "plan_sequences: sequence ", i, " is empty");
    const auto n = static_cast<std::int32_t>(std::min<std::int64_t>(static_cast<std::int64_t>(seq.size()), options.max_length));
    if (batches.empty() || (batches.back().rows() > 0 && batches.back().rows() + n > options.max_batch_rows)) {
      batches.emplace_back();
    }
    auto& b          = batches.back();
    const auto first = static_cast<std::int32_t>(b.rows());
    b.groups += 1;
    for (std::int32_t j = 0; j < n; ++j) {
      b.tokens.push_back(seq[seq.size() - static_cast<std::size_t>(n) + static_cast<std::size_t>(j)]);
      b.positions.push_back(j);
    }
    for (std::int32_t t = 0; t < n; t += options.tile_rows) {
      const auto count = std::min(options.tile_rows, n - t);
      b.tiles.push_back({first + t, count, first, t + count, 0, 0, 0});
    }
    for (std::int32_t j = all_rows ? 0 : n - 1; j < n; ++j) {
      b.scored.push_back({static_cast<std::int32_t>(b.selected_rows.size()), 0, static_cast<std::int32_t>(i), j});
      b.selected_rows.push_back(first + j);
    }
  }
  return batches;
}

}  // namespace qprob::engine
