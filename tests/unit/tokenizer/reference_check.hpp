// SPDX-License-Identifier: Apache-2.0
#pragma once
// Replays a reference_encodings.jsonl ({"text", "add_special_tokens", "ids", "decoded"} per line, produced
// by Hugging Face `tokenizers` 0.23.2 or SentencePiece) against qprob::tokenizer.

#include <qprob/tokenizer/tokenizer.hpp>

#include "support.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace qprob::test {

struct reference_result {
  std::size_t lines = 0;
  std::size_t checked = 0;
  std::size_t id_mismatches = 0;
  std::size_t decode_mismatches = 0;
  std::vector<std::string> first_failures;
};

inline std::string ids_text(const std::vector<std::int32_t>& ids) {
  std::ostringstream out;
  out << '[';
  for (std::size_t i = 0; i < ids.size(); ++i) {
    out << (i ? "," : "") << ids[i];
  }
  out << ']';
  return out.str();
}

inline reference_result replay_reference(const qprob::tokenizer& tok, const std::filesystem::path& jsonl) {
  reference_result r;
  std::ifstream in(jsonl);
  REQUIRE_MESSAGE(in.good(), "cannot open ", jsonl.string());
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) {
      continue;
    }
    ++r.lines;
    const auto j = nlohmann::json::parse(line);
    const std::string text = j.at("text").get<std::string>();
    const bool add_special = j.at("add_special_tokens").get<bool>();
    const auto expected = j.at("ids").get<std::vector<std::int32_t>>();
    const std::string decoded = j.at("decoded").get<std::string>();
    const auto ids = tok.encode(text, add_special);
    const std::string text_back = tok.decode(expected, false);
    ++r.checked;
    if (ids != expected) {
      ++r.id_mismatches;
      if (r.first_failures.size() < 5) {
        r.first_failures.push_back("line " + std::to_string(r.lines) + " ids (add_special_tokens=" +
                                   (add_special ? "true" : "false") + ") text=" + nlohmann::json(text).dump() +
                                   "\n  expected " + ids_text(expected) + "\n  got      " + ids_text(ids));
      }
    }
    if (text_back != decoded) {
      ++r.decode_mismatches;
      if (r.first_failures.size() < 5) {
        r.first_failures.push_back("line " + std::to_string(r.lines) + " decode text=" + nlohmann::json(text).dump() +
                                   "\n  expected " + nlohmann::json(decoded).dump() + "\n  got      " +
                                   nlohmann::json(text_back).dump());
      }
    }
  }
  return r;
}

/// Loads `folder` (under shared/tokenizers) in `format` and requires every line of its reference file to match.
inline void check_reference_folder(const std::string& folder,
                                   qprob::tokenizer_format format = qprob::tokenizer_format::automatic) {
  std::string reason;
  const auto dir = shared_path("tokenizers/" + folder, &reason);
  if (!dir) {
    MESSAGE(reason);
    return;
  }
  const auto jsonl = *dir / "reference_encodings.jsonl";
  if (!std::filesystem::exists(jsonl)) {  // a partial copy of the folder (tools/stage-gpu.sh copies only what runs need)
    MESSAGE("skipped: ", jsonl.string(), " is absent (the tokenizer files alone were copied there)");
    return;
  }
  const auto tok = qprob::tokenizer::from_directory(*dir, format);
  const reference_result r = replay_reference(tok, jsonl);
  for (const std::string& f : r.first_failures) {
    INFO(f);
    CHECK_MESSAGE(false, "mismatch in ", folder);
  }
  MESSAGE(folder, ": checked ", r.checked, " of ", r.lines, " lines; id mismatches ", r.id_mismatches,
          ", decode mismatches ", r.decode_mismatches);
  CHECK(r.lines > 0);
  CHECK(r.checked == r.lines);
  CHECK(r.id_mismatches == 0);
  CHECK(r.decode_mismatches == 0);
}

}  // namespace qprob::test
