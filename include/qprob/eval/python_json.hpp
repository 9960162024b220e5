// SPDX-License-Identifier: Apache-2.0
#pragma once
// The byte-level pieces of lm-eval's --log_samples output that a C++ JSON library does not reproduce:
// Python's json.dumps text (separators ", " and ": ", or "," + newlines with indent=N; ensure_ascii=False;
// floats as Python's repr), str(float) / str(bool), and lm-eval's hash_string (sha256 hex of the UTF-8 bytes).
// With these, a qprob sample line is byte-identical to the line lm-eval writes for the same values, and the
// doc/prompt/target hashes are the ones lm-eval computes. Layer: eval (host only).

#include <qprob/core/error.hpp>

#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace qprob::eval {

// ---- Python's repr(float) / str(float) ---------------------------------------------------------------------

/// Python's repr(x) for a finite or non-finite double ("nan", "inf", "-inf" for the latter): the shortest
/// digits that round-trip, positional when the decimal exponent is in [-4, 16), else "d.ddde+XX" (at least two
/// exponent digits), and ".0" appended to integral positional values (float_repr_style 'r', Py_DTSF_ADD_DOT_0).
[[nodiscard]] inline std::string python_float_repr(double x) {
  if (std::isnan(x)) {
    return "nan";
  }
  if (std::isinf(x)) {
    return x < 0 ? "-inf" : "inf";
  }
  std::array<char, 64> buf{};
  const auto res = std::to_chars(buf.data(), buf.data() + buf.size(), x, std::chars_format::scientific);
  QPROB_CHECK(res.ec == std::errc(), "python_float_repr: to_chars failed");
  const std::string_view s(buf.data(), static_cast<std::size_t>(res.ptr - buf.data()));
  // s = [-]d[.ddd]e(+|-)XX
  std::string out;
  std::size_t i = 0;
  if (s[0] == '-') {
    out += '-';
    i = 1;
  }
  const auto epos = s.find('e');
  std::string digits;
  for (std::size_t j = i; j < epos; ++j) {
    if (s[j] != '.') {
      digits += s[j];
    }
  }
  int exp10 = 0;
  std::from_chars(s.data() + epos + (s[epos + 1] == '+' ? 2 : 1), s.data() + s.size(), exp10);
  const int decpt   = exp10 + 1;  // value = 0.<digits> * 10^decpt
  const auto ndig   = static_cast<int>(digits.size());
  if (decpt <= -4 || decpt > 16) {
    out += digits[0];
    if (ndig > 1) {
      out += '.';
      out += digits.substr(1);
    }
    char e[16];
    std::snprintf(e, sizeof e, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    out += e;
  } else if (decpt <= 0) {
    out += "0.";
    out.append(static_cast<std::size_t>(-decpt), '0');
    out += digits;
  } else if (decpt >= ndig) {
    out += digits;
    out.append(static_cast<std::size_t>(decpt - ndig), '0');
    out += ".0";
  } else {
    out += digits.substr(0, static_cast<std::size_t>(decpt));
    out += '.';
    out += digits.substr(static_cast<std::size_t>(decpt));
  }
  return out;
}

/// Python's str(bool).
[[nodiscard]] constexpr std::string_view python_bool_str(bool b) noexcept { return b ? "True" : "False"; }

// ---- Python's json.dumps ----------------------------------------------------------------------------------

namespace json_detail {

/// json.dumps string escaping with ensure_ascii=False: only '"', '\\' and U+0000..U+001F are escaped
/// (\n \r \t \b \f by name, the rest as \u00xx); other characters, non-ASCII included, pass through as UTF-8.
inline void escape_string(std::string& out, std::string_view s) {
  out += '"';
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char u[8];
          std::snprintf(u, sizeof u, "\\u%04x", c);
          out += u;
        } else {
          out += ch;
        }
    }
  }
  out += '"';
}

inline void newline_indent(std::string& out, int indent, int level) {
  out += '\n';
  out.append(static_cast<std::size_t>(indent * level), ' ');
}

