// SPDX-License-Identifier: Apache-2.0
#pragma once
// Bit packing of integer codes, shared by host references, readers and kernels.
//
// Layout (the GPTQ / AutoGPTQ one): codes run along the input dimension k and are packed as a little-endian
// bitstream into 32-bit words, one pack block of P::pack_block_values codes in P::pack_block_words words:
// code j of a block occupies bits [j*bits, (j+1)*bits) of the block, bit b of the block being bit (b % 32)
// of word (b / 32). For 4 bits that is 8 codes per word, code 0 in the low nibble; for 3 bits, 32 codes in 3
// words with codes 10 and 21 straddling word boundaries, exactly as AutoGPTQ's pack() writes them.
//
// A quantized (N out, K in) weight is stored as
//   qweight (P::packed_words(K), N) uint32   word row r holds block r / pack_block_words of every column n
//   scales  (P::groups(K), N)      half_t
//   zeros   (P::groups(K), N)      uint8     the true zero point (GPTQ "v2"; checkpoint I/O converts)
//   g_idx   (K) int32, optional    group of input column k; without it, k / group_width
// Codes past K in the last block are 0.

#include <qprob/core/config.hpp>
#include <qprob/policy/precision.hpp>

#include <cstdint>

namespace qprob::quant {

/// Packs P::pack_block_values codes (each < 2^bits) into P::pack_block_words words.
template <quantized_policy P>
QPROB_HOST_DEVICE constexpr void pack_block(const std::uint32_t* codes, std::uint32_t* words) noexcept {
  QPROB_UNROLL
  for (int w = 0; w < P::pack_block_words; ++w) {
    words[w] = 0;
  }
  QPROB_UNROLL
  for (int j = 0; j < P::pack_block_values; ++j) {
    const int bit    = j * P::bits;
    const int word   = bit / 32;
    const int offset = bit % 32;
    words[word] |= codes[j] << offset;
    if (offset + P::bits > 32) {  // only for 3 bits: the code's high bits continue in the next word
      words[word + 1] |= codes[j] >> (32 - offset);
    }
  }
}

/// Code j (0 <= j < P::pack_block_values) of a pack block.
template <quantized_policy P>
QPROB_HOST_DEVICE constexpr std::uint32_t unpack_code(const std::uint32_t* words, int j) noexcept {
  constexpr std::uint32_t mask = (1u << P::bits) - 1u;
  const int bit                = j * P::bits;
  const int word               = bit / 32;
  const int offset             = bit % 32;
  std::uint32_t v              = words[word] >> offset;
  if (offset + P::bits > 32) {
    v |= words[word + 1] << (32 - offset);
  }
  return v & mask;
}

/// Group index of input column k when no g_idx is given.
template <quantized_policy P>
QPROB_HOST_DEVICE constexpr std::int64_t default_group(std::int64_t k) noexcept {
  if constexpr (P::group_size == per_channel) {
    return 0;
  } else {
    return k / P::group_size;
  }
}

}  // namespace qprob::quant
