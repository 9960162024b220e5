// SPDX-License-Identifier: Apache-2.0
// Focused checks of each pipeline stage on small hand-written tokenizers, plus round trips, special-token
// rules and thread safety on the shared tokenizers. Expected ids follow the `tokenizers` semantics
// described in docs/tokenizers.md.

#include <qprob/tokenizer/tokenizer.hpp>

#include "reference_check.hpp"
#include "support.hpp"
#include "tiny.hpp"

#include <doctest/doctest.h>

#include <random>
#include <thread>

using qprob::test::load_json;
using qprob::test::temp_dir;
using qprob::test::tiny_tokenizer_json;
using ids = std::vector<std::int32_t>;

namespace {

std::optional<qprob::tokenizer> shared_tokenizer(const std::string& folder,
                                                 qprob::tokenizer_format f = qprob::tokenizer_format::automatic) {
  std::string reason;
  const auto dir = qprob::test::shared_path("tokenizers/" + folder, &reason);
  if (!dir) {
    MESSAGE(reason);
    return std::nullopt;
  }
  return qprob::tokenizer::from_directory(*dir, f);
}

// A random string of code points drawn from ASCII, Latin-1, other BMP ranges, emoji and whitespace.
std::string random_utf8(std::mt19937_64& rng, std::size_t max_chars) {
  std::uniform_int_distribution<std::size_t> length(0, max_chars);
  std::uniform_int_distribution<int> range(0, 5);
  std::string s;
  const std::size_t n = length(rng);
  for (std::size_t i = 0; i < n; ++i) {
    char32_t c = 0;
    switch (range(rng)) {
      case 0: c = std::uniform_int_distribution<char32_t>(0x20, 0x7E)(rng); break;
      case 1: c = std::uniform_int_distribution<char32_t>(0xA0, 0x24F)(rng); break;
      case 2: c = std::uniform_int_distribution<char32_t>(0x370, 0xD7FF)(rng); break;
      case 3: c = std::uniform_int_distribution<char32_t>(0x1F300, 0x1FAFF)(rng); break;
      case 4: c = std::array<char32_t, 6>{' ', '\n', '\t', 0x3000, 0x85, 0xA0}[std::uniform_int_distribution<int>(0, 5)(rng)]; break;
      default: c = std::uniform_int_distribution<char32_t>(0xE000, 0xFFFD)(rng); break;
    }
    qprob::tok::append_utf8(s, c);
  }
  return s;
}

}  // namespace

// ---- BPE model ---------------------------------------------------------------------------------------------

TEST_CASE("BPE merges the pair of lowest rank first") {
  temp_dir dir;
  auto j = tiny_tokenizer_json();
  CHECK(load_json(dir, j).encode("abc", false) == ids{7});     // a b -> ab, ab c -> abc
  CHECK(load_json(dir, j).encode("abbc", false) == ids{6, 8});  // ab, bc
  j["model"]["merges"] = qprob::test::merges({{"b", "c"}, {"a", "b"}, {"ab", "c"}});
  CHECK(load_json(dir, j).encode("abc", false) == ids{3, 8});  // b c first: a + bc has no merge
}

TEST_CASE("BPE accepts merges written as a b strings") {
  temp_dir dir;
  auto j = tiny_tokenizer_json();
  j["model"]["merges"] = {"a b", "ab c"};
  CHECK(load_json(dir, j).encode("abc", false) == ids{7});
}

TEST_CASE("BPE unknown characters give unk, fused only with fuse_unk") {
  temp_dir dir;
  auto j = tiny_tokenizer_json();
  CHECK(load_json(dir, j).encode("axxa", false) == ids{3, 0, 0, 3});
  j["model"]["fuse_unk"] = true;
  CHECK(load_json(dir, j).encode("axxa", false) == ids{3, 0, 3});
  j["model"]["unk_token"] = nullptr;
  CHECK(load_json(dir, j).encode("axxa", false) == ids{3, 3});  // no unk: unknown characters are dropped
}

