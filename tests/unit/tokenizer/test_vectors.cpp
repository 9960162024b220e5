// SPDX-License-Identifier: Apache-2.0
// llama.cpp (models/ggml-vocab-*.gguf.inp/.out) and ggml (examples/prompts/*.txt) tokenizer test vectors.
// qprob does not read GGUF vocabularies, so each vector set runs against the shared tokenizer folder with the
// same vocabulary; sets whose vocabulary exists nowhere here are listed, with the reason, in `k_unrunnable`
// (docs/tokenizers.md has the same table). The vectors were generated with add_special_tokens=False.

#include <qprob/tokenizer/tokenizer.hpp>

#include "reference_check.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace {

using qprob::test::ids_text;
using qprob::test::shared_path;

std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct vector_case {
  std::string text;
  std::vector<std::int32_t> ids;
};

// .inp: texts each followed by "\n__ggml_vocab_test__\n"; .out: one line of space-separated ids per text.
std::vector<vector_case> read_llama_cpp(const std::filesystem::path& inp, const std::filesystem::path& out) {
  const std::string sep = "\n__ggml_vocab_test__\n";
  const std::string in_text = slurp(inp);
  std::vector<std::string> texts;
  for (std::size_t pos = 0; pos < in_text.size();) {
    const std::size_t at = in_text.find(sep, pos);
    REQUIRE_MESSAGE(at != std::string::npos, inp.string(), ": text without separator at byte ", pos);
    texts.push_back(in_text.substr(pos, at - pos));
    pos = at + sep.size();
  }
  std::istringstream lines(slurp(out));
  std::vector<vector_case> cases;
  std::string line;
  for (std::size_t i = 0; std::getline(lines, line); ++i) {
    REQUIRE_MESSAGE(i < texts.size(), out.string(), " has more lines than ", inp.string(), " has texts");
    std::istringstream ids(line);
    vector_case c{texts[i], {}};
    for (std::int32_t id = 0; ids >> id;) {
      c.ids.push_back(id);
    }
    cases.push_back(std::move(c));
  }
  REQUIRE_MESSAGE(cases.size() == texts.size(), out.string(), ": ", cases.size(), " lines for ", texts.size(), " texts");
  return cases;
}

// ggml examples/prompts/<model>.txt: "text => id,id,..." per line.
std::vector<vector_case> read_ggml(const std::filesystem::path& file) {
  std::istringstream lines(slurp(file));
  std::vector<vector_case> cases;
  std::string line;
  while (std::getline(lines, line)) {
    const std::size_t at = line.rfind(" => ");
    REQUIRE_MESSAGE(at != std::string::npos, file.string(), ": line without ' => ': ", line);
    vector_case c{line.substr(0, at), {}};
    std::string ids = line.substr(at + 4);
    std::replace(ids.begin(), ids.end(), ',', ' ');
    std::istringstream in(ids);
    for (std::int32_t id = 0; in >> id;) {
      c.ids.push_back(id);
    }
    cases.push_back(std::move(c));
  }
  return cases;
}

void run_cases(const std::vector<vector_case>& cases, const std::string& vectors, const std::string& folder) {
  std::string reason;
  const auto dir = shared_path("tokenizers/" + folder, &reason);
  if (!dir) {
    MESSAGE(reason);
    return;
  }
  const auto tok = qprob::tokenizer::from_directory(*dir);
  std::size_t mismatches = 0;
  for (const vector_case& c : cases) {
    const auto ids = tok.encode(c.text, false);
    if (ids != c.ids) {
      ++mismatches;
      if (mismatches <= 5) {
        INFO("text=", nlohmann::json(c.text).dump(), "\n  expected ", ids_text(c.ids), "\n  got      ", ids_text(ids));
        CHECK_MESSAGE(false, vectors, " mismatch with ", folder);
      }
    }
  }
  MESSAGE(vectors, " against ", folder, ": checked ", cases.size(), " texts, ", mismatches, " mismatches");
  CHECK(!cases.empty());
  CHECK(mismatches == 0);
}

