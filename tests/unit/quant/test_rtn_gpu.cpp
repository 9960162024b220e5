// SPDX-License-Identifier: Apache-2.0
// RTN kernels against the double-precision reference: bit-exact packed codes, scales, zero points and
// dequantized weights, for every preset policy, odd and tile-boundary sizes, strided and unaligned inputs,
// random and adversarial values. Outputs are poisoned first, so unwritten elements fail.
#include <qprob/runtime.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "support.hpp"

namespace p = qprob::policies;

namespace {

template <class... P>
struct type_list {};
using rtn_policies = type_list<p::int8_pc, p::int8_g128, p::int4_g128, p::int4_g128_act, p::int4_g128_asym, p::int4_g32,
                               p::int4_pc, p::int4_g128_bf16, p::int3_g128, p::int2_g64, p::int2_g128>;

enum class fill { gaussian, constant, adversarial };

template <class T>
T narrow(double v) {
  if constexpr (std::is_same_v<T, qprob::half_t>) {
    return qprob::to_half(v);
  } else {
    return qprob::to_bfloat16(v);
  }
}

// Weights with everything RTN must get right: wide dynamic range, exact zeros, all-zero and all-positive
// groups, exact ties of w / scale, huge and tiny magnitudes.
template <class T>
std::vector<T> make_weights(std::int64_t n, std::int64_t ld, std::int64_t k, fill kind, std::mt19937_64& rng) {
  std::vector<T> w(static_cast<std::size_t>(n * ld), narrow<T>(1e4));  // padding columns hold a loud value
  std::normal_distribution<double> gauss(0.0, 0.02);
  std::uniform_int_distribution<int> pick(0, 9);
  std::uniform_real_distribution<double> expo(-20.0, 10.0);
  for (std::int64_t r = 0; r < n; ++r) {
    const int row_kind = pick(rng);
    for (std::int64_t c = 0; c < k; ++c) {
      double v = 0;
      switch (kind) {
        case fill::gaussian: v = gauss(rng); break;
        case fill::constant: v = 0.375; break;
        case fill::adversarial:
          switch (row_kind) {
            case 0: v = 0.0; break;                                      // all-zero row
            case 1: v = std::abs(gauss(rng)) + 1e-3; break;              // all-positive (GPTQ sym quirk)
            case 2: v = std::ldexp(1.0, static_cast<int>(expo(rng))); break;  // powers of two: exact ratios
            case 3: v = 1e-7 * gauss(rng); break;                        // fp16 subnormals, scale floor
            case 4: v = (c % 2 ? 1 : -1) * 60000.0; break;               // near the fp16 maximum
            default: v = 0.25 * static_cast<double>(static_cast<int>(c % 31) - 15); break;  // many ties
          }
          break;
      }
      w[static_cast<std::size_t>(r * ld + c)] = narrow<T>(v);
    }
  }
  return w;
}

template <class P>
void check_policy(std::mt19937_64& rng, qprob::stream& s) {
  using T = typename P::compute_type;
  struct shape {
    std::int64_t n, k, ld;
  };
  // Minimum sizes, tile multiples and +-1, odd primes, partial groups, a strided (ld > k) and an unaligned
  // (odd ld: scalar path) case, and one large layer.
  const shape shapes[] = {{1, 16, 16},    {7, 100, 100},   {19, 128, 128},  {31, 129, 129}, {33, 989, 989},
                          {111, 257, 264}, {64, 1024, 1031}, {5, 4096, 4096}, {256, 4096, 4096}};
  for (const shape sh : shapes) {
    for (fill kind : {fill::gaussian, fill::constant, fill::adversarial}) {
      CAPTURE(qprob::policy_name<P>());
      CAPTURE(sh.n);
      CAPTURE(sh.k);
      CAPTURE(sh.ld);
      CAPTURE(static_cast<int>(kind));
      const auto w = make_weights<T>(sh.n, sh.ld, sh.k, kind, rng);
      const qprob::host_view<const T, 2> w_host(w.data(), {sh.n, sh.k}, {sh.ld, 1});
      const auto ref     = qprob::reference::rtn_quantize<P, T>(w_host);
      const auto ref_deq = qprob::reference::dequantize<P, T>(ref);

      qprob::device_buffer<T> d_w(std::span<const T>(w), s);
      const std::int64_t words  = P::packed_words(sh.k);
      const std::int64_t groups = P::groups(sh.k);
      qprob::device_buffer<std::uint32_t> d_q(words * sh.n, s);
      qprob::device_buffer<qprob::half_t> d_scales(groups * sh.n, s);
      qprob::device_buffer<std::uint8_t> d_zeros(groups * sh.n, s);
      qprob::device_buffer<T> d_deq(sh.n * sh.k, s);
      d_q.fill_bytes(0xa5);
      d_scales.fill_bytes(0xff);
      d_zeros.fill_bytes(0xff);
      d_deq.fill_bytes(0xff);
      const qprob::device_view<const T, 2> w_dev(d_w.data(), {sh.n, sh.k}, {sh.ld, 1});
      qprob::quant::rtn_quantize<P>(w_dev, d_q.view(words, sh.n), d_scales.view(groups, sh.n), d_zeros.view(groups, sh.n), s);
      qprob::quant::dequantize<P>(std::as_const(d_q).view(words, sh.n), std::as_const(d_scales).view(groups, sh.n),
                                  std::as_const(d_zeros).view(groups, sh.n), nullptr, d_deq.view(sh.n, sh.k), s);
      const auto q      = d_q.to_host();
      const auto scales = d_scales.to_host();
      const auto zeros  = d_zeros.to_host();
      const auto deq    = d_deq.to_host();
      REQUIRE(scales == ref.scales);
      REQUIRE(zeros == ref.zeros);
      REQUIRE(q == ref.qweight);
      REQUIRE(deq == ref_deq);
      // Guard against a reference and a kernel that agree on nothing happening.
      std::int64_t nonzero_words = 0;
      for (auto x : q) {
        nonzero_words += x != 0;
      }
      CHECK(nonzero_words > 0);
    }
  }
}

template <class... P>
void check_all(type_list<P...>, std::mt19937_64& rng, qprob::stream& s) {
  (check_policy<P>(rng, s), ...);
}

}  // namespace

