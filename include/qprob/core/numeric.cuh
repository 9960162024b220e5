// SPDX-License-Identifier: Apache-2.0
#pragma once
// Device-side view of qprob's 16-bit storage types: conversions through the CUDA intrinsics, which round to
// nearest-even like the host functions in core/numeric.hpp, so host references and kernels agree bit for bit.

#include <qprob/core/config.hpp>
#include <qprob/core/numeric.hpp>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

namespace qprob {

static_assert(sizeof(half_t) == sizeof(__half) && alignof(half_t) == alignof(__half));
static_assert(sizeof(bfloat16_t) == sizeof(__nv_bfloat16) && alignof(bfloat16_t) == alignof(__nv_bfloat16));

namespace detail {

template <class T>
QPROB_DEVICE QPROB_FORCEINLINE float to_float_device(T v) {
  if constexpr (std::is_same_v<T, half_t>) {
    return __half2float(__ushort_as_half(v.bits));
  } else if constexpr (std::is_same_v<T, bfloat16_t>) {
    return __bfloat162float(__ushort_as_bfloat16(v.bits));
  } else {
    return static_cast<float>(v);
  }
}

/// Round a float to T, nearest-even.
template <class T>
QPROB_DEVICE QPROB_FORCEINLINE T from_float_device(float v) {
  if constexpr (std::is_same_v<T, half_t>) {
    return T{__half_as_ushort(__float2half_rn(v))};
  } else if constexpr (std::is_same_v<T, bfloat16_t>) {
    return T{__bfloat16_as_ushort(__float2bfloat16_rn(v))};
  } else {
    return static_cast<T>(v);
  }
}

/// Round a double to half, nearest-even, directly (no intermediate float rounding).
QPROB_DEVICE QPROB_FORCEINLINE half_t half_from_double_device(double v) {
  return half_t{__half_as_ushort(__double2half(v))};
}

}  // namespace detail
}  // namespace qprob
