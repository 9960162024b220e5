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
// operand, which may come from registers: the codes are dequantized in registers and never pass through shared
// memory as fp16. For that, the weight is repacked once (at load time: repack_for_mma) into the "mma layout":
// for every 16 output features and every 64 k, each of the 32 lanes of a warp holds, in bits/4 x 4 consecutive
// 32-bit words, exactly the codes of its A fragments (rows g and g + 8, k 2q, 2q + 1, 2q + 8, 2q + 9 of each k16
// step, g = lane / 4, q = lane % 4), placed so that the 0x6400 exponent trick turns them into the fragment's
// fp16 pairs directly; the eight 16-feature blocks of one kernel block are adjacent per k tile (4 or 8 KB, one
// copy), and the scales and zero points likewise per group (512 bytes; mma_weight::scale_zero). x^T is wgmma's
// B operand: Rows rows x 64 k per tile with the 128-byte swizzle (16-byte chunk c of row r at r * 128 +
// ((c ^ (r % 8)) * 16), 1024-aligned) that the descriptors name.
//
// Block: three warpgroups, one block per SM, 128 output features x Rows (128 or 256) rows of x. setmaxnreg
// gives the two consumer warpgroups 232 registers per thread (up to 128 fp32 accumulators of wgmma.m64n256 and
// two sets of A fragments) and the producer warpgroup 40. One producer thread fills a ring of Stages
// shared-memory stages with the Hopper copy engine: per 64-k tile one TMA load of the x tile (which also
// writes the swizzle and zero-fills rows past M) and three bulk copies (the block's codes of the tile, the
// scale / zero entries of the groups of its two 32-k halves), all counted on the stage's "full" mbarrier; it
// refills a stage once every consumer warp has released it on its "empty" mbarrier, so it runs up to Stages
// tiles ahead and never holds a consumer back. Each consumer warpgroup computes 64 features (16 per warp) x
// Rows rows: each thread dequantizes tile kt + 1 into one set of A fragments while the warpgroup's four wgmma
// of tile kt read the other, then waits for them (ptxas serializes wgmma whose A registers are written while
// one is in flight, so the set being written is never the one in flight). 256-row tiles give each dequantized
// fragment twice the tensor-core work; 128-row tiles fill the SMs when 256-row tiles are too few
// (gemm_plan). The epilogue transposes the fp32 tile through shared memory and writes y rows (fp16, or
// float32 with an optional accumulation into y for residual streams) with 16-byte stores. Given a workspace,
// the tiles past the last whole wave (e.g. 40 of 172 tiles on 132 SMs) are each split over K across up to four
// blocks, which write float32 partial sums; the last to arrive adds them in part order and writes the tile.
// (Tried: the copies issued by a consumer warp, two blocks of 256 threads per SM: 0.49-0.77x cuBLAS against
// 0.71-0.99x without and 0.76-1.04x with split tails; x tiles multicast to clusters of two blocks; a third
// fragment set. docs/performance.md has the history.)
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

#include <cuda.h>  // CUtensorMap (the encoder comes through the runtime: no libcuda link)
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

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
inline constexpr int kBlockBlocks  = 8;    ///< feature blocks per kernel block (128 features)
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
/// uint2 entries of the repacked scales and zero points: per 128 features, group, 16-feature block and fragment
/// row g (0..7).
[[nodiscard]] QPROB_HOST_DEVICE constexpr std::int64_t scale_zero_entries(std::int64_t n, std::int64_t groups) noexcept {
  return padded_features(n) / kFeatureBlock * groups * 8;
}

