// SPDX-License-Identifier: Apache-2.0
#pragma once
// Device building blocks, kernels and noexcept launchers of the per-model metrics (metrics layer, nvcc):
//
//  * sample_pass: one fused pass over the inputs (one thread per sample, persistent grid). It validates each
//    sample, evaluates it with the same evaluate_sample as the host reference, and accumulates every moment
//    sum, the counts, and the first 16 equal-width calibration bins into per-thread registers; each block
//    writes its partials (field-major), which reduce_partials sums in a fixed order. Optionally it writes one
//    compact 8-byte key per sample: the bits of conf with the correctness flag in the sign bit.
//  * class_keys: for Nixon ACE, per class k the probability p_ik of every sample in the same compact form
//    (flag = gold is k), class-major; samples without a choice k get the sentinel key ~0.
//  * radix selection of equal-mass range boundaries over those keys (select_*): per boundary, the element at
//    sorted position np.array_split-start(r) of the stable order (value, then sample index), found digit by
//    digit (8-bit digits of the 96-bit composite key value.index) with integer histograms; it stops as soon as
//    the boundary is the smallest element of its prefix group, so the boundary is a prefix threshold.
//  * group sums: per range (equal-mass) or per equal-width bin, count / sum of values / sum of flags, 16 slots
//    per launch in registers, block partials, fixed-order reduction.
//
// Determinism: floating-point values are only ever summed by one thread in a fixed sequence, by
// cub::BlockReduce, or by reduce_partials_kernel's fixed tree; integer counts use atomics (exact). The grid
// depends only on n and the device's SM count, so results are run-to-run identical on one GPU.

#include <qprob/core/config.hpp>
#include <qprob/core/cuda_check.hpp>
#include <qprob/core/launch.hpp>
#include <qprob/metrics/reference.hpp>
#include <qprob/metrics/sample.hpp>
#include <qprob/metrics/types.hpp>

#include <cub/block/block_reduce.cuh>

#include <cuda_runtime_api.h>

#include <cstdint>

