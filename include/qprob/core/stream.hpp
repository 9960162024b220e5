// SPDX-License-Identifier: Apache-2.0
#pragma once
// Owning wrappers for CUDA streams and events. qprob never uses the legacy default stream inside the library:
// every API takes a cudaStream_t, and these types make owning one exception-safe.

#include <qprob/core/cuda_check.hpp>

#include <cuda_runtime_api.h>

#include <utility>

namespace qprob {

/// A non-blocking CUDA stream (it does not synchronize with the legacy default stream).
class stream {
public:
  stream() { QPROB_CUDA_TRY(cudaStreamCreateWithFlags(&handle_, cudaStreamNonBlocking)); }
  stream(const stream&)            = delete;
  stream& operator=(const stream&) = delete;
  stream(stream&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
  stream& operator=(stream&& other) noexcept {
    if (this != &other) {
      reset();
      handle_ = std::exchange(other.handle_, nullptr);
    }
    return *this;
  }
  ~stream() { reset(); }

  [[nodiscard]] cudaStream_t get() const noexcept { return handle_; }
  operator cudaStream_t() const noexcept { return handle_; }  // NOLINT: a stream is used where a handle is

  /// Blocks the host until all work queued so far has finished; throws on an asynchronous error.
  void synchronize() const { QPROB_CUDA_TRY(cudaStreamSynchronize(handle_)); }

private:
  void reset() noexcept {
    if (handle_ != nullptr) {
      (void)cudaStreamDestroy(handle_);
      handle_ = nullptr;
    }
  }
  cudaStream_t handle_ = nullptr;
};

/// A CUDA event for ordering between streams and for timing.
class event {
public:
  explicit event(bool timing = true) {
    QPROB_CUDA_TRY(cudaEventCreateWithFlags(&handle_, timing ? cudaEventDefault : cudaEventDisableTiming));
  }
  event(const event&)            = delete;
  event& operator=(const event&) = delete;
  event(event&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
  event& operator=(event&& other) noexcept {
    if (this != &other) {
      reset();
      handle_ = std::exchange(other.handle_, nullptr);
    }
    return *this;
  }
  ~event() { reset(); }

  [[nodiscard]] cudaEvent_t get() const noexcept { return handle_; }
  void record(cudaStream_t s) { QPROB_CUDA_TRY(cudaEventRecord(handle_, s)); }
  void synchronize() const { QPROB_CUDA_TRY(cudaEventSynchronize(handle_)); }
  /// Makes `s` wait (on the device) for the work recorded in this event.
  void wait_on(cudaStream_t s) const { QPROB_CUDA_TRY(cudaStreamWaitEvent(s, handle_, 0)); }

  /// Milliseconds between two recorded events; waits for `stop`.
  [[nodiscard]] static float elapsed_ms(const event& start, const event& stop) {
    stop.synchronize();
    float ms = 0;
    QPROB_CUDA_TRY(cudaEventElapsedTime(&ms, start.handle_, stop.handle_));
    return ms;
  }

private:
  void reset() noexcept {
    if (handle_ != nullptr) {
      (void)cudaEventDestroy(handle_);
      handle_ = nullptr;
    }
  }
  cudaEvent_t handle_ = nullptr;
};

}  // namespace qprob
