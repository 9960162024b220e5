// SPDX-License-Identifier: Apache-2.0
#pragma once
// Device implementation of the per-model and paired metrics (metrics layer, nvcc). One thread evaluates one
// sample (the same evaluate_sample / evaluate_pair as the host reference). Per-model metrics: one fused pass
// over the inputs plus, for the equal-mass ACE variants, a radix selection of the range boundaries over
// compact 8-byte keys (device_passes.cuh); paired metrics: CUB DeviceReduce, stable DeviceRadixSort and
// DeviceSegmentedReduce. Every floating-point sum is in double and in a fixed order (no floating-point
// atomics), so results are run-to-run deterministic on one GPU. All work is queued on the caller's stream;
// the public functions read back at the end (and once after input validation where a later stage needs it).

#include <qprob/core/cuda_check.hpp>
#include <qprob/core/device_buffer.hpp>
#include <qprob/core/launch.hpp>
#include <qprob/core/temp_storage.hpp>
#include <qprob/metrics/device_passes.cuh>
#include <qprob/metrics/reference.hpp>
#include <qprob/metrics/sample.hpp>
#include <qprob/metrics/types.hpp>

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_reduce.cuh>
#include <cub/device/device_segmented_reduce.cuh>
#include <thrust/binary_search.h>
#include <thrust/execution_policy.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/transform_iterator.h>
#include <thrust/sequence.h>
#include <thrust/transform.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <vector>

