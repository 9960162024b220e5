// SPDX-License-Identifier: Apache-2.0
#pragma once
// Fused dequantize-and-multiply for a few rows (decode-style GEMV, 1 to 16 rows): y = x W^T with W stored as
// GPTQ codes (quant/pack.hpp layout: qweight (packed_words(K), N), scales and zeros (groups(K), N), optional
// g_idx), never materialising W. Memory-bound: it reads bits/16 of the bytes an fp16 GEMV reads.
//
// Semantics: y = x . dequantize_half(W), accumulated in float32 and rounded to fp16 once, where
// dequantize_half rounds scale * (code - zero) to fp16 (reference/rtn.hpp dequantize<P, half_t>): the fp16
// forward pass on the dequantized weights, which the engine runs.
//
// Two paths, chosen per call (int_gemv_path):
// * tensor cores (2, 4 and 8 bits, natural groups, N % 4 == 0, K % codes-per-word == 0, aligned x): one warp
//   owns 32 output columns; lane (g, t) loads the 4 words of columns 4g..4g+3 at word row R + t with one 16-byte
//   load (8 lanes read 128 contiguous bytes) and turns them into fp16 with the 0x6400 exponent trick
//   (1024 + code, exact) minus (1024 + zero), times the scale: exactly the fp16 rounding of scale*(code-zero).
//   Those are the A operand of mma.m16n8k16 (A rows = output columns, B columns = rows of x). The k order inside
//   an mma is free as long as A and B agree: lane t's slots hold the codes of its own word, paired (j, j + V/2)
//   as the exponent trick extracts them, and B takes x at the same positions (one byte_perm per pair). The
//   block's warps split K into contiguous ranges of whole stages and add their partial tiles in shared memory in
//   warp order: deterministic, no atomics, one kernel. Where a stage of word rows lies in one group (g128), the
//   four columns' scales and zeros are loaded and prepared once per stage. The kernel is bound by bytes in flight
//   and instructions, not by DRAM locality (docs/performance.md measures the alternatives).
// * generic (3 bits, act-order g_idx, odd shapes): a thread owns 2 adjacent columns and one split-K slice, x's
//   slice in shared memory, float32 FMAs; slices are added in order by a second kernel.
#include <qprob/core/cuda_check.hpp>
#include <qprob/core/device_buffer.hpp>
#include <qprob/core/error.hpp>
#include <qprob/core/launch.hpp>
#include <qprob/core/math.hpp>
#include <qprob/core/numeric.cuh>
#include <qprob/core/tensor_view.hpp>
#include <qprob/policy/precision.hpp>
#include <qprob/quant/pack.hpp>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace qprob::quant {

