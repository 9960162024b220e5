// SPDX-License-Identifier: Apache-2.0
#pragma once
// Causal attention on tensor cores (mma.sync m16n8k16, fp16 or bf16 inputs, float32 accumulation): the same
// contract as kernels::attention_kernel (same tiles, masks, ALiBi and sliding window; results depend on a query's
// own request only) for head_dim 32, 64, 80, 96 and 128, which is every head size the supported families ship.
//
// One warp per (tile, head): a tile's <= 16 query rows are exactly one mma row block. Keys go in chunks of 32 from
// the start of each key range, as in the CUDA-core kernel:
//   S = Q K^T   A = Q (registers for the whole kernel), B = K straight from global memory. Within a k-step of 16
//               head channels lane (g, t) = (lane / 4, lane % 4) takes channels 4t..4t+3, two pairs: the mma's k
//               order is free as long as A and B agree, so one 64-bit load gives both B registers and Q follows
//               the same order.
//   online softmax in the log2 domain, per row: a row's running max and sum see only that row's visible keys; a
//               chunk with no visible key leaves the row's state bit-identical (scale 1, probabilities exactly 0).
//   O += P V    P from the S accumulators (the C layout of two n-tiles is the A layout of one k-step), rounded to
//               Act as FlashAttention does; V staged per warp in shared memory (rows padded by 16 bytes, so
//               ldmatrix's eight row addresses fall in distinct banks) and read with ldmatrix.trans.
// Batch invariance: an mma row depends on its own A row only, chunk boundaries depend on the key range's start
// (the request's own rows), and invisible keys contribute exact zeros; so a query's result is the same whatever
// tile, batch or neighbours it has (tests/unit/engine/test_attention_gpu.cu checks bits across plans).
#include <qprob/core/config.hpp>
#include <qprob/core/numeric.cuh>
#include <qprob/engine/kernels.cuh>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace qprob::engine::kernels {

inline constexpr int kMmaAttnWarps  = 4;   ///< tiles per block, one warp each
inline constexpr int kMmaAttnChunk  = 32;  ///< keys per step

/// Whether attention_mma_kernel serves head_dim for activation type Act (fp32 engines use the CUDA-core kernel).
template <class Act>
constexpr bool attention_mma_supported(int head_dim) noexcept {
  if constexpr (std::is_same_v<Act, half_t> || std::is_same_v<Act, bfloat16_t>) {
    return head_dim == 32 || head_dim == 64 || head_dim == 80 || head_dim == 96 || head_dim == 128;
  } else {
    return false;
  }
}

/// Dynamic shared memory of attention_mma_kernel<Act, D>: one V chunk per warp.
constexpr std::size_t attention_mma_smem_bytes(int head_dim) noexcept {
  return static_cast<std::size_t>(kMmaAttnWarps) * kMmaAttnChunk * static_cast<std::size_t>(head_dim + 8) * 2;
}

namespace mma_detail {

template <class Act>
QPROB_DEVICE QPROB_FORCEINLINE void mma(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
  if constexpr (std::is_same_v<Act, half_t>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

/// Two floats rounded to Act, `lo` in the low half (the lower column of a fragment pair).
template <class Act>
QPROB_DEVICE QPROB_FORCEINLINE std::uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<Act, half_t>) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const std::uint32_t*>(&h);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const std::uint32_t*>(&h);
  }
}

QPROB_DEVICE QPROB_FORCEINLINE void ldmatrix_x4_trans(std::uint32_t (&r)[4], const void* row_address) {
  const auto a = static_cast<std::uint32_t>(__cvta_generic_to_shared(row_address));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

}  // namespace mma_detail