namespace qprob::metrics {

/// Owning device copy of host scores (tests, benchmark, parity driver).
class device_choice_scores_storage {
public:
  device_choice_scores_storage(const choice_scores_view& h, cudaStream_t stream)
      : offsets_(h.offsets, stream)
      , loglik_(h.loglik, stream)
      , char_len_(h.char_len, stream)
      , token_len_(h.token_len, stream)
      , gold_(h.gold, stream)
      , n_(h.samples())
      , total_(static_cast<std::int64_t>(h.loglik.size())) {}
  [[nodiscard]] device_choice_scores view() const noexcept {
    return {offsets_.data(), loglik_.data(), char_len_.empty() ? nullptr : char_len_.data(),
            token_len_.empty() ? nullptr : token_len_.data(), gold_.data(), n_, total_};
  }

private:
  device_buffer<std::int64_t> offsets_;
  device_buffer<double> loglik_;
  device_buffer<std::int32_t> char_len_;
  device_buffer<std::int32_t> token_len_;
  device_buffer<std::int32_t> gold_;
  std::int64_t n_;
  std::int64_t total_;
};

namespace detail {

inline constexpr int block_threads = 256;  // one sample per thread; occupancy-neutral for this memory-bound loop

[[nodiscard]] inline unsigned grid_for(std::int64_t n) {
  return static_cast<unsigned>((n + block_threads - 1) / block_threads);
}

/// Sums of one bin / range: count, a "confidence" sum and an "outcome" sum.
struct bin_sums {
  double count = 0, conf = 0, hit = 0;
};
struct bin_plus {
  QPROB_HOST_DEVICE bin_sums operator()(const bin_sums& a, const bin_sums& b) const {
    return {a.count + b.count, a.conf + b.conf, a.hit + b.hit};
  }
};

/// Validation summary: first invalid sample (n if none) and the largest K.
struct check_sums {
  long long first_bad;
  long long max_k;
};
struct check_op {
  QPROB_HOST_DEVICE check_sums operator()(const check_sums& a, const check_sums& b) const {
    return {a.first_bad < b.first_bad ? a.first_bad : b.first_bad, a.max_k > b.max_k ? a.max_k : b.max_k};
  }
};
struct check_sample {
  device_choice_scores s;
  device_choice_scores other;  // paired: must match offsets and gold; other.offsets == nullptr otherwise
  scoring mode;
  QPROB_HOST_DEVICE check_sums operator()(std::int64_t i) const {
    const std::int64_t b = s.offsets[i], e = s.offsets[i + 1], k = e - b;
    bool ok = k >= 1 && b >= 0 && e <= s.total && s.gold[i] >= 0 && s.gold[i] < k;
    if (ok) {
      for (std::int64_t j = b; j < e; ++j) {
        ok = ok && (s.loglik[j] - s.loglik[j]) == 0.0;  // false for inf and NaN
        ok = ok && (s.char_len == nullptr || s.char_len[j] > 0);
        ok = ok && (s.token_len == nullptr || s.token_len[j] > 0);
        if (other.offsets != nullptr) {
          ok = ok && (other.loglik[j] - other.loglik[j]) == 0.0;
        }
      }
    }
    if (other.offsets != nullptr) {
      ok = ok && other.offsets[i] == b && other.offsets[i + 1] == e && other.gold[i] == s.gold[i];
    }
    return {ok ? static_cast<long long>(s.n) : static_cast<long long>(i), k};
  }
};

/// Throws with the reference's message for the first invalid sample (copied to the host for the wording).
inline void report_invalid(const device_choice_scores& s, const device_choice_scores* other, scoring mode, long long bad, cudaStream_t stream) {
  std::int64_t off[2];
  QPROB_CUDA_TRY(cudaMemcpyAsync(off, s.offsets + bad, sizeof off, cudaMemcpyDeviceToHost, stream));
  QPROB_CUDA_TRY(cudaStreamSynchronize(stream));
  const std::int64_t k = std::max<std::int64_t>(0, off[1] - off[0]);
  QPROB_CHECK(k >= 1 && off[0] >= 0 && off[1] <= s.total, "metrics (device): sample ", bad, " has offsets [", off[0], ", ", off[1],
              ") (total ", s.total, " choices)");
  choice_scores one;
  one.offsets = {0, k};
  one.loglik.resize(static_cast<std::size_t>(k));
  one.gold.resize(1);
  QPROB_CUDA_TRY(cudaMemcpyAsync(one.loglik.data(), s.loglik + off[0], static_cast<std::size_t>(k) * sizeof(double), cudaMemcpyDeviceToHost, stream));
  QPROB_CUDA_TRY(cudaMemcpyAsync(one.gold.data(), s.gold + bad, sizeof(std::int32_t), cudaMemcpyDeviceToHost, stream));
  if (s.char_len != nullptr) {
    one.char_len.resize(static_cast<std::size_t>(k));
    QPROB_CUDA_TRY(cudaMemcpyAsync(one.char_len.data(), s.char_len + off[0], static_cast<std::size_t>(k) * sizeof(std::int32_t), cudaMemcpyDeviceToHost, stream));
  }
  if (s.token_len != nullptr) {
    one.token_len.resize(static_cast<std::size_t>(k));
    QPROB_CUDA_TRY(cudaMemcpyAsync(one.token_len.data(), s.token_len + off[0], static_cast<std::size_t>(k) * sizeof(std::int32_t), cudaMemcpyDeviceToHost, stream));
  }
  QPROB_CUDA_TRY(cudaStreamSynchronize(stream));
  const auto g = one.gold[0];
  QPROB_CHECK(g >= 0 && g < k, "metrics (device): gold[", bad, "]=", g, " is outside [0, ", k, ") choices");
  for (std::int64_t j = 0; j < k; ++j) {
    QPROB_CHECK(std::isfinite(one.loglik[static_cast<std::size_t>(j)]), "metrics (device): loglik[", off[0] + j,
                "]=", one.loglik[static_cast<std::size_t>(j)], " is not finite");
  }
  validate_scores(one.view(), mode, "metrics (device)");
  QPROB_CHECK(other == nullptr, "paired metrics (device): sample ", bad,
              " differs between the full and the quantized input (offsets, gold) or has a non-finite quantized loglik");
  QPROB_CHECK(false, "metrics (device): sample ", bad, " is invalid");
}

/// Validates on the device; returns the largest K. One read-back.
inline int validate_device(const device_choice_scores& s, const device_choice_scores* other, scoring mode, cudaStream_t stream) {
  QPROB_CHECK(s.n >= 1, "metrics (device): needs at least one sample, got n=", s.n);
  QPROB_CHECK(s.offsets != nullptr && s.loglik != nullptr && s.gold != nullptr, "metrics (device): null input pointer");
  QPROB_CHECK(mode != scoring::char_normalized || s.char_len != nullptr, "metrics (device): char_normalized scoring needs char_len");
  QPROB_CHECK(mode != scoring::token_normalized || s.token_len != nullptr, "metrics (device): token_normalized scoring needs token_len");
  if (other != nullptr) {
    QPROB_CHECK(other->n == s.n, "paired metrics (device): full has ", s.n, " samples, quantized ", other->n);
  }
  device_buffer<check_sums> out(1, stream);
  const check_sample f{s, other ? *other : device_choice_scores{}, mode};
  const auto in = thrust::make_transform_iterator(thrust::make_counting_iterator<std::int64_t>(0), f);
  QPROB_CUDA_TRY(cub_two_phase(stream, [&](void* t, std::size_t& b) {
    return cub::DeviceReduce::Reduce(t, b, in, out.data(), s.n, check_op{}, check_sums{LLONG_MAX, 0}, stream);
  }));
  const check_sums r = out.to_host()[0];
  if (r.first_bad < s.n) {
    report_invalid(s, other, mode, r.first_bad, stream);
  }
  return static_cast<int>(r.max_k);
}

/// Per-segment sums of `values(sorted position)` where the segments are given by device offsets.
template <class ValueFn>
void segmented_bin_sums(ValueFn values, std::int64_t segments, const std::int64_t* offsets, bin_sums* out, cudaStream_t stream) {
  const auto in = thrust::make_transform_iterator(thrust::make_counting_iterator<std::int64_t>(0), values);
  QPROB_CUDA_TRY(cub_two_phase(stream, [&](void* t, std::size_t& b) {
    return cub::DeviceSegmentedReduce::Reduce(t, b, in, out, segments, offsets, offsets + 1, bin_plus{}, bin_sums{}, stream);
  }));
}

/// Stable sort of sample indices by an integer key in [0, slots), and the segment offsets of each key.
inline void sort_by_key(const int* keys, std::int64_t n, int slots, device_buffer<std::int64_t>& order, device_buffer<std::int64_t>& offsets,
                        cudaStream_t stream) {
  QPROB_CHECK(n <= INT_MAX, "metrics (device): n=", n, " exceeds the 32-bit sort size");
  device_buffer<int> keys_sorted(n, stream);
  device_buffer<std::int64_t> idx(n, stream);
  order = device_buffer<std::int64_t>(n, stream);
  thrust::sequence(thrust::cuda::par_nosync.on(stream), idx.data(), idx.data() + n);
  int bits = 1;
  while ((1 << bits) <= slots) {
    ++bits;
  }
  QPROB_CUDA_TRY(cub_two_phase(stream, [&](void* t, std::size_t& b) {
    return cub::DeviceRadixSort::SortPairs(t, b, keys, keys_sorted.data(), idx.data(), order.data(), static_cast<int>(n), 0, bits, stream);
  }));
  offsets = device_buffer<std::int64_t>(slots + 1, stream);
  thrust::lower_bound(thrust::cuda::par_nosync.on(stream), keys_sorted.data(), keys_sorted.data() + n,
                      thrust::make_counting_iterator<int>(0), thrust::make_counting_iterator<int>(slots + 1), offsets.data());
}

/// ECE / MCE / RMSCE / unweighted mean from per-bin sums (host, fixed bin order).
inline calibration_errors finish_bins(const std::vector<bin_sums>& s, int bins, double n) {
  calibration_errors r;
  r.ece = 0, r.mce = 0;
  double sq = 0, unweighted = 0;
  int used  = 0;
  for (int b = 0; b < static_cast<int>(s.size()); ++b) {
    reliability_bin rb;
    rb.lower = b < bins ? uniform_edge(b, bins) : 1.0;
    rb.upper = b < bins ? uniform_edge(b + 1, bins) : 1.0;
    rb.count = static_cast<std::int64_t>(s[static_cast<std::size_t>(b)].count);
    if (rb.count > 0) {
      const double c = s[static_cast<std::size_t>(b)].count;
      rb.mean_conf   = s[static_cast<std::size_t>(b)].conf / c;
      rb.accuracy    = s[static_cast<std::size_t>(b)].hit / c;
      const double gap = std::fabs(rb.accuracy - rb.mean_conf);
      r.ece += c / n * gap;
      sq += c / n * gap * gap;
      r.mce = std::max(r.mce, gap);
      unweighted += gap;
      ++used;
    }
    r.bins.push_back(rb);
  }
  r.rmsce           = std::sqrt(sq);
  r.uniform_average = unweighted / used;
  return r;
}

/// Mean over non-empty ranges of |hit/count - conf/count| (host, fixed order).
inline double finish_ranges(const std::vector<bin_sums>& s, std::int64_t& cells, double& total) {
  for (const auto& c : s) {
    if (c.count > 0) {
      total += std::fabs(c.hit / c.count - c.conf / c.count);
      ++cells;
    }
  }
  return cells > 0 ? total / static_cast<double>(cells) : nan_v;
}

/// Copies the scores back to the host (for seed_compat, which only exists in numpy's summation order).
inline choice_scores copy_to_host(const device_choice_scores& s, cudaStream_t stream) {
  choice_scores h;
  h.offsets.resize(static_cast<std::size_t>(s.n + 1));
  h.loglik.resize(static_cast<std::size_t>(s.total));
  h.gold.resize(static_cast<std::size_t>(s.n));
  QPROB_CUDA_TRY(cudaMemcpyAsync(h.offsets.data(), s.offsets, h.offsets.size() * sizeof(std::int64_t), cudaMemcpyDeviceToHost, stream));
  QPROB_CUDA_TRY(cudaMemcpyAsync(h.loglik.data(), s.loglik, h.loglik.size() * sizeof(double), cudaMemcpyDeviceToHost, stream));
  QPROB_CUDA_TRY(cudaMemcpyAsync(h.gold.data(), s.gold, h.gold.size() * sizeof(std::int32_t), cudaMemcpyDeviceToHost, stream));
  if (s.char_len != nullptr) {
    h.char_len.resize(static_cast<std::size_t>(s.total));
    QPROB_CUDA_TRY(cudaMemcpyAsync(h.char_len.data(), s.char_len, h.char_len.size() * sizeof(std::int32_t), cudaMemcpyDeviceToHost, stream));
  }
  if (s.token_len != nullptr) {
    h.token_len.resize(static_cast<std::size_t>(s.total));
    QPROB_CUDA_TRY(cudaMemcpyAsync(h.token_len.data(), s.token_len, h.token_len.size() * sizeof(std::int32_t), cudaMemcpyDeviceToHost, stream));
  }
  QPROB_CUDA_TRY(cudaStreamSynchronize(stream));
  return h;
}


/// Selection state of `classes` populations split into `ranges` equal-mass ranges, with its (zeroed)
/// histograms, so that the kernel producing the keys can add selection pass 0's histogram on the way.
struct equal_mass_selection {
  int classes;
  int ranges;
  int nb;
  device_buffer<select_boundary> boundary;
  device_buffer<select_class> cls;
  device_buffer<prefix_t> leader;
  device_buffer<unsigned> hist;

