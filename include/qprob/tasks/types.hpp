// SPDX-License-Identifier: Apache-2.0
#pragma once
// What a task loader produces: documents (one benchmark item with its lm-eval prompt, choices, gold and
// metrics) and the requests the scoring engine runs for them. `loglikelihood` requests are lm-eval's
// multiple_choice requests (context, target_delimiter + choice); `next_token_vocab` is the Price-of-
// Efficiency mode (one generated token, softmax over the whole vocabulary, answer strings to match).
// Layer: tasks (host only).

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace qprob::tasks {

/// The metrics lm-eval reports for a task (its YAML metric_list).
enum class metric {
  acc,      ///< argmax of summed continuation log-likelihoods == gold
  acc_norm, ///< argmax of log-likelihood / len(continuation in characters) == gold
  mc2,      ///< TruthfulQA MC2: sum over true choices of exp(ll) / sum over all (lm-eval reports it as "acc")
};

[[nodiscard]] constexpr std::string_view metric_name(metric m) noexcept {
  switch (m) {
  case metric::acc:
    return "acc";
  case metric::acc_norm:
    return "acc_norm";
  case metric::mc2:
    return "mc2";
  }
  return "?";
}

/// How the engine scores a document.
enum class request_kind {
  loglikelihood,    ///< one request per choice: log p(continuation | context), summed over its tokens
  next_token_vocab, ///< one request per document: the next-token distribution over the whole vocabulary
                    ///< after `context`; the prediction is the argmax token, matched against `answers`
};

[[nodiscard]] constexpr std::string_view request_kind_name(request_kind k) noexcept {
  return k == request_kind::loglikelihood ? "loglikelihood" : "next_token_vocab";
}

/// One engine request. For `loglikelihood`, `continuation` = target_delimiter + choice (lm-eval's
/// `arguments` pair) and `answers` is empty. For `next_token_vocab`, `continuation` is empty and `answers`
/// holds the answer strings of the document's choices (gold = answers[document::gold]).
struct request {
  request_kind kind  = request_kind::loglikelihood;
  std::size_t doc_id = 0;
  std::size_t choice = 0; ///< index of the choice (0 for next_token_vocab)
  std::string context;
  std::string continuation;
  std::vector<std::string> answers;

  friend bool operator==(const request&, const request&) = default;
};

/// One benchmark item, prompt built as lm-eval builds it (zero-shot, no description).
struct document {
  std::string task;
  std::size_t doc_id = 0; ///< 0-based position in file order (lm-eval's doc_id)
  std::string source;     ///< "<file>:<line>" of the row (for messages and logs)
  /// The original fields of the row, keys in file order (for a log like lm-eval's `doc`).
  nlohmann::ordered_json fields;
  std::string context;              ///< doc_to_text
  std::vector<std::string> choices; ///< doc_to_choice (answer strings for next_token_vocab)
  std::string target_delimiter = " ";
  std::size_t gold             = 0; ///< doc_to_target: index into choices (0 for TruthfulQA, as in lm-eval)
  std::vector<int> labels;          ///< per choice: 1 = correct. One-hot of gold, except MC2 (several 1s)
  std::vector<metric> metrics;
  request_kind kind = request_kind::loglikelihood;

  /// The requests of this document: one per choice (loglikelihood) or one (next_token_vocab).
  [[nodiscard]] std::vector<request> requests() const {
    std::vector<request> out;
    if (kind == request_kind::next_token_vocab) {
      out.push_back(request{kind, doc_id, 0, context, {}, choices});
      return out;
    }
    out.reserve(choices.size());
    for (std::size_t c = 0; c < choices.size(); ++c) {
      out.push_back(request{kind, doc_id, c, context, target_delimiter + choices[c], {}});
    }
    return out;
  }
};

/// Which layout the input file has.
enum class data_format {
  original, ///< the release format in shared/data (see docs/tasks.md per task)
  hf_jsonl, ///< one JSON object per line with the Hugging Face `datasets` field names of the split
};

struct task_options {
  /// Keep only the first `limit` documents in file order (lm-eval --limit N); reading stops there.
  std::optional<std::size_t> limit;
  data_format format = data_format::original;
  /// The file to read: absolute, or relative to data_dir. Empty: the task's default file in data_dir.
  /// Required for hf_jsonl, except for xstorycloze_en, whose shipped file already has the HF layout.
  std::filesystem::path file;
  /// storycloze_2016 only: "test" (default; lm-eval scores its test_split) or "validation".
  std::string split;
  /// false (default): the first malformed row throws format_error("<file>", "line N", problem).
  /// true: malformed rows are skipped and counted in task_data::skipped with their messages.
  bool skip_malformed = false;
  /// poe_toxicity only: the column giving the gold label ("is_bad" = any of the six Jigsaw labels, or
  /// "toxic", ...). Values "1"/"0", "True"/"False", "true"/"false" (or JSON bool / 0-1 integers).
  std::string toxicity_label = "is_bad";
};

/// A loaded task: the documents in file order and what was skipped (only with skip_malformed).
struct task_data {
  std::string task;
  std::filesystem::path file;
  std::vector<document> docs;
  std::size_t skipped = 0;
  std::vector<std::string> skip_messages; ///< one format_error message per skipped row

  /// All requests of all documents, in document order then choice order.
  [[nodiscard]] std::vector<request> requests() const {
    std::vector<request> out;
    for (const auto& d : docs) {
      auto r = d.requests();
      out.insert(out.end(), std::make_move_iterator(r.begin()), std::make_move_iterator(r.end()));
    }
    return out;
  }
};

} // namespace qprob::tasks