namespace qprob::metrics {

/// Device pointers of one model's scores on one task (layout as choice_scores_view). char_len / token_len
/// may be null when the scoring and acc_norm do not need them.
struct device_choice_scores {
  const std::int64_t* offsets = nullptr;  ///< n + 1
  const double* loglik = nullptr;         ///< offsets[n]
  const std::int32_t* char_len = nullptr;
  const std::int32_t* token_len = nullptr;
  const std::int32_t* gold = nullptr;     ///< n
  std::int64_t n = 0;
  std::int64_t total = 0;                 ///< offsets[n]
};

namespace detail {

using key_t = unsigned long long;
inline constexpr key_t key_flag     = 1ull << 63;  ///< correctness / gold-is-k flag in the sign bit
inline constexpr key_t key_value    = ~key_flag;   ///< bits of the non-negative double value
inline constexpr key_t key_sentinel = ~0ull;       ///< "no element" (a NaN pattern no probability has)

inline constexpr int pass_threads = 256;  ///< threads per block of every streaming kernel here
inline constexpr int slot_group   = 16;   ///< bins / ranges accumulated in registers per launch
inline constexpr int select_digit_bits = 8;
inline constexpr int select_passes     = 12;  ///< 64 value bits + 32 index bits, 8 per pass

/// Compact key of a non-negative double and a flag (the double's bits are monotone for x >= 0).
[[nodiscard]] QPROB_DEVICE inline key_t make_key(double x, bool flag) noexcept {
  return static_cast<key_t>(__double_as_longlong(x)) | (flag ? key_flag : 0ull);
}
[[nodiscard]] QPROB_DEVICE inline double key_to_value(key_t k) noexcept {
  return __longlong_as_double(static_cast<long long>(k & key_value));
}

// ---------------------------------------------------------------------------------------------------------
// Fixed-order reduction of per-block partials (field-major: part[f * blocks + b]).

/// Field f of `fields` fields: out[f] = sum over b (or min / max for the two named fields), one warp per
/// field, lanes stride over blocks in order, then a fixed shuffle tree.
template <class T>
__global__ void __launch_bounds__(256) reduce_partials_kernel(const T* part, int fields, int blocks, int min_field, int max_field, T* out) {
  const int warp  = static_cast<int>(threadIdx.x) / 32;
  const int lane  = static_cast<int>(threadIdx.x) % 32;
  const int warps = static_cast<int>(blockDim.x) / 32;
  for (int f = static_cast<int>(blockIdx.x) * warps + warp; f < fields; f += static_cast<int>(gridDim.x) * warps) {
    const T* row = part + static_cast<std::int64_t>(f) * blocks;
    const int op = f == min_field ? 1 : (f == max_field ? 2 : 0);
    T acc        = T{};
    bool valid   = false;
    for (int b = lane; b < blocks; b += 32) {
      const T v = row[b];
      acc       = !valid ? v : (op == 0 ? acc + v : (op == 1 ? (v < acc ? v : acc) : (v > acc ? v : acc)));
      valid     = true;
    }
    for (int off = 16; off > 0; off /= 2) {
      const T o        = __shfl_down_sync(0xffffffffu, acc, off);
      const bool ovalid = __shfl_down_sync(0xffffffffu, valid ? 1 : 0, off) != 0;
      if (ovalid && lane + off < 32) {
        acc   = !valid ? o : (op == 0 ? acc + o : (op == 1 ? (o < acc ? o : acc) : (o > acc ? o : acc)));
        valid = true;
      }
    }
    if (lane == 0) {
      out[f] = acc;
    }
  }
}

template <class T>
[[nodiscard]] inline cudaError_t launch_reduce_partials(const T* part, int fields, int blocks, int min_field, int max_field, T* out,
                                                        cudaStream_t stream) noexcept {
  const int grid = (fields + 7) / 8;  // 8 warps per block, one field each
  reduce_partials_kernel<T><<<grid, 256, 0, stream>>>(part, fields, blocks, min_field, max_field, out);
  return ::qprob::detail::post_launch(stream);
}

// ---------------------------------------------------------------------------------------------------------
// Per-thread sums of one group of slot_group consecutive slots (bins or ranges), handed to the block reduction.

/// One thread's sums of slot_group consecutive slots (bins or ranges): value sum, count, flag count.
struct slot_sums {
  double value[slot_group];
  int count[slot_group];
  int flag[slot_group];
};

/// Block-wide fixed-order sum of one value; thread 0 stores it. Every thread of the block must call it.
template <class T>
QPROB_DEVICE void block_store(T v, T* out, typename cub::BlockReduce<T, pass_threads>::TempStorage& tmp) {
  const T r = cub::BlockReduce<T, pass_threads>(tmp).Sum(v);
  if (threadIdx.x == 0) {
    *out = r;
  }
  __syncthreads();
}

struct min_ll {
  QPROB_DEVICE long long operator()(long long a, long long b) const { return b < a ? b : a; }
};
struct max_ll {
  QPROB_DEVICE long long operator()(long long a, long long b) const { return b > a ? b : a; }
};

/// Writes a thread's slot sums as block partials: doubles at dpart[s * blocks + block], counts at
/// ipart[s * blocks + block], flags at ipart[(slot_group + s) * blocks + block].
QPROB_DEVICE inline void store_slot_partials(const slot_sums& acc, double* dpart, long long* ipart, int blocks, int block,
                                             typename cub::BlockReduce<double, pass_threads>::TempStorage& dtmp,
                                             typename cub::BlockReduce<long long, pass_threads>::TempStorage& itmp) {
  QPROB_UNROLL
  for (int s = 0; s < slot_group; ++s) {
    block_store<double>(acc.value[s], dpart + static_cast<std::int64_t>(s) * blocks + block, dtmp);
    block_store<long long>(acc.count[s], ipart + static_cast<std::int64_t>(s) * blocks + block, itmp);
    block_store<long long>(acc.flag[s], ipart + static_cast<std::int64_t>(slot_group + s) * blocks + block, itmp);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Fused per-sample pass.

/// Field indices of the fused pass's partials and results.
enum sample_dfield : int { d_conf, d_conf_ok, d_conf_bad, d_p_true, d_entropy, d_brier, d_nll, d_bins, d_fields = d_bins + slot_group };
enum sample_ifield : int {
  i_ok,
  i_sum,
  i_norm,
  i_bin_count,
  i_bin_hit   = i_bin_count + slot_group,
  i_first_bad = i_bin_hit + slot_group,  ///< min: first invalid sample, n if none
  i_max_k,                               ///< max: largest K
  i_fields
};

struct sample_pass_params {
  device_choice_scores s;
  scoring mode;
  int bins;           ///< calibration bins; the pass accumulates slots [0, slot_group)
  bin_edges edges;
  key_t* conf_keys;   ///< optional (null): make_key(conf_i, correct_i) per sample
  double* dpart;      ///< d_fields x gridDim.x
  long long* ipart;   ///< i_fields x gridDim.x
};

/// Shared memory of the fused pass: each thread's own calibration-bin sums (slot-major, so a warp's accesses
/// to one slot are consecutive words) and the bin edges.
struct sample_pass_smem {
  double value[slot_group][pass_threads];
  unsigned long long count_flag[slot_group][pass_threads];  ///< count << 32 | flagged count
  double edge[slot_group + 2];                              ///< uniform_edge(k, bins), k <= min(bins, slot_group + 1)
};
inline constexpr std::size_t sample_pass_smem_bytes = sizeof(sample_pass_smem);

/// Table size that calibration_bin may read for `bins` bins: edges 0..bins.
[[nodiscard]] QPROB_HOST_DEVICE inline bool sample_pass_edge_table_fits(int bins) noexcept { return bins <= slot_group + 1; }

// The bin sums live in shared memory (one private column per thread: no atomics, a fixed order), which keeps
// the registers for the per-sample work: (pass_threads, 2) caps them at 128 without spills. The scoring mode
// and the presence of char_len are template parameters (p.mode and p.s.char_len must agree), so each
// instantiation carries only the divisions and loads it needs.
template <scoring Mode, bool HasChar>
__global__ void __launch_bounds__(pass_threads, 2) sample_pass_kernel(sample_pass_params p) {
  extern __shared__ __align__(16) unsigned char sample_pass_raw[];
  auto& sm                      = *reinterpret_cast<sample_pass_smem*>(sample_pass_raw);
  const int t                   = static_cast<int>(threadIdx.x);
  device_choice_scores s = p.s;
  if constexpr (!HasChar) {
    s.char_len = nullptr;  // a constant: the compiler drops the per-character work
  }
  QPROB_UNROLL
  for (int slot = 0; slot < slot_group; ++slot) {
    sm.value[slot][t]      = 0.0;
    sm.count_flag[slot][t] = 0;
  }
  const bool table = sample_pass_edge_table_fits(p.bins);
  if (table && t <= p.bins) {
    sm.edge[t] = uniform_edge(t, p.bins);
  }
  __syncthreads();
  const double* edge_table = table ? sm.edge : nullptr;

  double conf = 0, conf_ok = 0, conf_bad = 0, p_true = 0, ent = 0, brier = 0, nll = 0;
  long long n_ok = 0, n_sum = 0, n_norm = 0, first_bad = s.n, max_k = 0;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  std::int64_t i            = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + t;
  // The next sample's offsets and gold are loaded one iteration ahead, so their latency overlaps this
  // sample's work.
  std::int64_t next_b = 0, next_e = 0;
  int next_g          = 0;
  if (i < s.n) {
    next_b = s.offsets[i];
    next_e = s.offsets[i + 1];
    next_g = s.gold[i];
  }
  for (; i < s.n; i += stride) {
    // validation: the same conditions as the reference's validate_scores (check before reading choices)
    const std::int64_t b = next_b, e = next_e, k = e - b;
    const int g          = next_g;
    if (i + stride < s.n) {
      next_b = s.offsets[i + stride];
      next_e = s.offsets[i + stride + 1];
      next_g = s.gold[i + stride];
    }
    max_k   = k > max_k ? k : max_k;
    bool ok = k >= 1 && b >= 0 && e <= s.total && g >= 0 && g < k;
    sample_eval ev;
    if (ok) {
      // Samples of up to 4 or 8 choices read each choice once into registers; larger ones read memory
      // directly. Both evaluate with the same arithmetic, so the results are the same bits.
      if (k <= 4) {
        ok = evaluate_small_sample<4>(s.loglik, s.char_len, s.token_len, b, static_cast<int>(k), g, Mode, ev);
      } else if (k <= 8) {
        ok = evaluate_small_sample<8>(s.loglik, s.char_len, s.token_len, b, static_cast<int>(k), g, Mode, ev);
      } else {
        for (std::int64_t j = b; j < e; ++j) {
          ok = ok && choice_valid(s.loglik[j], s.char_len == nullptr ? 1 : s.char_len[j], s.token_len == nullptr ? 1 : s.token_len[j]);
        }
        if (ok) {
          ev = evaluate_sample(s.loglik, s.char_len, s.token_len, b, e, g, Mode);
        }
      }
    }
    if (!ok) {
      first_bad = i < first_bad ? i : first_bad;
      if (p.conf_keys != nullptr) {
        p.conf_keys[i] = 0;  // never read: the public API throws first
      }
      continue;
    }
    conf += ev.conf;
    conf_ok += ev.correct ? ev.conf : 0.0;
    conf_bad += ev.correct ? 0.0 : ev.conf;
    p_true += ev.p_true;
    ent += ev.entropy;
    brier += ev.brier;
    nll += ev.nll;
    n_ok += ev.correct ? 1 : 0;
    n_sum += ev.correct_sum ? 1 : 0;
    n_norm += ev.correct_norm ? 1 : 0;
    const int bin = calibration_bin(ev.conf, p.bins, p.edges, edge_table);
    if (bin < slot_group) {
      sm.value[bin][t] += ev.conf;
      sm.count_flag[bin][t] += (1ull << 32) | (ev.correct ? 1ull : 0ull);
    }
    if (p.conf_keys != nullptr) {
      p.conf_keys[i] = make_key(ev.conf, ev.correct);
    }
  }

  __shared__ typename cub::BlockReduce<double, pass_threads>::TempStorage dtmp;
  __shared__ typename cub::BlockReduce<long long, pass_threads>::TempStorage itmp;
  const int blocks = static_cast<int>(gridDim.x);
  const int blk    = static_cast<int>(blockIdx.x);
  const auto dslot = [&](int f) { return p.dpart + static_cast<std::int64_t>(f) * blocks + blk; };
  const auto islot = [&](int f) { return p.ipart + static_cast<std::int64_t>(f) * blocks + blk; };
  block_store<double>(conf, dslot(d_conf), dtmp);
  block_store<double>(conf_ok, dslot(d_conf_ok), dtmp);
  block_store<double>(conf_bad, dslot(d_conf_bad), dtmp);
  block_store<double>(p_true, dslot(d_p_true), dtmp);
  block_store<double>(ent, dslot(d_entropy), dtmp);
  block_store<double>(brier, dslot(d_brier), dtmp);
  block_store<double>(nll, dslot(d_nll), dtmp);
  block_store<long long>(n_ok, islot(i_ok), itmp);
  block_store<long long>(n_sum, islot(i_sum), itmp);
  block_store<long long>(n_norm, islot(i_norm), itmp);
  for (int slot = 0; slot < slot_group; ++slot) {
    const unsigned long long cf = sm.count_flag[slot][t];
    block_store<double>(sm.value[slot][t], dslot(d_bins + slot), dtmp);
    block_store<long long>(static_cast<long long>(cf >> 32), islot(i_bin_count + slot), itmp);
    block_store<long long>(static_cast<long long>(cf & 0xffffffffull), islot(i_bin_hit + slot), itmp);
  }
  {
    const long long r = cub::BlockReduce<long long, pass_threads>(itmp).Reduce(first_bad, min_ll{});
    if (threadIdx.x == 0) {
      *islot(i_first_bad) = r;
    }
    __syncthreads();
  }
  {
    const long long r = cub::BlockReduce<long long, pass_threads>(itmp).Reduce(max_k, max_ll{});
    if (threadIdx.x == 0) {
      *islot(i_max_k) = r;
    }
    __syncthreads();
  }
}

using sample_pass_fn = void (*)(sample_pass_params);

/// The instantiation of the fused pass for p's scoring mode and char_len.
[[nodiscard]] inline sample_pass_fn sample_pass_kernel_for(scoring mode, bool has_char) noexcept {
  switch (mode) {
    case scoring::char_normalized: return sample_pass_kernel<scoring::char_normalized, true>;
    case scoring::token_normalized:
      return has_char ? sample_pass_kernel<scoring::token_normalized, true> : sample_pass_kernel<scoring::token_normalized, false>;
    default: return has_char ? sample_pass_kernel<scoring::sum, true> : sample_pass_kernel<scoring::sum, false>;
  }
}

/// Raises the fused pass's dynamic shared-memory limit (idempotent).
[[nodiscard]] inline cudaError_t prepare_sample_pass(sample_pass_fn kernel) noexcept {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(sample_pass_smem_bytes));
}

/// Persistent grid of a streaming kernel: as many blocks as fit on all SMs at once (occupancy of `kernel`
/// with pass_threads threads and `smem` dynamic shared memory), no more than the items need.
template <class Kernel>
[[nodiscard]] inline int streaming_grid(std::int64_t items, Kernel kernel, std::size_t smem = 0) noexcept {
  int device = 0, sms = 0, per_sm = 0;
  if (cudaGetDevice(&device) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      sms < 1) {
    (void)cudaGetLastError();
    sms = 132;
  }
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, pass_threads, smem) != cudaSuccess || per_sm < 1) {
    (void)cudaGetLastError();
    per_sm = 1;
  }
  const std::int64_t need = (items + pass_threads - 1) / pass_threads;
  const std::int64_t cap  = static_cast<std::int64_t>(sms) * per_sm;
  return static_cast<int>(need < 1 ? 1 : (need < cap ? need : cap));
}

/// Persistent grid of the fused pass (raises its shared-memory limit first, so the occupancy query sees it).
[[nodiscard]] inline int sample_pass_grid(std::int64_t samples, scoring mode, bool has_char) noexcept {
  const sample_pass_fn kernel = sample_pass_kernel_for(mode, has_char);
  if (prepare_sample_pass(kernel) != cudaSuccess) {
    (void)cudaGetLastError();  // the launch reports it
  }
  return streaming_grid(samples, kernel, sample_pass_smem_bytes);
}

/// Fused pass plus the reduction of its partials into dres[d_fields] and ires[i_fields]. `dpart` / `ipart`
/// hold d_fields / i_fields x grid entries.
[[nodiscard]] inline cudaError_t launch_sample_pass(const sample_pass_params& p, int grid, double* dres, long long* ires,
                                                    cudaStream_t stream) noexcept {
  if (p.mode == scoring::char_normalized && p.s.char_len == nullptr) {
    return cudaErrorInvalidValue;  // the public API checks this first
  }
  const sample_pass_fn kernel = sample_pass_kernel_for(p.mode, p.s.char_len != nullptr);
  QPROB_CUDA_RETURN(prepare_sample_pass(kernel));
  kernel<<<grid, pass_threads, sample_pass_smem_bytes, stream>>>(p);
  QPROB_CUDA_RETURN(::qprob::detail::post_launch(stream));
  QPROB_CUDA_RETURN(launch_reduce_partials<double>(p.dpart, d_fields, grid, -1, -1, dres, stream));
  return launch_reduce_partials<long long>(p.ipart, i_fields, grid, i_first_bad, i_max_k, ires, stream);
}

// ---------------------------------------------------------------------------------------------------------
// Per-class probability keys for Nixon ACE.

/// keys[k * n + i] = make_key(p_ik, gold_i == k) for k < K_i, key_sentinel for K_i <= k < classes. p_ik is
/// computed exactly as the reference's choice_probabilities (softmax_of, then exp(s - max) / sum).
__global__ void __launch_bounds__(pass_threads) class_keys_kernel(device_choice_scores s, scoring mode, int classes, key_t* keys) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < s.n; i += stride) {
    const std::int64_t b = s.offsets[i], e = s.offsets[i + 1];
    const int g          = s.gold[i];
    const softmax_stats st = softmax_of(s.loglik, s.char_len, s.token_len, b, e, mode);
    for (int k = 0; k < classes; ++k) {
      key_t key = key_sentinel;
      if (k < e - b) {
        const double pk = exp(choice_score(s.loglik[b + k], s.char_len, s.token_len, b + k, mode) - st.max_score) / st.sum;
        key             = make_key(pk, g == k);
      }
      keys[static_cast<std::int64_t>(k) * s.n + i] = key;
    }
  }
}

