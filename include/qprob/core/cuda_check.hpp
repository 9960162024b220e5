// SPDX-License-Identifier: Apache-2.0
#pragma once
// CUDA runtime error handling, two styles as in CUB: launchers return cudaError_t (QPROB_CUDA_RETURN), the
// public API and tests throw qprob::cuda_error (QPROB_CUDA_TRY), which keeps the code, the failing call's
// text, the file and the line. Needs the CUDA runtime headers, not nvcc.

#include <qprob/core/error.hpp>

#include <cuda_runtime_api.h>

#include <string>
#include <string_view>

namespace qprob {

/// A CUDA runtime call failed.
class cuda_error : public error {
public:
  cuda_error(cudaError_t code, std::string_view expression, std::string_view file, int line)
      : error(detail::concat("CUDA error ",
                             cudaGetErrorName(code),
                             " (",
                             static_cast<int>(code),
                             "): ",
                             cudaGetErrorString(code),
                             " in `",
                             expression,
                             "` at ",
                             file,
                             ":",
                             line))
      , code_(code)
      , expression_(expression)
      , file_(file)
      , line_(line) {}

  [[nodiscard]] cudaError_t code() const noexcept { return code_; }
  [[nodiscard]] const std::string& expression() const noexcept { return expression_; }
  [[nodiscard]] const std::string& file() const noexcept { return file_; }
  [[nodiscard]] int line() const noexcept { return line_; }

private:
  cudaError_t code_;
  std::string expression_;
  std::string file_;
  int line_;
};

namespace detail {
[[noreturn]] inline void throw_cuda_error(cudaError_t code, std::string_view expr, std::string_view file, int line) {
  // Clear the error state that the runtime keeps for the last failure, as Thrust does, so that a caught
  // error does not resurface at the next unrelated cudaGetLastError().
  (void)cudaGetLastError();
  const auto slash = file.find_last_of('/');
  throw cuda_error(code, expr, slash == std::string_view::npos ? file : file.substr(slash + 1), line);
}
}  // namespace detail

}  // namespace qprob

/// Evaluates a CUDA runtime call and throws qprob::cuda_error if it did not return cudaSuccess.
#define QPROB_CUDA_TRY(expr)                                                         \
  do {                                                                               \
    const cudaError_t qprob_status_ = (expr);                                        \
    if (qprob_status_ != cudaSuccess) {                                              \
      ::qprob::detail::throw_cuda_error(qprob_status_, #expr, __FILE__, __LINE__);   \
    }                                                                                \
  } while (0)

/// Evaluates a CUDA runtime call and returns its error code from the enclosing function on failure.
#define QPROB_CUDA_RETURN(expr)                                                      \
  do {                                                                               \
    const cudaError_t qprob_status_ = (expr);                                        \
    if (qprob_status_ != cudaSuccess) {                                              \
      return qprob_status_;                                                          \
    }                                                                                \
  } while (0)
