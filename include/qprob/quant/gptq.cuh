// SPDX-License-Identifier: Apache-2.0
#pragma once
// GPTQ on the GPU: definitions of the API in quant/gptq.hpp, following reference/gptq.hpp step for step.
//
// Data stay on the device in float32: the weight W (N, K), the Hessian and its factors (K, K). The host drives
// the column blocks:
//   gptq_group_params_kernel  scale/zero for the groups that start in the block (warp per row and group)
//   gptq_block_kernel         the sequential part: one warp per row, lane l holding columns 4l..4l+3 of the
//                             block in registers; for each column the value is broadcast, quantized, and its
//                             error propagated along U's row to the columns after it. Rows are independent, so
//                             N warps run the block's 128 steps in parallel.
//   cublasSgemm               the lazy update of every column after the block: W[:, i2:] -= Err * U[block, i2:]
// cuSOLVER factors H + damp*I (retrying with more dampening if it is not positive definite), inverts it and
// factors the inverse; the Cholesky factor of H^-1 that cuSOLVER leaves in column-major lower storage is,
// read row-major, exactly GPTQ's upper factor U (H^-1 = U^T U) in its upper triangle, which is all we read.

#include <qprob/core/cublas.hpp>
#include <qprob/core/cuda_check.hpp>
#include <qprob/core/device_buffer.hpp>
#include <qprob/core/launch.hpp>
#include <qprob/core/numeric.cuh>
#include <qprob/quant/gptq.hpp>
#include <qprob/quant/rtn.cuh>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

namespace qprob::quant {
namespace detail {

constexpr int gptq_warps_per_block = 8;
constexpr int gptq_max_block_size  = 128;  // 32 lanes x 4 columns

template <class T>
constexpr cudaDataType_t cuda_data_type() {
  if constexpr (std::is_same_v<T, half_t>) {
    return CUDA_R_16F;
  } else {
    static_assert(std::is_same_v<T, bfloat16_t>, "Hessian inputs are half_t or bfloat16_t");
    return CUDA_R_16BF;
  }
}

__global__ inline void scale_kernel(float* data, std::int64_t count, float factor) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) {
    data[i] *= factor;
  }
}

template <class T>
__global__ void to_float_kernel(const T* src, std::int64_t ld, std::int64_t n, std::int64_t k, float* dst) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n * k) {
    dst[i] = qprob::detail::to_float_device(src[(i / k) * ld + i % k]);
  }
}

/// Dead inputs: H[j][j] == 0 becomes 1 and the column of W becomes 0 (marks them in `dead`).
__global__ inline void dead_columns_kernel(float* h, std::int64_t k, float* w, std::int64_t n, std::uint8_t* dead) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * k) {
    return;
  }
  const std::int64_t j = i % k;
  if (h[j * k + j] == 0.0f) {
    w[i] = 0.0f;
    if (i / k == 0) {
      dead[j] = 1;
    }
  }
}

__global__ inline void fix_dead_diagonal_kernel(float* h, std::int64_t k, const std::uint8_t* dead) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < k && dead[j]) {
    h[j * k + j] = 1.0f;
  }
}

/// dst[r][c] = src[r][perm[c]] for (rows, k); with `both`, dst[r][c] = src[perm[r]][perm[c]].
__global__ inline void permute_kernel(const float* src, float* dst, std::int64_t rows, std::int64_t k,
                                      const std::int32_t* perm, bool both) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * k) {
    return;
  }
  const std::int64_t r = i / k;
  const std::int64_t c = i % k;
  dst[i]               = src[(both ? perm[r] : r) * k + perm[c]];
}

__global__ inline void add_diagonal_kernel(float* h, std::int64_t k, float value) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < k) {
    h[j * k + j] += value;
  }
}

struct gptq_params_args {
  const float* w;  // (n, k) in processed order
  std::int64_t n;
  std::int64_t k;
  std::int64_t first_group;  // groups [first_group, first_group + group_count) start at g * width
  std::int64_t group_count;
  std::int64_t width;        // group width in columns
  half_t* scales;            // (groups, n)
  std::uint8_t* zeros;
};

