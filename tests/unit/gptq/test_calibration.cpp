// SPDX-License-Identifier: Apache-2.0
// Calibration windows (quant/calibration.hpp). A tokenizer that maps each whitespace-separated number to itself
// makes every window reveal its start, so the starts can be compared with values computed by an independent
// implementation (a Python transcription of the standard's mt19937_64, checked against the standard's 10000th
// value, plus the documented rejection mapping); then the real qprob::tokenizer on WikiText-2.
#include <qprob/quant/calibration.hpp>
#include <qprob/tokenizer/tokenizer.hpp>

#include <doctest/doctest.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <zlib.h>

#include "io_test_util.hpp"
#include "support.hpp"

namespace fs = std::filesystem;
using qprob::quant::calibration_mode;
using qprob::quant::calibration_options;
using qprob::test::contains;
using qprob::test::temp_dir;

namespace {

constexpr std::int32_t bos = 1000000;

/// "12 13 14" -> [BOS?, 12, 13, 14].
struct number_tokenizer {
  std::vector<std::int32_t> encode(std::string_view text, bool add_special_tokens) const {
    std::vector<std::int32_t> ids;
    if (add_special_tokens) {
      ids.push_back(bos);
    }
    std::istringstream in{std::string(text)};
    std::int32_t v = 0;
    while (in >> v) {
      ids.push_back(v);
    }
    return ids;
  }
};
static_assert(qprob::quant::calibration_tokenizer<number_tokenizer>);
static_assert(qprob::quant::calibration_tokenizer<qprob::tokenizer>);

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary);
  out << s;
}
void write_gz(const fs::path& p, const std::string& s) {
  gzFile f = gzopen(p.c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, s.data(), static_cast<unsigned>(s.size())) == static_cast<int>(s.size()));
  REQUIRE(gzclose(f) == Z_OK);
}

/// 100 lines of 10 numbers: 0 .. 999.
std::string numbers_text() {
  std::string s;
  for (int line = 0; line < 100; ++line) {
    for (int i = 0; i < 10; ++i) {
      s += std::to_string(line * 10 + i) + (i < 9 ? " " : "\n");
    }
  }
  return s;
}

/// Documents of 5, 40, 3, 25, 60, 10 words; document d holds d*1000 + 0, 1, ...
const std::vector<int> doc_words = {5, 40, 3, 25, 60, 10};
std::string doc_text(std::size_t d) {
  std::string s;
  for (int w = 0; w < doc_words[d]; ++w) {
    if (w > 0) {
      s += ' ';
    }
    s += std::to_string(static_cast<int>(d) * 1000 + w);
  }
  return s;
}
std::string docs_jsonl() {
  std::string s;
  for (std::size_t d = 0; d < doc_words.size(); ++d) {
    s += nlohmann::json{{"text", doc_text(d)}, {"url", std::to_string(d)}}.dump() + "\n";
  }
  return s;
}

/// Token t of document d under number_tokenizer with BOS.
std::int32_t doc_token(std::size_t d, std::int64_t t) {
  return t == 0 ? bos : static_cast<std::int32_t>(d) * 1000 + static_cast<std::int32_t>(t - 1);
}

std::string format_message(auto&& fn) { return qprob::test::format_error_message(fn); }

}  // namespace

TEST_CASE("calibration: uniform_below is the documented mapping of the standard mt19937_64") {
  std::mt19937_64 check;  // default seed 5489: the standard fixes the 10000th output
  check.discard(9999);
  CHECK(check() == 9981545732273789042ull);
  // Values from the independent Python implementation (seed 0, n = 985 / seed 42).
  std::mt19937_64 rng(0);
  std::vector<std::uint64_t> got;
  for (int i = 0; i < 5; ++i) {
    got.push_back(qprob::quant::uniform_below(rng, 985));
  }
  CHECK(got == std::vector<std::uint64_t>{669, 752, 738, 958, 951});
  // Rejection: for n = 2^63 + 1 the threshold 2^64 mod n = 2^63 - 1 discards half the draws.
  std::mt19937_64 a(3);
  std::mt19937_64 b(3);
  const std::uint64_t n = (1ull << 63) + 1;
  const auto v = qprob::quant::uniform_below(a, n);
  std::uint64_t x = b();
  while (x < (1ull << 63) - 1) {
    x = b();
  }
  CHECK(v == x % n);
  CHECK(v < n);
}

