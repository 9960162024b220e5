// SPDX-License-Identifier: Apache-2.0
// 16-bit float conversions against independent references: GCC's _Float16 (soft-float conversions, correctly
// rounded) for binary16, and the float bit-pattern rounding rule for bfloat16. Exhaustive where the domain is
// small (all 65536 patterns), randomized with the printed seed elsewhere.
#include <qprob/core/numeric.hpp>

#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

#include "support.hpp"

using qprob::bfloat16_t;
using qprob::half_t;

namespace {

bool is_nan_bits(std::uint16_t h, int mant_bits) {
  const int exp_bits = 15 - mant_bits;
  return ((h >> mant_bits) & ((1 << exp_bits) - 1)) == (1 << exp_bits) - 1 && (h & ((1 << mant_bits) - 1)) != 0;
}

// Independent binary16 reference: the compiler's own conversion.
std::uint16_t gcc_half_bits(double x) {
  const _Float16 h = static_cast<_Float16>(x);
  return std::bit_cast<std::uint16_t>(h);
}

// Independent bfloat16 reference for float inputs: add 0x7fff plus the lowest kept bit, truncate.
std::uint16_t bf16_reference_bits(float x) {
  const auto u = std::bit_cast<std::uint32_t>(x);
  return static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

}  // namespace

TEST_CASE("every binary16 pattern widens exactly and narrows back to itself") {
  int checked = 0;
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const half_t h{static_cast<std::uint16_t>(b)};
    const double d = qprob::to_double(h);
    if (is_nan_bits(h.bits, 10)) {
      CHECK(std::isnan(d));
      CHECK(is_nan_bits(qprob::to_half(d).bits, 10));
      continue;
    }
    // The widened value must be the compiler's value of the same bits.
    REQUIRE(d == static_cast<double>(std::bit_cast<_Float16>(h.bits)));
    REQUIRE(qprob::to_half(d).bits == h.bits);
    ++checked;
  }
  CHECK(checked == 65536 - 2046);  // 2 * (2^10 - 1) NaN patterns
}

TEST_CASE("every bfloat16 pattern widens exactly and narrows back to itself") {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const bfloat16_t h{static_cast<std::uint16_t>(b)};
    const double d     = qprob::to_double(h);
    const float as_f32 = std::bit_cast<float>(b << 16);  // bf16 is the top half of a float
    if (std::isnan(as_f32)) {
      CHECK(std::isnan(d));
      continue;
    }
    REQUIRE(d == static_cast<double>(as_f32));
    REQUIRE(qprob::to_bfloat16(d).bits == h.bits);
  }
}

TEST_CASE("double to binary16 rounds to nearest even, like the compiler, on random and boundary inputs") {
  const auto seed = qprob::test::run_seed();
  INFO("QPROB_TEST_SEED=", seed);
  auto rng = qprob::test::make_rng(1);
  std::uniform_int_distribution<std::uint64_t> bits;
  std::uniform_real_distribution<double> exponent(-30.0, 17.0);
  int mismatches = 0;
  for (int i = 0; i < 400000; ++i) {
    double x = 0;
    if (i % 2 == 0) {
      // Log-uniform magnitudes over the whole binary16 range, including subnormals and overflow.
      x = std::ldexp(1.0 + static_cast<double>(bits(rng) >> 12) / 4503599627370496.0, static_cast<int>(exponent(rng)));
      x = (bits(rng) & 1) ? -x : x;
    } else {
      // Exact midpoints between adjacent binary16 values (ties), and one double-ulp either side.
      const half_t a{static_cast<std::uint16_t>(bits(rng) % 0x7bff)};
      const double lo = qprob::to_double(a);
      const double hi = qprob::to_double(half_t{static_cast<std::uint16_t>(a.bits + 1)});
      x               = 0.5 * (lo + hi);
      const int nudge = static_cast<int>(bits(rng) % 3) - 1;
      if (nudge != 0) {
        x = std::nextafter(x, nudge > 0 ? hi : lo);
      }
    }
    if (qprob::to_half(x).bits != gcc_half_bits(x)) {
      if (++mismatches <= 10) {
        MESSAGE("x=", x, " qprob=", qprob::to_half(x).bits, " gcc=", gcc_half_bits(x));
      }
    }
  }
  CHECK(mismatches == 0);
}

TEST_CASE("binary16 special values: signed zero, infinity, NaN, overflow threshold, smallest subnormal") {
  CHECK(qprob::to_half(0.0).bits == 0x0000);
  CHECK(qprob::to_half(-0.0).bits == 0x8000);
  CHECK(qprob::to_half(std::numeric_limits<double>::infinity()).bits == 0x7c00);
  CHECK(qprob::to_half(-std::numeric_limits<double>::infinity()).bits == 0xfc00);
  CHECK(is_nan_bits(qprob::to_half(std::numeric_limits<double>::quiet_NaN()).bits, 10));
  CHECK(qprob::to_half(65504.0).bits == 0x7bff);
  CHECK(qprob::to_half(65519.99).bits == 0x7bff);  // below the midpoint to 2^16: rounds down to max
  CHECK(qprob::to_half(65520.0).bits == 0x7c00);   // the midpoint ties to even, which is infinity
  CHECK(qprob::to_half(std::ldexp(1.0, -24)).bits == 0x0001);
  CHECK(qprob::to_half(std::ldexp(1.0, -25)).bits == 0x0000);  // tie between 0 and 2^-24: even is 0
  CHECK(qprob::to_half(std::ldexp(1.5, -25)).bits == 0x0001);
  CHECK(qprob::to_half(1e-300).bits == 0x0000);
  CHECK(qprob::to_float(qprob::half_max) == 65504.0f);
  static_assert(qprob::to_half(1.0).bits == 0x3c00, "conversions are usable in constant expressions");
  static_assert(qprob::to_double(qprob::half_t{0x3555}) == 0.333251953125);
}

TEST_CASE("float to bfloat16 matches the bit-pattern rounding rule on random floats") {
  INFO("QPROB_TEST_SEED=", qprob::test::run_seed());
  auto rng = qprob::test::make_rng(2);
  std::uniform_int_distribution<std::uint32_t> bits;
  int mismatches = 0;
  for (int i = 0; i < 400000; ++i) {
    const float x = std::bit_cast<float>(bits(rng));
    if (std::isnan(x)) {
      continue;
    }
    if (qprob::to_bfloat16(x).bits != bf16_reference_bits(x) && ++mismatches <= 10) {
      MESSAGE("x=", x, " qprob=", qprob::to_bfloat16(x).bits, " ref=", bf16_reference_bits(x));
    }
  }
  CHECK(mismatches == 0);
}
