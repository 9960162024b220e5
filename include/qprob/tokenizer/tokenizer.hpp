// SPDX-License-Identifier: Apache-2.0
#pragma once
// qprob::tokenizer: the tokenizer of a Hugging Face model directory, encoding and decoding exactly like the
// reference library of its files: Hugging Face `tokenizers` for tokenizer.json (and for vocab.json +
// merges.txt, which it reads as the GPT-2 layout), SentencePiece for tokenizer.model. docs/tokenizers.md
// describes what is supported, the pipeline order and the BOS/EOS rules.
//
//   auto tok = qprob::tokenizer::from_directory("models/stories260K");
//   std::vector<std::int32_t> ids = tok.encode("Once upon a time", /*add_special_tokens=*/true);
//   std::string text = tok.decode(ids);
//
// Host-only. Links PCRE2 (libpcre2-8), ICU (icu-uc) and SentencePiece (libsentencepiece).

#include <qprob/core/error.hpp>
#include <qprob/tokenizer/bpe.hpp>
#include <qprob/tokenizer/hf_json.hpp>
#include <qprob/tokenizer/pipeline.hpp>
#include <qprob/tokenizer/unicode.hpp>

#include <nlohmann/json.hpp>
#include <sentencepiece_processor.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace qprob {

/// Which files a tokenizer was read from.
enum class tokenizer_format {
  automatic,       ///< from_directory: tokenizer.json, else vocab.json + merges.txt, else tokenizer.model
  tokenizer_json,  ///< Hugging Face tokenizer.json (BPE model)
  vocab_merges,    ///< GPT-2 layout: vocab.json + merges.txt
  sentencepiece,   ///< tokenizer.model through libsentencepiece
};