TEST_CASE("BPE byte_fallback spells unknown characters as byte tokens") {
  temp_dir dir;
  auto j = tiny_tokenizer_json();
  j["model"]["byte_fallback"] = true;
  j["model"]["vocab"]["<0x78>"] = 20;
  j["model"]["vocab"]["<0xC3>"] = 21;
  CHECK(load_json(dir, j).encode("axa", false) == ids{3, 20, 3});
  // U+00E9 is C3 A9; <0xA9> is missing, so the character is unk rather than half spelled.
  CHECK(load_json(dir, j).encode("a\xC3\xA9", false) == ids{3, 0});
}

TEST_CASE("BPE continuing_subword_prefix and end_of_word_suffix") {
  temp_dir dir;
  auto j = tiny_tokenizer_json();
  j["model"]["continuing_subword_prefix"] = "##";
  j["model"]["vocab"] = {{"<unk>", 0}, {"a", 1}, {"##b", 2}, {"ab", 3}, {"##c</w>", 4}, {"abc</w>", 5}};
  j["model"]["end_of_word_suffix"] = "</w>";
  j["model"]["merges"] = qprob::test::merges({{"a", "##b"}, {"ab", "##c</w>"}});
  j["added_tokens"] = nlohmann::json::array();
  const auto t = load_json(dir, j);
  CHECK(t.encode("abc", false) == ids{5});
  CHECK(t.encode("ab", false) == ids{1, 0});  // "##b</w>" is not in the vocabulary
}

TEST_CASE("BPE ignore_merges takes a whole word from the vocabulary") {
  temp_dir dir;
  auto j = tiny_tokenizer_json();
  j["model"]["merges"] = qprob::test::merges({{"a", "b"}});
  CHECK(load_json(dir, j).encode("abc", false) == ids{6, 5});
  j["model"]["ignore_merges"] = true;
  CHECK(load_json(dir, j).encode("abc", false) == ids{7});
}

// ---- added tokens ------------------------------------------------------------------------------------------

TEST_CASE("added tokens are split off before the model and honour lstrip and rstrip") {
  temp_dir dir;
  auto j = tiny_tokenizer_json();
  CHECK(load_json(dir, j).encode("a<s>b", false) == ids{3, 1, 4});
  j["model"]["vocab"]["<mask>"] = 10;
  j["added_tokens"].push_back({{"id", 10}, {"content", "<mask>"}, {"special", true}, {"normalized", false},
                               {"single_word", false}, {"lstrip", false}, {"rstrip", false}});
  CHECK(load_json(dir, j).encode("a <mask> b", false) == ids{3, 9, 10, 9, 4});
  j["added_tokens"][3]["lstrip"] = true;
  CHECK(load_json(dir, j).encode("a <mask> b", false) == ids{3, 10, 9, 4});
  j["added_tokens"][3]["rstrip"] = true;
  CHECK(load_json(dir, j).encode("a <mask> b", false) == ids{3, 10, 4});
}

TEST_CASE("single_word added tokens match only between non-word characters") {
  temp_dir dir;
  auto j = tiny_tokenizer_json();
  j["added_tokens"].push_back({{"id", 8}, {"content", "bc"}, {"special", false}, {"normalized", false},
                               {"single_word", true}, {"lstrip", false}, {"rstrip", false}});
  const auto t = load_json(dir, j);
  CHECK(t.encode("a bc", false) == ids{3, 9, 8});
  CHECK(t.encode("abc", false) == ids{7});
}

TEST_CASE("leftmost-longest matching between overlapping added tokens") {
  temp_dir dir;
  auto j = tiny_tokenizer_json();
  j["model"]["vocab"]["<s><s>"] = 11;
  j["added_tokens"].push_back({{"id", 11}, {"content", "<s><s>"}, {"special", true}, {"normalized", false}});
  CHECK(load_json(dir, j).encode("<s><s><s>", false) == ids{11, 1});
}

// ---- normalizers and pre-tokenizers -----------------------------------------------------------------------

