// SPDX-License-Identifier: Apache-2.0
#pragma once
// RAII ownership of device memory, allocated and freed in stream order (cudaMallocAsync / cudaFreeAsync), so
// temporary buffers cost no device-wide synchronization. A buffer belongs to the stream it was made on: use
// it on another stream only after ordering that stream behind this one (qprob::event::wait_on).

#include <qprob/core/cuda_check.hpp>
#include <qprob/core/tensor_view.hpp>

#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace qprob {

template <class T>
class device_buffer {
  static_assert(std::is_trivially_copyable_v<T>, "device_buffer holds trivially copyable elements only");

public:
  device_buffer() = default;

  /// Uninitialised storage for `count` elements, usable by work queued on `stream` from now on.
  device_buffer(std::int64_t count, cudaStream_t stream) : size_(count), stream_(stream) {
    QPROB_CHECK(count >= 0, "device_buffer: negative element count ", count);
    if (count > 0) {
      void* p = nullptr;
      QPROB_CUDA_TRY(cudaMallocAsync(&p, static_cast<std::size_t>(count) * sizeof(T), stream));
      data_ = static_cast<T*>(p);
    }
  }

  /// A copy of host data (asynchronous with respect to the host; `host` must stay alive until the stream
  /// reaches the copy, so pass pageable memory only when the caller synchronizes).
  device_buffer(std::span<const T> host, cudaStream_t stream) : device_buffer(static_cast<std::int64_t>(host.size()), stream) {
    copy_from_host(host);
  }

  device_buffer(const device_buffer&)            = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  device_buffer(device_buffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr))
      , size_(std::exchange(other.size_, 0))
      , stream_(other.stream_) {}
  device_buffer& operator=(device_buffer&& other) noexcept {
    if (this != &other) {
      release();
      data_   = std::exchange(other.data_, nullptr);
      size_   = std::exchange(other.size_, 0);
      stream_ = other.stream_;
    }
    return *this;
  }
  ~device_buffer() { release(); }

  [[nodiscard]] T* data() noexcept { return data_; }
  [[nodiscard]] const T* data() const noexcept { return data_; }
  [[nodiscard]] std::int64_t size() const noexcept { return size_; }
  [[nodiscard]] std::int64_t bytes() const noexcept { return size_ * static_cast<std::int64_t>(sizeof(T)); }
  [[nodiscard]] bool empty() const noexcept { return size_ == 0; }
  [[nodiscard]] cudaStream_t stream() const noexcept { return stream_; }

  /// A dense row-major view; the extents must multiply to size().
  template <class... Dims>
  [[nodiscard]] device_view<T, sizeof...(Dims)> view(Dims... dims) {
    check_extents(dims...);
    return make_device_view(data_, dims...);
  }
  template <class... Dims>
  [[nodiscard]] device_view<const T, sizeof...(Dims)> view(Dims... dims) const {
    check_extents(dims...);
    return make_device_view(static_cast<const T*>(data_), dims...);
  }

  /// Queues a copy of host.size() == size() elements from the host.
  void copy_from_host(std::span<const T> host) {
    QPROB_CHECK_EQ(static_cast<std::int64_t>(host.size()), size_, "device_buffer::copy_from_host size mismatch");
    if (size_ > 0) {
      QPROB_CUDA_TRY(cudaMemcpyAsync(data_, host.data(), static_cast<std::size_t>(bytes()), cudaMemcpyHostToDevice, stream_));
    }
  }

  /// Copies the contents to the host. Synchronizes the buffer's stream: this is the explicit read-back point.
  [[nodiscard]] std::vector<T> to_host() const {
    std::vector<T> out(static_cast<std::size_t>(size_));
    if (size_ > 0) {
      QPROB_CUDA_TRY(cudaMemcpyAsync(out.data(), data_, static_cast<std::size_t>(bytes()), cudaMemcpyDeviceToHost, stream_));
    }
    QPROB_CUDA_TRY(cudaStreamSynchronize(stream_));
    return out;
  }

  /// Queues a fill of every byte with `byte` (0x00 zeroes; tests poison outputs with 0xff).
  void fill_bytes(unsigned char byte) {
    if (size_ > 0) {
      QPROB_CUDA_TRY(cudaMemsetAsync(data_, byte, static_cast<std::size_t>(bytes()), stream_));
    }
  }

private:
  template <class... Dims>
  void check_extents(Dims... dims) const {
    const std::int64_t n = (std::int64_t{1} * ... * static_cast<std::int64_t>(dims));
    QPROB_CHECK_EQ(n, size_, "device_buffer::view extents must cover the buffer exactly");
  }

  void release() noexcept {
    if (data_ != nullptr) {
      // A destructor cannot report an error; a failing free here means the context is already broken and
      // the next checked call will say so.
      (void)cudaFreeAsync(data_, stream_);
      data_ = nullptr;
    }
  }

  T* data_             = nullptr;
  std::int64_t size_   = 0;
  cudaStream_t stream_ = nullptr;
};

}  // namespace qprob
