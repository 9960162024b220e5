// SPDX-License-Identifier: Apache-2.0
#pragma once
// What every launcher does right after a kernel launch: read (and so clear) the launch error, and, when built
// with QPROB_DEBUG_SYNC, wait for the stream so that an asynchronous fault is reported by the launch that
// caused it rather than by some later call.

#include <cuda_runtime_api.h>

#include <cstdint>

namespace qprob::detail {

/// Blocks of `threads` threads for a grid-stride loop over `items`: one item per thread, at most 65535 blocks
/// (the loop covers the rest).
[[nodiscard]] inline unsigned grid_stride_blocks(std::int64_t items, int threads = 256) noexcept {
  const std::int64_t blocks = (items + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks < 65535 ? blocks : 65535));
}

[[nodiscard]] inline cudaError_t post_launch(cudaStream_t stream) noexcept {
  cudaError_t status = cudaGetLastError();
#if defined(QPROB_DEBUG_SYNC)
  if (status == cudaSuccess) {
    status = cudaStreamSynchronize(stream);
  }
#else
  (void)stream;
#endif
  return status;
}

}  // namespace qprob::detail
