// SPDX-License-Identifier: Apache-2.0
#pragma once
// Calibration data for GPTQ: `nsamples` windows of `seqlen` tokens drawn reproducibly from a corpus, by the two
// recipes the GPTQ code base (and AutoGPTQ/GPTQModel's examples) use:
//
//   c4_documents  (GPTQ's get_c4): for each sample, draw documents until one tokenizes to MORE than seqlen tokens,
//                 then a window start in [0, len - seqlen - 1] of that document.
//   concatenated  (GPTQ's get_wikitext2): tokenize the rows joined by "\n\n" once, then for each sample a window
//                 start in [0, total - seqlen - 1].
//
// Randomness: one std::mt19937_64 seeded with `seed` (its output sequence is fixed by the C++ standard), and the
// integer mapping uniform_below(n) documented below -- never std::uniform_int_distribution, whose algorithm is
// implementation-defined -- so a seed gives the same windows on every platform. docs/gptq-format.md has the recipe.
//
// Corpora: a text file (rows = lines, the Hugging Face wikitext loader's rule), a JSON array, or JSON lines, each
// optionally gzip-compressed (.gz, read with zlib: link ZLIB::ZLIB / -lz, Debian package zlib1g-dev).
// The tokenizer is any type with `encode(std::string_view, bool add_special_tokens)` returning int32 ids, such as
// qprob::tokenizer (qprob/tokenizer/tokenizer.hpp, target qprob::tokenizer).

#include <qprob/core/error.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <zlib.h>

namespace qprob::quant {

enum class calibration_format : std::uint8_t {
  automatic,  ///< by extension (.txt/.raw/other -> text, .json/.jsonl -> JSON sniffed), ".gz" stripped first
  text,       ///< one row per line
  json,       ///< a JSON array of objects (or of strings); a file of several objects is read as JSON lines
  jsonl,      ///< one JSON object per non-blank line
};

enum class calibration_mode : std::uint8_t {
  c4_documents,  ///< GPTQ's C4 recipe: a random document longer than seqlen, then a random window in it
  concatenated,  ///< GPTQ's WikiText-2 recipe: random windows of the joined, once-tokenized text
};

/// Options, named as AutoGPTQ/GPTQModel name them where they have a name.
struct calibration_options {
  std::filesystem::path source = "../shared/data/wikitext2/wiki.test.raw";  ///< the calibration corpus
  calibration_format format    = calibration_format::automatic;
  std::string text_field       = "text";  ///< JSON/JSONL field holding the document text
  std::int64_t nsamples        = 128;
  std::int64_t seqlen          = 2048;
  std::uint64_t seed           = 0;
  calibration_mode mode        = calibration_mode::concatenated;
  std::string join_separator   = "\n\n";  ///< concatenated mode: rows are joined with this ("\n\n" as GPTQ)
  bool add_special_tokens      = true;    ///< as Hugging Face tokenizer(...) calls do by default (BOS for Llama)
};

/// Tokenizers calibration windows can be drawn with.
template <class T>
concept calibration_tokenizer = requires(const T& t, std::string_view s) {
  { t.encode(s, true) } -> std::convertible_to<std::vector<std::int32_t>>;
};

/// Uniform integer in [0, n) from a 64-bit Mersenne Twister, portable by construction: draw x until
/// x >= 2^64 mod n, return x mod n (rejection of the 2^64 mod n smallest values makes every residue equally
/// likely; OpenBSD's arc4random_uniform rule). n must be positive.
inline std::uint64_t uniform_below(std::mt19937_64& rng, std::uint64_t n) {
  QPROB_CHECK(n > 0, "uniform_below: n must be positive");
  const std::uint64_t threshold = (0 - n) % n;  // 2^64 mod n
  for (;;) {
    const std::uint64_t x = rng();
    if (x >= threshold) {
      return x % n;
    }
  }
}

namespace detail {

inline bool is_gzip_path(const std::filesystem::path& p) { return p.extension() == ".gz"; }

/// The whole file, decompressed when it ends in .gz.
inline std::string read_corpus_bytes(const std::filesystem::path& p) {
  const std::string file = p.string();
  if (!is_gzip_path(p)) {
    std::ifstream in(p, std::ios::binary);
    if (!in) {
      throw format_error(file, "", "cannot open the calibration corpus");
    }
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }
  gzFile gz = ::gzopen(file.c_str(), "rb");
  if (gz == nullptr) {
    throw format_error(file, "", "cannot open the calibration corpus");
  }
  std::string out;
  char buf[1 << 16];
  for (;;) {
    const int n = ::gzread(gz, buf, sizeof buf);
    if (n < 0) {
      int err           = 0;
      const char* what  = ::gzerror(gz, &err);
      const std::string message = what != nullptr ? what : "unknown error";
      ::gzclose(gz);
      throw format_error(file, "", "gzip decompression failed: " + message);
    }
    if (n == 0) {
      break;
    }
    out.append(buf, static_cast<std::size_t>(n));
  }
  ::gzclose(gz);
  return out;
}

inline std::string row_text(const nlohmann::json& row, const std::string& field, const std::string& file,
                            const std::string& where) {
  if (row.is_string()) {
    return row.get<std::string>();
  }
  if (!row.is_object()) {
    throw format_error(file, where, std::string("expected an object with a \"") + field + "\" string, got " + row.type_name());
  }
  const auto it = row.find(field);
  if (it == row.end() || !it->is_string()) {
    throw format_error(file, where, "no string field \"" + field + "\" (set calibration_options::text_field)");
  }
  return it->get<std::string>();
}

inline std::vector<std::string> parse_json_lines(const std::string& bytes, const std::string& field, const std::string& file) {
  std::vector<std::string> rows;
  std::size_t pos  = 0;
  std::int64_t line = 0;
  while (pos < bytes.size()) {
    auto end = bytes.find('\n', pos);
    if (end == std::string::npos) {
      end = bytes.size();
    }
    ++line;
    const std::string_view text(bytes.data() + pos, end - pos);
    pos = end + 1;
    if (text.find_first_not_of(" \t\r") == std::string_view::npos) {
      continue;
    }
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      throw format_error(file, "line " + std::to_string(line), std::string("malformed JSON: ") + e.what());
    }
    rows.push_back(row_text(j, field, file, "line " + std::to_string(line)));
  }
  return rows;
}

}  // namespace detail

