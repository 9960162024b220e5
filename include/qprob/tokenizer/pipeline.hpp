// SPDX-License-Identifier: Apache-2.0
#pragma once
// The Hugging Face `tokenizers` encoding pipeline, step for step (docs/tokenizers.md has the order):
//   1. added tokens with normalized=false are split off the raw text (leftmost-longest, single_word / lstrip /
//      rstrip honoured);
//   2. every other piece is normalized, then added tokens with normalized=true are split off it;
//   3. the pre-tokenizers split the pieces further (empty pieces are dropped after every split);
//   4. the BPE model tokenizes each piece; 5. the post-processor adds special tokens when asked.
// Decoding maps ids to tokens (added tokens first), optionally drops special tokens, and runs the decoders.
// Sequence components are flattened into lists: applying a Sequence is applying its members in order.

#include <qprob/core/error.hpp>
#include <qprob/tokenizer/bpe.hpp>
#include <qprob/tokenizer/unicode.hpp>

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

namespace qprob::tok {

/// What `tokenizers` calls SplitDelimiterBehavior.
enum class split_behavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

/// Metaspace's prepend_scheme.
enum class prepend_scheme { always, first, never };

/// A piece of the input on its way through the pipeline. `added` is the id of an added token that this piece
/// already is; `at_origin` says whether the piece starts at offset 0 of the original text (Metaspace "first").
struct piece {
  std::string text;
  token_id added = -1;
  bool at_origin = false;
};

/// One entry of tokenizer.json's added_tokens.
struct added_token {
  std::string content;
  token_id id = 0;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  std::string pattern;  // what is matched: `content`, or its normalized form when `normalized`
};

// ---------------------------------------------------------------------------------------------------------
// Splitting helpers (tokenizers/src/tokenizer/pattern.rs and normalizer.rs)
// ---------------------------------------------------------------------------------------------------------

/// (start, end, is_match) covering the whole string, in order.
using match_list = std::vector<std::tuple<std::size_t, std::size_t, bool>>;

inline match_list regex_matches(const regex& re, std::string_view text) {
  if (text.empty()) {
    return {{0, 0, false}};
  }
  match_list out;
  std::size_t prev = 0;
  for (const match_span& m : re.find_all(text)) {
    if (prev != m.start) {
      out.emplace_back(prev, m.start, false);
    }
    out.emplace_back(m.start, m.end, true);
    prev = m.end;
  }
  if (prev != text.size()) {
    out.emplace_back(prev, text.size(), false);
  }
  return out;
}

template <class Pred>
match_list char_matches(std::string_view text, Pred pred) {
  if (text.empty()) {
    return {{0, 0, false}};
  }
  match_list out;
  std::size_t last_offset = 0;
  for (std::size_t i = 0; i < text.size();) {
    const std::size_t start = i;
    const char32_t c = next_code_point(text, i);
    if (pred(c)) {
      if (last_offset < start) {
        out.emplace_back(last_offset, start, false);
      }
      out.emplace_back(start, i, true);
      last_offset = i;
    }
  }
  if (text.size() > last_offset) {
    out.emplace_back(last_offset, text.size(), false);
  }
  return out;
}

inline void invert_matches(match_list& matches) {
  for (auto& m : matches) {
    std::get<2>(m) = !std::get<2>(m);
  }
}

/// NormalizedString::split: applies `behavior` to `matches` and appends the non-empty parts of `p` to `out`.
inline void split_piece(const piece& p, const match_list& matches, split_behavior behavior, std::vector<piece>& out) {
  // (start, end, remove)
  std::vector<std::tuple<std::size_t, std::size_t, bool>> parts;
  switch (behavior) {
    case split_behavior::isolated:
      for (const auto& [s, e, m] : matches) {
        parts.emplace_back(s, e, false);
      }
      break;
    case split_behavior::removed:
      parts.assign(matches.begin(), matches.end());
      break;
    case split_behavior::contiguous: {
      bool previous = false;
      for (const auto& [s, e, m] : matches) {
        if (m == previous && !parts.empty()) {
          std::get<1>(parts.back()) = e;
        } else {
          parts.emplace_back(s, e, false);
        }
        previous = m;
      }
      break;
    }
    case split_behavior::merged_with_previous: {
      bool previous = false;
      for (const auto& [s, e, m] : matches) {
        if (m && !previous && !parts.empty()) {
          std::get<1>(parts.back()) = e;
        } else {
          parts.emplace_back(s, e, false);
        }
        previous = m;
      }
      break;
    }
    case split_behavior::merged_with_next: {
      bool previous = false;
      for (auto it = matches.rbegin(); it != matches.rend(); ++it) {
        const auto& [s, e, m] = *it;
        if (m && !previous && !parts.empty()) {
          std::get<0>(parts.back()) = s;
        } else {
          parts.emplace_back(s, e, false);
        }
        previous = m;
      }
      std::reverse(parts.begin(), parts.end());
      break;
    }
  }
  for (const auto& [s, e, remove] : parts) {
    if (!remove && e > s) {
      out.push_back({p.text.substr(s, e - s), -1, p.at_origin && s == 0});
    }
  }
}

/// The bytes-to-unicode table of GPT-2's byte-level BPE: printable bytes map to themselves, the others to
/// U+0100 and up, in byte order.
inline const std::array<char32_t, 256>& byte_to_char() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    std::array<bool, 256> printable{};
    for (int b = 0; b < 256; ++b) {
      printable[static_cast<std::size_t>(b)] = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    }
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      t[static_cast<std::size_t>(b)] = printable[static_cast<std::size_t>(b)] ? static_cast<char32_t>(b) : next++;
    }
    return t;
  }();
  return table;
}

