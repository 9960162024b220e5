// SPDX-License-Identifier: Apache-2.0
#pragma once
// JSON Lines reading and typed field access for the task loaders. Every problem is a format_error naming the
// file, "line N" and what is wrong ("missing field \"answerKey\"", "field \"label\" is not a string"), so a
// malformed benchmark row is never silently dropped or mis-scored. Layer: tasks (host only).

#include <qprob/core/error.hpp>
#include <qprob/tasks/csv.hpp>
#include <qprob/tasks/text.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace qprob::tasks {

/// Where a row came from: the file and its position ("line 12" or "item 3"), for messages.
struct row_ref {
  std::string file;
  std::string position;

  [[noreturn]] void fail(const std::string& problem) const { throw format_error(file, position, problem); }
  [[nodiscard]] std::string source() const {
    const auto space = position.find(' ');
    return file + ":" + (space == std::string::npos ? position : position.substr(space + 1));
  }
};

[[nodiscard]] inline row_ref line_ref(const std::string& file, std::size_t line) {
  return row_ref{file, "line " + std::to_string(line)};
}

/// Calls `visit(object, ref)` for each non-blank line of a JSON Lines file, in order, until it returns
/// false. Whitespace-only lines are not rows and are passed over. A line that is not valid JSON or not an
/// object throws format_error with the line number (before `visit` sees it).
inline void for_each_jsonl(const std::filesystem::path& path,
                           const std::function<bool(const nlohmann::ordered_json&, const row_ref&)>& visit) {
  const std::string text = read_text_file(path);
  const std::string file = path.string();
  std::size_t line       = 0;
  std::size_t pos        = 0;
  while (pos < text.size()) {
    ++line;
    std::size_t end = text.find('\n', pos);
    if (end == std::string::npos) {
      end = text.size();
    }
    std::string_view content(text.data() + pos, end - pos);
    pos = end + 1;
    if (!content.empty() && content.back() == '\r') {
      content.remove_suffix(1);
    }
    if (python_strip(content).empty()) {
      continue;
    }
    const row_ref ref = line_ref(file, line);
    nlohmann::ordered_json row;
    try {
      row = nlohmann::ordered_json::parse(content);
    } catch (const nlohmann::json::exception& e) {
      ref.fail(std::string("invalid JSON: ") + e.what());
    }
    if (!row.is_object()) {
      ref.fail(std::string("expected a JSON object, found ") + row.type_name());
    }
    if (!visit(row, ref)) {
      return;
    }
  }
}

/// `obj[key]`, or format_error "missing field \"<path>\"" (`path` names nested fields, e.g. question.stem).
[[nodiscard]] inline const nlohmann::ordered_json& json_field(const nlohmann::ordered_json& obj,
                                                              std::string_view key,
                                                              const row_ref& ref,
                                                              std::string_view path = {}) {
  const std::string name(path.empty() ? key : path);
  if (!obj.is_object()) {
    ref.fail("field \"" + name + "\": parent is not an object");
  }
  const auto it = obj.find(std::string(key));
  if (it == obj.end()) {
    ref.fail("missing field \"" + name + "\"");
  }
  return *it;
}

[[nodiscard]] inline std::string json_string(const nlohmann::ordered_json& obj,
                                             std::string_view key,
                                             const row_ref& ref,
                                             std::string_view path = {}) {
  const auto& v = json_field(obj, key, ref, path);
  if (!v.is_string()) {
    ref.fail("field \"" + std::string(path.empty() ? key : path) + "\" is not a string (found "
             + v.type_name() + ")");
  }
  return v.get<std::string>();
}

/// A list of strings (e.g. choices.text).
[[nodiscard]] inline std::vector<std::string> json_strings(const nlohmann::ordered_json& obj,
                                                           std::string_view key,
                                                           const row_ref& ref,
                                                           std::string_view path = {}) {
  const std::string name(path.empty() ? key : path);
  const auto& v = json_field(obj, key, ref, path);
  if (!v.is_array()) {
    ref.fail("field \"" + name + "\" is not a list (found " + v.type_name() + ")");
  }
  std::vector<std::string> out;
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_string()) {
      ref.fail("field \"" + name + "\"[" + std::to_string(i) + "] is not a string");
    }
    out.push_back(v[i].get<std::string>());
  }
  return out;
}

/// An integer field (a JSON integer, or a string of decimal digits such as HellaSwag's "label": "3").
[[nodiscard]] inline std::int64_t json_int(const nlohmann::ordered_json& obj,
                                           std::string_view key,
                                           const row_ref& ref,
                                           std::string_view path = {}) {
  const std::string name(path.empty() ? key : path);
  const auto& v = json_field(obj, key, ref, path);
  if (v.is_number_integer()) {
    return v.get<std::int64_t>();
  }
  if (v.is_string()) {
    const auto s = v.get<std::string>();
    if (!s.empty() && s.size() < 18 && s.find_first_not_of("0123456789") == std::string::npos) {
      return std::stoll(s);
    }
  }
  ref.fail("field \"" + name + "\" is not an integer (found " + v.dump() + ")");
}

/// Parses a binary label spelled as text: "1"/"0", "true"/"false", "True"/"False".
[[nodiscard]] inline bool parse_bool_text(std::string_view s, const row_ref& ref, std::string_view name) {
  if (s == "1" || s == "true" || s == "True") {
    return true;
  }
  if (s == "0" || s == "false" || s == "False") {
    return false;
  }
  ref.fail("field \"" + std::string(name) + "\" must be true/false or 1/0, found \"" + std::string(s) + "\"");
}

/// A binary label: JSON bool, integer 0/1, or one of the strings parse_bool_text accepts.
[[nodiscard]] inline bool
json_bool(const nlohmann::ordered_json& obj, std::string_view key, const row_ref& ref) {
  const auto& v = json_field(obj, key, ref);
  if (v.is_boolean()) {
    return v.get<bool>();
  }
  if (v.is_number_integer()) {
    const auto i = v.get<std::int64_t>();
    if (i == 0 || i == 1) {
      return i == 1;
    }
  }
  if (v.is_string()) {
    return parse_bool_text(v.get<std::string>(), ref, key);
  }
  ref.fail("field \"" + std::string(key) + "\" must be true/false or 1/0, found " + v.dump());
}

} // namespace qprob::tasks
