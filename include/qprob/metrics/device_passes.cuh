// SPDX-License-Identifier: Apache-2.0
#pragma once
// Device building blocks, kernels and noexcept launchers of the per-model metrics (metrics layer, nvcc):
//
//  * sample_pass: one fused pass over the inputs (one thread per sample, persistent grid). It validates each
//    sample, evaluates it with the same evaluate_sample as the host reference, and accumulates every moment
//    sum and count in registers and the first 16 equal-width calibration bins in per-thread shared-memory
//    columns; each block writes its partials (field-major), which reduce_partials sums in a fixed order.
//    Optionally it writes one compact 8-byte key per sample: the bits of conf with the correctness flag in
//    the sign bit.
//  * class_keys: for Nixon ACE, per class k the probability p_ik of every sample in the same compact form
//    (flag = gold is k), class-major; samples without a choice k get the sentinel key ~0. For K <= 4 it
//    also histograms the keys' coarse digits (selection pass 0).
//  * radix selection of equal-mass range boundaries over those keys (select_*): per boundary, the element at
//    sorted position np.array_split-start(r) of the stable order (value, then sample index), found digit by
//    digit (a 12-bit monotone coarse digit, then the bytes of value and index) with integer histograms; it
//    stops as soon as the boundary is the smallest element of its prefix group (a prefix threshold). After
//    pass 0 a split pass (compact_sums) sums the elements whose range is already known and lists the others;
//    later passes read only the lists.
//  * group sums: per range (equal-mass) or per equal-width bin, count / sum of values / sum of flags, 16 slots
//    per launch in per-thread shared-memory columns, block partials, fixed-order reduction.
//
// Determinism: floating-point values are only ever summed by one thread in a fixed sequence, by
// cub::BlockReduce, or by reduce_partials_kernel's fixed tree; integer counts use atomics (exact); the
// candidates' lists are in sample order per warp. The grid depends only on n and the device's SM count, so
// results are run-to-run identical on one GPU.

#include <qprob/core/config.hpp>
#include <qprob/core/cuda_check.hpp>
#include <qprob/core/launch.hpp>
#include <qprob/metrics/reference.hpp>
#include <qprob/metrics/sample.hpp>
#include <qprob/metrics/types.hpp>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>

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
inline constexpr int slot_group   = 16;   ///< bins / ranges accumulated per launch
inline constexpr int pass_warps   = pass_threads / 32;

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
// Block partials.

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
// Radix selection of equal-mass boundaries.
//
// Population of class c: the non-sentinel keys among keys[c * n + i], i < n, in the stable order (value,
// then i). The selection orders by the composite key coarse(value) (12 bits) . value bits (64, the top one
// 0) . i (32): coarse() is monotone, so this is the same order, and the composite is unique. coarse() splits
// [0, 1] so that the first digit narrows probabilities down (the double's own leading bits are sign and
// exponent: every p in [2^-15, 1) shares its first byte). Boundary b (b < R - 1) is the element at position
// t_b = equal_mass_start(b + 1, count, R); element e lies in range r(e) = #{b : e >= boundary b}. Pass p
// histograms digit p of the composite (pass 0: the 12-bit coarse digit; passes 1..8: the value's bytes;
// 9..12: the index's bytes) of the elements whose known leading digits equal an active boundary's prefix;
// boundaries with equal prefixes share one histogram (a "leader slot"). A boundary is resolved as soon as its
// rank within its prefix group is 0: then it is the group's smallest element and "e >= boundary" is
// "prefix(e) >= prefix", so the threshold needs no more digits. After 13 passes every group has one element.
//
// Only pass 0 reads every key. After it, one pass (compact_sums_kernel) splits the population: an element
// whose coarse digit is no active boundary's prefix already knows its range, so its count / value / flag go
// straight into that range's sums; the others (the candidates) are listed by sample index, and passes 1..12
// and the range sums of the candidates read only that list. Range sums = the first part + the second.

inline constexpr int coarse_bits    = 12;
inline constexpr int coarse_buckets = 1 << coarse_bits;

/// Monotone coarse digit of a key's value x in [0, 1]: x >= 2^-6 in 2048 equal-width buckets (1/2048 wide;
/// digits 2080..4095), smaller x by octave with 32 sub-buckets each (the exponent and the top 5 mantissa
/// bits; octaves 2^-70 .. 2^-7 are digits 0..2047, anything smaller digit 0).
[[nodiscard]] QPROB_HOST_DEVICE inline int coarse_digit(key_t k) noexcept {
  const key_t v = k & key_value;
  const int e   = static_cast<int>(v >> 52);  // biased exponent
  if (e >= 1023 - 6) {
    double x = 0;
    static_assert(sizeof(x) == sizeof(v));
    std::memcpy(&x, &v, sizeof(x));
    const int lin = static_cast<int>(x * 2048.0);
    return 2048 + (lin < 2047 ? lin : 2047);
  }
  if (e < 1023 - 70) {
    return 0;
  }
  return ((e - (1023 - 70)) << 5) | static_cast<int>((v >> 47) & 31u);
}

