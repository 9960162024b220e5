// SPDX-License-Identifier: Apache-2.0
#pragma once
// Fused dequantize-and-multiply for prefill (many rows): y (M, N) = x (M, K) W^T with W stored as GPTQ codes
// (quant/pack.hpp layout), on Hopper tensor cores (wgmma, sm_90a), never materialising W in device memory.
//
// Semantics are int_gemv's: y = x . dequantize_half(W), float32 accumulation, one rounding to fp16, where
// dequantize_half rounds scale * (code - zero) to fp16 (reference/rtn.hpp): the fp16 forward pass on the
// dequantized weights.
//
// Block tile 128 (rows of x) x 128 (output columns) x 64 (k), 256 threads = two warpgroups of 64 rows each.
// Per k tile, cp.async brings x's 128 x 64 halves and W's packed words, scales and zero points into a ring of
// `Stages` shared-memory stages; the threads turn the packed words into fp16 (the 0x6400 exponent trick, then
// (1024 + code) - (1024 + zero) exactly, times the scale, one rounding) and store them as the B operand. Both
// operands are K-major with the 128-byte swizzle (16-byte chunk c of row r at r * 128 + ((c ^ (r % 8)) * 16),
// tile bases 1024-aligned), which wgmma.m64n128k16 reads through shared-memory descriptors. The dequantization
// of k tile t + 1 overlaps the asynchronous wgmma of tile t; two fp16 B buffers alternate.
//
// Supported (int_gemm_supported): 4 and 8 bits, natural groups of a multiple of 32 columns or per channel (no
// g_idx: act-order checkpoints are permuted at load time), K % 64 == 0, N % 8 == 0, 16-byte aligned rows of x,
// a device of compute capability 9.0. Callers fall back to dequantize + cuBLAS otherwise.
#include <qprob/core/cuda_check.hpp>
#include <qprob/core/error.hpp>
#include <qprob/core/launch.hpp>
#include <qprob/core/math.hpp>
#include <qprob/core/numeric.cuh>
#include <qprob/core/tensor_view.hpp>
#include <qprob/policy/precision.hpp>
#include <qprob/quant/pack.hpp>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace qprob::quant {