namespace gemv_detail {

inline constexpr int kThreads = 128;
inline constexpr int kColumns = 2;     // output columns per thread
inline constexpr int kMaxRows = 16;
inline constexpr int kTargetSliceK = 1024;  // inputs per split-K slice (x slice: M x 1024 halves in smem)

template <quantized_policy P, int M>
__global__ void __launch_bounds__(kThreads) gemv_kernel(const half_t* __restrict__ x, std::int64_t ldx,
                                                        const std::uint32_t* __restrict__ qweight,
                                                        const half_t* __restrict__ scales,
                                                        const std::uint8_t* __restrict__ zeros,
                                                        const std::int32_t* __restrict__ g_idx, int k, int n,
                                                        int k_per_split, float* __restrict__ partial) {
  extern __shared__ half_t xs[];  // [M][k_per_split]
  const int split   = static_cast<int>(blockIdx.y);
  const int k_begin = split * k_per_split;
  const int k_end   = min(k, k_begin + k_per_split);
  const int width   = k_end - k_begin;
  for (int idx = threadIdx.x; idx < M * width; idx += blockDim.x) {
    const int m = idx / width, kk = idx % width;
    xs[m * k_per_split + kk] = x[m * ldx + k_begin + kk];
  }
  __syncthreads();
  const int col0 = (static_cast<int>(blockIdx.x) * kThreads + static_cast<int>(threadIdx.x)) * kColumns;
  if (col0 >= n) {
    return;
  }
  float acc[M][kColumns];
  for (int m = 0; m < M; ++m) {
    for (int c = 0; c < kColumns; ++c) {
      acc[m][c] = 0.0f;
    }
  }
  const int gw = static_cast<int>(P::group_width(k));
  std::uint32_t words[kColumns][P::pack_block_words];
  int group = -1;  // the group whose scales and zeros are loaded
  float scale[kColumns], zero[kColumns];
  for (int kb = k_begin; kb < k_end; kb += P::pack_block_values) {
    const std::int64_t word_row = static_cast<std::int64_t>(kb / P::pack_block_values) * P::pack_block_words;
    for (int w = 0; w < P::pack_block_words; ++w) {
      for (int c = 0; c < kColumns; ++c) {
        words[c][w] = col0 + c < n ? qweight[(word_row + w) * n + col0 + c] : 0u;
      }
    }
    const int values = min(P::pack_block_values, k_end - kb);
    for (int j = 0; j < values; ++j) {
      const int kk = kb + j;
      const int g  = g_idx == nullptr ? kk / gw : g_idx[kk];
      if (g != group) {  // natural groups change at group boundaries only; act-order g_idx may change anywhere
        group = g;
        for (int c = 0; c < kColumns; ++c) {
          const bool in = col0 + c < n;
          scale[c]      = in ? qprob::detail::to_float_device(scales[static_cast<std::int64_t>(g) * n + col0 + c]) : 0.0f;
          zero[c]       = in ? static_cast<float>(zeros[static_cast<std::int64_t>(g) * n + col0 + c]) : 0.0f;
        }
      }
      float w[kColumns];
      for (int c = 0; c < kColumns; ++c) {
        // dequantize_half: the fp16 rounding of the float32 product (exact: an fp16 times a small integer)
        w[c] = __half2float(__float2half_rn(scale[c] * (static_cast<float>(unpack_code<P>(words[c], j)) - zero[c])));
      }
      for (int m = 0; m < M; ++m) {
        const float xv = qprob::detail::to_float_device(xs[m * k_per_split + (kk - k_begin)]);
        for (int c = 0; c < kColumns; ++c) {
          acc[m][c] = fmaf(xv, w[c], acc[m][c]);
        }
      }
    }
  }
  for (int m = 0; m < M; ++m) {
    for (int c = 0; c < kColumns; ++c) {
      if (col0 + c < n) {
        partial[(static_cast<std::int64_t>(split) * M + m) * n + col0 + c] = acc[m][c];
      }
    }
  }
}

/// y[m, c] = sum over slices s (in order) of partial[s, m, c], rounded to fp16.
__global__ inline void gemv_reduce_kernel(const float* __restrict__ partial, int splits, int rows, int n, half_t* __restrict__ y,
                                          std::int64_t ldy) {
  const std::int64_t idx = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= static_cast<std::int64_t>(rows) * n) {
    return;
  }
  const int m = static_cast<int>(idx / n), c = static_cast<int>(idx % n);
  float s     = 0.0f;
  for (int k = 0; k < splits; ++k) {
    s += partial[(static_cast<std::int64_t>(k) * rows + m) * n + c];
  }
  y[m * ldy + c] = qprob::detail::from_float_device<half_t>(s);
}

/// Inputs per split-K slice for K: about kTargetSliceK, a multiple of the pack block (a block never straddles
/// two slices; groups may, each input finds its own group).
template <quantized_policy P>
constexpr int slice_k(std::int64_t k) noexcept {
  constexpr std::int64_t unit = P::pack_block_values;
  const std::int64_t per      = std::max<std::int64_t>(1, kTargetSliceK / unit) * unit;
  return static_cast<int>(std::min<std::int64_t>(per, ((k + unit - 1) / unit) * unit));
}


// ---- tensor-core path ------------------------------------------------------------------------------------------

inline constexpr int kMmaCols = 32;  // output columns per block (one warp's tile)

/// 2, 4 and 8 bits: one word is one pack block of V = 32 / bits codes, V a multiple of 4.
template <quantized_policy P>
inline constexpr bool mma_bits = P::bits == 2 || P::bits == 4 || P::bits == 8;

