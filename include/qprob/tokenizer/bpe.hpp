// SPDX-License-Identifier: Apache-2.0
#pragma once
// The BPE model of Hugging Face `tokenizers` (models/bpe): a word is split into characters (with
// continuing_subword_prefix / end_of_word_suffix, byte_fallback to <0xXX> pieces, or the unk token, fused
// when fuse_unk), then merged by rank with a min-heap keyed on (rank, position) over a doubly linked list of
// symbols, so a word of n characters costs O(n log n), not O(n^2). Results are cached per word.

#include <qprob/core/error.hpp>
#include <qprob/tokenizer/unicode.hpp>

#include <array>
#include <cstdint>
#include <mutex>
#include <optional>
#include <queue>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace qprob::tok {

using token_id = std::int32_t;

/// Transparent hash so maps keyed by std::string can be probed with a std::string_view.
struct string_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using vocab_map = std::unordered_map<std::string, token_id, string_hash, std::equal_to<>>;

struct bpe_options {
  std::optional<std::string> unk_token;
  std::string continuing_subword_prefix;
  std::string end_of_word_suffix;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
};

class bpe_model {
public:
  /// `merges` in rank order. `file` names the source in errors; `merge_field(i)` names merge i (for example
  /// "model.merges[3]" or "line 4").
  template <class MergeField>
  bpe_model(vocab_map vocab,
            const std::vector<std::pair<std::string, std::string>>& merges,
            bpe_options options,
            const std::string& file,
            MergeField merge_field)
      : vocab_(std::move(vocab))
      , options_(std::move(options)) {
    token_id max_id = -1;
    for (const auto& [token, id] : vocab_) {
      if (id < 0) {
        throw format_error(file, "vocab", detail::concat("token '", token, "' has a negative id ", id));
      }
      max_id = std::max(max_id, id);
    }
    vocab_r_.assign(static_cast<std::size_t>(max_id + 1), std::string());
    has_id_.assign(static_cast<std::size_t>(max_id + 1), false);
    for (const auto& [token, id] : vocab_) {
      vocab_r_[static_cast<std::size_t>(id)] = token;
      has_id_[static_cast<std::size_t>(id)] = true;
    }
    const std::size_t prefix_len = options_.continuing_subword_prefix.size();
    merges_.reserve(merges.size() * 2);
    for (std::size_t rank = 0; rank < merges.size(); ++rank) {
      const auto& [a, b] = merges[rank];
      const auto ia = vocab_.find(a);
      if (ia == vocab_.end()) {
        throw format_error(file, merge_field(rank), detail::concat("merge token '", a, "' is not in the vocabulary"));
      }
      const auto ib = vocab_.find(b);
      if (ib == vocab_.end()) {
        throw format_error(file, merge_field(rank), detail::concat("merge token '", b, "' is not in the vocabulary"));
      }
      if (b.size() < prefix_len) {
        throw format_error(file, merge_field(rank),
                           detail::concat("merge token '", b, "' is shorter than continuing_subword_prefix"));
      }
      const std::string merged = a + b.substr(prefix_len);
      const auto im = vocab_.find(merged);
      if (im == vocab_.end()) {
        throw format_error(file, merge_field(rank),
                           detail::concat("merged token '", merged, "' is not in the vocabulary"));
      }
      // A repeated pair keeps its last rank, as in `tokenizers` (it collects the merges into a hash map).
      merges_[pair_key(ia->second, ib->second)] = {static_cast<std::uint32_t>(rank), im->second};
    }
    if (options_.unk_token) {
      const auto it = vocab_.find(*options_.unk_token);
      if (it == vocab_.end()) {
        throw format_error(file, "unk_token", detail::concat("'", *options_.unk_token, "' is not in the vocabulary"));
      }
      unk_id_ = it->second;
    }
    if (options_.byte_fallback) {
      for (int b = 0; b < 256; ++b) {
        const auto it = vocab_.find(byte_token(static_cast<unsigned char>(b)));
        byte_ids_[static_cast<std::size_t>(b)] = it == vocab_.end() ? -1 : it->second;
      }
    }
  }