/// Scale and zero point per (row, group) from the current weights: one warp per pair.
template <quantized_policy P>
__global__ void __launch_bounds__(gptq_warps_per_block * 32) gptq_group_params_kernel(gptq_params_args a) {
  const int lane            = static_cast<int>(threadIdx.x % 32);
  const std::int64_t item   = static_cast<std::int64_t>(blockIdx.x) * gptq_warps_per_block + threadIdx.x / 32;
  if (item >= a.group_count * a.n) {
    return;
  }
  const std::int64_t g   = a.first_group + item / a.n;
  const std::int64_t row = item % a.n;
  const std::int64_t c0  = g * a.width;
  const std::int64_t c1  = c0 + a.width < a.k ? c0 + a.width : a.k;
  float lo = INFINITY;
  float hi = -INFINITY;
  for (std::int64_t c = c0 + lane; c < c1; c += 32) {
    const float x = a.w[row * a.k + c];
    lo            = fminf(lo, x);
    hi            = fmaxf(hi, x);
  }
  QPROB_UNROLL
  for (int offset = 16; offset > 0; offset /= 2) {
    lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, offset));
    hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, offset));
  }
  if (lane == 0) {
    half_t scale;
    int zero;
    params_from_range<P>(lo, hi, scale, zero);
    a.scales[g * a.n + row] = scale;
    a.zeros[g * a.n + row]  = static_cast<std::uint8_t>(zero);
  }
}

struct gptq_block_args {
  const float* w;             // (n, k) processed order, updated up to this block
  std::int64_t n;
  std::int64_t k;
  std::int64_t i1;            // first column of the block
  int count;                  // columns in the block, <= 128
  const float* u;             // row-major view of the factor: U[i][j] = u[i * k + j] for j >= i
  const std::int32_t* group;  // (k) group of each processed position
  const half_t* scales;
  const std::uint8_t* zeros;
  std::uint8_t* codes;        // (n, k) processed order
  float* err;                 // (n, count) scaled errors of the block, for the lazy update
  double* loss;               // (n) per-row GPTQ loss, accumulated over blocks
};

template <quantized_policy P>
__global__ void __launch_bounds__(gptq_warps_per_block * 32) gptq_block_kernel(gptq_block_args a) {
  constexpr unsigned full = 0xffffffffu;
  const int lane          = static_cast<int>(threadIdx.x % 32);
  const std::int64_t row  = static_cast<std::int64_t>(blockIdx.x) * gptq_warps_per_block + threadIdx.x / 32;
  if (row >= a.n) {
    return;  // row is uniform across the warp, so whole warps leave
  }
  // Lane l holds columns 4l .. 4l+3 of the block. Register arrays are indexed with constants only (the
  // selects below), so they stay in registers.
  float w[4];
  float e[4]          = {0, 0, 0, 0};
  std::uint32_t q4[4] = {0, 0, 0, 0};
  QPROB_UNROLL
  for (int s = 0; s < 4; ++s) {
    const int j = 4 * lane + s;
    w[s]        = j < a.count ? a.w[row * a.k + a.i1 + j] : 0.0f;
  }
  double loss  = 0;
  int cached_g = -1;
  float scale  = 0;
  float zero   = 0;
  for (int i = 0; i < a.count; ++i) {
    const int owner = i >> 2;
    const int slot  = i & 3;
    const float mine = slot == 0 ? w[0] : slot == 1 ? w[1] : slot == 2 ? w[2] : w[3];
    const float x    = __shfl_sync(full, mine, owner);
    const std::int64_t pos = a.i1 + i;
    const int g            = a.group[pos];
    if (g != cached_g) {
      cached_g = g;
      scale    = __half2float(__ushort_as_half(a.scales[g * a.n + row].bits));
      zero     = static_cast<float>(a.zeros[g * a.n + row]);
    }
    const float q   = fminf(fmaxf(round_quotient(x, scale) + zero, 0.0f), static_cast<float>(P::max_code));
    const float deq = scale * (q - zero);  // exact: see dequantize_kernel
    const float d   = a.u[pos * a.k + pos];
    const float err = __fdiv_rn(x - deq, d);
    if (lane == owner) {
      QPROB_UNROLL
      for (int s = 0; s < 4; ++s) {
        if (s == slot) {
          e[s]  = err;
          q4[s] = static_cast<std::uint32_t>(q);
        }
      }
    }
    if (lane == 0) {
      const double diff = static_cast<double>(x) - static_cast<double>(deq);
      loss += diff * diff / (static_cast<double>(d) * d) / 2;
    }
    const float* urow = a.u + pos * a.k + a.i1;
    QPROB_UNROLL
    for (int s = 0; s < 4; ++s) {
      const int j = 4 * lane + s;
      if (j > i && j < a.count) {
        w[s] = fmaf(-err, __ldg(urow + j), w[s]);
      }
    }
  }
  QPROB_UNROLL
  for (int s = 0; s < 4; ++s) {
    const int j = 4 * lane + s;
    if (j < a.count) {
      a.codes[row * a.k + a.i1 + j]  = static_cast<std::uint8_t>(q4[s]);
      a.err[row * a.count + j]       = e[s];
    }
  }
  if (lane == 0) {
    a.loss[row] += loss;
  }
}

