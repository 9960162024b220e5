// SPDX-License-Identifier: Apache-2.0
#pragma once
// Readers for the Hugging Face tokenizer files: tokenizer.json (model BPE with its normalizer, pre-tokenizer,
// post-processor, decoder and added tokens) and the GPT-2 layout vocab.json + merges.txt. Every problem is a
// qprob::format_error naming the file, the field (a JSON path such as "pre_tokenizer.pretokenizers[1].type",
// or "line 7" for merges.txt) and what is wrong.

#include <qprob/core/error.hpp>
#include <qprob/tokenizer/bpe.hpp>
#include <qprob/tokenizer/pipeline.hpp>
#include <qprob/tokenizer/unicode.hpp>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace qprob::tok {

namespace json_detail {

using json = nlohmann::json;

inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw format_error(path.string(), "", "cannot open file");
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline json parse(const std::string& text, const std::string& file) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    throw format_error(file, "", detail::concat("JSON syntax error at byte ", e.byte, ": ", e.what()));
  }
}

inline std::string join(const std::string& path, const std::string& key) { return path.empty() ? key : path + "." + key; }
inline std::string index(const std::string& path, std::size_t i) { return detail::concat(path, "[", i, "]"); }

inline const char* type_name(const json& j) { return j.type_name(); }

/// The value of `key` in object `obj`, required.
inline const json& member(const json& obj, const std::string& key, const std::string& file, const std::string& path) {
  if (!obj.is_object()) {
    throw format_error(file, path, detail::concat("expected an object, got ", type_name(obj)));
  }
  const auto it = obj.find(key);
  if (it == obj.end()) {
    throw format_error(file, join(path, key), "missing");
  }
  return *it;
}