/// The rows of a corpus: text lines (each keeping its "\n"; whitespace-only lines become "", as the Hugging Face
/// wikitext loader yields them), or the text field of every JSON / JSON-lines record.
inline std::vector<std::string> read_calibration_rows(const calibration_options& o) {
  const std::string file = o.source.string();
  const auto bytes       = detail::read_corpus_bytes(o.source);
  auto format            = o.format;
  const auto stem_ext    = detail::is_gzip_path(o.source) ? o.source.stem().extension() : o.source.extension();
  if (format == calibration_format::automatic) {
    format = stem_ext == ".json" || stem_ext == ".jsonl" ? calibration_format::json : calibration_format::text;
  }
  std::vector<std::string> rows;
  if (format == calibration_format::text) {
    std::size_t pos = 0;
    while (pos < bytes.size()) {
      auto end = bytes.find('\n', pos);
      end      = end == std::string::npos ? bytes.size() : end + 1;
      std::string line = bytes.substr(pos, end - pos);
      pos              = end;
      rows.push_back(line.find_first_not_of(" \t\r\n") == std::string::npos ? std::string() : std::move(line));
    }
    return rows;
  }
  if (format == calibration_format::jsonl) {
    return detail::parse_json_lines(bytes, o.text_field, file);
  }
  // json: an array, or (C4's *.json.gz files are JSON lines) several objects one per line.
  const auto first = bytes.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && bytes[first] == '{') {
    return detail::parse_json_lines(bytes, o.text_field, file);
  }
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(bytes);
  } catch (const nlohmann::json::exception& e) {
    throw format_error(file, "", std::string("malformed JSON: ") + e.what());
  }
  if (!j.is_array()) {
    throw format_error(file, "", std::string("expected a JSON array of records, got ") + j.type_name());
  }
  for (std::size_t i = 0; i < j.size(); ++i) {
    rows.push_back(detail::row_text(j[i], o.text_field, file, "[" + std::to_string(i) + "]"));
  }
  return rows;
}

