// SPDX-License-Identifier: Apache-2.0
#pragma once
// Moving checkpoint tensors to the GPU in a requested compute type. Conversion happens on the host (exactly
// as safetensors_file::read_as, numeric.hpp rounding) into a staging buffer, pinned or pageable, followed by
// one cudaMemcpyAsync. Needs the CUDA runtime headers, not nvcc. Simple by design: one tensor at a time, and
// the call waits for its copy so the staging memory can be released.

#include <qprob/core/cuda_check.hpp>
#include <qprob/core/device_buffer.hpp>
#include <qprob/io/safetensors.hpp>

#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace qprob::io {

enum class staging_memory : std::uint8_t {
  pinned,    // cudaMallocHost: the copy is a true DMA transfer
  pageable,  // std::vector: no page-locking cost, the runtime copies through its own bounce buffer
};

/// Uploads tensor `name` of `ckpt` converted to T. Synchronizes `stream` before returning (the staging buffer
/// is freed then), so the result is ready for any stream ordered after `stream`.
/// @throws format_error if the tensor is absent, invalid_argument if it is not floating point, cuda_error on
///         a runtime failure.
template <float_element T>
[[nodiscard]] device_buffer<T> upload_tensor(const checkpoint& ckpt,
                                             std::string_view name,
                                             cudaStream_t stream,
                                             staging_memory staging = staging_memory::pinned) {
  const auto& shard = ckpt.shard_of(name);
  const auto& info  = shard.at(name);
  const auto n      = static_cast<std::size_t>(info.numel());
  device_buffer<T> out(static_cast<std::int64_t>(n), stream);
  if (n == 0) {
    return out;
  }
  if (staging == staging_memory::pageable) {
    std::vector<T> host(n);
    shard.read_into(info, std::span<T>(host));
    out.copy_from_host(std::span<const T>(host));
    QPROB_CUDA_TRY(cudaStreamSynchronize(stream));
    return out;
  }
  T* pinned = nullptr;
  QPROB_CUDA_TRY(cudaMallocHost(reinterpret_cast<void**>(&pinned), n * sizeof(T)));
  struct pinned_guard {
    T* p;
    ~pinned_guard() { (void)cudaFreeHost(p); }  // after the synchronization below, or on an exception
  } guard{pinned};
  shard.read_into(info, std::span<T>(pinned, n));
  out.copy_from_host(std::span<const T>(pinned, n));
  QPROB_CUDA_TRY(cudaStreamSynchronize(stream));
  return out;
}

}  // namespace qprob::io
