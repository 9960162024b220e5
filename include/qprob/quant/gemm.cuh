// SPDX-License-Identifier: Apache-2.0
#pragma once
// Fused dequantize-and-multiply for prefill (many rows): y (M, N) = x (M, K) W^T with W given as GPTQ codes, on
// Hopper tensor cores (wgmma, sm_90a), never materialising W in device memory.
//
// Semantics are int_gemv's: y = x . dequantize_half(W), float32 accumulation, one rounding to fp16, where
// dequantize_half rounds scale * (code - zero) to fp16 (reference/rtn.hpp): the fp16 forward pass on the
// dequantized weights.
//
// The product is computed transposed, y^T (N x M) = W (N x K) x^T, so that the quantized operand is wgmma's A
// operand, which may come from registers: the codes go from device memory through registers into the tensor
// cores and never through shared memory as fp16. For that, the weight is repacked once (at load time:
// repack_for_mma) into the "mma layout": for every 16 output features and every 64 k, each of the 32 lanes of a
// warp holds, in bits/4 x 4 consecutive 32-bit words, exactly the codes of its A fragments (rows g and g + 8,
// k 2q, 2q + 1, 2q + 8, 2q + 9 of each k16 step, g = lane / 4, q = lane % 4), placed so that the 0x6400
// exponent trick turns them into the fragment's fp16 pairs directly; scales and zero points are repacked per
// 16 features and group the same way (mma_weight::scale_zero). x^T is wgmma's B operand: x tiles (128 rows x 64 k) come
// through a cp.async ring of shared-memory stages with the 128-byte swizzle (16-byte chunk c of row r at
// r * 128 + ((c ^ (r % 8)) * 16), 1024-aligned) that the descriptors name.
//
// Block: 256 threads = two warpgroups, 128 output features (64 per warpgroup, 16 per warp) x 128 rows of x. Per
// k tile: each thread's own 16 (4 bits) or 32 (8 bits) bytes of codes arrive by cp.async with the x tile; the
// thread dequantizes them into its A fragments, then the warpgroup issues four wgmma and waits for them (no
// wgmma may be in flight while A registers are written); two blocks per SM overlap one's dequantization with
// the other's tensor-core work.
// The epilogue transposes the 128 x 128 fp32 tile through shared memory and writes y rows (fp16, or float32 with
// an optional accumulation into y for residual streams) with 16-byte stores.
//
// Supported (mma_layout_supported, int_gemm_device_supported): 4 and 8 bits, fp16, groups of a multiple of 32 or per channel, K % 64 == 0,
// N % 8 == 0, 16-byte aligned rows of x and y, compute capability 9.0. Act-order checkpoints: repack_for_mma
// takes g_idx, permutes K so that groups are contiguous, and int_gemm gathers x's columns the same way (one
// pass over x instead of a gather per group). Callers fall back to dequantize + cuBLAS otherwise.
#include <qprob/core/cuda_check.hpp>
#include <qprob/core/device_buffer.hpp>
#include <qprob/core/error.hpp>
#include <qprob/core/launch.hpp>
#include <qprob/core/math.hpp>
#include <qprob/core/numeric.cuh>
#include <qprob/core/tensor_view.hpp>
#include <qprob/policy/precision.hpp>
#include <qprob/quant/act_order.cuh>
#include <qprob/quant/pack.hpp>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <optional>
#include <span>
#include <type_traits>
#include <vector>

