// SPDX-License-Identifier: Apache-2.0
#pragma once
// Helpers for the task tests: fixture files in a per-test temporary folder, the shared data folder, and a
// check that a call throws format_error whose message contains given pieces.

#include <qprob/core/error.hpp>
#include <qprob/tasks/load.hpp>

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <optional>
#include <string>

#include "support.hpp"
#include <unistd.h>

namespace qprob::test {

/// A fresh folder under the system temp dir, removed with its contents at scope exit.
class fixture_dir {
public:
  explicit fixture_dir(const std::string& tag) {
    static int counter = 0;
    path_              = std::filesystem::temp_directory_path()
            / ("qprob_tasks_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  fixture_dir(const fixture_dir&)            = delete;
  fixture_dir& operator=(const fixture_dir&) = delete;
  ~fixture_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

  /// Writes `bytes` to <folder>/<name> (creating sub-folders) and returns the full path.
  std::filesystem::path write(const std::string& name, const std::string& bytes) const {
    const auto p = path_ / name;
    std::filesystem::create_directories(p.parent_path());
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    REQUIRE(out.good());
    return p;
  }

private:
  std::filesystem::path path_;
};

/// The shared data folder (…/shared/data) if present; otherwise MESSAGE(reason) and nullopt.
inline std::optional<std::filesystem::path> shared_data_or_skip(const std::string& probe) {
  std::string reason;
  const auto p = shared_path("data/" + probe, &reason);
  if (!p) {
    MESSAGE(reason);
    return std::nullopt;
  }
  return *shared_dir() / "data";
}

/// Runs `f`, requires a qprob::format_error, and checks that its message contains every piece.
template <class F>
void check_format_error(F&& f, std::initializer_list<std::string> pieces) {
  bool thrown = false;
  try {
    f();
  } catch (const qprob::format_error& e) {
    thrown                    = true;
    const std::string message = e.what();
    INFO("message: " << message);
    for (const auto& piece : pieces) {
      CHECK_MESSAGE(message.find(piece) != std::string::npos, "missing \"" << piece << "\"");
    }
  }
  CHECK_MESSAGE(thrown, "expected qprob::format_error");
}

} // namespace qprob::test
