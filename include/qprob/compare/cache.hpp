// SPDX-License-Identifier: Apache-2.0
#pragma once
// The result cache of `qprob compare`: what a rerun may reuse, and how it knows the file is still valid.
//
// Identity of a model directory (file_set_hash): sha256 over its regular files (not recursive, hidden files
// skipped), sorted by name, each contributing "name\0size\0" and then
//   * its whole contents when it is at most full_hash_limit (64 MiB), else
//   * its first and last MiB and its mtime (seconds) -- a cheap fingerprint for multi-GB checkpoints; a file
//     rewritten in place with the same size, head, tail and mtime would go unnoticed.
// stories260K (1 MiB) is therefore hashed byte for byte.
//
// An evaluation cache file <out>/cache/eval-<key>.json holds one task's eval_result (per document and choice:
// loglik, is_greedy, token and character counts; per next-token document: the generated token, its
// log-probability, the full-vocabulary entropy and the decoded text, from which correctness is recomputed). key = sha256 of the canonical JSON of its key material
// (model identity, task name and data-file identity, limit, scorer, max_length, encode options, qprob version).
// The file stores the key material, the payload and the sha256 of the payload's JSON text; a file that does
// not parse, has another key, a wrong checksum, or documents that do not match the task is ignored (with the
// reason) and recomputed, never trusted. Files are written atomically (io/atomic_file.hpp).
// Layer: compare (host only).

#include <qprob/core/error.hpp>
#include <qprob/eval/evaluate.hpp>
#include <qprob/eval/python_json.hpp>
#include <qprob/io/atomic_file.hpp>
#include <qprob/tasks/types.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace qprob::compare {

inline constexpr std::uintmax_t full_hash_limit = 64ull << 20;
inline constexpr std::string_view eval_cache_format = "qprob-compare-eval-cache/1";

namespace cache_detail {

inline std::string read_range(const std::filesystem::path& p, std::uintmax_t offset, std::uintmax_t n) {
  std::ifstream in(p, std::ios::binary);
  if (!in) {
    throw format_error(p.string(), "", "cannot open for hashing");
  }
  in.seekg(static_cast<std::streamoff>(offset));
  std::string s(static_cast<std::size_t>(n), '\0');
  in.read(s.data(), static_cast<std::streamsize>(n));
  s.resize(static_cast<std::size_t>(in.gcount()));
  return s;
}

}  // namespace cache_detail

/// sha256 identity of one file (whole contents up to full_hash_limit, else size + head/tail MiB + mtime).
[[nodiscard]] inline std::string file_hash(const std::filesystem::path& p) {
  const auto size = std::filesystem::file_size(p);
  std::string material = std::to_string(size) + '\0';
  if (size <= full_hash_limit) {
    material += cache_detail::read_range(p, 0, size);
  } else {
    constexpr std::uintmax_t mib = 1u << 20;
    material += cache_detail::read_range(p, 0, mib);
    material += cache_detail::read_range(p, size - mib, mib);
    const auto t = std::filesystem::last_write_time(p).time_since_epoch();
    material += '\0';
    material += std::to_string(std::chrono::duration_cast<std::chrono::seconds>(t).count());
  }
  return eval::sha256_hex(material);
}

/// sha256 identity of a directory's regular files (see the header comment).
[[nodiscard]] inline std::string file_set_hash(const std::filesystem::path& dir) {
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.is_regular_file() && e.path().filename().string().rfind('.', 0) != 0) {
      files.push_back(e.path());
    }
  }
  std::sort(files.begin(), files.end());
  std::string material;
  for (const auto& f : files) {
    material += f.filename().string() + '\0' + file_hash(f) + '\n';
  }
  return eval::sha256_hex(material);
}

/// The key of a cache entry: sha256 of the canonical (sorted keys, compact) JSON of `material`.
[[nodiscard]] inline std::string cache_key(const nlohmann::json& material) { return eval::sha256_hex(material.dump()); }

/// The payload of an evaluation cache file: per document "choices" [[loglik, is_greedy, num_tokens, char_len], ...]
/// (loglikelihood) or "next" [token, logprob, entropy, text] (next_token_vocab).
[[nodiscard]] inline nlohmann::json eval_payload(const eval::eval_result& r) {
  nlohmann::json docs = nlohmann::json::array();
  for (const auto& d : r.docs) {
    if (d.kind == tasks::request_kind::next_token_vocab) {
      docs.push_back({{"doc_id", d.doc_id}, {"next", {d.next.token, d.next.logprob, d.next.entropy, d.next_text}}});
      continue;
    }
    nlohmann::json ch = nlohmann::json::array();
    for (const auto& c : d.choices) {
      ch.push_back({c.loglik, c.is_greedy, c.num_tokens, c.char_len});
    }
    docs.push_back({{"doc_id", d.doc_id}, {"choices", std::move(ch)}});
  }
  return {{"task", r.task}, {"scorer", r.scorer}, {"requests", r.requests}, {"docs", std::move(docs)}};
}

