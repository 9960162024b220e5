// SPDX-License-Identifier: Apache-2.0
#pragma once
// A quantized linear kept as codes on the device and multiplied by the fused kernel, behind one runtime type:
// what the scoring engine holds per block linear when engine_options::quantized_linears is `packed`
// (engine/engine.hpp). The weight stays at 4 or 8 bits (repacked once into int_gemm's mma layout, act-order
// columns sorted by group at that time) and every product dequantizes on the fly inside the tensor-core GEMM
// (quant/gemm.cuh). Semantics are the fp16 forward pass on the dequantized weights: float32 accumulation of
// x times fp16(scale * (code - zero)), one rounding of the result.
//
//   auto p = qprob::quant::pack_linear<P>(q, stream);   // q: a reference::quantized_weight (checkpoint layout)
//   if (p.linear) p.linear->multiply(x, y, stream);     // else p.reason says why (bits, shape, device)
// With a runtime policy: quant::dispatch_policy(policy, [&](auto tag) { return pack_linear<...>(q, stream); }).
#include <qprob/core/device_buffer.hpp>
#include <qprob/core/error.hpp>
#include <qprob/policy/name.hpp>
#include <qprob/quant/gemm.cuh>
#include <qprob/reference/rtn.hpp>

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>

namespace qprob::quant {

/// A packed (N, K) weight: y = x W^T for fp16 x.
class packed_linear {
public:
  virtual ~packed_linear() = default;
  [[nodiscard]] virtual std::int64_t n() const noexcept     = 0;  ///< output features
  [[nodiscard]] virtual std::int64_t k() const noexcept     = 0;  ///< input features
  [[nodiscard]] virtual std::int64_t bytes() const noexcept = 0;  ///< device bytes it holds
  /// y (M, N; rows may be strided) = x (M, K) W^T rounded to fp16. Queued on `stream`.
  virtual void multiply(device_view<const half_t, 2> x, device_view<half_t, 2> y, cudaStream_t stream) const = 0;
  /// y = x W^T in float32, or y + x W^T when `accumulate` (rounded once). Queued on `stream`.
  virtual void multiply(device_view<const half_t, 2> x, device_view<float, 2> y, bool accumulate, cudaStream_t stream) const = 0;
};

/// pack_linear's answer: the packed weight, or null and the reason it cannot be packed.
struct packed_or_reason {
  std::unique_ptr<packed_linear> linear;
  std::string reason;
};

namespace packed_detail {

template <quantized_policy P>
class mma_linear final : public packed_linear {
public:
  explicit mma_linear(mma_weight<P>&& w) : w_(std::move(w)) {}
  [[nodiscard]] std::int64_t n() const noexcept override { return w_.n; }
  [[nodiscard]] std::int64_t k() const noexcept override { return w_.k; }
  [[nodiscard]] std::int64_t bytes() const noexcept override {
    return w_.codes.bytes() + w_.scale_zero.bytes() + w_.order.bytes();
  }
  void multiply(device_view<const half_t, 2> x, device_view<half_t, 2> y, cudaStream_t stream) const override {
    int_gemm<P>(x, w_, y, stream);
  }
  void multiply(device_view<const half_t, 2> x, device_view<float, 2> y, bool accumulate, cudaStream_t stream) const override {
    int_gemm<P>(x, w_, y, stream, accumulate);
  }

private:
  mma_weight<P> w_;
};

}  // namespace packed_detail

/// Packs q (codes, scales, zero points and g_idx in the checkpoint layout of reference::quantized_weight) under P
/// for int_gemm; stream-ordered, and synchronised before returning (q's host vectors may go away). Null with the
/// reason when P or the shape is not one int_gemm implements, or the device is not sm_90 (the caller keeps the
/// dequantized weight then).
/// @throws invalid_argument when q's vectors do not have the sizes P gives its shape (a malformed weight).
template <quantized_policy P>
packed_or_reason pack_linear(const reference::quantized_weight& q, cudaStream_t stream) {
  if constexpr (!gemm_detail::gemm_bits<P>) {
    return {nullptr, std::string("the fused GEMM implements 4 and 8 bits with fp16, not ") + std::string(policy_name<P>())};
  } else {
    const auto n = q.n, k = q.k;
    const auto words = P::packed_words(k), groups = P::groups(k);
    QPROB_CHECK(n > 0 && k > 0 && static_cast<std::int64_t>(q.qweight.size()) == words * n &&
                    static_cast<std::int64_t>(q.scales.size()) == groups * n && static_cast<std::int64_t>(q.zeros.size()) == groups * n &&
                    (q.g_idx.empty() || static_cast<std::int64_t>(q.g_idx.size()) == k),
                "pack_linear: a [", n, ", ", k, "] weight under ", policy_name<P>(), " needs ", words * n, " qweight words, ", groups * n,
                " scales and zero points and an empty or ", k, "-long g_idx; got ", q.qweight.size(), ", ", q.scales.size(), ", ",
                q.zeros.size(), " and ", q.g_idx.size());
    if (!int_gemm_device_supported()) {
      return {nullptr, "the fused GEMM needs a device of compute capability 9.0 (wgmma)"};
    }
    if (!mma_layout_supported<P>(n, k, q.g_idx)) {
      return {nullptr, "the fused GEMM needs K % 64 == 0, N % 8 == 0, groups of a multiple of 32 columns and act-order groups of "
                       "exactly the group width; this weight is N=" + std::to_string(n) + ", K=" + std::to_string(k)};
    }
    const device_buffer<std::uint32_t> qw(std::span<const std::uint32_t>(q.qweight), stream);
    const device_buffer<half_t> sc(std::span<const half_t>(q.scales), stream);
    const device_buffer<std::uint8_t> z(std::span<const std::uint8_t>(q.zeros), stream);
    auto w = repack_for_mma<P>(qw.view(words, n), sc.view(groups, n), z.view(groups, n), q.g_idx, stream);
    QPROB_CUDA_TRY(cudaStreamSynchronize(stream));
    return {std::make_unique<packed_detail::mma_linear<P>>(std::move(w)), {}};
  }
}

}  // namespace qprob::quant

/// Explicit instantiation of pack_linear<P> (kernels/instances.txt "packed"): the fused GEMM's kernels for P.
#define QPROB_PACKED_INSTANTIATE(KEYWORD, P) \
  KEYWORD qprob::quant::packed_or_reason qprob::quant::pack_linear<P>(const qprob::reference::quantized_weight&, cudaStream_t)

#if defined(QPROB_USE_KERNELS_LIBRARY)
#  include <qprob/quant/detail/packed_instances.inc>
#endif