namespace tok {

/// Settings of tokenizer_config.json and special_tokens_map.json that qprob uses.
struct directory_config {
  std::optional<bool> add_bos_token;
  std::optional<bool> add_eos_token;
  std::optional<bool> add_prefix_space;
  std::optional<std::string> bos_token;
  std::optional<std::string> eos_token;
  std::vector<std::string> special_tokens;  // every special token named anywhere (bos, eos, unk, pad, additional)
  std::vector<std::pair<std::string, token_id>> added_tokens_json;  // added_tokens.json
  bool any_file = false;
};

namespace config_detail {

/// A token given as "text" or {"content": "text", ...}.
inline std::optional<std::string> token_text(const nlohmann::json& v, const std::string& file, const std::string& field) {
  if (v.is_null()) {
    return std::nullopt;
  }
  if (v.is_string()) {
    return v.get<std::string>();
  }
  if (v.is_object()) {
    return json_detail::as_string(json_detail::member(v, "content", file, field), file, field + ".content");
  }
  throw format_error(file, field, detail::concat("expected a string or {\"content\": ...}, got ", v.type_name()));
}

inline void read_special_names(const nlohmann::json& j, const std::string& file, directory_config& c) {
  for (const char* key : {"bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"}) {
    if (const auto* v = json_detail::optional_member(j, key)) {
      if (auto t = token_text(*v, file, key)) {
        c.special_tokens.push_back(*t);
        if (std::string_view(key) == "bos_token") {
          c.bos_token = *t;
        } else if (std::string_view(key) == "eos_token") {
          c.eos_token = *t;
        }
      }
    }
  }
  if (const auto* list = json_detail::optional_member(j, "additional_special_tokens")) {
    if (!list->is_array()) {
      throw format_error(file, "additional_special_tokens", "expected an array");
    }
    for (std::size_t i = 0; i < list->size(); ++i) {
      if (auto t = token_text((*list)[i], file, json_detail::index("additional_special_tokens", i))) {
        c.special_tokens.push_back(*t);
      }
    }
  }
}

/// The JSON object in `path`, or nullopt when the file does not exist; `expected` is the message for a
/// document that is not an object.
inline std::optional<nlohmann::json> read_json_object(const std::filesystem::path& path, const char* expected) {
  if (!std::filesystem::exists(path)) {
    return std::nullopt;
  }
  const std::string file = path.string();
  nlohmann::json j       = json_detail::parse(json_detail::read_file(path), file);
  if (!j.is_object()) {
    throw format_error(file, "", expected);
  }
  return j;
}

}  // namespace config_detail

/// Reads special_tokens_map.json, then tokenizer_config.json (which wins), and added_tokens.json, where present.
inline directory_config read_directory_config(const std::filesystem::path& dir) {
  using namespace json_detail;
  directory_config c;
  const auto map_path = dir / "special_tokens_map.json";
  if (const auto j = config_detail::read_json_object(map_path, "expected a JSON object")) {
    c.any_file = true;
    config_detail::read_special_names(*j, map_path.string(), c);
  }
  const auto config_path = dir / "tokenizer_config.json";
  if (const auto config = config_detail::read_json_object(config_path, "expected a JSON object")) {
    c.any_file = true;
    const std::string file = config_path.string();
    const nlohmann::json& j = *config;
    config_detail::read_special_names(j, file, c);
    if (const auto* v = optional_member(j, "add_bos_token")) {
      c.add_bos_token = as_bool(*v, file, "add_bos_token");
    }
    if (const auto* v = optional_member(j, "add_eos_token")) {
      c.add_eos_token = as_bool(*v, file, "add_eos_token");
    }
    if (const auto* v = optional_member(j, "add_prefix_space")) {
      c.add_prefix_space = as_bool(*v, file, "add_prefix_space");
    }
    if (const auto* decoder = optional_member(j, "added_tokens_decoder")) {
      if (!decoder->is_object()) {
        throw format_error(file, "added_tokens_decoder", "expected an object");
      }
      for (auto it = decoder->begin(); it != decoder->end(); ++it) {
        const std::string field = "added_tokens_decoder." + it.key();
        if (bool_or(it.value(), "special", false, file, field)) {
          c.special_tokens.push_back(as_string(member(it.value(), "content", file, field), file, field + ".content"));
        }
      }
    }
  }
  const auto added_path = dir / "added_tokens.json";
  if (const auto added = config_detail::read_json_object(added_path, "expected a JSON object {token: id}")) {
    c.any_file = true;
    const std::string file = added_path.string();
    const nlohmann::json& j = *added;
    for (auto it = j.begin(); it != j.end(); ++it) {
      c.added_tokens_json.emplace_back(it.key(), static_cast<token_id>(as_int(it.value(), file, it.key(), 0, INT32_MAX - 1)));
    }
  }
  return c;
}

/// The interface of the two back ends.
class backend {
public:
  virtual ~backend() = default;
  [[nodiscard]] virtual std::vector<token_id> encode(std::string_view text, bool add_special_tokens) const = 0;
  [[nodiscard]] virtual std::string decode(std::span<const token_id> ids, bool skip_special_tokens) const = 0;
  [[nodiscard]] virtual std::optional<token_id> token_to_id(std::string_view token) const = 0;
  [[nodiscard]] virtual std::optional<std::string> id_to_token(token_id id) const = 0;
  [[nodiscard]] virtual std::size_t vocab_size() const = 0;
};

class bpe_backend final : public backend {
public:
  explicit bpe_backend(std::unique_ptr<bpe_pipeline> p) : pipeline_(std::move(p)) {}
  std::vector<token_id> encode(std::string_view text, bool add_special_tokens) const override {
    return pipeline_->encode(text, add_special_tokens);
  }
  std::string decode(std::span<const token_id> ids, bool skip_special_tokens) const override {
    return pipeline_->decode(ids, skip_special_tokens);
  }
  std::optional<token_id> token_to_id(std::string_view token) const override { return pipeline_->token_to_id(token); }
  std::optional<std::string> id_to_token(token_id id) const override { return pipeline_->id_to_token(id); }
  std::size_t vocab_size() const override { return pipeline_->vocab_size(); }
  bpe_pipeline& pipeline() { return *pipeline_; }

private:
  std::unique_ptr<bpe_pipeline> pipeline_;
};

class sentencepiece_backend final : public backend {
public:
  sentencepiece_backend(const std::filesystem::path& model, bool add_bos, bool add_eos)
      : add_bos_(add_bos), add_eos_(add_eos) {
    const auto status = sp_.Load(model.string());
    if (!status.ok()) {
      throw format_error(model.string(), "", detail::concat("SentencePiece cannot load the model: ", status.ToString()));
    }
  }
  std::vector<token_id> encode(std::string_view text, bool add_special_tokens) const override {
    std::vector<int> pieces;
    const auto status = sp_.Encode(text, &pieces);
    if (!status.ok()) {
      throw error(detail::concat("SentencePiece encode failed: ", status.ToString()));
    }
    std::vector<token_id> ids;
    ids.reserve(pieces.size() + 2);
    if (add_special_tokens && add_bos_ && sp_.bos_id() >= 0) {
      ids.push_back(sp_.bos_id());
    }
    ids.insert(ids.end(), pieces.begin(), pieces.end());
    if (add_special_tokens && add_eos_ && sp_.eos_id() >= 0) {
      ids.push_back(sp_.eos_id());
    }
    return ids;
  }
  std::string decode(std::span<const token_id> ids, bool skip_special_tokens) const override {
    // Control pieces (<s>, </s>) are dropped by SentencePiece; unless asked to skip them, qprob writes their
    // text in place and decodes the runs between them.
    std::string out;
    std::vector<int> run;
    const auto flush = [&] {
      if (!run.empty()) {
        out += sp_.DecodeIds(run);
        run.clear();
      }
    };
    for (const token_id id : ids) {
      if (id < 0 || id >= sp_.GetPieceSize()) {
        throw invalid_argument(detail::concat("decode: token id ", id, " is not in the vocabulary (size ",
                                              sp_.GetPieceSize(), ")"));
      }
      if (sp_.IsControl(id)) {
        if (!skip_special_tokens) {
          flush();
          out += sp_.IdToPiece(id);
        }
        continue;
      }
      run.push_back(id);
    }
    flush();
    return out;
  }
  std::optional<token_id> token_to_id(std::string_view token) const override {
    const int id = sp_.PieceToId(token);
    if (id == sp_.unk_id() && sp_.IdToPiece(id) != token) {
      return std::nullopt;
    }
    return id;
  }
  std::optional<std::string> id_to_token(token_id id) const override {
    if (id < 0 || id >= sp_.GetPieceSize()) {
      return std::nullopt;
    }
    return sp_.IdToPiece(id);
  }
  std::size_t vocab_size() const override { return static_cast<std::size_t>(sp_.GetPieceSize()); }
  [[nodiscard]] std::optional<token_id> bos() const { return sp_.bos_id() >= 0 ? std::optional<token_id>(sp_.bos_id()) : std::nullopt; }
  [[nodiscard]] std::optional<token_id> eos() const { return sp_.eos_id() >= 0 ? std::optional<token_id>(sp_.eos_id()) : std::nullopt; }

private:
  sentencepiece::SentencePieceProcessor sp_;
  bool add_bos_;
  bool add_eos_;
};

}  // namespace tok