QPROB_DEVICE QPROB_FORCEINLINE void mma_16816(float (&c)[4], std::uint32_t a0, std::uint32_t a1, std::uint32_t a2,
                                              std::uint32_t a3, std::uint32_t b0, std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

QPROB_DEVICE QPROB_FORCEINLINE std::uint32_t h2_bits(__half2 h) { return *reinterpret_cast<std::uint32_t*>(&h); }
QPROB_DEVICE QPROB_FORCEINLINE __half2 bits_h2(std::uint32_t u) { return *reinterpret_cast<__half2*>(&u); }

/// Per output column, what the dequantization of its codes needs, as fp16 pairs (both halves equal): the
/// scale, 1024 + zero (the exponent-trick bias) and, for 4 bits, -(64 + zero).
struct column_dequant {
  std::uint32_t scale, zero_1024, neg_zero_64;
};

/// The four columns' entries from their 4 scales (8 bytes) and 4 zero points (bytes): one byte_perm each for the
/// scale and 1024 + zero (byte 0x64 over the zero's byte), two operations for -(64 + zero) (zero < 16 at 4 bits).
template <quantized_policy P>
QPROB_DEVICE QPROB_FORCEINLINE void column_entries(uint2 s4, std::uint32_t z4, column_dequant (&out)[4]) {
  QPROB_UNROLL
  for (int c = 0; c < 4; ++c) {
    out[c].scale     = __byte_perm(c < 2 ? s4.x : s4.y, 0, c % 2 == 0 ? 0x1010 : 0x3232);
    out[c].zero_1024 = __byte_perm(z4, 0x64u, static_cast<unsigned>(c | 4 << 4 | c << 8 | 4 << 12));
    if constexpr (P::bits == 4) {
      out[c].neg_zero_64 = 0xd400d400u | ((out[c].zero_1024 & 0x000f000fu) << 4);
    } else {
      out[c].neg_zero_64 = 0u;
    }
  }
}

/// The V codes of a word as V/2 fp16 pairs (codes j and j + V/2), each scale * (code - zero) rounded to fp16:
/// (0x6400 | code) is the fp16 1024 + code; minus 1024 + zero is code - zero exactly; the product rounds once.
/// 4 bits: pairs 1 and 3 are taken in place from the high nibbles, (0x6400 | 16 code) = 1024 + 16 code, and
/// (1024 + 16 code) / 16 - (64 + zero) = code - zero in one exact fma: one shift per word instead of three.
template <quantized_policy P>
QPROB_DEVICE QPROB_FORCEINLINE void dequant_word(std::uint32_t word, const column_dequant& cd, std::uint32_t (&out)[P::pack_block_values / 2]) {
  constexpr int V = P::pack_block_values;
  const __half2 zero_1024 = bits_h2(cd.zero_1024), scale = bits_h2(cd.scale);
  if constexpr (P::bits == 4) {
    const __half2 sixteenth = bits_h2(0x2c002c00u), neg_zero_64 = bits_h2(cd.neg_zero_64);
    const std::uint32_t hi  = word >> 8;
    out[0] = h2_bits(__hmul2(__hsub2(bits_h2((word & 0x000f000fu) | 0x64006400u), zero_1024), scale));
    out[1] = h2_bits(__hmul2(__hfma2(bits_h2((word & 0x00f000f0u) | 0x64006400u), sixteenth, neg_zero_64), scale));
    out[2] = h2_bits(__hmul2(__hsub2(bits_h2((hi & 0x000f000fu) | 0x64006400u), zero_1024), scale));
    out[3] = h2_bits(__hmul2(__hfma2(bits_h2((hi & 0x00f000f0u) | 0x64006400u), sixteenth, neg_zero_64), scale));
  } else {
    constexpr std::uint32_t mask2 = ((1u << P::bits) - 1u) * 0x00010001u;
    QPROB_UNROLL
    for (int p = 0; p < V / 2; ++p) {
      const std::uint32_t biased = ((word >> (P::bits * p)) & mask2) | 0x64006400u;
      out[p]                     = h2_bits(__hmul2(__hsub2(bits_h2(biased), zero_1024), scale));
    }
  }
}

/// y (rows x N) = x W^T on tensor cores; XGroups = 1 for rows <= 8, 2 for rows <= 16. Block: Warps warps over one
/// 32-column tile, each warp a contiguous range of word rows, taken in stages of Unroll word rows per lane (4 *
/// Unroll per warp; ranges start at stage boundaries); MinBlocks is the occupancy the register budget is fitted
/// to. StageGroups: every stage lies inside one group (the words per group are a multiple of the stage, or there
/// is one group), so the four columns' scales and zeros are loaded and prepared once per stage, and the group
/// advances by counting, without a division; otherwise per word row. See the header comment for the fragments.
/// The hoisting cuts the instructions per word row (docs/performance.md: what limits the kernel).
template <quantized_policy P, int XGroups, int Warps, int Unroll, int MinBlocks, bool StageGroups>
__global__ void __launch_bounds__(Warps * 32, MinBlocks) gemv_mma_kernel(const half_t* __restrict__ x, std::int64_t ldx, int rows,
                                                                          const std::uint32_t* __restrict__ qweight,
                                                                          const half_t* __restrict__ scales,
                                                                          const std::uint8_t* __restrict__ zeros, int k, int n,
                                                                          half_t* __restrict__ y, std::int64_t ldy) {
  constexpr int V      = P::pack_block_values;  // codes per word
  constexpr int Pairs  = V / 2;
  constexpr int Steps  = V / 4;  // mma k-steps per word: each takes two pairs per A row
  constexpr int Stage  = 4 * Unroll;  // word rows per warp stage
  __shared__ float partial[Warps][XGroups * 8][32];

  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;
  const int col      = static_cast<int>(blockIdx.x) * kMmaCols + 4 * g;  // this lane's columns col .. col + 3
  const bool col_ok  = col < n;                                          // N % 4 == 0: all four or none
  const int words    = k / V;
  const int wpg      = static_cast<int>(P::group_width(k)) / V;  // word rows per group
  const int per_warp = ((words + Warps - 1) / Warps + Stage - 1) / Stage * Stage;
  const int w_begin  = min(words, warp * per_warp);
  const int w_end    = min(words, w_begin + per_warp);

  float acc[XGroups][2][4] = {};
  // StageGroups: the group of the current stage and the word rows left in it (one division per warp).
  int group = StageGroups ? w_begin / wpg : 0;
  int left  = StageGroups ? wpg - (w_begin - group * wpg) : 0;

  for (int base = w_begin; base < w_end; base += Stage) {
    // Loads: all of a stage's before any is used.
    uint4 wq[Unroll];
    std::uint32_t xw[Unroll][XGroups][Pairs];  // V halves of x at word u's positions, in natural order
    uint2 s4[StageGroups ? 1 : Unroll];
    std::uint32_t z4[StageGroups ? 1 : Unroll];
    if constexpr (StageGroups) {
      if (col_ok) {
        const std::int64_t at = static_cast<std::int64_t>(group) * n + col;
        s4[0] = __ldg(reinterpret_cast<const uint2*>(scales + at));
        z4[0] = __ldg(reinterpret_cast<const unsigned int*>(zeros + at));
      }
    }
    QPROB_UNROLL
    for (int u = 0; u < Unroll; ++u) {
      const int r     = base + 4 * u + t;
      const bool r_ok = r < w_end;
      if (r_ok && col_ok) {
        wq[u] = __ldg(reinterpret_cast<const uint4*>(qweight + static_cast<std::int64_t>(r) * n + col));
        if constexpr (!StageGroups) {
          const std::int64_t at = static_cast<std::int64_t>(r / wpg) * n + col;
          s4[u] = __ldg(reinterpret_cast<const uint2*>(scales + at));
          z4[u] = __ldg(reinterpret_cast<const unsigned int*>(zeros + at));
        }
      }
      QPROB_UNROLL
      for (int h = 0; h < XGroups; ++h) {
        const int xr = g + 8 * h;
        if (r_ok && xr < rows) {
          const half_t* src = x + static_cast<std::int64_t>(xr) * ldx + static_cast<std::int64_t>(r) * V;
          if constexpr (V >= 8) {
            QPROB_UNROLL
            for (int v = 0; v < V / 8; ++v) {
              const uint4 q4       = __ldg(reinterpret_cast<const uint4*>(src) + v);
              xw[u][h][4 * v + 0] = q4.x;
              xw[u][h][4 * v + 1] = q4.y;
              xw[u][h][4 * v + 2] = q4.z;
              xw[u][h][4 * v + 3] = q4.w;
            }
          } else {
            const uint2 q2 = __ldg(reinterpret_cast<const uint2*>(src));
            xw[u][h][0]    = q2.x;
            xw[u][h][1]    = q2.y;
          }
        } else {
          QPROB_UNROLL
          for (int i = 0; i < Pairs; ++i) {
            xw[u][h][i] = 0u;
          }
        }
      }
    }
    column_dequant cd[4] = {};
    if constexpr (StageGroups) {
      if (col_ok) {
        column_entries<P>(s4[0], z4[0], cd);
      }
      left -= Stage;
      if (left == 0) {
        ++group;
        left = wpg;
      }
    }
    QPROB_UNROLL
    for (int u = 0; u < Unroll; ++u) {
      // B: pair p = (x[j], x[j + V/2]) of the word's positions, as dequant_word pairs the codes.
      std::uint32_t b[XGroups][Pairs];
      QPROB_UNROLL
      for (int h = 0; h < XGroups; ++h) {
        QPROB_UNROLL
        for (int p = 0; p < Pairs; ++p) {
          b[h][p] = __byte_perm(xw[u][h][p / 2], xw[u][h][(p + Pairs) / 2], (p % 2) == 0 ? 0x5410 : 0x7632);
        }
      }
      // A: the lane's four columns, dequantized (zero when the column or the word row does not exist).
      std::uint32_t a[4][Pairs];
      if (base + 4 * u + t < w_end && col_ok) {
        if constexpr (!StageGroups) {
          column_entries<P>(s4[u], z4[u], cd);
        }
        const std::uint32_t wv[4] = {wq[u].x, wq[u].y, wq[u].z, wq[u].w};
        QPROB_UNROLL
        for (int c = 0; c < 4; ++c) {
          dequant_word<P>(wv[c], cd[c], a[c]);
        }
      } else {
        QPROB_UNROLL
        for (int c = 0; c < 4; ++c) {
          QPROB_UNROLL
          for (int p = 0; p < Pairs; ++p) {
            a[c][p] = 0u;
          }
        }
      }
      QPROB_UNROLL
      for (int step = 0; step < Steps; ++step) {
        QPROB_UNROLL
        for (int tile = 0; tile < 2; ++tile) {
          // A rows g and g + 8 are the lane's columns 2*tile and 2*tile + 1.
          QPROB_UNROLL
          for (int h = 0; h < XGroups; ++h) {
            mma_16816(acc[h][tile], a[2 * tile][2 * step], a[2 * tile + 1][2 * step], a[2 * tile][2 * step + 1],
                      a[2 * tile + 1][2 * step + 1], b[h][2 * step], b[h][2 * step + 1]);
          }
        }
      }
    }
  }

  // C fragment: acc[h][tile] = {y[2t][c0], y[2t+1][c0], y[2t][c1], y[2t+1][c1]} (x rows + 8h), with
  // c0 = col + 2*tile, c1 = c0 + 1. Warps' tiles are added in warp order.
  QPROB_UNROLL
  for (int h = 0; h < XGroups; ++h) {
    QPROB_UNROLL
    for (int tile = 0; tile < 2; ++tile) {
      QPROB_UNROLL
      for (int i = 0; i < 4; ++i) {
        partial[warp][h * 8 + tile * 4 + i][lane] = acc[h][tile][i];
      }
    }
  }
  __syncthreads();
  for (int idx = static_cast<int>(threadIdx.x); idx < XGroups * 8 * 32; idx += Warps * 32) {
    const int slot = idx / 32, ln = idx % 32;
    float sum      = 0.0f;
    for (int w = 0; w < Warps; ++w) {
      sum += partial[w][slot][ln];
    }
    const int h = slot / 8, tile = (slot / 4) % 2, i = slot % 4;
    const int row = 2 * (ln % 4) + (i % 2) + 8 * h;
    const int c   = static_cast<int>(blockIdx.x) * kMmaCols + 4 * (ln / 4) + 2 * tile + i / 2;
    if (row < rows && c < n) {
      y[static_cast<std::int64_t>(row) * ldy + c] = qprob::detail::from_float_device<half_t>(sum);
    }
  }
}

/// Launches gemv_mma_kernel over the 32-column tiles of N, with scales and zeros per stage when every stage of
/// 4 * Unroll word rows lies in one group (int_gemv and bench_gemv).
template <quantized_policy P, int XGroups, int Warps, int Unroll, int MinBlocks>
void launch_gemv_mma(const half_t* x, std::int64_t ldx, int rows, const std::uint32_t* qweight, const half_t* scales,
                     const std::uint8_t* zeros, int k, int n, half_t* y, std::int64_t ldy, cudaStream_t stream) {
  const auto tiles     = static_cast<unsigned>((n + kMmaCols - 1) / kMmaCols);
  const auto wpg       = P::group_width(k) / P::pack_block_values;
  const bool per_stage = wpg % (4 * Unroll) == 0 || P::groups(k) == 1;
  if (per_stage) {
    gemv_mma_kernel<P, XGroups, Warps, Unroll, MinBlocks, true><<<tiles, Warps * 32, 0, stream>>>(x, ldx, rows, qweight, scales, zeros, k, n, y, ldy);
  } else {
    gemv_mma_kernel<P, XGroups, Warps, Unroll, MinBlocks, false><<<tiles, Warps * 32, 0, stream>>>(x, ldx, rows, qweight, scales, zeros, k, n, y, ldy);
  }
}

}  // namespace gemv_detail

