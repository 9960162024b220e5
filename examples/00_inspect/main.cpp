// SPDX-License-Identifier: Apache-2.0
// qprob-inspect: what qprob sees in a Hugging Face model directory.
//
// Reads config.json (qprob::model::load_config), opens model.safetensors or the sharded index
// (qprob::io::checkpoint), maps every tensor onto qprob's internal layout (qprob::model::map_weights) and prints
// the architecture, the parameter count, a dtype histogram, the tensor inventory with each tensor's role, and
// the parsed config. Malformed input prints the error (file, field, problem) and exits with status 1.
//
// Host-only; no GPU needed.
// With --text it also tokenizes a string with the directory's tokenizer (tokenizer.json, vocab.json + merges.txt
// or tokenizer.model, with the BOS rules of tokenizer_config.json) and prints the ids, the tokens and the decoded
// text, with and without special tokens.
//
//   qprob-inspect ../shared/models/stories260K
//   qprob-inspect ../shared/models/stories260K --text "Once upon a time"
//   qprob-inspect --skip-missing ../shared/models/stories260K   # exit 77 (ctest: skipped) if the dir is absent
#include <qprob/io/safetensors.hpp>
#include <qprob/model/config.hpp>
#include <qprob/model/weights.hpp>
#if defined(QPROB_INSPECT_TOKENIZER)
#  include <qprob/tokenizer/tokenizer.hpp>
#endif

#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <string>

namespace {

constexpr int exit_skipped = 77;  // ctest's SKIP_RETURN_CODE for this program

struct options {
  std::filesystem::path model_dir;
  bool skip_missing = false;
  bool no_inventory = false;
  std::optional<std::string> text;
};

/// Tokenizes opt.text with the directory's tokenizer and prints ids, tokens and the round trip.
void print_tokenization(const options& opt) {
#if defined(QPROB_INSPECT_TOKENIZER)
  const auto tok = qprob::tokenizer::from_directory(opt.model_dir);
  std::printf("\ntokenizer    vocab %zu, bos %s, eos %s\n", tok.vocab_size(),
              tok.bos_id() ? std::to_string(*tok.bos_id()).c_str() : "none",
              tok.eos_id() ? std::to_string(*tok.eos_id()).c_str() : "none");
  for (const bool special : {true, false}) {
    const auto ids = tok.encode(*opt.text, special);
    std::printf("%s (%zu tokens):", special ? "ids with special tokens" : "ids without special tokens", ids.size());
    for (auto id : ids) {
      std::printf(" %d", id);
    }
    std::printf("\n");
    if (special) {
      std::printf("tokens:");
      for (auto id : ids) {
        std::printf(" [%s]", tok.id_to_token(id).c_str());
      }
      std::printf("\ndecoded: \"%s\"\n", tok.decode(ids, true).c_str());
    }
  }
#else
  (void)opt;
  throw qprob::error("--text: this qprob-inspect was built without qprob::tokenizer (PCRE2, ICU, SentencePiece)");
#endif
}

int run(const options& opt) {
  const auto config = qprob::model::load_config(opt.model_dir);
  const auto ckpt   = qprob::io::checkpoint::open(opt.model_dir);
  std::optional<qprob::model::weight_map> map;
  std::string map_error;
  try {
    map = qprob::model::map_weights(config, ckpt);
  } catch (const qprob::format_error& e) {
    map_error = e.what();  // still print the inventory, then fail
  }

  std::int64_t params = 0;
  std::int64_t bytes  = 0;
  std::map<std::string, std::pair<std::int64_t, std::int64_t>> histogram;  // dtype -> (tensors, elements)
  for (const auto& [name, e] : ckpt.entries()) {
    params += e.info->numel();
    bytes += e.info->nbytes();
    auto& h = histogram[std::string(qprob::dtype_name(e.info->dtype))];
    ++h.first;
    h.second += e.info->numel();
  }
  const auto arch = config.architectures.empty() ? std::string("(none listed)") : config.architectures.front();
  std::printf("model        %s\n", opt.model_dir.string().c_str());
  std::printf("architecture %s (family %s)\n", arch.c_str(), std::string(qprob::model::to_string(config.model_family)).c_str());
  std::printf("checkpoint   %s (%zu shard%s)\n", ckpt.label().c_str(), ckpt.shards().size(), ckpt.shards().size() == 1 ? "" : "s");
  std::printf("parameters   %lld in %zu tensors, %lld bytes\n", static_cast<long long>(params), ckpt.size(),
              static_cast<long long>(bytes));
  std::printf("dtypes      ");
  for (const auto& [name, h] : histogram) {
    std::printf(" %s: %lld tensors / %lld elements;", name.c_str(), static_cast<long long>(h.first),
                static_cast<long long>(h.second));
  }
  std::printf("\n");
  if (map) {
    std::printf("lm_head      %s\n", map->lm_head_tied() ? "tied to embed_tokens" : "separate");
  }

  if (!opt.no_inventory) {
    std::printf("\n%-56s %-5s %-18s %s\n", "tensor", "dtype", "shape", "role");
    for (const auto& [name, e] : ckpt.entries()) {
      std::string role = "-";
      if (map) {
        if (const auto* slot = map->slot_of(name)) {
          role = slot->canonical_name();
        } else {
          role = "(ignored buffer)";
        }
      }
      std::printf("%-56s %-5s %-18s %s\n", name.c_str(), std::string(qprob::dtype_name(e.info->dtype)).c_str(),
                  qprob::io::shape_string(e.info->shape).c_str(), role.c_str());
    }
  }
  std::printf("\nparsed config\n%s", qprob::model::describe(config).c_str());
  if (opt.text) {
    print_tokenization(opt);
  }
  if (!map_error.empty()) {
    std::fprintf(stderr, "error: %s\n", map_error.c_str());
    return 1;
  }
  std::printf("\nResult: PASSED (every tensor mapped)\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  options opt;
  CLI::App app{"qprob-inspect: architecture, parameters and tensor inventory of a Hugging Face model directory"};
  app.add_option("MODEL_DIR", opt.model_dir, "directory with config.json and model.safetensors (or its index)")->required();
  app.add_flag("--skip-missing", opt.skip_missing, "exit 77 (skipped) instead of failing when MODEL_DIR is absent");
  app.add_flag("--no-inventory", opt.no_inventory, "omit the per-tensor table");
  app.add_option("--text", opt.text, "also tokenize this string with the directory's tokenizer");
  CLI11_PARSE(app, argc, argv);

  std::error_code ec;
  if (opt.skip_missing && !std::filesystem::exists(opt.model_dir, ec)) {
    std::printf("skipped: %s is absent (shared data not available here)\n", opt.model_dir.string().c_str());
    return exit_skipped;
  }
  try {
    return run(opt);
  } catch (const qprob::error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