/// Writes an evaluation cache file atomically.
inline void write_eval_cache(const std::filesystem::path& path, const nlohmann::json& key_material,
                             const eval::eval_result& r) {
  const auto payload = eval_payload(r);
  nlohmann::json doc;
  doc["format"]         = eval_cache_format;
  doc["key"]            = cache_key(key_material);
  doc["key_material"]   = key_material;
  doc["payload_sha256"] = eval::sha256_hex(payload.dump());
  doc["payload"]        = payload;
  io::write_file_atomic(path, doc.dump() + "\n");
}

/// Reads an evaluation cache file written for `key_material` and the first `n` documents of `task`. Returns
/// nullopt, with the reason in *why, when the file is absent, unreadable, truncated, altered or for other inputs.
[[nodiscard]] inline std::optional<eval::eval_result> read_eval_cache(const std::filesystem::path& path,
                                                                      const nlohmann::json& key_material,
                                                                      const tasks::task_data& task, std::size_t n,
                                                                      std::string* why) {
  const auto fail = [&](std::string reason) -> std::optional<eval::eval_result> {
    if (why != nullptr) {
      *why = std::move(reason);
    }
    return std::nullopt;
  };
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return fail("absent");
  }
  try {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    const auto doc = nlohmann::json::parse(ss.str());
    if (doc.value("format", "") != eval_cache_format) {
      return fail("not a " + std::string(eval_cache_format) + " file");
    }
    if (doc.at("key").get<std::string>() != cache_key(key_material) || doc.at("key_material") != key_material) {
      return fail("written for other inputs (key differs)");
    }
    const auto& payload = doc.at("payload");
    if (doc.at("payload_sha256").get<std::string>() != eval::sha256_hex(payload.dump())) {
      return fail("checksum mismatch (the file was altered)");
    }
    eval::eval_result r;
    r.task     = payload.at("task").get<std::string>();
    r.scorer   = payload.at("scorer").get<std::string>();
    r.requests = payload.at("requests").get<std::size_t>();
    const auto& docs = payload.at("docs");
    if (r.task != task.task || docs.size() != n || n > task.docs.size()) {
      return fail("holds " + std::to_string(docs.size()) + " documents of \"" + r.task + "\", expected " +
                  std::to_string(n) + " of \"" + task.task + "\"");
    }
    std::size_t requests = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const auto& d  = docs[i];
      const auto& td = task.docs[i];
      eval::doc_result dr;
      dr.doc_id = d.at("doc_id").get<std::size_t>();
      dr.kind   = td.kind;
      if (dr.doc_id != td.doc_id || d.contains("next") != (td.kind == tasks::request_kind::next_token_vocab)) {
        return fail("document " + std::to_string(i) + " does not match the task data");
      }
      if (td.kind == tasks::request_kind::next_token_vocab) {
        const auto& nx     = d.at("next");
        dr.next.token      = nx.at(0).get<eval::token_id>();
        dr.next.logprob    = nx.at(1).get<double>();
        dr.next.entropy    = nx.at(2).get<double>();
        dr.next_text       = nx.at(3).get<std::string>();
        if (nx.size() != 4 || dr.next.token < 0 || !std::isfinite(dr.next.logprob) || dr.next.logprob > 0 ||
            !std::isfinite(dr.next.entropy) || dr.next.entropy < 0) {
          return fail("document " + std::to_string(i) + " has an impossible value");
        }
        // Correctness is a function of the text and the task's answers: recomputed, not stored.
        dr.next_correct = td.gold < td.choices.size() && eval::next_token_matches(dr.next_text, td.choices[td.gold]);
        r.docs.push_back(std::move(dr));
        ++requests;
        continue;
      }
      if (d.at("choices").size() != td.choices.size()) {
        return fail("document " + std::to_string(i) + " does not match the task data");
      }
      for (const auto& c : d.at("choices")) {
        eval::choice_result cr;
        cr.loglik     = c.at(0).get<double>();
        cr.is_greedy  = c.at(1).get<bool>();
        cr.num_tokens = c.at(2).get<std::int32_t>();
        cr.char_len   = c.at(3).get<std::int32_t>();
        if (!std::isfinite(cr.loglik) || cr.loglik > 0 || cr.num_tokens <= 0) {
          return fail("document " + std::to_string(i) + " has an impossible value");
        }
        dr.choices.push_back(cr);
        ++requests;
      }
      r.docs.push_back(std::move(dr));
    }
    if (requests != r.requests) {
      return fail("request count mismatch");
    }
    return r;
  } catch (const std::exception& e) {
    return fail(std::string("unreadable: ") + e.what());
  }
}

}  // namespace qprob::compare
