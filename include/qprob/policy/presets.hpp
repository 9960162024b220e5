// SPDX-License-Identifier: Apache-2.0
#pragma once
// The policies qprob ships instantiated (kernels/instances.txt lists which ops are prebuilt for which), named
// after what a paper or a checkpoint on the hub would call them.

#include <qprob/policy/name.hpp>
#include <qprob/policy/precision.hpp>

namespace qprob::policies {

using fp16 = precision<16, per_channel, true, false, half_t>;
using bf16 = precision<16, per_channel, true, false, bfloat16_t>;

/// 8-bit weights, one scale per output channel (RTN int8 baselines, LLM.int8-style weight storage).
using int8_pc = precision<8, per_channel, true, false>;
using int8_g128 = precision<8, 128, true, false>;
/// Proskurina et al. 2024 (AutoGPTQ defaults with desc_act=False): 4 bits, group 128, symmetric.
using int4_g128 = precision<4, 128, true, false>;
using int4_g128_act  = precision<4, 128, true, true>;
using int4_g128_asym = precision<4, 128, false, false>;
using int4_g32  = precision<4, 32, true, false>;
using int4_g64_asym = precision<4, 64, false, false>;
using int4_pc   = precision<4, per_channel, true, false>;
using int4_g128_bf16 = precision<4, 128, true, false, bfloat16_t>;
using int3_g128 = precision<3, 128, true, false>;
using int2_g64  = precision<2, 64, true, false>;
using int2_g128 = precision<2, 128, true, false>;

// Each preset is checked right where it is defined.
static_assert(precision_policy<fp16> && precision_policy<bf16>);
static_assert(quantized_policy<int8_pc> && quantized_policy<int8_g128>);
static_assert(quantized_policy<int4_g128> && quantized_policy<int4_g128_act> && quantized_policy<int4_g128_asym>);
static_assert(quantized_policy<int4_g32> && quantized_policy<int4_g64_asym> && quantized_policy<int4_pc> && quantized_policy<int4_g128_bf16>);
static_assert(policy_name<int4_g128_bf16>() == "int4_g128_sym_bf16");
static_assert(quantized_policy<int3_g128> && quantized_policy<int2_g64> && quantized_policy<int2_g128>);
static_assert(!quantized_policy<fp16>);

static_assert(policy_name<int4_g128>() == "int4_g128_sym");
static_assert(policy_name<int4_g128_act>() == "int4_g128_sym_act");
static_assert(policy_name<fp16>() == "fp16");

}  // namespace qprob::policies