namespace gemm_detail {

inline constexpr int kBM      = 128;  // rows of x per block (two warpgroups of 64)
inline constexpr int kBN      = 128;  // output columns per block
inline constexpr int kBK      = 64;   // k per stage: one 128-byte swizzled row of halves
inline constexpr int kThreads = 256;

template <quantized_policy P>
inline constexpr bool gemm_bits = (P::bits == 4 || P::bits == 8) && std::is_same_v<typename P::compute_type, half_t>;

/// Shared-memory layout of one block (offsets from a 1024-aligned base).
template <quantized_policy P, int Stages>
struct gemm_smem {
  static constexpr int x_tile      = kBM * kBK * 2;                 // 16 KB of x per stage
  static constexpr int b_tile      = kBN * kBK * 2;                 // 16 KB of fp16 W per buffer
  static constexpr int word_rows   = kBK * P::bits / 32;            // packed word rows per k tile
  static constexpr int w_tile      = word_rows * kBN * 4;
  static constexpr int s_tile      = 2 * kBN * 2;                   // scales of (up to) two groups
  static constexpr int z_tile      = 2 * kBN;                       // zero points of (up to) two groups
  static constexpr int x_off       = 0;
  static constexpr int b_off       = x_off + Stages * x_tile;
  static constexpr int w_off       = b_off + 2 * b_tile;
  static constexpr int s_off       = w_off + Stages * w_tile;
  static constexpr int z_off       = s_off + Stages * s_tile;
  static constexpr int bytes       = z_off + Stages * z_tile;
  static constexpr int launch_bytes = bytes + 1024;                 // room to align the base
};

QPROB_DEVICE QPROB_FORCEINLINE std::uint32_t smem_addr(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

/// Byte offset of 16-byte chunk c (0..7) of row r in a K-major tile with the 128-byte swizzle.
QPROB_DEVICE QPROB_FORCEINLINE std::uint32_t swizzled(int r, int c) {
  return static_cast<std::uint32_t>(r * 128 + ((c ^ (r & 7)) << 4));
}

/// wgmma shared-memory descriptor of a K-major, 128-byte-swizzled tile at `addr` (1024-aligned): leading
/// offset 16 bytes (unused by this layout), stride 1024 bytes between 8-row groups, swizzle mode 1 (128 B).
QPROB_DEVICE QPROB_FORCEINLINE std::uint64_t smem_desc(std::uint32_t addr) {
  return static_cast<std::uint64_t>((addr & 0x3ffffu) >> 4) | (std::uint64_t{1} << 16) | (std::uint64_t{1024 >> 4} << 32) |
         (std::uint64_t{1} << 62);
}

QPROB_DEVICE QPROB_FORCEINLINE void cp_async16(std::uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
QPROB_DEVICE QPROB_FORCEINLINE void cp_async8(std::uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
QPROB_DEVICE QPROB_FORCEINLINE void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int Pending>
QPROB_DEVICE QPROB_FORCEINLINE void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
}

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#  define QPROB_HAS_WGMMA 1
#else
#  define QPROB_HAS_WGMMA 0
#endif

QPROB_DEVICE QPROB_FORCEINLINE void fence_async_smem() {
#if QPROB_HAS_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
QPROB_DEVICE QPROB_FORCEINLINE void wgmma_fence() {
#if QPROB_HAS_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
QPROB_DEVICE QPROB_FORCEINLINE void wgmma_commit() {
#if QPROB_HAS_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int Pending>
QPROB_DEVICE QPROB_FORCEINLINE void wgmma_wait() {
#if QPROB_HAS_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(Pending) : "memory");
#endif
}

/// Keeps the compiler from moving accesses of the accumulators across wgmma fences and waits.
QPROB_DEVICE QPROB_FORCEINLINE void fence_accumulators(float (&d)[64]) {
  QPROB_UNROLL
  for (int i = 0; i < 64; ++i) {
    asm volatile("" : "+f"(d[i])::"memory");
  }
}

/// d (64 x 128 fp32 fragment of the warpgroup) = A (64 x 16, descriptor) * B (16 x 128, descriptor) + (accumulate ?
/// d : 0): the first product of a tile starts the sums without a separate zeroing of the registers.
QPROB_DEVICE QPROB_FORCEINLINE void wgmma_m64n128k16(float (&d)[64], std::uint64_t a, std::uint64_t b, int accumulate) {
#if QPROB_HAS_WGMMA
  asm volatile(
      "{\n"
      ".reg .pred acc_p;\n"
      "setp.ne.b32 acc_p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, "
      "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, "
      "%40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, "
      "%59, %60, %61, %62, %63 "
      "}, %64, %65, acc_p, 1, 1, 0, 0;\n"
      "}\n"
      :
        "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(a), "l"(b), "r"(accumulate)
      : "memory");
#else
  (void)d;
  (void)a;
  (void)b;
  (void)accumulate;
  __trap();
#endif
}

/// One 16-byte chunk (8 consecutive k) of one column as fp16: the chunk's bits/4 words, each code
/// scale * (code - zero) rounded once; halves in k order.
template <quantized_policy P>
QPROB_DEVICE QPROB_FORCEINLINE uint4 dequant_chunk(const std::uint32_t* words, __half2 zero_1024, __half2 scale) {
  const auto hw  = [](std::uint32_t biased, __half2 z, __half2 s) {
    const __half2 v = __hmul2(__hsub2(*reinterpret_cast<const __half2*>(&biased), z), s);
    return *reinterpret_cast<const std::uint32_t*>(&v);
  };
  uint4 out;
  if constexpr (P::bits == 4) {
    const std::uint32_t w = words[0];
    // pairs (c0, c4), (c1, c5), (c2, c6), (c3, c7) from the exponent trick, then reordered to k order
    const std::uint32_t p04 = hw((w & 0x000f000fu) | 0x64006400u, zero_1024, scale);
    const std::uint32_t p15 = hw(((w >> 4) & 0x000f000fu) | 0x64006400u, zero_1024, scale);
    const std::uint32_t p26 = hw(((w >> 8) & 0x000f000fu) | 0x64006400u, zero_1024, scale);
    const std::uint32_t p37 = hw(((w >> 12) & 0x000f000fu) | 0x64006400u, zero_1024, scale);
    out.x = __byte_perm(p04, p15, 0x5410);
    out.y = __byte_perm(p26, p37, 0x5410);
    out.z = __byte_perm(p04, p15, 0x7632);
    out.w = __byte_perm(p26, p37, 0x7632);
  } else {
    const std::uint32_t w0 = words[0], w1 = words[1];
    const std::uint32_t a02 = hw((w0 & 0x00ff00ffu) | 0x64006400u, zero_1024, scale);
    const std::uint32_t a13 = hw(((w0 >> 8) & 0x00ff00ffu) | 0x64006400u, zero_1024, scale);
    const std::uint32_t b02 = hw((w1 & 0x00ff00ffu) | 0x64006400u, zero_1024, scale);
    const std::uint32_t b13 = hw(((w1 >> 8) & 0x00ff00ffu) | 0x64006400u, zero_1024, scale);
    out.x = __byte_perm(a02, a13, 0x5410);
    out.y = __byte_perm(a02, a13, 0x7632);
    out.z = __byte_perm(b02, b13, 0x5410);
    out.w = __byte_perm(b02, b13, 0x7632);
  }
  return out;
}

template <quantized_policy P, int Stages>
__global__ void __launch_bounds__(kThreads) int_gemm_kernel(const half_t* __restrict__ x, std::int64_t ldx, int m, int k, int n,
                                                            const std::uint32_t* __restrict__ qweight,
                                                            const half_t* __restrict__ scales,
                                                            const std::uint8_t* __restrict__ zeros, int group_width,
                                                            half_t* __restrict__ y, std::int64_t ldy) {
  using L = gemm_smem<P, Stages>;
  extern __shared__ unsigned char gemm_raw[];
  unsigned char* base = reinterpret_cast<unsigned char*>((reinterpret_cast<std::uintptr_t>(gemm_raw) + 1023) & ~std::uintptr_t{1023});
  const int t   = static_cast<int>(threadIdx.x);
  const int m0  = static_cast<int>(blockIdx.x) * kBM;
  const int n0  = static_cast<int>(blockIdx.y) * kBN;
  const int tiles = k / kBK;

  // cp.async of k tile `kt` into stage `st`: x (rows past m zero-filled), packed words, scales and zero
  // points of the groups of its two 32-column halves (columns past n zero-filled).
  const auto load_tile = [&](int kt, int st) {
    const int k0        = kt * kBK;
    unsigned char* xs   = base + L::x_off + st * L::x_tile;
    QPROB_UNROLL
    for (int i = 0; i < kBM * 8 / kThreads; ++i) {
      const int idx = t + i * kThreads;
      const int r = idx / 8, c = idx % 8;
      const bool in = m0 + r < m;
      const half_t* src = x + static_cast<std::int64_t>(in ? m0 + r : 0) * ldx + k0 + c * 8;
      cp_async16(smem_addr(xs + swizzled(r, c)), src, in ? 16 : 0);
    }
    unsigned char* ws = base + L::w_off + st * L::w_tile;
    const std::int64_t row0 = static_cast<std::int64_t>(k0) * P::bits / 32;
    for (int idx = t; idx < L::word_rows * (kBN / 4); idx += kThreads) {
      const int r = idx / (kBN / 4), q = idx % (kBN / 4);
      const bool in = n0 + 4 * q < n;
      const std::uint32_t* src = qweight + (row0 + r) * n + (in ? n0 + 4 * q : 0);
      cp_async16(smem_addr(ws + (r * kBN + 4 * q) * 4), src, in ? 16 : 0);
    }
    if (t < 2 * (kBN / 8)) {  // scales: 8 columns (16 bytes) per copy, two groups
      const int half = t / (kBN / 8), c8 = t % (kBN / 8);
      const std::int64_t g = (k0 + 32 * half) / group_width;
      const bool in        = n0 + 8 * c8 < n;
      cp_async16(smem_addr(base + L::s_off + st * L::s_tile + (half * kBN + 8 * c8) * 2), scales + g * n + (in ? n0 + 8 * c8 : 0),
                 in ? 16 : 0);
    } else if (t < 4 * (kBN / 8)) {  // zero points: 8 columns (8 bytes) per copy, two groups
      const int u = t - 2 * (kBN / 8);
      const int half = u / (kBN / 8), c8 = u % (kBN / 8);
      const std::int64_t g = (k0 + 32 * half) / group_width;
      const bool in        = n0 + 8 * c8 < n;
      cp_async8(smem_addr(base + L::z_off + st * L::z_tile + half * kBN + 8 * c8), zeros + g * n + (in ? n0 + 8 * c8 : 0),
                in ? 8 : 0);
    }
  };

  // Thread t dequantizes column t % 128, chunks 4h..4h+3 (k 32h..32h+31 of the tile, one group) of stage st
  // into fp16 buffer `buf`.
  const int col = t % kBN, hk = t / kBN;
  const auto dequant_tile = [&](int st, int buf) {
    const auto* ws = reinterpret_cast<const std::uint32_t*>(base + L::w_off + st * L::w_tile);
    const half_t sc = reinterpret_cast<const half_t*>(base + L::s_off + st * L::s_tile)[hk * kBN + col];
    const std::uint8_t zp = (base + L::z_off + st * L::z_tile)[hk * kBN + col];
    const __half s1       = *reinterpret_cast<const __half*>(&sc);
    const __half2 scale   = __halves2half2(s1, s1);
    const std::uint32_t zb = 0x6400u | zp;  // fp16 1024 + zero
    const std::uint32_t zz = zb | (zb << 16);
    const __half2 zero_1024 = *reinterpret_cast<const __half2*>(&zz);
    unsigned char* bs = base + L::b_off + buf * L::b_tile;
    constexpr int wpc = P::bits / 4;  // words per 8-k chunk
    QPROB_UNROLL
    for (int j = 0; j < 4; ++j) {
      const int c = 4 * hk + j;
      std::uint32_t words[wpc];
      QPROB_UNROLL
      for (int w = 0; w < wpc; ++w) {
        words[w] = ws[(c * wpc + w) * kBN + col];
      }
      const uint4 v = dequant_chunk<P>(words, zero_1024, scale);
      *reinterpret_cast<uint4*>(bs + swizzled(col, c)) = v;
    }
  };

  float acc[64];  // set by the first wgmma (accumulate = 0)
  const int wg = t / 128;

  // prologue: Stages - 1 tiles in flight, tile 0 dequantized into buffer 0
  QPROB_UNROLL
  for (int s = 0; s < Stages - 1; ++s) {
    if (s < tiles) {
      load_tile(s, s);
    }
    cp_async_commit();
  }
  cp_async_wait<Stages - 2>();
  __syncthreads();
  dequant_tile(0, 0);

  for (int kt = 0; kt < tiles; ++kt) {
    // tiles kt (x) and kt + 1 (words) have landed; buffer kt % 2 holds tile kt's fp16 W
    cp_async_wait<Stages - 3>();
    fence_async_smem();
    __syncthreads();
    const std::uint32_t xa = smem_addr(base + L::x_off + (kt % Stages) * L::x_tile + wg * (64 * 128));
    const std::uint32_t ba = smem_addr(base + L::b_off + (kt % 2) * L::b_tile);
    fence_accumulators(acc);
    wgmma_fence();
    QPROB_UNROLL
    for (int kk = 0; kk < kBK / 16; ++kk) {
      wgmma_m64n128k16(acc, smem_desc(xa + 32 * kk), smem_desc(ba + 32 * kk), kt > 0 || kk > 0 ? 1 : 0);
    }
    wgmma_commit();
    fence_accumulators(acc);
    wgmma_wait<1>();  // this warpgroup's tile kt - 1 is done
    __syncthreads();  // ... and the other's: stage (kt - 1) % Stages and buffer (kt + 1) % 2 are free
    if (kt + Stages - 1 < tiles) {
      load_tile(kt + Stages - 1, (kt + Stages - 1) % Stages);
    }
    cp_async_commit();
    if (kt + 1 < tiles) {
      dequant_tile((kt + 1) % Stages, (kt + 1) % 2);
    }
  }
  wgmma_wait<0>();
  fence_accumulators(acc);

  // epilogue: fragment register i of thread (warp w, lane l) of the warpgroup is row 16w + l/4 + 8((i>>1)&1),
  // column 8(i>>2) + 2(l%4) + (i&1)
  const int w = (t % 128) / 32, l = t % 32;
  QPROB_UNROLL
  for (int i = 0; i < 64; i += 2) {
    const int r = m0 + wg * 64 + 16 * w + l / 4 + 8 * ((i >> 1) & 1);
    const int c = n0 + 8 * (i >> 2) + 2 * (l % 4);
    if (r < m && c < n) {
      *reinterpret_cast<__half2*>(y + static_cast<std::int64_t>(r) * ldy + c) = __floats2half2_rn(acc[i], acc[i + 1]);
    }
  }
}

}  // namespace gemm_detail

/// Whether int_gemm runs for these arguments (see the header comment); otherwise dequantize and use cuBLAS.
template <quantized_policy P>
[[nodiscard]] bool int_gemm_supported(device_view<const half_t, 2> x, device_view<const std::uint32_t, 2> qweight,
                                      device_view<const half_t, 2> scales, device_view<const std::uint8_t, 2> zeros,
                                      const std::int32_t* maybe_g_idx) noexcept {
  if constexpr (!gemm_detail::gemm_bits<P>) {
    return false;
  } else {
    int device = 0, major = 0, minor = 0;
    if (cudaGetDevice(&device) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
    const auto k = x.shape(1), n = qweight.shape(1);
    const auto gw = P::group_width(k);
    const bool layout = is_aligned(x.data(), 16) && x.stride(1) == 1 && x.stride(0) % 8 == 0 && qweight.stride(1) == 1 &&
                        qweight.stride(0) == n && scales.stride(1) == 1 && scales.stride(0) == n && zeros.stride(1) == 1 &&
                        zeros.stride(0) == n && is_aligned(qweight.data(), 16) && is_aligned(scales.data(), 16) &&
                        is_aligned(zeros.data(), 8);
    return major == 9 && minor == 0 && maybe_g_idx == nullptr && k > 0 && k % gemm_detail::kBK == 0 && gw % 32 == 0 && n % 8 == 0 &&
           layout && k < (std::int64_t{1} << 30) && n < (std::int64_t{1} << 30) && x.shape(0) < (std::int64_t{1} << 30);
  }
}

/// y (M, N) = x (M, K) W^T on Hopper tensor cores, W given as GPTQ codes (see the header comment). Queued on
/// `stream`; nothing synchronizes.
/// @throws invalid_argument for shapes that do not match or arguments int_gemm_supported refuses.
template <quantized_policy P, int Stages = 4>
void int_gemm(device_view<const half_t, 2> x, device_view<const std::uint32_t, 2> qweight, device_view<const half_t, 2> scales,
              device_view<const std::uint8_t, 2> zeros, const std::int32_t* maybe_g_idx, device_view<half_t, 2> y,
              cudaStream_t stream) {
  static_assert(Stages >= 3, "int_gemm: the pipeline needs at least three stages");
  const auto m = x.shape(0), k = x.shape(1), n = y.shape(1);
  QPROB_CHECK(y.shape(0) == m, "int_gemm: y has ", y.shape(0), " rows, x has ", m);
  QPROB_CHECK(qweight.shape(0) == P::packed_words(k) && qweight.shape(1) == n, "int_gemm: qweight is (", qweight.shape(0), ", ",
              qweight.shape(1), "), expected (", P::packed_words(k), ", ", n, ")");
  QPROB_CHECK(scales.shape(0) == P::groups(k) && scales.shape(1) == n && zeros.shape(0) == P::groups(k) && zeros.shape(1) == n,
              "int_gemm: scales/zeros must be (", P::groups(k), ", ", n, ")");
  QPROB_CHECK(y.stride(1) == 1 && y.stride(0) % 2 == 0 && is_aligned(y.data(), 4), "int_gemm: y rows must be contiguous and 4-byte aligned");
  QPROB_CHECK(int_gemm_supported<P>(x, qweight, scales, zeros, maybe_g_idx),
              "int_gemm: unsupported arguments (needs 4 or 8 bits, no g_idx, K % 64 == 0, groups of a multiple of 32, N % 8 == 0, "
              "aligned contiguous operands, compute capability 9.0): K=", k, " N=", n);
  if (m == 0) {
    return;
  }
  if constexpr (gemm_detail::gemm_bits<P>) {
    using L      = gemm_detail::gemm_smem<P, Stages>;
    auto* kernel = gemm_detail::int_gemm_kernel<P, Stages>;
    QPROB_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, L::launch_bytes));
    const dim3 grid(static_cast<unsigned>((m + gemm_detail::kBM - 1) / gemm_detail::kBM),
                    static_cast<unsigned>((n + gemm_detail::kBN - 1) / gemm_detail::kBN));
    kernel<<<grid, gemm_detail::kThreads, L::launch_bytes, stream>>>(x.data(), x.stride(0), static_cast<int>(m), static_cast<int>(k),
                                                                    static_cast<int>(n), qweight.data(), scales.data(), zeros.data(),
                                                                    static_cast<int>(P::group_width(k)), y.data(), y.stride(0));
    QPROB_CUDA_TRY(qprob::detail::post_launch(stream));
  }
}

}  // namespace qprob::quant