// Per-class probability keys for Nixon ACE.

/// Classes up to which class_keys_kernel also histograms the keys' coarse digits (selection pass 0) in
/// shared memory: 16 KB per class.
inline constexpr int class_keys_hist_classes = 4;

/// keys[k * n + i] = make_key(p_ik, gold_i == k) for k < K_i, key_sentinel for K_i <= k < classes. p_ik is
/// computed exactly as the reference's choice_probabilities (max score, sum of exp(s_j - max) in order j,
/// then exp(s_k - max) / sum); samples of up to 8 choices read them once into registers and take each
/// exponential once. With `hist` (classes <= class_keys_hist_classes), also adds every key's coarse digit
/// to hist[c * hist_stride + digit], selection pass 0's histogram.
__global__ void __launch_bounds__(pass_threads) class_keys_kernel(device_choice_scores s, scoring mode, int classes, key_t* keys,
                                                                  unsigned* hist, std::int64_t hist_stride) {
  extern __shared__ __align__(16) unsigned char class_keys_raw[];
  auto* local     = reinterpret_cast<unsigned*>(class_keys_raw);  // classes x coarse_buckets (with hist)
  const int cells = hist != nullptr ? classes * coarse_buckets : 0;
  for (int t = static_cast<int>(threadIdx.x); t < cells; t += pass_threads) {
    local[t] = 0;
  }
  __syncthreads();
  const auto put = [&](int k, std::int64_t i, key_t key) {
    keys[static_cast<std::int64_t>(k) * s.n + i] = key;
    if (hist != nullptr && key != key_sentinel) {
      atomicAdd(&local[k * coarse_buckets + coarse_digit(key)], 1u);
    }
  };
  constexpr int small = 8;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < s.n; i += stride) {
    const std::int64_t b = s.offsets[i], e = s.offsets[i + 1];
    const int g          = s.gold[i];
    const int k          = static_cast<int>(e - b);
    if (k <= small) {
      double sc[small];
      double mx = -INFINITY;
      QPROB_UNROLL
      for (int c = 0; c < small; ++c) {
        if (c < k) {
          sc[c] = choice_score(s.loglik[b + c], s.char_len, s.token_len, b + c, mode);
          mx    = sc[c] > mx ? sc[c] : mx;
        }
      }
      double sum = 0;
      QPROB_UNROLL
      for (int c = 0; c < small; ++c) {
        if (c < k) {
          sc[c] = exp(sc[c] - mx);
          sum += sc[c];
        }
      }
      QPROB_UNROLL
      for (int c = 0; c < small; ++c) {
        if (c < classes) {
          put(c, i, c < k ? make_key(sc[c] / sum, g == c) : key_sentinel);
        }
      }
      for (int c = small; c < classes; ++c) {
        put(c, i, key_sentinel);
      }
    } else {
      const softmax_stats st = softmax_of(s.loglik, s.char_len, s.token_len, b, e, mode);
      for (int c = 0; c < classes; ++c) {
        key_t key = key_sentinel;
        if (c < k) {
          key = make_key(exp(choice_score(s.loglik[b + c], s.char_len, s.token_len, b + c, mode) - st.max_score) / st.sum, g == c);
        }
        put(c, i, key);
      }
    }
  }
  if (hist != nullptr) {
    __syncthreads();
    for (int t = static_cast<int>(threadIdx.x); t < cells; t += pass_threads) {
      const unsigned v = local[t];
      if (v != 0) {
        atomicAdd(&hist[static_cast<std::int64_t>(t / coarse_buckets) * hist_stride + t % coarse_buckets], v);
      }
    }
  }
}

/// Dynamic shared memory of class_keys_kernel: one coarse histogram per class when it histograms.
[[nodiscard]] inline std::size_t class_keys_smem(int classes, bool hist) noexcept {
  return hist ? static_cast<std::size_t>(classes) * coarse_buckets * sizeof(unsigned) : 0;
}

