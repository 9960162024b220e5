// SPDX-License-Identifier: Apache-2.0
#pragma once
// The precision policy: one class template that says what the numbers of a (possibly quantized) weight mean
// -- bits, grouping, symmetry, act-order, compute and accumulate types -- and a concept that any user-written
// policy can satisfy. Kernels, the GPTQ solver and the forward pass are instantiated from a policy; how a
// kernel is *run* (tiles, threads) is a separate tuning type (policy/tuning.hpp) and never changes numerics.

#include <qprob/core/math.hpp>
#include <qprob/core/numeric.hpp>

#include <concepts>
#include <type_traits>

namespace qprob {

/// Group size meaning "one scale (and zero) per output channel, over the whole input dimension".
inline constexpr int per_channel = 0;

/// Bits of a float (unquantized) policy.
inline constexpr int float_bits = 16;

/// Largest supported quantization group (GPTQModel accepts 16 ... 1024).
inline constexpr int max_group_size = 1024;

/// A precision policy.
/// @tparam Bits      16 for float weights, or 2, 3, 4, 8 for packed integer codes.
/// @tparam GroupSize per_channel, or a power of two from 16 to 1024: consecutive input columns sharing a scale.
/// @tparam Symmetric true: zero point fixed at 2^(bits-1) (GPTQ's convention); false: a zero point per group.
/// @tparam ActOrder  true: GPTQ processes columns by decreasing Hessian diagonal and records a group index.
/// @tparam Compute   activation and dequantized-weight type: half_t or bfloat16_t.
/// @tparam Accum     accumulation type of matrix products: float.
template <int Bits, int GroupSize, bool Symmetric, bool ActOrder, class Compute = half_t, class Accum = float>
struct precision {
  static constexpr int bits       = Bits;
  static constexpr int group_size = GroupSize;
  static constexpr bool symmetric = Symmetric;
  static constexpr bool act_order = ActOrder;
  using compute_type              = Compute;
  using accum_type                = Accum;

  static_assert(Bits == float_bits || Bits == 8 || Bits == 4 || Bits == 3 || Bits == 2,
                "bits must be 16 (float weights) or 2, 3, 4 or 8 (packed integer codes); "
                "5, 6 and 7 bits have no packing or kernels in qprob");
  static_assert(GroupSize == per_channel || (is_pow2(GroupSize) && GroupSize >= 16 && GroupSize <= max_group_size),
                "group_size must be per_channel (0) or a power of two from 16 to 1024 "
                "(the sizes GPTQ checkpoints use and the int4 kernels tile by)");
  static_assert(Bits < float_bits || (GroupSize == per_channel && Symmetric && !ActOrder),
                "a float (16-bit) policy has no groups, zero points or column order: "
                "use group_size = per_channel, symmetric = true, act_order = false");
  static_assert(std::is_same_v<Compute, half_t> || std::is_same_v<Compute, bfloat16_t>,
                "compute_type must be qprob::half_t or qprob::bfloat16_t");
  static_assert(std::is_same_v<Accum, float>,
                "accum_type must be float: every matrix product accumulates in fp32");

  // ---- derived constants -----------------------------------------------------------------------------
  static constexpr bool is_quantized = Bits < float_bits;
  /// Number of integer codes, 2^bits (0 for float policies).
  static constexpr int levels = is_quantized ? (1 << Bits) : 0;
  /// Largest code, 2^bits - 1 (GPTQ's maxq).
  static constexpr int max_code = is_quantized ? levels - 1 : 0;
  /// Symmetric zero point, (maxq + 1) / 2, as in GPTQ/AutoGPTQ.
  static constexpr int symmetric_zero = is_quantized ? levels / 2 : 0;
  /// Codes are packed as a little-endian bitstream into 32-bit words along the input dimension. A pack
  /// block is the smallest whole number of words holding a whole number of codes: lcm(bits, 32) bits.
  /// For 2/4/8 bits that is one word of 16/8/4 codes; for 3 bits, three words of 32 codes (AutoGPTQ's layout).
  static constexpr int pack_block_bits   = is_quantized ? lcm(Bits, 32) : 32;
  static constexpr int pack_block_words  = pack_block_bits / 32;
  static constexpr int pack_block_values = is_quantized ? pack_block_bits / Bits : 1;
  /// Storage per weight in bits, counting one fp16 scale per group and, if asymmetric, one packed zero point
  /// per group (per-channel groups are amortised over the input dimension and counted as 0 here).
  static constexpr double bits_per_weight =
      !is_quantized ? 16.0
                    : Bits + (GroupSize == per_channel ? 0.0 : (16.0 + (Symmetric ? 0.0 : Bits)) / GroupSize);

  /// Input columns per group for a layer with `in_features` inputs.
  [[nodiscard]] QPROB_HOST_DEVICE static constexpr long long group_width(long long in_features) noexcept {
    return GroupSize == per_channel ? in_features : GroupSize;
  }
  /// Number of groups along the input dimension (the last one may be partial).
  [[nodiscard]] QPROB_HOST_DEVICE static constexpr long long groups(long long in_features) noexcept {
    return in_features == 0 ? 0 : ceil_div(in_features, group_width(in_features));
  }
  /// 32-bit words per output channel of packed codes (the input dimension padded to whole pack blocks).
  [[nodiscard]] QPROB_HOST_DEVICE static constexpr long long packed_words(long long in_features) noexcept {
    return ceil_div(in_features, static_cast<long long>(pack_block_values)) * pack_block_words;
  }
};

/// What any precision policy must provide. The invariants live in the template above (and in the
/// static_asserts of each op); the concept only checks that the members exist with usable types.
template <class P>
concept precision_policy = requires {
  { P::bits } -> std::convertible_to<int>;
  { P::group_size } -> std::convertible_to<int>;
  { P::symmetric } -> std::convertible_to<bool>;
  { P::act_order } -> std::convertible_to<bool>;
  { P::is_quantized } -> std::convertible_to<bool>;
  { P::max_code } -> std::convertible_to<int>;
  { P::pack_block_words } -> std::convertible_to<int>;
  { P::pack_block_values } -> std::convertible_to<int>;
  typename P::compute_type;
  typename P::accum_type;
};

/// Policies whose weights are packed integer codes.
template <class P>
concept quantized_policy = precision_policy<P> && P::is_quantized;

}  // namespace qprob