[[nodiscard]] inline cudaError_t launch_class_keys(const device_choice_scores& s, scoring mode, int classes, key_t* keys,
                                                   cudaStream_t stream) noexcept {
  class_keys_kernel<<<streaming_grid(s.n, class_keys_kernel), pass_threads, 0, stream>>>(s, mode, classes, keys);
  return ::qprob::detail::post_launch(stream);
}

// ---------------------------------------------------------------------------------------------------------
// Radix selection of equal-mass boundaries.
//
// Population of class c: the non-sentinel keys among keys[c * n + i], i < n, in the stable order (value,
// then i): the composite 96-bit key value(63 bits, top bit 0) . i(32 bits) is unique. Boundary b (b < R - 1)
// is the element at position t_b = equal_mass_start(b + 1, count, R); element e lies in range
// r(e) = #{b : e >= boundary b}. Pass p histograms digit p (bits [88 - 8p, 96 - 8p) of the composite key)
// of the elements whose known top 8p bits equal an active boundary's prefix; boundaries with equal prefixes
// share one histogram (a "leader slot"). A boundary is resolved as soon as its rank within its prefix
// group is 0: then it is the group's smallest element and "e >= boundary" is "prefix(e) >= prefix", so the
// threshold needs no more digits. After 12 passes every group has one element, so every boundary resolves.