[[nodiscard]] inline cudaError_t launch_class_keys(const device_choice_scores& s, scoring mode, int classes, key_t* keys, unsigned* hist,
                                                   std::int64_t hist_stride, cudaStream_t stream) noexcept {
  if (hist != nullptr && classes > class_keys_hist_classes) {
    return cudaErrorInvalidValue;
  }
  const std::size_t smem = class_keys_smem(classes, hist != nullptr);
  QPROB_CUDA_RETURN(cudaFuncSetAttribute(class_keys_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  class_keys_kernel<<<streaming_grid(s.n, class_keys_kernel, smem), pass_threads, smem, stream>>>(s, mode, classes, keys, hist, hist_stride);
  return ::qprob::detail::post_launch(stream);
}

/// One population per class, in one of two layouts.
///  * every sample (index == null): class c's element i is keys[c * stride + i], i < stride; the streaming
///    kernels stride over it by block;
///  * segmented (the candidates' lists): warp w of the reading kernel (w = block * pass_warps + warp, the
///    same grid as compact_sums_kernel that wrote it) owns positions [w * chunk, w * chunk + count[c][w]) of
///    class c's stride, with the key at keys[...] and its sample index at index[...].
struct key_population {
  const key_t* keys          = nullptr;  ///< classes x stride
  const unsigned* index      = nullptr;  ///< classes x stride, or null
  const long long* seg_count = nullptr;  ///< classes x warps (segmented)
  std::int64_t stride        = 0;
  std::int64_t chunk         = 0;        ///< positions per segment (segmented)
  int warps                  = 0;        ///< segments per class (segmented)
};

/// Calls f(x, idx) with stream_unroll keys and sample indices at a time (sentinel keys: no element), with
/// warp-uniform trip counts (every lane takes part in each call).
template <int Unroll, class F>
QPROB_DEVICE inline void for_each_element(const key_population& pop, int c, F&& f) {
  key_t x[Unroll];
  unsigned idx[Unroll];
  const std::int64_t cbase = static_cast<std::int64_t>(c) * pop.stride;
  if (pop.index == nullptr) {
    const std::int64_t n      = pop.stride;
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t base = static_cast<std::int64_t>(blockIdx.x) * blockDim.x * Unroll; base < n; base += stride * Unroll) {
      QPROB_UNROLL
      for (int u = 0; u < Unroll; ++u) {
        const std::int64_t j = base + static_cast<std::int64_t>(u) * blockDim.x + threadIdx.x;
        idx[u]               = static_cast<unsigned>(j);
        x[u]                 = j < n ? pop.keys[cbase + j] : key_sentinel;
      }
      f(x, idx);
    }
    return;
  }
  const int lane         = static_cast<int>(threadIdx.x) % 32;
  const int w            = static_cast<int>(blockIdx.x) * pass_warps + static_cast<int>(threadIdx.x) / 32;
  const long long count  = w < pop.warps ? pop.seg_count[static_cast<std::int64_t>(c) * pop.warps + w] : 0;
  const std::int64_t seg = cbase + static_cast<std::int64_t>(w) * pop.chunk;
  for (long long base = 0; base < count; base += 32 * Unroll) {
    QPROB_UNROLL
    for (int u = 0; u < Unroll; ++u) {
      const long long j = base + u * 32 + lane;
      idx[u]            = j < count ? pop.index[seg + j] : 0u;
      x[u]              = j < count ? pop.keys[seg + j] : key_sentinel;
    }
    f(x, idx);
  }
}

/// The known leading digits of a composite key after `level` passes (level 0: none), right-aligned per part.
struct prefix_t {
  int g;       ///< coarse digit (level >= 1)
  key_t u;     ///< top 8 (level - 1) value bits (levels 2..9)
  unsigned i;  ///< top 8 (level - 9) index bits (levels 10..13)
};
/// A composite key: coarse digit, value bits (flag cleared), sample index.
struct composite_t {
  int g;
  key_t v;
  unsigned i;
};
[[nodiscard]] QPROB_HOST_DEVICE inline composite_t composite_of(key_t k, unsigned i) noexcept {
  return {coarse_digit(k), k & key_value, i};
}
[[nodiscard]] QPROB_HOST_DEVICE inline prefix_t prefix_of(const composite_t& e, int level) noexcept {
  if (level <= 0) {
    return {0, 0, 0};
  }
  if (level <= 9) {
    return {e.g, level == 1 ? 0 : e.v >> (64 - 8 * (level - 1)), 0};
  }
  return {e.g, e.v, level >= 13 ? e.i : e.i >> (32 - 8 * (level - 9))};
}
[[nodiscard]] QPROB_HOST_DEVICE inline bool prefix_less(const prefix_t& a, const prefix_t& b) noexcept {
  return a.g < b.g || (a.g == b.g && (a.u < b.u || (a.u == b.u && a.i < b.i)));
}
[[nodiscard]] QPROB_HOST_DEVICE inline bool prefix_equal(const prefix_t& a, const prefix_t& b) noexcept {
  return a.g == b.g && a.u == b.u && a.i == b.i;
}
/// Digit `pass` of a composite key (pass 0: 12 bits; then bytes).
[[nodiscard]] QPROB_HOST_DEVICE inline int digit_of(const composite_t& e, int pass) noexcept {
  if (pass == 0) {
    return e.g;
  }
  if (pass <= 8) {
    return static_cast<int>((e.v >> (64 - 8 * pass)) & 0xffu);
  }
  return static_cast<int>((e.i >> (32 - 8 * (pass - 8))) & 0xffu);
}
/// The prefix one level deeper: `p` followed by digit `d` of pass `pass`.
[[nodiscard]] QPROB_HOST_DEVICE inline prefix_t prefix_append(prefix_t p, int pass, int d) noexcept {
  if (pass == 0) {
    p.g = d;
  } else if (pass <= 8) {
    p.u = (p.u << 8) | static_cast<key_t>(d);
  } else {
    p.i = (p.i << 8) | static_cast<unsigned>(d);
  }
  return p;
}

enum boundary_status : int { boundary_active = 0, boundary_resolved = 1, boundary_past_end = 2 };

struct select_boundary {
  prefix_t prefix;   ///< the boundary's first `level` digits
  long long rank;    ///< rank of the boundary within the elements sharing `prefix`
  int level;         ///< known digits
  int status;
  int slot;          ///< leader slot of its prefix group in the next pass (active only)
};

struct select_class {
  int leaders;       ///< active leader slots of the next pass
};

/// State of one selection problem set: `classes` populations, `nb` = R - 1 boundaries each.
struct select_state {
  select_boundary* boundary;  ///< classes x nb
  select_class* cls;          ///< classes
  prefix_t* leader;           ///< classes x nb: sorted distinct prefixes of the active boundaries
  unsigned* hist;             ///< classes x select_hist_stride(nb), zero between passes
  int classes;
  int nb;
  int ranges;
};

/// Histogram entries per class: pass 0's one coarse histogram, or 256 per boundary in later passes.
[[nodiscard]] QPROB_HOST_DEVICE constexpr std::int64_t select_hist_stride(int nb) noexcept {
  return static_cast<std::int64_t>(nb) * 256 > coarse_buckets ? static_cast<std::int64_t>(nb) * 256 : coarse_buckets;
}

inline constexpr int hist_slots_per_launch = coarse_buckets / 256;  ///< 16 byte histograms per block, or pass 0's one (16 KB)
inline constexpr int stream_unroll         = 4;                     ///< keys in flight per thread in the streaming loops
inline constexpr int select_passes         = 13;                    ///< coarse digit, 8 value bytes, 4 index bytes

__global__ void select_init_kernel(select_state st) {
  const int c = static_cast<int>(blockIdx.x);
  for (int b = static_cast<int>(threadIdx.x); b < st.nb; b += static_cast<int>(blockDim.x)) {
    st.boundary[static_cast<std::int64_t>(c) * st.nb + b] = select_boundary{{0, 0, 0}, 0, 0, boundary_active, 0};
  }
  if (threadIdx.x == 0) {
    st.cls[c]                                        = select_class{1};
    st.leader[static_cast<std::int64_t>(c) * st.nb] = prefix_t{0, 0, 0};
  }
}

/// Histogram of digit `pass` for leader slots [slot0, slot0 + hist_slots_per_launch) of class blockIdx.y
/// (pass 0: the one leader's 4096-bucket coarse histogram).
__global__ void __launch_bounds__(pass_threads) select_hist_kernel(key_population pop, select_state st, int pass, int slot0) {
  const int c       = static_cast<int>(blockIdx.y);
  const int leaders = st.cls[c].leaders;
  if (leaders <= slot0 || (pop.index == nullptr && static_cast<std::int64_t>(blockIdx.x) * pass_threads * stream_unroll >= pop.stride)) {
    return;  // uniform over the block: nothing active in this chunk, or no elements for this block
  }
  __shared__ unsigned hist[coarse_buckets];
  __shared__ prefix_t lead[1024];
  for (int t = static_cast<int>(threadIdx.x); t < coarse_buckets; t += pass_threads) {
    hist[t] = 0;
  }
  for (int t = static_cast<int>(threadIdx.x); t < leaders; t += pass_threads) {
    lead[t] = st.leader[static_cast<std::int64_t>(c) * st.nb + t];
  }
  __syncthreads();
  const int lane = static_cast<int>(threadIdx.x) % 32;
  for_each_element<stream_unroll>(pop, c, [&](const key_t (&x)[stream_unroll], const unsigned (&idx)[stream_unroll]) {
    QPROB_UNROLL
    for (int u = 0; u < stream_unroll; ++u) {
      if (pass == 0) {
        // 4096 buckets: peers rarely share one, so each element adds its own 1
        if (x[u] != key_sentinel) {
          atomicAdd(&hist[coarse_digit(x[u])], 1u);
        }
        continue;
      }
      unsigned bucket = 0xffffffffu;
      if (x[u] != key_sentinel) {
        const composite_t e = composite_of(x[u], idx[u]);
        const prefix_t pre  = prefix_of(e, pass);
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
          bucket = static_cast<unsigned>((lo - slot0) * 256 + digit_of(e, pass));
        }
      }
      // few leaders: many lanes share a bucket, so one atomic per group of peers
      const unsigned peers = __match_any_sync(0xffffffffu, bucket);
      if (bucket != 0xffffffffu && lane == __ffs(peers) - 1) {
        atomicAdd(&hist[bucket], static_cast<unsigned>(__popc(peers)));
      }
    }
  });
  __syncthreads();
  unsigned* out = st.hist + static_cast<std::int64_t>(c) * select_hist_stride(st.nb);
  for (int t = static_cast<int>(threadIdx.x); t < coarse_buckets; t += pass_threads) {
    const unsigned v = hist[t];
    if (v != 0) {  // pass 0: t is the coarse digit of leader 0; later: (slot - slot0) * 256 + digit
      atomicAdd(&out[(pass == 0 ? 0 : static_cast<std::int64_t>(slot0) * 256) + t], v);
    }
  }
}