namespace qprob::quant {

// ---------------------------------------------------------------------------------------------------------
// The mma layout (host-safe; source_of is its one definition, which the repacking kernel evaluates).

namespace mma_layout {

inline constexpr int kFeatureBlock = 16;   ///< output features per warp fragment
inline constexpr int kKTile        = 64;   ///< k per tile
inline constexpr int kPadFeatures  = 128;  ///< features are padded to the kernel's block (zero codes, zero scales)

template <quantized_policy P>
inline constexpr int words_per_lane = P::bits;  ///< per 64-k tile: 4 k16 steps x bits/4 words

/// Padded feature count.
[[nodiscard]] QPROB_HOST_DEVICE constexpr std::int64_t padded_features(std::int64_t n) noexcept {
  return (n + kPadFeatures - 1) / kPadFeatures * kPadFeatures;
}
/// 32-bit words of the repacked codes of an (N, K) weight.
template <quantized_policy P>
[[nodiscard]] QPROB_HOST_DEVICE constexpr std::int64_t code_words(std::int64_t n, std::int64_t k) noexcept {
  return padded_features(n) / kFeatureBlock * (k / kKTile) * 32 * words_per_lane<P>;
}
/// uint2 entries of the repacked scales and zero points: per 16 features, group and fragment row g (0..7).
[[nodiscard]] QPROB_HOST_DEVICE constexpr std::int64_t scale_zero_entries(std::int64_t n, std::int64_t groups) noexcept {
  return padded_features(n) / kFeatureBlock * groups * 8;
}

/// Where slot `slot` of word `w` of lane `lane` in (feature block nb, k tile kt) comes from: its row (output
/// feature) and column (k). 4 bits: word i is k16 step i, nibbles (j, j + 4) form fragment register a_j;
/// 8 bits: words 2i and 2i + 1 are k16 step i, bytes (0, 2) and (1, 3) form a_0, a_1 (first word) and a_2,
/// a_3 (second). a_0: (g, 2q | 2q + 1), a_1: (g + 8, 2q | 2q + 1), a_2: (g, 2q + 8 | 2q + 9), a_3: (g + 8,
/// 2q + 8 | 2q + 9) of the step's 16 x 16 block.
template <quantized_policy P>
QPROB_HOST_DEVICE constexpr void source_of(std::int64_t nb, std::int64_t kt, int lane, int w, int slot, std::int64_t& row,
                                           std::int64_t& col) noexcept {
  const int g = lane / 4, q = lane % 4;
  int step = 0, reg = 0, half = 0;
  if constexpr (P::bits == 4) {
    step = w;
    reg  = slot % 4;
    half = slot / 4;
  } else {
    step = w / 2;
    reg  = 2 * (w % 2) + slot % 2;
    half = slot / 2;
  }
  row = nb * kFeatureBlock + g + 8 * (reg % 2);
  col = kt * kKTile + 16 * step + 2 * q + 8 * (reg / 2) + half;
}

}  // namespace mma_layout

namespace gemm_detail {

inline constexpr int kBM      = 128;  // rows of x per block (the wgmma N dimension)
inline constexpr int kBN      = 128;  // output features per block (two warpgroups of 64)
inline constexpr int kBK      = mma_layout::kKTile;
inline constexpr int kThreads = 256;

template <quantized_policy P>
inline constexpr bool gemm_bits = (P::bits == 4 || P::bits == 8) && std::is_same_v<typename P::compute_type, half_t>;

template <quantized_policy P, int Stages>
struct gemm_smem {
  static constexpr int x_tile       = kBM * kBK * 2;  // 16 KB of x per stage (128-byte swizzled rows)
  static constexpr int code_bytes   = mma_layout::words_per_lane<P> * 4;  // each thread's own codes ...
  static constexpr int sz_off       = kThreads * code_bytes;                // ... then each thread's 2 scale/zero entries
  static constexpr int w_tile       = sz_off + kThreads * 16;
  static constexpr int x_off        = 0;
  static constexpr int w_off        = Stages * x_tile;
  static constexpr int bytes        = w_off + Stages * w_tile;
  static constexpr int out_pitch    = kBN + 8;        // halves per row of the epilogue's transposed fp16 tile
  static constexpr int out_pitch_f  = kBN + 4;        // floats per row of the float32 tile (conflict-free writes)
  static_assert(kBM * out_pitch * 2 <= bytes && kBM * out_pitch_f * 4 <= bytes, "the epilogue reuses the stages");
  static constexpr int launch_bytes = bytes + 1024;   // room to align the base
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
QPROB_DEVICE QPROB_FORCEINLINE void cp_async8(std::uint32_t dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(dst), "l"(src) : "memory");
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

/// The same for A fragments: their values must be complete before the wgmma batch starts (otherwise the compiler
/// may compute some between the wgmma instructions, which makes ptxas serialize them).
QPROB_DEVICE QPROB_FORCEINLINE void fence_fragments(std::uint32_t (&a)[4][4]) {
  QPROB_UNROLL
  for (int s = 0; s < 4; ++s) {
    QPROB_UNROLL
    for (int r = 0; r < 4; ++r) {
      asm volatile("" : "+r"(a[s][r])::"memory");
    }
  }
}

/// d (64 x 128 fp32 fragment) = A (64 x 16, registers a0..a3 of this thread) * B (16 x 128, descriptor) +
/// (accumulate ? d : 0).
QPROB_DEVICE QPROB_FORCEINLINE void wgmma_rs_m64n128k16(float (&d)[64], const std::uint32_t (&a)[4], std::uint64_t b, int accumulate) {
#if QPROB_HAS_WGMMA
  asm volatile(
      "{\n"
      ".reg .pred acc_p;\n"
      "setp.ne.b32 acc_p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, "
      "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, "
      "%40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, "
      "%59, %60, %61, %62, %63 "
      "}, {%64, %65, %66, %67}, %68, acc_p, 1, 1, 0;\n"
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
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate)
      : "memory");
#else
  (void)d;
  (void)a;
  (void)b;
  (void)accumulate;
  __trap();
#endif
}

/// A fragments of one k tile from this thread's repacked words: frag[step][reg] = scale * (code - zero) of
/// the fragment's rows (scale_zero: x = scale(g) | scale(g + 8) << 16, y = the fp16 1024 + zero of both).
template <quantized_policy P>
QPROB_DEVICE QPROB_FORCEINLINE void dequant_fragments(const std::uint32_t* words, uint2 sz_lo, uint2 sz_hi, std::uint32_t (&frag)[4][4]) {
  const auto apply = [](std::uint32_t biased, std::uint32_t z, std::uint32_t s) {
    const __half2 v = __hmul2(__hsub2(*reinterpret_cast<const __half2*>(&biased), *reinterpret_cast<const __half2*>(&z)),
                              *reinterpret_cast<const __half2*>(&s));
    return *reinterpret_cast<const std::uint32_t*>(&v);
  };
  // per k16 step: rows g (registers 0, 2) and g + 8 (registers 1, 3); steps 0, 1 use the tile's first
  // 32-column group (sz_lo), steps 2, 3 its second (sz_hi; the same group unless groups are 32 wide)
  QPROB_UNROLL
  for (int step = 0; step < 4; ++step) {
    const uint2 sz           = step < 2 ? sz_lo : sz_hi;
    const std::uint32_t s_g  = __byte_perm(sz.x, 0, 0x1010), s_g8 = __byte_perm(sz.x, 0, 0x3232);
    const std::uint32_t z_g  = __byte_perm(sz.y, 0, 0x1010), z_g8 = __byte_perm(sz.y, 0, 0x3232);
    if constexpr (P::bits == 4) {
      const std::uint32_t w = words[step];
      frag[step][0] = apply((w & 0x000f000fu) | 0x64006400u, z_g, s_g);
      frag[step][1] = apply(((w >> 4) & 0x000f000fu) | 0x64006400u, z_g8, s_g8);
      frag[step][2] = apply(((w >> 8) & 0x000f000fu) | 0x64006400u, z_g, s_g);
      frag[step][3] = apply(((w >> 12) & 0x000f000fu) | 0x64006400u, z_g8, s_g8);
    } else {
      const std::uint32_t w0 = words[2 * step], w1 = words[2 * step + 1];
      frag[step][0] = apply((w0 & 0x00ff00ffu) | 0x64006400u, z_g, s_g);
      frag[step][1] = apply(((w0 >> 8) & 0x00ff00ffu) | 0x64006400u, z_g8, s_g8);
      frag[step][2] = apply((w1 & 0x00ff00ffu) | 0x64006400u, z_g, s_g);
      frag[step][3] = apply(((w1 >> 8) & 0x00ff00ffu) | 0x64006400u, z_g8, s_g8);
    }
  }
}

template <quantized_policy P, int Stages, class OutT>
__global__ void __launch_bounds__(kThreads, 2) int_gemm_kernel(const half_t* __restrict__ x, std::int64_t ldx, int m, int k, int n,
                                                            const std::uint32_t* __restrict__ codes, const uint2* __restrict__ scale_zero,
                                                            int groups, int group_width, OutT* __restrict__ y, std::int64_t ldy,
                                                            bool accumulate) {
  using L                 = gemm_smem<P, Stages>;
  constexpr int wpl       = mma_layout::words_per_lane<P>;
  extern __shared__ unsigned char gemm_raw[];
  unsigned char* base     = reinterpret_cast<unsigned char*>((reinterpret_cast<std::uintptr_t>(gemm_raw) + 1023) & ~std::uintptr_t{1023});
  const int t             = static_cast<int>(threadIdx.x);
  const int lane          = t % 32, warp = t / 32, wg = t / 128;
  const int m0            = static_cast<int>(blockIdx.x) * kBM;
  const int n0            = static_cast<int>(blockIdx.y) * kBN;
  const int tiles         = k / kBK;
  const std::int64_t nb   = n0 / mma_layout::kFeatureBlock + warp;  // this warp's 16-feature block
  const std::uint32_t* my_codes = codes + (nb * tiles * 32 + lane) * wpl;
  const uint2* my_sz            = scale_zero + nb * groups * 8 + lane / 4;

  // cp.async of k tile `kt` into stage `st`: x rows (past m zero-filled) and this thread's own codes.
  const auto load_tile = [&](int kt, int st) {
    unsigned char* xs = base + L::x_off + st * L::x_tile;
    QPROB_UNROLL
    for (int i = 0; i < kBM * 8 / kThreads; ++i) {
      const int idx = t + i * kThreads;
      const int r = idx / 8, c = idx % 8;
      const bool in = m0 + r < m;
      const half_t* src = x + static_cast<std::int64_t>(in ? m0 + r : 0) * ldx + kt * kBK + c * 8;
      cp_async16(smem_addr(xs + swizzled(r, c)), src, in ? 16 : 0);
    }
    unsigned char* ws = base + L::w_off + st * L::w_tile;
    QPROB_UNROLL
    for (int i = 0; i < wpl / 4; ++i) {
      cp_async16(smem_addr(ws + t * L::code_bytes + 16 * i), my_codes + static_cast<std::int64_t>(kt) * 32 * wpl + 4 * i, 16);
    }
    // the scale / zero entries of the tile's two 32-column halves (the same group unless groups are 32 wide)
    const int k0 = kt * kBK;
    cp_async8(smem_addr(ws + L::sz_off + t * 16), my_sz + static_cast<std::int64_t>(k0 / group_width) * 8);
    cp_async8(smem_addr(ws + L::sz_off + t * 16 + 8), my_sz + static_cast<std::int64_t>((k0 + 32) / group_width) * 8);
  };

  float acc[64];  // set by the first wgmma (accumulate = 0)

  // This thread's A fragments of k tile kt (its codes, scales and zero points from the tile's stage).
  const auto fragments_of = [&](int kt, std::uint32_t (&frag)[4][4]) {
    const unsigned char* wst = base + L::w_off + (kt % Stages) * L::w_tile;
    const auto* ws           = reinterpret_cast<const uint4*>(wst + t * L::code_bytes);
    std::uint32_t words[wpl];
    QPROB_UNROLL
    for (int i = 0; i < wpl / 4; ++i) {
      const uint4 v    = ws[i];
      words[4 * i]     = v.x;
      words[4 * i + 1] = v.y;
      words[4 * i + 2] = v.z;
      words[4 * i + 3] = v.w;
    }
    const uint4 sz = *reinterpret_cast<const uint4*>(wst + L::sz_off + t * 16);
    dequant_fragments<P>(words, make_uint2(sz.x, sz.y), make_uint2(sz.z, sz.w), frag);
  };
  // The warpgroup's four wgmma of k tile kt (64 features x 128 rows x 64 k), committed as one group.
  const auto mma_tile = [&](int kt, std::uint32_t (&frag)[4][4]) {
    const std::uint32_t xa = smem_addr(base + L::x_off + (kt % Stages) * L::x_tile);
    fence_fragments(frag);
    fence_accumulators(acc);
    wgmma_fence();
    QPROB_UNROLL
    for (int kk = 0; kk < kBK / 16; ++kk) {
      wgmma_rs_m64n128k16(acc, frag[kk], smem_desc(xa + 32 * kk), kt > 0 || kk > 0 ? 1 : 0);
    }
    wgmma_commit();
    fence_accumulators(acc);
  };

  // prologue: Stages - 1 tiles in flight
  QPROB_UNROLL
  for (int s = 0; s < Stages - 1; ++s) {
    if (s < tiles) {
      load_tile(s, s);
    }
    cp_async_commit();
  }
  for (int kt = 0; kt < tiles; ++kt) {
    cp_async_wait<Stages - 2>();  // tile kt (own codes, own x chunks) has landed
    fence_async_smem();
    __syncthreads();              // everyone's x chunks of tile kt; everyone is past tile kt - 1's wgmma
    if (kt + Stages - 1 < tiles) {
      load_tile(kt + Stages - 1, (kt + Stages - 1) % Stages);
    }
    cp_async_commit();
    std::uint32_t frag[4][4];
    fragments_of(kt, frag);
    mma_tile(kt, frag);
    // The overlap of one warpgroup's dequantization with tensor-core work comes from the other warpgroups on the
    // SM. (Two fragment sets, the next tile dequantized while this tile's wgmma run, compiled without
    // serialization but measured no faster: 135 vs 137 us at 512 x 11008 x 4096, docs/performance.md.)
    wgmma_wait<0>();
  }
  cp_async_wait<0>();
  __syncthreads();  // every stage is free: the transposed output tile reuses them

  // epilogue: accumulator i of thread (warp w of the warpgroup, lane l) is feature 16w + l/4 + 8((i>>1)&1) of
  // the warpgroup's 64 and row 8(i>>2) + 2(l%4) + (i&1) of x; out[row][feature] in shared memory, then 16-byte
  // stores of whole rows. fp16 output: one rounding of the float32 sum. float32 output: the sum, or the sum
  // plus y's old value (accumulate: acc + y rounded once, as a GEMM with beta = 1 computes it).
  const int feature = wg * 64 + (warp % 4) * 16 + lane / 4;
  constexpr bool to_half = std::is_same_v<OutT, half_t>;
  constexpr int pitch    = to_half ? L::out_pitch : L::out_pitch_f;
  constexpr int per16    = 16 / static_cast<int>(sizeof(OutT));  // outputs per 16-byte store
  auto* out              = reinterpret_cast<OutT*>(base);
  QPROB_UNROLL
  for (int i = 0; i < 64; ++i) {
    const int r = 8 * (i >> 2) + 2 * (lane % 4) + (i & 1);
    const int f = feature + 8 * ((i >> 1) & 1);
    if constexpr (to_half) {
      out[r * pitch + f] = qprob::detail::from_float_device<half_t>(acc[i]);
    } else {
      out[r * pitch + f] = acc[i];
    }
  }
  __syncthreads();
  for (int idx = t; idx < kBM * (kBN / per16); idx += kThreads) {
    const int r = idx / (kBN / per16), c = idx % (kBN / per16);
    if (m0 + r < m && n0 + per16 * c < n) {
      auto* dst = reinterpret_cast<uint4*>(y + static_cast<std::int64_t>(m0 + r) * ldy + n0 + per16 * c);
      uint4 v   = *reinterpret_cast<const uint4*>(out + r * pitch + per16 * c);
      if constexpr (!to_half) {
        if (accumulate) {
          const float4 old = *reinterpret_cast<const float4*>(dst);
          float4 sum       = *reinterpret_cast<const float4*>(&v);
          sum.x += old.x;
          sum.y += old.y;
          sum.z += old.z;
          sum.w += old.w;
          v = *reinterpret_cast<const uint4*>(&sum);
        }
      }
      *dst = v;
    }
  }
}

/// Repacks GPTQ codes (pack.hpp layout) into the mma layout, one thread per output word; columns of the
/// repacked weight are the original columns in `order` (act-order: sorted by group), padded features zero.
template <quantized_policy P>
__global__ void repack_codes_kernel(const std::uint32_t* __restrict__ qweight, const std::int32_t* __restrict__ order, std::int64_t n,
                                    std::int64_t k, std::uint32_t* __restrict__ out, std::int64_t total) {
  constexpr int wpl       = mma_layout::words_per_lane<P>;
  constexpr int per_word  = 32 / P::bits;
  const std::int64_t tiles = k / mma_layout::kKTile;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const int w             = static_cast<int>(idx % wpl);
    const int lane          = static_cast<int>((idx / wpl) % 32);
    const std::int64_t kt   = (idx / wpl / 32) % tiles;
    const std::int64_t nb   = idx / wpl / 32 / tiles;
    std::uint32_t word      = 0;
    for (int slot = 0; slot < per_word; ++slot) {
      std::int64_t row = 0, col = 0;
      mma_layout::source_of<P>(nb, kt, lane, w, slot, row, col);
      if (row < n) {
        const std::int64_t src = order != nullptr ? order[col] : col;
        word |= unpack_code<P>(qweight + (src / per_word) * n + row, static_cast<int>(src % per_word)) << (P::bits * slot);
      }
    }
    out[idx] = word;
  }
}

/// scale_zero[(nb * groups + grp) * 8 + g] = {scale(16 nb + g) | scale(16 nb + g + 8) << 16, the same for
/// the fp16 1024 + zero}; padded features get scale 0 and zero 0.
__global__ inline void repack_scale_zero_kernel(const half_t* __restrict__ scales, const std::uint8_t* __restrict__ zeros, std::int64_t n,
                                                std::int64_t groups, uint2* __restrict__ out, std::int64_t total) {
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const int g             = static_cast<int>(idx % 8);
    const std::int64_t grp  = (idx / 8) % groups;
    const std::int64_t nb   = idx / 8 / groups;
    std::uint32_t s[2] = {0, 0}, z[2] = {0x6400u, 0x6400u};
    for (int h = 0; h < 2; ++h) {
      const std::int64_t row = nb * mma_layout::kFeatureBlock + g + 8 * h;
      if (row < n) {
        s[h] = *reinterpret_cast<const std::uint16_t*>(scales + grp * n + row);
        z[h] = 0x6400u | zeros[grp * n + row];
      }
    }
    out[idx] = make_uint2(s[0] | (s[1] << 16), z[0] | (z[1] << 16));
  }
}

}  // namespace gemm_detail

