// SPDX-License-Identifier: Apache-2.0
#pragma once
// RTN quantization kernels: definitions of the API in quant/rtn.hpp. Layers, as in CUB: device building
// blocks (detail::), thin kernels, noexcept launchers returning cudaError_t, and the throwing public API.
//
// Two passes over the weight:
//   rtn_params_kernel  one warp per (output channel n, group g): min/max of the group, then scale and zero
//                      in double, exactly as reference/rtn.hpp (it is 1/group of the work, so double is free)
//   rtn_pack_kernel    one thread per (n, pack block): codes for pack_block_values weights, packed into
//                      pack_block_words words written to qweight[word][n] (consecutive n per warp: coalesced)
// Both read each weight once; see bench/bench_quant_rtn.cu for the bandwidth they reach.

#include <qprob/core/cuda_check.hpp>
#include <qprob/core/launch.hpp>
#include <qprob/core/math.hpp>
#include <qprob/core/numeric.cuh>
#include <qprob/policy/name.hpp>
#include <qprob/policy/tuning.hpp>
#include <qprob/quant/pack.hpp>
#include <qprob/quant/rtn.hpp>

#include <cuda_runtime.h>

#include <cstdint>

namespace qprob::quant {
namespace detail {

inline constexpr int target_arch = 900;  // tunings are chosen for Hopper; other archs use the same defaults

template <class T>
struct rtn_params_args {
  const T* w;             // (n, k), row stride ld
  std::int64_t ld;
  std::int64_t n;
  std::int64_t k;
  half_t* scales;         // (groups, n)
  std::uint8_t* zeros;    // (groups, n)
  bool vector_loads;      // rows 16-byte aligned and k, ld multiples of 8
};

template <class T>
struct rtn_pack_args {
  const T* w;
  std::int64_t ld;
  std::int64_t n;
  std::int64_t k;
  const half_t* scales;
  const std::uint8_t* zeros;
  std::uint32_t* qweight;  // (packed_words(k), n)
  bool vector_loads;       // rows 16-byte aligned and ld a multiple of the pack block
};

template <class T>
struct dequant_args {
  const std::uint32_t* qweight;
  const half_t* scales;
  const std::uint8_t* zeros;
  const std::int32_t* g_idx;  // nullptr: default groups
  T* out;                     // (n, k), row stride ld
  std::int64_t ld;
  std::int64_t n;
  std::int64_t k;
  bool vector_stores;
};

/// Nearest integer to w / s, ties to even, for w and s (> 0) exactly representable in a 16-bit float.
/// rintf of the float quotient can be one off near a half-integer, because the division itself rounds; the
/// residual r = w - c*s decides exactly: c*s has at most 9 + 11 significant bits and w - c*s is a small
/// multiple of the finer of the two quanta, so fmaf returns r without rounding. 2r is compared with s, which
/// is the test |w/s - c| > 1/2 without dividing.
QPROB_DEVICE QPROB_FORCEINLINE float round_quotient(float w, float s) {
  float c       = rintf(__fdiv_rn(w, s));
  const float r = 2.0f * fmaf(-c, s, w);
  const bool odd = (static_cast<int>(c) & 1) != 0;
  if (r > s || (r == s && odd)) {
    c += 1.0f;
  } else if (r < -s || (r == -s && odd)) {
    c -= 1.0f;
  }
  return c;
}

/// Loads `Count` consecutive 16-bit values with the widest aligned vector loads (16 or 8 bytes).
template <int Count, class T>
QPROB_DEVICE QPROB_FORCEINLINE void load_row_segment(const T* __restrict__ src, T (&dst)[Count]) {
  static_assert(sizeof(T) == 2);
  constexpr int bytes = Count * 2;
  if constexpr (bytes % 16 == 0) {
    QPROB_UNROLL
    for (int i = 0; i < bytes / 16; ++i) {
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(src) + i);
      *reinterpret_cast<uint4*>(&dst[i * 8]) = v;
    }
  } else {
    static_assert(bytes % 8 == 0, "pack blocks hold at least 4 values");
    QPROB_UNROLL
    for (int i = 0; i < bytes / 8; ++i) {
      const uint2 v = __ldg(reinterpret_cast<const uint2*>(src) + i);
      *reinterpret_cast<uint2*>(&dst[i * 4]) = v;
    }
  }
}

}  // namespace detail

