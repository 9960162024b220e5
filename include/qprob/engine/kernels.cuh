// SPDX-License-Identifier: Apache-2.0
#pragma once
// The element-wise, normalisation, attention and vocabulary kernels of the GPU forward pass (engine.cuh puts
// them between cuBLAS GEMMs). Conventions shared by all of them:
//   * the residual stream x is float32, [rows, hidden]; GEMM inputs are the activation type Act (half_t or
//     bfloat16_t); every reduction accumulates in float32;
//   * one block per row for row-wise kernels, with block-wide reductions in a fixed order: a row's result
//     never depends on how many rows the launch has or where the row sits (batch invariance, plan.hpp);
//   * `ld` arguments are row strides in elements.
// Each kernel has a double-precision counterpart in reference/forward.hpp, which the GPU tests compare with.
#include <qprob/core/config.hpp>
#include <qprob/core/math.hpp>
#include <qprob/core/numeric.cuh>
#include <qprob/engine/plan.hpp>
#include <qprob/model/config.hpp>

#include <cub/block/block_reduce.cuh>

#include <cuda_runtime.h>

#include <climits>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace qprob::engine::kernels {

inline constexpr int kRowThreads   = 256;  ///< threads of the row-wise kernels
inline constexpr int kTileRows     = 16;   ///< query rows of an attention tile (plan_options::tile_rows)
inline constexpr int kKeyTile      = 32;   ///< keys staged in shared memory at a time (one per lane)
inline constexpr int kAttnThreads  = 128;  ///< 4 warps, kTileRows / 4 queries each

/// How the MLP activation is computed; mirrors reference::activate, including the truncated constants of
/// BLOOM's bloom_gelu and gelu_fast.
enum class act_code : int { silu, relu, gelu_erf, gelu_tanh, gelu_bloom, gelu_fast };

inline act_code activation_code(model::activation a, std::string_view name) noexcept {
  switch (a) {
    case model::activation::silu: return act_code::silu;
    case model::activation::relu: return act_code::relu;
    case model::activation::gelu_erf: return act_code::gelu_erf;
    case model::activation::gelu_tanh:
      return name == "bloom_gelu" ? act_code::gelu_bloom : name == "gelu_fast" ? act_code::gelu_fast : act_code::gelu_tanh;
  }
  return act_code::silu;
}

QPROB_DEVICE QPROB_FORCEINLINE float activate(act_code a, float x) {
  switch (a) {
    case act_code::silu: return x / (1.0f + expf(-x));
    case act_code::relu: return x > 0.0f ? x : 0.0f;
    case act_code::gelu_erf: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case act_code::gelu_tanh: return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    case act_code::gelu_bloom: return x * 0.5f * (1.0f + tanhf(0.79788456f * x * (1.0f + 0.044715f * x * x)));
    case act_code::gelu_fast: return 0.5f * x * (1.0f + tanhf(x * 0.7978845608f * (1.0f + 0.044715f * x * x)));
  }
  return x;
}

template <class T>
QPROB_DEVICE QPROB_FORCEINLINE float load_f(const T* p) {
  return qprob::detail::to_float_device(*p);
}

/// Warp-wide max / sum by butterfly shuffles: a fixed order, the same result in every lane.
QPROB_DEVICE QPROB_FORCEINLINE float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  }
  return v;
}
QPROB_DEVICE QPROB_FORCEINLINE float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) {
    v += __shfl_xor_sync(0xffffffffu, v, o);
  }
  return v;
}

// ---- embeddings ----------------------------------------------------------------------------------------------