/// Lists the sorted distinct prefixes of class c's active boundaries as the next pass's leader slots.
QPROB_DEVICE inline void list_leaders(const select_state& st, int c, select_boundary* bd) {
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
  st.cls[c].leaders = next;
}

/// The boundary's state after the digit that holds its rank (`below` elements of its group come before).
QPROB_DEVICE inline void descend(select_boundary& b, int pass, int digit, long long below) {
  b.prefix = prefix_append(b.prefix, pass, digit);
  b.level  = pass + 1;
  b.rank -= below;
  if (b.rank == 0 || b.level >= select_passes) {
    b.status = boundary_resolved;
    b.rank   = 0;
  }
}

inline constexpr int advance_threads = 512;  ///< threads of select_advance_kernel

/// Consumes the histograms of pass `pass` for class blockIdx.x: each active boundary picks its digit, the
/// histograms are cleared, and thread 0 lists the leader slots of the next pass. Pass 0 (one 4096-bucket
/// histogram of the whole population) also fixes the population size and the boundaries' positions: the
/// block scans the histogram once and each boundary binary-searches it. Later passes: one warp per boundary
/// over its slot's 256 buckets.
__global__ void __launch_bounds__(advance_threads) select_advance_kernel(select_state st, int pass) {
  const int c       = static_cast<int>(blockIdx.x);
  const int leaders = st.cls[c].leaders;
  if (leaders == 0) {
    return;
  }
  select_boundary* bd = st.boundary + static_cast<std::int64_t>(c) * st.nb;
  unsigned* hist      = st.hist + static_cast<std::int64_t>(c) * select_hist_stride(st.nb);
  const int tid       = static_cast<int>(threadIdx.x);
  if (pass == 0) {
    constexpr int items = coarse_buckets / advance_threads;
    using scan_t        = cub::BlockScan<long long, advance_threads>;
    __shared__ typename scan_t::TempStorage tmp;
    __shared__ long long incl[coarse_buckets];
    long long v[items];
    QPROB_UNROLL
    for (int k = 0; k < items; ++k) {
      v[k] = hist[tid * items + k];
    }
    long long count = 0;
    scan_t(tmp).InclusiveSum(v, v, count);  // every thread gets the total
    QPROB_UNROLL
    for (int k = 0; k < items; ++k) {
      incl[tid * items + k] = v[k];
    }
    __syncthreads();
    for (int b = tid; b < st.nb; b += advance_threads) {
      const long long t = equal_mass_start(b + 1, count, st.ranges);
      bd[b].rank        = t;
      if (t >= count) {
        bd[b].status = boundary_past_end;
        continue;
      }
      int lo = 0, hi = coarse_buckets - 1;  // first digit whose inclusive count exceeds t
      while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (incl[mid] > t) {
          hi = mid;
        } else {
          lo = mid + 1;
        }
      }
      descend(bd[b], 0, lo, lo > 0 ? incl[lo - 1] : 0);
    }
    __syncthreads();
    for (int t = tid; t < coarse_buckets; t += advance_threads) {
      hist[t] = 0;
    }
    if (tid == 0) {
      list_leaders(st, c, bd);
    }
    return;
  }
  const int warp  = tid / 32;
  const int lane  = tid % 32;
  const int warps = static_cast<int>(blockDim.x) / 32;
  for (int b = warp; b < st.nb; b += warps) {
    if (bd[b].status != boundary_active) {
      continue;  // uniform over the warp
    }
    const unsigned* h    = hist + static_cast<std::int64_t>(bd[b].slot) * 256;
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
      descend(bd[b], pass, digit, below);
    }
  }
  __syncthreads();
  for (int t = tid; t < leaders * 256; t += static_cast<int>(blockDim.x)) {
    hist[t] = 0;
  }
  if (tid == 0) {
    list_leaders(st, c, bd);
  }
}

