// SPDX-License-Identifier: Apache-2.0
#pragma once
// Unicode building blocks of the tokenizers: UTF-8 decoding with the "maximal subpart" replacement rule
// (what Rust's String::from_utf8_lossy and Python's errors="replace" do), character properties and
// normalization forms from ICU, and a PCRE2 regex whose search loop behaves like the Oniguruma iterator that
// Hugging Face `tokenizers` uses (see docs/tokenizers.md). Host-only; no hand-written Unicode tables.

#ifndef PCRE2_CODE_UNIT_WIDTH
#  define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <qprob/core/error.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace qprob::tok {

// ---------------------------------------------------------------------------------------------------------
// UTF-8
// ---------------------------------------------------------------------------------------------------------

/// Length of the well-formed UTF-8 sequence at `s[i]`, or 0 when the bytes there are not one. `*valid_prefix`
/// receives the length of the maximal well-formed prefix (at least 1), which is what a lossy decoder replaces
/// by one U+FFFD (Unicode 15, §3.9 "U+FFFD Substitution of Maximal Subparts").
inline std::size_t utf8_sequence_length(std::string_view s, std::size_t i, std::size_t* valid_prefix) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char lead = byte(i);
  *valid_prefix = 1;
  if (lead < 0x80) {
    return 1;
  }
  std::size_t need = 0;
  unsigned char lo = 0x80;
  unsigned char hi = 0xBF;  // range of the first continuation byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    need = 1;
  } else if (lead == 0xE0) {
    need = 2, lo = 0xA0;
  } else if ((lead >= 0xE1 && lead <= 0xEC) || lead == 0xEE || lead == 0xEF) {
    need = 2;
  } else if (lead == 0xED) {
    need = 2, hi = 0x9F;  // no surrogates
  } else if (lead == 0xF0) {
    need = 3, lo = 0x90;
  } else if (lead >= 0xF1 && lead <= 0xF3) {
    need = 3;
  } else if (lead == 0xF4) {
    need = 3, hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return 0;
  }
  for (std::size_t k = 1; k <= need; ++k) {
    if (i + k >= s.size()) {
      return 0;
    }
    const unsigned char c = byte(i + k);
    const bool ok = k == 1 ? (c >= lo && c <= hi) : (c >= 0x80 && c <= 0xBF);
    if (!ok) {
      return 0;
    }
    *valid_prefix = k + 1;
  }
  return need + 1;
}

/// Offset of the first byte that does not start a well-formed UTF-8 sequence, or npos when `s` is valid.
inline std::size_t find_invalid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    std::size_t prefix = 0;
    const std::size_t n = utf8_sequence_length(s, i, &prefix);
    if (n == 0) {
      return i;
    }
    i += n;
  }
  return std::string_view::npos;
}

/// Replaces every maximal ill-formed subpart by U+FFFD, exactly like Rust's String::from_utf8_lossy.
inline std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  std::size_t i = 0;
  while (i < s.size()) {
    std::size_t prefix = 0;
    const std::size_t n = utf8_sequence_length(s, i, &prefix);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      i += prefix;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
  return out;
}

/// Decodes the code point at `s[i]` of a valid UTF-8 string and advances `i`.
inline char32_t next_code_point(std::string_view s, std::size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    ++i;
    return b0;
  }
  int n = b0 >= 0xF0 ? 4 : b0 >= 0xE0 ? 3 : 2;
  char32_t cp = b0 & (0xFF >> (n + 1));
  for (int k = 1; k < n; ++k) {
    cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  }
  i += static_cast<std::size_t>(n);
  return cp;
}

/// Length in bytes of the UTF-8 character starting at `s[i]` (of a valid string).
inline std::size_t char_length(std::string_view s, std::size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  return b0 < 0x80 ? 1 : b0 >= 0xF0 ? 4 : b0 >= 0xE0 ? 3 : 2;
}

inline void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

inline std::vector<char32_t> code_points(std::string_view s) {
  std::vector<char32_t> out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    out.push_back(next_code_point(s, i));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Character properties (ICU), named after the Rust predicates that `tokenizers` calls
// ---------------------------------------------------------------------------------------------------------

/// Rust char::is_whitespace: the Unicode White_Space property.
inline bool is_whitespace(char32_t c) { return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_WHITE_SPACE) != 0; }