/// out[r, :] = table[tokens[r], :] (+ positions_table[positions[r] + offset, :] when positions_table is set),
/// width `width`. OutT is float (the residual stream) or Act (input of OPT-350m's project_in).
template <class Act, class OutT>
__global__ void __launch_bounds__(kRowThreads) embed_kernel(const Act* __restrict__ table, const token_id* __restrict__ tokens,
                                                            const Act* __restrict__ positions_table,
                                                            const std::int32_t* __restrict__ positions, std::int64_t offset,
                                                            std::int64_t width, OutT* __restrict__ out) {
  const std::int64_t r = blockIdx.x;
  const Act* src       = table + static_cast<std::int64_t>(tokens[r]) * width;
  const Act* pos       = positions_table == nullptr ? nullptr : positions_table + (positions[r] + offset) * width;
  for (std::int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    float v = load_f(src + i);
    if (pos != nullptr) {
      v += load_f(pos + i);
    }
    if constexpr (std::is_same_v<OutT, float>) {
      out[r * width + i] = v;
    } else {
      out[r * width + i] = qprob::detail::from_float_device<OutT>(v);
    }
  }
}

/// x[r, :] += positions_table[positions[r] + offset, :] (OPT-350m adds positions after project_in).
template <class Act>
__global__ void __launch_bounds__(kRowThreads) add_positions_kernel(const Act* __restrict__ positions_table,
                                                                    const std::int32_t* __restrict__ positions,
                                                                    std::int64_t offset, std::int64_t width, float* __restrict__ x) {
  const std::int64_t r = blockIdx.x;
  const Act* pos       = positions_table + (positions[r] + offset) * width;
  for (std::int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    x[r * width + i] += load_f(pos + i);
  }
}

// ---- normalisation ------------------------------------------------------------------------------------------

enum class norm_code : int { rms, layer, identity };

inline constexpr int kNormVecChunks = 8;  ///< float4 chunks per thread kept in registers: rows up to 8192 wide

/// Stores four floats rounded to T as one vector (8 bytes for 16-bit T, 16 for float); p is aligned to it.
template <class T>
QPROB_DEVICE QPROB_FORCEINLINE void store4(T* p, float4 v) {
  using vec_t = std::conditional_t<sizeof(T) == 2, uint2, uint4>;
  static_assert(sizeof(T) * 4 == sizeof(vec_t));
  alignas(sizeof(vec_t)) T o[4] = {qprob::detail::from_float_device<T>(v.x), qprob::detail::from_float_device<T>(v.y),
                                   qprob::detail::from_float_device<T>(v.z), qprob::detail::from_float_device<T>(v.w)};
  *reinterpret_cast<vec_t*>(p) = *reinterpret_cast<const vec_t*>(o);
}

/// y = normalised x: LayerNorm (x - mean) * inv * w + b, RMSNorm w * (x * inv), identity x.
QPROB_DEVICE QPROB_FORCEINLINE float norm_one(norm_code code, float x, float mean, float inv, float w, float b) {
  return code == norm_code::layer ? (x - mean) * inv * w + b : code == norm_code::rms ? w * (x * inv) : x;
}