/// Draws the calibration windows: `nsamples` vectors of exactly `seqlen` token ids.
///
/// concatenated: ids = encode(join(rows, join_separator)); start_i = uniform_below(rng, len(ids) - seqlen) for
///               i = 0 .. nsamples-1 (GPTQ: randint(0, len - seqlen - 1)).
/// c4_documents: docs = the non-empty rows; per sample: repeat d = uniform_below(rng, docs) until
///               len(encode(docs[d])) > seqlen, then start = uniform_below(rng, len - seqlen).
/// @throws format_error(file, "", "...") when the corpus is too short: naming what was needed and what was found.
template <calibration_tokenizer Tok>
std::vector<std::vector<std::int32_t>> calibration_windows(const calibration_options& o, const Tok& tok) {
  QPROB_CHECK(o.nsamples > 0, "calibration: nsamples must be positive, got ", o.nsamples);
  QPROB_CHECK(o.seqlen > 0, "calibration: seqlen must be positive, got ", o.seqlen);
  const std::string file = o.source.string();
  const auto rows        = read_calibration_rows(o);
  std::mt19937_64 rng(o.seed);
  std::vector<std::vector<std::int32_t>> out;
  out.reserve(static_cast<std::size_t>(o.nsamples));
  const auto take = [&](const std::vector<std::int32_t>& ids, std::uint64_t start) {
    out.emplace_back(ids.begin() + static_cast<std::ptrdiff_t>(start),
                     ids.begin() + static_cast<std::ptrdiff_t>(start) + static_cast<std::ptrdiff_t>(o.seqlen));
  };
  if (o.mode == calibration_mode::concatenated) {
    std::string joined;
    for (std::size_t i = 0; i < rows.size(); ++i) {
      if (i > 0) {
        joined += o.join_separator;
      }
      joined += rows[i];
    }
    const std::vector<std::int32_t> ids = tok.encode(joined, o.add_special_tokens);
    const auto len = static_cast<std::int64_t>(ids.size());
    if (len <= o.seqlen) {
      throw format_error(file, "", "calibration corpus too short: seqlen=" + std::to_string(o.seqlen) +
                                       " windows need more than " + std::to_string(o.seqlen) + " tokens, the joined " +
                                       std::to_string(rows.size()) + " rows tokenize to " + std::to_string(len));
    }
    for (std::int64_t s = 0; s < o.nsamples; ++s) {
      take(ids, uniform_below(rng, static_cast<std::uint64_t>(len - o.seqlen)));
    }
    return out;
  }
  std::vector<const std::string*> docs;
  for (const auto& r : rows) {
    if (!r.empty()) {
      docs.push_back(&r);
    }
  }
  if (docs.empty()) {
    throw format_error(file, "", "calibration corpus has no non-empty documents");
  }
  // Token counts of the documents seen so far (-1: not tokenized yet), to know when none can qualify.
  std::vector<std::int64_t> lengths(docs.size(), -1);
  std::size_t seen = 0;
  std::int64_t longest = 0;
  for (std::int64_t s = 0; s < o.nsamples; ++s) {
    for (;;) {
      const auto d = static_cast<std::size_t>(uniform_below(rng, docs.size()));
      const std::vector<std::int32_t> ids = tok.encode(*docs[d], o.add_special_tokens);
      if (lengths[d] < 0) {
        lengths[d] = static_cast<std::int64_t>(ids.size());
        longest    = std::max(longest, lengths[d]);
        ++seen;
      }
      if (static_cast<std::int64_t>(ids.size()) > o.seqlen) {
        take(ids, uniform_below(rng, static_cast<std::uint64_t>(static_cast<std::int64_t>(ids.size()) - o.seqlen)));
        break;
      }
      if (seen == docs.size() && longest <= o.seqlen) {
        throw format_error(file, "", "calibration corpus too short: c4_documents needs a document of more than " +
                                         std::to_string(o.seqlen) + " tokens (seqlen), the longest of the " +
                                         std::to_string(docs.size()) + " documents has " + std::to_string(longest));
      }
    }
  }
  return out;
}

}  // namespace qprob::quant