/// Rust char::is_numeric: general category Nd, Nl or No.
inline bool is_numeric(char32_t c) { return (U_GET_GC_MASK(static_cast<UChar32>(c)) & U_GC_N_MASK) != 0; }

/// Unicode general category P* (what the Punctuation pre-tokenizer tests, besides ASCII punctuation).
inline bool is_punctuation(char32_t c) {
  const bool ascii_punct = c < 0x80 && ((c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) ||
                                        (c >= 0x5B && c <= 0x60) || (c >= 0x7B && c <= 0x7E));
  return ascii_punct || (U_GET_GC_MASK(static_cast<UChar32>(c)) & U_GC_P_MASK) != 0;
}

/// General category M* (StripAccents removes these).
inline bool is_combining_mark(char32_t c) { return (U_GET_GC_MASK(static_cast<UChar32>(c)) & U_GC_M_MASK) != 0; }

/// Rust regex `\w`: Alphabetic, M*, Nd, Pc or Join_Control.
inline bool is_word_char(char32_t c) {
  const auto u = static_cast<UChar32>(c);
  return u_hasBinaryProperty(u, UCHAR_ALPHABETIC) || u_hasBinaryProperty(u, UCHAR_JOIN_CONTROL) ||
         (U_GET_GC_MASK(u) & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) != 0;
}

// ---------------------------------------------------------------------------------------------------------
// Normalization and case mapping (ICU)
// ---------------------------------------------------------------------------------------------------------

enum class normalization_form { nfc, nfd, nfkc, nfkd };

inline std::string normalize(std::string_view s, normalization_form form) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* n = nullptr;
  switch (form) {
    case normalization_form::nfc: n = icu::Normalizer2::getNFCInstance(status); break;
    case normalization_form::nfd: n = icu::Normalizer2::getNFDInstance(status); break;
    case normalization_form::nfkc: n = icu::Normalizer2::getNFKCInstance(status); break;
    case normalization_form::nfkd: n = icu::Normalizer2::getNFKDInstance(status); break;
  }
  if (U_FAILURE(status) || n == nullptr) {
    throw error(std::string("ICU normalizer unavailable: ") + u_errorName(status));
  }
  const icu::UnicodeString in = icu::UnicodeString::fromUTF8(icu::StringPiece(s.data(), static_cast<int32_t>(s.size())));
  // Fast path: most text is already normalized.
  if (n->isNormalized(in, status) && U_SUCCESS(status)) {
    return std::string(s);
  }
  status = U_ZERO_ERROR;
  const icu::UnicodeString out = n->normalize(in, status);
  if (U_FAILURE(status)) {
    throw error(std::string("ICU normalization failed: ") + u_errorName(status));
  }
  std::string result;
  out.toUTF8String(result);
  return result;
}

/// Rust str::to_lowercase (full case mapping, final sigma), through ICU's root locale.
inline std::string to_lowercase(std::string_view s) {
  icu::UnicodeString u = icu::UnicodeString::fromUTF8(icu::StringPiece(s.data(), static_cast<int32_t>(s.size())));
  u.toLower(icu::Locale::getRoot());
  std::string result;
  u.toUTF8String(result);
  return result;
}

// ---------------------------------------------------------------------------------------------------------
// Regex (PCRE2, UTF + UCP)
// ---------------------------------------------------------------------------------------------------------

/// One match: byte offsets [start, end).
struct match_span {
  std::size_t start;
  std::size_t end;
};

/// A compiled pattern with the semantics of the Oniguruma (Ruby syntax) regexes that `tokenizers` compiles
/// for ByteLevel, Split and Replace: `\s` is the White_Space property (PCRE2's UCP `\s` misses U+0085),
/// `\w` is Letter | Mark | Number | Connector_Punctuation, `^`/`$` are line anchors. Immutable and safe to
/// share between threads (match data is allocated per search).
class regex {
public:
  /// Throws qprob::format_error(file, field, ...) when the pattern does not compile.
  regex(std::string_view pattern, const std::string& file, const std::string& field)
      : pattern_(pattern) {
    const std::string translated = translate(pattern);
    int error_code = 0;
    PCRE2_SIZE error_offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                                     PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, &error_code, &error_offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR buffer[256];
      pcre2_get_error_message(error_code, buffer, sizeof(buffer));
      throw format_error(file, field,
                         detail::concat("regex '", pattern_, "' does not compile: ",
                                        reinterpret_cast<const char*>(buffer), " at offset ", error_offset));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // best effort: the interpreter is used if JIT is unavailable
    code_.reset(code, code_deleter{});
  }