void run_llama_cpp(const std::string& vocab, const std::string& folder) {
  std::string reason;
  const auto dir = shared_path("tokenizers/llama.cpp-vectors", &reason);
  if (!dir) {
    MESSAGE(reason);
    return;
  }
  const auto base = *dir / ("ggml-vocab-" + vocab + ".gguf");
  run_cases(read_llama_cpp(base.string() + ".inp", base.string() + ".out"), "llama.cpp " + vocab, folder);
}

void run_ggml(const std::string& name, const std::string& folder) {
  std::string reason;
  const auto file = shared_path("tokenizers/ggml-vectors/" + name + ".txt", &reason);
  if (!file) {
    MESSAGE(reason);
    return;
  }
  run_cases(read_ggml(*file), "ggml " + name, folder);
}

// Vector sets that map onto a shared tokenizer folder with the same vocabulary.
const std::map<std::string, std::string> k_runnable = {
    {"gpt-2", "gpt2"},
    {"mpt", "gpt-neox-20b"},  // MPT ships the GPT-NeoX-20B tokenizer
    {"llama-spm", "llama2-32k-sentencepiece"},
    {"phi-3", "llama2-32k-sentencepiece"},  // Llama-2 SentencePiece vocabulary (+ chat tokens unused here)
};

// Vector sets with no vocabulary here (the .gguf is absent or GGUF, which qprob does not read, and no
// tokenizer folder holds the same vocabulary).
const std::map<std::string, std::string> k_unrunnable = {
    {"bert-bge", "WordPiece vocabulary: neither present nor a supported model type"},
    {"chameleon", "no vocabulary (the .gguf was never committed)"},
    {"command-r", "no vocabulary (.gguf over the snapshot's size limit)"},
    {"deepseek-coder", "no vocabulary present"},
    {"deepseek-llm", "no vocabulary present"},
    {"deepseek-r1-qwen", "no vocabulary (the .gguf was never committed)"},
    {"falcon", "vocabulary only as GGUF (qprob reads tokenizer.json / vocab.json / tokenizer.model)"},
    {"llama-bpe", "Llama-3 vocabulary absent (.gguf over the snapshot's size limit)"},
    {"qwen2", "no vocabulary (.gguf over the snapshot's size limit)"},
    {"refact", "no vocabulary present"},
    {"roberta-bpe", "RoBERTa/OPT ids: no vocab.json with fairseq ids is present"},
    {"starcoder", "no vocabulary present"},
};

}  // namespace

TEST_CASE("llama.cpp gpt-2 vectors match the gpt2 tokenizer") { run_llama_cpp("gpt-2", k_runnable.at("gpt-2")); }

TEST_CASE("llama.cpp mpt vectors match the gpt-neox-20b tokenizer") { run_llama_cpp("mpt", k_runnable.at("mpt")); }

TEST_CASE("llama.cpp llama-spm vectors match the Llama-2 tokenizer.model") {
  run_llama_cpp("llama-spm", k_runnable.at("llama-spm"));
}

TEST_CASE("llama.cpp phi-3 vectors match the Llama-2 tokenizer.model") { run_llama_cpp("phi-3", k_runnable.at("phi-3")); }

TEST_CASE("ggml gpt-2 prompts match the gpt2 tokenizer") { run_ggml("gpt-2", "gpt2"); }

TEST_CASE("ggml gpt-neox prompts match the gpt-neox-20b tokenizer") { run_ggml("gpt-neox", "gpt-neox-20b"); }

TEST_CASE("every llama.cpp vector set is either run or listed with the reason it cannot be") {
  std::string reason;
  const auto dir = shared_path("tokenizers/llama.cpp-vectors", &reason);
  if (!dir) {
    MESSAGE(reason);
    return;
  }
  std::size_t sets = 0;
  for (const auto& entry : std::filesystem::directory_iterator(*dir)) {
    const std::string name = entry.path().filename().string();
    const std::string prefix = "ggml-vocab-";
    const std::string suffix = ".gguf.out";
    if (!name.starts_with(prefix) || !name.ends_with(suffix)) {
      continue;
    }
    ++sets;
    const std::string vocab = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
    INFO("vector set ", vocab);
    CHECK((k_runnable.contains(vocab) || k_unrunnable.contains(vocab)));
  }
  MESSAGE(sets, " vector sets: ", k_runnable.size(), " run, ", k_unrunnable.size(), " without a vocabulary here");
  CHECK(sets == k_runnable.size() + k_unrunnable.size());
}
