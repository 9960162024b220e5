// SPDX-License-Identifier: Apache-2.0
// Precision policies: derived constants, names, and the concept accepting user-written policies.
#include <qprob/policy/name.hpp>
#include <qprob/policy/presets.hpp>
#include <qprob/policy/tuning.hpp>

#include <doctest/doctest.h>

#include <string>
#include <string_view>
#include <type_traits>

namespace p = qprob::policies;

namespace {

// A policy written by a user without qprob::precision: the concept must accept it.
struct my_policy {
  static constexpr int bits              = 4;
  static constexpr int group_size        = 64;
  static constexpr bool symmetric        = false;
  static constexpr bool act_order        = false;
  static constexpr bool is_quantized     = true;
  static constexpr int max_code          = 15;
  static constexpr int pack_block_words  = 1;
  static constexpr int pack_block_values = 8;
  using compute_type                     = qprob::half_t;
  using accum_type                       = float;
};

struct not_a_policy {
  static constexpr int bits = 4;
};

template <qprob::precision_policy P>
constexpr bool accepts() {
  return true;
}

}  // namespace

TEST_CASE("pack blocks: 2/4/8 bits fill one word, 3 bits fill three words with 32 codes") {
  CHECK(p::int2_g64::pack_block_words == 1);
  CHECK(p::int2_g64::pack_block_values == 16);
  CHECK(p::int4_g128::pack_block_words == 1);
  CHECK(p::int4_g128::pack_block_values == 8);
  CHECK(p::int8_pc::pack_block_words == 1);
  CHECK(p::int8_pc::pack_block_values == 4);
  CHECK(p::int3_g128::pack_block_words == 3);
  CHECK(p::int3_g128::pack_block_values == 32);
  CHECK(p::fp16::pack_block_values == 1);
}

TEST_CASE("derived constants: levels, max code, symmetric zero, groups and packed words with partial tails") {
  using P = p::int4_g128;
  CHECK(P::levels == 16);
  CHECK(P::max_code == 15);
  CHECK(P::symmetric_zero == 8);
  CHECK(p::int8_pc::max_code == 255);
  CHECK(p::int8_pc::symmetric_zero == 128);
  CHECK(p::int3_g128::max_code == 7);
  CHECK(p::int2_g64::symmetric_zero == 2);
  // 4096 inputs: 32 groups, 512 words of 8 codes.
  CHECK(P::groups(4096) == 32);
  CHECK(P::packed_words(4096) == 512);
  // 100 inputs (a partial group and a partial pack block).
  CHECK(P::groups(100) == 1);
  CHECK(P::packed_words(100) == 13);
  CHECK(p::int4_g32::groups(100) == 4);
  CHECK(p::int3_g128::packed_words(100) == 12);  // 4 blocks of 32 codes, 3 words each
  CHECK(p::int4_pc::groups(11008) == 1);
  CHECK(p::int4_pc::group_width(11008) == 11008);
  CHECK(P::groups(0) == 0);
  CHECK_FALSE(p::fp16::is_quantized);
  CHECK(p::fp16::levels == 0);
}

TEST_CASE("bits per weight counts scales and zero points") {
  CHECK(p::int4_g128::bits_per_weight == doctest::Approx(4.125));
  CHECK(p::int4_g128_asym::bits_per_weight == doctest::Approx(4.15625));
  CHECK(p::int3_g128::bits_per_weight == doctest::Approx(3.125));
  CHECK(p::fp16::bits_per_weight == 16.0);
}

TEST_CASE("policy names are readable and distinct") {
  CHECK(qprob::policy_name<p::fp16>() == "fp16");
  CHECK(qprob::policy_name<p::bf16>() == "bf16");
  CHECK(qprob::policy_name<p::int4_g128>() == "int4_g128_sym");
  CHECK(qprob::policy_name<p::int4_g128_act>() == "int4_g128_sym_act");
  CHECK(qprob::policy_name<p::int4_g128_asym>() == "int4_g128_asym");
  CHECK(qprob::policy_name<p::int8_pc>() == "int8_pc_sym");
  CHECK(qprob::policy_name<p::int3_g128>() == "int3_g128_sym");
  CHECK(qprob::policy_name<p::int2_g64>() == "int2_g64_sym");
  CHECK(qprob::policy_name<p::int4_g128_bf16>() == "int4_g128_sym_bf16");
  CHECK(qprob::policy_name<qprob::precision<8, 1024, false, true>>() == "int8_g1024_asym_act");
  CHECK(qprob::policy_name<p::int4_g128>() != qprob::policy_name<p::int4_g32>());
}

TEST_CASE("the concept accepts user-written policies and rejects incomplete ones") {
  static_assert(qprob::precision_policy<my_policy>);
  static_assert(qprob::quantized_policy<my_policy>);
  static_assert(!qprob::precision_policy<not_a_policy>);
  static_assert(!qprob::precision_policy<int>);
  static_assert(!qprob::quantized_policy<p::bf16>);
  CHECK(accepts<my_policy>());
  CHECK(qprob::policy_name<my_policy>() == "int4_g64_asym");
}

TEST_CASE("the compute type and tuning are separate from numerics") {
  static_assert(std::is_same_v<p::int4_g128::compute_type, qprob::half_t>);
  static_assert(std::is_same_v<p::int4_g128_bf16::compute_type, qprob::bfloat16_t>);
  static_assert(std::is_same_v<p::int4_g128::accum_type, float>);
  using t = qprob::tuning<qprob::ops::rtn_pack, p::int4_g128, 900>;
  CHECK(t::threads <= 1024);
  // Every pack block divides the tile, so no pack block straddles two tiles.
  CHECK(t::tile_k % p::int3_g128::pack_block_values == 0);
  CHECK(t::tile_k % p::int2_g64::pack_block_values == 0);
  using r = qprob::tuning<qprob::ops::rtn_params, p::int4_g128, 900>;
  CHECK(r::threads == r::rows_per_block * r::threads_per_row);
  CHECK(r::threads_per_row <= 32);  // a row's threads reduce with warp shuffles
}