/// Known-bits prefix of a composite key: the top q bits of value.index as (high part, index part).
struct prefix_t {
  key_t u;
  unsigned i;
};
[[nodiscard]] QPROB_HOST_DEVICE inline prefix_t prefix_of(key_t u, unsigned i, int q) noexcept {
  if (q <= 0) {
    return {0, 0};
  }
  if (q <= 64) {
    return {u >> (64 - q), 0};
  }
  return {u, q >= 96 ? i : (i >> (96 - q))};
}
[[nodiscard]] QPROB_HOST_DEVICE inline bool prefix_less(prefix_t a, prefix_t b) noexcept {
  return a.u < b.u || (a.u == b.u && a.i < b.i);
}
[[nodiscard]] QPROB_HOST_DEVICE inline bool prefix_equal(prefix_t a, prefix_t b) noexcept { return a.u == b.u && a.i == b.i; }
[[nodiscard]] QPROB_HOST_DEVICE inline int digit_of(key_t u, unsigned i, int pass) noexcept {
  return pass < 8 ? static_cast<int>((u >> (56 - 8 * pass)) & 0xffu) : static_cast<int>((i >> (24 - 8 * (pass - 8))) & 0xffu);
}

enum boundary_status : int { boundary_active = 0, boundary_resolved = 1, boundary_past_end = 2 };

