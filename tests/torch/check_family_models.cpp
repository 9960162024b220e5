// SPDX-License-Identifier: Apache-2.0
// qprob_check_family_models ROOT: loads every model directory written by tests/torch/make_family_models.py
// (transformers' save_pretrained of randomly initialised OPT, BLOOM, Mistral, Llama, Phi and Qwen2 models)
// through qprob's safetensors reader, config parser and name mapping, and checks that
//   * config.json parses (as written by the installed transformers, i.e. the 5.x spelling),
//   * every tensor maps onto the internal layout (no missing, unexpected or mis-shaped tensor),
//   * every tensor's dtype, shape and raw bytes (sha256) equal the manifest Python wrote from the same files,
//   * the checkpoint holds exactly the manifest's tensors.
// Prints one row per model and "Result: PASSED"/"Result: FAILED"; exits 1 on any mismatch.
#include <qprob/eval/python_json.hpp>
#include <qprob/io/safetensors.hpp>
#include <qprob/model/config.hpp>
#include <qprob/model/weights.hpp>

#include <nlohmann/json.hpp>

#include <array>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <vector>

namespace {

/// SHA-256 hex of raw bytes, through qprob::eval::sha256_hex (FIPS 180-4, the hash lm-eval's sample hashes use).
std::string sha256_hex(std::span<const std::byte> data) {
  return qprob::eval::sha256_hex(std::string_view(reinterpret_cast<const char*>(data.data()), data.size()));
}

bool sha256_self_test() {
  const std::string abc = "abc";
  const std::string long_msg(1000, 'a');  // crosses several blocks
  return sha256_hex(std::as_bytes(std::span(abc))) ==
             "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" &&
         sha256_hex({}) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" &&
         sha256_hex(std::as_bytes(std::span(long_msg))) ==
             "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3";
}

struct row {
  std::string name, family, problem;
  std::size_t tensors = 0, mapped = 0, identical = 0;
  bool ok = false;
};

row check_model(const std::filesystem::path& dir) {
  row r;
  r.name = dir.filename().string();
  try {
    const auto manifest = nlohmann::json::parse(std::ifstream(dir / "qprob_manifest.json"));
    const auto config   = qprob::model::load_config(dir);
    r.family            = std::string(qprob::model::to_string(config.model_family));
    const auto ckpt     = qprob::io::checkpoint::open(dir);
    const auto map      = qprob::model::map_weights(config, ckpt);
    r.tensors           = ckpt.size();
    for (const auto& [name, e] : ckpt.entries()) {
      r.mapped += map.slot_of(name) != nullptr;
    }
    const auto& expected = manifest.at("tensors");
    for (const auto& [name, m] : expected.items()) {
      const auto* info = ckpt.find(name);
      if (info == nullptr) {
        r.problem += " missing " + name + ";";
        continue;
      }
      if (std::string(qprob::dtype_name(info->dtype)) != m.at("dtype").get<std::string>() ||
          info->shape != m.at("shape").get<std::vector<std::int64_t>>()) {
        r.problem += " dtype/shape of " + name + ";";
        continue;
      }
      if (sha256_hex(ckpt.bytes(name)) != m.at("sha256").get<std::string>()) {
        r.problem += " bytes of " + name + ";";
        continue;
      }
      ++r.identical;
    }
    if (expected.size() != ckpt.size()) {
      r.problem += " checkpoint has " + std::to_string(ckpt.size()) + " tensors, manifest " +
                   std::to_string(expected.size()) + ";";
    }
    r.ok = r.problem.empty() && r.mapped == r.tensors && r.identical == r.tensors && r.tensors > 0;
  } catch (const std::exception& e) {
    r.problem = e.what();
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s ROOT  (directory written by tests/torch/make_family_models.py)\n", argv[0]);
    return 2;
  }
  if (!sha256_self_test()) {
    std::printf("sha256 self-test failed\nResult: FAILED\n");
    return 1;
  }
  std::vector<std::filesystem::path> dirs;
  for (const auto& e : std::filesystem::directory_iterator(argv[1])) {
    if (e.is_directory() && std::filesystem::exists(e.path() / "qprob_manifest.json")) {
      dirs.push_back(e.path());
    }
  }
  std::sort(dirs.begin(), dirs.end());
  if (dirs.empty()) {
    std::printf("no model directories with qprob_manifest.json under %s\nResult: FAILED\n", argv[1]);
    return 1;
  }
  bool all_ok = true;
  std::printf("%-12s %-8s %8s %8s %10s  %s\n", "model", "family", "tensors", "mapped", "identical", "status");
  for (const auto& d : dirs) {
    const auto r = check_model(d);
    all_ok       = all_ok && r.ok;
    std::printf("%-12s %-8s %8zu %8zu %10zu  %s%s\n", r.name.c_str(), r.family.c_str(), r.tensors, r.mapped,
                r.identical, r.ok ? "ok" : "FAILED:", r.ok ? "" : r.problem.c_str());
  }
  std::printf("Result: %s\n", all_ok ? "PASSED" : "FAILED");
  return all_ok ? 0 : 1;
}
