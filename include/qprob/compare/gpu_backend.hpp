// SPDX-License-Identifier: Apache-2.0
#pragma once
// `qprob compare --device cuda`: the compare phases on the GPU engine (engine/engine.hpp). One fp16 engine holds
// the model; phase 1 scores with it, phase 2 quantizes it in place (engine::quantize: RTN or true-sequential
// GPTQ with calibration forwards on the GPU), phase 3 loads the saved checkpoint's dequantized weights into it
// (engine::set_quantized_weight) and scores again, so both --quant and --quantized evaluate the checkpoint as
// loaded back. engine_options::quantized chooses whether the loaded codes are dequantized to fp16 or kept packed
// for the fused GEMM (`qprob compare --quantized-linears`). Host code; link qprob::kernels and qprob::tokenizer.
#include <qprob/compare/job.hpp>
#include <qprob/engine/engine.hpp>
#include <qprob/eval/gpu_scorer.hpp>

#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace qprob::compare {

class gpu_backend final : public compare_backend {
public:
  explicit gpu_backend(const std::filesystem::path& model_dir, engine::engine_options options = {})
      : scorer_(engine::engine::from_directory(model_dir, with_f16(options))) {
    parameters_ = model::map_weights(scorer_.engine().config(), io::checkpoint::open(model_dir)).parameters();
  }

  [[nodiscard]] const model::model_config& config() const override {
    return scorer_.engine().config();
  }
  [[nodiscard]] std::int64_t parameters() const override { return parameters_; }
  [[nodiscard]] std::int64_t max_length() const override { return *scorer_.max_length(); }
  [[nodiscard]] eval::scorer& full_scorer() override { return scorer_; }

  quantize_result quantize(const std::vector<block_linear>& linears, const quantize_settings& s,
                           const std::vector<std::vector<std::int32_t>>& windows, const quantize_progress& progress) override {
    QPROB_CHECK(s.method == quant_method::gptq || !s.policy.desc_act,
                "compare: --desc-act needs --quant gptq (act-order is GPTQ's column order; RTN has none)");
    engine::quantize_settings es;
    es.use_gptq = s.method == quant_method::gptq;
    es.policy   = s.policy;
    es.solver   = s.gptq;
    const auto before = scorer_.engine().stats();
    auto q            = scorer_.engine().quantize(es, windows, progress);
    const auto after  = scorer_.engine().stats();
    std::map<std::pair<std::int64_t, model::tensor_role>, std::size_t> by_slot;
    for (std::size_t i = 0; i < q.size(); ++i) {
      by_slot[{q[i].layer, q[i].role}] = i;
    }
    quantize_result out;
    for (const auto& bl : linears) {
      const auto it = by_slot.find({bl.layer, bl.role});
      QPROB_CHECK(it != by_slot.end(), "compare: the GPU quantizer did not produce ", bl.name);
      auto& ql = q[it->second];
      QPROB_CHECK(ql.weight.n == bl.n && ql.weight.k == bl.k, "compare: ", bl.name, " is [", bl.n, ", ", bl.k,
                  "] in the checkpoint but the GPU quantizer produced [", ql.weight.n, ", ", ql.weight.k, "]");
      layer_report rep;
      rep.name         = bl.name;
      rep.weight_mse   = ql.weight_mse;
      rep.dead_columns = ql.report.dead_columns;
      if (es.use_gptq) {
        rep.loss         = ql.report.loss;
        rep.damp_percent = ql.report.damp_percent;
      }
      out.layers.push_back({bl.name, std::move(ql.weight)});
      out.reports.push_back(std::move(rep));
    }
    out.phase_seconds = {{"calibration_forwards", after.quantize_forward_seconds - before.quantize_forward_seconds},
                         {"solver", after.quantize_solve_seconds - before.quantize_solve_seconds}};
    return out;
  }

  [[nodiscard]] eval::scorer& quantized_scorer(const quant::gptq_checkpoint& ckpt) override {
    QPROB_CHECK(!ckpt.layers.empty(), "compare: checkpoint ", ckpt.dir.string(), " quantizes no layer");
    for (const auto& l : ckpt.layers) {
      scorer_.engine().set_quantized_weight(l.layer, l.role, l.weight, ckpt.quant.policy);
    }
    return scorer_;
  }

  [[nodiscard]] std::string quantized_note() const override {
    const auto s   = scorer_.engine().stats();
    const auto gib = std::to_string(static_cast<double>(s.weight_bytes) / (1024.0 * 1024.0 * 1024.0));
    if (s.packed_linears == 0 && s.unpacked_linears == 0) {
      return "block linears dequantized to fp16 (cuBLAS); weights " + gib + " GiB";
    }
    std::string note = std::to_string(s.packed_linears) + " block linears packed for the fused GEMM";
    if (s.unpacked_linears > 0) {
      note += ", " + std::to_string(s.unpacked_linears) + " kept dequantized (last reason: " + s.unpacked_reason + ")";
    }
    return note + "; weights " + gib + " GiB";
  }

private:
  static engine::engine_options with_f16(engine::engine_options o) {
    o.dtype = engine::activation_type::f16;  // GPTQ presets compute and dequantize in fp16
    return o;
  }

  eval::gpu_scorer scorer_;
  std::int64_t parameters_ = 0;
};

/// run_compare on the GPU engine (opt.device "cuda").
inline compare_outcome run_compare_gpu(const compare_options& opt, engine::engine_options options = {}) {
  job_detail::check_options(opt);
  if (opt.max_length) {
    options.max_length = opt.max_length;
  }
  gpu_backend backend(opt.model_dir, options);
  return run_compare(opt, backend);
}

}  // namespace qprob::compare