/// Position of (16-feature block nb, j) among `count` values of j (k tiles, or groups) with the kernel block's
/// eight feature blocks adjacent for each j: (nb / 8, j, nb % 8), row-major.
[[nodiscard]] QPROB_HOST_DEVICE constexpr std::int64_t block_major(std::int64_t nb, std::int64_t j, std::int64_t count) noexcept {
  return (nb / kBlockBlocks * count + j) * kBlockBlocks + nb % kBlockBlocks;
}
/// The inverse of block_major: nb and j of position `pos`.
QPROB_HOST_DEVICE constexpr void split_block_major(std::int64_t pos, std::int64_t count, std::int64_t& nb, std::int64_t& j) noexcept {
  j  = (pos / kBlockBlocks) % count;
  nb = pos / kBlockBlocks / count * kBlockBlocks + pos % kBlockBlocks;
}
/// Word index of word `w` of lane `lane` in (16-feature block nb, k tile kt): the codes of the kernel block's
/// eight feature blocks for one k tile are contiguous (one bulk copy).
template <quantized_policy P>
[[nodiscard]] QPROB_HOST_DEVICE constexpr std::int64_t code_word_index(std::int64_t nb, std::int64_t kt, std::int64_t tiles, int lane,
                                                                      int w) noexcept {
  return (block_major(nb, kt, tiles) * 32 + lane) * words_per_lane<P> + w;
}
/// Entry index of fragment row g of (16-feature block nb, group grp): a kernel block's entries of one group
/// are contiguous (512 bytes).
[[nodiscard]] QPROB_HOST_DEVICE constexpr std::int64_t scale_zero_index(std::int64_t nb, std::int64_t grp, std::int64_t groups,
                                                                       int g) noexcept {
  return block_major(nb, grp, groups) * 8 + g;
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

inline constexpr int kBN      = 128;  // output features per block (two warpgroups of 64)
inline constexpr int kBK      = mma_layout::kKTile;
inline constexpr int kThreads = 256;                // consumer threads: two warpgroups
inline constexpr int kBlockThreads = kThreads + 128;  // and the producer warpgroup
// Registers per thread: at launch, the 64K register file split evenly over the block's threads (rounded down to
// a multiple of 8: 168); then setmaxnreg moves them from the producer to the consumers, which hold up to 128
// accumulators and two sets of 16 A-fragment registers.
inline constexpr int kLaunchRegisters   = 65536 / kBlockThreads / 8 * 8;
inline constexpr int kConsumerRegisters = 232;
inline constexpr int kProducerRegisters = 40;
static_assert(kThreads * kConsumerRegisters + (kBlockThreads - kThreads) * kProducerRegisters <= 65536,
              "one block per SM must fit the register file after setmaxnreg");

/// Rows of x per block (the wgmma N dimension): 128 (m64n128 per warpgroup) or 256 (m64n256: each dequantized
/// fragment feeds twice the tensor-core work).
template <int Rows>
inline constexpr bool valid_tile_rows = Rows == 128 || Rows == 256;

template <quantized_policy P>
inline constexpr bool gemm_bits = (P::bits == 4 || P::bits == 8) && std::is_same_v<typename P::compute_type, half_t>;

QPROB_DEVICE QPROB_FORCEINLINE std::uint32_t smem_addr(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

/// wgmma shared-memory descriptor of a K-major, 128-byte-swizzled tile at `addr` (1024-aligned): leading
/// offset 16 bytes (unused by this layout), stride 1024 bytes between 8-row groups, swizzle mode 1 (128 B).
QPROB_DEVICE QPROB_FORCEINLINE std::uint64_t smem_desc(std::uint32_t addr) {
  return static_cast<std::uint64_t>((addr & 0x3ffffu) >> 4) | (std::uint64_t{1} << 16) | (std::uint64_t{1024 >> 4} << 32) |
         (std::uint64_t{1} << 62);
}

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#  define QPROB_HAS_WGMMA 1
#else
#  define QPROB_HAS_WGMMA 0
#endif

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

/// 16 and 8 bytes from shared memory by their shared-window address (the compiler loses the address space of
/// pointers into the aligned dynamic buffer and would emit generic loads).
QPROB_DEVICE QPROB_FORCEINLINE uint4 ld_shared16(std::uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr) : "memory");
  return v;
}
QPROB_DEVICE QPROB_FORCEINLINE uint2 ld_shared8(std::uint32_t addr) {
  uint2 v;
  asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "r"(addr) : "memory");
  return v;
}

/// Keeps the compiler from moving accesses of the accumulators across wgmma fences and waits.
template <int Count>
QPROB_DEVICE QPROB_FORCEINLINE void fence_accumulators(float (&d)[Count]) {
  QPROB_UNROLL
  for (int i = 0; i < Count; ++i) {
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

/// d (64 x Cols fp32 fragment, Cols = 128 or 256) = A (64 x 16, registers a0..a3 of this thread) * B (16 x Cols,
/// descriptor) + (accumulate ? d : 0).
template <int Cols>
QPROB_DEVICE QPROB_FORCEINLINE void wgmma_rs_m64k16(float (&d)[Cols / 2], const std::uint32_t (&a)[4], std::uint64_t b, int accumulate) {
  static_assert(Cols == 128 || Cols == 256);
#if QPROB_HAS_WGMMA
  if constexpr (Cols == 128) {
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
  } else {
    asm volatile(
        "{\n"
        ".reg .pred acc_p;\n"
        "setp.ne.b32 acc_p, %133, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "
        "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, "
        "%42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, "
        "%62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, "
        "%82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, "
        "%102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, "
        "%119, %120, %121, %122, %123, %124, %125, %126, %127 "
        "}, {%128, %129, %130, %131}, %132, acc_p, 1, 1, 0;\n"
        "}\n"
        :
          "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]),
          "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]),
          "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
          "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]),
          "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]),
          "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]),
          "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
          "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]),
          "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]),
          "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]),
          "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]),
          "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]),
          "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]),
          "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]),
          "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate)
        : "memory");
  }
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
  // (w & mask) | 0x64006400 in one lop3 (the compiler emits an and and an or for two immediates)
  const auto bias = [](std::uint32_t w, std::uint32_t mask) {
    std::uint32_t r;
    asm("lop3.b32 %0, %1, %2, %3, 0xea;\n" : "=r"(r) : "r"(w), "r"(mask), "r"(0x64006400u));
    return r;
  };
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
      frag[step][0] = apply(bias(w, 0x000f000fu), z_g, s_g);
      frag[step][1] = apply(bias(w >> 4, 0x000f000fu), z_g8, s_g8);
      frag[step][2] = apply(bias(w >> 8, 0x000f000fu), z_g, s_g);
      frag[step][3] = apply(bias(w >> 12, 0x000f000fu), z_g8, s_g8);
    } else {
      const std::uint32_t w0 = words[2 * step], w1 = words[2 * step + 1];
      frag[step][0] = apply(bias(w0, 0x00ff00ffu), z_g, s_g);
      frag[step][1] = apply(bias(w0 >> 8, 0x00ff00ffu), z_g8, s_g8);
      frag[step][2] = apply(bias(w1, 0x00ff00ffu), z_g, s_g);
      frag[step][3] = apply(bias(w1 >> 8, 0x00ff00ffu), z_g8, s_g8);
    }
  }
}

