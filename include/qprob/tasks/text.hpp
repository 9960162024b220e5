// SPDX-License-Identifier: Apache-2.0
#pragma once
// String helpers with the exact semantics of the Python built-ins that lm-evaluation-harness applies to
// benchmark text (str.strip, str.capitalize, str.replace, re.sub) and HellaSwag's preprocess. Prompts must
// match lm-eval byte for byte, so every helper documents where it follows Python and where it stops (only
// ASCII letters change case). Layer: tasks (host only).

#include <cstddef>
#include <string>
#include <string_view>

namespace qprob::tasks {

namespace detail {

/// Length in bytes of a Python whitespace character (str.isspace) starting at `s[i]`, or 0. Covers ASCII
/// \t \n \v \f \r space and \x1c-\x1f, and the UTF-8 encodings of U+0085, U+00A0, U+1680, U+2000-U+200A,
/// U+2028, U+2029, U+202F, U+205F and U+3000: exactly the characters for which Python's str.isspace() holds.
[[nodiscard]] inline std::size_t python_space_at(std::string_view s, std::size_t i) noexcept {
  const auto byte = [&](std::size_t k) {
    return static_cast<unsigned char>(s[k]);
  };
  const unsigned char c = byte(i);
  if (c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f)) {
    return 1;
  }
  if (c == 0xc2 && i + 1 < s.size() && (byte(i + 1) == 0x85 || byte(i + 1) == 0xa0)) {
    return 2;
  }
  if (i + 2 >= s.size()) {
    return 0;
  }
  const unsigned char c1 = byte(i + 1);
  const unsigned char c2 = byte(i + 2);
  if (c == 0xe1 && c1 == 0x9a && c2 == 0x80) { // U+1680
    return 3;
  }
  if (c == 0xe2 && c1 == 0x80 && ((c2 >= 0x80 && c2 <= 0x8a) || c2 == 0xa8 || c2 == 0xa9 || c2 == 0xaf)) {
    return 3; // U+2000-U+200A, U+2028, U+2029, U+202F
  }
  if (c == 0xe2 && c1 == 0x81 && c2 == 0x9f) { // U+205F
    return 3;
  }
  if (c == 0xe3 && c1 == 0x80 && c2 == 0x80) { // U+3000
    return 3;
  }
  return 0;
}

/// Length in bytes of a Python whitespace character that *ends* at `s[end - 1]`, or 0.
[[nodiscard]] inline std::size_t python_space_before(std::string_view s, std::size_t end) noexcept {
  for (std::size_t len = 1; len <= 3 && len <= end; ++len) {
    if (python_space_at(s, end - len) == len) {
      return len;
    }
  }
  return 0;
}

[[nodiscard]] constexpr char ascii_upper(char c) noexcept {
  return (c >= 'a' && c <= 'z') ? char(c - 32) : c;
}
[[nodiscard]] constexpr char ascii_lower(char c) noexcept {
  return (c >= 'A' && c <= 'Z') ? char(c + 32) : c;
}

} // namespace detail

/// Python `s.strip()` (no argument): removes leading and trailing Unicode whitespace.
[[nodiscard]] inline std::string python_strip(std::string_view s) {
  std::size_t begin = 0;
  while (begin < s.size()) {
    const std::size_t n = detail::python_space_at(s, begin);
    if (n == 0) {
      break;
    }
    begin += n;
  }
  std::size_t end = s.size();
  while (end > begin) {
    const std::size_t n = detail::python_space_before(s, end);
    if (n == 0) {
      break;
    }
    end -= n;
  }
  return std::string(s.substr(begin, end - begin));
}

/// Python `s.lstrip()`.
[[nodiscard]] inline std::string python_lstrip(std::string_view s) {
  std::size_t begin = 0;
  while (begin < s.size()) {
    const std::size_t n = detail::python_space_at(s, begin);
    if (n == 0) {
      break;
    }
    begin += n;
  }
  return std::string(s.substr(begin));
}

/// Python `s.replace(from, to)`: one left-to-right pass over non-overlapping occurrences, so "   " with
/// ("  " -> " ") gives "  ", as in Python. `from` must not be empty.
[[nodiscard]] inline std::string
python_replace(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  std::size_t pos = 0;
  while (true) {
    const std::size_t hit = s.find(from, pos);
    if (hit == std::string_view::npos || from.empty()) {
      out.append(s.substr(pos));
      return out;
    }
    out.append(s.substr(pos, hit - pos));
    out.append(to);
    pos = hit + from.size();
  }
}

/// Python `s.capitalize()` restricted to ASCII letters: first character upper-cased, the rest lower-cased.
/// Python also changes the case of non-ASCII letters; those bytes are left unchanged here (a documented
/// difference that no HellaSwag ctx_b fragment of the validation split is known to hit).
[[nodiscard]] inline std::string python_capitalize_ascii(std::string_view s) {
  std::string out(s);
  for (std::size_t i = 0; i < out.size(); ++i) {
    out[i] = i == 0 ? detail::ascii_upper(out[i]) : detail::ascii_lower(out[i]);
  }
  return out;
}

/// Python `re.sub(r"\[.*?\]", "", s)`: removes every bracketed span that contains no newline ("." does not
/// match "\n"), scanning left to right; an unclosed "[" is kept.
[[nodiscard]] inline std::string remove_bracketed(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  std::size_t i = 0;
  while (i < s.size()) {
    if (s[i] == '[') {
      std::size_t j = i + 1;
      while (j < s.size() && s[j] != ']' && s[j] != '\n') {
        ++j;
      }
      if (j < s.size() && s[j] == ']') {
        i = j + 1;
        continue;
      }
    }
    out.push_back(s[i]);
    ++i;
  }
  return out;
}

/// lm-eval's `hellaswag/utils.py::preprocess`: strip, " [title]" -> ". ", drop "[...]", "  " -> " " (one
/// pass, so runs of three or more spaces are only partly collapsed, as in lm-eval).
[[nodiscard]] inline std::string hellaswag_preprocess(std::string_view text) {
  std::string t = python_strip(text);
  t             = python_replace(t, " [title]", ". ");
  t             = remove_bracketed(t);
  t             = python_replace(t, "  ", " ");
  return t;
}

/// Replaces every run of whitespace (Python's definition) by one space and strips both ends. Used for the
/// Price-of-Efficiency toxicity prompt, whose comments appear single-line in the authors' dataset.
[[nodiscard]] inline std::string collapse_whitespace(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  bool pending_space = false;
  std::size_t i      = 0;
  while (i < s.size()) {
    const std::size_t n = detail::python_space_at(s, i);
    if (n > 0) {
      pending_space = !out.empty();
      i += n;
      continue;
    }
    if (pending_space) {
      out.push_back(' ');
      pending_space = false;
    }
    out.push_back(s[i]);
    ++i;
  }
  return out;
}

} // namespace qprob::tasks