  /// Tokens of one pre-tokenized word (valid UTF-8), appended to `out`.
  void tokenize(std::string_view word, std::vector<token_id>& out) const {
    if (word.empty()) {
      return;
    }
    if (options_.ignore_merges) {
      if (const auto it = vocab_.find(word); it != vocab_.end()) {
        out.push_back(it->second);
        return;
      }
    }
    const bool cacheable = word.size() < k_max_cached_length;
    if (cacheable) {
      std::shared_lock lock(cache_mutex_);
      if (const auto it = cache_.find(word); it != cache_.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<token_id> ids = merge_word(word);
    out.insert(out.end(), ids.begin(), ids.end());
    if (cacheable) {
      std::unique_lock lock(cache_mutex_);
      if (cache_.size() < k_cache_capacity) {
        cache_.emplace(std::string(word), std::move(ids));
      }
    }
  }

  [[nodiscard]] std::optional<token_id> token_to_id(std::string_view token) const {
    const auto it = vocab_.find(token);
    return it == vocab_.end() ? std::nullopt : std::optional<token_id>(it->second);
  }
  [[nodiscard]] const std::string* id_to_token(token_id id) const {
    if (id < 0 || static_cast<std::size_t>(id) >= vocab_r_.size() || !has_id_[static_cast<std::size_t>(id)]) {
      return nullptr;
    }
    return &vocab_r_[static_cast<std::size_t>(id)];
  }
  [[nodiscard]] std::size_t size() const noexcept { return vocab_.size(); }
  [[nodiscard]] token_id max_id() const noexcept { return static_cast<token_id>(vocab_r_.size()) - 1; }

  /// "<0x0A>": the byte_fallback piece of one byte (Rust format "<{b:#04X}>").
  static std::string byte_token(unsigned char b) {
    static constexpr char hex[] = "0123456789ABCDEF";
    return std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">";
  }

private:
  static constexpr std::size_t k_max_cached_length = 256;  // as `tokenizers` (MAX_LENGTH)
  static constexpr std::size_t k_cache_capacity = 1u << 18;

  struct merge_info {
    std::uint32_t rank;
    token_id new_id;
  };
  struct symbol {
    token_id id;
    std::int32_t prev;
    std::int32_t next;
    bool alive;
  };
  struct candidate {
    std::uint32_t rank;
    std::int32_t pos;
    token_id new_id;
    // std::priority_queue is a max-heap: "greater" means lower priority (higher rank, then later position).
    bool operator<(const candidate& o) const noexcept { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };

  static std::uint64_t pair_key(token_id a, token_id b) noexcept {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
  }
  [[nodiscard]] const merge_info* find_merge(token_id a, token_id b) const {
    const auto it = merges_.find(pair_key(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  }

  [[nodiscard]] std::vector<token_id> merge_word(std::string_view w) const {
    std::vector<symbol> symbols;
    symbols.reserve(w.size());
    const auto add = [&](token_id id) {
      const auto n = static_cast<std::int32_t>(symbols.size());
      symbols.push_back({id, n - 1, n + 1, true});
    };
    bool has_pending_unk = false;  // an unk waiting to be emitted (fuse_unk extends it)
    std::string piece;
    for (std::size_t i = 0; i < w.size();) {
      const std::size_t len = char_length(w, i);
      const bool is_first = i == 0;
      const bool is_last = i + len >= w.size();
      piece.clear();
      if (!is_first) {
        piece += options_.continuing_subword_prefix;
      }
      piece.append(w.substr(i, len));
      if (is_last) {
        piece += options_.end_of_word_suffix;
      }
      i += len;
      if (const auto it = vocab_.find(piece); it != vocab_.end()) {
        if (has_pending_unk) {
          add(unk_id_);
          has_pending_unk = false;
        }
        add(it->second);
        continue;
      }
      if (options_.byte_fallback) {
        bool all = true;
        for (const char c : piece) {
          all = all && byte_ids_[static_cast<unsigned char>(c)] >= 0;
        }
        if (all) {  // note: a pending unk is not flushed here, exactly as in `tokenizers`
          for (const char c : piece) {
            add(byte_ids_[static_cast<unsigned char>(c)]);
          }
          continue;
        }
      }
      if (options_.unk_token) {
        if (has_pending_unk && !options_.fuse_unk) {
          add(unk_id_);
        }
        has_pending_unk = true;
      }
      // Without unk token and byte fallback the character is dropped, as in `tokenizers`.
    }
    if (has_pending_unk) {
      add(unk_id_);
    }
    if (!symbols.empty()) {
      symbols.back().next = -1;
    }

    std::priority_queue<candidate> queue;
    for (std::size_t k = 0; k + 1 < symbols.size(); ++k) {
      if (const merge_info* m = find_merge(symbols[k].id, symbols[k + 1].id)) {
        queue.push({m->rank, static_cast<std::int32_t>(k), m->new_id});
      }
    }
    while (!queue.empty()) {
      const candidate top = queue.top();
      queue.pop();
      symbol& left = symbols[static_cast<std::size_t>(top.pos)];
      if (!left.alive || left.next < 0) {
        continue;
      }
      symbol& right = symbols[static_cast<std::size_t>(left.next)];
      const merge_info* m = find_merge(left.id, right.id);
      if (m == nullptr || m->new_id != top.new_id) {
        continue;  // stale entry: one side was merged since it was queued
      }
      left.id = top.new_id;
      right.alive = false;
      left.next = right.next;
      if (left.next >= 0) {
        symbols[static_cast<std::size_t>(left.next)].prev = top.pos;
      }
      if (left.prev >= 0) {
        if (const merge_info* p = find_merge(symbols[static_cast<std::size_t>(left.prev)].id, left.id)) {
          queue.push({p->rank, left.prev, p->new_id});
        }
      }
      if (left.next >= 0) {
        if (const merge_info* q = find_merge(left.id, symbols[static_cast<std::size_t>(left.next)].id)) {
          queue.push({q->rank, top.pos, q->new_id});
        }
      }
    }
    std::vector<token_id> ids;
    for (const symbol& s : symbols) {
      if (s.alive) {
        ids.push_back(s.id);
      }
    }
    return ids;
  }

  vocab_map vocab_;
  std::vector<std::string> vocab_r_;
  std::vector<bool> has_id_;
  std::unordered_map<std::uint64_t, merge_info> merges_;
  bpe_options options_;
  std::array<token_id, 256> byte_ids_{};
  token_id unk_id_ = -1;
  mutable std::shared_mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<token_id>, string_hash, std::equal_to<>> cache_;
};

}  // namespace qprob::tok