TEST_CASE("calibration: concatenated windows are seeded, in bounds, seqlen long and at the expected offsets") {
  temp_dir tmp("calib");
  write_text(tmp / "numbers.txt", numbers_text());
  calibration_options o;
  o.source   = tmp / "numbers.txt";
  o.mode     = calibration_mode::concatenated;
  o.nsamples = 5;
  o.seqlen   = 16;
  o.seed     = 0;
  const auto w = qprob::quant::calibration_windows(o, number_tokenizer{});
  // ids = [BOS, 0, 1, ..., 999]: a window starting at s begins with s - 1 (or BOS for s = 0).
  const std::vector<std::int64_t> starts = {669, 752, 738, 958, 951};  // independent implementation, seed 0
  REQUIRE(w.size() == 5);
  for (std::size_t i = 0; i < w.size(); ++i) {
    REQUIRE(w[i].size() == 16);
    for (std::int64_t j = 0; j < 16; ++j) {
      CHECK(w[i][static_cast<std::size_t>(j)] == starts[i] + j - 1);
    }
  }
  o.seed = 42;
  const auto w42 = qprob::quant::calibration_windows(o, number_tokenizer{});
  const std::vector<std::int64_t> starts42 = {281, 239, 960, 402, 931};
  for (std::size_t i = 0; i < w42.size(); ++i) {
    CHECK(w42[i].front() == starts42[i] - 1);
  }
  // Same seed, same windows; the last possible start (len - seqlen - 1) keeps the window inside.
  CHECK(qprob::quant::calibration_windows(o, number_tokenizer{}) == w42);
  o.nsamples = 2000;
  o.seqlen   = 1000;  // 1001 tokens: starts 0 only
  for (const auto& win : qprob::quant::calibration_windows(o, number_tokenizer{})) {
    REQUIRE(win.size() == 1000);
    REQUIRE(win.front() == bos);
    REQUIRE(win.back() == 998);
  }
  o.seqlen = 1001;
  const auto e = format_message([&] { (void)qprob::quant::calibration_windows(o, number_tokenizer{}); });
  CHECK(contains(e, "numbers.txt: calibration corpus too short: seqlen=1001 windows need more than 1001 tokens, the "
                    "joined 100 rows tokenize to 1001"));
}