TEST_CASE("normalizers Lowercase, Strip, NFKC and Replace") {
  temp_dir dir;
  auto j = tiny_tokenizer_json();
  j["normalizer"] = {{"type", "Sequence"},
                     {"normalizers",
                      {{{"type", "NFKC"}},
                       {{"type", "Lowercase"}},
                       {{"type", "Strip"}, {"strip_left", true}, {"strip_right", true}},
                       {{"type", "Replace"}, {"pattern", {{"Regex", "[xyz]"}}}, {"content", "a"}}}}};
  const auto t = load_json(dir, j);
  CHECK(t.encode("  AB\t", false) == ids{6});
  CHECK(t.encode("\xEF\xBD\x81\xEF\xBD\x82", false) == ids{6});  // fullwidth "ab"
  CHECK(t.encode("xB", false) == ids{6});
}

TEST_CASE("Split pre-tokenizer behaviours") {
  temp_dir dir;
  auto j = tiny_tokenizer_json();
  const auto with = [&](const std::string& behavior, bool invert) {
    j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"String", "b"}}}, {"behavior", behavior}, {"invert", invert}};
    return load_json(dir, j).encode("ab", false);
  };
  CHECK(with("Isolated", false) == ids{3, 4});
  CHECK(with("Removed", false) == ids{3});
  CHECK(with("MergedWithPrevious", false) == ids{6});
  CHECK(with("MergedWithNext", false) == ids{3, 4});
  CHECK(with("Removed", true) == ids{4});
}

TEST_CASE("Whitespace, WhitespaceSplit and Digits pre-tokenizers") {
  temp_dir dir;
  auto j = tiny_tokenizer_json();
  CHECK(load_json(dir, j).encode("ab c", false) == ids{6, 9, 5});
  j["pre_tokenizer"] = {{"type", "Whitespace"}};
  CHECK(load_json(dir, j).encode("ab c", false) == ids{6, 5});
  j["pre_tokenizer"] = {{"type", "WhitespaceSplit"}};
  CHECK(load_json(dir, j).encode("ab  c", false) == ids{6, 5});
  j["model"]["vocab"]["1"] = 12;
  j["model"]["vocab"]["a1"] = 13;
  j["model"]["merges"].push_back(nlohmann::json::array({"a", "1"}));
  j["pre_tokenizer"] = nullptr;
  CHECK(load_json(dir, j).encode("a1", false) == ids{13});
  j["pre_tokenizer"] = {{"type", "Digits"}, {"individual_digits", true}};
  CHECK(load_json(dir, j).encode("a1", false) == ids{3, 12});
}

TEST_CASE("Metaspace prepend_scheme always, first and never") {
  temp_dir dir;
  auto j = tiny_tokenizer_json();
  j["model"]["vocab"]["\u2581"] = 10;
  j["model"]["vocab"]["\u2581a"] = 11;
  j["model"]["merges"].push_back(nlohmann::json::array({"\u2581", "a"}));
  const auto with = [&](const std::string& scheme) {
    j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", scheme}, {"split", true}};
    j["decoder"] = {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", scheme}, {"split", true}};
    return load_json(dir, j);
  };
  CHECK(with("always").encode("a<s>a", false) == ids{11, 1, 11});
  CHECK(with("first").encode("a<s>a", false) == ids{11, 1, 3});
  CHECK(with("never").encode("a<s>a", false) == ids{3, 1, 3});
  CHECK(with("always").encode("a a", false) == ids{11, 11});
  CHECK(with("always").decode(ids{11, 11}) == "a a");
  CHECK(with("never").decode(ids{11, 11}) == " a a");
}

// ---- post-processing and configuration ---------------------------------------------------------------------

TEST_CASE("TemplateProcessing adds its special tokens only with add_special_tokens") {
  temp_dir dir;
  auto j = tiny_tokenizer_json();
  j["post_processor"] = nlohmann::json::parse(R"({"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "</s>", "type_id": 0}}],
      "pair": [],
      "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]},
                         "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}})");
  const auto t = load_json(dir, j);
  CHECK(t.encode("ab", true) == ids{1, 6, 2});
  CHECK(t.encode("ab", false) == ids{6});
  CHECK(t.bos_id() == 1);
  CHECK(t.eos_id() == 2);
}

