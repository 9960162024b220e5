// SPDX-License-Identifier: Apache-2.0
// Driver of tests/torch/test_gptq_parity.py: runs qprob's GPU GPTQ solver on a layer given as a safetensors file
// and writes the integer codes (natural column order), scales, zero points and g_idx, so that the Python side can
// compare them with its independent PyTorch implementation.
//
//   qprob_gptq_check IN.safetensors OUT.safetensors
//   IN:  "w" F16 (n, k), "h" F32 (k, k); metadata "policy" (a preset name such as int4_g128_sym),
//        "static_groups" ("0"/"1"), "damp_percent"
//   OUT: "codes" U8 (n, k), "scales" F16 (groups, n), "zeros" U8 (groups, n), "g_idx" I32 (k);
//        metadata "damp_percent", "dead_columns", "loss"
#include <qprob/runtime.hpp>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace {

namespace p = qprob::policies;

template <class... P>
struct type_list {};
using solver_policies = type_list<p::int8_pc, p::int8_g128, p::int4_g128, p::int4_g128_act, p::int4_g128_asym, p::int4_g32,
                                  p::int4_g64_asym, p::int4_pc, p::int3_g128, p::int2_g64, p::int2_g128>;

template <class T>
std::span<const std::byte> as_bytes(const std::vector<T>& v) {
  return std::as_bytes(std::span<const T>(v));
}

template <class P>
int run(const qprob::io::safetensors_file& in, const std::string& out_path) {
  const auto& wi       = in.at("w");
  const std::int64_t n = wi.shape.at(0);
  const std::int64_t k = wi.shape.at(1);
  const auto w         = in.read_as<qprob::half_t>("w");
  const auto h         = in.read_as<float>("h");
  qprob::gptq_options opt;
  const auto& meta = in.metadata();
  opt.static_groups = meta.count("static_groups") != 0 && meta.at("static_groups") == "1";
  if (meta.count("damp_percent") != 0) {
    opt.damp_percent = std::stod(meta.at("damp_percent"));
  }
  qprob::stream s;
  qprob::device_buffer<qprob::half_t> d_w(std::span<const qprob::half_t>(w), s);
  qprob::device_buffer<float> d_h(std::span<const float>(h), s);
  const std::int64_t groups = P::groups(k);
  qprob::device_buffer<std::uint32_t> d_q(P::packed_words(k) * n, s);
  qprob::device_buffer<qprob::half_t> d_scales(groups * n, s);
  qprob::device_buffer<std::uint8_t> d_zeros(groups * n, s);
  qprob::device_buffer<std::int32_t> d_g(k, s);
  const auto report = qprob::quant::gptq_quantize<P>(std::as_const(d_w).view(n, k), std::as_const(d_h).view(k, k),
                                                     d_q.view(P::packed_words(k), n), d_scales.view(groups, n),
                                                     d_zeros.view(groups, n), d_g.data(), nullptr, opt, s);
  qprob::reference::quantized_weight q{n, k, d_q.to_host(), d_scales.to_host(), d_zeros.to_host(), {}};
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(n * k));
  for (std::int64_t r = 0; r < n; ++r) {
    for (std::int64_t c = 0; c < k; ++c) {
      codes[r * k + c] = static_cast<std::uint8_t>(qprob::reference::code_at<P>(q, r, c));
    }
  }
  const auto g_idx = d_g.to_host();
  qprob::io::write_options wo;
  wo.metadata = {{"damp_percent", std::to_string(report.damp_percent)},
                 {"dead_columns", std::to_string(report.dead_columns)},
                 {"loss", std::to_string(report.loss)}};
  qprob::io::write_safetensors(out_path,
                               {{"codes", qprob::dtype::u8, {n, k}, as_bytes(codes)},
                                {"scales", qprob::dtype::f16, {groups, n}, as_bytes(q.scales)},
                                {"zeros", qprob::dtype::u8, {groups, n}, as_bytes(q.zeros)},
                                {"g_idx", qprob::dtype::i32, {k}, as_bytes(g_idx)}},
                               wo);
  std::printf("%s n=%lld k=%lld damp=%g dead=%lld loss=%g\n", std::string(qprob::policy_name<P>()).c_str(),
              static_cast<long long>(n), static_cast<long long>(k), report.damp_percent,
              static_cast<long long>(report.dead_columns), report.loss);
  return 0;
}

template <class P, class... Rest>
int dispatch(const std::string& name, const qprob::io::safetensors_file& in, const std::string& out, type_list<P, Rest...>) {
  if (name == qprob::policy_name<P>()) {
    return run<P>(in, out);
  }
  if constexpr (sizeof...(Rest) > 0) {
    return dispatch(name, in, out, type_list<Rest...>{});
  } else {
    std::fprintf(stderr, "qprob_gptq_check: policy '%s' is not a prebuilt preset\n", name.c_str());
    return 2;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: qprob_gptq_check IN.safetensors OUT.safetensors\n");
    return 2;
  }
  try {
    const auto in = qprob::io::safetensors_file::open(argv[1]);
    return dispatch(in.metadata().at("policy"), in, argv[2], solver_policies{});
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qprob_gptq_check: %s\n", e.what());
    return 1;
  }
}
