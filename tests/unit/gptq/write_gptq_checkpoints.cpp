// SPDX-License-Identifier: Apache-2.0
// Writes RTN-quantized GPTQ checkpoints of a small model (every linear layer, several policies and both zero-point
// formats, with the dequantized side file) for tests/torch/check_gptq_checkpoint.py, which checks them against an
// independent numpy/torch reading of the format and against transformers' GPTQConfig.
//
//   qprob_write_gptq_checkpoints ../shared/models/stories260K OUT_DIR
//
// OUT_DIR/<policy>_<format>/ is one Hugging Face GPTQ directory per case.
#include <qprob/policy/presets.hpp>
#include <qprob/quant/checkpoint.hpp>
#include <qprob/reference/rtn.hpp>

#include "desc_act_rtn.hpp"

#include <cstdio>
#include <exception>
#include <filesystem>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using qprob::quant::gptq_format;

/// RTN in GPTQ's desc_act layout (desc_act_rtn.hpp).
template <class P>
qprob::reference::quantized_weight quantize(const std::vector<float>& w, std::int64_t n, std::int64_t k, std::mt19937_64& rng) {
  return qprob::test::rtn_desc_act_layout<P>(w, n, k, rng).weight;
}

template <class P>
void write_case(const fs::path& model, const fs::path& out, gptq_format fmt) {
  std::mt19937_64 rng(1234);
  const auto config = qprob::model::load_config(model);
  const auto ckpt   = qprob::io::checkpoint::open(model);
  const auto wmap   = qprob::model::map_weights(config, ckpt);
  std::vector<qprob::quant::quantized_linear> layers;
  for (const auto& t : wmap.tensors()) {
    if (t.info != nullptr && t.slot.part == qprob::model::tensor_part::weight &&
        qprob::quant::detail::is_quantized_role(t.slot.role)) {
      layers.push_back({qprob::quant::detail::module_name(t.slot),
                        quantize<P>(ckpt.read_as<float>(t.info->name), t.slot.shape[0], t.slot.shape[1], rng)});
    }
  }
  qprob::quant::gptq_save_options o;
  o.policy            = qprob::quant::runtime_policy::of<P>();
  o.format            = fmt;
  o.overwrite         = true;
  o.write_dequantized = true;
  const auto dir = out / (std::string(qprob::policy_name<P>()) + "_" + std::string(to_string(fmt)));
  qprob::quant::save_gptq_checkpoint(dir, model, layers, o);
  std::printf("%s\n", dir.string().c_str());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s MODEL_DIR OUT_DIR\n", argv[0]);
    return 2;
  }
  try {
    const fs::path model = argv[1];
    const fs::path out   = argv[2];
    fs::create_directories(out);
    namespace p = qprob::policies;
    write_case<p::int4_g128>(model, out, gptq_format::v1);
    write_case<p::int4_g128>(model, out, gptq_format::v2);
    write_case<qprob::precision<4, 32, true, true>>(model, out, gptq_format::v1);
    write_case<p::int4_g64_asym>(model, out, gptq_format::v2);
    write_case<p::int3_g128>(model, out, gptq_format::v1);
    write_case<p::int2_g64>(model, out, gptq_format::v1);
    write_case<p::int8_pc>(model, out, gptq_format::v1);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
