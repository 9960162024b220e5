// SPDX-License-Identifier: Apache-2.0
// Packing layout: round trips for every bit width and the exact bit positions AutoGPTQ uses.
#include <qprob/policy/presets.hpp>
#include <qprob/quant/pack.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "support.hpp"

namespace p = qprob::policies;

namespace {

template <class P>
void check_round_trip(std::mt19937_64& rng) {
  CAPTURE(qprob::policy_name<P>());
  std::uniform_int_distribution<std::uint32_t> code(0, P::max_code);
  for (int trial = 0; trial < 2000; ++trial) {
    std::uint32_t codes[P::pack_block_values];
    for (auto& c : codes) {
      c = code(rng);
    }
    std::uint32_t words[P::pack_block_words];
    qprob::quant::pack_block<P>(codes, words);
    for (int j = 0; j < P::pack_block_values; ++j) {
      REQUIRE(qprob::quant::unpack_code<P>(words, j) == codes[j]);
    }
  }
  // All-maximum codes set every bit of the block: nothing is lost or overlapping.
  std::uint32_t codes[P::pack_block_values];
  for (auto& c : codes) {
    c = P::max_code;
  }
  std::uint32_t words[P::pack_block_words];
  qprob::quant::pack_block<P>(codes, words);
  for (auto w : words) {
    CHECK(w == 0xffffffffu);
  }
}

// AutoGPTQ's 3-bit packing written out as it is published: ten codes per word and two codes split across the
// word boundaries (bits 30-31 + bit 0, and bit 31 + bits 0-1).
void autogptq_pack3(const std::uint32_t* v, std::uint32_t* w) {
  w[0] = w[1] = w[2] = 0;
  int i = 0;
  for (int j = 0; j < 10; ++j) w[0] |= v[i + j] << (3 * j);
  i += 10;
  w[0] |= v[i] << 30;
  w[1] |= (v[i] >> 2) & 1u;
  i += 1;
  for (int j = 0; j < 10; ++j) w[1] |= v[i + j] << (3 * j + 1);
  i += 10;
  w[1] |= v[i] << 31;
  w[2] |= (v[i] >> 1) & 3u;
  i += 1;
  for (int j = 0; j < 10; ++j) w[2] |= v[i + j] << (3 * j + 2);
}

}  // namespace

TEST_CASE("pack and unpack round-trip random codes for 2, 3, 4 and 8 bits") {
  INFO("QPROB_TEST_SEED=", qprob::test::run_seed());
  auto rng = qprob::test::make_rng(21);
  check_round_trip<p::int2_g64>(rng);
  check_round_trip<p::int3_g128>(rng);
  check_round_trip<p::int4_g128>(rng);
  check_round_trip<p::int8_pc>(rng);
}

TEST_CASE("4-bit codes sit in nibbles, code 0 lowest; 8-bit codes in bytes") {
  const std::uint32_t codes4[8] = {1, 2, 3, 4, 5, 6, 7, 15};
  std::uint32_t w4[1];
  qprob::quant::pack_block<p::int4_g128>(codes4, w4);
  CHECK(w4[0] == 0xf7654321u);
  const std::uint32_t codes8[4] = {0x12, 0x34, 0x56, 0xff};
  std::uint32_t w8[1];
  qprob::quant::pack_block<p::int8_pc>(codes8, w8);
  CHECK(w8[0] == 0xff563412u);
  const std::uint32_t codes2[16] = {3, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3};
  std::uint32_t w2[1];
  qprob::quant::pack_block<p::int2_g64>(codes2, w2);
  CHECK(w2[0] == 0xc0000093u);
}

TEST_CASE("3-bit packing is bit-identical to AutoGPTQ's interleaved layout") {
  INFO("QPROB_TEST_SEED=", qprob::test::run_seed());
  auto rng = qprob::test::make_rng(22);
  std::uniform_int_distribution<std::uint32_t> code(0, 7);
  for (int trial = 0; trial < 5000; ++trial) {
    std::uint32_t v[32];
    for (auto& c : v) {
      c = code(rng);
    }
    std::uint32_t ours[3];
    std::uint32_t theirs[3];
    qprob::quant::pack_block<p::int3_g128>(v, ours);
    autogptq_pack3(v, theirs);
    REQUIRE(ours[0] == theirs[0]);
    REQUIRE(ours[1] == theirs[1]);
    REQUIRE(ours[2] == theirs[2]);
  }
}

TEST_CASE("default groups follow the policy's group size") {
  CHECK(qprob::quant::default_group<p::int4_g128>(0) == 0);
  CHECK(qprob::quant::default_group<p::int4_g128>(127) == 0);
  CHECK(qprob::quant::default_group<p::int4_g128>(128) == 1);
  CHECK(qprob::quant::default_group<p::int4_g32>(100) == 3);
  CHECK(qprob::quant::default_group<p::int4_pc>(11007) == 0);
}