/// A model directory's tokenizer. Immutable after loading; encode/decode are safe to call from several
/// threads (the BPE word cache is guarded). Copies share the loaded state.
class tokenizer {
public:
  using id_type = tok::token_id;

  /// Loads `dir`: tokenizer.json, else vocab.json + merges.txt, else tokenizer.model (or the given format).
  /// Throws qprob::format_error naming the file and field for malformed files, qprob::error when none exists.
  static tokenizer from_directory(const std::filesystem::path& dir, tokenizer_format format = tokenizer_format::automatic) {
    namespace fs = std::filesystem;
    if (!fs::is_directory(dir)) {
      throw format_error(dir.string(), "", "not a directory");
    }
    const bool has_json = fs::exists(dir / "tokenizer.json");
    const bool has_vm = fs::exists(dir / "vocab.json") && fs::exists(dir / "merges.txt");
    const bool has_sp = fs::exists(dir / "tokenizer.model");
    if (format == tokenizer_format::automatic) {
      format = has_json ? tokenizer_format::tokenizer_json
               : has_vm ? tokenizer_format::vocab_merges
               : has_sp ? tokenizer_format::sentencepiece
                        : throw error(detail::concat(dir.string(), ": no tokenizer.json, vocab.json + merges.txt or tokenizer.model"));
    }
    const tok::directory_config config = tok::read_directory_config(dir);
    tokenizer t;
    t.format_ = format;
    switch (format) {
      case tokenizer_format::tokenizer_json: {
        auto pipeline = tok::load_tokenizer_json(dir / "tokenizer.json");
        auto* backend = new tok::bpe_backend(std::move(pipeline));
        t.backend_.reset(backend);
        t.resolve_special(config);
        // transformers rebuilds the post-processor from add_bos_token / add_eos_token when the config sets them.
        if (config.add_bos_token || config.add_eos_token) {
          tok::post_processor post;
          if (config.add_bos_token.value_or(false)) {
            t.require(t.bos_id_, "add_bos_token", dir / "tokenizer_config.json");
            post.prefix.push_back(*t.bos_id_);
          }
          if (config.add_eos_token.value_or(false)) {
            t.require(t.eos_id_, "add_eos_token", dir / "tokenizer_config.json");
            post.suffix.push_back(*t.eos_id_);
          }
          if (!config.add_bos_token) {
            post.prefix = backend->pipeline().post().prefix;
          }
          if (!config.add_eos_token) {
            post.suffix = backend->pipeline().post().suffix;
          }
          backend->pipeline().set_post(std::move(post));
        }
        break;
      }
      case tokenizer_format::vocab_merges: {
        tok::vocab_merges_options options;
        options.add_prefix_space = config.add_prefix_space.value_or(false);
        std::vector<std::string> specials = config.special_tokens;
        if (!config.any_file) {
          specials.push_back("<|endoftext|>");  // GPT2Tokenizer's default bos/eos/unk token
        }
        for (const std::string& s : specials) {
          const bool seen = std::any_of(options.added.begin(), options.added.end(),
                                        [&](const tok::added_token& a) { return a.content == s; });
          if (!seen && !s.empty()) {
            tok::added_token a;
            a.content = s;
            a.special = true;
            a.normalized = false;
            options.added.push_back(a);
          }
        }
        // added_tokens.json entries that the vocabulary lacks cannot be placed; those it has are split off.
        for (const auto& [content, id] : config.added_tokens_json) {
          const bool seen = std::any_of(options.added.begin(), options.added.end(),
                                        [&](const tok::added_token& a) { return a.content == content; });
          if (!seen) {
            tok::added_token a;
            a.content = content;
            a.id = id;
            a.normalized = false;
            options.added.push_back(a);
          }
        }
        if (!config.any_file) {
          // Without any config the default token only counts when the vocabulary has it.
          auto vocab_has = tok::json_detail::parse(tok::json_detail::read_file(dir / "vocab.json"),
                                                   (dir / "vocab.json").string());
          if (!vocab_has.is_object() || !vocab_has.contains("<|endoftext|>")) {
            options.added.clear();
          }
        }
        auto pipeline = tok::load_vocab_merges(dir / "vocab.json", dir / "merges.txt", std::move(options));
        auto* backend = new tok::bpe_backend(std::move(pipeline));
        t.backend_.reset(backend);
        t.resolve_special(config);
        tok::post_processor post;
        if (config.add_bos_token.value_or(false)) {
          t.require(t.bos_id_, "add_bos_token", dir / "tokenizer_config.json");
          post.prefix.push_back(*t.bos_id_);
        }
        if (config.add_eos_token.value_or(false)) {
          t.require(t.eos_id_, "add_eos_token", dir / "tokenizer_config.json");
          post.suffix.push_back(*t.eos_id_);
        }
        backend->pipeline().set_post(std::move(post));
        break;
      }
      case tokenizer_format::sentencepiece: {
        // LlamaTokenizer's defaults: BOS yes, EOS no.
        auto* backend = new tok::sentencepiece_backend(dir / "tokenizer.model", config.add_bos_token.value_or(true),
                                                       config.add_eos_token.value_or(false));
        t.backend_.reset(backend);
        t.bos_id_ = backend->bos();
        t.eos_id_ = backend->eos();
        if (config.bos_token) {
          t.bos_id_ = t.backend_->token_to_id(*config.bos_token);
        }
        if (config.eos_token) {
          t.eos_id_ = t.backend_->token_to_id(*config.eos_token);
        }
        break;
      }
      case tokenizer_format::automatic: break;
    }
    return t;
  }