/// A weight in the mma layout on the device (see the header comment), made by repack_for_mma.
template <quantized_policy P>
struct mma_weight {
  device_buffer<std::uint32_t> codes;
  device_buffer<uint2> scale_zero;
  device_buffer<std::int32_t> order;  ///< act-order: original column of repacked column j (empty otherwise)
  std::int64_t n = 0, k = 0, groups = 0;
};

/// Whether an (N, K) weight under P with these group indices can be repacked for int_gemm: 4 or 8 bits, fp16,
/// K % 64 == 0, groups of a multiple of 32 or per channel, and, with g_idx, every group (but the last) exactly
/// group-width columns (as GPTQ's act-order writes them).
namespace gemm_detail {
/// mma_layout_supported without g_idx: bits, dtype and shape.
template <quantized_policy P>
[[nodiscard]] constexpr bool mma_shape_supported(std::int64_t n, std::int64_t k) noexcept {
  if constexpr (!gemm_bits<P>) {
    return false;
  } else {
    return n > 0 && k > 0 && k % mma_layout::kKTile == 0 && P::group_width(k) % 32 == 0 && n % 8 == 0 && k < (std::int64_t{1} << 30) &&
           n < (std::int64_t{1} << 30);
  }
}
}  // namespace gemm_detail

template <quantized_policy P>
[[nodiscard]] bool mma_layout_supported(std::int64_t n, std::int64_t k, const std::vector<std::int32_t>& host_g_idx = {}) {
  return gemm_detail::mma_shape_supported<P>(n, k) &&
         (host_g_idx.empty() || act_order_permutation(host_g_idx, k, P::groups(k), P::group_width(k)).has_value());
}

