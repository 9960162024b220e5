// SPDX-License-Identifier: Apache-2.0
#pragma once
// Launch configurations, kept apart from the precision policy: a tuning changes how fast a kernel runs, never
// what it computes. The primary template is the portable default; specializations for an architecture
// (Arch = 900 for Hopper) carry the benchmark that chose their numbers.

#include <qprob/policy/precision.hpp>

namespace qprob {

/// Tags naming the ops that have tunings.
namespace ops {
struct rtn_params {};
struct rtn_pack {};
struct dequantize {};
}  // namespace ops

template <class Op, precision_policy P, int Arch>
struct tuning;

/// RTN scale/zero search: one warp per (output channel, group); 8 warps per block.
template <precision_policy P, int Arch>
struct tuning<ops::rtn_params, P, Arch> {
  static constexpr int warps   = 8;
  static constexpr int threads = warps * 32;
};

/// RTN packing and dequantization: a 2-D block of block_n output channels (threadIdx.x, so that each warp
/// writes block_n consecutive packed words) by block_k pack blocks (threadIdx.y). Each thread reads one pack
/// block of weights (16 bytes for 4 bits) from its own row; the neighbouring pack block of the same row is
/// read by the next warp, which finds the rest of the 32-byte sector in L1.
template <precision_policy P, int Arch>
struct tuning<ops::rtn_pack, P, Arch> {
  static constexpr int block_n = 32;
  static constexpr int block_k = 8;
  static constexpr int threads = block_n * block_k;
};

template <precision_policy P, int Arch>
struct tuning<ops::dequantize, P, Arch> : tuning<ops::rtn_pack, P, Arch> {};

}  // namespace qprob