TEST_CASE("tokenizer_config.json add_bos_token and add_eos_token override the template") {
  temp_dir dir;
  auto j = tiny_tokenizer_json();
  dir.write("tokenizer_config.json", R"({"add_bos_token": false, "add_eos_token": true, "eos_token": "</s>"})");
  const auto t = load_json(dir, j);
  CHECK(t.encode("ab", true) == ids{6, 2});
  CHECK(t.encode("ab", false) == ids{6});
}

TEST_CASE("decode skips special tokens only when asked") {
  temp_dir dir;
  const auto t = load_json(dir, tiny_tokenizer_json());
  CHECK(t.decode(ids{1, 6, 2}) == "<s>ab</s>");
  CHECK(t.decode(ids{1, 6, 2}, true) == "ab");
}

TEST_CASE("SentencePiece adds BOS by default and EOS when the config says so") {
  auto t = shared_tokenizer("llama2-32k-sentencepiece");
  if (!t) {
    return;
  }
  CHECK(t->format() == qprob::tokenizer_format::sentencepiece);
  CHECK(t->encode("Hello world", true) == ids{1, 15043, 3186});
  CHECK(t->encode("Hello world", false) == ids{15043, 3186});
  CHECK(t->bos_id() == 1);
  CHECK(t->eos_id() == 2);
  CHECK(t->vocab_size() == 32000);
  CHECK(t->decode(ids{1, 15043, 3186}, true) == "Hello world");
  CHECK(t->decode(ids{1, 15043, 3186}, false) == "<s>Hello world");
  temp_dir dir;
  std::filesystem::copy_file(std::filesystem::path(qprob::test::shared_dir().value()) /
                                 "tokenizers/llama2-32k-sentencepiece/tokenizer.model",
                             dir.path() / "tokenizer.model");
  dir.write("tokenizer_config.json", R"({"add_bos_token": false, "add_eos_token": true})");
  CHECK(qprob::tokenizer::from_directory(dir.path()).encode("Hello world", true) == ids{15043, 3186, 2});
}

TEST_CASE("special ids, vocabulary size and token lookups of the shared tokenizers") {
  if (auto t = shared_tokenizer("gpt2")) {
    CHECK(t->format() == qprob::tokenizer_format::tokenizer_json);
    CHECK(t->bos_id() == 50256);
    CHECK(t->eos_id() == 50256);
    CHECK(t->vocab_size() == 50257);
    CHECK(t->token_to_id("Hello") == 15496);
    CHECK(t->id_to_token(15496) == "Hello");
    CHECK(t->encode("<|endoftext|>", false) == ids{50256});
    CHECK_THROWS_AS((void)t->id_to_token(50257), qprob::invalid_argument);
  }
  if (auto t = shared_tokenizer("llama2-32k-legacy")) {
    CHECK(t->bos_id() == 1);
    CHECK(t->eos_id() == 2);
    CHECK(t->vocab_size() == 32000);
    CHECK(t->id_to_token(3) == "<0x00>");
  }
  if (auto t = shared_tokenizer("gpt-neox-20b")) {
    CHECK(t->eos_id() == 0);
    CHECK(t->token_to_id("<|padding|>") == 1);
  }
}

// ---- decoding details ---------------------------------------------------------------------------------------

