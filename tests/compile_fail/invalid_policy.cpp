// SPDX-License-Identifier: Apache-2.0
// Compile-fail cases for precision policies (tests/CMakeLists.txt compiles this file once per case and checks
// the diagnostic). Case 0 is the control: a valid policy must compile, so a broken include path cannot make
// the failing cases pass.
#include <qprob/policy/presets.hpp>

#ifndef QPROB_COMPILE_FAIL_CASE
#  error "define QPROB_COMPILE_FAIL_CASE"
#endif

namespace {

template <qprob::precision_policy P>
constexpr int use_policy() {
  return P::bits;
}

struct policy_without_act_order {  // a user-written policy that forgot a member
  static constexpr int bits       = 4;
  static constexpr int group_size = 128;
  static constexpr bool symmetric = true;
  static constexpr bool is_quantized = true;
  static constexpr int max_code   = 15;
  static constexpr int pack_block_words  = 1;
  static constexpr int pack_block_values = 8;
  using compute_type = qprob::half_t;
  using accum_type   = float;
};

}  // namespace

#if QPROB_COMPILE_FAIL_CASE == 0
static_assert(use_policy<qprob::precision<4, 128, true, true>>() == 4);
#elif QPROB_COMPILE_FAIL_CASE == 1
static_assert(use_policy<qprob::precision<5, 128, true, false>>() == 5);
#elif QPROB_COMPILE_FAIL_CASE == 2
static_assert(use_policy<qprob::precision<4, 100, true, false>>() == 4);
#elif QPROB_COMPILE_FAIL_CASE == 3
static_assert(use_policy<qprob::precision<16, qprob::per_channel, true, true>>() == 16);
#elif QPROB_COMPILE_FAIL_CASE == 4
static_assert(use_policy<qprob::precision<4, 128, true, false, float>>() == 4);
#elif QPROB_COMPILE_FAIL_CASE == 5
static_assert(use_policy<qprob::precision<4, 2048, true, false>>() == 4);
#elif QPROB_COMPILE_FAIL_CASE == 6
static_assert(use_policy<policy_without_act_order>() == 4);
#endif
