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

/// RTN range search, first step: a block covers rows_per_block output channels by one 128-column tile; each
/// thread reads 16 bytes (8 values) of one row, so the 16 threads of a row read 256 contiguous bytes.
template <precision_policy P, int Arch>
struct tuning<ops::rtn_params, P, Arch> {
  static constexpr int tile_k         = 128;
  static constexpr int values_per_thread = 8;
  static constexpr int threads_per_row = tile_k / values_per_thread;
  static constexpr int rows_per_block = 16;
  static constexpr int threads        = rows_per_block * threads_per_row;
  static constexpr int finalize_threads = 256;
};

/// RTN packing and dequantization: a block covers a tile of tile_n output channels by tile_k input columns.
/// Weights are read and written a row at a time (consecutive threads take consecutive pack blocks of one row),
/// and packed words go through shared memory so that they are read and written tile_n at a time along n:
/// both sides coalesced. tile_k = 128 is a multiple of every pack block (4, 8, 16 or 32 values).
template <precision_policy P, int Arch>
struct tuning<ops::rtn_pack, P, Arch> {
  static constexpr int tile_n  = 64;
  static constexpr int tile_k  = 128;
  static constexpr int threads = 256;
};

template <precision_policy P, int Arch>
struct tuning<ops::dequantize, P, Arch> : tuning<ops::rtn_pack, P, Arch> {};

}  // namespace qprob
