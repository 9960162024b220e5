// SPDX-License-Identifier: Apache-2.0
#pragma once
// A readable, stable name for every policy, built at compile time: "fp16", "bf16", "int4_g128_sym",
// "int4_g128_sym_act", "int3_g128_asym", "int8_pc_sym", with a "_bf16" suffix when a quantized policy computes
// in bfloat16. Used for test names, benchmark labels, log lines and file names.

#include <qprob/policy/precision.hpp>

#include <array>
#include <string_view>
#include <type_traits>

namespace qprob {
namespace detail {

struct policy_name_buffer {
  std::array<char, 48> text{};
  int length = 0;

  constexpr void append(std::string_view s) {
    for (char c : s) {
      text[static_cast<std::size_t>(length++)] = c;
    }
  }
  constexpr void append_int(int v) {
    char digits[12] = {};
    int n           = 0;
    do {
      digits[n++] = static_cast<char>('0' + v % 10);
      v /= 10;
    } while (v > 0);
    while (n > 0) {
      text[static_cast<std::size_t>(length++)] = digits[--n];
    }
  }
};

template <precision_policy P>
constexpr policy_name_buffer make_policy_name() {
  policy_name_buffer b;
  constexpr bool bf16 = std::is_same_v<typename P::compute_type, bfloat16_t>;
  if constexpr (!P::is_quantized) {
    b.append(bf16 ? "bf16" : "fp16");
  } else {
    b.append("int");
    b.append_int(P::bits);
    if constexpr (P::group_size == per_channel) {
      b.append("_pc");
    } else {
      b.append("_g");
      b.append_int(P::group_size);
    }
    b.append(P::symmetric ? "_sym" : "_asym");
    if constexpr (P::act_order) {
      b.append("_act");
    }
    if constexpr (bf16) {
      b.append("_bf16");
    }
  }
  return b;
}

template <precision_policy P>
inline constexpr policy_name_buffer policy_name_storage = make_policy_name<P>();

}  // namespace detail

/// The policy's name; a view of static storage, valid for the whole program.
template <precision_policy P>
[[nodiscard]] constexpr std::string_view policy_name() noexcept {
  return {detail::policy_name_storage<P>.text.data(), static_cast<std::size_t>(detail::policy_name_storage<P>.length)};
}

}  // namespace qprob