/// The inverse of byte_to_char, as a lookup over U+0000..U+01FF (-1: not a byte-level character).
inline const std::array<int, 512>& char_to_byte() {
  static const std::array<int, 512> table = [] {
    std::array<int, 512> t{};
    t.fill(-1);
    for (int b = 0; b < 256; ++b) {
      t[byte_to_char()[static_cast<std::size_t>(b)]] = b;
    }
    return t;
  }();
  return table;
}

inline std::string byte_level_map(std::string_view s) {
  std::string out;
  out.reserve(s.size() * 2);
  for (const char c : s) {
    append_utf8(out, byte_to_char()[static_cast<unsigned char>(c)]);
  }
  return out;
}

/// The GPT-2 pre-tokenization pattern that ByteLevel uses when use_regex is true.
inline const regex& byte_level_regex() {
  static const regex re(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)",
                        "<built-in>", "ByteLevel regex");
  return re;
}

// ---------------------------------------------------------------------------------------------------------
// Components
// ---------------------------------------------------------------------------------------------------------

struct normalizer_step {
  enum class kind { nfc, nfd, nfkc, nfkd, lowercase, strip, strip_accents, replace, prepend, byte_level };
  kind type = kind::nfc;
  bool left = false;
  bool right = false;
  std::string content;
  std::optional<regex> pattern;

  void apply(std::string& s) const {
    switch (type) {
      case kind::nfc: s = normalize(s, normalization_form::nfc); break;
      case kind::nfd: s = normalize(s, normalization_form::nfd); break;
      case kind::nfkc: s = normalize(s, normalization_form::nfkc); break;
      case kind::nfkd: s = normalize(s, normalization_form::nfkd); break;
      case kind::lowercase: s = to_lowercase(s); break;
      case kind::strip: {
        std::size_t begin = 0;
        std::size_t end = s.size();
        if (left) {
          while (begin < end) {
            std::size_t i = begin;
            if (!is_whitespace(next_code_point(s, i))) {
              break;
            }
            begin = i;
          }
        }
        if (right) {
          while (end > begin) {
            std::size_t start = end - 1;
            while (start > begin && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) {
              --start;
            }
            std::size_t i = start;
            if (!is_whitespace(next_code_point(s, i))) {
              break;
            }
            end = start;
          }
        }
        s = s.substr(begin, end - begin);
        break;
      }
      case kind::strip_accents: {
        std::string out;
        for (std::size_t i = 0; i < s.size();) {
          const std::size_t start = i;
          if (!is_combining_mark(next_code_point(s, i))) {
            out.append(s, start, i - start);
          }
        }
        s = std::move(out);
        break;
      }
      case kind::replace: {
        std::string out;
        for (const auto& [b, e, m] : regex_matches(*pattern, s)) {
          if (m) {
            out += content;
          } else {
            out.append(s, b, e - b);
          }
        }
        s = std::move(out);
        break;
      }
      case kind::prepend:
        if (!s.empty()) {
          s.insert(0, content);
        }
        break;
      case kind::byte_level: s = byte_level_map(s); break;
    }
  }
};