TEST_CASE("ByteFallback decodes invalid byte runs to one U+FFFD per byte") {
  auto t = shared_tokenizer("llama2-32k-legacy");
  if (!t) {
    return;
  }
  const std::int32_t e2 = *t->token_to_id("<0xE2>");
  const std::int32_t x82 = *t->token_to_id("<0x82>");
  const std::int32_t xac = *t->token_to_id("<0xAC>");
  CHECK(t->decode(ids{e2, x82, xac}) == "\xE2\x82\xAC");
  CHECK(t->decode(ids{e2, x82}) == "\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST_CASE("ByteLevel decoding replaces maximal invalid subparts like from_utf8_lossy") {
  using qprob::tok::utf8_lossy;
  CHECK(utf8_lossy("a\x80" "b") == "a\xEF\xBF\xBD" "b");
  CHECK(utf8_lossy("\xF0\x9F\x98") == "\xEF\xBF\xBD");
  CHECK(utf8_lossy("\xC0\x80") == "\xEF\xBF\xBD\xEF\xBF\xBD");
  CHECK(utf8_lossy("\xED\xA0\x80") == "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  auto t = shared_tokenizer("gpt2");
  if (!t) {
    return;
  }
  const std::int32_t e2 = *t->token_to_id("\xC3\xA2");  // byte 0xE2 is the character U+00E2
  CHECK(t->decode(ids{e2}) == "\xEF\xBF\xBD");
}

TEST_CASE("invalid input is rejected with a clear error") {
  temp_dir dir;
  const auto t = load_json(dir, tiny_tokenizer_json());
  CHECK_THROWS_WITH_AS((void)t.encode("a\xFF", false), "encode: text is not valid UTF-8 (byte 1)",
                       qprob::invalid_argument);
  CHECK_THROWS_AS((void)t.decode(ids{99}), qprob::invalid_argument);
  CHECK_THROWS_AS((void)t.decode(ids{-1}), qprob::invalid_argument);
}

// ---- round trips and threads --------------------------------------------------------------------------------

TEST_CASE("byte-level tokenizers round-trip random UTF-8") {
  auto rng = qprob::test::make_rng(0x7201);
  INFO("seed ", qprob::test::run_seed());
  for (const char* folder : {"gpt2", "gpt-neox-20b", "llama2-32k-legacy", "stories260K-legacy"}) {
    auto t = shared_tokenizer(folder);
    if (!t) {
      return;
    }
    const bool nfc = std::string(folder) == "gpt-neox-20b";
    // SentencePiece-style tokenizers (Metaspace / Replace decoders) turn every U+2581 into a space on decode,
    // including one the text contained literally; Hugging Face tokenizers does the same.
    const bool metaspace = std::string(folder).starts_with("llama2") || std::string(folder).starts_with("stories");
    std::size_t failures = 0;
    for (int i = 0; i < 300; ++i) {
      const std::string s = random_utf8(rng, 40);
      std::string expected = nfc ? qprob::tok::normalize(s, qprob::tok::normalization_form::nfc) : s;
      if (metaspace) {
        std::string spaced;
        for (std::size_t at = 0; at < expected.size();) {
          const bool marker = expected.compare(at, 3, "\u2581") == 0;
          spaced += marker ? ' ' : expected[at];
          at += marker ? 3 : 1;
        }
        expected = std::move(spaced);
      }
      for (const bool special : {false, true}) {
        const std::string back = t->decode(t->encode(s, special), true);
        if (back != expected && ++failures <= 3) {
          INFO(folder, " text=", nlohmann::json(s).dump(), " back=", nlohmann::json(back).dump());
          CHECK(back == expected);
        }
      }
    }
    CHECK_MESSAGE(failures == 0, folder);
  }
}

TEST_CASE("concurrent encodes agree with a single-threaded encode") {
  auto t = shared_tokenizer("gpt2");
  if (!t) {
    return;
  }
  auto rng = qprob::test::make_rng(0x7202);
  std::vector<std::string> texts;
  for (int i = 0; i < 400; ++i) {
    texts.push_back(random_utf8(rng, 60));
  }
  std::vector<ids> expected;
  for (const auto& s : texts) {
    expected.push_back(t->encode(s, false));
  }
  const qprob::tokenizer fresh = *shared_tokenizer("gpt2");  // empty cache, so threads fill it together
  std::vector<int> bad(4, 0);
  std::vector<std::thread> threads;
  for (int w = 0; w < 4; ++w) {
    threads.emplace_back([&, w] {
      for (std::size_t i = 0; i < texts.size(); ++i) {
        bad[static_cast<std::size_t>(w)] += fresh.encode(texts[(i + static_cast<std::size_t>(w) * 97) % texts.size()], false) !=
                                            expected[(i + static_cast<std::size_t>(w) * 97) % texts.size()];
      }
    });
  }
  for (auto& th : threads) {
    th.join();
  }
  CHECK(bad == std::vector<int>(4, 0));
}