/// Barrier 1 over the block's kThreads consumer threads (the producer warpgroup takes no part).
QPROB_DEVICE QPROB_FORCEINLINE void consumer_sync() {
  asm volatile("bar.sync 1, %0;\n" ::"n"(kThreads) : "memory");
}
/// Raises (or lowers) this warpgroup's register allocation from the launch's kLaunchRegisters to `Count` per
/// thread.
template <int Count>
QPROB_DEVICE QPROB_FORCEINLINE void set_max_registers() {
  static_assert(Count % 8 == 0 && Count >= 24 && Count <= 256 && Count != kLaunchRegisters, "setmaxnreg: 24..256, a multiple of 8");
#if QPROB_HAS_WGMMA
  if constexpr (Count > kLaunchRegisters) {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(Count));
  } else {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(Count));
  }
#endif
}

/// The epilogue: accumulator i of thread t (warp w of its warpgroup, lane l) is feature 16w + l/4 +
/// 8((i>>1)&1) of the warpgroup's 64 and row 8(i>>2) + 2(l%4) + (i&1) of x; out[row][feature] goes to shared
/// memory (`smem`, free by now), then whole rows to y with 16-byte stores. fp16 output: one rounding of the
/// float32 sum. float32 output: the sum, or the sum plus y's old value (accumulate: acc + y rounded once, as a
/// GEMM with beta = 1 computes it).
template <int Rows, int Pitch, int PitchF, class OutT>
QPROB_DEVICE QPROB_FORCEINLINE void store_output_tile(const float (&acc)[Rows / 2], unsigned char* smem, int t, int m0, int n0, int m, int n,
                                                      OutT* __restrict__ y, std::int64_t ldy, bool accumulate) {
  const int lane = t % 32, warp = t / 32, wg = t / 128;
  const int feature = wg * 64 + (warp % 4) * 16 + lane / 4;
  constexpr bool to_half = std::is_same_v<OutT, half_t>;
  constexpr int pitch    = to_half ? Pitch : PitchF;
  constexpr int per16    = 16 / static_cast<int>(sizeof(OutT));  // outputs per 16-byte store
  auto* out              = reinterpret_cast<OutT*>(smem);
  QPROB_UNROLL
  for (int i = 0; i < Rows / 2; ++i) {
    const int r = 8 * (i >> 2) + 2 * (lane % 4) + (i & 1);
    const int f = feature + 8 * ((i >> 1) & 1);
    if constexpr (to_half) {
      out[r * pitch + f] = qprob::detail::from_float_device<half_t>(acc[i]);
    } else {
      out[r * pitch + f] = acc[i];
    }
  }
  consumer_sync();
  for (int idx = t; idx < Rows * (kBN / per16); idx += kThreads) {
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

template <quantized_policy P, int Stages, int Rows>
struct gemm_smem {
  static constexpr int x_tile     = Rows * kBK * 2;                          // 16 or 32 KB, written by TMA (swizzled)
  static constexpr int warp_codes = 32 * mma_layout::words_per_lane<P> * 4;  // one warp's codes of a k tile
  static constexpr int codes_off  = x_tile;
  static constexpr int sz_group   = mma_layout::kBlockBlocks * 8 * static_cast<int>(sizeof(uint2));  // a group's entries
  static constexpr int sz_off     = codes_off + mma_layout::kBlockBlocks * warp_codes;  // the groups of the tile's two 32-k halves
  static constexpr int stage      = sz_off + 2 * sz_group;
  static_assert(stage % 1024 == 0, "stages keep the x tiles 1024-byte aligned");
  static constexpr int out_pitch   = kBN + 8;  // halves per row of the epilogue's transposed fp16 tile
  static constexpr int out_pitch_f = kBN + 4;  // floats per row of the float32 tile
  static constexpr int out_bytes   = Rows * out_pitch_f * 4;
  static constexpr int stages_off  = 1024;     // the mbarriers live below the stages
  static constexpr int bytes       = stages_off + (Stages * stage > out_bytes ? Stages * stage : out_bytes);
  static constexpr int launch_bytes = bytes + 1024;  // room to align the base
  static constexpr std::uint32_t tile_tx = stage;  // bytes that complete a stage
};

QPROB_DEVICE QPROB_FORCEINLINE void mbar_init(std::uint32_t bar, int count) {
#if QPROB_HAS_WGMMA
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#endif
}
QPROB_DEVICE QPROB_FORCEINLINE void mbar_init_fence() {
#if QPROB_HAS_WGMMA
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
QPROB_DEVICE QPROB_FORCEINLINE void mbar_arrive_expect_tx(std::uint32_t bar, std::uint32_t bytes) {
#if QPROB_HAS_WGMMA
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
#endif
}
QPROB_DEVICE QPROB_FORCEINLINE void mbar_arrive(std::uint32_t bar) {
#if QPROB_HAS_WGMMA
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#endif
}
/// Waits until the phase of parity `parity` of the mbarrier at `bar` has completed.
QPROB_DEVICE QPROB_FORCEINLINE void mbar_wait(std::uint32_t bar, std::uint32_t parity) {
#if QPROB_HAS_WGMMA
  std::uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (done == 0);
#endif
}
/// `bytes` (a multiple of 16) from global `src` to shared `dst` (both 16-byte aligned), counted on `bar`.
QPROB_DEVICE QPROB_FORCEINLINE void bulk_copy(std::uint32_t dst, const void* src, std::uint32_t bytes, std::uint32_t bar) {
#if QPROB_HAS_WGMMA
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst), "l"(src),
               "r"(bytes), "r"(bar)
               : "memory");
#endif
}
/// The box of `map` at (c0, c1) (innermost first) into shared `dst`, counted on `bar`.
QPROB_DEVICE QPROB_FORCEINLINE void tma_load_2d(std::uint32_t dst, const CUtensorMap* map, int c0, int c1, std::uint32_t bar) {
#if QPROB_HAS_WGMMA
  asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
               "l"(reinterpret_cast<std::uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
               : "memory");
#endif
}

/// What one block computes: tile `tile` (row tile tile % row_tiles, feature tile tile / row_tiles) over k tiles
/// [k_begin, k_end), part `part` of `parts` (parts > 1: the tile's K is split, and `tail` is the tile's index
/// among the split tiles: its counter and its first scratch slot, tail x parts).
struct block_work {
  int tile, k_begin, k_end, part, parts, tail;
};

/// The grid of a launch: `whole` tiles are computed whole by blocks 0 .. whole - 1 (whole waves), and each of the
/// remaining tiles (the tail, when it would leave most SMs idle) by `parts` blocks, each over an equal share of K
/// (work_of), whose partial sums one of them adds up in a fixed order (reduce_parts).
struct split_grid {
  int row_tiles = 1;  ///< row tiles of x (ceil(M / Rows))
  int whole     = 0;  ///< tiles computed whole (the first ones)
  int parts     = 1;  ///< blocks per tail tile (1: no tail)
  [[nodiscard]] QPROB_HOST_DEVICE block_work work_of(int block, int k_tiles) const {
    if (block < whole) {
      return {block, 0, k_tiles, 0, 1, 0};
    }
    const int tail = (block - whole) / parts, part = (block - whole) % parts;
    return {whole + tail, part * k_tiles / parts, (part + 1) * k_tiles / parts, part, parts, tail};
  }
};

/// Caller-owned scratch of split tiles (gemm_workspace): per tail tile `parts` float32 slots of Rows x 128
/// partial sums and one arrival counter, zero between launches (the last arrival resets it).
struct split_scratch {
  float* partials         = nullptr;
  unsigned int* counters  = nullptr;
};

/// blockIdx.x, read from its special register at each call (volatile: the compiler neither keeps it nor what is
/// derived from it live across the main loop, where the registers hold accumulators).
QPROB_DEVICE QPROB_FORCEINLINE int block_index() {
  unsigned int r = 0;
#if defined(__CUDA_ARCH__)
  asm volatile("mov.u32 %0, %%ctaid.x;\n" : "=r"(r));
#endif
  return static_cast<int>(r);
}

/// The end of a split tile's part: writes this block's partial sums to its slot, counts its arrival, and returns
/// false, except in the block that arrives last, which sets acc to the sum of every part's slot in part order
/// (its own included: the same additions whichever block arrives last, so the result does not depend on
/// timing), resets the counter and returns true. Consumer threads only (barrier 1).
template <int Rows>
QPROB_DEVICE bool reduce_parts(float (&acc)[Rows / 2], const block_work& work, const split_scratch& scratch, int t) {
  __shared__ int last;
  constexpr int per_slot = Rows / 2 * kThreads;
  const float* const first = scratch.partials + static_cast<std::int64_t>(work.tail) * work.parts * per_slot + t;
  float* const mine        = scratch.partials + (static_cast<std::int64_t>(work.tail) * work.parts + work.part) * per_slot + t;
  QPROB_UNROLL
  for (int i = 0; i < Rows / 2; ++i) {
    __stcg(mine + i * kThreads, acc[i]);  // accumulator i of every thread is contiguous: coalesced
  }
  __threadfence();  // the sums are visible device-wide before the arrival is counted
  consumer_sync();
  if (t == 0) {
    last = atomicAdd(scratch.counters + work.tail, 1u) == static_cast<unsigned int>(work.parts - 1) ? 1 : 0;
    if (last != 0) {
      scratch.counters[work.tail] = 0;  // every part has arrived: ready for the next launch
    }
  }
  consumer_sync();
  if (last == 0) {
    return false;
  }
  __threadfence();  // the other parts' sums, written before their arrivals, are read after ours was counted
  QPROB_UNROLL
  for (int i = 0; i < Rows / 2; ++i) {
    acc[i] = __ldcg(first + i * kThreads);
  }
  for (int q = 1; q < work.parts; ++q) {
    QPROB_UNROLL
    for (int i = 0; i < Rows / 2; ++i) {
      acc[i] += __ldcg(first + static_cast<std::int64_t>(q) * per_slot + i * kThreads);
    }
  }
  return true;
}

template <quantized_policy P, int Stages, class OutT, int Rows>
__global__ void __launch_bounds__(kBlockThreads, 1) int_gemm_kernel(const __grid_constant__ CUtensorMap x_map, int m, int k, int n,
                                                                    const std::uint32_t* __restrict__ codes,
                                                                    const uint2* __restrict__ scale_zero, int groups, int group_width,
                                                                    OutT* __restrict__ y, std::int64_t ldy, bool accumulate,
                                                                    split_grid grid, split_scratch scratch) {
  static_assert(Stages >= 2, "the copy engine fills one stage while another is read");
  static_assert(valid_tile_rows<Rows>);
  using L           = gemm_smem<P, Stages, Rows>;
  constexpr int wpl = mma_layout::words_per_lane<P>;
  extern __shared__ unsigned char gemm_raw[];
  unsigned char* base   = reinterpret_cast<unsigned char*>((reinterpret_cast<std::uintptr_t>(gemm_raw) + 1023) & ~std::uintptr_t{1023});
  unsigned char* stages = base + L::stages_off;
  const std::uint32_t bars = smem_addr(base);  // full[s] at bars + 8 s, empty[s] at bars + 8 (Stages + s)
  const auto full          = [&](int s) { return bars + 8u * static_cast<std::uint32_t>(s); };
  const auto empty         = [&](int s) { return bars + 8u * static_cast<std::uint32_t>(Stages + s); };
  const int t              = static_cast<int>(threadIdx.x);
  const int lane = t % 32, warp = t / 32;
  const block_work work = grid.work_of(block_index(), k / kBK);
  const int m0    = work.tile % grid.row_tiles * Rows;
  const int n0    = work.tile / grid.row_tiles * kBN;
  const int tiles = work.k_end - work.k_begin;  // this block's k tiles; kt below counts from work.k_begin
  if (t == 0) {
    QPROB_UNROLL
    for (int s = 0; s < Stages; ++s) {
      mbar_init(full(s), 1);               // the producer's arrive with the byte count
      mbar_init(empty(s), kThreads / 32);  // every consumer warp, once its wgmma have read the stage
    }
    mbar_init_fence();
  }
  __syncthreads();

  // The producer warpgroup (40 registers; its first lane does the work): tile kt into stage kt % Stages once
  // tile kt - Stages has been released, four copies: the x tile, the block's codes of the tile (contiguous in
  // the mma layout) and the scale / zero entries of the groups of the tile's first and second 32-column halves
  // (the same group unless groups are 32 wide or straddle the tile).
  if (warp >= kThreads / 32) {
    set_max_registers<kProducerRegisters>();
    if (t == kThreads) {
      const std::int64_t nb0 = n0 / mma_layout::kFeatureBlock;
      for (int kt = 0; kt < tiles; ++kt) {
        const int s            = kt % Stages;
        const std::uint32_t st = smem_addr(stages + s * L::stage);
        if (kt >= Stages) {
          mbar_wait(empty(s), static_cast<std::uint32_t>((kt / Stages + 1) & 1));
        }
        const int kg = work.k_begin + kt;  // the tile's place in K
        mbar_arrive_expect_tx(full(s), L::tile_tx);
        tma_load_2d(st, &x_map, kg * kBK, m0, full(s));
        bulk_copy(st + L::codes_off, codes + mma_layout::code_word_index<P>(nb0, kg, k / kBK, 0, 0), mma_layout::kBlockBlocks * L::warp_codes,
                  full(s));
        QPROB_UNROLL
        for (int h = 0; h < 2; ++h) {
          const int grp = (kg * kBK + 32 * h) / group_width;
          bulk_copy(st + L::sz_off + L::sz_group * h, scale_zero + mma_layout::scale_zero_index(nb0, grp, groups, 0), L::sz_group, full(s));
        }
      }
    }
    return;  // the consumers' waits on the full barriers cover every copy issued
  }
  set_max_registers<kConsumerRegisters>();

  // Two consumer warpgroups of 64 features (16 per warp) x the block's Rows rows of x.
  const std::uint32_t stages_addr = smem_addr(stages);
  const std::uint32_t my_codes    = static_cast<std::uint32_t>(L::codes_off + warp * L::warp_codes + lane * wpl * 4);
  const std::uint32_t my_sz       = static_cast<std::uint32_t>(L::sz_off + warp * L::sz_group / mma_layout::kBlockBlocks + (lane / 4) * 8);
  float acc[Rows / 2];  // set by the first wgmma (accumulate = 0)
  // This thread's A fragments of tile kt, once the tile has landed.
  const auto fragments_of = [&](int kt, std::uint32_t (&frag)[4][4]) {
    const int s = kt % Stages;
    mbar_wait(full(s), static_cast<std::uint32_t>((kt / Stages) & 1));
    const std::uint32_t xa = stages_addr + static_cast<std::uint32_t>(s * L::stage);
    std::uint32_t words[wpl];
    QPROB_UNROLL
    for (int i = 0; i < wpl / 4; ++i) {
      const uint4 v    = ld_shared16(xa + my_codes + 16 * i);
      words[4 * i]     = v.x;
      words[4 * i + 1] = v.y;
      words[4 * i + 2] = v.z;
      words[4 * i + 3] = v.w;
    }
    dequant_fragments<P>(words, ld_shared8(xa + my_sz), ld_shared8(xa + my_sz + L::sz_group), frag);
  };
  // Once the warp's wgmma of tile kt are complete: lane 0 releases its stage.
  const auto release = [&](int kt) {
    if (lane == 0) {
      mbar_arrive(empty(kt % Stages));
    }
  };
  // The warpgroup's four wgmma of tile kt, committed as one group.
  const auto mma_tile = [&](int kt, std::uint32_t (&frag)[4][4]) {
    const std::uint32_t xa = stages_addr + static_cast<std::uint32_t>((kt % Stages) * L::stage);
    fence_fragments(frag);
    fence_accumulators(acc);
    wgmma_fence();
    QPROB_UNROLL
    for (int kk = 0; kk < kBK / 16; ++kk) {
      wgmma_rs_m64k16<Rows>(acc, frag[kk], smem_desc(xa + 32 * kk), kt > 0 || kk > 0 ? 1 : 0);
    }
    wgmma_commit();
    fence_accumulators(acc);
  };
  // Two fragment sets: tile kt + 1 is dequantized while tile kt's wgmma run (they read the other set).
  std::uint32_t fa[4][4], fb[4][4];
  const auto step = [&](int kt, std::uint32_t (&cur)[4][4], std::uint32_t (&next)[4][4]) {
    mma_tile(kt, cur);
    if (kt + 1 < tiles) {
      fragments_of(kt + 1, next);
    }
    wgmma_wait<0>();
    release(kt);
  };
  fragments_of(0, fa);
  for (int kt = 0; kt < tiles; kt += 2) {
    step(kt, fa, fb);
    if (kt + 1 < tiles) {
      step(kt + 1, fb, fa);
    }
  }
  if (grid.parts > 1) {
    // the work again from the block index (read anew, so that none of it stays in a register through the loop)
    const block_work split = grid.work_of(block_index(), k / kBK);
    if (split.parts > 1 && !reduce_parts<Rows>(acc, split, scratch, t)) {
      return;  // another part of this tile adds up the parts and writes it
    }
  }
  consumer_sync();  // every wgmma is complete and every copy has landed: the output tile reuses the stages
  store_output_tile<Rows, L::out_pitch, L::out_pitch_f>(acc, stages, t, m0, n0, m, n, y, ldy, accumulate);
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
    // idx = code_word_index(nb, kt, tiles, lane, w)
    const int w             = static_cast<int>(idx % wpl);
    const int lane          = static_cast<int>((idx / wpl) % 32);
    std::int64_t nb = 0, kt = 0;
    mma_layout::split_block_major(idx / wpl / 32, tiles, nb, kt);
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

/// scale_zero[scale_zero_index(nb, grp, groups, g)] = {scale(16 nb + g) | scale(16 nb + g + 8) << 16, the same
/// for the fp16 1024 + zero}; padded features get scale 0 and zero 0.
__global__ inline void repack_scale_zero_kernel(const half_t* __restrict__ scales, const std::uint8_t* __restrict__ zeros, std::int64_t n,
                                                std::int64_t groups, uint2* __restrict__ out, std::int64_t total) {
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const int g             = static_cast<int>(idx % 8);
    std::int64_t nb = 0, grp = 0;
    mma_layout::split_block_major(idx / 8, groups, nb, grp);
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

namespace gemm_detail {
/// The TMA descriptor of x (M rows of K fp16, rows `ldx` apart) in boxes of `rows` rows x 64 k with the 128-byte
/// swizzle the wgmma descriptors name; rows past M read as zeros. The driver's encoder is found through the
/// runtime (cudaGetDriverEntryPointByVersion), so nothing links libcuda.
[[nodiscard]] inline CUtensorMap x_tensor_map(const half_t* x, std::int64_t ldx, std::int64_t m, std::int64_t k, int rows) {
  using encode_fn          = PFN_cuTensorMapEncodeTiled_v12000;
  static const encode_fn encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    QPROB_CUDA_TRY(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found));
    QPROB_CHECK(found == cudaDriverEntryPointSuccess && fn != nullptr, "int_gemm: the driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<encode_fn>(fn);
  }();
  CUtensorMap map{};
  const cuuint64_t dims[2]    = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(m)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(ldx) * sizeof(half_t)};
  const cuuint32_t box[2]     = {static_cast<cuuint32_t>(kBK), static_cast<cuuint32_t>(rows)};
  const cuuint32_t step[2]    = {1, 1};
  const CUresult r = encode(&map, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2, const_cast<half_t*>(x), dims, strides, box, step, CU_TENSOR_MAP_INTERLEAVE_NONE,
                            CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  QPROB_CHECK(r == CUDA_SUCCESS, "int_gemm: cuTensorMapEncodeTiled failed (error ", static_cast<int>(r), ") for x of ", m, " x ", k,
              " with row stride ", ldx);
  return map;
}

/// How one product is launched: the tile rows (128 or 256) and the grid (split_grid).
struct gemm_plan {
  int rows = 256;
  split_grid grid;
  int blocks = 0;  ///< grid.whole + tail tiles x grid.parts
  [[nodiscard]] constexpr int tail_tiles() const noexcept { return (blocks - grid.whole) / grid.parts; }
};

inline constexpr int kMaxParts = 4;  ///< blocks per split tile at most

/// The plan of an M x N x K product on `sms` multiprocessors (one block each), for `rows`-row tiles. Whole waves
/// of tiles are computed whole; when `split` allows and the tiles past the last whole wave leave at least half
/// of the SMs idle, each of those is split over parts = sms / tail (at most kMaxParts, at most K / 64) blocks,
/// so the tail takes 1 / parts of a wave.
[[nodiscard]] constexpr gemm_plan plan_with_rows(std::int64_t m, std::int64_t n, std::int64_t k, int sms, int rows, bool split) noexcept {
  const std::int64_t row_tiles = (m + rows - 1) / rows;
  const std::int64_t tiles     = row_tiles * (mma_layout::padded_features(n) / kBN);
  const std::int64_t tail      = tiles % sms;
  std::int64_t parts           = split && tail > 0 ? sms / tail : 1;
  parts                        = parts < kMaxParts ? parts : kMaxParts;
  parts                        = parts < k / kBK ? parts : k / kBK;
  if (parts < 2) {
    return {rows, {static_cast<int>(row_tiles), static_cast<int>(tiles), 1}, static_cast<int>(tiles)};
  }
  return {rows, {static_cast<int>(row_tiles), static_cast<int>(tiles - tail), static_cast<int>(parts)},
          static_cast<int>(tiles - tail + tail * parts)};
}

/// The plan's time in k tiles of one 256-row block: whole waves, plus the tail's share of a wave and, for a
/// split tail, an allowance for the partial sums' round trip (1.5 k tiles per part: a 128 KB slot written by
/// every part and read by the last); a 128-row tile counts 0.7 of a 256-row one (its wgmma are half as long for
/// the same dequantization). Both constants are estimates; with them the plan is the fastest of the measured
/// plans at every benchmarked shape (H100: docs/performance.md, "Fused int GEMM for prefill").
[[nodiscard]] constexpr double plan_cost(const gemm_plan& plan, std::int64_t k, int sms) noexcept {
  const double k_tiles = static_cast<double>(k / kBK);
  const int waves      = plan.grid.whole / sms;
  const int tail       = plan.blocks - waves * sms;  // blocks past the whole waves
  double cost          = k_tiles * waves;
  if (tail > 0) {
    cost += plan.grid.parts > 1 ? k_tiles / plan.grid.parts + 1.5 * (plan.grid.parts + 1) : k_tiles;
  }
  return (plan.rows == 128 ? 0.7 : 1.0) * cost;
}

/// The plan int_gemm uses: the cheaper of 128- and 256-row tiles by plan_cost (`rows` = 128 or 256 forces one),
/// split tails only with `split` (a workspace). E.g. 512 x 4096 x 4096: 64 tiles of 256 rows in two parts each
/// (128 blocks, one wave of half-length blocks) against 128 tiles of 128 rows.
[[nodiscard]] constexpr gemm_plan plan_gemm(std::int64_t m, std::int64_t n, std::int64_t k, int sms, bool split, int rows = 0) noexcept {
  if (rows != 0) {
    return plan_with_rows(m, n, k, sms, rows, split);
  }
  const gemm_plan p128 = plan_with_rows(m, n, k, sms, 128, split), p256 = plan_with_rows(m, n, k, sms, 256, split);
  return plan_cost(p128, k, sms) < plan_cost(p256, k, sms) ? p128 : p256;
}

/// One int_gemm launch with `Rows`-row tiles on x (rows `ldx` apart, already gathered for act-order) on the
/// plan's grid; a split plan needs `scratch` (gemm_workspace) with a slot per tail block.
template <quantized_policy P, int Stages, class OutT, int Rows>
void launch_int_gemm(const half_t* x, std::int64_t ldx, std::int64_t m, std::int64_t k, std::int64_t n, const mma_weight<P>& w,
                     device_view<OutT, 2> y, cudaStream_t stream, bool accumulate, const gemm_plan& plan, split_scratch scratch) {
  QPROB_CHECK(plan.rows == Rows && plan.grid.parts >= 1 && plan.grid.parts <= k / kBK && plan.blocks > 0 &&
                  (plan.grid.parts == 1 || (scratch.partials != nullptr && scratch.counters != nullptr)),
              "int_gemm: inconsistent launch plan (", plan.rows, " rows, ", plan.grid.parts, " parts, ", plan.blocks, " blocks)");
  using L      = gemm_smem<P, Stages, Rows>;
  auto* kernel = int_gemm_kernel<P, Stages, OutT, Rows>;
  QPROB_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, L::launch_bytes));
  const CUtensorMap x_map = x_tensor_map(x, ldx, m, k, Rows);
  kernel<<<static_cast<unsigned>(plan.blocks), kBlockThreads, L::launch_bytes, stream>>>(
      x_map, static_cast<int>(m), static_cast<int>(k), static_cast<int>(n), w.codes.data(), w.scale_zero.data(), static_cast<int>(w.groups),
      static_cast<int>(P::group_width(k)), y.data(), y.stride(0), accumulate, plan.grid, scratch);
  QPROB_CUDA_TRY(qprob::detail::post_launch(stream));
}

/// The current device and its multiprocessors (one attribute query: int_gemm asks on every call, where
/// current_device_info's cudaGetDeviceProperties would cost more than a small product).
struct device_sms {
  int device = 0, sms = 0;
};
[[nodiscard]] inline device_sms current_device_sms() {
  device_sms d;
  QPROB_CUDA_TRY(cudaGetDevice(&d.device));
  QPROB_CUDA_TRY(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, d.device));
  return d;
}
}  // namespace gemm_detail