TEST_CASE("calibration: C4 documents from .jsonl.gz, .json and C4's JSON-lines .json.gz agree with the reference") {
  temp_dir tmp("calib_c4");
  write_gz(tmp / "c4.jsonl.gz", docs_jsonl());
  write_gz(tmp / "c4-train.00000-of-01024.json.gz", docs_jsonl());  // C4's naming: .json.gz holding JSON lines
  nlohmann::json array = nlohmann::json::array();
  for (std::size_t d = 0; d < doc_words.size(); ++d) {
    array.push_back({{"text", doc_text(d)}});
  }
  write_text(tmp / "c4.json", array.dump());
  // Independent implementation, seed 7, seqlen 20: (document, start) per sample.
  const std::vector<std::pair<std::size_t, std::int64_t>> expected = {{3, 0}, {1, 15}, {3, 4}, {3, 2}, {4, 10}, {3, 0}};
  for (const char* name : {"c4.jsonl.gz", "c4-train.00000-of-01024.json.gz", "c4.json"}) {
    CAPTURE(name);
    calibration_options o;
    o.source   = tmp / name;
    o.mode     = calibration_mode::c4_documents;
    o.nsamples = 6;
    o.seqlen   = 20;
    o.seed     = 7;
    const auto w = qprob::quant::calibration_windows(o, number_tokenizer{});
    REQUIRE(w.size() == expected.size());
    for (std::size_t i = 0; i < w.size(); ++i) {
      REQUIRE(w[i].size() == 20);
      for (std::int64_t j = 0; j < 20; ++j) {
        CHECK(w[i][static_cast<std::size_t>(j)] == doc_token(expected[i].first, expected[i].second + j));
      }
    }
  }
  // Too short: the longest document has 61 tokens.
  calibration_options o;
  o.source = tmp / "c4.jsonl.gz";
  o.mode   = calibration_mode::c4_documents;
  o.seqlen = 61;
  auto e   = format_message([&] { (void)qprob::quant::calibration_windows(o, number_tokenizer{}); });
  CHECK(contains(e, "c4.jsonl.gz: calibration corpus too short: c4_documents needs a document of more than 61 tokens "
                    "(seqlen), the longest of the 6 documents has 61"));
  // Field name and malformed lines.
  o.seqlen     = 8;
  o.text_field = "content";
  e            = format_message([&] { (void)qprob::quant::calibration_windows(o, number_tokenizer{}); });
  CHECK(contains(e, "c4.jsonl.gz: line 1: no string field \"content\""));
  write_text(tmp / "bad.jsonl", "{\"text\": \"1 2\"}\n\n{\"text\": \n");
  o.source     = tmp / "bad.jsonl";
  o.text_field = "text";
  e            = format_message([&] { (void)qprob::quant::calibration_windows(o, number_tokenizer{}); });
  CHECK(contains(e, "bad.jsonl: line 3: malformed JSON"));
  write_text(tmp / "corrupt.jsonl.gz", "not gzip at all");
  o.source = tmp / "corrupt.jsonl.gz";
  CHECK_THROWS_AS(qprob::quant::calibration_windows(o, number_tokenizer{}), qprob::format_error);
}

TEST_CASE("calibration: text rows follow the Hugging Face wikitext loader (blank lines become empty rows)") {
  temp_dir tmp("calib_rows");
  write_text(tmp / "t.raw", " \n = Title = \n \n Body text .\nlast");
  calibration_options o;
  o.source = tmp / "t.raw";
  CHECK(qprob::quant::read_calibration_rows(o) ==
        std::vector<std::string>{"", " = Title = \n", "", " Body text .\n", "last"});
}

TEST_CASE("calibration: WikiText-2 with the stories260K tokenizer, both recipes") {
  std::string reason;
  const auto model = qprob::test::shared_path("models/stories260K", &reason);
  const auto wiki  = qprob::test::shared_path("data/wikitext2/wiki.test.raw", &reason);
  if (!model || !wiki) {
    MESSAGE("skipped: ", reason);
    return;
  }
  const auto tok = qprob::tokenizer::from_directory(*model);
  for (auto mode : {calibration_mode::concatenated, calibration_mode::c4_documents}) {
    CAPTURE(static_cast<int>(mode));
    calibration_options o;
    o.source   = *wiki;
    o.mode     = mode;
    o.nsamples = 8;
    o.seqlen   = 128;
    o.seed     = 3;
    const auto w = qprob::quant::calibration_windows(o, tok);
    REQUIRE(w.size() == 8);
    for (const auto& win : w) {
      REQUIRE(win.size() == 128);
      for (auto id : win) {
        REQUIRE(id >= 0);
        REQUIRE(id < 512);
      }
    }
    CHECK(qprob::quant::calibration_windows(o, tok) == w);
    o.seed = 4;
    CHECK(qprob::quant::calibration_windows(o, tok) != w);
    if (mode == calibration_mode::concatenated) {
      // The windows are slices of the whole tokenized text at the documented offsets.
      const auto rows = qprob::quant::read_calibration_rows(o);
      std::string joined;
      for (std::size_t i = 0; i < rows.size(); ++i) {
        if (i > 0) {
          joined += "\n\n";
        }
        joined += rows[i];
      }
      const auto ids = tok.encode(joined, true);
      std::mt19937_64 rng(3);
      for (const auto& win : w) {
        const auto s = qprob::quant::uniform_below(rng, ids.size() - 128);
        REQUIRE(std::equal(win.begin(), win.end(), ids.begin() + static_cast<std::ptrdiff_t>(s)));
      }
    }
  }
}
