// SPDX-License-Identifier: Apache-2.0
// The CPU quantizer of `qprob compare` (compare/cpu_quantizer.hpp) on a tiny random BLOOM model: the fused,
// head-interleaved query_key_value is one [3 * hidden, hidden] linear (AutoGPTQ's inside_layer_modules), fused
// back from the reference model's q, k and v in the checkpoint's row order, quantized with one Hessian (GPTQ)
// or row by row (RTN), saved under its fused name, loaded back and split into q, k and v again. No shared data
// needed: the model is written by tests/unit/model/tiny_models.hpp.
#include <qprob/compare/cpu_quantizer.hpp>

#include "io_test_util.hpp"
#include "tiny_models.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using R      = qprob::model::tensor_role;

namespace {

constexpr const char* qkv0 = "transformer.h.0.self_attention.query_key_value";

fs::path write_tiny_bloom(const qprob::test::temp_dir& tmp) {
  const auto cfg = qprob::test::tiny_config("bloom");  // hidden 12, 6 heads of 2, 2 layers, vocab 40
  qprob::test::write_model(tmp / "bloom", cfg, qprob::test::tiny_weights(cfg, 8));
  return tmp / "bloom";
}

std::vector<double> dequantized(const qprob::reference::quantized_weight& q, const qprob::quant::runtime_policy& p) {
  std::vector<double> out;
  for (const auto h : qprob::quant::dequantize_half(q, p)) {
    out.push_back(qprob::to_double(h));
  }
  return out;
}

void check_same_codes(const qprob::reference::quantized_weight& a, const qprob::reference::quantized_weight& b) {
  CHECK(a.n == b.n);
  CHECK(a.k == b.k);
  CHECK(a.qweight == b.qweight);
  CHECK(a.zeros == b.zeros);
  REQUIRE(a.scales.size() == b.scales.size());
  for (std::size_t i = 0; i < a.scales.size(); ++i) {
    CHECK(qprob::to_double(a.scales[i]) == qprob::to_double(b.scales[i]));
  }
}

}  // namespace

TEST_CASE("compare: BLOOM's query_key_value is one fused linear: RTN codes, fused checkpoint name, load back") {
  qprob::test::temp_dir tmp("cpu_quant_bloom_rtn");
  const auto dir  = write_tiny_bloom(tmp);
  const auto lins = qprob::compare::block_linears(dir);
  REQUIRE(lins.size() == 8);  // 2 layers x (query_key_value, dense, dense_h_to_4h, dense_4h_to_h)
  CHECK(lins[0].name == qkv0);
  CHECK(lins[0].role == R::qkv);
  CHECK(lins[0].n == 36);
  CHECK(lins[0].k == 12);

  const auto full = qprob::reference::reference_model::from_directory(dir);
  // fused_weight() inverts the reference model's split exactly: it gives back the checkpoint's tensor.
  const auto ckpt       = qprob::io::checkpoint::open(dir);
  const auto file_fused = ckpt.read_as<double>(std::string(qkv0) + ".weight");
  CHECK(qprob::compare::fused_weight(full, 0, R::qkv) == file_fused);

  const qprob::quant::runtime_policy policy{4, 128, true, false};
  qprob::compare::quantize_settings qs;
  qs.method = qprob::compare::quant_method::rtn;
  qs.policy = policy;
  auto m          = full;
  const auto res  = qprob::compare::quantize_model(m, lins, qs, {});
  REQUIRE(res.layers.size() == lins.size());
  CHECK(res.layers[0].name == qkv0);
  check_same_codes(res.layers[0].weight, qprob::reference::rtn_quantize<qprob::policies::int4_g128, double>(
                                             qprob::make_host_view(file_fused.data(), 36, 12)));
  // RTN is row by row, so the model's q, k and v must hold RTN of the original q, k and v: this fails if the
  // fused rows were split in another order than they were fused (e.g. thirds instead of per-head groups).
  for (const R role : {R::q, R::k, R::v}) {
    INFO(qprob::model::to_string(role));
    const auto& w = full.linear_at(0, role);
    const auto q  = qprob::reference::rtn_quantize<qprob::policies::int4_g128, double>(
        qprob::make_host_view(w.w.data(), w.out, w.in));
    CHECK(m.linear_at(0, role).w == dequantized(q, policy));
    CHECK(m.linear_at(0, role).b == w.b);  // biases stay
  }

  // Saved under the fused name (what AutoGPTQ writes and loads), with the fused bias.
  qprob::quant::gptq_save_options so;
  so.policy = policy;
  qprob::quant::save_gptq_checkpoint(tmp / "quantized", dir, res.layers, so);
  const auto saved = qprob::io::checkpoint::open(tmp / "quantized");
  for (const char* suffix : {".qweight", ".qzeros", ".scales", ".g_idx", ".bias"}) {
    CHECK_MESSAGE(saved.find(std::string(qkv0) + suffix) != nullptr, suffix);
  }
  for (const auto& [name, e] : saved.entries()) {
    CHECK_MESSAGE(name.find("q_proj") == std::string::npos, name);
  }

  // Loaded back and applied to the full model: the same weights as the quantizer installed, the same logits.
  const auto ck = qprob::quant::load_gptq_checkpoint(tmp / "quantized");
  REQUIRE(ck.find_layer(qkv0) != nullptr);
  CHECK(ck.find_layer(qkv0)->role == R::qkv);
  auto applied = full;
  qprob::compare::apply_dequantized(applied, ck);
  for (std::int64_t l = 0; l < 2; ++l) {
    for (const R role : {R::q, R::k, R::v, R::o, R::up, R::down}) {
      CHECK(applied.linear_at(l, role).w == m.linear_at(l, role).w);
    }
  }
  const std::vector<std::int32_t> tokens{1, 7, 3, 39, 0, 12};
  const auto lq = applied.logits(tokens);
  CHECK(lq == m.logits(tokens));
  CHECK(lq != full.logits(tokens));
}

