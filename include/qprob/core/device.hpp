// SPDX-License-Identifier: Apache-2.0
#pragma once
// Querying the GPU: whether one is usable at all (tests and examples skip with this reason on GPU-less
// machines) and the properties kernels and benchmarks size themselves by.

#include <qprob/core/cuda_check.hpp>

#include <cuda_runtime_api.h>

#include <cstdint>
#include <optional>
#include <string>

namespace qprob {

/// Why no CUDA device can be used here, or nullopt when device 0 is usable. Never throws.
[[nodiscard]] inline std::optional<std::string> gpu_unavailable_reason() noexcept {
  int count                = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("no usable CUDA device: cudaGetDeviceCount failed with ") + cudaGetErrorName(status) +
           " (" + cudaGetErrorString(status) + ")";
  }
  if (count == 0) {
    return std::string("no CUDA device present (cudaGetDeviceCount returned 0)");
  }
  return std::nullopt;
}

struct device_info {
  int ordinal             = 0;
  std::string name;
  int cc_major            = 0;
  int cc_minor            = 0;
  int sm_count            = 0;
  std::int64_t l2_bytes   = 0;
  std::int64_t global_memory_bytes = 0;
  /// Theoretical DRAM bandwidth (bytes/s) from memory clock and bus width; benchmarks measure the real one.
  double peak_dram_bytes_per_s = 0;
};

/// Properties of the current device. Throws qprob::cuda_error if there is none.
[[nodiscard]] inline device_info current_device_info() {
  device_info info;
  QPROB_CUDA_TRY(cudaGetDevice(&info.ordinal));
  cudaDeviceProp prop{};
  QPROB_CUDA_TRY(cudaGetDeviceProperties(&prop, info.ordinal));
  info.name                = prop.name;
  info.cc_major            = prop.major;
  info.cc_minor            = prop.minor;
  info.sm_count            = prop.multiProcessorCount;
  info.l2_bytes            = prop.l2CacheSize;
  info.global_memory_bytes = static_cast<std::int64_t>(prop.totalGlobalMem);
  // CUDA 13 removed memoryClockRate from cudaDeviceProp; the attribute remains (kHz).
  int clock_khz = 0;
  int bus_bits  = 0;
  QPROB_CUDA_TRY(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, info.ordinal));
  QPROB_CUDA_TRY(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, info.ordinal));
  // Double data rate: two transfers per clock.
  info.peak_dram_bytes_per_s = 2.0 * clock_khz * 1e3 * (bus_bits / 8.0);
  return info;
}

}  // namespace qprob