  /// Token ids of `text` (UTF-8). With add_special_tokens, the BOS/EOS (or template) tokens are added.
  /// Throws qprob::invalid_argument when `text` is not valid UTF-8.
  [[nodiscard]] std::vector<id_type> encode(std::string_view text, bool add_special_tokens = true) const {
    if (const std::size_t bad = tok::find_invalid_utf8(text); bad != std::string_view::npos) {
      throw invalid_argument(detail::concat("encode: text is not valid UTF-8 (byte ", bad, ")"));
    }
    return backend_->encode(text, add_special_tokens);
  }

  /// Text of `ids`; special tokens are written unless skip_special_tokens. Throws qprob::invalid_argument for
  /// an id outside the vocabulary.
  [[nodiscard]] std::string decode(std::span<const id_type> ids, bool skip_special_tokens = false) const {
    return backend_->decode(ids, skip_special_tokens);
  }

  [[nodiscard]] std::optional<id_type> bos_id() const noexcept { return bos_id_; }
  [[nodiscard]] std::optional<id_type> eos_id() const noexcept { return eos_id_; }
  [[nodiscard]] std::optional<id_type> token_to_id(std::string_view token) const { return backend_->token_to_id(token); }

  /// The token of `id`; throws qprob::invalid_argument when the vocabulary has no such id.
  [[nodiscard]] std::string id_to_token(id_type id) const {
    auto t = backend_->id_to_token(id);
    if (!t) {
      throw invalid_argument(detail::concat("id_to_token: id ", id, " is not in the vocabulary (size ", vocab_size(), ")"));
    }
    return *t;
  }

