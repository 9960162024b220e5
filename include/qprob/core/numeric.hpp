// SPDX-License-Identifier: Apache-2.0
#pragma once
// 16-bit floating-point storage types (IEEE binary16 and bfloat16) and their conversions, written in plain
// constexpr C++ so that host references, file readers and policies need neither nvcc nor the CUDA headers.
// Device code reinterprets these as __half / __nv_bfloat16 (same size and alignment; see core/numeric.cuh)
// and uses the hardware conversions, which round the same way (round to nearest, ties to even).

#include <bit>
#include <cstdint>

namespace qprob {

/// IEEE 754 binary16 storage: 1 sign, 5 exponent, 10 mantissa bits.
struct half_t {
  std::uint16_t bits;
  friend constexpr bool operator==(half_t a, half_t b) noexcept { return a.bits == b.bits; }
};

/// bfloat16 storage: 1 sign, 8 exponent, 7 mantissa bits (the upper half of a binary32).
struct bfloat16_t {
  std::uint16_t bits;
  friend constexpr bool operator==(bfloat16_t a, bfloat16_t b) noexcept { return a.bits == b.bits; }
};

static_assert(sizeof(half_t) == 2 && alignof(half_t) == 2, "half_t must have the layout of __half");
static_assert(sizeof(bfloat16_t) == 2 && alignof(bfloat16_t) == 2, "bfloat16_t must have the layout of __nv_bfloat16");

namespace detail {

/// Rounds a double to the nearest value of a binary format with `MantBits` stored mantissa bits and
/// `ExpBits` exponent bits, ties to even, with subnormals, overflow to infinity and NaN kept quiet.
/// Rounding directly from double (not through float) avoids double rounding; a float argument converts to
/// double exactly, so float -> 16-bit is correctly rounded too.
template <int MantBits, int ExpBits>
constexpr std::uint16_t round_double_to_bits(double x) noexcept {
  constexpr int bias                  = (1 << (ExpBits - 1)) - 1;
  constexpr std::uint16_t exp_mask    = static_cast<std::uint16_t>(((1u << ExpBits) - 1u) << MantBits);
  constexpr std::uint64_t double_mant = (std::uint64_t{1} << 52) - 1;

  const auto b             = std::bit_cast<std::uint64_t>(x);
  const auto sign          = static_cast<std::uint16_t>((b >> 63) << 15);
  const int biased_exp     = static_cast<int>((b >> 52) & 0x7ff);
  const std::uint64_t mant = b & double_mant;

  if (biased_exp == 0x7ff) {  // infinity or NaN (a NaN keeps its top payload bits and is made quiet)
    return static_cast<std::uint16_t>(
        sign | exp_mask | (mant != 0 ? (1u << (MantBits - 1)) | (mant >> (52 - MantBits)) : 0u));
  }
  if (biased_exp == 0) {  // zero or a double subnormal (< 2^-1022): far below half of any 16-bit subnormal
    return sign;
  }
  const std::uint64_t sig = mant | (std::uint64_t{1} << 52);  // value = sig * 2^(e - 52)
  const int e             = biased_exp - 1023;
  // Exponent of the result's leading bit; below the normal range the quantum stays at the subnormal one.
  const int e_target = e < 1 - bias ? 1 - bias : e;
  const int shift    = 52 - MantBits + (e_target - e);  // low bits of sig that fall below the quantum
  std::uint64_t q    = 0;
  if (shift < 64) {
    q                       = sig >> shift;
    const std::uint64_t rem = sig & ((std::uint64_t{1} << shift) - 1);
    const std::uint64_t hlf = std::uint64_t{1} << (shift - 1);
    if (rem > hlf || (rem == hlf && (q & 1) != 0)) {
      ++q;
    }
  }
  int e_out = e_target;
  if (q >> (MantBits + 1)) {  // rounding carried into a new leading bit
    q >>= 1;
    ++e_out;
  }
  if (q >> MantBits) {  // normal result (also a subnormal that rounded up to the smallest normal)
    const int biased = e_out + bias;
    if (biased >= (1 << ExpBits) - 1) {
      return static_cast<std::uint16_t>(sign | exp_mask);  // overflow to infinity
    }
    return static_cast<std::uint16_t>(sign | (biased << MantBits) | (q & ((1u << MantBits) - 1u)));
  }
  return static_cast<std::uint16_t>(sign | q);  // subnormal or zero
}

template <int MantBits, int ExpBits>
constexpr double bits_to_double(std::uint16_t h) noexcept {
  constexpr int bias          = (1 << (ExpBits - 1)) - 1;
  constexpr unsigned mant_max = (1u << MantBits) - 1u;
  const std::uint64_t sign    = static_cast<std::uint64_t>(h >> 15) << 63;
  const int biased            = (h >> MantBits) & ((1 << ExpBits) - 1);
  std::uint64_t mant          = h & mant_max;
  if (biased == (1 << ExpBits) - 1) {  // infinity, or NaN with its payload kept
    return std::bit_cast<double>(sign | (std::uint64_t{0x7ff} << 52) | (mant << (52 - MantBits)));
  }
  if (biased == 0 && mant == 0) {
    return std::bit_cast<double>(sign);
  }
  int e = biased - bias;
  if (biased == 0) {  // subnormal: shift the leading one up to the implicit position
    e = 1 - bias;
    while ((mant & (mant_max + 1u)) == 0) {
      mant <<= 1;
      --e;
    }
    mant &= mant_max;
  }
  // Every 16-bit value is a normal double, so rebuilding the bit pattern is exact.
  return std::bit_cast<double>(sign | (static_cast<std::uint64_t>(e + 1023) << 52) | (mant << (52 - MantBits)));
}

}  // namespace detail

/// Nearest binary16 value, ties to even.
constexpr half_t to_half(double x) noexcept { return {detail::round_double_to_bits<10, 5>(x)}; }
constexpr half_t to_half(float x) noexcept { return to_half(static_cast<double>(x)); }
/// Nearest bfloat16 value, ties to even.
constexpr bfloat16_t to_bfloat16(double x) noexcept { return {detail::round_double_to_bits<7, 8>(x)}; }
constexpr bfloat16_t to_bfloat16(float x) noexcept { return to_bfloat16(static_cast<double>(x)); }

/// Exact widening conversions.
constexpr double to_double(half_t h) noexcept { return detail::bits_to_double<10, 5>(h.bits); }
constexpr double to_double(bfloat16_t h) noexcept { return detail::bits_to_double<7, 8>(h.bits); }
constexpr float to_float(half_t h) noexcept { return static_cast<float>(to_double(h)); }
constexpr float to_float(bfloat16_t h) noexcept { return static_cast<float>(to_double(h)); }

/// Largest finite binary16 value (65504).
inline constexpr half_t half_max{0x7bff};

}  // namespace qprob