  equal_mass_selection(int classes_, int ranges_, cudaStream_t stream)
      : classes(classes_),
        ranges(ranges_),
        nb(ranges_ - 1),
        boundary(static_cast<std::int64_t>(classes_) * std::max(ranges_ - 1, 1), stream),
        cls(classes_, stream),
        leader(static_cast<std::int64_t>(classes_) * std::max(ranges_ - 1, 1), stream),
        hist(classes_ * select_hist_stride(ranges_ - 1), stream) {
    QPROB_CUDA_TRY(cudaMemsetAsync(hist.data(), 0, static_cast<std::size_t>(hist.size()) * sizeof(unsigned), stream));
  }
  [[nodiscard]] select_state state() noexcept { return {boundary.data(), cls.data(), leader.data(), hist.data(), classes, nb, ranges}; }
  /// Pass 0's histogram of class c at [c * stride, c * stride + coarse_buckets); null when there is nothing
  /// to select (one range).
  [[nodiscard]] unsigned* pass0_hist() noexcept { return nb >= 1 ? hist.data() : nullptr; }
  [[nodiscard]] std::int64_t pass0_stride() const noexcept { return select_hist_stride(nb); }
};

/// Equal-mass range sums of sel.classes populations of compact keys (classes x n, sentinel = absent): per
/// class the radix selection of the R - 1 boundaries, then per-range count / value sum / flag count.
/// Pass 0 of the selection (unless `pass0_done`: the keys' producer filled sel.pass0_hist()) and one split
/// pass read every key; later passes and the range sums of the undecided elements read only the
/// candidates' lists (device_passes.cuh). Returns classes x ranges bin_sums, class-major, each the sum of
/// the decided part and the candidates' part (in that order). Synchronizes the stream (read-back).
inline std::vector<bin_sums> equal_mass_sums(const key_t* keys, std::int64_t n, equal_mass_selection& sel, bool pass0_done, cudaStream_t stream) {
  const int classes = sel.classes, ranges = sel.ranges, nb = sel.nb;
  const select_state st = sel.state();
  const key_population all{keys, nullptr, nullptr, n, 0, 0};
  QPROB_CUDA_TRY(launch_select_passes(all, st, 0, 0, select_grid(n, classes), stream, pass0_done));

  // split: the decided elements' range sums, and the candidates' lists
  const int groups         = (ranges + slot_group - 1) / slot_group;
  const int cgrid          = compact_sums_grid(n, classes);
  const std::int64_t chunk = compact_chunk(n, cgrid);
  device_buffer<key_t> seg_key(static_cast<std::int64_t>(classes) * n, stream);
  device_buffer<unsigned> seg_index(static_cast<std::int64_t>(classes) * n, stream);
  device_buffer<long long> seg_count(static_cast<std::int64_t>(classes) * cgrid * pass_warps, stream);
  device_buffer<double> dpart(static_cast<std::int64_t>(classes) * slot_group * cgrid, stream);
  device_buffer<long long> ipart(static_cast<std::int64_t>(classes) * 2 * slot_group * cgrid, stream);
  const std::int64_t dcells = static_cast<std::int64_t>(groups) * classes * slot_group;
  device_buffer<double> dres(2 * dcells, stream);  // decided, then candidates
  device_buffer<long long> ires(4 * dcells, stream);
  for (int g = 0; g < groups; ++g) {
    const bool first = g == 0;
    const compact_params p{keys, n, sel.boundary.data(), nb, g * slot_group, chunk, first ? seg_key.data() : nullptr,
                           first ? seg_index.data() : nullptr, seg_count.data(), dpart.data(), ipart.data()};
    QPROB_CUDA_TRY(launch_compact_sums(p, classes, cgrid, dres.data() + static_cast<std::int64_t>(g) * classes * slot_group,
                                       ires.data() + static_cast<std::int64_t>(g) * classes * 2 * slot_group, stream));
  }

  // the rest of the selection and the candidates' range sums, over the lists (read by the same grid)
  const key_population cand{seg_key.data(), seg_index.data(), seg_count.data(), n, chunk, cgrid * pass_warps};
  QPROB_CUDA_TRY(launch_select_passes(cand, st, 1, select_passes - 1, cgrid, stream));
  for (int g = 0; g < groups; ++g) {
    const group_sums_params p{cand, g * slot_group, true, sel.boundary.data(), nb, 0, bin_edges::upper_closed, dpart.data(), ipart.data()};
    QPROB_CUDA_TRY(launch_group_sums(p, classes, cgrid, dres.data() + dcells + static_cast<std::int64_t>(g) * classes * slot_group,
                                     ires.data() + 2 * dcells + static_cast<std::int64_t>(g) * classes * 2 * slot_group, stream));
  }
  const auto dh = dres.to_host();
  const auto ih = ires.to_host();
  std::vector<bin_sums> out(static_cast<std::size_t>(classes) * static_cast<std::size_t>(ranges));
  const auto dcell = static_cast<std::size_t>(dcells);
  for (int c = 0; c < classes; ++c) {
    for (int r = 0; r < ranges; ++r) {
      const std::size_t gc = static_cast<std::size_t>(r / slot_group) * static_cast<std::size_t>(classes) + static_cast<std::size_t>(c);
      const std::size_t s  = static_cast<std::size_t>(r % slot_group);
      const std::size_t ic = gc * 2 * slot_group + s, fc = ic + slot_group, vc = gc * slot_group + s;
      auto& o              = out[static_cast<std::size_t>(c) * static_cast<std::size_t>(ranges) + static_cast<std::size_t>(r)];
      o.count              = static_cast<double>(ih[ic] + ih[2 * dcell + ic]);
      o.hit                = static_cast<double>(ih[fc] + ih[2 * dcell + fc]);
      o.conf               = dh[vc] + dh[dcell + vc];
    }
  }
  return out;
}

/// Equal-width bin sums (count, conf sum, correct count) of `bins` bins under `edges` from conf keys, for
/// the slot groups first_group.. (slots of earlier groups are left zero). Synchronizes the stream.
inline std::vector<bin_sums> equal_width_sums(const key_t* keys, std::int64_t n, int bins, bin_edges edges, int first_group,
                                              cudaStream_t stream) {
  const int slots  = bin_slots(bins, edges);
  const int groups = (slots + slot_group - 1) / slot_group;
  std::vector<bin_sums> out(static_cast<std::size_t>(slots));
  if (first_group >= groups) {
    return out;
  }
  const int grid = group_sums_grid(n, 1, 0);
  const key_population all{keys, nullptr, nullptr, n, 0, 0};
  device_buffer<double> dpart(static_cast<std::int64_t>(slot_group) * grid, stream);
  device_buffer<long long> ipart(static_cast<std::int64_t>(2) * slot_group * grid, stream);
  device_buffer<double> dres(static_cast<std::int64_t>(groups) * slot_group, stream);
  device_buffer<long long> ires(static_cast<std::int64_t>(groups) * 2 * slot_group, stream);
  for (int g = first_group; g < groups; ++g) {
    const group_sums_params p{all, g * slot_group, false, nullptr, 0, bins, edges, dpart.data(), ipart.data()};
    QPROB_CUDA_TRY(launch_group_sums(p, 1, grid, dres.data() + static_cast<std::int64_t>(g) * slot_group,
                                     ires.data() + static_cast<std::int64_t>(g) * 2 * slot_group, stream));
  }
  const auto dh = dres.to_host();
  const auto ih = ires.to_host();
  for (int b = first_group * slot_group; b < slots; ++b) {
    const std::size_t g = static_cast<std::size_t>(b / slot_group), s = static_cast<std::size_t>(b % slot_group);
    out[static_cast<std::size_t>(b)].count = static_cast<double>(ih[g * 2 * slot_group + s]);
    out[static_cast<std::size_t>(b)].hit   = static_cast<double>(ih[g * 2 * slot_group + slot_group + s]);
    out[static_cast<std::size_t>(b)].conf  = dh[g * slot_group + s];
  }
  return out;
}

}  // namespace detail

/// All per-model metrics of one task on the device. Same results as compute_model_metrics_reference up to
/// the summation order (see docs/metrics.md, "Performance and determinism"). Queues everything on `stream`:
/// one fused pass over the inputs (validation, every moment, the first 16 calibration bins), then what the
/// ACE variant needs (Nixon: per-class probability keys and a radix selection of the equal-mass boundaries;
/// equal_mass_top_label: the same over the conf keys the fused pass wrote; uniform_average: bin sums over
/// the conf keys). Synchronizes the stream to read results back (Nixon and seed_compat also once after the
/// fused pass, for the validation result and K). Throws invalid_argument for invalid inputs, cuda_error on
/// CUDA errors. Requires ace_ranges <= 1023 and n <= 2^31 - 1.
[[nodiscard]] inline model_metrics compute_model_metrics(const device_choice_scores& s, const metric_options& opt, cudaStream_t stream) {
  using namespace detail;
  opt.validate();
  QPROB_CHECK(opt.ace_ranges <= 1023, "compute_model_metrics: ace_ranges=", opt.ace_ranges, " must be <= 1023 on the device");
  QPROB_CHECK(s.n >= 1, "metrics (device): needs at least one sample, got n=", s.n);
  QPROB_CHECK(s.n <= INT_MAX, "metrics (device): n=", s.n, " exceeds 2^31 - 1 samples");
  QPROB_CHECK(s.offsets != nullptr && s.loglik != nullptr && s.gold != nullptr, "metrics (device): null input pointer");
  QPROB_CHECK(opt.score != scoring::char_normalized || s.char_len != nullptr, "metrics (device): char_normalized scoring needs char_len");
  QPROB_CHECK(opt.score != scoring::token_normalized || s.token_len != nullptr, "metrics (device): token_normalized scoring needs token_len");
  const std::int64_t n = s.n;
  const int slots      = bin_slots(opt.calibration_bins, opt.edges);
  const bool top_label = opt.ace == ace_variant::equal_mass_top_label;
  const bool uniform   = opt.ace == ace_variant::uniform_average;
  const bool need_keys = top_label || uniform || slots > slot_group;

  // 1. the fused pass: validation, moments, calibration bins [0, 16), optional conf keys
  const int grid = sample_pass_grid(n, opt.score, s.char_len != nullptr);
  device_buffer<double> dpart(static_cast<std::int64_t>(d_fields) * grid, stream);
  device_buffer<long long> ipart(static_cast<std::int64_t>(i_fields) * grid, stream);
  device_buffer<double> dres(d_fields, stream);
  device_buffer<long long> ires(i_fields, stream);
  device_buffer<key_t> conf_keys(need_keys ? n : 0, stream);
  const sample_pass_params sp{s, opt.score, opt.calibration_bins, opt.edges, need_keys ? conf_keys.data() : nullptr, dpart.data(), ipart.data()};
  QPROB_CUDA_TRY(launch_sample_pass(sp, grid, dres.data(), ires.data(), stream));

  std::vector<long long> ih;
  const auto check_valid = [&] {
    if (ih[i_first_bad] < n) {
      report_invalid(s, nullptr, opt.score, ih[i_first_bad], stream);
    }
  };

  // 2. ACE
  double ace = nan_v;
  if (opt.ace == ace_variant::nixon || opt.ace == ace_variant::seed_compat) {
    ih = ires.to_host();  // validation result and K before reading choices by class
    check_valid();
    const int max_k = static_cast<int>(ih[i_max_k]);
    if (opt.ace == ace_variant::nixon) {
      device_buffer<key_t> class_keys(static_cast<std::int64_t>(max_k) * n, stream);
      equal_mass_selection sel(max_k, opt.ace_ranges, stream);
      unsigned* hist = max_k <= class_keys_hist_classes ? sel.pass0_hist() : nullptr;
      QPROB_CUDA_TRY(launch_class_keys(s, opt.score, max_k, class_keys.data(), hist, sel.pass0_stride(), stream));
      const auto cells  = equal_mass_sums(class_keys.data(), n, sel, hist != nullptr, stream);
      std::int64_t used = 0;
      double total      = 0;
      ace               = finish_ranges(cells, used, total);
    } else {
      const auto h = copy_to_host(s, stream);
      ace          = ace_seed_compat(h.view(), opt.score, opt.seed_ace_ranges, opt.seed_ece_bins);
    }
  } else if (top_label) {
    equal_mass_selection sel(1, opt.ace_ranges, stream);
    const auto cells  = equal_mass_sums(conf_keys.data(), n, sel, false, stream);
    std::int64_t used = 0;
    double total      = 0;
    ace               = finish_ranges(cells, used, total);
  } else if (uniform) {
    const auto sums = equal_width_sums(conf_keys.data(), n, opt.ace_ranges, opt.edges, 0, stream);
    ace             = finish_bins(sums, opt.ace_ranges, static_cast<double>(n)).uniform_average;
  }
  // calibration bins beyond the first 16 slots (more than 15 bins) from the conf keys
  std::vector<bin_sums> cal = slots > slot_group ? equal_width_sums(conf_keys.data(), n, opt.calibration_bins, opt.edges, 1, stream)
                                                 : std::vector<bin_sums>(static_cast<std::size_t>(slots));

  const auto dh = dres.to_host();
  if (ih.empty()) {
    ih = ires.to_host();
    check_valid();  // the ACE results above are discarded when the input was invalid
  }
  for (int b = 0; b < std::min(slots, slot_group); ++b) {
    auto& c = cal[static_cast<std::size_t>(b)];
    c.count = static_cast<double>(ih[static_cast<std::size_t>(i_bin_count + b)]);
    c.hit   = static_cast<double>(ih[static_cast<std::size_t>(i_bin_hit + b)]);
    c.conf  = dh[static_cast<std::size_t>(d_bins + b)];
  }
  const long long n_ok = ih[i_ok], n_sum = ih[i_sum], n_norm = ih[i_norm];

  model_metrics m;
  const double nn = static_cast<double>(n);
  m.n             = n;
  m.n_correct     = n_ok;
  m.acc           = static_cast<double>(n_sum) / nn;
  m.acc_stderr    = proportion_stderr(n_sum, n);
  m.acc_wilson    = wilson_interval(n_sum, n, opt.confidence_level);
  m.acc_bootstrap = bootstrap_proportion_interval(n_sum, n, opt.bootstrap_iterations, opt.bootstrap_seed, opt.confidence_level);
  if (s.char_len != nullptr) {
    m.acc_norm        = static_cast<double>(n_norm) / nn;
    m.acc_norm_stderr = proportion_stderr(n_norm, n);
    m.acc_norm_wilson = wilson_interval(n_norm, n, opt.confidence_level);
  }
  m.accuracy     = static_cast<double>(n_ok) / nn;
  m.conf         = dh[d_conf] / nn;
  m.conf_correct = n_ok > 0 ? dh[d_conf_ok] / static_cast<double>(n_ok) : nan_v;
  m.conf_err     = n_ok < n ? dh[d_conf_bad] / static_cast<double>(n - n_ok) : nan_v;
  m.conf_true    = dh[d_p_true] / nn;
  m.entropy      = dh[d_entropy] / nn;
  m.entropy_bits = m.entropy / std::log(2.0);
  m.brier        = dh[d_brier] / nn;
  m.nll          = dh[d_nll] / nn;
  auto ce        = finish_bins(cal, opt.calibration_bins, nn);
  m.ece          = ce.ece;
  m.mce          = ce.mce;
  m.rmsce        = ce.rmsce;
  m.reliability  = std::move(ce.bins);
  m.ace          = ace;
  return m;
}

namespace detail {

/// Per-sample paired quantities.
struct pair_record {
  double js, kl_pq, kl_qp, tf, tq, cf, cq;
  std::uint8_t flip, ok_f, ok_q;
};
struct pair_sums {
  double js = 0, jd = 0, kl_pq = 0, kl_qp = 0, tf = 0, tq = 0, d = 0;
  long long flips = 0, both = 0, full_only = 0, quant_only = 0, neither = 0;
};
struct pair_plus {
  QPROB_HOST_DEVICE pair_sums operator()(const pair_sums& a, const pair_sums& b) const {
    return {a.js + b.js, a.jd + b.jd, a.kl_pq + b.kl_pq, a.kl_qp + b.kl_qp, a.tf + b.tf, a.tq + b.tq, a.d + b.d,
            a.flips + b.flips, a.both + b.both, a.full_only + b.full_only, a.quant_only + b.quant_only, a.neither + b.neither};
  }
};
struct pair_to_sums {
  const pair_record* rec;
  QPROB_HOST_DEVICE pair_sums operator()(std::int64_t i) const {
    const pair_record r = rec[i];
    pair_sums s;
    s.js         = r.js;
    s.jd         = sqrt(r.js);
    s.kl_pq      = r.kl_pq;
    s.kl_qp      = r.kl_qp;
    s.tf         = r.tf;
    s.tq         = r.tq;
    s.d          = r.tf - r.tq;
    s.flips      = r.flip;
    s.both       = r.ok_f && r.ok_q;
    s.full_only  = r.ok_f && !r.ok_q;
    s.quant_only = !r.ok_f && r.ok_q;
    s.neither    = !r.ok_f && !r.ok_q;
    return s;
  }
};
/// Second pass: squared deviations of d from its mean, and the Appendix-B JS terms (need the first sums).
struct second_sums {
  double ss = 0, js_true = 0;
};
struct second_plus {
  QPROB_HOST_DEVICE second_sums operator()(const second_sums& a, const second_sums& b) const {
    return {a.ss + b.ss, a.js_true + b.js_true};
  }
};
struct pair_second {
  const pair_record* rec;
  const pair_sums* first;
  double n;
  QPROB_HOST_DEVICE second_sums operator()(std::int64_t i) const {
    const pair_record r = rec[i];
    const double mean   = first->d / n;
    const double dev    = (r.tf - r.tq) - mean;
    const double p = r.tf / first->tf, q = r.tq / first->tq, m = 0.5 * (p + q);
    double js = 0;
    if (p > 0) {
      js += 0.5 * p * log(p / m);
    }
    if (q > 0) {
      js += 0.5 * q * log(q / m);
    }
    return {dev * dev, js};
  }
};

__global__ void pair_kernel(device_choice_scores f, device_choice_scores q, scoring mode, double lo, int shift_bins, pair_record* rec,
                            double* js, int* sbin) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= f.n) {
    return;
  }
  const std::int64_t b = f.offsets[i], e = f.offsets[i + 1];
  const sample_eval ef = evaluate_sample(f.loglik, f.char_len, f.token_len, b, e, f.gold[i], mode);
  const sample_eval eq = evaluate_sample(q.loglik, f.char_len, f.token_len, b, e, f.gold[i], mode);
  const pair_eval pe   = evaluate_pair(f.loglik, q.loglik, f.char_len, f.token_len, b, e, mode);
  rec[i] = {pe.js, pe.kl_pq, pe.kl_qp, ef.p_true, eq.p_true, ef.conf, eq.conf, static_cast<std::uint8_t>(ef.pred != eq.pred),
            static_cast<std::uint8_t>(ef.correct), static_cast<std::uint8_t>(eq.correct)};
  js[i]   = pe.js;
  sbin[i] = shift_bin_index(ef.conf, shift_bins, lo);
}