/// The value of `key`, or nullptr when it is absent or null.
inline const json* optional_member(const json& obj, const std::string& key) {
  if (!obj.is_object()) {
    return nullptr;
  }
  const auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

inline std::string as_string(const json& j, const std::string& file, const std::string& field) {
  if (!j.is_string()) {
    throw format_error(file, field, detail::concat("expected a string, got ", type_name(j)));
  }
  return j.get<std::string>();
}

inline bool as_bool(const json& j, const std::string& file, const std::string& field) {
  if (!j.is_boolean()) {
    throw format_error(file, field, detail::concat("expected true or false, got ", type_name(j)));
  }
  return j.get<bool>();
}

inline std::int64_t as_int(const json& j, const std::string& file, const std::string& field, std::int64_t lo,
                           std::int64_t hi) {
  if (!j.is_number_integer()) {
    throw format_error(file, field, detail::concat("expected an integer, got ", type_name(j)));
  }
  const std::int64_t v = j.is_number_unsigned() && j.get<std::uint64_t>() > static_cast<std::uint64_t>(hi)
                             ? hi + 1
                             : j.get<std::int64_t>();
  if (v < lo || v > hi) {
    throw format_error(file, field, detail::concat("value ", j.dump(), " is outside [", lo, ", ", hi, "]"));
  }
  return v;
}

inline bool bool_or(const json& obj, const std::string& key, bool fallback, const std::string& file,
                    const std::string& path) {
  const json* v = optional_member(obj, key);
  return v == nullptr ? fallback : as_bool(*v, file, join(path, key));
}

inline std::string type_of(const json& obj, const std::string& file, const std::string& path) {
  return as_string(member(obj, "type", file, path), file, join(path, "type"));
}

inline const json& array_member(const json& obj, const std::string& key, const std::string& file,
                                const std::string& path) {
  const json& a = member(obj, key, file, path);
  if (!a.is_array()) {
    throw format_error(file, join(path, key), detail::concat("expected an array, got ", type_name(a)));
  }
  return a;
}

/// A single Unicode character given as a string (Metaspace replacement, Strip content).
inline char32_t single_char(const std::string& s, const std::string& file, const std::string& field) {
  if (s.empty() || find_invalid_utf8(s) != std::string::npos || code_points(s).size() != 1) {
    throw format_error(file, field, detail::concat("expected exactly one character, got '", s, "'"));
  }
  return code_points(s)[0];
}

/// {"String": "..."} or {"Regex": "..."} (Split, Replace).
inline regex pattern(const json& obj, const std::string& file, const std::string& path) {
  const json& p = member(obj, "pattern", file, path);
  const std::string field = join(path, "pattern");
  if (const json* s = optional_member(p, "String")) {
    return regex::literal(as_string(*s, file, join(field, "String")), file, join(field, "String"));
  }
  if (const json* r = optional_member(p, "Regex")) {
    return regex(as_string(*r, file, join(field, "Regex")), file, join(field, "Regex"));
  }
  throw format_error(file, field, "expected {\"String\": ...} or {\"Regex\": ...}");
}

inline split_behavior behavior(const json& obj, const std::string& file, const std::string& path) {
  const std::string field = join(path, "behavior");
  const std::string b = as_string(member(obj, "behavior", file, path), file, field);
  if (b == "Removed") return split_behavior::removed;
  if (b == "Isolated") return split_behavior::isolated;
  if (b == "MergedWithPrevious") return split_behavior::merged_with_previous;
  if (b == "MergedWithNext") return split_behavior::merged_with_next;
  if (b == "Contiguous") return split_behavior::contiguous;
  throw format_error(file, field, detail::concat("unknown split behavior '", b, "'"));
}

/// Metaspace's prepend_scheme, or the legacy add_prefix_space flag of older files.
inline prepend_scheme scheme(const json& obj, const std::string& file, const std::string& path) {
  if (const json* s = optional_member(obj, "prepend_scheme")) {
    const std::string v = as_string(*s, file, join(path, "prepend_scheme"));
    if (v == "always") return prepend_scheme::always;
    if (v == "first") return prepend_scheme::first;
    if (v == "never") return prepend_scheme::never;
    throw format_error(file, join(path, "prepend_scheme"), detail::concat("unknown prepend_scheme '", v, "'"));
  }
  return bool_or(obj, "add_prefix_space", true, file, path) ? prepend_scheme::always : prepend_scheme::never;
}

[[noreturn]] inline void unsupported(const std::string& file, const std::string& path, const std::string& what,
                                     const std::string& type, const std::string& supported) {
  throw format_error(file, join(path, "type"),
                     detail::concat("unsupported ", what, " type '", type, "' (qprob supports ", supported, ")"));
}

inline void normalizers(const json& j, const std::string& file, const std::string& path,
                        std::vector<normalizer_step>& out) {
  const std::string type = type_of(j, file, path);
  normalizer_step s;
  using k = normalizer_step::kind;
  if (type == "Sequence") {
    const json& list = array_member(j, "normalizers", file, path);
    for (std::size_t i = 0; i < list.size(); ++i) {
      normalizers(list[i], file, index(join(path, "normalizers"), i), out);
    }
    return;
  }
  if (type == "NFC") s.type = k::nfc;
  else if (type == "NFD") s.type = k::nfd;
  else if (type == "NFKC") s.type = k::nfkc;
  else if (type == "NFKD") s.type = k::nfkd;
  else if (type == "Lowercase") s.type = k::lowercase;
  else if (type == "StripAccents") s.type = k::strip_accents;
  else if (type == "ByteLevel") s.type = k::byte_level;
  else if (type == "Strip") {
    s.type = k::strip;
    s.left = bool_or(j, "strip_left", false, file, path);
    s.right = bool_or(j, "strip_right", false, file, path);
  } else if (type == "Replace") {
    s.type = k::replace;
    s.pattern = pattern(j, file, path);
    s.content = as_string(member(j, "content", file, path), file, join(path, "content"));
  } else if (type == "Prepend") {
    s.type = k::prepend;
    s.content = as_string(member(j, "prepend", file, path), file, join(path, "prepend"));
  } else {
    unsupported(file, path, "normalizer", type,
                "NFC, NFD, NFKC, NFKD, Lowercase, Strip, StripAccents, Replace, Prepend, ByteLevel, Sequence");
  }
  out.push_back(std::move(s));
}

inline void pre_tokenizers(const json& j, const std::string& file, const std::string& path,
                           std::vector<pre_tokenizer_step>& out) {
  const std::string type = type_of(j, file, path);
  pre_tokenizer_step s;
  using k = pre_tokenizer_step::kind;
  if (type == "Sequence") {
    const json& list = array_member(j, "pretokenizers", file, path);
    for (std::size_t i = 0; i < list.size(); ++i) {
      pre_tokenizers(list[i], file, index(join(path, "pretokenizers"), i), out);
    }
    return;
  }
  if (type == "ByteLevel") {
    s.type = k::byte_level;
    s.add_prefix_space = bool_or(j, "add_prefix_space", true, file, path);
    s.use_regex = bool_or(j, "use_regex", true, file, path);
  } else if (type == "Metaspace") {
    s.type = k::metaspace;
    s.replacement = as_string(member(j, "replacement", file, path), file, join(path, "replacement"));
    s.replacement_char = single_char(s.replacement, file, join(path, "replacement"));
    s.scheme = scheme(j, file, path);
    s.split = bool_or(j, "split", true, file, path);
  } else if (type == "Split") {
    s.type = k::split;
    s.pattern = pattern(j, file, path);
    s.behavior = behavior(j, file, path);
    s.invert = bool_or(j, "invert", false, file, path);
  } else if (type == "Whitespace") {
    s.type = k::whitespace;
  } else if (type == "WhitespaceSplit") {
    s.type = k::whitespace_split;
  } else if (type == "Digits") {
    s.type = k::digits;
    s.individual_digits = bool_or(j, "individual_digits", false, file, path);
  } else if (type == "Punctuation") {
    s.type = k::punctuation;
    s.behavior = optional_member(j, "behavior") ? behavior(j, file, path) : split_behavior::isolated;
  } else {
    unsupported(file, path, "pre_tokenizer", type,
                "ByteLevel, Metaspace, Split, Whitespace, WhitespaceSplit, Digits, Punctuation, Sequence");
  }
  out.push_back(std::move(s));
}

inline void decoders(const json& j, const std::string& file, const std::string& path, std::vector<decoder_step>& out) {
  const std::string type = type_of(j, file, path);
  decoder_step s;
  using k = decoder_step::kind;
  if (type == "Sequence") {
    const json& list = array_member(j, "decoders", file, path);
    for (std::size_t i = 0; i < list.size(); ++i) {
      decoders(list[i], file, index(join(path, "decoders"), i), out);
    }
    return;
  }
  if (type == "ByteLevel") {
    s.type = k::byte_level;
  } else if (type == "Metaspace") {
    s.type = k::metaspace;
    s.replacement = as_string(member(j, "replacement", file, path), file, join(path, "replacement"));
    s.replacement_char = single_char(s.replacement, file, join(path, "replacement"));
    s.scheme = scheme(j, file, path);
  } else if (type == "Replace") {
    s.type = k::replace;
    s.pattern = pattern(j, file, path);
    s.content = as_string(member(j, "content", file, path), file, join(path, "content"));
  } else if (type == "ByteFallback") {
    s.type = k::byte_fallback;
  } else if (type == "Fuse") {
    s.type = k::fuse;
  } else if (type == "Strip") {
    s.type = k::strip;
    s.strip_char = single_char(as_string(member(j, "content", file, path), file, join(path, "content")), file,
                               join(path, "content"));
    s.start = static_cast<std::size_t>(as_int(member(j, "start", file, path), file, join(path, "start"), 0, 1 << 30));
    s.stop = static_cast<std::size_t>(as_int(member(j, "stop", file, path), file, join(path, "stop"), 0, 1 << 30));
  } else if (type == "BPEDecoder") {
    s.type = k::bpe_suffix;
    const json* suffix = optional_member(j, "suffix");
    s.content = suffix ? as_string(*suffix, file, join(path, "suffix")) : "</w>";
  } else {
    unsupported(file, path, "decoder", type, "ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, BPEDecoder, Sequence");
  }
  out.push_back(std::move(s));
}

/// The id of a RobertaProcessing / BertProcessing special token, stored as ["<s>", 0].
inline token_id special_id(const json& pair, const std::string& file, const std::string& field) {
  if (!pair.is_array() || pair.size() != 2) {
    throw format_error(file, field, "expected [token, id]");
  }
  return static_cast<token_id>(as_int(pair[1], file, index(field, 1), 0, INT32_MAX));
}

inline void post_processors(const json& j, const std::string& file, const std::string& path, post_processor& out) {
  const std::string type = type_of(j, file, path);
  if (type == "Sequence") {
    const json& list = array_member(j, "processors", file, path);
    for (std::size_t i = 0; i < list.size(); ++i) {
      post_processors(list[i], file, index(join(path, "processors"), i), out);
    }
    return;
  }
  if (type == "ByteLevel") {
    return;  // only trims offsets, which qprob does not report
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    out.prefix.push_back(special_id(member(j, "cls", file, path), file, join(path, "cls")));
    out.suffix.insert(out.suffix.begin(), special_id(member(j, "sep", file, path), file, join(path, "sep")));
    return;
  }
  if (type != "TemplateProcessing") {
    unsupported(file, path, "post_processor", type, "TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, Sequence");
  }
  const json& specials = member(j, "special_tokens", file, path);
  if (!specials.is_object()) {
    throw format_error(file, join(path, "special_tokens"), "expected an object");
  }
  const json& single = array_member(j, "single", file, path);
  bool seen_sequence = false;
  post_processor mine;
  for (std::size_t i = 0; i < single.size(); ++i) {
    const std::string field = index(join(path, "single"), i);
    const json& item = single[i];
    if (const json* seq = optional_member(item, "Sequence")) {
      const std::string id = as_string(member(*seq, "id", file, join(field, "Sequence")), file, join(field, "Sequence.id"));
      if (id != "A" || seen_sequence) {
        throw format_error(file, field, detail::concat("a single-sequence template must name sequence A once, got '", id, "'"));
      }
      seen_sequence = true;
      continue;
    }
    const json* sp = optional_member(item, "SpecialToken");
    if (sp == nullptr) {
      throw format_error(file, field, "expected {\"SpecialToken\": ...} or {\"Sequence\": ...}");
    }
    const std::string name = as_string(member(*sp, "id", file, join(field, "SpecialToken")), file, join(field, "SpecialToken.id"));
    const json* entry = optional_member(specials, name);
    if (entry == nullptr) {
      throw format_error(file, join(path, "special_tokens"), detail::concat("no entry for '", name, "' used by ", field));
    }
    const json& ids = array_member(*entry, "ids", file, join(join(path, "special_tokens"), name));
    for (std::size_t k2 = 0; k2 < ids.size(); ++k2) {
      const auto id = static_cast<token_id>(
          as_int(ids[k2], file, index(join(join(join(path, "special_tokens"), name), "ids"), k2), 0, INT32_MAX));
      (seen_sequence ? mine.suffix : mine.prefix).push_back(id);
    }
  }
  if (!seen_sequence) {
    throw format_error(file, join(path, "single"), "the template never names sequence A");
  }
  out.prefix.insert(out.prefix.end(), mine.prefix.begin(), mine.prefix.end());
  out.suffix.insert(out.suffix.begin(), mine.suffix.begin(), mine.suffix.end());
}

inline vocab_map read_vocab(const json& v, const std::string& file, const std::string& field) {
  if (!v.is_object()) {
    throw format_error(file, field, detail::concat("expected an object {token: id}, got ", type_name(v)));
  }
  vocab_map vocab;
  vocab.reserve(v.size());
  for (auto it = v.begin(); it != v.end(); ++it) {
    vocab[it.key()] = static_cast<token_id>(as_int(it.value(), file, join(field, it.key()), 0, INT32_MAX - 1));
  }
  return vocab;
}

/// One line of a merges list ("a b"): exactly two parts separated by one space, like `tokenizers`.
inline std::pair<std::string, std::string> split_merge(const std::string& line, const std::string& file,
                                                       const std::string& field) {
  const std::size_t space = line.find(' ');
  if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
    throw format_error(file, field, detail::concat("expected two tokens separated by one space, got '", line, "'"));
  }
  return {line.substr(0, space), line.substr(space + 1)};
}

