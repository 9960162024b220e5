// SPDX-License-Identifier: Apache-2.0
// qprob_check_family_models ROOT: loads every model directory written by tests/torch/make_family_models.py
// (transformers' save_pretrained of randomly initialised OPT, BLOOM, Mistral, Llama, Phi and Qwen2 models)
// through qprob's safetensors reader, config parser and name mapping, and checks that
//   * config.json parses (as written by the installed transformers, i.e. the 5.x spelling),
//   * every tensor maps onto the internal layout (no missing, unexpected or mis-shaped tensor),
//   * every tensor's dtype, shape and raw bytes (sha256) equal the manifest Python wrote from the same files,
//   * the checkpoint holds exactly the manifest's tensors.
// Prints one row per model and "Result: PASSED"/"Result: FAILED"; exits 1 on any mismatch.
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

/// SHA-256 (FIPS 180-4), enough to compare against Python's hashlib; self-checked at startup.
class sha256 {
public:
  void update(std::span<const std::byte> data) {
    for (auto b : data) {
      block_[fill_++] = static_cast<std::uint8_t>(b);
      ++length_;
      if (fill_ == 64) {
        compress();
        fill_ = 0;
      }
    }
  }
  std::string hex() {
    const std::uint64_t bits = length_ * 8;
    const std::byte one{0x80};
    update({&one, 1});
    const std::byte zero{0};
    while (fill_ != 56) {
      update({&zero, 1});
    }
    for (int i = 7; i >= 0; --i) {
      block_[fill_++] = static_cast<std::uint8_t>(bits >> (8 * i));
    }
    compress();
    std::string out;
    char buf[9];
    for (auto h : h_) {
      std::snprintf(buf, sizeof buf, "%08x", h);
      out += buf;
    }
    return out;
  }

private:
  static std::uint32_t rotr(std::uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }
  void compress() {
    // Round constants: first 32 bits of the fractional parts of the cube roots of the first 64 primes.
    static constexpr std::uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2};
    std::uint32_t w[64];
    for (int i = 0; i < 16; ++i) {
      w[i] = (std::uint32_t{block_[4 * i]} << 24) | (std::uint32_t{block_[4 * i + 1]} << 16) |
             (std::uint32_t{block_[4 * i + 2]} << 8) | std::uint32_t{block_[4 * i + 3]};
    }
    for (int i = 16; i < 64; ++i) {
      const auto s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const auto s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i]          = w[i - 16] + s0 + w[i - 7] + s1;
    }
    auto [a, b, c, d, e, f, g, h] = h_;
    for (int i = 0; i < 64; ++i) {
      const auto t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      const auto t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    const std::array<std::uint32_t, 8> add = {a, b, c, d, e, f, g, h};
    for (int i = 0; i < 8; ++i) {
      h_[i] += add[i];
    }
  }
  // Initial hash: fractional parts of the square roots of the first 8 primes.
  std::array<std::uint32_t, 8> h_ = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  std::uint8_t block_[64]{};
  int fill_            = 0;
  std::uint64_t length_ = 0;
};

std::string sha256_hex(std::span<const std::byte> data) {
  sha256 s;
  s.update(data);
  return s.hex();
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
