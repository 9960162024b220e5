// SPDX-License-Identifier: Apache-2.0
// Core GPU plumbing: device buffers, streams, events, error reporting. Runs only where a GPU is usable.
#include <qprob/core/cuda_check.hpp>
#include <qprob/core/device.hpp>
#include <qprob/core/device_buffer.hpp>
#include <qprob/core/stream.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "support.hpp"

TEST_CASE("device properties are read and sane") {
  const auto info = qprob::current_device_info();
  MESSAGE("device: ", info.name, " cc ", info.cc_major, ".", info.cc_minor, ", ", info.sm_count, " SMs, L2 ",
          info.l2_bytes >> 20, " MiB, peak DRAM ", info.peak_dram_bytes_per_s / 1e12, " TB/s");
  CHECK(info.sm_count > 0);
  CHECK(info.global_memory_bytes > 0);
  CHECK(info.peak_dram_bytes_per_s > 1e11);
}

TEST_CASE("device_buffer round-trips random data through the GPU on a stream") {
  INFO("QPROB_TEST_SEED=", qprob::test::run_seed());
  auto rng = qprob::test::make_rng(11);
  qprob::stream s;
  for (std::int64_t n : {1, 7, 4099, 1 << 20}) {
    std::vector<std::uint32_t> host(static_cast<std::size_t>(n));
    for (auto& x : host) {
      x = static_cast<std::uint32_t>(rng());
    }
    qprob::device_buffer<std::uint32_t> a(std::span<const std::uint32_t>(host), s);
    qprob::device_buffer<std::uint32_t> b(n, s);
    b.fill_bytes(0xff);
    QPROB_CUDA_TRY(cudaMemcpyAsync(b.data(), a.data(), a.bytes(), cudaMemcpyDeviceToDevice, s));
    CHECK(b.to_host() == host);
    auto moved = std::move(b);
    CHECK(b.empty());
    CHECK(moved.size() == n);
    CHECK(moved.view(n).size() == n);
  }
  qprob::device_buffer<float> f(12, s);
  CHECK_THROWS_AS((void)f.view(5, 3), qprob::invalid_argument);
  CHECK(f.view(3, 4).stride(0) == 4);
}

TEST_CASE("a failing CUDA call throws cuda_error with the code, the call and the location") {
  try {
    QPROB_CUDA_TRY(cudaSetDevice(1 << 20));
    FAIL("expected an exception");
  } catch (const qprob::cuda_error& e) {
    CHECK(e.code() == cudaErrorInvalidDevice);
    const std::string what = e.what();
    CHECK(what.find("cudaErrorInvalidDevice") != std::string::npos);
    CHECK(what.find("cudaSetDevice(1 << 20)") != std::string::npos);
    CHECK(what.find("test_core_gpu.cpp:") != std::string::npos);
  }
  // The error state was cleared: the next unrelated check does not see it.
  CHECK(cudaGetLastError() == cudaSuccess);
}

TEST_CASE("events order streams and time work") {
  qprob::stream producer;
  qprob::stream consumer;
  constexpr std::int64_t n = 1 << 24;
  qprob::device_buffer<std::uint8_t> a(n, producer);
  qprob::device_buffer<std::uint8_t> b(n, producer);
  qprob::event start;
  qprob::event stop;
  qprob::event ready(false);
  start.record(producer);
  a.fill_bytes(0x5a);
  ready.record(producer);
  ready.wait_on(consumer);
  QPROB_CUDA_TRY(cudaMemcpyAsync(b.data(), a.data(), n, cudaMemcpyDeviceToDevice, consumer));
  stop.record(consumer);
  const float ms = qprob::event::elapsed_ms(start, stop);
  CHECK(ms > 0.0f);
  consumer.synchronize();
  const auto host = b.to_host();
  CHECK(std::count(host.begin(), host.end(), std::uint8_t{0x5a}) == n);
}