inline added_token read_added(const json& t, const std::string& file, const std::string& path) {
  added_token a;
  a.id = static_cast<token_id>(as_int(member(t, "id", file, path), file, join(path, "id"), 0, INT32_MAX - 1));
  a.content = as_string(member(t, "content", file, path), file, join(path, "content"));
  a.special = bool_or(t, "special", false, file, path);
  a.single_word = bool_or(t, "single_word", false, file, path);
  a.lstrip = bool_or(t, "lstrip", false, file, path);
  a.rstrip = bool_or(t, "rstrip", false, file, path);
  a.normalized = bool_or(t, "normalized", !a.special, file, path);
  if (find_invalid_utf8(a.content) != std::string::npos) {
    throw format_error(file, join(path, "content"), "not valid UTF-8");
  }
  return a;
}

}  // namespace json_detail

/// Loads a tokenizer.json whose model is BPE.
inline std::unique_ptr<bpe_pipeline> load_tokenizer_json(const std::filesystem::path& path) {
  using namespace json_detail;
  const std::string file = path.string();
  const json root = parse(read_file(path), file);
  if (!root.is_object()) {
    throw format_error(file, "", detail::concat("expected a JSON object at the top level, got ", type_name(root)));
  }
  const json& model = member(root, "model", file, "");
  if (!model.is_object()) {
    throw format_error(file, "model", detail::concat("expected an object, got ", type_name(model)));
  }
  std::string type;
  if (const json* t = optional_member(model, "type")) {
    type = as_string(*t, file, "model.type");
  } else if (optional_member(model, "merges") != nullptr) {
    type = "BPE";  // `tokenizers` accepts an untagged BPE model
  } else {
    throw format_error(file, "model.type", "missing (and the model has no merges, so it is not an untagged BPE)");
  }
  if (type != "BPE") {
    throw format_error(file, "model.type",
                       detail::concat("unsupported model type '", type,
                                      "' (qprob reads BPE from tokenizer.json; Unigram models load from tokenizer.model)"));
  }
  if (const json* d = optional_member(model, "dropout")) {
    if (!d->is_number() || d->get<double>() != 0.0) {
      throw format_error(file, "model.dropout", detail::concat("must be null for deterministic encoding, got ", d->dump()));
    }
  }
  vocab_map vocab = read_vocab(member(model, "vocab", file, "model"), file, "model.vocab");
  const json& merges_json = array_member(model, "merges", file, "model");
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(merges_json.size());
  for (std::size_t i = 0; i < merges_json.size(); ++i) {
    const std::string field = index("model.merges", i);
    const json& m = merges_json[i];
    if (m.is_string()) {
      merges.push_back(split_merge(m.get<std::string>(), file, field));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      throw format_error(file, field, detail::concat("expected \"a b\" or [\"a\", \"b\"], got ", m.dump()));
    }
  }
  bpe_options options;
  if (const json* u = optional_member(model, "unk_token")) {
    options.unk_token = as_string(*u, file, "model.unk_token");
  }
  if (const json* p = optional_member(model, "continuing_subword_prefix")) {
    options.continuing_subword_prefix = as_string(*p, file, "model.continuing_subword_prefix");
  }
  if (const json* s = optional_member(model, "end_of_word_suffix")) {
    options.end_of_word_suffix = as_string(*s, file, "model.end_of_word_suffix");
  }
  options.fuse_unk = bool_or(model, "fuse_unk", false, file, "model");
  options.byte_fallback = bool_or(model, "byte_fallback", false, file, "model");
  options.ignore_merges = bool_or(model, "ignore_merges", false, file, "model");
  auto bpe = std::make_unique<bpe_model>(std::move(vocab), merges, std::move(options), file,
                                         [](std::size_t i) { return index("model.merges", i); });

  std::vector<added_token> added;
  if (const json* list = optional_member(root, "added_tokens")) {
    if (!list->is_array()) {
      throw format_error(file, "added_tokens", "expected an array");
    }
    for (std::size_t i = 0; i < list->size(); ++i) {
      added.push_back(read_added((*list)[i], file, index("added_tokens", i)));
    }
  }
  std::vector<normalizer_step> norm;
  if (const json* n = optional_member(root, "normalizer")) {
    normalizers(*n, file, "normalizer", norm);
  }
  std::vector<pre_tokenizer_step> pre;
  if (const json* p = optional_member(root, "pre_tokenizer")) {
    pre_tokenizers(*p, file, "pre_tokenizer", pre);
  }
  std::vector<decoder_step> dec;
  const json* d = optional_member(root, "decoder");
  if (d != nullptr) {
    decoders(*d, file, "decoder", dec);
  }
  post_processor post;
  if (const json* p = optional_member(root, "post_processor")) {
    post_processors(*p, file, "post_processor", post);
  }
  return std::make_unique<bpe_pipeline>(std::move(bpe), std::move(added), std::move(norm), std::move(pre),
                                        std::move(dec), d != nullptr, std::move(post));
}