/// Causal attention of tile blockIdx.x * kMmaAttnWarps + warp and head blockIdx.y on tensor cores (header
/// comment). D: head_dim, one of attention_mma_supported's.
template <class Act, int D>
__global__ void __launch_bounds__(kMmaAttnWarps * 32) attention_mma_kernel(attention_params<Act> p, int n_tiles) {
  static_assert(D % 16 == 0 && D <= 128, "attention_mma_kernel: head_dim must be a multiple of 16, at most 128");
  constexpr int KS  = D / 16;  // k-steps of q.k; x4 ldmatrix loads per 16 keys of V
  constexpr int NT  = D / 8;   // output n-tiles
  constexpr int LDV = D + 8;   // shared row stride of V, in elements
  constexpr int C   = kMmaAttnChunk;
  extern __shared__ __align__(16) unsigned char attention_mma_smem[];
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int tile_index = static_cast<int>(blockIdx.x) * kMmaAttnWarps + warp;
  if (tile_index >= n_tiles) {
    return;  // no block-wide synchronisation below: a warp without a tile may leave
  }
  std::uint16_t* vs         = reinterpret_cast<std::uint16_t*>(attention_mma_smem) + warp * C * LDV;
  const attention_tile tile = p.tiles[tile_index];
  const int head = static_cast<int>(blockIdx.y);
  const int kvh  = head / (p.q_heads / p.kv_heads);
  const int g = lane / 4, t = lane % 4;
  const auto* base = reinterpret_cast<const std::uint16_t*>(p.qkv);
  const std::int64_t k_col = static_cast<std::int64_t>(p.q_heads + kvh) * D;
  const std::int64_t v_col = static_cast<std::int64_t>(p.q_heads + p.kv_heads + kvh) * D;
  constexpr float kLog2e   = 1.4426950408889634f;
  const float scale_log2   = p.scale * kLog2e;
  const float slope_log2   = p.alibi == nullptr ? 0.0f : p.alibi[head] * kLog2e;

  // Queries: rows g and g + 8 of the tile; rows past q_count are zero and see no key.
  std::uint32_t qf[KS][4];
  int qpos[2];
  QPROB_UNROLL
  for (int r = 0; r < 2; ++r) {
    const int row = g + 8 * r;
    const bool live = row < tile.q_count;
    qpos[r] = live ? p.positions[tile.q_begin + row] : -1;
    const std::uint16_t* q = base + static_cast<std::int64_t>(tile.q_begin + (live ? row : 0)) * p.ld +
                             static_cast<std::int64_t>(head) * D + 4 * t;
    QPROB_UNROLL
    for (int ks = 0; ks < KS; ++ks) {
      const uint2 v = live ? *reinterpret_cast<const uint2*>(q + 16 * ks) : make_uint2(0u, 0u);
      qf[ks][r]     = v.x;
      qf[ks][r + 2] = v.y;
    }
  }
  float o[NT][4];
  QPROB_UNROLL
  for (int n = 0; n < NT; ++n) {
    o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  }
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

  for (int range = 0; range < 2; ++range) {
    const int k_begin = range == 0 ? tile.a_begin : tile.b_begin;
    const int k_count = range == 0 ? tile.a_count : tile.b_count;
    const int k_pos0  = range == 0 ? 0 : tile.b_pos0;
    for (int k0 = 0; k0 < k_count; k0 += C) {
      const int kn = min(C, k_count - k0);
      const std::uint16_t* rows = base + static_cast<std::int64_t>(k_begin + k0) * p.ld;
      __syncwarp();  // every lane is done reading the previous chunk's V
      QPROB_UNROLL
      for (int u = lane; u < C * (D / 8); u += 32) {
        const int key = u / (D / 8), c = u % (D / 8);
        const uint4 v = key < kn ? *reinterpret_cast<const uint4*>(rows + static_cast<std::int64_t>(key) * p.ld + v_col + 8 * c)
                                 : make_uint4(0u, 0u, 0u, 0u);  // zeros: 0 * garbage could be NaN
        *reinterpret_cast<uint4*>(vs + key * LDV + 8 * c) = v;
      }
      float s[C / 8][4];
      QPROB_UNROLL
      for (int n = 0; n < C / 8; ++n) {
        s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
        const int key = 8 * n + g;
        const std::uint16_t* kr = rows + static_cast<std::int64_t>(key < kn ? key : 0) * p.ld + k_col + 4 * t;
        QPROB_UNROLL
        for (int ks = 0; ks < KS; ++ks) {
          const uint2 kv = key < kn ? *reinterpret_cast<const uint2*>(kr + 16 * ks) : make_uint2(0u, 0u);
          mma_detail::mma<Act>(s[n], qf[ks], kv.x, kv.y);
        }
      }
      // Scores in the log2 domain with the causal / window / range mask; row maxima over the quad.
      float mx[2] = {-INFINITY, -INFINITY};
      QPROB_UNROLL
      for (int n = 0; n < C / 8; ++n) {
        QPROB_UNROLL
        for (int e = 0; e < 4; ++e) {
          const int r = e / 2, j = 8 * n + 2 * t + (e & 1);
          const int kp = k_pos0 + k0 + j;
          const bool visible = j < kn && kp <= qpos[r] && (p.window <= 0 || qpos[r] - p.window < kp);
          s[n][e] = visible ? fmaf(s[n][e], scale_log2, slope_log2 * static_cast<float>(kp)) : -INFINITY;
          mx[r] = fmaxf(mx[r], s[n][e]);
        }
      }
      float corr[2], sub[2];
      QPROB_UNROLL
      for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        const float m_new = fmaxf(m[r], mx[r]);
        if (m_new == -INFINITY) {  // nothing visible yet: the state stays (0, 0)
          corr[r] = 1.0f;
          sub[r]  = 0.0f;
        } else {
          corr[r] = exp2f(m[r] - m_new);  // exactly 1 when the chunk does not raise the max
          sub[r]  = m_new;
          m[r]    = m_new;
        }
      }
      QPROB_UNROLL
      for (int n = 0; n < C / 8; ++n) {
        QPROB_UNROLL
        for (int e = 0; e < 4; ++e) {
          s[n][e] = exp2f(s[n][e] - sub[e / 2]);  // -inf -> exactly 0
        }
      }
      QPROB_UNROLL
      for (int r = 0; r < 2; ++r) {
        float sum = 0.0f;
        QPROB_UNROLL
        for (int n = 0; n < C / 8; ++n) {
          sum += s[n][2 * r] + s[n][2 * r + 1];
        }
        l[r] = fmaf(l[r], corr[r], sum);
      }
      QPROB_UNROLL
      for (int n = 0; n < NT; ++n) {
        o[n][0] *= corr[0];
        o[n][1] *= corr[0];
        o[n][2] *= corr[1];
        o[n][3] *= corr[1];
      }
      __syncwarp();  // V of this chunk is in shared memory
      QPROB_UNROLL
      for (int i = 0; i < C / 16; ++i) {
        const std::uint32_t a[4] = {mma_detail::pack2<Act>(s[2 * i][0], s[2 * i][1]),
                                    mma_detail::pack2<Act>(s[2 * i][2], s[2 * i][3]),
                                    mma_detail::pack2<Act>(s[2 * i + 1][0], s[2 * i + 1][1]),
                                    mma_detail::pack2<Act>(s[2 * i + 1][2], s[2 * i + 1][3])};
        // Matrix lane / 8: keys 16i + 8 * (lane / 8 % 2) .., channels 16 dn + 8 * (lane / 16) ..
        const std::uint16_t* vrow = vs + (16 * i + 8 * ((lane / 8) % 2) + lane % 8) * LDV + 8 * (lane / 16);
        QPROB_UNROLL
        for (int dn = 0; dn < KS; ++dn) {
          std::uint32_t b[4];
          mma_detail::ldmatrix_x4_trans(b, vrow + 16 * dn);
          mma_detail::mma<Act>(o[2 * dn], a, b[0], b[1]);
          mma_detail::mma<Act>(o[2 * dn + 1], a, b[2], b[3]);
        }
      }
    }
  }
  const std::int64_t out_ld = static_cast<std::int64_t>(p.q_heads) * D;
  QPROB_UNROLL
  for (int r = 0; r < 2; ++r) {
    float sum = l[r] + __shfl_xor_sync(0xffffffffu, l[r], 1);
    sum       = sum + __shfl_xor_sync(0xffffffffu, sum, 2);
    const int row = g + 8 * r;
    if (row < tile.q_count) {
      const float inv = 1.0f / sum;  // > 0: a query always sees itself
      auto* out = reinterpret_cast<std::uint32_t*>(p.out + static_cast<std::int64_t>(tile.q_begin + row) * out_ld +
                                                   static_cast<std::int64_t>(head) * D + 2 * t);
      QPROB_UNROLL
      for (int n = 0; n < NT; ++n) {
        out[4 * n] = mma_detail::pack2<Act>(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
      }
    }
  }
}