/// Which kernel int_gemv runs for these arguments (see the header comment).
enum class int_gemv_path { tensor_cores, generic };

template <quantized_policy P>
int_gemv_path int_gemv_path_for(device_view<const half_t, 2> x, device_view<const std::uint32_t, 2> qweight,
                                device_view<const half_t, 2> scales, device_view<const std::uint8_t, 2> zeros,
                                const std::int32_t* maybe_g_idx) noexcept {
  if constexpr (!gemv_detail::mma_bits<P>) {
    return int_gemv_path::generic;
  } else {
    constexpr std::int64_t V = P::pack_block_values;
    const auto k = x.shape(1), n = qweight.shape(1);
    // 16-byte loads of x (V halves at a time, 8 for 2 bits) and of 4 columns' words; 8-byte scales, 4-byte zeros.
    const bool layout = is_aligned(x.data(), 16) && x.stride(0) % std::min<std::int64_t>(V, 8) == 0 &&
                        qweight.stride(1) == 1 && scales.stride(1) == 1 && zeros.stride(1) == 1 &&
                        is_aligned(qweight.data(), 16) && is_aligned(scales.data(), 8) && is_aligned(zeros.data(), 4);
    const bool ok = maybe_g_idx == nullptr && n % 4 == 0 && k % V == 0 && P::group_width(k) % V == 0 && layout &&
                    k < (std::int64_t{1} << 30) / V && n < (std::int64_t{1} << 30);
    return ok ? int_gemv_path::tensor_cores : int_gemv_path::generic;
  }
}

