// SPDX-License-Identifier: Apache-2.0
#pragma once
// Atomic replacement of a whole file: the bytes go to `<path>.tmp.<pid>` in the same directory, are fsynced,
// and the temporary file is renamed over `path` (rename within one directory is atomic on POSIX), then the
// directory is fsynced. A reader therefore sees either the old file or the complete new one, never a prefix,
// and a failure at any step leaves `path` untouched and no temporary file behind. This is the same protocol as
// io/safetensors.hpp's writer, factored out for text outputs (results JSON, per-sample JSONL).
// Host only (POSIX).

#include <qprob/core/error.hpp>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <utility>

#include <fcntl.h>
#include <unistd.h>

namespace qprob::io {

struct atomic_write_options {
  /// Test hook: called at "opened", "data", "synced" (before the rename); throwing from it simulates a failure
  /// at that point. The writer must then leave neither `path` changed nor its temporary file.
  std::function<void(std::string_view stage)> on_stage;
};

namespace atomic_detail {

/// Closes and removes the temporary file on destruction unless released.
class temp_guard {
public:
  explicit temp_guard(std::filesystem::path p) : path_(std::move(p)) {}
  temp_guard(const temp_guard&)            = delete;
  temp_guard& operator=(const temp_guard&) = delete;
  ~temp_guard() {
    if (fd >= 0) {
      ::close(fd);
    }
    if (!released_) {
      std::error_code ec;
      std::filesystem::remove(path_, ec);
    }
  }
  void release() noexcept { released_ = true; }
  int fd = -1;

private:
  std::filesystem::path path_;
  bool released_ = false;
};

}  // namespace atomic_detail

/// Replaces `path` by `bytes` atomically (see the header comment). The parent directory must exist.
/// @throws format_error naming `path` for every I/O failure; whatever the on_stage hook throws.
inline void write_file_atomic(const std::filesystem::path& path, std::string_view bytes,
                              const atomic_write_options& options = {}) {
  const std::string file = path.string();
  QPROB_CHECK(!path.filename().empty(), "write_file_atomic: \"", file, "\" names no file");
  const std::filesystem::path tmp = file + ".tmp." + std::to_string(::getpid());
  const auto stage                = [&](std::string_view s) {
    if (options.on_stage) {
      options.on_stage(s);
    }
  };
  atomic_detail::temp_guard guard(tmp);
  guard.fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (guard.fd < 0) {
    throw format_error(file, "", "cannot create temporary file " + tmp.string() + ": " + std::strerror(errno));
  }
  stage("opened");
  const char* p = bytes.data();
  std::size_t n = bytes.size();
  while (n > 0) {
    const auto w = ::write(guard.fd, p, n);
    if (w < 0) {
      if (errno == EINTR) {
        continue;
      }
      throw format_error(file, "", std::string("write failed: ") + std::strerror(errno));
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  stage("data");
  if (::fsync(guard.fd) != 0) {
    throw format_error(file, "", std::string("fsync failed: ") + std::strerror(errno));
  }
  const int fd = std::exchange(guard.fd, -1);
  if (::close(fd) != 0) {
    throw format_error(file, "", std::string("close failed: ") + std::strerror(errno));
  }
  stage("synced");
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    throw format_error(file, "", "cannot rename " + tmp.string() + ": " + std::strerror(errno));
  }
  guard.release();
  const auto dir = path.parent_path();
  const int dfd  = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);  // best effort: some file systems refuse fsync on directories
    ::close(dfd);
  }
}

}  // namespace qprob::io