struct gptq_pack_args {
  const std::uint8_t* codes;      // (n, k) processed order
  const std::int32_t* position;   // (k) processed position of natural column c
  const std::int32_t* group;      // (k) group of processed position
  const half_t* scales;
  const std::uint8_t* zeros;
  std::int64_t n;
  std::int64_t k;
  std::uint32_t* qweight;         // (packed_words(k), n)
};

/// Packs codes into natural column order: one thread per (pack block, row), consecutive threads on
/// consecutive rows, so the word stores are coalesced.
template <quantized_policy P>
__global__ void gptq_pack_kernel(gptq_pack_args a) {
  const std::int64_t row   = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const std::int64_t block = blockIdx.y;
  if (row >= a.n) {
    return;
  }
  std::uint32_t codes[P::pack_block_values];
  QPROB_UNROLL
  for (int j = 0; j < P::pack_block_values; ++j) {
    const std::int64_t c = block * P::pack_block_values + j;
    codes[j]             = c < a.k ? a.codes[row * a.k + a.position[c]] : 0u;
  }
  std::uint32_t words[P::pack_block_words];
  pack_block<P>(codes, words);
  QPROB_UNROLL
  for (int i = 0; i < P::pack_block_words; ++i) {
    a.qweight[(block * P::pack_block_words + i) * a.n + row] = words[i];
  }
}

/// Dequantized weights in natural order, and g_idx.
template <quantized_policy P>
__global__ void gptq_unpermute_kernel(gptq_pack_args a, typename P::compute_type* deq, std::int32_t* g_idx) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= a.n * a.k) {
    return;
  }
  const std::int64_t row = i / a.k;
  const std::int64_t c   = i % a.k;
  const std::int32_t pos = a.position[c];
  const std::int32_t g   = a.group[pos];
  if (g_idx != nullptr && row == 0) {
    g_idx[c] = g;
  }
  if (deq != nullptr) {
    const float scale = __half2float(__ushort_as_half(a.scales[g * a.n + row].bits));
    const float zero  = static_cast<float>(a.zeros[g * a.n + row]);
    deq[i] = qprob::detail::from_float_device<typename P::compute_type>(scale * (static_cast<float>(a.codes[row * a.k + pos]) - zero));
  }
}

inline unsigned blocks_for(std::int64_t count, int threads) {
  return static_cast<unsigned>(ceil_div(count, static_cast<std::int64_t>(threads)));
}

}  // namespace detail

// ---- Hessian accumulation ------------------------------------------------------------------------------------

template <class T>
hessian_accumulator<T>::hessian_accumulator(std::int64_t k, cudaStream_t stream)
    : k_(k), stream_(stream), sum_(k * k, stream), blas_(nullptr) {
  QPROB_CHECK(k > 0, "hessian_accumulator: k=", k, " must be positive");
  sum_.fill_bytes(0);
  cublasHandle_t h = nullptr;
  QPROB_CUBLAS_TRY(cublasCreate(&h));
  blas_ = h;
  QPROB_CUBLAS_TRY(cublasSetStream(h, stream));
}