struct select_boundary {
  prefix_t prefix;   ///< top `bits` bits of the boundary's composite key (right-aligned as prefix_of)
  long long rank;    ///< rank of the boundary within the elements sharing `prefix`
  int bits;          ///< known bits
  int status;
  int slot;          ///< leader slot of its prefix group in the next pass (active only)
};

struct select_class {
  long long count;   ///< population size (known after pass 0)
  int leaders;       ///< active leader slots of the next pass
};

/// State of one selection problem set: `classes` populations, `nb` = R - 1 boundaries each.
struct select_state {
  select_boundary* boundary;  ///< classes x nb
  select_class* cls;          ///< classes
  prefix_t* leader;           ///< classes x nb: sorted distinct prefixes of the active boundaries
  unsigned* hist;             ///< classes x nb x 256, zero between passes
  int classes;
  int nb;
  int ranges;
};

inline constexpr int hist_slots_per_launch = 16;  ///< shared-memory histograms per block (16 KB)

__global__ void select_init_kernel(select_state st) {
  const int c = static_cast<int>(blockIdx.x);
  for (int b = static_cast<int>(threadIdx.x); b < st.nb; b += static_cast<int>(blockDim.x)) {
    st.boundary[static_cast<std::int64_t>(c) * st.nb + b] = select_boundary{{0, 0}, 0, 0, boundary_active, 0};
  }
  if (threadIdx.x == 0) {
    st.cls[c]                                        = select_class{0, 1};
    st.leader[static_cast<std::int64_t>(c) * st.nb] = prefix_t{0, 0};
  }
}

