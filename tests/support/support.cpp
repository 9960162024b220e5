// SPDX-License-Identifier: Apache-2.0
#include "support.hpp"

#include <cstdlib>
#include <string_view>

namespace qprob::test {

std::uint64_t run_seed() {
  static const std::uint64_t seed = [] {
    if (const char* env = std::getenv("QPROB_TEST_SEED"); env != nullptr && *env != '\0') {
      return static_cast<std::uint64_t>(std::strtoull(env, nullptr, 10));
    }
    std::random_device device;
    return (static_cast<std::uint64_t>(device()) << 32) ^ device();
  }();
  return seed;
}

std::mt19937_64 make_rng(std::uint64_t salt) {
  std::seed_seq seq{static_cast<std::uint32_t>(run_seed()), static_cast<std::uint32_t>(run_seed() >> 32),
                    static_cast<std::uint32_t>(salt), static_cast<std::uint32_t>(salt >> 32)};
  return std::mt19937_64(seq);
}

std::optional<std::filesystem::path> shared_dir() {
  std::filesystem::path dir;
  if (const char* env = std::getenv("QPROB_SHARED_DIR"); env != nullptr && *env != '\0') {
    dir = env;
  } else {
    dir = QPROB_SHARED_DIR_DEFAULT;
  }
  std::error_code ec;
  if (std::filesystem::is_directory(dir, ec)) {
    return dir;
  }
  return std::nullopt;
}

std::optional<std::filesystem::path> shared_path(const std::string& relative, std::string* reason) {
  const auto dir = shared_dir();
  if (!dir) {
    if (reason != nullptr) {
      *reason = "skipped: shared data folder not found (set QPROB_SHARED_DIR or put ../shared beside the checkout)";
    }
    return std::nullopt;
  }
  auto path = *dir / relative;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    if (reason != nullptr) {
      *reason = "skipped: " + path.string() + " is absent";
    }
    return std::nullopt;
  }
  return path;
}

}  // namespace qprob::test
