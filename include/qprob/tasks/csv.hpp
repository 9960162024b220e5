// SPDX-License-Identifier: Apache-2.0
#pragma once
// A small, strict RFC-4180 reader for the CSV (StoryCloze, Jigsaw) and TSV (OpenBookQA) files the task
// loaders read: quoted fields with embedded delimiters, doubled quotes and newlines, CRLF or LF line ends.
// Every record remembers the line it starts on, so loaders can report "file: line N: problem". Layer: tasks.

#include <qprob/core/error.hpp>

#include <cstddef>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

namespace qprob::tasks {

/// One record: its fields and the 1-based line of the file on which it starts.
struct csv_record {
  std::size_t line = 0;
  std::vector<std::string> fields;
};

struct csv_options {
  char delimiter = ',';
  /// false: '"' is an ordinary character (the OpenBookQA TSV has no quoting).
  bool quoting = true;
};

/// A header row and the data records after it.
struct csv_table {
  std::string file;
  std::vector<std::string> header;
  std::vector<csv_record> rows;

  /// Index of column `name`; throws format_error naming the file and the missing column.
  [[nodiscard]] std::size_t column(std::string_view name) const {
    for (std::size_t i = 0; i < header.size(); ++i) {
      if (header[i] == name) {
        return i;
      }
    }
    throw format_error(file, "header", "missing column \"" + std::string(name) + "\"");
  }
};

/// Parses `text` (the contents of `file`, named only in messages). Blank lines between records carry no
/// fields and are skipped, as Python's csv.DictReader does. Throws format_error("<file>", "line N", ...) for
/// a quoted field that never closes (N = the line where it opened), a character other than a delimiter or a
/// line end after a closing quote, and a quote inside an unquoted field.
[[nodiscard]] inline std::vector<csv_record>
parse_csv(std::string_view text, const std::string& file, const csv_options& options = {}) {
  std::vector<csv_record> records;
  csv_record current;
  std::string field;
  std::size_t line = 1;
  std::size_t i    = 0;
  bool record_open = false; // any character of the current record seen
  const auto where = [](std::size_t l) {
    return "line " + std::to_string(l);
  };
  const auto end_field = [&] {
    current.fields.push_back(std::move(field));
    field.clear();
  };
  const auto end_record = [&] {
    end_field();
    records.push_back(std::move(current));
    current     = csv_record{};
    record_open = false;
  };
  const auto at_line_end = [&](std::size_t k) {
    return k < text.size()
           && (text[k] == '\n' || (text[k] == '\r' && k + 1 < text.size() && text[k + 1] == '\n'));
  };
  const auto skip_line_end = [&](std::size_t k) {
    return text[k] == '\r' ? k + 2 : k + 1;
  };

  while (i < text.size()) {
    if (!record_open) {
      if (at_line_end(i)) { // a blank line
        i = skip_line_end(i);
        ++line;
        continue;
      }
      current.line = line;
      record_open  = true;
    }
    // At the start of a field.
    if (options.quoting && text[i] == '"') {
      const std::size_t open_line = line;
      ++i;
      while (true) {
        if (i >= text.size()) {
          throw format_error(file, where(open_line), "quoted field is never closed (unbalanced '\"')");
        }
        if (text[i] == '"') {
          if (i + 1 < text.size() && text[i + 1] == '"') {
            field.push_back('"');
            i += 2;
            continue;
          }
          ++i; // the closing quote
          break;
        }
        if (text[i] == '\n') {
          ++line;
        }
        field.push_back(text[i]);
        ++i;
      }
      if (i >= text.size()) {
        end_record();
        break;
      }
      if (text[i] == options.delimiter) {
        end_field();
        ++i;
        if (i >= text.size()) { // a trailing delimiter ends the file with an empty last field
          end_record();
        }
        continue;
      }
      if (at_line_end(i)) {
        end_record();
        i = skip_line_end(i);
        ++line;
        continue;
      }
      throw format_error(
          file, where(line), std::string("unexpected character '") + text[i] + "' after a closing quote");
    }
    // An unquoted field: up to the delimiter or the line end.
    while (i < text.size() && text[i] != options.delimiter && !at_line_end(i)) {
      if (options.quoting && text[i] == '"') {
        throw format_error(file, where(line), "'\"' inside an unquoted field (the field must be quoted)");
      }
      field.push_back(text[i]);
      ++i;
    }
    if (i >= text.size()) {
      end_record();
      break;
    }
    if (text[i] == options.delimiter) {
      end_field();
      ++i;
      if (i >= text.size()) {
        end_record();
      }
      continue;
    }
    end_record(); // a line end
    i = skip_line_end(i);
    ++line;
  }
  if (record_open) {
    end_record();
  }
  return records;
}

/// Reads a whole file into a string; throws format_error when it cannot be opened or read.
[[nodiscard]] inline std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw format_error(path.string(), "", "cannot open file");
  }
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) {
    throw format_error(path.string(), "", "read error");
  }
  return text;
}

/// Reads a CSV/TSV file whose first record is the header. Every data record must have as many fields as
/// the header; otherwise format_error names its line and both counts.
[[nodiscard]] inline csv_table read_csv_table(const std::filesystem::path& path,
                                              const csv_options& options = {}) {
  csv_table table;
  table.file   = path.string();
  auto records = parse_csv(read_text_file(path), table.file, options);
  if (records.empty()) {
    throw format_error(table.file, "header", "file is empty (no header row)");
  }
  table.header = std::move(records.front().fields);
  if (!table.header.empty() && table.header.front().starts_with("\xEF\xBB\xBF")) {
    table.header.front().erase(0, 3); // a UTF-8 byte-order mark is not part of the first column name
  }
  table.rows.assign(std::make_move_iterator(records.begin() + 1), std::make_move_iterator(records.end()));
  for (const auto& row : table.rows) {
    if (row.fields.size() != table.header.size()) {
      throw format_error(table.file,
                         "line " + std::to_string(row.line),
                         "expected " + std::to_string(table.header.size())
                             + " fields (as in the header), found " + std::to_string(row.fields.size()));
    }
  }
  return table;
}

} // namespace qprob::tasks