TEST_CASE("compare: GPTQ quantizes BLOOM's query_key_value as one matrix with the Hessian of its one input") {
  qprob::test::temp_dir tmp("cpu_quant_bloom_gptq");
  const auto dir  = write_tiny_bloom(tmp);
  const auto lins = qprob::compare::block_linears(dir);
  const auto full = qprob::reference::reference_model::from_directory(dir);
  std::mt19937 rng(3);
  std::uniform_int_distribution<std::int32_t> token(0, 39);
  std::vector<std::vector<std::int32_t>> windows(3, std::vector<std::int32_t>(10));
  for (auto& w : windows) {
    for (auto& t : w) {
      t = token(rng);
    }
  }
  qprob::compare::quantize_settings qs;
  qs.method = qprob::compare::quant_method::gptq;
  qs.policy = {4, 128, true, false};
  auto m            = full;
  std::size_t calls = 0;
  const auto res = qprob::compare::quantize_model(m, lins, qs, windows, [&](std::size_t, std::size_t) { ++calls; });
  CHECK(calls == lins.size() + 1);
  REQUIRE(res.layers.size() == 8);

  // Layer 0's query_key_value is the first sub-group: its input (the attention norm's output) does not depend on
  // quantization. H = 2/nsamples * sum x x^T over the windows, accumulated once (not once per q, k, v).
  const std::int64_t k = 12;
  std::vector<double> h(static_cast<std::size_t>(k * k), 0.0);
  int seen = 0;
  for (const auto& win : windows) {
    (void)full.logits(win, [&](std::int64_t l, R slot, std::span<const double> x, std::int64_t rows) {
      if (l != 0 || slot != R::q) {
        return;
      }
      ++seen;
      for (std::int64_t r = 0; r < rows; ++r) {
        for (std::int64_t a = 0; a < k; ++a) {
          for (std::int64_t b = 0; b <= a; ++b) {
            h[static_cast<std::size_t>(a * k + b)] += x[static_cast<std::size_t>(r * k + a)] * x[static_cast<std::size_t>(r * k + b)];
          }
        }
      }
    });
  }
  REQUIRE(seen == 3);
  for (std::int64_t a = 0; a < k; ++a) {
    for (std::int64_t b = 0; b <= a; ++b) {
      auto& v = h[static_cast<std::size_t>(a * k + b)];
      v *= 2.0 / 3.0;
      h[static_cast<std::size_t>(b * k + a)] = v;
    }
  }
  const auto fused    = qprob::compare::fused_weight(full, 0, R::qkv);
  const auto expected = qprob::reference::gptq_quantize<qprob::policies::int4_g128, double>(
      qprob::make_host_view(fused.data(), 36, k), qprob::make_host_view(h.data(), k, k), qs.gptq);
  CHECK(res.layers[0].name == qkv0);
  check_same_codes(res.layers[0].weight, expected.weight);
  CHECK(res.reports[0].loss == doctest::Approx(expected.report.loss).epsilon(1e-12));
  // And the model holds the split dequantized matrix: fusing q, k, v back gives it.
  CHECK(qprob::compare::fused_weight(m, 0, R::qkv) == dequantized(expected.weight, qs.policy));
  // GPTQ with calibration differs from RTN somewhere.
  const auto rtn = qprob::reference::rtn_quantize<qprob::policies::int4_g128, double>(
      qprob::make_host_view(fused.data(), 36, k));
  CHECK(rtn.qweight != res.layers[0].weight.qweight);
  for (const auto& r : res.reports) {
    CHECK(std::isfinite(r.loss));
  }
}