template <quantized_policy P, class Tuning>
__global__ void __launch_bounds__(Tuning::threads)
    rtn_params_kernel(detail::rtn_params_args<typename P::compute_type> args) {
  using T                    = typename P::compute_type;
  const int lane             = static_cast<int>(threadIdx.x % 32);
  const std::int64_t segment = static_cast<std::int64_t>(blockIdx.x) * Tuning::warps + threadIdx.x / 32;
  const std::int64_t groups  = P::groups(args.k);
  if (segment >= groups * args.n) {
    return;
  }
  // Consecutive warps take consecutive output channels of one group, so the scale writes are contiguous.
  const std::int64_t g   = segment / args.n;
  const std::int64_t row = segment % args.n;
  const std::int64_t gw  = P::group_width(args.k);
  const std::int64_t k0  = g * gw;
  const std::int64_t k1  = k0 + gw < args.k ? k0 + gw : args.k;
  const T* src           = args.w + row * args.ld;

  // min/max over 16-bit values are exact in float.
  float lo = qprob::detail::to_float_device(src[k0]);
  float hi = lo;
  if (args.vector_loads) {
    for (std::int64_t c = k0 + 8 * lane; c < k1; c += 8 * 32) {
      T v[8];
      detail::load_row_segment<8>(src + c, v);
      QPROB_UNROLL
      for (int i = 0; i < 8; ++i) {
        const float x = qprob::detail::to_float_device(v[i]);
        lo            = fminf(lo, x);
        hi            = fmaxf(hi, x);
      }
    }
  } else {
    for (std::int64_t c = k0 + lane; c < k1; c += 32) {
      const float x = qprob::detail::to_float_device(src[c]);
      lo            = fminf(lo, x);
      hi            = fmaxf(hi, x);
    }
  }
  QPROB_UNROLL
  for (int offset = 16; offset > 0; offset /= 2) {
    lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, offset));
    hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, offset));
  }
  if (lane != 0) {
    return;
  }
  // The scale and zero, in double, step for step as reference::rtn_params.
  double xmin = lo < 0.0f ? static_cast<double>(lo) : 0.0;
  double xmax = hi > 0.0f ? static_cast<double>(hi) : 0.0;
  if constexpr (P::symmetric) {
    xmax = -xmin > xmax ? -xmin : xmax;
    if (xmin < 0) {
      xmin = -xmax;
    }
  }
  if (xmin == 0 && xmax == 0) {
    xmin = -1;
    xmax = 1;
  }
  half_t scale = qprob::detail::half_from_double_device((xmax - xmin) / P::max_code);
  if ((scale.bits & 0x7fffu) == 0) {
    scale = half_t{0x0001};  // smallest fp16 subnormal; see reference/rtn.hpp
  }
  int zero = P::symmetric_zero;
  if constexpr (!P::symmetric) {
    const double z = rint(-xmin / static_cast<double>(__half2float(__ushort_as_half(scale.bits))));
    zero           = static_cast<int>(z < 0 ? 0.0 : (z > P::max_code ? double(P::max_code) : z));
  }
  args.scales[g * args.n + row] = scale;
  args.zeros[g * args.n + row]  = static_cast<std::uint8_t>(zero);
}

template <quantized_policy P, class Tuning>
__global__ void __launch_bounds__(Tuning::threads) rtn_pack_kernel(detail::rtn_pack_args<typename P::compute_type> args) {
  using T                  = typename P::compute_type;
  constexpr int values     = P::pack_block_values;
  const std::int64_t row   = static_cast<std::int64_t>(blockIdx.x) * Tuning::block_n + threadIdx.x;
  const std::int64_t block = static_cast<std::int64_t>(blockIdx.y) * Tuning::block_k + threadIdx.y;
  const std::int64_t blocks = ceil_div(args.k, static_cast<std::int64_t>(values));
  if (row >= args.n || block >= blocks) {
    return;
  }
  const std::int64_t k0 = block * values;
  const T* src          = args.w + row * args.ld + k0;
  T v[values];
  if (args.vector_loads && k0 + values <= args.k) {
    detail::load_row_segment<values>(src, v);
  } else {
    QPROB_UNROLL
    for (int j = 0; j < values; ++j) {
      v[j] = k0 + j < args.k ? src[j] : T{0};
    }
  }
  std::uint32_t codes[values];
  std::int64_t cached_group = -1;
  float scale               = 0;
  float zero                = 0;
  QPROB_UNROLL
  for (int j = 0; j < values; ++j) {
    // A pack block lies in one group except for 3 bits with group 16 (32 codes per block); the cache makes
    // the lookup a compare in the common case.
    const std::int64_t g = default_group<P>(k0 + j);
    if (g != cached_group) {
      cached_group = g;
      const std::int64_t gi = (g < P::groups(args.k) ? g : P::groups(args.k) - 1) * args.n + row;
      scale = __half2float(__ushort_as_half(args.scales[gi].bits));
      zero  = static_cast<float>(args.zeros[gi]);
    }
    const float q = detail::round_quotient(qprob::detail::to_float_device(v[j]), scale) + zero;
    codes[j]      = k0 + j < args.k ? static_cast<std::uint32_t>(fminf(fmaxf(q, 0.0f), float(P::max_code))) : 0u;
  }
  std::uint32_t words[P::pack_block_words];
  pack_block<P>(codes, words);
  QPROB_UNROLL
  for (int i = 0; i < P::pack_block_words; ++i) {
    args.qweight[(block * P::pack_block_words + i) * args.n + row] = words[i];
  }
}

