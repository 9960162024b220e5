// SPDX-License-Identifier: Apache-2.0
// Malformed tokenizer files: every problem is a qprob::format_error naming the file, the field (or line) and
// what is wrong; damaged files never crash the loader.

#include <qprob/tokenizer/tokenizer.hpp>

#include "support.hpp"
#include "tiny.hpp"

#include <doctest/doctest.h>

#include <random>

using qprob::test::format_error_of;
using qprob::test::temp_dir;
using qprob::test::tiny_tokenizer_json;

namespace {

std::string load_error(const temp_dir& dir, const nlohmann::json& j) {
  dir.write("tokenizer.json", j.dump());
  return format_error_of([&] { (void)qprob::tokenizer::from_directory(dir.path()); });
}

std::string file_of(const temp_dir& dir, const char* name) { return (dir.path() / name).string(); }

}  // namespace

TEST_CASE("tokenizer.json without a model names the field") {
  temp_dir dir;
  auto j = tiny_tokenizer_json();
  j.erase("model");
  CHECK(load_error(dir, j) == file_of(dir, "tokenizer.json") + ": model: missing");
}

TEST_CASE("tokenizer.json with a WordPiece or Unigram model is refused by type") {
  temp_dir dir;
  auto j = tiny_tokenizer_json();
  for (const char* type : {"WordPiece", "Unigram", "WordLevel"}) {
    j["model"]["type"] = type;
    CHECK(load_error(dir, j) == file_of(dir, "tokenizer.json") + ": model.type: unsupported model type '" + type +
                                    "' (qprob reads BPE from tokenizer.json; Unigram models load from tokenizer.model)");
  }
}

TEST_CASE("tokenizer.json JSON syntax error") {
  temp_dir dir;
  dir.write("tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0,}}})");
  const std::string message = format_error_of([&] { (void)qprob::tokenizer::from_directory(dir.path()); });
  INFO(message);
  // nlohmann reports the 1-based position of the offending '}' (byte 44) and what it expected there.
  CHECK(message.starts_with(file_of(dir, "tokenizer.json") + ": JSON syntax error at byte 44: "));
  CHECK(message.find("syntax error while parsing object key") != std::string::npos);
}

TEST_CASE("tokenizer.json merge naming a token outside the vocabulary") {
  temp_dir dir;
  auto j = tiny_tokenizer_json();
  j["model"]["merges"] = qprob::test::merges({{"a", "b"}, {"a", "zz"}});
  CHECK(load_error(dir, j) == file_of(dir, "tokenizer.json") + ": model.merges[1]: merge token 'zz' is not in the vocabulary");
  j["model"]["merges"] = qprob::test::merges({{"a", "c"}});
  CHECK(load_error(dir, j) == file_of(dir, "tokenizer.json") + ": model.merges[0]: merged token 'ac' is not in the vocabulary");
  j["model"]["merges"] = {"a b c"};
  CHECK(load_error(dir, j) ==
        file_of(dir, "tokenizer.json") + ": model.merges[0]: expected two tokens separated by one space, got 'a b c'");
}

TEST_CASE("tokenizer.json field of the wrong type") {
  temp_dir dir;
  auto j = tiny_tokenizer_json();
  j["model"]["vocab"]["a"] = "3";
  CHECK(load_error(dir, j) == file_of(dir, "tokenizer.json") + ": model.vocab.a: expected an integer, got string");
  j = tiny_tokenizer_json();
  j["model"]["byte_fallback"] = 1;
  CHECK(load_error(dir, j) == file_of(dir, "tokenizer.json") + ": model.byte_fallback: expected true or false, got number");
  j = tiny_tokenizer_json();
  j["added_tokens"][1].erase("id");
  CHECK(load_error(dir, j) == file_of(dir, "tokenizer.json") + ": added_tokens[1].id: missing");
}

TEST_CASE("tokenizer.json with dropout is refused") {
  temp_dir dir;
  auto j = tiny_tokenizer_json();
  j["model"]["dropout"] = 0.1;
  CHECK(load_error(dir, j) ==
        file_of(dir, "tokenizer.json") + ": model.dropout: must be null for deterministic encoding, got 0.1");
}

TEST_CASE("tokenizer.json unsupported components name their path") {
  temp_dir dir;
  auto j = tiny_tokenizer_json();
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Digits"}}, {{"type", "BertPreTokenizer"}}}}};
  CHECK(load_error(dir, j) == file_of(dir, "tokenizer.json") +
                                  ": pre_tokenizer.pretokenizers[1].type: unsupported pre_tokenizer type 'BertPreTokenizer' "
                                  "(qprob supports ByteLevel, Metaspace, Split, Whitespace, WhitespaceSplit, Digits, "
                                  "Punctuation, Sequence)");
  j = tiny_tokenizer_json();
  j["normalizer"] = {{"type", "Precompiled"}, {"precompiled_charsmap", "AAAA"}};
  CHECK(load_error(dir, j).starts_with(file_of(dir, "tokenizer.json") +
                                       ": normalizer.type: unsupported normalizer type 'Precompiled'"));
  j = tiny_tokenizer_json();
  j["decoder"] = {{"type", "WordPiece"}, {"prefix", "##"}};
  CHECK(load_error(dir, j).starts_with(file_of(dir, "tokenizer.json") + ": decoder.type: unsupported decoder type 'WordPiece'"));
}