/// Blocks along x of the selection's streaming kernels for `classes` populations of up to n elements.
[[nodiscard]] inline int select_grid(std::int64_t n, int classes) noexcept {
  const int total = streaming_grid(n * classes, select_hist_kernel);
  return (total + classes - 1) / classes;
}

/// Selection passes first..last over `pop` (passes and chunks with nothing active return at once). Pass 0
/// also initialises the state; `st.hist` must be zero before it (select_advance_kernel clears it after),
/// unless `hist_filled`: then the keys' producer has already added pass 0's histogram (class_keys_kernel).
[[nodiscard]] inline cudaError_t launch_select_passes(const key_population& pop, const select_state& st, int first, int last, int grid_x,
                                                      cudaStream_t stream, bool hist_filled = false) noexcept {
  if (st.nb < 1) {
    return cudaSuccess;  // one range: nothing to select
  }
  if (first == 0) {
    select_init_kernel<<<st.classes, 256, 0, stream>>>(st);
    QPROB_CUDA_RETURN(::qprob::detail::post_launch(stream));
  }
  const int chunks = (st.nb + hist_slots_per_launch - 1) / hist_slots_per_launch;
  for (int pass = first; pass <= last; ++pass) {
    for (int ch = 0; ch < (pass == 0 ? (hist_filled ? 0 : 1) : chunks); ++ch) {
      select_hist_kernel<<<dim3(static_cast<unsigned>(grid_x), static_cast<unsigned>(st.classes)), pass_threads, 0, stream>>>(
          pop, st, pass, ch * hist_slots_per_launch);
      QPROB_CUDA_RETURN(::qprob::detail::post_launch(stream));
    }
    select_advance_kernel<<<st.classes, advance_threads, 0, stream>>>(st, pass);
    QPROB_CUDA_RETURN(::qprob::detail::post_launch(stream));
  }
  return cudaSuccess;
}

