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
#include <cstdlib>
#include <string_view>
#include <vector>

namespace qprob::bench {

/// Reads `count` 16-byte words, four independent loads in flight per thread and iteration; `sink` is written
/// only if their xor is a value that the fill never gives, so the loads cannot be dropped and nothing is
/// written back. The L2 flush, and bench_gemv's memory roofline.
__global__ inline void l2_read_kernel(const uint4* __restrict__ data, std::int64_t count, unsigned* sink) {
  unsigned acc           = 0;
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  std::int64_t i          = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  for (; i + 3 * step < count; i += 4 * step) {
    const uint4 a = data[i], b = data[i + step], c = data[i + 2 * step], d = data[i + 3 * step];
    acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
  }
  for (; i < count; i += step) {
    const uint4 v = data[i];
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9e3779b9u) {
    *sink = acc;
  }
}

/// Empties L2 of the benchmark's data before each timed iteration (as llm.c and FlashInfer do) by streaming a
/// buffer of twice the L2 size through it. Default: *reading* it, which leaves L2 full of clean lines, so the
/// timed kernel starts cold and pays nothing for the flush. QPROB_BENCH_FLUSH=write overwrites it instead
/// (cudaMemset, as nvbench and Triton's do_bench do): L2 is then full of dirty lines, and the timed kernel also
/// pays for writing them back to DRAM as its reads evict them (measured in docs/performance.md).
class l2_flusher {
public:
  explicit l2_flusher(cudaStream_t s)
      : buffer_(2 * std::max<std::int64_t>(current_device_info().l2_bytes, 1 << 20), s), sink_(1, s), write_(write_mode()) {
    QPROB_CUDA_TRY(cudaMemsetAsync(buffer_.data(), 0x3c, buffer_.bytes(), s));
  }
  void flush(cudaStream_t s) {
    if (write_) {
      QPROB_CUDA_TRY(cudaMemsetAsync(buffer_.data(), 0x3c, buffer_.bytes(), s));
    } else {
      l2_read_kernel<<<1024, 256, 0, s>>>(reinterpret_cast<const uint4*>(buffer_.data()), buffer_.bytes() / 16, sink_.data());
      QPROB_CUDA_TRY(cudaGetLastError());
    }
  }
  static bool write_mode() {
    const char* v = std::getenv("QPROB_BENCH_FLUSH");
    return v != nullptr && std::string_view(v) == "write";
  }

private:
  device_buffer<std::uint8_t> buffer_;
  device_buffer<unsigned> sink_;
  bool write_;
};

/// The flush mode, in the context block every benchmark binary prints first.
inline const bool l2_flush_in_context = [] {
  benchmark::AddCustomContext("l2_flush", l2_flusher::write_mode() ? "write (cudaMemset)" : "read");
  return true;
}();

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
