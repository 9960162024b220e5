// SPDX-License-Identifier: Apache-2.0
#pragma once
// Integer helpers used for shapes, tiling and bit packing, usable in constant expressions and device code.

#include <qprob/core/config.hpp>

#include <cstddef>
#include <cstdint>

namespace qprob {

/// Whether p is a multiple of `bytes` (the alignment a vector load or store of that many bytes needs).
QPROB_HOST_DEVICE inline bool is_aligned(const void* p, std::size_t bytes) {
  return reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}

/// ceil(a / b) for non-negative a and positive b.
template <class T>
QPROB_HOST_DEVICE constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

/// Smallest multiple of b that is >= a (non-negative a, positive b).
template <class T>
QPROB_HOST_DEVICE constexpr T round_up(T a, T b) {
  return ceil_div(a, b) * b;
}

template <class T>
QPROB_HOST_DEVICE constexpr bool is_pow2(T x) {
  return x > 0 && (x & (x - 1)) == 0;
}

/// floor(log2(x)) for x > 0.
template <class T>
QPROB_HOST_DEVICE constexpr int log2_floor(T x) {
  int r = 0;
  while (x > 1) {
    x >>= 1;
    ++r;
  }
  return r;
}

/// Greatest common divisor; a device-usable stand-in for std::gcd.
template <class T>
QPROB_HOST_DEVICE constexpr T gcd(T a, T b) {
  while (b != 0) {
    const T t = a % b;
    a         = b;
    b         = t;
  }
  return a;
}

template <class T>
QPROB_HOST_DEVICE constexpr T lcm(T a, T b) {
  return a / gcd(a, b) * b;
}

}  // namespace qprob