/// What the range assignment needs of a boundary.
struct select_threshold {
  prefix_t prefix;
  int level;
  int status;
};

/// e >= boundary (for a resolved boundary: prefix(e) >= its prefix; past-the-end boundaries: never).
[[nodiscard]] QPROB_HOST_DEVICE inline bool at_or_above(const select_threshold& bd, const composite_t& e) noexcept {
  if (bd.status == boundary_past_end) {
    return false;
  }
  return !prefix_less(prefix_of(e, bd.level), bd.prefix);
}

// ---------------------------------------------------------------------------------------------------------
// Group sums: per range (equal-mass) or per equal-width bin, count / value sum / flag count of 16 slots.

/// Each thread's own sums of slot_group slots as shared-memory columns (value[slot][thread],
/// count[slot][thread], flag[slot][thread]): an element costs one read-modify-write of its slot, in the
/// thread's own order (no atomics).
struct slot_columns {
  double* value;
  int* count;
  int* flag;

  static constexpr std::size_t bytes = static_cast<std::size_t>(slot_group) * pass_threads * (sizeof(double) + 2 * sizeof(int));

  QPROB_DEVICE explicit slot_columns(unsigned char* base) noexcept
      : value(reinterpret_cast<double*>(base)),
        count(reinterpret_cast<int*>(base + static_cast<std::size_t>(slot_group) * pass_threads * sizeof(double))),
        flag(count + slot_group * pass_threads) {}

  QPROB_DEVICE void zero(int me) noexcept {
    QPROB_UNROLL
    for (int s = 0; s < slot_group; ++s) {
      value[s * pass_threads + me] = 0.0;
      count[s * pass_threads + me] = 0;
      flag[s * pass_threads + me]  = 0;
    }
  }
  /// Adds a key's value and flag to slot `rel` of the group (ignored outside [0, slot_group)).
  QPROB_DEVICE void add(int me, int rel, key_t x) noexcept {
    if (rel >= 0 && rel < slot_group) {
      value[rel * pass_threads + me] += key_to_value(x);
      count[rel * pass_threads + me] += 1;
      flag[rel * pass_threads + me] += (x & key_flag) != 0 ? 1 : 0;
    }
  }
  /// Block partials of the columns (every thread of the block must call it): value sums at
  /// dpart[s * blocks + block], counts at ipart[s * blocks + block], flag counts at
  /// ipart[(slot_group + s) * blocks + block].
  QPROB_DEVICE void store(int me, double* dpart, long long* ipart, int blocks, int block) const noexcept {
    __shared__ typename cub::BlockReduce<double, pass_threads>::TempStorage dtmp;
    __shared__ typename cub::BlockReduce<long long, pass_threads>::TempStorage itmp;
    for (int s = 0; s < slot_group; ++s) {
      block_store<double>(value[s * pass_threads + me], dpart + static_cast<std::int64_t>(s) * blocks + block, dtmp);
      block_store<long long>(count[s * pass_threads + me], ipart + static_cast<std::int64_t>(s) * blocks + block, itmp);
      block_store<long long>(flag[s * pass_threads + me], ipart + static_cast<std::int64_t>(slot_group + s) * blocks + block, itmp);
    }
  }
};

struct group_sums_params {
  key_population pop;
  int slot0;           ///< first slot of this launch's group
  bool equal_mass;     ///< equal-mass ranges (boundaries of the selection) or equal-width bins
  const select_boundary* boundary;  ///< classes x nb (equal_mass)
  int nb;
  int bins;
  bin_edges edges;
  double* dpart;       ///< per class: slot_group x gridDim.x
  long long* ipart;    ///< per class: 2 slot_group x gridDim.x
};