/// What a vocab.json + merges.txt directory needs besides the two files (from tokenizer_config.json /
/// special_tokens_map.json / added_tokens.json; see tokenizer.hpp).
struct vocab_merges_options {
  bool add_prefix_space = false;
  std::vector<added_token> added;  // ids resolved by the loader when 0 and the content is in the vocabulary
};

/// Loads the GPT-2 layout: ByteLevel pre-tokenizer and decoder over a byte-level BPE, as the `tokenizers`
/// library builds it from these files (and as transformers' GPT2Tokenizer behaves).
inline std::unique_ptr<bpe_pipeline> load_vocab_merges(const std::filesystem::path& vocab_path,
                                                        const std::filesystem::path& merges_path,
                                                        vocab_merges_options options) {
  using namespace json_detail;
  const std::string vfile = vocab_path.string();
  const json v = parse(read_file(vocab_path), vfile);
  vocab_map vocab = read_vocab(v, vfile, "");

  const std::string mfile = merges_path.string();
  const std::string text = read_file(merges_path);
  std::vector<std::pair<std::string, std::string>> merges;
  std::vector<std::size_t> line_of;  // merge index -> 1-based line number, for errors
  std::size_t line_no = 0;
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t end = text.find('\n', pos);
    if (end == std::string::npos) {
      end = text.size();
    }
    std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') {
      line.pop_back();  // Rust's lines() drops a trailing \r as well
    }
    if (line.starts_with("#version")) {
      continue;
    }
    merges.push_back(split_merge(line, mfile, detail::concat("line ", line_no)));
    line_of.push_back(line_no);
  }
  if (find_invalid_utf8(text) != std::string::npos) {
    throw format_error(mfile, detail::concat("byte ", find_invalid_utf8(text)), "not valid UTF-8");
  }
  // Tokens the added list names must exist; they take their ids from the vocabulary.
  for (added_token& a : options.added) {
    if (const auto it = vocab.find(a.content); it != vocab.end()) {
      a.id = it->second;
    } else {
      throw format_error(vfile, "", detail::concat("special token '", a.content, "' is not in the vocabulary"));
    }
  }
  auto bpe = std::make_unique<bpe_model>(std::move(vocab), merges, bpe_options{}, mfile,
                                         [&](std::size_t i) { return detail::concat("line ", line_of[i]); });
  std::vector<pre_tokenizer_step> pre(1);
  pre[0].type = pre_tokenizer_step::kind::byte_level;
  pre[0].add_prefix_space = options.add_prefix_space;
  pre[0].use_regex = true;
  std::vector<decoder_step> dec(1);
  dec[0].type = decoder_step::kind::byte_level;
  return std::make_unique<bpe_pipeline>(std::move(bpe), std::move(options.added), std::vector<normalizer_step>{},
                                        std::move(pre), std::move(dec), true, post_processor{});
}

}  // namespace qprob::tok
