// SPDX-License-Identifier: Apache-2.0
#include <qprob/core/dtype.hpp>
#include <qprob/core/math.hpp>
#include <qprob/version.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <string>

TEST_CASE("dtype names round-trip and sizes match the C++ types") {
  using qprob::dtype;
  for (dtype t : {dtype::f64, dtype::f32, dtype::f16, dtype::bf16, dtype::i64, dtype::i32, dtype::u32, dtype::i16,
                  dtype::i8, dtype::u8, dtype::boolean}) {
    const auto back = qprob::dtype_from_name(qprob::dtype_name(t));
    REQUIRE(back.has_value());
    CHECK(*back == t);
  }
  CHECK_FALSE(qprob::dtype_from_name("F8_E4M3").has_value());
  CHECK_FALSE(qprob::dtype_from_name("f32").has_value());  // safetensors names are upper case
  CHECK(qprob::dtype_size(qprob::dtype_of<float>) == sizeof(float));
  CHECK(qprob::dtype_size(qprob::dtype_of<qprob::half_t>) == 2);
  CHECK(qprob::dtype_size(qprob::dtype_of<const qprob::bfloat16_t>) == 2);
  CHECK(qprob::dtype_size(qprob::dtype_of<std::int64_t>) == 8);
  CHECK(qprob::dtype_size(qprob::dtype_of<std::uint32_t>) == 4);
  CHECK(qprob::dtype_name(qprob::dtype_of<std::uint8_t>) == "U8");
}

TEST_CASE("integer helpers") {
  static_assert(qprob::ceil_div(100, 32) == 4 && qprob::ceil_div(96, 32) == 3 && qprob::ceil_div(0, 32) == 0);
  static_assert(qprob::round_up(100, 32) == 128);
  static_assert(qprob::is_pow2(128) && !qprob::is_pow2(100) && !qprob::is_pow2(0));
  static_assert(qprob::lcm(3, 32) == 96 && qprob::lcm(4, 32) == 32 && qprob::gcd(12, 18) == 6);
  static_assert(qprob::log2_floor(1) == 0 && qprob::log2_floor(1024) == 10 && qprob::log2_floor(1023) == 9);
  CHECK(qprob::ceil_div<std::int64_t>(std::int64_t{1} << 40, 3) == 366503875926);
}

TEST_CASE("the header version matches the CMake project version") {
  const std::string v = std::to_string(qprob::version_major) + "." + std::to_string(qprob::version_minor) + "." +
                        std::to_string(qprob::version_patch);
  CHECK(v == QPROB_PROJECT_VERSION);
  CHECK(v == qprob::version_string);
}
