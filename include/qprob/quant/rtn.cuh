// SPDX-License-Identifier: Apache-2.0
#pragma once
// RTN quantization kernels: definitions of the API in quant/rtn.hpp. Layers, as in CUB: device building
// blocks (detail::), thin kernels, noexcept launchers returning cudaError_t, and the throwing public API.
//
// Quantization reads the weight twice, both times a row segment of 256 contiguous bytes per 16 threads:
//   rtn_range_kernel     min/max per (row, span), where a span is the group, or a 128-column tile when the
//                        group is wider (or per channel); 16 threads per row reduce with shuffles
//   rtn_finalize_kernel  one thread per (group, row): merges the spans of its group, then scale and zero in
//                        double, step for step as reference/rtn.hpp (1/group of the work, so double is free)
//   rtn_pack_kernel      a 64 x 128 tile: threads quantize consecutive pack blocks of a row, the packed words
//                        are transposed through shared memory and stored 64 at a time along n
// dequantize_kernel is the same tile in reverse. bench/bench_quant_rtn.cu measures the bandwidth reached.

#include <qprob/core/cuda_check.hpp>
#include <qprob/core/device_buffer.hpp>
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
struct rtn_range_args {
  const T* w;          // (n, k), row stride ld
  std::int64_t ld;
  std::int64_t n;
  std::int64_t k;
  float2* ranges;      // (spans, n): (min, max) of each span of each row
  int span;            // columns per span: min(group width, tile), a multiple of 8
  bool vector_loads;   // rows 16-byte aligned, ld a multiple of 8
};

struct rtn_finalize_args {
  const float2* ranges;  // (spans, n)
  std::int64_t n;
  std::int64_t k;
  int span;
  half_t* scales;        // (groups, n)
  std::uint8_t* zeros;   // (groups, n)
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
  bool vector_loads;       // rows 16-byte aligned, ld a multiple of 8
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
  bool vector_stores;         // rows 16-byte aligned, ld a multiple of 8
};

/// GPTQ's scale and zero point from a group's exact min and max, in double, step for step as
/// reference::rtn_params (shared by RTN and GPTQ; it runs once per group, so double costs nothing).
template <quantized_policy P>
QPROB_DEVICE QPROB_FORCEINLINE void params_from_range(float lo, float hi, half_t& scale, int& zero) {
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
  scale = qprob::detail::half_from_double_device((xmax - xmin) / P::max_code);
  if ((scale.bits & 0x7fffu) == 0) {
    scale = half_t{0x0001};  // smallest fp16 subnormal; see reference/rtn.hpp
  }
  zero = P::symmetric_zero;
  if constexpr (!P::symmetric) {
    const double z = rint(-xmin / static_cast<double>(__half2float(__ushort_as_half(scale.bits))));
    zero           = static_cast<int>(z < 0 ? 0.0 : (z > P::max_code ? double(P::max_code) : z));
  }
}

/// Nearest integer to w / s, ties to even, for a float w and a scale s > 0 that is a 16-bit float.
/// rintf of the float quotient can be one off near a half-integer, because the division itself rounds; the
/// residual r = w - c*s decides exactly: c*s has at most 9 + 11 significant bits (exact in float for the
/// |c| <= 2^9 that survive clamping), and |w - c*s| <= s is a multiple of ulp(w) below 2^24 ulps, so fmaf
/// returns r without rounding. 2r is compared with s, which
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

/// Loads values [k0, k0 + Count) of a row, zero past k; vector loads when allowed and in range.
template <int Count, class T>
QPROB_DEVICE QPROB_FORCEINLINE void load_guarded(const T* row, std::int64_t k0, std::int64_t k, bool vector, T (&v)[Count]) {
  if (vector && k0 + Count <= k) {
    load_row_segment<Count>(row + k0, v);
  } else {
    QPROB_UNROLL
    for (int j = 0; j < Count; ++j) {
      v[j] = k0 + j < k ? row[k0 + j] : T{0};
    }
  }
}

template <int Count, class T>
QPROB_DEVICE QPROB_FORCEINLINE void store_guarded(T* row, std::int64_t k0, std::int64_t k, bool vector, const T (&v)[Count]) {
  constexpr int bytes = Count * 2;
  if (vector && k0 + Count <= k) {
    if constexpr (bytes % 16 == 0) {
      QPROB_UNROLL
      for (int i = 0; i < bytes / 16; ++i) {
        reinterpret_cast<uint4*>(row + k0)[i] = *reinterpret_cast<const uint4*>(&v[i * 8]);
      }
    } else {
      QPROB_UNROLL
      for (int i = 0; i < bytes / 8; ++i) {
        reinterpret_cast<uint2*>(row + k0)[i] = *reinterpret_cast<const uint2*>(&v[i * 4]);
      }
    }
  } else {
    for (int j = 0; j < Count && k0 + j < k; ++j) {
      row[k0 + j] = v[j];
    }
  }
}

}  // namespace detail