/// Histogram of digit `pass` for leader slots [slot0, slot0 + hist_slots_per_launch) of class blockIdx.y.
__global__ void __launch_bounds__(pass_threads) select_hist_kernel(const key_t* keys, std::int64_t n, select_state st, int pass, int slot0) {
  const int c       = static_cast<int>(blockIdx.y);
  const int leaders = st.cls[c].leaders;
  if (leaders <= slot0) {
    return;  // uniform over the block: nothing active in this chunk
  }
  __shared__ unsigned hist[hist_slots_per_launch][256];
  __shared__ prefix_t lead[1024];
  for (int t = static_cast<int>(threadIdx.x); t < hist_slots_per_launch * 256; t += pass_threads) {
    hist[t / 256][t % 256] = 0;
  }
  for (int t = static_cast<int>(threadIdx.x); t < leaders; t += pass_threads) {
    lead[t] = st.leader[static_cast<std::int64_t>(c) * st.nb + t];
  }
  __syncthreads();
  const int q               = 8 * pass;
  const int lane            = static_cast<int>(threadIdx.x) % 32;
  const key_t* ck           = keys + static_cast<std::int64_t>(c) * n;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * pass_threads;
  constexpr int unroll      = 4;
  // block-uniform trip count, so that every lane takes part in __match_any_sync
  for (std::int64_t base = static_cast<std::int64_t>(blockIdx.x) * pass_threads * unroll; base < n; base += stride * unroll) {
    key_t x[unroll];
    QPROB_UNROLL
    for (int u = 0; u < unroll; ++u) {
      const std::int64_t i = base + static_cast<std::int64_t>(u) * pass_threads + threadIdx.x;
      x[u]                 = i < n ? ck[i] : key_sentinel;
    }
    QPROB_UNROLL
    for (int u = 0; u < unroll; ++u) {
      const std::int64_t i = base + static_cast<std::int64_t>(u) * pass_threads + threadIdx.x;
      unsigned bucket      = 0xffffffffu;
      if (x[u] != key_sentinel) {
        const key_t v      = x[u] & key_value;
        const unsigned idx = static_cast<unsigned>(i);
        const prefix_t pre = prefix_of(v, idx, q);
        // largest leader <= pre (leaders are sorted ascending and distinct)
        int lo = 0, hi = leaders;
        while (hi - lo > 1) {
          const int mid = (lo + hi) / 2;
          if (prefix_less(pre, lead[mid])) {
            hi = mid;
          } else {
            lo = mid;
          }
        }
        if (prefix_equal(pre, lead[lo]) && lo >= slot0 && lo < slot0 + hist_slots_per_launch) {
          bucket = static_cast<unsigned>((lo - slot0) * 256 + digit_of(v, idx, pass));
        }
      }
      const unsigned peers = __match_any_sync(0xffffffffu, bucket);
      if (bucket != 0xffffffffu && lane == __ffs(peers) - 1) {
        atomicAdd(&hist[bucket / 256][bucket % 256], static_cast<unsigned>(__popc(peers)));
      }
    }
  }
  __syncthreads();
  for (int t = static_cast<int>(threadIdx.x); t < hist_slots_per_launch * 256; t += pass_threads) {
    const int slot = slot0 + t / 256;
    const unsigned v = hist[t / 256][t % 256];
    if (slot < leaders && v != 0) {
      atomicAdd(&st.hist[(static_cast<std::int64_t>(c) * st.nb + slot) * 256 + t % 256], v);
    }
  }
}

/// Consumes the histograms of pass `pass` for class blockIdx.x: each active boundary picks its digit (one
/// warp per boundary), the histograms are cleared, and thread 0 lists the leader slots of the next pass.
__global__ void __launch_bounds__(1024) select_advance_kernel(select_state st, int pass) {
  const int c        = static_cast<int>(blockIdx.x);
  select_class& cls  = st.cls[c];
  const int leaders  = cls.leaders;
  if (leaders == 0) {
    return;
  }
  select_boundary* bd = st.boundary + static_cast<std::int64_t>(c) * st.nb;
  unsigned* hist      = st.hist + static_cast<std::int64_t>(c) * st.nb * 256;
  const int warp      = static_cast<int>(threadIdx.x) / 32;
  const int lane      = static_cast<int>(threadIdx.x) % 32;
  const int warps     = static_cast<int>(blockDim.x) / 32;
  __shared__ long long count;
  if (pass == 0) {
    // one leader (the empty prefix) saw the whole population: its size fixes the boundary positions
    if (warp == 0) {
      long long part = 0;
      for (int d = lane; d < 256; d += 32) {
        part += hist[d];
      }
      for (int off = 16; off > 0; off /= 2) {
        part += __shfl_down_sync(0xffffffffu, part, off);
      }
      if (lane == 0) {
        count     = part;
        cls.count = part;
      }
    }
    __syncthreads();
    for (int b = static_cast<int>(threadIdx.x); b < st.nb; b += static_cast<int>(blockDim.x)) {
      const long long t = equal_mass_start(b + 1, count, st.ranges);
      bd[b].rank        = t;
      bd[b].status      = t < count ? boundary_active : boundary_past_end;
    }
    __syncthreads();
  }
  const int q = 8 * pass;
  for (int b = warp; b < st.nb; b += warps) {
    if (bd[b].status != boundary_active) {
      continue;  // uniform over the warp
    }
    const unsigned* h = hist + static_cast<std::int64_t>(bd[b].slot) * 256;
    const long long rank = bd[b].rank;
    long long mine[8];
    long long local = 0;
    QPROB_UNROLL
    for (int d = 0; d < 8; ++d) {
      mine[d] = h[lane * 8 + d];
      local += mine[d];
    }
    long long incl = local;  // inclusive scan over lanes
    for (int off = 1; off < 32; off *= 2) {
      const long long o = __shfl_up_sync(0xffffffffu, incl, off);
      if (lane >= off) {
        incl += o;
      }
    }
    const long long excl = incl - local;
    const bool here      = excl <= rank && rank < incl;
    const unsigned who   = __ballot_sync(0xffffffffu, here);
    int digit            = 0;
    long long below      = 0;
    if (here) {
      long long cum = excl;
      int d         = 0;
      while (d < 7 && cum + mine[d] <= rank) {
        cum += mine[d];
        ++d;
      }
      digit = lane * 8 + d;
      below = cum;
    }
    const int src = who != 0 ? __ffs(who) - 1 : 0;  // who == 0 cannot happen: rank < group size
    digit         = __shfl_sync(0xffffffffu, digit, src);
    below         = __shfl_sync(0xffffffffu, below, src);
    if (lane == 0) {
      select_boundary nb = bd[b];
      if (pass < 8) {
        nb.prefix.u = (nb.prefix.u << 8) | static_cast<key_t>(digit);
      } else {
        nb.prefix.i = (nb.prefix.i << 8) | static_cast<unsigned>(digit);
      }
      nb.bits = q + 8;
      nb.rank = rank - below;
      if (nb.rank == 0 || nb.bits >= 96) {
        nb.status = boundary_resolved;
        nb.rank   = 0;
      }
      bd[b] = nb;
    }
  }
  __syncthreads();
  for (int t = static_cast<int>(threadIdx.x); t < leaders * 256; t += static_cast<int>(blockDim.x)) {
    hist[t] = 0;
  }
  if (threadIdx.x == 0) {
    prefix_t* lead = st.leader + static_cast<std::int64_t>(c) * st.nb;
    int next       = 0;
    for (int b = 0; b < st.nb; ++b) {
      if (bd[b].status != boundary_active) {
        continue;
      }
      if (next == 0 || !prefix_equal(lead[next - 1], bd[b].prefix)) {
        lead[next++] = bd[b].prefix;
      }
      bd[b].slot = next - 1;
    }
    cls.leaders = next;
  }
}

