// SPDX-License-Identifier: Apache-2.0
#pragma once
// A one-line text progress bar on stderr for the example drivers: "<label> [#####.....] 120/400 requests
// 31.2 req/s ETA 00:09". It redraws in place (carriage return) at most every 0.2 s and only when stderr is a
// terminal, so logs and CI output stay clean; disabled, it prints nothing at all. Layer: eval (host only).

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <string>
#include <utility>

#include <unistd.h>

namespace qprob::eval {

class progress_bar {
public:
  using clock = std::chrono::steady_clock;

  /// `enabled`: the caller's wish (--no-progress turns it off); the bar also stays off when stderr is not a TTY.
  progress_bar(std::string label, bool enabled)
      : label_(std::move(label)), enabled_(enabled && ::isatty(STDERR_FILENO) == 1), start_(clock::now()) {}
  progress_bar(const progress_bar&)            = delete;
  progress_bar& operator=(const progress_bar&) = delete;
  ~progress_bar() { finish(); }

  [[nodiscard]] bool enabled() const noexcept { return enabled_; }

  /// Records progress; redraws when enabled and 0.2 s have passed (or at the end).
  void update(std::size_t done, std::size_t total) {
    if (!enabled_ || finished_) {
      return;
    }
    const auto now = clock::now();
    if (done < total && drawn_ && now - last_draw_ < std::chrono::milliseconds(200)) {
      return;
    }
    last_draw_ = now;
    drawn_     = true;
    std::fputs(("\r" + line(done, total, std::chrono::duration<double>(now - start_).count())).c_str(), stderr);
    std::fflush(stderr);
  }

  /// Ends the line (once).
  void finish() {
    if (enabled_ && drawn_ && !finished_) {
      std::fputc('\n', stderr);
      std::fflush(stderr);
    }
    finished_ = true;
  }

  /// The text of the bar for `done` of `total` after `seconds` (public so that it can be tested).
  [[nodiscard]] std::string line(std::size_t done, std::size_t total, double seconds) const {
    constexpr int width = 30;
    const double frac   = total == 0 ? 1.0 : static_cast<double>(std::min(done, total)) / static_cast<double>(total);
    const int fill      = static_cast<int>(frac * width);
    std::string bar(static_cast<std::size_t>(fill), '#');
    bar.append(static_cast<std::size_t>(width - fill), '.');
    const double rate = seconds > 0 ? static_cast<double>(done) / seconds : 0.0;
    std::string eta   = "--:--";
    if (rate > 0 && done <= total) {
      const auto left = static_cast<long long>(static_cast<double>(total - done) / rate + 0.5);
      char b[32];
      if (left >= 3600) {
        std::snprintf(b, sizeof b, "%lld:%02lld:%02lld", left / 3600, left / 60 % 60, left % 60);
      } else {
        std::snprintf(b, sizeof b, "%02lld:%02lld", left / 60, left % 60);
      }
      eta = b;
    }
    char tail[128];
    std::snprintf(tail, sizeof tail, " %zu/%zu requests %.1f req/s ETA %s", done, total, rate, eta.c_str());
    return label_ + " [" + bar + "]" + tail;
  }

private:
  std::string label_;
  bool enabled_;
  bool drawn_    = false;
  bool finished_ = false;
  clock::time_point start_;
  clock::time_point last_draw_{};
};

}  // namespace qprob::eval