TEST_CASE("RTN quantize and dequantize kernels match the double reference bit for bit, every preset policy") {
  INFO("QPROB_TEST_SEED=", qprob::test::run_seed());
  auto rng = qprob::test::make_rng(41);
  qprob::stream s;
  check_all(rtn_policies{}, rng, s);
}

TEST_CASE("dequantize with a group index (act-order layout) matches the reference") {
  INFO("QPROB_TEST_SEED=", qprob::test::run_seed());
  using P  = p::int4_g128_act;
  auto rng = qprob::test::make_rng(42);
  qprob::stream s;
  const std::int64_t n = 37;
  const std::int64_t k = 515;
  const auto w         = make_weights<qprob::half_t>(n, k, k, fill::gaussian, rng);
  auto ref             = qprob::reference::rtn_quantize<P, qprob::half_t>(qprob::make_host_view(w.data(), n, k));
  // A random group per column, as act-order checkpoints store in g_idx.
  std::uniform_int_distribution<std::int32_t> group(0, static_cast<std::int32_t>(P::groups(k) - 1));
  ref.g_idx.resize(static_cast<std::size_t>(k));
  for (auto& g : ref.g_idx) {
    g = group(rng);
  }
  const auto ref_deq = qprob::reference::dequantize<P, qprob::half_t>(ref);
  qprob::device_buffer<std::uint32_t> d_q(std::span<const std::uint32_t>(ref.qweight), s);
  qprob::device_buffer<qprob::half_t> d_scales(std::span<const qprob::half_t>(ref.scales), s);
  qprob::device_buffer<std::uint8_t> d_zeros(std::span<const std::uint8_t>(ref.zeros), s);
  qprob::device_buffer<std::int32_t> d_g(std::span<const std::int32_t>(ref.g_idx), s);
  qprob::device_buffer<qprob::half_t> d_out(n * k, s);
  d_out.fill_bytes(0xff);
  qprob::quant::dequantize<P>(std::as_const(d_q).view(P::packed_words(k), n), std::as_const(d_scales).view(P::groups(k), n),
                              std::as_const(d_zeros).view(P::groups(k), n), d_g.data(), d_out.view(n, k), s);
  CHECK(d_out.to_host() == ref_deq);
}

TEST_CASE("RTN rejects mismatched shapes with a message naming the tensor") {
  using P = p::int4_g128;
  qprob::stream s;
  qprob::device_buffer<qprob::half_t> w(8 * 256, s);
  qprob::device_buffer<std::uint32_t> q(32 * 8, s);
  qprob::device_buffer<qprob::half_t> scales(2 * 8, s);
  qprob::device_buffer<std::uint8_t> zeros(3 * 8, s);
  try {
    qprob::quant::rtn_quantize<P>(std::as_const(w).view(8, 256), q.view(32, 8), scales.view(2, 8), zeros.view(3, 8), s);
    FAIL("expected an exception");
  } catch (const qprob::invalid_argument& e) {
    CHECK(std::string(e.what()) == "rtn_quantize: zeros has shape (3, 8) but (2, 8) is required");
  }
  const qprob::device_view<const qprob::half_t, 2> transposed(w.data(), {256, 8}, {1, 256});
  CHECK_THROWS_WITH_AS(
      qprob::quant::rtn_quantize<P>(transposed, q.view(32, 8), scales.view(2, 8), zeros.view(3, 8).slice(0, 0, 2), s),
      doctest::Contains("weight rows must be contiguous"), qprob::invalid_argument);
}
