// SPDX-License-Identifier: Apache-2.0
#pragma once
// Helpers for the io and model tests: a per-test temporary directory and raw file builders.

#include <qprob/core/error.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

namespace qprob::test {

/// A fresh directory under the system temp dir, removed with its contents at scope exit.
class temp_dir {
public:
  explicit temp_dir(const std::string& tag) {
    static int counter = 0;
    path_ = std::filesystem::temp_directory_path() /
            ("qprob_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  temp_dir(const temp_dir&)            = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }
  [[nodiscard]] std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

  /// Names of every entry in the directory, sorted.
  [[nodiscard]] std::vector<std::string> listing() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(path_)) {
      out.push_back(e.path().filename().string());
    }
    std::sort(out.begin(), out.end());
    return out;
  }

private:
  std::filesystem::path path_;
};

inline void write_bytes(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

inline std::string le64(std::uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) {
    s[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  }
  return s;
}

/// A safetensors file from a header text and `data_bytes` zero bytes of data.
inline std::string raw_safetensors(const std::string& header, std::size_t data_bytes) {
  return le64(header.size()) + header + std::string(data_bytes, '\0');
}

/// Runs `fn`, requires it to throw qprob::format_error, and returns the message.
template <class Fn>
std::string format_error_message(Fn&& fn) {
  try {
    fn();
  } catch (const qprob::format_error& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL("expected qprob::format_error, got another exception: " << e.what());
    return {};
  }
  FAIL("expected qprob::format_error, nothing was thrown");
  return {};
}

inline bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace qprob::test
