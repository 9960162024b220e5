// SPDX-License-Identifier: Apache-2.0
#pragma once
// The two-phase temporary-storage protocol of CUB device algorithms, wrapped once (core layer): size the
// temporary storage, allocate it in stream order, run, free in stream order. CCCL 3.0 has no env overloads,
// so every CUB call in qprob goes through this helper. Needs only the CUDA runtime headers.

#include <qprob/core/cuda_check.hpp>

#include <cuda_runtime_api.h>

#include <cstddef>

namespace qprob {

/// Runs `call(void* temp, std::size_t& bytes)` twice, CUB style: with temp == nullptr to size, then with
/// `bytes` of stream-ordered temporary storage. Returns the first error; the storage is freed (in stream order)
/// either way. Nothing here synchronizes the host.
template <class Call>
[[nodiscard]] cudaError_t cub_two_phase(cudaStream_t stream, Call&& call) {
  std::size_t bytes = 0;
  QPROB_CUDA_RETURN(call(nullptr, bytes));
  void* temp = nullptr;
  if (bytes > 0) {
    QPROB_CUDA_RETURN(cudaMallocAsync(&temp, bytes, stream));
  } else {
    bytes = 1;  // CUB treats a null temp pointer as the sizing query: give it a valid one
    QPROB_CUDA_RETURN(cudaMallocAsync(&temp, bytes, stream));
  }
  const cudaError_t status = call(temp, bytes);
  const cudaError_t freed  = cudaFreeAsync(temp, stream);
  return status != cudaSuccess ? status : freed;
}

}  // namespace qprob
