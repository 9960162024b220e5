// SPDX-License-Identifier: Apache-2.0
#pragma once
// Atomic replacement of a whole file: the bytes go to `<path>.tmp.<pid>` in the same directory, are fsynced,
// and the temporary file is renamed over `path` (rename within one directory is atomic on POSIX), then the
// directory is fsynced. A reader therefore sees either the old file or the complete new one, never a prefix,
// and a failure at any step leaves `path` untouched and no temporary file behind. Every qprob writer uses it:
// safetensors files and indexes, results JSON, per-sample JSONL.
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

namespace detail {

/// write(2) until every byte is written (retrying on EINTR).
inline void write_all(int fd, const void* data, std::size_t n, const std::string& file) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const auto w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) {
        continue;
      }
      throw format_error(file, "", std::string("write failed: ") + std::strerror(errno));
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

/// Best effort: some file systems refuse fsync on directories.
inline void fsync_directory(const std::filesystem::path& dir) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    (void)::fsync(fd);
    ::close(fd);
  }
}

}  // namespace detail

/// A file written atomically: the constructor creates `<path>.tmp.<pid>` beside `path`; write() appends;
/// sync() flushes it to disk and closes it; commit() renames it over `path` and syncs the directory. Destroyed
/// without commit() (an exception, an early return), it removes the temporary file, so `path` is either
/// untouched or complete. The one implementation of the protocol for every qprob writer.
class atomic_output_file {
public:
  explicit atomic_output_file(std::filesystem::path path)
      : path_(std::move(path)), tmp_(path_.string() + ".tmp." + std::to_string(::getpid())) {
    QPROB_CHECK(!path_.filename().empty(), "atomic_output_file: \"", path_.string(), "\" names no file");
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) {
      throw format_error(path_.string(), "", "cannot create temporary file " + tmp_.string() + ": " + std::strerror(errno));
    }
  }
  atomic_output_file(const atomic_output_file&)            = delete;
  atomic_output_file& operator=(const atomic_output_file&) = delete;
  ~atomic_output_file() {
    if (fd_ >= 0) {
      ::close(fd_);
    }
    if (!committed_) {
      std::error_code ec;
      std::filesystem::remove(tmp_, ec);
    }
  }

  void write(const void* data, std::size_t n) { detail::write_all(fd_, data, n, path_.string()); }
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }

  /// Flushes the data to disk and closes the temporary file.
  void sync() {
    if (::fsync(fd_) != 0) {
      throw format_error(path_.string(), "", std::string("fsync failed: ") + std::strerror(errno));
    }
    if (::close(std::exchange(fd_, -1)) != 0) {
      throw format_error(path_.string(), "", std::string("close failed: ") + std::strerror(errno));
    }
  }

  /// Replaces `path` by the (synced) temporary file, then syncs the directory.
  void commit() {
    if (fd_ >= 0) {
      sync();
    }
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
      throw format_error(path_.string(), "", "cannot rename " + tmp_.string() + ": " + std::strerror(errno));
    }
    committed_ = true;
    detail::fsync_directory(path_.parent_path());
  }

private:
  std::filesystem::path path_;
  std::filesystem::path tmp_;
  int fd_         = -1;
  bool committed_ = false;
};

/// Replaces `path` by `bytes` atomically (see the header comment). The parent directory must exist.
/// @throws format_error naming `path` for every I/O failure; whatever the on_stage hook throws.
inline void write_file_atomic(const std::filesystem::path& path, std::string_view bytes,
                              const atomic_write_options& options = {}) {
  const auto stage = [&](std::string_view s) {
    if (options.on_stage) {
      options.on_stage(s);
    }
  };
  atomic_output_file out(path);
  stage("opened");
  out.write(bytes);
  stage("data");
  out.sync();
  stage("synced");
  out.commit();
}

}  // namespace qprob::io