template <quantized_policy P, class Tuning>
__global__ void __launch_bounds__(Tuning::threads) dequantize_kernel(detail::dequant_args<typename P::compute_type> args) {
  using T                   = typename P::compute_type;
  constexpr int values      = P::pack_block_values;
  const std::int64_t row    = static_cast<std::int64_t>(blockIdx.x) * Tuning::block_n + threadIdx.x;
  const std::int64_t block  = static_cast<std::int64_t>(blockIdx.y) * Tuning::block_k + threadIdx.y;
  const std::int64_t blocks = ceil_div(args.k, static_cast<std::int64_t>(values));
  if (row >= args.n || block >= blocks) {
    return;
  }
  std::uint32_t words[P::pack_block_words];
  QPROB_UNROLL
  for (int i = 0; i < P::pack_block_words; ++i) {
    words[i] = __ldg(args.qweight + (block * P::pack_block_words + i) * args.n + row);
  }
  const std::int64_t k0 = block * values;
  T v[values];
  QPROB_UNROLL
  for (int j = 0; j < values; ++j) {
    const std::int64_t c = k0 + j < args.k ? k0 + j : args.k - 1;
    const std::int64_t g = args.g_idx != nullptr ? args.g_idx[c] : default_group<P>(c);
    const float scale    = __half2float(__ushort_as_half(args.scales[g * args.n + row].bits));
    const float zero     = static_cast<float>(args.zeros[g * args.n + row]);
    // scale (11 significant bits) times a code difference (at most 9 bits) is exact in float, so the only
    // rounding is the final one to T, as in the double reference.
    v[j] = qprob::detail::from_float_device<T>(scale * (static_cast<float>(unpack_code<P>(words, j)) - zero));
  }
  T* dst = args.out + row * args.ld + k0;
  if (args.vector_stores && k0 + values <= args.k) {
    constexpr int bytes = values * 2;
    if constexpr (bytes % 16 == 0) {
      QPROB_UNROLL
      for (int i = 0; i < bytes / 16; ++i) {
        reinterpret_cast<uint4*>(dst)[i] = *reinterpret_cast<const uint4*>(&v[i * 8]);
      }
    } else {
      QPROB_UNROLL
      for (int i = 0; i < bytes / 8; ++i) {
        reinterpret_cast<uint2*>(dst)[i] = *reinterpret_cast<const uint2*>(&v[i * 4]);
      }
    }
  } else {
    for (int j = 0; j < values && k0 + j < args.k; ++j) {
      dst[j] = v[j];
    }
  }
}

namespace detail {

inline bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

template <quantized_policy P>
cudaError_t launch_rtn_quantize(const rtn_params_args<typename P::compute_type>& params_args,
                                const rtn_pack_args<typename P::compute_type>& pack_args,
                                cudaStream_t stream) noexcept {
  using params_tuning = tuning<ops::rtn_params, P, target_arch>;
  using pack_tuning   = tuning<ops::rtn_pack, P, target_arch>;
  const std::int64_t segments = P::groups(params_args.k) * params_args.n;
  if (segments == 0) {
    return cudaSuccess;
  }
  const dim3 params_grid(static_cast<unsigned>(ceil_div(segments, std::int64_t{params_tuning::warps})));
  rtn_params_kernel<P, params_tuning><<<params_grid, params_tuning::threads, 0, stream>>>(params_args);
  QPROB_CUDA_RETURN(qprob::detail::post_launch(stream));
  const std::int64_t blocks = ceil_div(pack_args.k, std::int64_t{P::pack_block_values});
  const dim3 pack_grid(static_cast<unsigned>(ceil_div(pack_args.n, std::int64_t{pack_tuning::block_n})),
                       static_cast<unsigned>(ceil_div(blocks, std::int64_t{pack_tuning::block_k})));
  rtn_pack_kernel<P, pack_tuning><<<pack_grid, dim3(pack_tuning::block_n, pack_tuning::block_k), 0, stream>>>(pack_args);
  return qprob::detail::post_launch(stream);
}

template <quantized_policy P>
cudaError_t launch_dequantize(const dequant_args<typename P::compute_type>& args, cudaStream_t stream) noexcept {
  using t = tuning<ops::dequantize, P, target_arch>;
  const std::int64_t blocks = ceil_div(args.k, std::int64_t{P::pack_block_values});
  if (args.n == 0 || blocks == 0) {
    return cudaSuccess;
  }
  const dim3 grid(static_cast<unsigned>(ceil_div(args.n, std::int64_t{t::block_n})),
                  static_cast<unsigned>(ceil_div(blocks, std::int64_t{t::block_k})));
  dequantize_kernel<P, t><<<grid, dim3(t::block_n, t::block_k), 0, stream>>>(args);
  return qprob::detail::post_launch(stream);
}

/// Grid limits: y is at most 65535 blocks of pack blocks.
template <quantized_policy P>
void check_grid(std::int64_t n, std::int64_t k) {
  using t = tuning<ops::rtn_pack, P, target_arch>;
  const std::int64_t y = ceil_div(ceil_div(k, std::int64_t{P::pack_block_values}), std::int64_t{t::block_k});
  QPROB_CHECK(y <= 65535, "in_features k=", k, " is too large for one launch (", policy_name<P>(), ")");
  QPROB_CHECK(n <= std::int64_t{1} << 31, "out_features n=", n, " is too large for one launch");
}

}  // namespace detail