/// Runs the whole selection (init + 12 passes; passes with nothing active return at once).
[[nodiscard]] inline cudaError_t launch_select(const key_t* keys, std::int64_t n, const select_state& st, cudaStream_t stream) noexcept {
  if (st.nb < 1) {
    return cudaSuccess;  // one range: nothing to select
  }
  QPROB_CUDA_RETURN(cudaMemsetAsync(st.hist, 0, static_cast<std::size_t>(st.classes) * st.nb * 256 * sizeof(unsigned), stream));
  select_init_kernel<<<st.classes, 256, 0, stream>>>(st);
  QPROB_CUDA_RETURN(::qprob::detail::post_launch(stream));
  const int total     = streaming_grid(n * st.classes, select_hist_kernel);
  const int gx        = (total + st.classes - 1) / st.classes;
  const int chunks    = (st.nb + hist_slots_per_launch - 1) / hist_slots_per_launch;
  for (int pass = 0; pass < select_passes; ++pass) {
    for (int ch = 0; ch < (pass == 0 ? 1 : chunks); ++ch) {
      select_hist_kernel<<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(st.classes)), pass_threads, 0, stream>>>(
          keys, n, st, pass, ch * hist_slots_per_launch);
      QPROB_CUDA_RETURN(::qprob::detail::post_launch(stream));
    }
    select_advance_kernel<<<st.classes, 1024, 0, stream>>>(st, pass);
    QPROB_CUDA_RETURN(::qprob::detail::post_launch(stream));
  }
  return cudaSuccess;
}

/// What the range assignment needs of a boundary.
struct select_threshold {
  prefix_t prefix;
  int bits;
  int status;
};

/// e >= boundary (for a resolved boundary: prefix(e) >= its prefix; past-the-end boundaries: never).
[[nodiscard]] QPROB_DEVICE inline bool at_or_above(const select_threshold& bd, key_t v, unsigned i) noexcept {
  if (bd.status == boundary_past_end) {
    return false;
  }
  return !prefix_less(prefix_of(v, i, bd.bits), bd.prefix);
}

// ---------------------------------------------------------------------------------------------------------
// Group sums over compact keys: per range (equal-mass) or per equal-width bin.

struct group_sums_params {
  const key_t* keys;   ///< classes x n
  std::int64_t n;
  int slot0;           ///< first slot of this launch's group
  bool equal_mass;     ///< equal-mass ranges (boundaries of the selection) or equal-width bins
  const select_boundary* boundary;  ///< classes x nb (equal_mass)
  int nb;
  int bins;
  bin_edges edges;
  double* dpart;       ///< per class: slot_group x gridDim.x
  long long* ipart;    ///< per class: 2 slot_group x gridDim.x
};

/// Dynamic shared memory of group_sums_kernel: the boundaries (nb entries, 16-byte aligned), then each thread's
/// own slot sums as columns (value[slot][thread], count[slot][thread], flag[slot][thread]), so that an element
/// costs one read-modify-write of its slot instead of an update of all 16 register slots.
[[nodiscard]] QPROB_HOST_DEVICE constexpr std::size_t group_sums_bound_bytes(int nb) noexcept {
  return (static_cast<std::size_t>(nb) * sizeof(select_threshold) + 15) / 16 * 16;
}
[[nodiscard]] QPROB_HOST_DEVICE constexpr std::size_t group_sums_smem(int nb) noexcept {
  return group_sums_bound_bytes(nb) + static_cast<std::size_t>(slot_group) * pass_threads * (sizeof(double) + 2 * sizeof(int));
}