/// Repacks a GPTQ weight (qweight (K / codes-per-word, N), scales and zeros (groups, N), optional g_idx given
/// on the host) into the mma layout. With g_idx, columns are reordered by group (stable), so each group is
/// contiguous; int_gemm gathers x's columns in the same order. Queued on `stream`.
/// @throws invalid_argument when mma_layout_supported refuses.
template <quantized_policy P>
[[nodiscard]] mma_weight<P> repack_for_mma(device_view<const std::uint32_t, 2> qweight, device_view<const half_t, 2> scales,
                                           device_view<const std::uint8_t, 2> zeros, const std::vector<std::int32_t>& host_g_idx,
                                           cudaStream_t stream) {
  const auto n = qweight.shape(1);
  const auto k = qweight.shape(0) * (32 / P::bits);
  // The act-order permutation is computed once: it is both the check of g_idx and the column order.
  const auto order = host_g_idx.empty() ? std::optional<std::vector<std::int32_t>>()
                                        : act_order_permutation(host_g_idx, k, P::groups(k), P::group_width(k));
  QPROB_CHECK(gemm_detail::mma_shape_supported<P>(n, k) && (host_g_idx.empty() || order.has_value()),
              "repack_for_mma: unsupported weight (needs 4 or 8 bits, fp16, K % 64 == 0, ",
              "groups of a multiple of 32 or per channel, N % 8 == 0, act-order groups of exactly the group width): N=", n, " K=", k);
  QPROB_CHECK(qweight.is_contiguous() && scales.is_contiguous() && zeros.is_contiguous(), "repack_for_mma: qweight, scales and zeros must be dense");
  QPROB_CHECK(scales.shape(0) == P::groups(k) && scales.shape(1) == n && zeros.shape(0) == P::groups(k) && zeros.shape(1) == n,
              "repack_for_mma: scales/zeros must be (", P::groups(k), ", ", n, ")");
  if constexpr (gemm_detail::gemm_bits<P>) {
    mma_weight<P> out{device_buffer<std::uint32_t>(mma_layout::code_words<P>(n, k), stream),
                      device_buffer<uint2>(mma_layout::scale_zero_entries(n, P::groups(k)), stream), device_buffer<std::int32_t>(), n, k,
                      P::groups(k)};
    if (order.has_value()) {
      out.order = device_buffer<std::int32_t>(std::span<const std::int32_t>(*order), stream);
    }
    const auto cw = out.codes.size();
    gemm_detail::repack_codes_kernel<P><<<qprob::detail::grid_stride_blocks(cw), 256, 0, stream>>>(qweight.data(), out.order.data(), n, k, out.codes.data(),
                                                                                       cw);
    QPROB_CUDA_TRY(qprob::detail::post_launch(stream));
    const auto se = out.scale_zero.size();
    gemm_detail::repack_scale_zero_kernel<<<qprob::detail::grid_stride_blocks(se), 256, 0, stream>>>(scales.data(), zeros.data(), n, P::groups(k),
                                                                                        out.scale_zero.data(), se);
    QPROB_CUDA_TRY(qprob::detail::post_launch(stream));
    return out;
  } else {
    return {};
  }
}

