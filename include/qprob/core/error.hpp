// SPDX-License-Identifier: Apache-2.0
#pragma once
// Host-side error types and the precondition check. Library code reports every problem by throwing one of
// these, with a message that names the offending values (and, for files, the file and the field); it never
// prints, exits or aborts. CUDA-specific errors live in core/cuda_check.hpp.

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace qprob {

/// Base of every exception qprob throws.
class error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

/// A precondition on arguments failed: bad shape, unsupported size, wrong policy for an op.
class invalid_argument : public error {
public:
  using error::error;
};

/// Malformed or unreadable input: names the file, the field (or position) and the problem.
class format_error : public error {
public:
  format_error(std::string file, std::string field, const std::string& problem)
      : error(file + ": " + (field.empty() ? std::string() : field + ": ") + problem)
      , file_(std::move(file))
      , field_(std::move(field)) {}

  [[nodiscard]] const std::string& file() const noexcept { return file_; }
  [[nodiscard]] const std::string& field() const noexcept { return field_; }

private:
  std::string file_;
  std::string field_;
};

namespace detail {

/// Concatenates streamable values into one string; used to build error messages.
template <class... Args>
[[nodiscard]] std::string concat(const Args&... args) {
  if constexpr (sizeof...(Args) == 0) {
    return {};
  } else {
    std::ostringstream out;
    (out << ... << args);
    return out.str();
  }
}

[[noreturn]] inline void throw_check_failure(std::string_view condition,
                                             std::string_view file,
                                             int line,
                                             const std::string& message) {
  // The file name alone keeps messages short and independent of the build directory.
  const auto slash = file.find_last_of('/');
  const auto base  = slash == std::string_view::npos ? file : file.substr(slash + 1);
  std::string text = message.empty() ? std::string("precondition failed") : message;
  text += detail::concat(" [check `", condition, "` at ", base, ":", line, "]");
  throw invalid_argument(text);
}

}  // namespace detail
}  // namespace qprob

/// Throws qprob::invalid_argument unless `cond` holds. The remaining arguments are streamed into the message,
/// so it names the values: QPROB_CHECK(k % g == 0, "k=", k, " is not a multiple of group_size=", g).
#define QPROB_CHECK(cond, ...)                                                                            \
  do {                                                                                                    \
    if (!(cond)) {                                                                                        \
      ::qprob::detail::throw_check_failure(#cond, __FILE__, __LINE__, ::qprob::detail::concat(__VA_ARGS__)); \
    }                                                                                                     \
  } while (0)

/// Binary comparisons that print both operands: "expected rows == cols, got rows=3, cols=4".
#define QPROB_CHECK_OP_(a, b, op, ...)                                                                    \
  do {                                                                                                    \
    const auto& qprob_lhs_ = (a);                                                                         \
    const auto& qprob_rhs_ = (b);                                                                         \
    if (!(qprob_lhs_ op qprob_rhs_)) {                                                                    \
      ::qprob::detail::throw_check_failure(                                                               \
          #a " " #op " " #b,                                                                              \
          __FILE__,                                                                                       \
          __LINE__,                                                                                       \
          ::qprob::detail::concat(                                                                        \
              "expected " #a " " #op " " #b ", got " #a "=", qprob_lhs_, ", " #b "=", qprob_rhs_ __VA_OPT__(, ": ", ) __VA_ARGS__)); \
    }                                                                                                     \
  } while (0)
#define QPROB_CHECK_EQ(a, b, ...) QPROB_CHECK_OP_(a, b, ==, __VA_ARGS__)
#define QPROB_CHECK_LE(a, b, ...) QPROB_CHECK_OP_(a, b, <=, __VA_ARGS__)
#define QPROB_CHECK_LT(a, b, ...) QPROB_CHECK_OP_(a, b, <, __VA_ARGS__)