/// Which attention kernel launch_attention runs.
enum class attention_path : std::uint8_t { tensor_core, cuda_core };

/// The path launch_attention takes for this head_dim when tensor cores are allowed.
template <class Act>
constexpr attention_path attention_path_for(int head_dim, bool allow_tensor_cores) noexcept {
  return allow_tensor_cores && attention_mma_supported<Act>(head_dim) ? attention_path::tensor_core : attention_path::cuda_core;
}

/// Runs causal attention over `n_tiles` tiles and every query head on `stream`: the tensor-core kernel where
/// attention_path_for allows it, else the CUDA-core kernel (DPL output channels per lane). Returns the path.
template <class Act, int DPL>
attention_path launch_attention(const attention_params<Act>& p, int n_tiles, bool allow_tensor_cores, cudaStream_t stream) {
  const auto path = attention_path_for<Act>(p.head_dim, allow_tensor_cores);
  if (n_tiles == 0) {
    return path;
  }
  if (path == attention_path::cuda_core) {
    const dim3 grid(static_cast<unsigned>(n_tiles), static_cast<unsigned>(p.q_heads));
    attention_kernel<Act, DPL><<<grid, kAttnThreads, attention_smem_bytes(p.head_dim), stream>>>(p);
    return path;
  }
  if constexpr (std::is_same_v<Act, half_t> || std::is_same_v<Act, bfloat16_t>) {
    const dim3 grid(static_cast<unsigned>((n_tiles + kMmaAttnWarps - 1) / kMmaAttnWarps), static_cast<unsigned>(p.q_heads));
    const auto smem = attention_mma_smem_bytes(p.head_dim);
    const auto go   = [&](auto kernel) { kernel<<<grid, kMmaAttnWarps * 32, smem, stream>>>(p, n_tiles); };
    switch (p.head_dim) {
      case 32: go(attention_mma_kernel<Act, 32>); break;
      case 64: go(attention_mma_kernel<Act, 64>); break;
      case 80: go(attention_mma_kernel<Act, 80>); break;
      case 96: go(attention_mma_kernel<Act, 96>); break;
      default: go(attention_mma_kernel<Act, 128>); break;
    }
  }
  return path;
}

}  // namespace qprob::engine::kernels
