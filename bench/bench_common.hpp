// SPDX-License-Identifier: Apache-2.0
#pragma once
// Shared benchmark plumbing: CUDA-event timing of one iteration with L2 flushed first, and the device's
// achievable DRAM bandwidth measured once per process (a large device-to-device copy, counting bytes read plus
// written), which every memory-bound benchmark reports its GB/s against.

#include <qprob/core/cuda_check.hpp>
#include <qprob/core/device.hpp>
#include <qprob/core/device_buffer.hpp>
#include <qprob/core/stream.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace qprob::bench {

/// Overwrites a buffer of twice the L2 size so the next kernel starts cold, as in llm.c and FlashInfer.
class l2_flusher {
public:
  explicit l2_flusher(cudaStream_t s) : buffer_(2 * std::max<std::int64_t>(current_device_info().l2_bytes, 1 << 20), s) {}
  void flush(cudaStream_t s) { QPROB_CUDA_TRY(cudaMemsetAsync(buffer_.data(), 0x3c, buffer_.bytes(), s)); }

private:
  device_buffer<std::uint8_t> buffer_;
};

/// Times `work` (which enqueues on the stream) once per benchmark iteration with CUDA events around it only.
/// Keeps freed stream-ordered allocations in the device's default pool (as PyTorch's caching allocator
/// does), so that ops allocating scratch space per call are timed without a trip to the driver.
inline void retain_pool_memory() {
  int device = 0;
  QPROB_CUDA_TRY(cudaGetDevice(&device));
  cudaMemPool_t pool{};
  QPROB_CUDA_TRY(cudaDeviceGetDefaultMemPool(&pool, device));
  std::uint64_t threshold = UINT64_MAX;
  QPROB_CUDA_TRY(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
}

template <class Work>
void time_iterations(benchmark::State& state, cudaStream_t s, Work&& work) {
  retain_pool_memory();
  l2_flusher flusher(s);
  event start;
  event stop;
  for (int i = 0; i < 3; ++i) {  // warm-up: module load, first-touch of buffers
    work();
  }
  QPROB_CUDA_TRY(cudaStreamSynchronize(s));
  for (auto _ : state) {
    flusher.flush(s);
    start.record(s);
    work();
    stop.record(s);
    state.SetIterationTime(static_cast<double>(event::elapsed_ms(start, stop)) / 1e3);
  }
}

/// Achievable DRAM bandwidth in bytes/s: median of timed 1 GiB device-to-device copies (read + write bytes).
inline double measured_copy_bandwidth() {
  static const double value = [] {
    stream s;
    constexpr std::int64_t bytes = std::int64_t{1} << 30;
    device_buffer<std::uint8_t> a(bytes, s);
    device_buffer<std::uint8_t> b(bytes, s);
    a.fill_bytes(1);
    event start;
    event stop;
    std::vector<double> rates;
    for (int i = 0; i < 12; ++i) {
      start.record(s);
      QPROB_CUDA_TRY(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice, s));
      stop.record(s);
      const double ms = event::elapsed_ms(start, stop);
      if (i >= 2) {
        rates.push_back(2.0 * bytes / (ms / 1e3));
      }
    }
    std::sort(rates.begin(), rates.end());
    return rates[rates.size() / 2];
  }();
  return value;
}

/// Adds GB/s and the fraction of the measured copy bandwidth as counters.
inline void report_bandwidth(benchmark::State& state, double bytes_per_iteration) {
  state.SetBytesProcessed(static_cast<std::int64_t>(bytes_per_iteration * static_cast<double>(state.iterations())));
  state.counters["GB/s"] = benchmark::Counter(bytes_per_iteration * static_cast<double>(state.iterations()) / 1e9,
                                              benchmark::Counter::kIsRate);
  state.counters["copy_GB/s"] = measured_copy_bandwidth() / 1e9;
}

}  // namespace qprob::bench