template <quantized_policy P>
void rtn_quantize(device_view<const typename P::compute_type, 2> w,
                  device_view<std::uint32_t, 2> qweight,
                  device_view<half_t, 2> scales,
                  device_view<std::uint8_t, 2> zeros,
                  cudaStream_t stream) {
  const std::int64_t n = w.shape(0);
  const std::int64_t k = w.shape(1);
  QPROB_CHECK(w.stride(1) == 1, "rtn_quantize: weight rows must be contiguous (stride(1)=", w.stride(1), ")");
  QPROB_CHECK(w.stride(0) >= k, "rtn_quantize: weight row stride ", w.stride(0), " is smaller than k=", k);
  check_shape(qweight, "rtn_quantize: qweight", P::packed_words(k), n);
  check_shape(scales, "rtn_quantize: scales", P::groups(k), n);
  check_shape(zeros, "rtn_quantize: zeros", P::groups(k), n);
  QPROB_CHECK(qweight.is_contiguous() && scales.is_contiguous() && zeros.is_contiguous(),
              "rtn_quantize: qweight, scales and zeros must be dense");
  detail::check_grid<P>(n, k);
  const bool aligned = detail::aligned16(w.data()) && w.stride(0) % 8 == 0;
  const detail::rtn_params_args<typename P::compute_type> params_args{
      w.data(), w.stride(0), n, k, scales.data(), zeros.data(), aligned && k % 8 == 0};
  const detail::rtn_pack_args<typename P::compute_type> pack_args{
      w.data(), w.stride(0), n, k, scales.data(), zeros.data(), qweight.data(),
      aligned && w.stride(0) % P::pack_block_values == 0};
  QPROB_CUDA_TRY(detail::launch_rtn_quantize<P>(params_args, pack_args, stream));
}

template <quantized_policy P>
void dequantize(device_view<const std::uint32_t, 2> qweight,
                device_view<const half_t, 2> scales,
                device_view<const std::uint8_t, 2> zeros,
                const std::int32_t* maybe_g_idx,
                device_view<typename P::compute_type, 2> out,
                cudaStream_t stream) {
  const std::int64_t n = out.shape(0);
  const std::int64_t k = out.shape(1);
  QPROB_CHECK(out.stride(1) == 1, "dequantize: output rows must be contiguous (stride(1)=", out.stride(1), ")");
  QPROB_CHECK(out.stride(0) >= k, "dequantize: output row stride ", out.stride(0), " is smaller than k=", k);
  check_shape(qweight, "dequantize: qweight", P::packed_words(k), n);
  check_shape(scales, "dequantize: scales", P::groups(k), n);
  check_shape(zeros, "dequantize: zeros", P::groups(k), n);
  QPROB_CHECK(qweight.is_contiguous() && scales.is_contiguous() && zeros.is_contiguous(),
              "dequantize: qweight, scales and zeros must be dense");
  detail::check_grid<P>(n, k);
  const bool aligned = detail::aligned16(out.data()) && out.stride(0) % P::pack_block_values == 0 &&
                       out.stride(0) % 8 == 0;
  const detail::dequant_args<typename P::compute_type> args{
      qweight.data(), scales.data(), zeros.data(), maybe_g_idx, out.data(), out.stride(0), n, k, aligned};
  QPROB_CUDA_TRY(detail::launch_dequantize<P>(args, stream));
}

}  // namespace qprob::quant

#if defined(QPROB_USE_KERNELS_LIBRARY)
#  include <qprob/quant/detail/rtn_instances.inc>
#endif