/// Normalises row r of x (float32, width n) with weight w / bias b (float32; b may be null) and writes the
/// result rounded to Act into out_act (row stride n) and, when out_f32 is set, in float32 into out_f32 (may be
/// x itself). rows_map, when set, reads row rows_map[r] of x instead of r (gathering the rows the LM head
/// needs). identity only converts.
///
/// Rows whose width is a multiple of 4 (up to 4 * kRowThreads * kNormVecChunks) with aligned pointers are read
/// once with 16-byte loads into registers (thread t holds float4 chunks t, t + kRowThreads, ...) and written
/// with 8/16-byte stores; other rows take the element loop. Either way a row's result depends only on the row
/// (fixed per-thread order, cub's fixed block tree): batch invariance holds.
template <class Act>
__global__ void __launch_bounds__(kRowThreads) norm_kernel(const float* __restrict__ x, const std::int32_t* __restrict__ rows_map,
                                                           std::int64_t n, norm_code code, const float* __restrict__ w,
                                                           const float* __restrict__ b, float eps, Act* __restrict__ out_act,
                                                           float* out_f32) {
  using reduce = cub::BlockReduce<float, kRowThreads>;
  __shared__ typename reduce::TempStorage tmp;
  __shared__ float shared_stat[2];
  const std::int64_t r   = blockIdx.x;
  const std::int64_t src = rows_map == nullptr ? r : rows_map[r];
  const float* row       = x + src * n;
  const auto fn         = static_cast<float>(n);
  // The block-wide sum of v, broadcast to every thread (slot: which shared_stat entry).
  const auto block_sum = [&](float v, int slot) {
    v = reduce(tmp).Sum(v);
    if (threadIdx.x == 0) {
      shared_stat[slot] = v;
    }
    __syncthreads();
    return shared_stat[slot];
  };
  const bool vectorised = n % 4 == 0 && n <= 4LL * kRowThreads * kNormVecChunks && is_aligned(x, 16) &&
                          is_aligned(out_act, 4 * sizeof(Act)) && (out_f32 == nullptr || is_aligned(out_f32, 16)) &&
                          (w == nullptr || is_aligned(w, 16)) && (b == nullptr || is_aligned(b, 16));
  if (vectorised) {
    const int n4 = static_cast<int>(n / 4);
    float4 v[kNormVecChunks];
    QPROB_UNROLL
    for (int c = 0; c < kNormVecChunks; ++c) {
      const int i = static_cast<int>(threadIdx.x) + c * kRowThreads;
      v[c]        = i < n4 ? reinterpret_cast<const float4*>(row)[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    float mean = 0.0f, inv = 1.0f;
    if (code == norm_code::layer) {
      float s = 0.0f;
      QPROB_UNROLL
      for (int c = 0; c < kNormVecChunks; ++c) {
        s += (v[c].x + v[c].y) + (v[c].z + v[c].w);  // padding chunks are zero
      }
      mean    = block_sum(s, 0) / fn;
      float q = 0.0f;
      QPROB_UNROLL
      for (int c = 0; c < kNormVecChunks; ++c) {
        if (static_cast<int>(threadIdx.x) + c * kRowThreads < n4) {
          const float4 d = make_float4(v[c].x - mean, v[c].y - mean, v[c].z - mean, v[c].w - mean);
          q += (d.x * d.x + d.y * d.y) + (d.z * d.z + d.w * d.w);
        }
      }
      inv = rsqrtf(block_sum(q, 1) / fn + eps);
    } else if (code == norm_code::rms) {
      float q = 0.0f;
      QPROB_UNROLL
      for (int c = 0; c < kNormVecChunks; ++c) {
        q += (v[c].x * v[c].x + v[c].y * v[c].y) + (v[c].z * v[c].z + v[c].w * v[c].w);
      }
      inv = rsqrtf(block_sum(q, 1) / fn + eps);
    }
    QPROB_UNROLL
    for (int c = 0; c < kNormVecChunks; ++c) {
      const int i = static_cast<int>(threadIdx.x) + c * kRowThreads;
      if (i >= n4) {
        break;
      }
      const float4 wv = w == nullptr ? make_float4(1.0f, 1.0f, 1.0f, 1.0f) : reinterpret_cast<const float4*>(w)[i];
      const float4 bv = b == nullptr ? make_float4(0.0f, 0.0f, 0.0f, 0.0f) : reinterpret_cast<const float4*>(b)[i];
      const float4 y  = make_float4(norm_one(code, v[c].x, mean, inv, wv.x, bv.x), norm_one(code, v[c].y, mean, inv, wv.y, bv.y),
                                    norm_one(code, v[c].z, mean, inv, wv.z, bv.z), norm_one(code, v[c].w, mean, inv, wv.w, bv.w));
      store4(out_act + r * n + 4 * i, y);
      if (out_f32 != nullptr) {
        reinterpret_cast<float4*>(out_f32 + r * n)[i] = y;
      }
    }
    return;
  }
  float mean = 0.0f, inv = 1.0f;
  if (code == norm_code::layer) {
    float s = 0.0f;
    for (std::int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      s += row[i];
    }
    mean    = block_sum(s, 0) / fn;
    float q = 0.0f;
    for (std::int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const float d = row[i] - mean;
      q += d * d;
    }
    inv = rsqrtf(block_sum(q, 1) / fn + eps);
  } else if (code == norm_code::rms) {
    float q = 0.0f;
    for (std::int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      q += row[i] * row[i];
    }
    inv = rsqrtf(block_sum(q, 1) / fn + eps);
  }
  // out_f32 may be x itself: each thread writes only the elements it reads.
  for (std::int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float y = norm_one(code, row[i], mean, inv, w == nullptr ? 1.0f : w[i], b == nullptr ? 0.0f : b[i]);
    out_act[r * n + i] = qprob::detail::from_float_device<Act>(y);
    if (out_f32 != nullptr) {
      out_f32[r * n + i] = y;
    }
  }
}

// ---- residual --------------------------------------------------------------------------------------------------

/// x[r, i] = (y1[r, i] + b1[i]) [+ (y2[r, i] + b2[i])] + base[r, i], base = x or, for BLOOM's
/// apply_residual_connection_post_layernorm, the normalised input h (Act). Biases and y2 may be null.
template <class Act>
__global__ void __launch_bounds__(kRowThreads) residual_kernel(float* __restrict__ x, const float* __restrict__ y1,
                                                               const float* __restrict__ b1, const float* __restrict__ y2,
                                                               const float* __restrict__ b2, const Act* __restrict__ h_base,
                                                               std::int64_t n) {
  const std::int64_t r = blockIdx.x;
  for (std::int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const std::int64_t k = r * n + i;
    float v              = y1[k] + (b1 == nullptr ? 0.0f : b1[i]);
    if (y2 != nullptr) {
      v = v + (y2[k] + (b2 == nullptr ? 0.0f : b2[i]));
    }
    x[k] = v + (h_base == nullptr ? x[k] : load_f(h_base + k));
  }
}

// ---- q, k, v: bias and rotary -----------------------------------------------------------------------------------

/// Phi's optional per-head LayerNorm of q and k (qk_layernorm): weights and biases of width head_dim.
struct head_norms {
  const float* q_w = nullptr;
  const float* q_b = nullptr;
  const float* k_w = nullptr;
  const float* k_b = nullptr;
  float eps        = 0.0f;
};

/// In place on one row of the fused q|k|v projection output ([rows, qd + 2 kvd], Act): adds the bias (float32,
/// may be null), applies Phi's per-head q/k LayerNorm when `norms.q_w` is set (one warp per head), then rotates
/// the first rotary_dim channels of every q and k head (GPT-NeoX pairing i <-> i + rotary_dim / 2) by
/// position * inv_freq[i] (inv_freq null: no rotary).
template <class Act>
__global__ void __launch_bounds__(kRowThreads) qkv_kernel(Act* __restrict__ qkv, std::int64_t width, const float* __restrict__ bias,
                                                          const std::int32_t* __restrict__ positions, const float* __restrict__ inv_freq,
                                                          int half_rotary, int head_dim, int q_heads, int kv_heads,
                                                          head_norms norms) {
  const std::int64_t r = blockIdx.x;
  Act* row             = qkv + r * width;
  if (bias != nullptr) {
    for (std::int64_t i = threadIdx.x; i < width; i += blockDim.x) {
      row[i] = qprob::detail::from_float_device<Act>(load_f(row + i) + bias[i]);
    }
    __syncthreads();
  }
  if (norms.q_w != nullptr) {
    const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
    for (int h = warp; h < q_heads + kv_heads; h += kRowThreads / 32) {
      Act* head      = row + static_cast<std::int64_t>(h) * head_dim;
      const bool isq = h < q_heads;
      float s        = 0.0f;
      for (int i = lane; i < head_dim; i += 32) {
        s += load_f(head + i);
      }
      const float mean = warp_sum(s) / static_cast<float>(head_dim);
      float v          = 0.0f;
      for (int i = lane; i < head_dim; i += 32) {
        const float d = load_f(head + i) - mean;
        v += d * d;
      }
      const float inv = rsqrtf(warp_sum(v) / static_cast<float>(head_dim) + norms.eps);
      const float* w  = isq ? norms.q_w : norms.k_w;
      const float* b  = isq ? norms.q_b : norms.k_b;
      for (int i = lane; i < head_dim; i += 32) {
        const float y = (load_f(head + i) - mean) * inv * w[i] + (b == nullptr ? 0.0f : b[i]);
        head[i]       = qprob::detail::from_float_device<Act>(y);
      }
    }
    __syncthreads();
  }
  if (inv_freq == nullptr) {
    return;
  }
  const float pos = static_cast<float>(positions[r]);
  const int heads = q_heads + kv_heads;  // q heads, then k heads (v is not rotated); k heads follow q directly
  // Rotates pairs (i, i + half_rotary) of head h, V consecutive i at a time. The angle depends only on i, so a
  // thread keeps the sin/cos of its last i: with a block size that is a multiple of half_rotary / V (the
  // common case) each thread evaluates them once per row instead of once per head.
  const auto rotate = [&](auto vec_tag) {
    constexpr int V = decltype(vec_tag)::value;
    using vec_t     = std::conditional_t<V == 1, Act, std::conditional_t<sizeof(Act) == 2, unsigned, uint2>>;
    const int per_head = half_rotary / V;
    int last           = -1;
    float sn[V], cs[V];
    for (int idx = threadIdx.x; idx < heads * per_head; idx += blockDim.x) {
      const int h = idx / per_head, i0 = (idx % per_head) * V;
      if (i0 != last) {
        QPROB_UNROLL
        for (int j = 0; j < V; ++j) {
          sincosf(pos * inv_freq[i0 + j], &sn[j], &cs[j]);
        }
        last = i0;
      }
      Act* head = row + static_cast<std::int64_t>(h) * head_dim;
      alignas(sizeof(vec_t)) Act a[V], c[V];
      *reinterpret_cast<vec_t*>(a) = *reinterpret_cast<const vec_t*>(head + i0);
      *reinterpret_cast<vec_t*>(c) = *reinterpret_cast<const vec_t*>(head + i0 + half_rotary);
      QPROB_UNROLL
      for (int j = 0; j < V; ++j) {
        const float x1 = load_f(a + j), x2 = load_f(c + j);
        a[j]           = qprob::detail::from_float_device<Act>(x1 * cs[j] - x2 * sn[j]);
        c[j]           = qprob::detail::from_float_device<Act>(x2 * cs[j] + x1 * sn[j]);
      }
      *reinterpret_cast<vec_t*>(head + i0)               = *reinterpret_cast<const vec_t*>(a);
      *reinterpret_cast<vec_t*>(head + i0 + half_rotary) = *reinterpret_cast<const vec_t*>(c);
    }
  };
  // Pairs of elements need 2-element alignment of the row, the heads and the rotated halves.
  const bool pairs = half_rotary % 2 == 0 && head_dim % 2 == 0 && width % 2 == 0 && is_aligned(qkv, 2 * sizeof(Act));
  if (pairs) {
    rotate(std::integral_constant<int, 2>{});
  } else {
    rotate(std::integral_constant<int, 1>{});
  }
}

// ---- attention -----------------------------------------------------------------------------------------------

template <class Act>
struct attention_params {
  const Act* qkv = nullptr;           ///< [rows, ld]: q heads, k heads, v heads
  std::int64_t ld = 0;
  Act* out = nullptr;                 ///< [rows, q_heads * head_dim]
  const attention_tile* tiles = nullptr;
  const std::int32_t* positions = nullptr;
  const float* alibi = nullptr;       ///< per-head slopes, or null
  int head_dim = 0, q_heads = 0, kv_heads = 0;
  std::int64_t window = 0;            ///< sliding window (0: none)
  float scale = 1.0f;
};

/// Shared memory of attention_kernel for one head dimension.
constexpr std::size_t attention_smem_bytes(int head_dim) noexcept {
  return sizeof(float) * static_cast<std::size_t>(kTileRows * head_dim + kKeyTile * (head_dim + 1) + kKeyTile * head_dim);
}

/// Causal attention of one query tile (blockIdx.x) and one head (blockIdx.y). Keys are staged kKeyTile at a
/// time in shared memory as float; lane j scores key j; each warp keeps an online softmax for its queries.
/// A query processes its key tiles in the same order whatever tile it belongs to, and tiles whose keys are
/// all invisible to it leave its state untouched, so its result depends on its own request only.
/// DPL: output channels per lane (head_dim <= 32 * DPL).
template <class Act, int DPL>
__global__ void __launch_bounds__(kAttnThreads) attention_kernel(attention_params<Act> p) {
  constexpr int kQueriesPerWarp = kTileRows / (kAttnThreads / 32);
  extern __shared__ float smem[];
  const attention_tile tile = p.tiles[blockIdx.x];
  const int head = blockIdx.y;
  const int kvh  = head / (p.q_heads / p.kv_heads);
  const int D    = p.head_dim;
  float* qs      = smem;                        // [kTileRows][D]
  float* ks      = qs + kTileRows * D;          // [kKeyTile][D + 1] (odd stride: lane j reads row j conflict-free)
  float* vs      = ks + kKeyTile * (D + 1);     // [kKeyTile][D]
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const std::int64_t k_col = static_cast<std::int64_t>(p.q_heads) * D + static_cast<std::int64_t>(kvh) * D;
  const std::int64_t v_col = static_cast<std::int64_t>(p.q_heads + p.kv_heads) * D + static_cast<std::int64_t>(kvh) * D;

  for (int idx = threadIdx.x; idx < tile.q_count * D; idx += blockDim.x) {
    const int qi = idx / D, d = idx % D;
    qs[qi * D + d] = load_f(p.qkv + static_cast<std::int64_t>(tile.q_begin + qi) * p.ld + static_cast<std::int64_t>(head) * D + d);
  }
  float m[kQueriesPerWarp], l[kQueriesPerWarp], acc[kQueriesPerWarp][DPL];
  int qpos[kQueriesPerWarp];
  for (int j = 0; j < kQueriesPerWarp; ++j) {
    m[j] = -INFINITY;
    l[j] = 0.0f;
    for (int c = 0; c < DPL; ++c) {
      acc[j][c] = 0.0f;
    }
    const int qi = warp * kQueriesPerWarp + j;
    qpos[j]      = qi < tile.q_count ? p.positions[tile.q_begin + qi] : -1;
  }
  const float slope = p.alibi == nullptr ? 0.0f : p.alibi[head];

  for (int range = 0; range < 2; ++range) {
    const int k_begin = range == 0 ? tile.a_begin : tile.b_begin;
    const int k_count = range == 0 ? tile.a_count : tile.b_count;
    const int k_pos0  = range == 0 ? 0 : tile.b_pos0;
    for (int k0 = 0; k0 < k_count; k0 += kKeyTile) {
      const int kn = min(kKeyTile, k_count - k0);
      __syncthreads();  // the previous tile (or the query load) is done
      for (int idx = threadIdx.x; idx < kn * D; idx += blockDim.x) {
        const int key = idx / D, d = idx % D;
        const Act* row = p.qkv + static_cast<std::int64_t>(k_begin + k0 + key) * p.ld;
        ks[key * (D + 1) + d] = load_f(row + k_col + d);
        vs[key * D + d]       = load_f(row + v_col + d);
      }
      __syncthreads();
      for (int j = 0; j < kQueriesPerWarp; ++j) {
        const int qi = warp * kQueriesPerWarp + j;
        if (qi >= tile.q_count) {
          break;  // uniform across the warp
        }
        float s      = -INFINITY;
        const int kp = k_pos0 + k0 + lane;
        if (lane < kn && kp <= qpos[j] && (p.window <= 0 || qpos[j] - p.window < kp)) {
          float dot = 0.0f;
          for (int d = 0; d < D; ++d) {
            dot = fmaf(qs[qi * D + d], ks[lane * (D + 1) + d], dot);
          }
          s = dot * p.scale;
          if (p.alibi != nullptr) {
            s = slope * static_cast<float>(kp) + s;
          }
        }
        const float tile_max = warp_max(s);
        if (tile_max == -INFINITY) {
          continue;  // no visible key in this tile: the state is left exactly as it was
        }
        const float m_new = fmaxf(m[j], tile_max);
        const float corr  = expf(m[j] - m_new);
        const float pj    = s == -INFINITY ? 0.0f : expf(s - m_new);
        l[j]              = l[j] * corr + warp_sum(pj);
        for (int c = 0; c < DPL; ++c) {
          acc[j][c] *= corr;
        }
        for (int key = 0; key < kn; ++key) {
          const float pk = __shfl_sync(0xffffffffu, pj, key);
          for (int c = 0; c < DPL; ++c) {
            const int d = lane + 32 * c;
            if (d < D) {
              acc[j][c] = fmaf(pk, vs[key * D + d], acc[j][c]);
            }
          }
        }
        m[j] = m_new;
      }
    }
  }
  const std::int64_t out_ld = static_cast<std::int64_t>(p.q_heads) * D;
  for (int j = 0; j < kQueriesPerWarp; ++j) {
    const int qi = warp * kQueriesPerWarp + j;
    if (qi >= tile.q_count) {
      break;
    }
    const float inv_l = 1.0f / l[j];  // l > 0: a query always sees itself
    for (int c = 0; c < DPL; ++c) {
      const int d = lane + 32 * c;
      if (d < D) {
        p.out[static_cast<std::int64_t>(tile.q_begin + qi) * out_ld + static_cast<std::int64_t>(head) * D + d] =
            qprob::detail::from_float_device<Act>(acc[j][c] * inv_l);
      }
    }
  }
}

// ---- MLP ---------------------------------------------------------------------------------------------------------

/// One element of mlp_act_kernel: act(g + b[i]) [* (up + b[n + i])].
template <class Act>
QPROB_DEVICE QPROB_FORCEINLINE Act mlp_act_one(float g, float up, const float* __restrict__ b, std::int64_t n, std::int64_t i,
                                               bool gated, act_code code) {
  float y = activate(code, g + (b == nullptr ? 0.0f : b[i]));
  if (gated) {
    y = y * (up + (b == nullptr ? 0.0f : b[n + i]));
  }
  return qprob::detail::from_float_device<Act>(y);
}

/// out[r, i] = act(u[r, i] + b[i]) (plain) or act(u[r, i] + b[i]) * (u[r, n + i] + b[n + i]) (gated: u holds
/// gate | up), i < n. u has row stride (gated ? 2n : n); b may be null. When n is a multiple of the elements in
/// 16 bytes, each thread moves 16-byte vectors (the same per-element arithmetic, so the same bits).
template <class Act>
__global__ void __launch_bounds__(kRowThreads) mlp_act_kernel(const Act* __restrict__ u, const float* __restrict__ b,
                                                              std::int64_t n, bool gated, act_code code, Act* __restrict__ out) {
  const std::int64_t r  = blockIdx.x;
  const std::int64_t ld = gated ? 2 * n : n;
  const Act* row        = u + r * ld;
  constexpr int V       = 16 / static_cast<int>(sizeof(Act));
  if (n % V == 0) {
    for (std::int64_t i0 = static_cast<std::int64_t>(threadIdx.x) * V; i0 < n; i0 += static_cast<std::int64_t>(blockDim.x) * V) {
      alignas(16) Act g[V], up[V], y[V];
      *reinterpret_cast<uint4*>(g) = *reinterpret_cast<const uint4*>(row + i0);
      if (gated) {
        *reinterpret_cast<uint4*>(up) = *reinterpret_cast<const uint4*>(row + n + i0);
      }
      QPROB_UNROLL
      for (int j = 0; j < V; ++j) {
        y[j] = mlp_act_one<Act>(load_f(g + j), gated ? load_f(up + j) : 0.0f, b, n, i0 + j, gated, code);
      }
      *reinterpret_cast<uint4*>(out + r * n + i0) = *reinterpret_cast<const uint4*>(y);
    }
    return;
  }
  for (std::int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    out[r * n + i] = mlp_act_one<Act>(load_f(row + i), gated ? load_f(row + n + i) : 0.0f, b, n, i, gated, code);
  }
}

// ---- vocabulary ----------------------------------------------------------------------------------------------

/// Per row of the LM head output.
struct row_stats {
  float lse     = 0.0f;  ///< log sum exp of the row
  float max     = 0.0f;
  float entropy = 0.0f;  ///< of the softmax, nats
  std::int32_t argmax = 0;  ///< first index on ties
};

struct max_arg {
  float v;
  std::int32_t i;
};
struct max_arg_op {
  QPROB_DEVICE max_arg operator()(const max_arg& a, const max_arg& b) const {
    return (b.v > a.v || (b.v == a.v && b.i < a.i)) ? b : a;
  }
};

/// Adds the LM head bias (may be null) to row r of logits ([rows, vocab], float32) in place and computes its
/// row_stats with float32 accumulation in a fixed order.
__global__ void __launch_bounds__(kRowThreads) vocab_stats_kernel(float* __restrict__ logits, std::int64_t vocab,
                                                                  const float* __restrict__ bias, row_stats* __restrict__ out) {
  using reduce_f = cub::BlockReduce<float, kRowThreads>;
  using reduce_m = cub::BlockReduce<max_arg, kRowThreads>;
  __shared__ union {
    typename reduce_f::TempStorage f;
    typename reduce_m::TempStorage m;
  } tmp;
  __shared__ max_arg best_shared;
  __shared__ float sum_shared;
  float* row = logits + static_cast<std::int64_t>(blockIdx.x) * vocab;
  max_arg best{-INFINITY, INT32_MAX};
  for (std::int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    float v = row[i];
    if (bias != nullptr) {
      v      = v + bias[i];
      row[i] = v;
    }
    if (v > best.v) {
      best = {v, static_cast<std::int32_t>(i)};
    }
  }
  best = reduce_m(tmp.m).Reduce(best, max_arg_op{});
  if (threadIdx.x == 0) {
    best_shared = best;
  }
  __syncthreads();
  const float mx = best_shared.v;
  float s = 0.0f, t = 0.0f;
  for (std::int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float d = row[i] - mx;
    const float e = expf(d);
    s += e;
    t += e * d;
  }
  s = reduce_f(tmp.f).Sum(s);
  if (threadIdx.x == 0) {
    sum_shared = s;
  }
  __syncthreads();
  s = sum_shared;
  t = reduce_f(tmp.f).Sum(t);
  if (threadIdx.x == 0) {
    const float log_s = logf(s);
    out[blockIdx.x]   = {mx + log_s, mx, log_s - t / s, best_shared.i};
  }
}

/// logprob[k] = logits[row[k], target[k]] - lse[row[k]] and greedy[k] = (argmax == target) for each scored
/// token k of a chunk (rows local to the chunk).
__global__ void gather_targets_kernel(const float* __restrict__ logits, std::int64_t vocab, const row_stats* __restrict__ stats,
                                      const std::int32_t* __restrict__ rows, const token_id* __restrict__ targets,
                                      std::int64_t count, float* __restrict__ logprob, std::uint8_t* __restrict__ greedy) {
  const std::int64_t k = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (k >= count) {
    return;
  }
  const auto r = rows[k];
  const auto t = targets[k];
  logprob[k]   = logits[static_cast<std::int64_t>(r) * vocab + t] - stats[r].lse;
  greedy[k]    = stats[r].argmax == t ? 1 : 0;
}

// ---- random weights (benchmarks) ---------------------------------------------------------------------------------

/// w[i] = scale * u, u uniform in [-sqrt(3), sqrt(3)) (unit variance) from a counter-based hash of (seed, i).
template <class T>
__global__ void fill_random_kernel(T* __restrict__ w, std::int64_t n, std::uint64_t seed, float scale, float offset) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::uint64_t z = seed + 0x9E3779B97F4A7C15ull * static_cast<std::uint64_t>(i + 1);
    z               = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z               = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z               = z ^ (z >> 31);
    const float u   = (static_cast<float>(z >> 40) * (1.0f / 16777216.0f)) * 2.0f - 1.0f;
    const float v   = offset + scale * 1.7320508f * u;
    if constexpr (std::is_same_v<T, float>) {
      w[i] = v;
    } else {
      w[i] = qprob::detail::from_float_device<T>(v);
    }
  }
}

}  // namespace qprob::engine::kernels