/// Shift-bin value of a sorted position: count, Δconf in .conf, Δtrue in .hit; or squared deviations from
/// the bin means when `means` (per-bin first-pass sums) is given.
struct shift_value {
  const std::int64_t* order;
  const pair_record* rec;
  const int* sbin;
  const bin_sums* means;  // null in the first pass
  QPROB_HOST_DEVICE bin_sums operator()(std::int64_t j) const {
    const std::int64_t i = order[j];
    const pair_record r  = rec[i];
    const double dc = r.cq - r.cf, dt = r.tq - r.tf;
    if (means == nullptr) {
      return {1.0, dc, dt};
    }
    const bin_sums m = means[sbin[i]];
    const double ec = dc - m.conf / m.count, et = dt - m.hit / m.count;
    return {1.0, ec * ec, et * et};
  }
};

}  // namespace detail

/// All paired metrics of a full and a quantized model on the device (same samples: offsets and gold must
/// match, checked on the device). Wilcoxon ranks and the JS medians are finished on the host from copied
/// per-sample arrays; everything else is reduced on the device. Synchronizes `stream` to read back.
[[nodiscard]] inline paired_metrics compute_paired_metrics(const device_choice_scores& full,
                                                           const device_choice_scores& quant,
                                                           const metric_options& opt,
                                                           cudaStream_t stream) {
  using namespace detail;
  opt.validate();
  const int max_k = validate_device(full, &quant, opt.score, stream);
  const std::int64_t n = full.n;
  const double lo      = 1.0 / max_k;

  device_buffer<pair_record> rec(n, stream);
  device_buffer<double> js(n, stream);
  device_buffer<int> sbin(n, stream);
  pair_kernel<<<grid_for(n), block_threads, 0, stream>>>(full, quant, opt.score, lo, opt.shift_bins, rec.data(), js.data(), sbin.data());
  QPROB_CUDA_TRY(::qprob::detail::post_launch(stream));

  device_buffer<pair_sums> first(1, stream);
  const auto in1 = thrust::make_transform_iterator(thrust::make_counting_iterator<std::int64_t>(0), pair_to_sums{rec.data()});
  QPROB_CUDA_TRY(cub_two_phase(stream, [&](void* t, std::size_t& b) {
    return cub::DeviceReduce::Reduce(t, b, in1, first.data(), n, pair_plus{}, pair_sums{}, stream);
  }));
  device_buffer<second_sums> second(1, stream);
  const auto in2 = thrust::make_transform_iterator(thrust::make_counting_iterator<std::int64_t>(0),
                                                   pair_second{rec.data(), first.data(), static_cast<double>(n)});
  QPROB_CUDA_TRY(cub_two_phase(stream, [&](void* t, std::size_t& b) {
    return cub::DeviceReduce::Reduce(t, b, in2, second.data(), n, second_plus{}, second_sums{}, stream);
  }));

  // medians of JS: sort the per-sample values
  QPROB_CHECK(n <= INT_MAX, "compute_paired_metrics: n=", n, " exceeds the 32-bit sort size");
  device_buffer<double> js_sorted(n, stream);
  QPROB_CUDA_TRY(cub_two_phase(stream, [&](void* t, std::size_t& b) {
    return cub::DeviceRadixSort::SortKeys(t, b, js.data(), js_sorted.data(), static_cast<int>(n), 0, 64, stream);
  }));

  // confidence shift by bin, two passes
  device_buffer<std::int64_t> order, offsets;
  sort_by_key(sbin.data(), n, opt.shift_bins, order, offsets, stream);
  device_buffer<bin_sums> shift1(opt.shift_bins, stream), shift2(opt.shift_bins, stream);
  segmented_bin_sums(shift_value{order.data(), rec.data(), sbin.data(), nullptr}, opt.shift_bins, offsets.data(), shift1.data(), stream);
  segmented_bin_sums(shift_value{order.data(), rec.data(), sbin.data(), shift1.data()}, opt.shift_bins, offsets.data(), shift2.data(), stream);

  // per-sample true-class probabilities for the Wilcoxon ranks
  const auto recs = rec.to_host();  // synchronizes
  const auto f1   = first.to_host()[0];
  const auto f2   = second.to_host()[0];
  const auto s1   = shift1.to_host();
  const auto s2   = shift2.to_host();
  double mid[2];
  QPROB_CUDA_TRY(cudaMemcpyAsync(mid, js_sorted.data() + (n - 1) / 2, sizeof(double) * (n % 2 ? 1 : 2), cudaMemcpyDeviceToHost, stream));
  QPROB_CUDA_TRY(cudaStreamSynchronize(stream));

  paired_metrics r;
  const double nn          = static_cast<double>(n);
  r.n                      = n;
  r.jsd_mean               = f1.js / nn;
  r.js_distance_mean       = f1.jd / nn;
  r.jsd_median             = n % 2 ? mid[0] : 0.5 * (mid[0] + mid[1]);
  r.js_distance_median     = n % 2 ? std::sqrt(mid[0]) : 0.5 * (std::sqrt(mid[0]) + std::sqrt(mid[1]));
  r.true_class_jsd         = std::max(f2.js_true, 0.0);
  r.true_class_js_distance = std::sqrt(r.true_class_jsd);
  r.kl_full_quant          = f1.kl_pq / nn;
  r.kl_quant_full          = f1.kl_qp / nn;
  r.flip_rate              = static_cast<double>(f1.flips) / nn;
  r.both_correct           = f1.both;
  r.full_only              = f1.full_only;
  r.quant_only             = f1.quant_only;
  r.both_wrong             = f1.neither;
  r.mean_conf_true_shift   = -f1.d / nn;
  r.ttest_conf_true        = paired_t_test(f1.d / nn, n > 1 ? std::sqrt(f2.ss / (nn - 1)) : nan_v, n, opt.alpha);
  std::vector<double> tf(static_cast<std::size_t>(n)), tq(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < recs.size(); ++i) {
    tf[i] = recs[i].tf;
    tq[i] = recs[i].tq;
  }
  r.wilcoxon_conf_true = wilcoxon_signed_rank(tf, tq, opt.wilcoxon, opt.alpha);
  r.mcnemar            = mcnemar_test(r.full_only, r.quant_only, opt.mcnemar, opt.alpha);
  for (int b = 0; b < opt.shift_bins; ++b) {
    shift_bin sb;
    sb.lower   = shift_edge(b, opt.shift_bins, lo);
    sb.upper   = shift_edge(b + 1, opt.shift_bins, lo);
    const auto& a = s1[static_cast<std::size_t>(b)];
    sb.count   = static_cast<std::int64_t>(a.count);
    if (a.count > 0) {
      sb.mean_conf_shift = a.conf / a.count;
      sb.mean_true_shift = a.hit / a.count;
    }
    if (a.count > 1) {
      const double root_n = std::sqrt(a.count);
      sb.stderr_conf_shift = std::sqrt(s2[static_cast<std::size_t>(b)].conf / (a.count - 1)) / root_n;
      sb.stderr_true_shift = std::sqrt(s2[static_cast<std::size_t>(b)].hit / (a.count - 1)) / root_n;
    }
    r.conf_shift_by_bin.push_back(sb);
  }
  return r;
}

}  // namespace qprob::metrics