struct pre_tokenizer_step {
  enum class kind { byte_level, metaspace, split, whitespace, whitespace_split, digits, punctuation };
  kind type = kind::byte_level;
  bool add_prefix_space = false;
  bool use_regex = true;
  std::string replacement;  // Metaspace, UTF-8 of one character
  char32_t replacement_char = 0;
  prepend_scheme scheme = prepend_scheme::always;
  bool split = true;
  std::optional<regex> pattern;
  split_behavior behavior = split_behavior::isolated;
  bool invert = false;
  bool individual_digits = false;

  void apply(std::vector<piece>& pieces) const {
    std::vector<piece> out;
    out.reserve(pieces.size() * 2);
    for (piece& p : pieces) {
      if (p.added >= 0) {
        out.push_back(std::move(p));
        continue;
      }
      switch (type) {
        case kind::byte_level: {
          if (add_prefix_space && (p.text.empty() || p.text[0] != ' ')) {
            p.text.insert(0, " ");
          }
          const std::size_t first = out.size();
          if (use_regex) {
            split_piece(p, regex_matches(byte_level_regex(), p.text), split_behavior::isolated, out);
          } else if (!p.text.empty()) {
            out.push_back(std::move(p));
          }
          for (std::size_t k = first; k < out.size(); ++k) {
            out[k].text = byte_level_map(out[k].text);
          }
          break;
        }
        case kind::metaspace: {
          std::string replaced;
          replaced.reserve(p.text.size() + replacement.size());
          for (const char c : p.text) {
            if (c == ' ') {
              replaced += replacement;
            } else {
              replaced += c;
            }
          }
          const bool starts = replaced.starts_with(replacement);
          if (!starts && (scheme == prepend_scheme::always || (scheme == prepend_scheme::first && p.at_origin))) {
            replaced.insert(0, replacement);
          }
          p.text = std::move(replaced);
          if (split) {
            const char32_t rc = replacement_char;
            split_piece(p, char_matches(p.text, [rc](char32_t c) { return c == rc; }),
                        split_behavior::merged_with_next, out);
          } else if (!p.text.empty()) {
            out.push_back(std::move(p));
          }
          break;
        }
        case kind::split: {
          match_list m = regex_matches(*pattern, p.text);
          if (invert) {
            invert_matches(m);
          }
          split_piece(p, m, behavior, out);
          break;
        }
        case kind::whitespace: {
          // \w+|[^\w\s]+, inverted, removed (Rust regex semantics of \w and \s).
          match_list m;
          std::size_t prev = 0;
          for (std::size_t i = 0; i < p.text.size();) {
            std::size_t j = i;
            const char32_t c = next_code_point(p.text, j);
            if (is_whitespace(c)) {
              i = j;
              continue;
            }
            const bool word = is_word_char(c);
            std::size_t end = j;
            while (end < p.text.size()) {
              std::size_t k = end;
              const char32_t d = next_code_point(p.text, k);
              if (is_whitespace(d) || is_word_char(d) != word) {
                break;
              }
              end = k;
            }
            if (prev != i) {
              m.emplace_back(prev, i, true);  // inverted: the gap is what is removed
            }
            m.emplace_back(i, end, false);
            prev = end;
            i = end;
          }
          if (prev != p.text.size()) {
            m.emplace_back(prev, p.text.size(), true);
          }
          split_piece(p, m, split_behavior::removed, out);
          break;
        }
        case kind::whitespace_split:
          split_piece(p, char_matches(p.text, is_whitespace), split_behavior::removed, out);
          break;
        case kind::digits:
          split_piece(p, char_matches(p.text, is_numeric),
                      individual_digits ? split_behavior::isolated : split_behavior::contiguous, out);
          break;
        case kind::punctuation:
          split_piece(p, char_matches(p.text, is_punctuation), behavior, out);
          break;
      }
    }
    pieces = std::move(out);
  }
};

struct decoder_step {
  enum class kind { byte_level, metaspace, replace, byte_fallback, fuse, strip, bpe_suffix };
  kind type = kind::fuse;
  std::string replacement;  // Metaspace
  char32_t replacement_char = 0;
  prepend_scheme scheme = prepend_scheme::always;
  std::optional<regex> pattern;  // Replace
  std::string content;           // Replace content, BPEDecoder suffix
  char32_t strip_char = 0;       // Strip
  std::size_t start = 0;
  std::size_t stop = 0;