  /// Number of ids, added tokens included (one more than the largest id).
  [[nodiscard]] std::size_t vocab_size() const { return backend_->vocab_size(); }
  [[nodiscard]] tokenizer_format format() const noexcept { return format_; }

private:
  tokenizer() = default;

  void resolve_special(const tok::directory_config& config) {
    const auto first_of = [&](std::initializer_list<const char*> names) -> std::optional<id_type> {
      for (const char* n : names) {
        if (auto id = backend_->token_to_id(n)) {
          return id;
        }
      }
      return std::nullopt;
    };
    bos_id_ = config.bos_token ? backend_->token_to_id(*config.bos_token)
                               : first_of({"<s>", "<|begin_of_text|>", "<bos>", "<|endoftext|>"});
    eos_id_ = config.eos_token ? backend_->token_to_id(*config.eos_token)
                               : first_of({"</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>"});
  }

  static void require(const std::optional<id_type>& id, const char* field, const std::filesystem::path& file) {
    if (!id) {
      throw format_error(file.string(), field, "is true but the tokenizer has no such special token");
    }
  }

  std::shared_ptr<const tok::backend> backend_;
  std::optional<id_type> bos_id_;
  std::optional<id_type> eos_id_;
  tokenizer_format format_ = tokenizer_format::automatic;
};

}  // namespace qprob