/// Float32 workspace for int_gemv: splits x rows x N (used by the generic path only).
template <quantized_policy P>
std::int64_t int_gemv_workspace(std::int64_t rows, std::int64_t k, std::int64_t n) noexcept {
  const auto per = gemv_detail::slice_k<P>(k);
  return ((k + per - 1) / per) * rows * n;
}

/// y (rows, N) = x (rows, K) W^T for 1 <= rows <= 16, W given as GPTQ codes (see the header comment).
/// `workspace` holds int_gemv_workspace<P>(rows, K, N) floats. Queued on `stream`; nothing synchronizes.
/// @throws invalid_argument for shapes that do not match or rows outside [1, 16].
template <quantized_policy P>
void int_gemv(device_view<const half_t, 2> x, device_view<const std::uint32_t, 2> qweight, device_view<const half_t, 2> scales,
              device_view<const std::uint8_t, 2> zeros, const std::int32_t* maybe_g_idx, device_view<half_t, 2> y,
              float* workspace, cudaStream_t stream) {
  const auto rows = x.shape(0), k = x.shape(1), n = y.shape(1);
  QPROB_CHECK(rows >= 1 && rows <= gemv_detail::kMaxRows, "int_gemv: rows=", rows, " must be in [1, 16]");
  QPROB_CHECK(y.shape(0) == rows, "int_gemv: y has ", y.shape(0), " rows, x has ", rows);
  QPROB_CHECK(qweight.shape(0) == P::packed_words(k) && qweight.shape(1) == n, "int_gemv: qweight is (",
              qweight.shape(0), ", ", qweight.shape(1), "), expected (", P::packed_words(k), ", ", n, ")");
  QPROB_CHECK(scales.shape(0) == P::groups(k) && scales.shape(1) == n && zeros.shape(0) == P::groups(k) &&
                  zeros.shape(1) == n,
              "int_gemv: scales/zeros must be (", P::groups(k), ", ", n, ")");
  QPROB_CHECK(x.stride(1) == 1 && y.stride(1) == 1, "int_gemv: x and y rows must be contiguous");
  if constexpr (gemv_detail::mma_bits<P>) {
    if (int_gemv_path_for<P>(x, qweight, scales, zeros, maybe_g_idx) == int_gemv_path::tensor_cores) {
      // Few column tiles (N = 4096: 128 blocks for 132 SMs) get 16 warps each, to keep enough loads in flight;
      // many tiles (N = 11008: 344 blocks) 8 warps with registers fitted to 3 blocks per SM, so that the grid
      // runs in one wave. bench_gemv's BM_int4_gemv_variant measures the alternatives.
      const bool wide = (n + gemv_detail::kMmaCols - 1) / gemv_detail::kMmaCols < 256;
      const auto go   = [&](auto launch) {
        launch(x.data(), x.stride(0), static_cast<int>(rows), qweight.data(), scales.data(), zeros.data(), static_cast<int>(k),
               static_cast<int>(n), y.data(), y.stride(0), stream);
      };
      using namespace gemv_detail;
      if (rows <= 8) {
        wide ? go(launch_gemv_mma<P, 1, 16, 4, 1>) : go(launch_gemv_mma<P, 1, 8, 4, 3>);
      } else {
        wide ? go(launch_gemv_mma<P, 2, 16, 2, 1>) : go(launch_gemv_mma<P, 2, 8, 2, 3>);
      }
      QPROB_CUDA_TRY(qprob::detail::post_launch(stream));
      return;
    }
  }
  const int per    = gemv_detail::slice_k<P>(k);
  const int splits = static_cast<int>((k + per - 1) / per);
  const dim3 grid(static_cast<unsigned>((n + gemv_detail::kThreads * gemv_detail::kColumns - 1) /
                                        (gemv_detail::kThreads * gemv_detail::kColumns)),
                  static_cast<unsigned>(splits));
  const auto launch = [&](auto m_tag) {
    constexpr int M   = decltype(m_tag)::value;
    const auto smem   = static_cast<std::size_t>(M) * static_cast<std::size_t>(per) * sizeof(half_t);
    auto* kernel      = gemv_detail::gemv_kernel<P, M>;
    QPROB_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    kernel<<<grid, gemv_detail::kThreads, smem, stream>>>(x.data(), x.stride(0), qweight.data(), scales.data(),
                                                           zeros.data(), maybe_g_idx, static_cast<int>(k),
                                                           static_cast<int>(n), per, workspace);
  };
  switch (rows) {
#define QPROB_GEMV_CASE(R) \
  case R: launch(std::integral_constant<int, R>{}); break;
    QPROB_GEMV_CASE(1) QPROB_GEMV_CASE(2) QPROB_GEMV_CASE(3) QPROB_GEMV_CASE(4) QPROB_GEMV_CASE(5) QPROB_GEMV_CASE(6)
    QPROB_GEMV_CASE(7) QPROB_GEMV_CASE(8) QPROB_GEMV_CASE(9) QPROB_GEMV_CASE(10) QPROB_GEMV_CASE(11)
    QPROB_GEMV_CASE(12) QPROB_GEMV_CASE(13) QPROB_GEMV_CASE(14) QPROB_GEMV_CASE(15) QPROB_GEMV_CASE(16)
#undef QPROB_GEMV_CASE
    default: break;
  }
  QPROB_CUDA_TRY(qprob::detail::post_launch(stream));
  const auto total = rows * n;
  gemv_detail::gemv_reduce_kernel<<<static_cast<unsigned>((total + 255) / 256), 256, 0, stream>>>(
      workspace, splits, static_cast<int>(rows), static_cast<int>(n), y.data(), y.stride(0));
  QPROB_CUDA_TRY(qprob::detail::post_launch(stream));
}

}  // namespace qprob::quant