template <quantized_policy P, class Tuning>
__global__ void __launch_bounds__(Tuning::threads) rtn_range_kernel(detail::rtn_range_args<typename P::compute_type> args) {
  using T                = typename P::compute_type;
  constexpr int vpt      = Tuning::values_per_thread;
  const int lane_in_row  = static_cast<int>(threadIdx.x) % Tuning::threads_per_row;
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * Tuning::rows_per_block + threadIdx.x / Tuning::threads_per_row;
  const std::int64_t k0  = static_cast<std::int64_t>(blockIdx.y) * Tuning::tile_k + lane_in_row * vpt;
  // Rows past n still take part in the shuffles (with empty ranges) so that every lane reaches them.
  float lo = INFINITY;
  float hi = -INFINITY;
  if (row < args.n) {
    T v[vpt];
    detail::load_guarded<vpt>(args.w + row * args.ld, k0, args.k, args.vector_loads, v);
    QPROB_UNROLL
    for (int j = 0; j < vpt; ++j) {
      if (k0 + j < args.k) {  // min/max of 16-bit values are exact in float
        const float x = qprob::detail::to_float_device(v[j]);
        lo            = fminf(lo, x);
        hi            = fmaxf(hi, x);
      }
    }
  }
  // Reduce over the lanes of one span: span / vpt consecutive lanes of the row (a power of two <= 16).
  const int lanes = args.span / vpt;
  for (int offset = lanes / 2; offset > 0; offset /= 2) {
    lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, offset));
    hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, offset));
  }
  if (row < args.n && lane_in_row % lanes == 0 && k0 < args.k) {
    args.ranges[(k0 / args.span) * args.n + row] = make_float2(lo, hi);
  }
}

template <quantized_policy P, class Tuning>
__global__ void __launch_bounds__(Tuning::finalize_threads) rtn_finalize_kernel(detail::rtn_finalize_args args) {
  const std::int64_t index = static_cast<std::int64_t>(blockIdx.x) * Tuning::finalize_threads + threadIdx.x;
  if (index >= P::groups(args.k) * args.n) {
    return;
  }
  // Consecutive threads take consecutive rows of one group: the range reads and the writes are contiguous.
  const std::int64_t g     = index / args.n;
  const std::int64_t row   = index % args.n;
  const std::int64_t gw    = P::group_width(args.k);
  const std::int64_t first = g * gw / args.span;
  const std::int64_t last  = ceil_div(g * gw + gw < args.k ? g * gw + gw : args.k, static_cast<std::int64_t>(args.span));
  float lo = INFINITY;
  float hi = -INFINITY;
  for (std::int64_t s = first; s < last; ++s) {
    const float2 r = args.ranges[s * args.n + row];
    lo             = fminf(lo, r.x);
    hi             = fmaxf(hi, r.y);
  }
  half_t scale;
  int zero;
  detail::params_from_range<P>(lo, hi, scale, zero);
  args.scales[index] = scale;
  args.zeros[index]  = static_cast<std::uint8_t>(zero);
}

// Shared-memory tile of packed words, (word row, n) with one word of padding per row: threads that pack
// neighbouring blocks of one row write neighbouring word rows, which the padding puts in different banks.
template <quantized_policy P, class Tuning>
struct word_tile {
  static constexpr int blocks_per_row = Tuning::tile_k / P::pack_block_values;
  static constexpr int word_rows      = blocks_per_row * P::pack_block_words;
  static constexpr int pitch          = Tuning::tile_n + 1;
  std::uint32_t words[word_rows * pitch];
  static_assert(Tuning::tile_k % P::pack_block_values == 0, "tile_k must hold whole pack blocks");
};

