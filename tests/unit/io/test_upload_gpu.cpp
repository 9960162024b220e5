// SPDX-License-Identifier: Apache-2.0
// io/upload.hpp: a tensor uploaded in a compute type equals the host conversion bit for bit, for pinned and
// pageable staging, including a zero-size tensor.
#include <qprob/io/upload.hpp>

#include <doctest/doctest.h>

#include <cstring>
#include <vector>

#include "io_test_util.hpp"
#include "support.hpp"

namespace io = qprob::io;

TEST_CASE("upload_tensor converts on the host and copies exactly") {
  auto rng = qprob::test::make_rng(0x9a1);
  std::uniform_real_distribution<float> dist(-4.0f, 4.0f);
  std::vector<float> values(1031);
  for (auto& v : values) {
    v = dist(rng);
  }
  std::vector<std::byte> bytes(values.size() * 4);
  std::memcpy(bytes.data(), values.data(), bytes.size());
  qprob::test::temp_dir dir("upload");
  std::vector<io::tensor_to_write> ts = {{"w", qprob::dtype::f32, {1031}, bytes}, {"empty", qprob::dtype::f32, {0, 4}, {}}};
  io::write_safetensors(dir / "model.safetensors", ts);
  const auto ckpt = io::checkpoint::open(dir.path());
  const auto expected = ckpt.read_as<qprob::half_t>("w");
  for (auto staging : {io::staging_memory::pinned, io::staging_memory::pageable}) {
    const auto dev  = io::upload_tensor<qprob::half_t>(ckpt, "w", nullptr, staging);
    const auto back = dev.to_host();
    REQUIRE(back.size() == expected.size());
    CHECK(std::memcmp(back.data(), expected.data(), back.size() * 2) == 0);
  }
  const auto f32 = io::upload_tensor<float>(ckpt, "w", nullptr).to_host();
  CHECK(std::memcmp(f32.data(), values.data(), bytes.size()) == 0);
  CHECK(io::upload_tensor<float>(ckpt, "empty", nullptr).empty());
  CHECK_THROWS_AS((void)io::upload_tensor<float>(ckpt, "nope", nullptr), qprob::format_error);
}