template <class T>
hessian_accumulator<T>::~hessian_accumulator() {
  if (blas_ != nullptr) {
    (void)cublasDestroy(static_cast<cublasHandle_t>(blas_));
  }
}

template <class T>
void hessian_accumulator<T>::add(device_view<const T, 2> x) {
  QPROB_CHECK(!scaled_, "hessian_accumulator::add after hessian(): the sum has already been scaled");
  QPROB_CHECK_EQ(x.shape(1), k_, "hessian_accumulator::add: inputs must have k columns");
  QPROB_CHECK(x.stride(1) == 1, "hessian_accumulator::add: input rows must be contiguous");
  if (x.shape(0) == 0) {
    return;
  }
  // Row-major X (t, k) is column-major X^T (k, t); S += X^T X is the column-major (k, k) product A A^T with
  // A = X^T. fp16 x fp16 products are exact in fp32, and cuBLAS accumulates in fp32 (COMPUTE_32F).
  const float one = 1.0f;
  QPROB_CUBLAS_TRY(cublasGemmEx(static_cast<cublasHandle_t>(blas_), CUBLAS_OP_N, CUBLAS_OP_T, static_cast<int>(k_),
                                static_cast<int>(k_), static_cast<int>(x.shape(0)), &one, x.data(),
                                detail::cuda_data_type<T>(), static_cast<int>(x.stride(0)), x.data(),
                                detail::cuda_data_type<T>(), static_cast<int>(x.stride(0)), &one, sum_.data(),
                                CUDA_R_32F, static_cast<int>(k_), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  tokens_ += x.shape(0);
}

template <class T>
device_view<const float, 2> hessian_accumulator<T>::hessian() {
  QPROB_CHECK(tokens_ > 0, "hessian_accumulator::hessian: no calibration token was added");
  if (!scaled_) {
    detail::scale_kernel<<<detail::blocks_for(k_ * k_, 256), 256, 0, stream_>>>(sum_.data(), k_ * k_,
                                                                                 static_cast<float>(2.0 / static_cast<double>(tokens_)));
    QPROB_CUDA_TRY(qprob::detail::post_launch(stream_));
    scaled_ = true;
  }
  return std::as_const(sum_).view(k_, k_);
}

// ---- the solver -------------------------------------------------------------------------------------------

template <quantized_policy P>
gptq_report gptq_quantize(device_view<const typename P::compute_type, 2> w,
                          device_view<const float, 2> hessian,
                          device_view<std::uint32_t, 2> qweight,
                          device_view<half_t, 2> scales,
                          device_view<std::uint8_t, 2> zeros,
                          std::int32_t* maybe_g_idx,
                          typename P::compute_type* maybe_dequantized,
                          const gptq_options& options,
                          cudaStream_t stream) {
  const std::int64_t n      = w.shape(0);
  const std::int64_t k      = w.shape(1);
  const std::int64_t groups = P::groups(k);
  QPROB_CHECK(w.stride(1) == 1, "gptq_quantize: weight rows must be contiguous");
  check_shape(hessian, "gptq_quantize: hessian", k, k);
  QPROB_CHECK(hessian.is_contiguous(), "gptq_quantize: the Hessian must be dense");
  check_shape(qweight, "gptq_quantize: qweight", P::packed_words(k), n);
  check_shape(scales, "gptq_quantize: scales", groups, n);
  check_shape(zeros, "gptq_quantize: zeros", groups, n);
  QPROB_CHECK(!P::act_order || maybe_g_idx != nullptr, "gptq_quantize: act-order policy ", policy_name<P>(),
              " needs a g_idx output");
  QPROB_CHECK(options.block_size > 0 && options.block_size <= detail::gptq_max_block_size, "gptq_quantize: block_size=",
              options.block_size, " must be in [1, ", detail::gptq_max_block_size, "]");
  QPROB_CHECK(options.damp_percent > 0, "gptq_quantize: damp_percent=", options.damp_percent, " must be positive");
  QPROB_CHECK(k <= (std::int64_t{1} << 31) / 1 && n * k < (std::int64_t{1} << 40), "gptq_quantize: layer too large");
  gptq_report report;
  if (n == 0 || k == 0) {
    return report;
  }
  constexpr int threads = 256;
  const int ik          = static_cast<int>(k);

  // Working copies in float32: W (n, k) and H (k, k).
  device_buffer<float> wf(n * k, stream);
  detail::to_float_kernel<<<detail::blocks_for(n * k, threads), threads, 0, stream>>>(w.data(), w.stride(0), n, k, wf.data());
  QPROB_CUDA_TRY(qprob::detail::post_launch(stream));
  device_buffer<float> h(k * k, stream);
  QPROB_CUDA_TRY(cudaMemcpyAsync(h.data(), hessian.data(), static_cast<std::size_t>(h.bytes()), cudaMemcpyDeviceToDevice, stream));

  const std::int64_t gw = P::group_width(k);
  auto launch_params = [&](const float* src, std::int64_t first, std::int64_t count) {
    const detail::gptq_params_args a{src, n, k, first, count, gw, scales.data(), zeros.data()};
    detail::gptq_group_params_kernel<P>
        <<<detail::blocks_for(count * n, detail::gptq_warps_per_block), detail::gptq_warps_per_block * 32, 0, stream>>>(a);
    QPROB_CUDA_TRY(qprob::detail::post_launch(stream));
  };
  // 1. per-channel parameters from the original weights.
  if constexpr (P::group_size == per_channel) {
    launch_params(wf.data(), 0, 1);
  }
  // 2. dead inputs.
  device_buffer<std::uint8_t> dead(k, stream);
  dead.fill_bytes(0);
  detail::dead_columns_kernel<<<detail::blocks_for(n * k, threads), threads, 0, stream>>>(h.data(), k, wf.data(), n, dead.data());
  QPROB_CUDA_TRY(qprob::detail::post_launch(stream));
  detail::fix_dead_diagonal_kernel<<<detail::blocks_for(k, threads), threads, 0, stream>>>(h.data(), k, dead.data());
  QPROB_CUDA_TRY(qprob::detail::post_launch(stream));
  // 3. static groups, natural order.
  if (options.static_groups && P::group_size != per_channel) {
    launch_params(wf.data(), 0, groups);
  }
  // 4. act-order: the diagonal comes to the host once (K floats), for the permutation and the dampening.
  std::vector<float> diag(static_cast<std::size_t>(k));
  QPROB_CUDA_TRY(cudaMemcpy2DAsync(diag.data(), sizeof(float), h.data(), static_cast<std::size_t>(k + 1) * sizeof(float),
                                   sizeof(float), static_cast<std::size_t>(k), cudaMemcpyDeviceToHost, stream));
  const auto dead_host = dead.to_host();  // synchronizes: diag is ready too
  report.dead_columns  = std::count(dead_host.begin(), dead_host.end(), std::uint8_t{1});
  std::vector<std::int32_t> perm(static_cast<std::size_t>(k));
  std::iota(perm.begin(), perm.end(), 0);
  if constexpr (P::act_order) {
    std::stable_sort(perm.begin(), perm.end(), [&](std::int32_t a, std::int32_t b) { return diag[a] > diag[b]; });
    device_buffer<std::int32_t> d_perm(std::span<const std::int32_t>(perm), stream);
    device_buffer<float> tmp(n * k, stream);
    detail::permute_kernel<<<detail::blocks_for(n * k, threads), threads, 0, stream>>>(wf.data(), tmp.data(), n, k, d_perm.data(), false);
    QPROB_CUDA_TRY(qprob::detail::post_launch(stream));
    wf = std::move(tmp);
    device_buffer<float> htmp(k * k, stream);
    detail::permute_kernel<<<detail::blocks_for(k * k, threads), threads, 0, stream>>>(h.data(), htmp.data(), k, k, d_perm.data(), true);
    QPROB_CUDA_TRY(qprob::detail::post_launch(stream));
    h = std::move(htmp);
  }
  std::vector<std::int32_t> group(static_cast<std::size_t>(k));
  std::vector<std::int32_t> position(static_cast<std::size_t>(k));
  for (std::int64_t pos = 0; pos < k; ++pos) {
    std::int64_t g = 0;
    if constexpr (P::group_size != per_channel) {
      g = (options.static_groups && P::act_order ? perm[pos] : pos) / P::group_size;
    }
    group[pos]          = static_cast<std::int32_t>(g);
    position[perm[pos]] = static_cast<std::int32_t>(pos);
  }
  device_buffer<std::int32_t> d_group(std::span<const std::int32_t>(group), stream);
  device_buffer<std::int32_t> d_position(std::span<const std::int32_t>(position), stream);

  // 5-6. dampening (raised until H + damp*I factors), inverse, factor of the inverse.
  double mean_diag = 0;
  for (float d : diag) {
    mean_diag += d == 0.0f ? 1.0 : d;  // dead inputs count as 1, as after step 2
  }
  mean_diag /= static_cast<double>(k);
  cusolver_handle solver(stream);
  device_buffer<float> hf(k * k, stream);
  device_buffer<int> info(1, stream);
  int lwork = 0;
  QPROB_CUSOLVER_TRY(cusolverDnSpotrf_bufferSize(solver.get(), CUBLAS_FILL_MODE_LOWER, ik, hf.data(), ik, &lwork));
  int lwork_inv = 0;
  QPROB_CUSOLVER_TRY(cusolverDnSpotri_bufferSize(solver.get(), CUBLAS_FILL_MODE_LOWER, ik, hf.data(), ik, &lwork_inv));
  device_buffer<float> work(std::max(lwork, lwork_inv) + 1, stream);
  // cuSOLVER's potrf can report success on an indefinite matrix when a pivot turns into NaN (NaN <= 0 is
  // false), seen on an H100 with CUDA 13.0; so every factor's diagonal is checked on the host (K floats).
  std::vector<float> factor_diag(static_cast<std::size_t>(k));
  const auto factor_ok = [&](int solver_info) {
    if (solver_info != 0) {
      return false;
    }
    QPROB_CUDA_TRY(cudaMemcpy2DAsync(factor_diag.data(), sizeof(float), hf.data(), static_cast<std::size_t>(k + 1) * sizeof(float),
                                     sizeof(float), static_cast<std::size_t>(k), cudaMemcpyDeviceToHost, stream));
    QPROB_CUDA_TRY(cudaStreamSynchronize(stream));
    return std::all_of(factor_diag.begin(), factor_diag.end(), [](float v) { return std::isfinite(v) && v > 0.0f; });
  };
  double damp = options.damp_percent;
  for (int attempt = 0;; ++attempt) {
    QPROB_CUDA_TRY(cudaMemcpyAsync(hf.data(), h.data(), static_cast<std::size_t>(h.bytes()), cudaMemcpyDeviceToDevice, stream));
    detail::add_diagonal_kernel<<<detail::blocks_for(k, threads), threads, 0, stream>>>(hf.data(), k, static_cast<float>(damp * mean_diag));
    QPROB_CUDA_TRY(qprob::detail::post_launch(stream));
    QPROB_CUSOLVER_TRY(cusolverDnSpotrf(solver.get(), CUBLAS_FILL_MODE_LOWER, ik, hf.data(), ik, work.data(), lwork, info.data()));
    if (factor_ok(info.to_host()[0])) {
      break;
    }
    QPROB_CHECK(attempt < options.max_damp_retries, "gptq_quantize: the Hessian is not positive definite even with damp_percent=",
                damp, " after ", attempt + 1, " attempts");
    report.warnings.push_back(qprob::detail::concat("Cholesky factorization failed with damp_percent=", damp, "; retrying with ",
                                                    damp + options.damp_auto_increment));
    damp += options.damp_auto_increment;
    ++report.damp_retries;
  }
  report.damp_percent = damp;
  QPROB_CUSOLVER_TRY(cusolverDnSpotri(solver.get(), CUBLAS_FILL_MODE_LOWER, ik, hf.data(), ik, work.data(), lwork_inv, info.data()));
  QPROB_CHECK(info.to_host()[0] == 0, "gptq_quantize: inverting the damped Hessian failed (potri info=", info.to_host()[0], ")");
  QPROB_CUSOLVER_TRY(cusolverDnSpotrf(solver.get(), CUBLAS_FILL_MODE_LOWER, ik, hf.data(), ik, work.data(), lwork, info.data()));
  if (const int failed = info.to_host()[0]; !factor_ok(failed)) {
    throw invalid_argument(qprob::detail::concat("gptq_quantize: the inverse of the damped Hessian (damp_percent=", damp, ", k=", k,
                                                 ") could not be factored in float32 (potrf info=", failed,
                                                 "); raise damp_percent or use more calibration data"));
  }
  h = device_buffer<float>();  // the undamped copy is no longer needed
  const float* u = hf.data();

  // 7. the blocked column loop.
  cublas_handle blas(stream);
  const int bs = options.block_size;
  device_buffer<std::uint8_t> codes(n * k, stream);
  device_buffer<float> err(n * bs, stream);
  device_buffer<double> loss(n, stream);
  loss.fill_bytes(0);
  for (std::int64_t i1 = 0; i1 < k; i1 += bs) {
    const std::int64_t i2 = std::min<std::int64_t>(i1 + bs, k);
    const int count       = static_cast<int>(i2 - i1);
    if (!options.static_groups && P::group_size != per_channel) {
      const std::int64_t first = ceil_div(i1, gw);
      const std::int64_t last  = ceil_div(i2, gw);  // groups starting in [i1, i2)
      if (last > first) {
        launch_params(wf.data(), first, last - first);
      }
    }
    const detail::gptq_block_args a{wf.data(), n, k, i1, count, u, d_group.data(), scales.data(), zeros.data(),
                                    codes.data(), err.data(), loss.data()};
    detail::gptq_block_kernel<P><<<detail::blocks_for(n, detail::gptq_warps_per_block), detail::gptq_warps_per_block * 32, 0, stream>>>(a);
    QPROB_CUDA_TRY(qprob::detail::post_launch(stream));
    if (i2 < k) {
      // Row-major W[:, i2:] (n, k - i2) -= Err (n, count) * U[i1:i2, i2:] (count, k - i2), written as the
      // column-major product W^T -= U^T Err^T (see the file comment for why u is U read row-major).
      const float minus_one = -1.0f;
      const float one       = 1.0f;
      QPROB_CUBLAS_TRY(cublasSgemm(blas.get(), CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(k - i2), static_cast<int>(n), count,
                                   &minus_one, u + i1 * k + i2, ik, err.data(), count, &one, wf.data() + i2, ik));
    }
  }

  // 8. natural order: packed codes, g_idx, dequantized weights.
  const detail::gptq_pack_args pa{codes.data(), d_position.data(), d_group.data(), scales.data(), zeros.data(), n, k, qweight.data()};
  const dim3 pack_grid(detail::blocks_for(n, 128), static_cast<unsigned>(P::packed_words(k) / P::pack_block_words));
  detail::gptq_pack_kernel<P><<<pack_grid, 128, 0, stream>>>(pa);
  QPROB_CUDA_TRY(qprob::detail::post_launch(stream));
  if (maybe_g_idx != nullptr || maybe_dequantized != nullptr) {
    detail::gptq_unpermute_kernel<P><<<detail::blocks_for(n * k, threads), threads, 0, stream>>>(pa, maybe_dequantized, maybe_g_idx);
    QPROB_CUDA_TRY(qprob::detail::post_launch(stream));
  }
  const auto row_loss = loss.to_host();  // synchronizes the stream
  for (double l : row_loss) {
    report.loss += l;
  }
  return report;
}

}  // namespace qprob::quant

#if defined(QPROB_USE_KERNELS_LIBRARY)
#  include <qprob/quant/detail/gptq_instances.inc>
#  include <qprob/quant/detail/hessian_instances.inc>
#endif