__global__ void __launch_bounds__(pass_threads) group_sums_kernel(group_sums_params p) {
  const int c = static_cast<int>(blockIdx.y);
  extern __shared__ __align__(16) unsigned char group_smem[];
  auto* bd     = reinterpret_cast<select_threshold*>(group_smem);  // nb entries when equal_mass
  auto* value  = reinterpret_cast<double*>(group_smem + group_sums_bound_bytes(p.equal_mass ? p.nb : 0));
  auto* count  = reinterpret_cast<int*>(value + slot_group * pass_threads);
  auto* flag   = count + slot_group * pass_threads;
  const int me = static_cast<int>(threadIdx.x);
  if (p.equal_mass) {
    for (int t = me; t < p.nb; t += pass_threads) {
      const select_boundary& src = p.boundary[static_cast<std::int64_t>(c) * p.nb + t];
      bd[t]                      = select_threshold{src.prefix, src.bits, src.status};
    }
  }
  QPROB_UNROLL
  for (int s = 0; s < slot_group; ++s) {
    value[s * pass_threads + me] = 0.0;
    count[s * pass_threads + me] = 0;
    flag[s * pass_threads + me]  = 0;
  }
  __syncthreads();
  const key_t* ck           = p.keys + static_cast<std::int64_t>(c) * p.n;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * pass_threads;
  constexpr int unroll      = 4;
  for (std::int64_t base = static_cast<std::int64_t>(blockIdx.x) * pass_threads * unroll; base < p.n; base += stride * unroll) {
    key_t x[unroll];
    QPROB_UNROLL
    for (int u = 0; u < unroll; ++u) {
      const std::int64_t i = base + static_cast<std::int64_t>(u) * pass_threads + threadIdx.x;
      x[u]                 = i < p.n ? ck[i] : key_sentinel;
    }
    QPROB_UNROLL
    for (int u = 0; u < unroll; ++u) {
      if (x[u] == key_sentinel) {
        continue;
      }
      const std::int64_t i = base + static_cast<std::int64_t>(u) * pass_threads + threadIdx.x;
      const key_t v        = x[u] & key_value;
      const double val     = key_to_value(x[u]);
      int slot             = 0;
      if (p.equal_mass) {
        // number of boundaries at or below the element (monotone in b): binary search
        int lo = 0, hi = p.nb;
        while (lo < hi) {
          const int mid = (lo + hi) / 2;
          if (at_or_above(bd[mid], v, static_cast<unsigned>(i))) {
            lo = mid + 1;
          } else {
            hi = mid;
          }
        }
        slot = lo;
      } else {
        slot = calibration_bin(val, p.bins, p.edges);
      }
      // this thread's column only: the same additions, in the same order, as a register accumulator
      const int rel = slot - p.slot0;
      if (rel >= 0 && rel < slot_group) {
        value[rel * pass_threads + me] += val;
        count[rel * pass_threads + me] += 1;
        flag[rel * pass_threads + me] += (x[u] & key_flag) != 0 ? 1 : 0;
      }
    }
  }
  slot_sums acc;
  QPROB_UNROLL
  for (int s = 0; s < slot_group; ++s) {
    acc.value[s] = value[s * pass_threads + me];
    acc.count[s] = count[s * pass_threads + me];
    acc.flag[s]  = flag[s * pass_threads + me];
  }
  __shared__ typename cub::BlockReduce<double, pass_threads>::TempStorage dtmp;
  __shared__ typename cub::BlockReduce<long long, pass_threads>::TempStorage itmp;
  const int blocks = static_cast<int>(gridDim.x);
  store_slot_partials(acc, p.dpart + static_cast<std::int64_t>(c) * slot_group * blocks,
                      p.ipart + static_cast<std::int64_t>(c) * 2 * slot_group * blocks, blocks, static_cast<int>(blockIdx.x), dtmp, itmp);
}

/// Raises group_sums_kernel's dynamic shared-memory limit for nb boundaries (idempotent), as prepare_sample_pass.
[[nodiscard]] inline cudaError_t prepare_group_sums(int nb) noexcept {
  return cudaFuncSetAttribute(group_sums_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(group_sums_smem(nb)));
}
/// Group sums of slots [slot0, slot0 + slot_group) for every class, reduced into dres[classes x slot_group]
/// (value sums) and ires[classes x 2 slot_group] (counts, then flag counts). Scratch: dpart / ipart with
/// classes x slot_group x grid and classes x 2 slot_group x grid entries, grid = group_sums_grid(n, classes).
[[nodiscard]] inline int group_sums_grid(std::int64_t n, int classes, int nb) noexcept {
  if (prepare_group_sums(nb) != cudaSuccess) {
    (void)cudaGetLastError();  // the launch reports it
  }
  const int total = streaming_grid(n * classes, group_sums_kernel, group_sums_smem(nb));
  return (total + classes - 1) / classes;
}
[[nodiscard]] inline cudaError_t launch_group_sums(const group_sums_params& p, int classes, int grid, double* dres, long long* ires,
                                                   cudaStream_t stream) noexcept {
  const int nb = p.equal_mass ? p.nb : 0;
  QPROB_CUDA_RETURN(prepare_group_sums(nb));
  group_sums_kernel<<<dim3(static_cast<unsigned>(grid), static_cast<unsigned>(classes)), pass_threads, group_sums_smem(nb), stream>>>(p);
  QPROB_CUDA_RETURN(::qprob::detail::post_launch(stream));
  QPROB_CUDA_RETURN(launch_reduce_partials<double>(p.dpart, classes * slot_group, grid, -1, -1, dres, stream));
  return launch_reduce_partials<long long>(p.ipart, classes * 2 * slot_group, grid, -1, -1, ires, stream);
}

}  // namespace detail
}  // namespace qprob::metrics