/// Whether int_gemm runs on this device with x (aligned, contiguous rows): compute capability 9.0.
[[nodiscard]] inline bool int_gemm_device_supported() noexcept {
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return major == 9 && minor == 0;
}

/// y (M, N) = x (M, K) W^T on Hopper tensor cores with W repacked by repack_for_mma (see the header comment).
/// y is fp16 (the sum rounded once) or float32; a float32 y may take the product added to its old values
/// (`accumulate`: y + x W^T rounded once, a GEMM's beta = 1). Rows of x and y may be strided (16-byte aligned).
/// Act-order weights gather x's columns first (into a stream-ordered scratch buffer). Queued on `stream`.
/// @throws invalid_argument for shapes that do not match, misaligned operands, accumulate into fp16 or a device
///         other than sm_90.
template <quantized_policy P, int Stages = 4, class OutT = half_t>
void int_gemm(device_view<const half_t, 2> x, const mma_weight<P>& w, device_view<OutT, 2> y, cudaStream_t stream,
              bool accumulate = false) {
  static_assert(Stages >= 3, "int_gemm: the pipeline needs at least three stages");
  static_assert(gemm_detail::gemm_bits<P>, "int_gemm: 4 or 8 bits, fp16");
  static_assert(std::is_same_v<OutT, half_t> || std::is_same_v<OutT, float>, "int_gemm: y is fp16 or float32");
  constexpr std::int64_t per16 = 16 / static_cast<std::int64_t>(sizeof(OutT));
  const auto m = x.shape(0), k = x.shape(1), n = y.shape(1);
  QPROB_CHECK(k == w.k && n == w.n && y.shape(0) == m, "int_gemm: x is (", m, ", ", k, "), y (", y.shape(0), ", ", n, "), the weight (", w.n,
              ", ", w.k, ")");
  QPROB_CHECK(x.stride(1) == 1 && x.stride(0) % 8 == 0 && is_aligned(x.data(), 16), "int_gemm: x rows must be contiguous and 16-byte aligned");
  QPROB_CHECK(y.stride(1) == 1 && y.stride(0) % per16 == 0 && is_aligned(y.data(), 16), "int_gemm: y rows must be contiguous and 16-byte aligned");
  QPROB_CHECK(!accumulate || (std::is_same_v<OutT, float>), "int_gemm: accumulate needs a float32 y");
  QPROB_CHECK(int_gemm_device_supported(), "int_gemm: needs a device of compute capability 9.0 (wgmma)");
  if (m == 0) {
    return;
  }
  const half_t* xp       = x.data();
  std::int64_t ldx       = x.stride(0);
  device_buffer<half_t> gathered;
  if (w.order.size() > 0) {
    gathered = gather_columns(x, w.order.data(), stream);
    xp       = gathered.data();
    ldx      = k;
  }
  using L      = gemm_detail::gemm_smem<P, Stages>;
  auto* kernel = gemm_detail::int_gemm_kernel<P, Stages, OutT>;
  QPROB_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, L::launch_bytes));
  const dim3 grid(static_cast<unsigned>((m + gemm_detail::kBM - 1) / gemm_detail::kBM), static_cast<unsigned>(mma_layout::padded_features(n) / gemm_detail::kBN));
  kernel<<<grid, gemm_detail::kThreads, L::launch_bytes, stream>>>(xp, ldx, static_cast<int>(m), static_cast<int>(k), static_cast<int>(n),
                                                                  w.codes.data(), w.scale_zero.data(), static_cast<int>(w.groups),
                                                                  static_cast<int>(P::group_width(k)), y.data(), y.stride(0), accumulate);
  QPROB_CUDA_TRY(qprob::detail::post_launch(stream));
}

}  // namespace qprob::quant
