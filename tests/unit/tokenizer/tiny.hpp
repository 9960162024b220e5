// SPDX-License-Identifier: Apache-2.0
#pragma once
// Small hand-written tokenizer directories for focused tests: written to a fresh temporary folder, removed
// when the object goes out of scope.

#include <qprob/core/error.hpp>
#include <qprob/tokenizer/tokenizer.hpp>

#include "support.hpp"

#include <nlohmann/json.hpp>

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

namespace qprob::test {

class temp_dir {
public:
  temp_dir() {
    // Unique per process and object, so tests that ctest runs in parallel never share a folder.
    static std::atomic<unsigned> counter{0};
    auto rng = make_rng(0x70c0);
    path_ = std::filesystem::temp_directory_path() /
            ("qprob_tok_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" + std::to_string(rng() % 100000));
    std::filesystem::create_directories(path_);
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  [[nodiscard]] const std::filesystem::path& path() const { return path_; }
  void write(const std::string& name, const std::string& text) const {
    std::ofstream out(path_ / name, std::ios::binary);
    out << text;
  }

private:
  std::filesystem::path path_;
};

/// A BPE tokenizer.json over a, b, c with merges "a b" (rank 0) and "ab c" (rank 1); callers edit it.
inline nlohmann::json tiny_tokenizer_json() {
  return nlohmann::json::parse(R"({
    "version": "1.0",
    "added_tokens": [{"id": 0, "content": "<unk>", "special": true, "normalized": false,
                      "single_word": false, "lstrip": false, "rstrip": false},
                     {"id": 1, "content": "<s>", "special": true, "normalized": false,
                      "single_word": false, "lstrip": false, "rstrip": false},
                     {"id": 2, "content": "</s>", "special": true, "normalized": false,
                      "single_word": false, "lstrip": false, "rstrip": false}],
    "normalizer": null,
    "pre_tokenizer": null,
    "post_processor": null,
    "decoder": {"type": "Fuse"},
    "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
              "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
              "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3, "b": 4, "c": 5, "ab": 6, "abc": 7, "bc": 8, " ": 9},
              "merges": [["a", "b"], ["ab", "c"], ["b", "c"]]}
  })");
}

/// A JSON merges list [["a", "b"], ...] (brace lists of pairs would otherwise read as an object).
inline nlohmann::json merges(std::initializer_list<std::pair<const char*, const char*>> pairs) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& [a, b] : pairs) {
    out.push_back(nlohmann::json::array({a, b}));
  }
  return out;
}

/// Writes `j` as tokenizer.json into `dir` and loads it.
inline qprob::tokenizer load_json(const temp_dir& dir, const nlohmann::json& j) {
  dir.write("tokenizer.json", j.dump());
  return qprob::tokenizer::from_directory(dir.path());
}

/// The message of the qprob::format_error that `f` throws ("" if it throws nothing; other exceptions escape).
inline std::string format_error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const qprob::format_error& e) {
    return e.what();
  }
  return "";
}

}  // namespace qprob::test