template <quantized_policy P, class Tuning>
__global__ void __launch_bounds__(Tuning::threads) rtn_pack_kernel(detail::rtn_pack_args<typename P::compute_type> args) {
  using T                 = typename P::compute_type;
  using tile              = word_tile<P, Tuning>;
  constexpr int values    = P::pack_block_values;
  __shared__ tile smem;
  const std::int64_t n0   = static_cast<std::int64_t>(blockIdx.x) * Tuning::tile_n;
  const std::int64_t kt   = blockIdx.y;
  const std::int64_t groups = P::groups(args.k);

  for (int item = static_cast<int>(threadIdx.x); item < Tuning::tile_n * tile::blocks_per_row; item += Tuning::threads) {
    const int r            = item / tile::blocks_per_row;  // consecutive threads: consecutive blocks of a row
    const int b            = item % tile::blocks_per_row;
    const std::int64_t row = n0 + r;
    const std::int64_t k0  = kt * Tuning::tile_k + b * values;
    std::uint32_t words[P::pack_block_words] = {};
    if (row < args.n && k0 < args.k) {
      T v[values];
      detail::load_guarded<values>(args.w + row * args.ld, k0, args.k, args.vector_loads, v);
      std::uint32_t codes[values];
      std::int64_t cached_group = -1;
      float scale = 0;
      float zero  = 0;
      QPROB_UNROLL
      for (int j = 0; j < values; ++j) {
        // A pack block lies in one group except for 3 bits with group 16 (32 codes per block); the cache
        // makes the lookup a compare in the common case. Padding past k uses the last group.
        std::int64_t g = default_group<P>(k0 + j);
        g              = g < groups ? g : groups - 1;
        if (g != cached_group) {
          cached_group = g;
          scale        = __half2float(__ushort_as_half(args.scales[g * args.n + row].bits));
          zero         = static_cast<float>(args.zeros[g * args.n + row]);
        }
        const float q = detail::round_quotient(qprob::detail::to_float_device(v[j]), scale) + zero;
        codes[j]      = k0 + j < args.k ? static_cast<std::uint32_t>(fminf(fmaxf(q, 0.0f), float(P::max_code))) : 0u;
      }
      pack_block<P>(codes, words);
    }
    QPROB_UNROLL
    for (int i = 0; i < P::pack_block_words; ++i) {
      smem.words[(b * P::pack_block_words + i) * tile::pitch + r] = words[i];
    }
  }
  __syncthreads();
  const std::int64_t word_row0 = kt * tile::word_rows;
  const std::int64_t words_k   = P::packed_words(args.k);
  for (int item = static_cast<int>(threadIdx.x); item < tile::word_rows * Tuning::tile_n; item += Tuning::threads) {
    const int wr = item / Tuning::tile_n;  // consecutive threads: consecutive n of one word row
    const int c  = item % Tuning::tile_n;
    if (word_row0 + wr < words_k && n0 + c < args.n) {
      args.qweight[(word_row0 + wr) * args.n + n0 + c] = smem.words[wr * tile::pitch + c];
    }
  }
}

template <quantized_policy P, class Tuning>
__global__ void __launch_bounds__(Tuning::threads) dequantize_kernel(detail::dequant_args<typename P::compute_type> args) {
  using T              = typename P::compute_type;
  using tile           = word_tile<P, Tuning>;
  constexpr int values = P::pack_block_values;
  __shared__ tile smem;
  const std::int64_t n0        = static_cast<std::int64_t>(blockIdx.x) * Tuning::tile_n;
  const std::int64_t kt        = blockIdx.y;
  const std::int64_t word_row0 = kt * tile::word_rows;
  const std::int64_t words_k   = P::packed_words(args.k);
  for (int item = static_cast<int>(threadIdx.x); item < tile::word_rows * Tuning::tile_n; item += Tuning::threads) {
    const int wr = item / Tuning::tile_n;
    const int c  = item % Tuning::tile_n;
    std::uint32_t w = 0;
    if (word_row0 + wr < words_k && n0 + c < args.n) {
      w = __ldg(args.qweight + (word_row0 + wr) * args.n + n0 + c);
    }
    smem.words[wr * tile::pitch + c] = w;
  }
  __syncthreads();
  for (int item = static_cast<int>(threadIdx.x); item < Tuning::tile_n * tile::blocks_per_row; item += Tuning::threads) {
    const int r            = item / tile::blocks_per_row;
    const int b            = item % tile::blocks_per_row;
    const std::int64_t row = n0 + r;
    const std::int64_t k0  = kt * Tuning::tile_k + b * values;
    if (row >= args.n || k0 >= args.k) {
      continue;
    }
    std::uint32_t words[P::pack_block_words];
    QPROB_UNROLL
    for (int i = 0; i < P::pack_block_words; ++i) {
      words[i] = smem.words[(b * P::pack_block_words + i) * tile::pitch + r];
    }
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
    detail::store_guarded<values>(args.out + row * args.ld, k0, args.k, args.vector_stores, v);
  }
}