  void apply(std::vector<std::string>& tokens) const {
    switch (type) {
      case kind::byte_level: {
        std::string bytes;
        for (const std::string& t : tokens) {
          std::string mapped;
          bool ok = true;
          for (std::size_t i = 0; i < t.size() && ok;) {
            const char32_t c = next_code_point(t, i);
            const int b = c < 512 ? char_to_byte()[c] : -1;
            ok = b >= 0;
            mapped += static_cast<char>(b);
          }
          bytes += ok ? mapped : t;
        }
        tokens.assign(1, utf8_lossy(bytes));
        break;
      }
      case kind::metaspace:
        for (std::size_t i = 0; i < tokens.size(); ++i) {
          std::string out;
          for (std::size_t k = 0; k < tokens[i].size();) {
            const std::size_t begin = k;
            if (next_code_point(tokens[i], k) == replacement_char) {
              if (!(i == 0 && scheme != prepend_scheme::never)) {
                out += ' ';
              }
            } else {
              out.append(tokens[i], begin, k - begin);
            }
          }
          tokens[i] = std::move(out);
        }
        break;
      case kind::replace:
        for (std::string& t : tokens) {
          std::string out;
          for (const auto& [b, e, m] : regex_matches(*pattern, t)) {
            if (m) {
              out += content;
            } else {
              out.append(t, b, e - b);
            }
          }
          t = std::move(out);
        }
        break;
      case kind::byte_fallback: {
        std::vector<std::string> out;
        std::string pending;
        const auto flush = [&] {
          if (pending.empty()) {
            return;
          }
          if (find_invalid_utf8(pending) == std::string_view::npos) {
            out.push_back(pending);
          } else {
            for (std::size_t k = 0; k < pending.size(); ++k) {
              out.emplace_back("\xEF\xBF\xBD");
            }
          }
          pending.clear();
        };
        for (std::string& t : tokens) {
          int value = -1;
          if (t.size() == 6 && t.starts_with("<0x") && t.back() == '>') {
            const auto hex = [](char c) {
              return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                                    : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
            };
            const int hi = hex(t[3]);
            const int lo = hex(t[4]);
            value = hi >= 0 && lo >= 0 ? hi * 16 + lo : -1;
          }
          if (value >= 0) {
            pending += static_cast<char>(value);
          } else {
            flush();
            out.push_back(std::move(t));
          }
        }
        flush();
        tokens = std::move(out);
        break;
      }
      case kind::fuse: {
        std::string joined;
        for (const std::string& t : tokens) {
          joined += t;
        }
        tokens.assign(1, std::move(joined));
        break;
      }
      case kind::strip:
        for (std::string& t : tokens) {
          const std::vector<char32_t> chars = code_points(t);
          std::size_t start_cut = 0;
          for (std::size_t i = 0; i < std::min(start, chars.size()); ++i) {
            if (chars[i] != strip_char) {
              break;
            }
            start_cut = i + 1;
          }
          std::size_t stop_cut = chars.size();
          for (std::size_t i = 0; i < std::min(stop, chars.size()); ++i) {
            const std::size_t index = chars.size() - i - 1;
            if (chars[index] != strip_char) {
              break;
            }
            stop_cut = index;
          }
          std::string out;
          for (std::size_t i = start_cut; i < std::max(start_cut, stop_cut); ++i) {
            append_utf8(out, chars[i]);
          }
          t = std::move(out);
        }
        break;
      case kind::bpe_suffix:
        for (std::size_t i = 0; i < tokens.size(); ++i) {
          const std::string with = i + 1 == tokens.size() ? "" : " ";
          std::string out;
          for (std::size_t pos = 0;;) {
            const std::size_t at = content.empty() ? std::string::npos : tokens[i].find(content, pos);
            if (at == std::string::npos) {
              out.append(tokens[i], pos);
              break;
            }
            out.append(tokens[i], pos, at - pos);
            out += with;
            pos = at + content.size();
          }
          tokens[i] = std::move(out);
        }
        break;
    }
  }
};

/// What the post-processor puts around the sequence when add_special_tokens is true.
struct post_processor {
  std::vector<token_id> prefix;
  std::vector<token_id> suffix;
};

// ---------------------------------------------------------------------------------------------------------
// The pipeline
// ---------------------------------------------------------------------------------------------------------

