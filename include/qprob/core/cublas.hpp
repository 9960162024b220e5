// SPDX-License-Identifier: Apache-2.0
#pragma once
// Owning handles and status checks for cuBLAS and cuSOLVER (dense). Both throw qprob::cuda_library_error
// naming the library, the status and the call.

#include <qprob/core/error.hpp>

#include <cublas_v2.h>
#include <cusolverDn.h>

#include <string_view>
#include <utility>

namespace qprob {

/// A cuBLAS or cuSOLVER call failed.
class cuda_library_error : public error {
public:
  cuda_library_error(std::string_view library, int status, std::string_view expression, std::string_view file, int line)
      : error(detail::concat(library, " error ", status, " in `", expression, "` at ", file, ":", line))
      , status_(status) {}
  [[nodiscard]] int status() const noexcept { return status_; }

private:
  int status_;
};

namespace detail {
[[noreturn]] inline void throw_library_error(std::string_view library, int status, std::string_view expr,
                                             std::string_view file, int line) {
  const auto slash = file.find_last_of('/');
  throw cuda_library_error(library, status, expr, slash == std::string_view::npos ? file : file.substr(slash + 1), line);
}
}  // namespace detail

}  // namespace qprob

#define QPROB_CUBLAS_TRY(expr)                                                                           \
  do {                                                                                                   \
    const cublasStatus_t qprob_blas_status_ = (expr);                                                    \
    if (qprob_blas_status_ != CUBLAS_STATUS_SUCCESS) {                                                   \
      ::qprob::detail::throw_library_error("cuBLAS", static_cast<int>(qprob_blas_status_), #expr, __FILE__, __LINE__); \
    }                                                                                                    \
  } while (0)

#define QPROB_CUSOLVER_TRY(expr)                                                                         \
  do {                                                                                                   \
    const cusolverStatus_t qprob_solver_status_ = (expr);                                                \
    if (qprob_solver_status_ != CUSOLVER_STATUS_SUCCESS) {                                               \
      ::qprob::detail::throw_library_error("cuSOLVER", static_cast<int>(qprob_solver_status_), #expr, __FILE__, __LINE__); \
    }                                                                                                    \
  } while (0)

namespace qprob {

/// A cuBLAS handle bound to a stream.
class cublas_handle {
public:
  explicit cublas_handle(cudaStream_t stream) {
    QPROB_CUBLAS_TRY(cublasCreate(&handle_));
    QPROB_CUBLAS_TRY(cublasSetStream(handle_, stream));
  }
  cublas_handle(const cublas_handle&)            = delete;
  cublas_handle& operator=(const cublas_handle&) = delete;
  cublas_handle(cublas_handle&& o) noexcept : handle_(std::exchange(o.handle_, nullptr)) {}
  ~cublas_handle() {
    if (handle_ != nullptr) {
      (void)cublasDestroy(handle_);
    }
  }
  [[nodiscard]] cublasHandle_t get() const noexcept { return handle_; }

private:
  cublasHandle_t handle_ = nullptr;
};

/// A cuSOLVER dense handle bound to a stream.
class cusolver_handle {
public:
  explicit cusolver_handle(cudaStream_t stream) {
    QPROB_CUSOLVER_TRY(cusolverDnCreate(&handle_));
    QPROB_CUSOLVER_TRY(cusolverDnSetStream(handle_, stream));
  }
  cusolver_handle(const cusolver_handle&)            = delete;
  cusolver_handle& operator=(const cusolver_handle&) = delete;
  cusolver_handle(cusolver_handle&& o) noexcept : handle_(std::exchange(o.handle_, nullptr)) {}
  ~cusolver_handle() {
    if (handle_ != nullptr) {
      (void)cusolverDnDestroy(handle_);
    }
  }
  [[nodiscard]] cusolverDnHandle_t get() const noexcept { return handle_; }

private:
  cusolverDnHandle_t handle_ = nullptr;
};

}  // namespace qprob
