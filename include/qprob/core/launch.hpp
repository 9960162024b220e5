// SPDX-License-Identifier: Apache-2.0
#pragma once
// What every launcher does right after a kernel launch: read (and so clear) the launch error, and, when built
// with QPROB_DEBUG_SYNC, wait for the stream so that an asynchronous fault is reported by the launch that
// caused it rather than by some later call.

#include <cuda_runtime_api.h>

namespace qprob::detail {

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