class bpe_pipeline {
public:
  bpe_pipeline(std::unique_ptr<bpe_model> model,
               std::vector<added_token> added,
               std::vector<normalizer_step> normalizers,
               std::vector<pre_tokenizer_step> pre_tokenizers,
               std::vector<decoder_step> decoders,
               bool has_decoder,
               post_processor post)
      : model_(std::move(model))
      , added_(std::move(added))
      , normalizers_(std::move(normalizers))
      , pre_tokenizers_(std::move(pre_tokenizers))
      , decoders_(std::move(decoders))
      , has_decoder_(has_decoder)
      , post_(std::move(post)) {
    for (added_token& t : added_) {
      t.pattern = t.content;
      if (t.normalized) {
        normalize_text(t.pattern);  // `tokenizers` matches normalized added tokens by their normalized form
      }
    }
    for (std::size_t k = 0; k < added_.size(); ++k) {
      const added_token& t = added_[k];
      if (t.pattern.empty()) {
        continue;
      }
      auto& buckets = t.normalized ? normalized_buckets_ : raw_buckets_;
      buckets[static_cast<unsigned char>(t.pattern[0])].push_back(k);
      if (static_cast<std::size_t>(t.id) >= added_by_id_.size()) {
        added_by_id_.resize(static_cast<std::size_t>(t.id) + 1, -1);
      }
      added_by_id_[static_cast<std::size_t>(t.id)] = static_cast<std::int32_t>(k);
    }
    for (auto* buckets : {&raw_buckets_, &normalized_buckets_}) {
      for (auto& bucket : *buckets) {
        std::stable_sort(bucket.begin(), bucket.end(), [&](std::size_t a, std::size_t b) {
          return added_[a].pattern.size() > added_[b].pattern.size();
        });
      }
    }
  }

  [[nodiscard]] std::vector<token_id> encode(std::string_view text, bool add_special_tokens) const {
    std::vector<piece> pieces;
    split_added(piece{std::string(text), -1, true}, raw_buckets_, pieces);
    std::vector<piece> normalized;
    for (piece& p : pieces) {
      if (p.added >= 0) {
        normalized.push_back(std::move(p));
        continue;
      }
      normalize_text(p.text);
      split_added(p, normalized_buckets_, normalized);
    }
    for (const pre_tokenizer_step& step : pre_tokenizers_) {
      step.apply(normalized);
    }
    std::vector<token_id> ids;
    if (add_special_tokens) {
      ids = post_.prefix;
    }
    for (const piece& p : normalized) {
      if (p.added >= 0) {
        ids.push_back(p.added);
      } else {
        model_->tokenize(p.text, ids);
      }
    }
    if (add_special_tokens) {
      ids.insert(ids.end(), post_.suffix.begin(), post_.suffix.end());
    }
    return ids;
  }

  [[nodiscard]] std::string decode(std::span<const token_id> ids, bool skip_special_tokens) const {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (const token_id id : ids) {
      if (const added_token* t = find_added(id)) {
        if (!(skip_special_tokens && t->special)) {
          tokens.push_back(t->pattern);
        }
      } else if (const std::string* s = model_->id_to_token(id)) {
        tokens.push_back(*s);
      } else {
        throw invalid_argument(detail::concat("decode: token id ", id, " is not in the vocabulary (size ",
                                              vocab_size(), ")"));
      }
    }
    if (!has_decoder_) {
      std::string joined;
      for (std::size_t i = 0; i < tokens.size(); ++i) {
        joined += (i ? " " : "") + tokens[i];
      }
      return joined;
    }
    for (const decoder_step& step : decoders_) {
      step.apply(tokens);
    }
    std::string out;
    for (const std::string& t : tokens) {
      out += t;
    }
    return out;
  }