  /// A pattern that matches `literal` exactly (Split/Replace with {"String": ...}).
  static regex literal(std::string_view literal, const std::string& file, const std::string& field) {
    std::string quoted = "\\Q";
    for (std::size_t pos = 0;;) {
      const std::size_t end = literal.find("\\E", pos);
      if (end == std::string_view::npos) {
        quoted.append(literal.substr(pos));
        break;
      }
      quoted.append(literal.substr(pos, end - pos));
      quoted += "\\E\\\\E\\Q";
      pos = end + 2;
    }
    quoted += "\\E";
    regex r(quoted, file, field);
    r.pattern_ = std::string(literal);
    return r;
  }

  [[nodiscard]] const std::string& pattern() const noexcept { return pattern_; }

  /// All matches in `text` (valid UTF-8), in the order Oniguruma's iterator yields them: the search resumes at
  /// the end of the previous match, and an empty match right at the end of the previous match is skipped
  /// by advancing one character.
  [[nodiscard]] std::vector<match_span> find_all(std::string_view text) const {
    std::vector<match_span> out;
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> data(
        pcre2_match_data_create_from_pattern(code_.get(), nullptr), &pcre2_match_data_free);
    std::size_t last_end = 0;
    bool have_last = false;
    std::size_t last_match_end = 0;
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    while (last_end <= text.size()) {
      const int rc = pcre2_match(code_.get(), subject, text.size(), last_end, PCRE2_NO_UTF_CHECK, data.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) {
        break;
      }
      if (rc < 0) {
        PCRE2_UCHAR buffer[256];
        pcre2_get_error_message(rc, buffer, sizeof(buffer));
        throw error(detail::concat("regex '", pattern_, "' failed: ", reinterpret_cast<const char*>(buffer)));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data.get());
      const std::size_t s = ov[0];
      const std::size_t e = ov[1];
      if (s == e && have_last && last_match_end == e) {
        last_end += last_end < text.size() ? char_length(text, last_end) : 1;
        continue;
      }
      last_end = e;
      last_match_end = e;
      have_last = true;
      out.push_back({s, e});
    }
    return out;
  }

private:
  struct code_deleter {
    void operator()(pcre2_code* c) const noexcept { pcre2_code_free(c); }
  };

  // Rewrites the Oniguruma shorthands whose Unicode meaning differs from PCRE2's.
  static std::string translate(std::string_view p) {
    std::string out;
    out.reserve(p.size() + 16);
    bool in_class = false;
    for (std::size_t i = 0; i < p.size(); ++i) {
      const char c = p[i];
      if (c == '\\' && i + 1 < p.size()) {
        const char n = p[i + 1];
        ++i;
        if (n == 's') {
          out += "\\p{White_Space}";
        } else if (n == 'S') {
          out += "\\P{White_Space}";
        } else if (n == 'w') {
          out += in_class ? "\\p{L}\\p{M}\\p{N}\\p{Pc}" : "[\\p{L}\\p{M}\\p{N}\\p{Pc}]";
        } else if (n == 'W' && !in_class) {
          out += "[^\\p{L}\\p{M}\\p{N}\\p{Pc}]";
        } else if (n == 'Q') {  // quoted run: copy verbatim up to \E
          const std::size_t end = p.find("\\E", i + 1);
          const std::size_t stop = end == std::string_view::npos ? p.size() : end + 2;
          out += "\\Q";
          out.append(p.substr(i + 1, stop - (i + 1)));
          i = stop - 1;
        } else {
          out += '\\';
          out += n;
        }
        continue;
      }
      if (!in_class && c == '[') {
        in_class = true;
        out += c;
        if (i + 1 < p.size() && p[i + 1] == '^') {
          out += p[++i];
        }
        if (i + 1 < p.size() && p[i + 1] == ']') {  // a leading ']' is literal
          out += p[++i];
        }
        continue;
      }
      if (in_class && c == ']') {
        in_class = false;
      }
      out += c;
    }
    return out;
  }

  std::string pattern_;
  std::shared_ptr<pcre2_code> code_;  // shared: copies of a regex reuse one compiled (read-only) pattern
};

}  // namespace qprob::tok