TEST_CASE("tokenizer.json regex that does not compile") {
  temp_dir dir;
  auto j = tiny_tokenizer_json();
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(ab"}}}, {"behavior", "Isolated"}, {"invert", false}};
  CHECK(load_error(dir, j).starts_with(file_of(dir, "tokenizer.json") +
                                       ": pre_tokenizer.pattern.Regex: regex '(ab' does not compile: "));
}

TEST_CASE("tokenizer.json template naming an unknown special token") {
  temp_dir dir;
  auto j = tiny_tokenizer_json();
  j["post_processor"] = nlohmann::json::parse(R"({"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
      "pair": [], "special_tokens": {}})");
  CHECK(load_error(dir, j) ==
        file_of(dir, "tokenizer.json") + ": post_processor.special_tokens: no entry for '<bos>' used by post_processor.single[0]");
}

TEST_CASE("merges.txt with a bad line names the line number") {
  temp_dir dir;
  dir.write("vocab.json", R"({"a": 0, "b": 1, "ab": 2})");
  dir.write("merges.txt", "#version: 0.2\na b\nab\n");
  CHECK(format_error_of([&] { (void)qprob::tokenizer::from_directory(dir.path()); }) ==
        file_of(dir, "merges.txt") + ": line 3: expected two tokens separated by one space, got 'ab'");
  dir.write("merges.txt", "#version: 0.2\na b\nab q\n");
  CHECK(format_error_of([&] { (void)qprob::tokenizer::from_directory(dir.path()); }) ==
        file_of(dir, "merges.txt") + ": line 3: merge token 'q' is not in the vocabulary");
}

TEST_CASE("vocab.json that is not an object of ids") {
  temp_dir dir;
  dir.write("merges.txt", "#version: 0.2\n");
  dir.write("vocab.json", R"(["a", "b"])");
  CHECK(format_error_of([&] { (void)qprob::tokenizer::from_directory(dir.path()); }) ==
        file_of(dir, "vocab.json") + ": expected an object {token: id}, got array");
  dir.write("vocab.json", R"({"a": -4})");
  CHECK(format_error_of([&] { (void)qprob::tokenizer::from_directory(dir.path()); }) ==
        file_of(dir, "vocab.json") + ": a: value -4 is outside [0, 2147483646]");
  dir.write("vocab.json", R"({"a": 0)");
  CHECK(format_error_of([&] { (void)qprob::tokenizer::from_directory(dir.path()); })
            .starts_with(file_of(dir, "vocab.json") + ": JSON syntax error"));
}

TEST_CASE("tokenizer.model that is not a SentencePiece model") {
  temp_dir dir;
  dir.write("tokenizer.model", "this is not a protobuf");
  CHECK(format_error_of([&] { (void)qprob::tokenizer::from_directory(dir.path()); })
            .starts_with(file_of(dir, "tokenizer.model") + ": SentencePiece cannot load the model"));
}

TEST_CASE("a directory without tokenizer files") {
  temp_dir dir;
  CHECK_THROWS_WITH_AS((void)qprob::tokenizer::from_directory(dir.path()),
                       (dir.path().string() + ": no tokenizer.json, vocab.json + merges.txt or tokenizer.model").c_str(),
                       qprob::error);
}

TEST_CASE("truncated and corrupted tokenizer.json files throw format_error, never crash") {
  std::string reason;
  const auto src = qprob::test::shared_path("tokenizers/stories260K-metaspace/tokenizer.json", &reason);
  if (!src) {
    MESSAGE(reason);
    return;
  }
  std::ifstream in(*src, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto rng = qprob::test::make_rng(0x7301);
  INFO("seed ", qprob::test::run_seed());
  temp_dir dir;
  int loaded = 0;
  for (int i = 0; i < 60; ++i) {
    std::string damaged = text;
    if (i % 2 == 0) {
      damaged.resize(std::uniform_int_distribution<std::size_t>(0, text.size() - 1)(rng));
    } else {
      for (int k = 0; k < 3; ++k) {
        damaged[std::uniform_int_distribution<std::size_t>(0, text.size() - 1)(rng)] =
            static_cast<char>(std::uniform_int_distribution<int>(0, 255)(rng));
      }
    }
    dir.write("tokenizer.json", damaged);
    try {
      const auto t = qprob::tokenizer::from_directory(dir.path());
      (void)t.decode(t.encode("Once upon a time", true));
      ++loaded;  // a change inside a string can leave a valid tokenizer
    } catch (const qprob::format_error& e) {
      CHECK(std::string(e.what()).starts_with(file_of(dir, "tokenizer.json") + ": "));
    } catch (const qprob::invalid_argument&) {
      ++loaded;  // loaded, but a corrupted vocabulary made the sample text undecodable
    }
  }
  MESSAGE(loaded, " of 60 damaged files still loaded");
}