  [[nodiscard]] std::optional<token_id> token_to_id(std::string_view token) const {
    for (const added_token& t : added_) {
      if (t.content == token) {
        return t.id;
      }
    }
    return model_->token_to_id(token);
  }
  [[nodiscard]] std::optional<std::string> id_to_token(token_id id) const {
    if (const added_token* t = find_added(id)) {
      return t->content;
    }
    if (const std::string* s = model_->id_to_token(id)) {
      return *s;
    }
    return std::nullopt;
  }
  [[nodiscard]] std::size_t vocab_size() const {
    std::size_t n = static_cast<std::size_t>(model_->max_id() + 1);
    for (const added_token& t : added_) {
      n = std::max(n, static_cast<std::size_t>(t.id) + 1);
    }
    return n;
  }
  [[nodiscard]] bool is_special(token_id id) const {
    const added_token* t = find_added(id);
    return t != nullptr && t->special;
  }
  [[nodiscard]] const std::vector<added_token>& added_tokens() const noexcept { return added_; }
  [[nodiscard]] const post_processor& post() const noexcept { return post_; }
  void set_post(post_processor p) { post_ = std::move(p); }

private:
  using buckets_t = std::array<std::vector<std::size_t>, 256>;

  [[nodiscard]] const added_token* find_added(token_id id) const {
    if (id < 0 || static_cast<std::size_t>(id) >= added_by_id_.size() || added_by_id_[static_cast<std::size_t>(id)] < 0) {
      return nullptr;
    }
    return &added_[static_cast<std::size_t>(added_by_id_[static_cast<std::size_t>(id)])];
  }

  void normalize_text(std::string& s) const {
    for (const normalizer_step& step : normalizers_) {
      step.apply(s);
    }
  }

  // Text before `at` ends with a \w character / text from `at` starts with one (Rust regex \w$ and ^\w).
  static bool ends_with_word(std::string_view s, std::size_t at) {
    if (at == 0) {
      return false;
    }
    std::size_t start = at - 1;
    while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) {
      --start;
    }
    return is_word_char(next_code_point(s, start));
  }
  static bool starts_with_word(std::string_view s, std::size_t at) {
    if (at >= s.size()) {
      return false;
    }
    return is_word_char(next_code_point(s, at));
  }

  // AddedVocabulary::find_matches + split_with_indices: leftmost-longest matches of the added tokens in
  // `buckets`, then the single_word / lstrip / rstrip rules; appends the non-empty parts of `p` to `out`.
  void split_added(const piece& p, const buckets_t& buckets, std::vector<piece>& out) const {
    const std::string& s = p.text;
    std::size_t start_offset = 0;
    std::size_t search = 0;
    const auto emit = [&](std::size_t b, std::size_t e, token_id id) {
      if (e > b) {
        out.push_back({s.substr(b, e - b), id, p.at_origin && b == 0});
      }
    };
    while (search < s.size()) {
      std::size_t found = std::string::npos;
      const added_token* tok = nullptr;
      for (std::size_t pos = search; pos < s.size() && tok == nullptr; ++pos) {
        for (const std::size_t k : buckets[static_cast<unsigned char>(s[pos])]) {
          const std::string& pat = added_[k].pattern;
          if (s.compare(pos, pat.size(), pat) == 0) {
            found = pos;
            tok = &added_[k];
            break;
          }
        }
      }
      if (tok == nullptr) {
        break;
      }
      std::size_t start = found;
      std::size_t stop = found + tok->pattern.size();
      search = stop;  // the next match is searched after the token itself, even when rstrip extends it
      if (tok->single_word && (ends_with_word(s, start) || starts_with_word(s, stop))) {
        continue;
      }
      if (tok->lstrip) {
        std::size_t newstart = start;
        while (newstart > 0) {
          std::size_t b = newstart - 1;
          while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) {
            --b;
          }
          std::size_t i = b;
          if (!is_whitespace(next_code_point(s, i))) {
            break;
          }
          newstart = b;
        }
        start = std::max(newstart, start_offset);
      }
      if (tok->rstrip) {
        while (stop < s.size()) {
          std::size_t i = stop;
          if (!is_whitespace(next_code_point(s, i))) {
            break;
          }
          stop = i;
        }
      }
      if (start_offset < start) {
        emit(start_offset, start, -1);
      }
      emit(start, stop, tok->id);
      start_offset = stop;
    }
    if (start_offset < s.size()) {
      emit(start_offset, s.size(), -1);
    }
  }

  std::unique_ptr<bpe_model> model_;
  std::vector<added_token> added_;
  std::vector<std::int32_t> added_by_id_;
  buckets_t raw_buckets_;
  buckets_t normalized_buckets_;
  std::vector<normalizer_step> normalizers_;
  std::vector<pre_tokenizer_step> pre_tokenizers_;
  std::vector<decoder_step> decoders_;
  bool has_decoder_ = false;
  post_processor post_;
};

}  // namespace qprob::tok