/// Dynamic shared memory of group_sums_kernel: the boundaries (nb entries, 16-byte aligned), then the slot
/// columns.
[[nodiscard]] QPROB_HOST_DEVICE constexpr std::size_t group_sums_bound_bytes(int nb) noexcept {
  return (static_cast<std::size_t>(nb) * sizeof(select_threshold) + 15) / 16 * 16;
}
[[nodiscard]] QPROB_HOST_DEVICE constexpr std::size_t group_sums_smem(int nb) noexcept {
  return group_sums_bound_bytes(nb) + slot_columns::bytes;
}

__global__ void __launch_bounds__(pass_threads) group_sums_kernel(group_sums_params p) {
  const int c = static_cast<int>(blockIdx.y);
  extern __shared__ __align__(16) unsigned char group_smem[];
  auto* bd = reinterpret_cast<select_threshold*>(group_smem);  // nb entries when equal_mass
  slot_columns cols(group_smem + group_sums_bound_bytes(p.equal_mass ? p.nb : 0));
  const int me = static_cast<int>(threadIdx.x);
  if (p.equal_mass) {
    for (int t = me; t < p.nb; t += pass_threads) {
      const select_boundary& src = p.boundary[static_cast<std::int64_t>(c) * p.nb + t];
      bd[t]                      = select_threshold{src.prefix, src.level, src.status};
    }
  }
  cols.zero(me);
  __syncthreads();
  for_each_element<stream_unroll>(p.pop, c, [&](const key_t (&x)[stream_unroll], const unsigned (&idx)[stream_unroll]) {
    QPROB_UNROLL
    for (int u = 0; u < stream_unroll; ++u) {
      if (x[u] == key_sentinel) {
        continue;
      }
      int slot = 0;
      if (p.equal_mass) {
        // number of boundaries at or below the element (monotone in b): binary search
        const composite_t e = composite_of(x[u], idx[u]);
        int lo = 0, hi = p.nb;
        while (lo < hi) {
          const int mid = (lo + hi) / 2;
          if (at_or_above(bd[mid], e)) {
            lo = mid + 1;
          } else {
            hi = mid;
          }
        }
        slot = lo;
      } else {
        slot = calibration_bin(key_to_value(x[u]), p.bins, p.edges);
      }
      cols.add(me, slot - p.slot0, x[u]);
    }
  });
  const int blocks = static_cast<int>(gridDim.x);
  cols.store(me, p.dpart + static_cast<std::int64_t>(c) * slot_group * blocks, p.ipart + static_cast<std::int64_t>(c) * 2 * slot_group * blocks,
             blocks, static_cast<int>(blockIdx.x));
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

// ---------------------------------------------------------------------------------------------------------
// After selection pass 0: range sums of the decided elements, and the list of candidates.

/// Inputs of compact_sums_kernel. Warp w of the grid (w = block * pass_warps + warp) reads the keys
/// [w * chunk, (w + 1) * chunk) of its class in order; chunk is a multiple of 32 x compact_unroll.
struct compact_params {
  const key_t* keys;                 ///< classes x n (every sample; sentinel = absent)
  std::int64_t n;
  const select_boundary* boundary;   ///< classes x nb, as left by select_advance_kernel after pass 0
  int nb;
  int slot0;                         ///< first range of this launch's group
  std::int64_t chunk;
  key_t* seg_key;                    ///< classes x n: warp w's candidates at [w * chunk, ...), or null (no list)
  unsigned* seg_index;               ///< classes x n: their sample indices
  long long* seg_count;              ///< classes x warps: how many warp w listed
  double* dpart;                     ///< per class: slot_group x gridDim.x
  long long* ipart;                  ///< per class: 2 slot_group x gridDim.x
};

inline constexpr int compact_unroll = 16;  ///< keys in flight per thread (one warp streams its own chunk)
[[nodiscard]] QPROB_HOST_DEVICE constexpr std::size_t compact_table_bytes() noexcept { return coarse_buckets * sizeof(short); }
[[nodiscard]] QPROB_HOST_DEVICE constexpr std::size_t compact_sums_smem() noexcept { return compact_table_bytes() + slot_columns::bytes; }

/// Range sums of the elements whose coarse digit (pass 0) is no active boundary's prefix, and the list of
/// the others. For such a digit d the range is a function of d alone, the number of boundaries b with
/// "e >= b" = (resolved and d >= prefix_b) or (active and d > prefix_b), which holds for a leading run of b
/// (prefixes grow with b; at equal prefixes the resolved boundary, the group's smallest element, comes
/// first; past-the-end ones come last): so a binary search finds it, and d is a candidate digit exactly
/// when the first boundary outside the run is active with prefix d. A table of the 4096 digits holds the
/// range (-1: candidates). Candidates are written in sample order, per warp into its own segment (ballot
/// ranks): the lists are the same on every run.
__global__ void __launch_bounds__(pass_threads) compact_sums_kernel(compact_params p) {
  const int c = static_cast<int>(blockIdx.y);
  extern __shared__ __align__(16) unsigned char compact_smem[];
  short* table = reinterpret_cast<short*>(compact_smem);
  slot_columns cols(compact_smem + compact_table_bytes());
  const int me = static_cast<int>(threadIdx.x);
  const select_boundary* bd = p.boundary + static_cast<std::int64_t>(c) * p.nb;
  for (int d = me; d < coarse_buckets; d += pass_threads) {
    int lo = 0, hi = p.nb;  // first b with !(e >= b)
    while (lo < hi) {
      const int mid    = (lo + hi) / 2;
      const int status = bd[mid].status, pre = bd[mid].prefix.g;
      const bool below = status == boundary_resolved ? d >= pre : (status == boundary_active && d > pre);
      if (below) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    const bool candidate = lo < p.nb && bd[lo].status == boundary_active && bd[lo].prefix.g == d;
    table[d]             = static_cast<short>(candidate ? -1 : lo);
  }
  cols.zero(me);
  __syncthreads();
  const int lane           = me % 32;
  const unsigned below     = (1u << lane) - 1u;
  const std::int64_t w     = static_cast<std::int64_t>(blockIdx.x) * pass_warps + me / 32;
  const std::int64_t begin = w * p.chunk;
  const std::int64_t end   = begin + p.chunk < p.n ? begin + p.chunk : p.n;
  const std::int64_t cbase = static_cast<std::int64_t>(c) * p.n;
  const bool write         = p.seg_key != nullptr;
  long long listed         = 0;
  for (std::int64_t base = begin; base < end; base += 32 * compact_unroll) {  // warp-uniform
    key_t x[compact_unroll];
    QPROB_UNROLL
    for (int u = 0; u < compact_unroll; ++u) {
      const std::int64_t j = base + u * 32 + lane;
      x[u]                 = j < end ? p.keys[cbase + j] : key_sentinel;
    }
    QPROB_UNROLL
    for (int u = 0; u < compact_unroll; ++u) {
      const int t          = x[u] != key_sentinel ? table[coarse_digit(x[u])] : -2;
      const unsigned cands = __ballot_sync(0xffffffffu, t == -1);
      if (t == -1) {
        if (write) {
          const std::int64_t at = cbase + begin + listed + __popc(cands & below);
          p.seg_key[at]         = x[u];
          p.seg_index[at]       = static_cast<unsigned>(base + u * 32 + lane);
        }
      } else if (t >= 0) {
        cols.add(me, t - p.slot0, x[u]);
      }
      listed += __popc(cands);
    }
  }
  if (write && lane == 0) {
    p.seg_count[static_cast<std::int64_t>(c) * gridDim.x * pass_warps + w] = listed;
  }
  const int blocks = static_cast<int>(gridDim.x);
  cols.store(me, p.dpart + static_cast<std::int64_t>(c) * slot_group * blocks, p.ipart + static_cast<std::int64_t>(c) * 2 * slot_group * blocks,
             blocks, static_cast<int>(blockIdx.x));
}

[[nodiscard]] inline cudaError_t prepare_compact_sums() noexcept {
  return cudaFuncSetAttribute(compact_sums_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(compact_sums_smem()));
}
/// Blocks along x of compact_sums_kernel, and of every kernel that reads the lists it writes.
[[nodiscard]] inline int compact_sums_grid(std::int64_t n, int classes) noexcept {
  if (prepare_compact_sums() != cudaSuccess) {
    (void)cudaGetLastError();  // the launch reports it
  }
  const int total = streaming_grid(n * classes, compact_sums_kernel, compact_sums_smem());
  return (total + classes - 1) / classes;
}
/// Keys per warp of compact_sums_kernel for `grid` blocks: a multiple of one warp step.
[[nodiscard]] inline std::int64_t compact_chunk(std::int64_t n, int grid) noexcept {
  const std::int64_t warps = static_cast<std::int64_t>(grid) * pass_warps, step = 32 * compact_unroll;
  return ((n + warps - 1) / warps + step - 1) / step * step;
}

/// compact_sums_kernel for ranges [slot0, slot0 + slot_group), reduced into dres / ires as launch_group_sums.
[[nodiscard]] inline cudaError_t launch_compact_sums(const compact_params& p, int classes, int grid, double* dres, long long* ires,
                                                     cudaStream_t stream) noexcept {
  QPROB_CUDA_RETURN(prepare_compact_sums());
  compact_sums_kernel<<<dim3(static_cast<unsigned>(grid), static_cast<unsigned>(classes)), pass_threads, compact_sums_smem(), stream>>>(p);
  QPROB_CUDA_RETURN(::qprob::detail::post_launch(stream));
  QPROB_CUDA_RETURN(launch_reduce_partials<double>(p.dpart, classes * slot_group, grid, -1, -1, dres, stream));
  return launch_reduce_partials<long long>(p.ipart, classes * 2 * slot_group, grid, -1, -1, ires, stream);
}

}  // namespace detail
}  // namespace qprob::metrics