/// Scratch that lets int_gemm split the K of the tiles past its last whole wave over several blocks (a partial
/// last wave otherwise leaves SMs idle: e.g. 172 tiles on 132 SMs): one slot of 256 x 128 float32 partial sums
/// per multiprocessor of the current device (128 KB each, 17 MB on an H100) and one counter per slot, zeroed
/// here; every launch leaves the counters zero again. A split tile adds its parts in a fixed order, so results
/// do not depend on timing, but its rows are summed in another order than an unsplit tile's: whether a row's
/// tile is split depends on M, so a caller that needs a row's bits independent of the batch (the engine) passes
/// no workspace. One workspace serves the calls queued on one stream of its device; concurrent calls need one
/// each. A default-constructed workspace belongs to no device.
class gemm_workspace {
public:
  gemm_workspace() = default;
  explicit gemm_workspace(cudaStream_t stream) : gemm_workspace(gemm_detail::current_device_sms(), stream) {}
  [[nodiscard]] int device() const noexcept { return device_; }  ///< -1: none
  [[nodiscard]] int slots() const noexcept { return slots_; }
  [[nodiscard]] gemm_detail::split_scratch scratch() noexcept { return {partials_.data(), counters_.data()}; }

private:
  gemm_workspace(gemm_detail::device_sms d, cudaStream_t stream)
      : device_(d.device),
        slots_(d.sms),
        partials_(static_cast<std::int64_t>(slots_) * 256 * gemm_detail::kBN, stream),
        counters_(slots_, stream) {
    counters_.fill_bytes(0);
  }
  int device_ = -1;
  int slots_  = 0;
  device_buffer<float> partials_;
  device_buffer<unsigned int> counters_;
};

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
/// Act-order weights gather x's columns first (into a stream-ordered scratch buffer). With a `workspace` (made
/// on this device) the tiles past the last whole wave may be split over several blocks (gemm_plan; see
/// gemm_workspace for what that does to the bits of those rows). `Rows` = 128 or 256 forces the tile rows.
/// Queued on `stream`.
/// @throws invalid_argument for shapes that do not match, misaligned operands, accumulate into fp16, a device
///         other than sm_90 or a workspace made on another device (or none).
template <quantized_policy P, int Stages = 5, class OutT = half_t, int Rows = 0>
void int_gemm(device_view<const half_t, 2> x, const mma_weight<P>& w, device_view<OutT, 2> y, cudaStream_t stream,
              bool accumulate = false, gemm_workspace* workspace = nullptr) {
  static_assert(Stages >= 2, "int_gemm: the pipeline needs at least two stages");
  static_assert(Rows == 0 || gemm_detail::valid_tile_rows<Rows>, "int_gemm: tiles of 128 or 256 rows (0: chosen by the shape)");
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
  const auto dev = gemm_detail::current_device_sms();
  QPROB_CHECK(workspace == nullptr || (workspace->device() == dev.device && workspace->slots() >= dev.sms),
              "int_gemm: the workspace belongs to device ", workspace == nullptr ? -1 : workspace->device(), ", not to the current device ",
              dev.device, " (a workspace is made on the device it serves)");
  const half_t* xp       = x.data();
  std::int64_t ldx       = x.stride(0);
  device_buffer<half_t> gathered;
  if (w.order.size() > 0) {
    gathered = gather_columns(x, w.order.data(), stream);
    xp       = gathered.data();
    ldx      = k;
  }
  const auto plan    = gemm_detail::plan_gemm(m, n, k, dev.sms, workspace != nullptr, Rows);
  const auto scratch = workspace != nullptr ? workspace->scratch() : gemm_detail::split_scratch{};
  if constexpr (Rows != 0) {
    gemm_detail::launch_int_gemm<P, Stages, OutT, Rows>(xp, ldx, m, k, n, w, y, stream, accumulate, plan, scratch);
  } else if (plan.rows == 128) {
    gemm_detail::launch_int_gemm<P, Stages, OutT, 128>(xp, ldx, m, k, n, w, y, stream, accumulate, plan, scratch);
  } else {
    gemm_detail::launch_int_gemm<P, Stages, OutT, 256>(xp, ldx, m, k, n, w, y, stream, accumulate, plan, scratch);
  }
}

}  // namespace qprob::quant