namespace detail {

/// Columns per min/max span: the group, or the 128-column tile when groups are wider (or per channel).
template <quantized_policy P>
constexpr int range_span() {
  using t = tuning<ops::rtn_params, P, target_arch>;
  return P::group_size == per_channel || P::group_size > t::tile_k ? t::tile_k : P::group_size;
}

template <quantized_policy P>
std::int64_t range_spans(std::int64_t k) {
  return ceil_div(k, std::int64_t{range_span<P>()});
}

template <quantized_policy P>
cudaError_t launch_rtn_quantize(const rtn_range_args<typename P::compute_type>& range_args,
                                const rtn_finalize_args& finalize_args,
                                const rtn_pack_args<typename P::compute_type>& pack_args,
                                cudaStream_t stream) noexcept {
  using range_tuning = tuning<ops::rtn_params, P, target_arch>;
  using pack_tuning  = tuning<ops::rtn_pack, P, target_arch>;
  static_assert(range_tuning::tile_k % range_span<P>() == 0 && range_span<P>() % range_tuning::values_per_thread == 0,
                "a span must be whole threads of a row and divide the tile");
  const std::int64_t n = pack_args.n;
  const std::int64_t k = pack_args.k;
  if (n == 0 || k == 0) {
    return cudaSuccess;
  }
  const dim3 range_grid(static_cast<unsigned>(ceil_div(n, std::int64_t{range_tuning::rows_per_block})),
                        static_cast<unsigned>(ceil_div(k, std::int64_t{range_tuning::tile_k})));
  rtn_range_kernel<P, range_tuning><<<range_grid, range_tuning::threads, 0, stream>>>(range_args);
  QPROB_CUDA_RETURN(qprob::detail::post_launch(stream));
  const std::int64_t params = P::groups(k) * n;
  rtn_finalize_kernel<P, range_tuning>
      <<<static_cast<unsigned>(ceil_div(params, std::int64_t{range_tuning::finalize_threads})), range_tuning::finalize_threads, 0,
         stream>>>(finalize_args);
  QPROB_CUDA_RETURN(qprob::detail::post_launch(stream));
  const dim3 pack_grid(static_cast<unsigned>(ceil_div(n, std::int64_t{pack_tuning::tile_n})),
                       static_cast<unsigned>(ceil_div(k, std::int64_t{pack_tuning::tile_k})));
  rtn_pack_kernel<P, pack_tuning><<<pack_grid, pack_tuning::threads, 0, stream>>>(pack_args);
  return qprob::detail::post_launch(stream);
}

template <quantized_policy P>
cudaError_t launch_dequantize(const dequant_args<typename P::compute_type>& args, cudaStream_t stream) noexcept {
  using t = tuning<ops::dequantize, P, target_arch>;
  if (args.n == 0 || args.k == 0) {
    return cudaSuccess;
  }
  const dim3 grid(static_cast<unsigned>(ceil_div(args.n, std::int64_t{t::tile_n})),
                  static_cast<unsigned>(ceil_div(args.k, std::int64_t{t::tile_k})));
  dequantize_kernel<P, t><<<grid, t::threads, 0, stream>>>(args);
  return qprob::detail::post_launch(stream);
}

/// Grid limits: y counts 128-column tiles (at most 65535), x counts row tiles.
template <quantized_policy P>
void check_grid(std::int64_t n, std::int64_t k) {
  using t = tuning<ops::rtn_pack, P, target_arch>;
  QPROB_CHECK(ceil_div(k, std::int64_t{t::tile_k}) <= 65535, "in_features k=", k, " is too large for one launch (",
              policy_name<P>(), ")");
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
  const bool vector = is_aligned(w.data(), 16) && w.stride(0) % 8 == 0;
  // Per-span ranges live in a stream-ordered scratch buffer: (spans, n) float pairs, k/span of the weight.
  device_buffer<float2> ranges(detail::range_spans<P>(k) * n, stream);
  const detail::rtn_range_args<typename P::compute_type> range_args{
      w.data(), w.stride(0), n, k, ranges.data(), detail::range_span<P>(), vector};
  const detail::rtn_finalize_args finalize_args{ranges.data(), n, k, detail::range_span<P>(), scales.data(), zeros.data()};
  const detail::rtn_pack_args<typename P::compute_type> pack_args{
      w.data(), w.stride(0), n, k, scales.data(), zeros.data(), qweight.data(), vector};
  QPROB_CUDA_TRY(detail::launch_rtn_quantize<P>(range_args, finalize_args, pack_args, stream));
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
  const bool aligned = is_aligned(out.data(), 16) && out.stride(0) % 8 == 0;
  const detail::dequant_args<typename P::compute_type> args{
      qweight.data(), scales.data(), zeros.data(), maybe_g_idx, out.data(), out.stride(0), n, k, aligned};
  QPROB_CUDA_TRY(detail::launch_dequantize<P>(args, stream));
}

}  // namespace qprob::quant

#if defined(QPROB_USE_KERNELS_LIBRARY)
#  include <qprob/quant/detail/rtn_instances.inc>
#endif
