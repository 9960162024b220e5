// SPDX-License-Identifier: Apache-2.0
// Example 01: round-to-nearest weight quantization with a precision policy chosen at run time.
//
// What it shows: the runtime-to-compile-time dispatch of a policy name to qprob::precision<...>, the GPU RTN
// kernels (scale/zero search, bit packing, dequantization), and self-verification against the double-precision
// reference in qprob/reference/rtn.hpp. It quantizes a (rows, cols) matrix of Gaussian fp16 weights, prints
// the normalised mean squared error of the dequantized weights per policy, and checks the GPU's packed codes,
// scales, zero points and dequantized weights bit for bit against the reference.
//
// With --device cpu it runs the reference alone (machines without a GPU); with --device cuda it runs both and
// compares. It prints "Result: PASSED" or "Result: FAILED" (non-zero exit), then the GPU time.
//
//   qprob_rtn_quantize --device cuda --rows 4096 --cols 11008 --policy all
//   qprob_rtn_quantize --device cpu --rows 96 --cols 1000 --policy int4_g128_sym --seed 7
//
// Limitations: synthetic weights (reading a model's weights arrives with the safetensors reader); RTN only
// (GPTQ is its own example).
#include <qprob/qprob.hpp>

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace {

struct options {
  std::string device = "cuda";
  std::string policy = "all";
  std::int64_t rows  = 4096;
  std::int64_t cols  = 11008;
  std::uint64_t seed = 0;
};

struct outcome {
  bool passed = true;
  bool ran    = false;
};

template <class P>
outcome run_policy(const options& opt, const std::vector<qprob::half_t>& w) {
  outcome out;
  if (opt.policy != "all" && opt.policy != qprob::policy_name<P>()) {
    return out;
  }
  out.ran              = true;
  const std::int64_t n = opt.rows;
  const std::int64_t k = opt.cols;
  const auto ref       = qprob::reference::rtn_quantize<P, qprob::half_t>(qprob::make_host_view(w.data(), n, k));
  const auto ref_deq   = qprob::reference::dequantize<P, qprob::half_t>(ref);
  double err = 0;
  double norm = 0;
  for (std::size_t i = 0; i < w.size(); ++i) {
    const double a = qprob::to_double(w[i]);
    const double d = a - qprob::to_double(ref_deq[i]);
    err += d * d;
    norm += a * a;
  }
  std::printf("%-20s %5.3f bits/weight  NMSE %.3e", std::string(qprob::policy_name<P>()).c_str(), P::bits_per_weight,
              err / norm);
  if (opt.device == "cpu") {
    std::printf("  (reference only)\n");
    out.passed = norm > 0 && err > 0;
    return out;
  }
  qprob::stream s;
  const std::int64_t words  = P::packed_words(k);
  const std::int64_t groups = P::groups(k);
  qprob::device_buffer<qprob::half_t> d_w(std::span<const qprob::half_t>(w), s);
  qprob::device_buffer<std::uint32_t> d_q(words * n, s);
  qprob::device_buffer<qprob::half_t> d_scales(groups * n, s);
  qprob::device_buffer<std::uint8_t> d_zeros(groups * n, s);
  qprob::device_buffer<qprob::half_t> d_deq(n * k, s);
  d_q.fill_bytes(0xa5);
  d_deq.fill_bytes(0xff);
  qprob::event start;
  qprob::event stop;
  start.record(s);
  qprob::quant::rtn_quantize<P>(std::as_const(d_w).view(n, k), d_q.view(words, n), d_scales.view(groups, n),
                                d_zeros.view(groups, n), s);
  qprob::quant::dequantize<P>(std::as_const(d_q).view(words, n), std::as_const(d_scales).view(groups, n),
                              std::as_const(d_zeros).view(groups, n), nullptr, d_deq.view(n, k), s);
  stop.record(s);
  const float ms = qprob::event::elapsed_ms(start, stop);
  out.passed     = d_q.to_host() == ref.qweight && d_scales.to_host() == ref.scales && d_zeros.to_host() == ref.zeros &&
               d_deq.to_host() == ref_deq;
  std::printf("  GPU %s  quantize+dequantize %.3f ms (first call)\n", out.passed ? "bit-exact" : "MISMATCH", ms);
  return out;
}

template <class... P>
outcome run_all(const options& opt, const std::vector<qprob::half_t>& w) {
  outcome total;
  for (const outcome o : {run_policy<P>(opt, w)...}) {
    total.passed = total.passed && o.passed;
    total.ran    = total.ran || o.ran;
  }
  return total;
}

}  // namespace

int main(int argc, char** argv) {
  options opt;
  CLI::App app{"qprob example 01: RTN quantization of Gaussian weights, verified against the reference"};
  app.add_option("--device", opt.device, "cuda (GPU kernels + reference check) or cpu (reference only)")
      ->check(CLI::IsMember({"cuda", "cpu"}));
  app.add_option("--policy", opt.policy, "policy name (e.g. int4_g128_sym) or all");
  app.add_option("--rows", opt.rows, "output channels N")->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 20));
  app.add_option("--cols", opt.cols, "input columns K")->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 20));
  app.add_option("--seed", opt.seed, "weight generator seed");
  CLI11_PARSE(app, argc, argv);

  if (opt.device == "cuda") {
    if (const auto reason = qprob::gpu_unavailable_reason()) {
      std::printf("skipped: %s\n", reason->c_str());
      return 77;
    }
  }
  std::mt19937_64 rng(opt.seed);
  std::normal_distribution<double> gauss(0.0, 0.02);
  std::vector<qprob::half_t> w(static_cast<std::size_t>(opt.rows * opt.cols));
  for (auto& x : w) {
    x = qprob::to_half(gauss(rng));
  }
  namespace p = qprob::policies;
  try {
    const outcome o = run_all<p::int8_pc, p::int8_g128, p::int4_g128, p::int4_g128_asym, p::int4_g32, p::int4_pc,
                              p::int3_g128, p::int2_g64>(opt, w);
    if (!o.ran) {
      std::printf("unknown policy '%s'\nResult: FAILED\n", opt.policy.c_str());
      return 2;
    }
    std::printf("Result: %s\n", o.passed ? "PASSED" : "FAILED");
    return o.passed ? 0 : 1;
  } catch (const qprob::error& e) {
    std::printf("error: %s\nResult: FAILED\n", e.what());
    return 1;
  }
}