inline void dump(std::string& out, const nlohmann::ordered_json& j, int indent, int level) {
  using value_t = nlohmann::ordered_json::value_t;
  switch (j.type()) {
    case value_t::null: out += "null"; return;
    case value_t::boolean: out += j.get<bool>() ? "true" : "false"; return;
    case value_t::number_integer: out += std::to_string(j.get<std::int64_t>()); return;
    case value_t::number_unsigned: out += std::to_string(j.get<std::uint64_t>()); return;
    case value_t::number_float: {
      // json.dumps (allow_nan=True) writes NaN / Infinity / -Infinity; finite values as float.__repr__.
      const double x = j.get<double>();
      out += std::isnan(x) ? "NaN" : std::isinf(x) ? (x < 0 ? "-Infinity" : "Infinity") : python_float_repr(x);
      return;
    }
    case value_t::string: escape_string(out, j.get_ref<const std::string&>()); return;
    case value_t::array: {
      if (j.empty()) {
        out += "[]";
        return;
      }
      out += '[';
      bool first = true;
      for (const auto& v : j) {
        if (!first) {
          out += indent < 0 ? ", " : ",";
        }
        first = false;
        if (indent >= 0) {
          newline_indent(out, indent, level + 1);
        }
        dump(out, v, indent, level + 1);
      }
      if (indent >= 0) {
        newline_indent(out, indent, level);
      }
      out += ']';
      return;
    }
    case value_t::object: {
      if (j.empty()) {
        out += "{}";
        return;
      }
      out += '{';
      bool first = true;
      for (const auto& [k, v] : j.items()) {
        if (!first) {
          out += indent < 0 ? ", " : ",";
        }
        first = false;
        if (indent >= 0) {
          newline_indent(out, indent, level + 1);
        }
        escape_string(out, k);
        out += ": ";
        dump(out, v, indent, level + 1);
      }
      if (indent >= 0) {
        newline_indent(out, indent, level);
      }
      out += '}';
      return;
    }
    case value_t::binary:
    case value_t::discarded: break;
  }
  throw invalid_argument("python_json_dumps: binary or discarded JSON values have no Python form");
}

}  // namespace json_detail

/// Python's json.dumps(value, ensure_ascii=False) (indent < 0: separators ", " / ": ") or
/// json.dumps(value, indent=indent, ensure_ascii=False) (separators "," / ": " with newlines). Object keys in
/// the order of the ordered_json, as Python keeps dict insertion order.
[[nodiscard]] inline std::string python_json_dumps(const nlohmann::ordered_json& value, int indent = -1) {
  std::string out;
  json_detail::dump(out, value, indent, 0);
  return out;
}

// ---- sha256 (lm-eval's hash_string) ------------------------------------------------------------------------

/// SHA-256 (FIPS 180-4) hex digest of `data`: hashlib.sha256(s.encode("utf-8")).hexdigest().
[[nodiscard]] inline std::string sha256_hex(std::string_view data) {
  static constexpr std::array<std::uint32_t, 64> k = {
      0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01,
      0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc,
      0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
      0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
      0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08,
      0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
      0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
  std::array<std::uint32_t, 8> h = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                    0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  const auto rotr = [](std::uint32_t x, int n) { return (x >> n) | (x << (32 - n)); };
  // Message + 0x80 + zeros + 64-bit big-endian bit length, a multiple of 64 bytes.
  std::string msg(data);
  const std::uint64_t bits = static_cast<std::uint64_t>(data.size()) * 8;
  msg += static_cast<char>(0x80);
  while (msg.size() % 64 != 56) {
    msg += '\0';
  }
  for (int i = 7; i >= 0; --i) {
    msg += static_cast<char>((bits >> (8 * i)) & 0xff);
  }
  std::array<std::uint32_t, 64> w{};
  for (std::size_t off = 0; off < msg.size(); off += 64) {
    for (int t = 0; t < 16; ++t) {
      const auto* b = reinterpret_cast<const unsigned char*>(msg.data() + off + 4 * t);
      w[t] = (std::uint32_t{b[0]} << 24) | (std::uint32_t{b[1]} << 16) | (std::uint32_t{b[2]} << 8) | std::uint32_t{b[3]};
    }
    for (int t = 16; t < 64; ++t) {
      const auto s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
      const auto s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
      w[t]          = w[t - 16] + s0 + w[t - 7] + s1;
    }
    auto [a, b, c, d, e, f, g, hh] = h;
    for (int t = 0; t < 64; ++t) {
      const auto s1  = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
      const auto ch  = (e & f) ^ (~e & g);
      const auto t1  = hh + s1 + ch + k[static_cast<std::size_t>(t)] + w[static_cast<std::size_t>(t)];
      const auto s0  = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
      const auto maj = (a & b) ^ (a & c) ^ (b & c);
      const auto t2  = s0 + maj;
      hh = g;
      g  = f;
      f  = e;
      e  = d + t1;
      d  = c;
      c  = b;
      b  = a;
      a  = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
  }
  std::string hex;
  for (const auto v : h) {
    char part[9];
    std::snprintf(part, sizeof part, "%08x", v);
    hex += part;
  }
  return hex;
}

}  // namespace qprob::eval
