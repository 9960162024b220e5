// SPDX-License-Identifier: Apache-2.0
// Parity driver for tests/torch/test_metrics_parity.py: reads the cases the script wrote (JSON: ragged
// inputs of a full and a quantized model plus options), computes every metric with the host reference and,
// when a GPU is usable, with the device implementation, and writes both as JSON for the script to compare
// with torchmetrics / scipy. Usage: metrics_check <cases.json> <results.json>
#include <qprob/core/device.hpp>
#include <qprob/core/stream.hpp>
#include <qprob/metrics/metrics.cuh>
#include <qprob/metrics/reference.hpp>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <exception>
#include <fstream>
#include <string>
#include <vector>

namespace m = qprob::metrics;
using nlohmann::json;

namespace {

m::choice_scores read_scores(const json& c, const char* ll_key) {
  m::choice_scores s;
  s.offsets  = c.at("offsets").get<std::vector<std::int64_t>>();
  s.loglik   = c.at(ll_key).get<std::vector<double>>();
  s.char_len = c.at("char_len").get<std::vector<std::int32_t>>();
  s.token_len = c.at("token_len").get<std::vector<std::int32_t>>();
  s.gold     = c.at("gold").get<std::vector<std::int32_t>>();
  return s;
}

m::metric_options read_options(const json& o) {
  m::metric_options r;
  const std::string score = o.value("score", "sum");
  r.score = score == "char" ? m::scoring::char_normalized : score == "token" ? m::scoring::token_normalized : m::scoring::sum;
  r.calibration_bins = o.value("bins", 15);
  r.edges      = o.value("edges", std::string("upper_closed")) == "torchmetrics" ? m::bin_edges::torchmetrics : m::bin_edges::upper_closed;
  const std::string ace = o.value("ace", "nixon");
  r.ace = ace == "equal_mass_top_label" ? m::ace_variant::equal_mass_top_label
          : ace == "uniform_average"    ? m::ace_variant::uniform_average
          : ace == "seed_compat"        ? m::ace_variant::seed_compat
                                        : m::ace_variant::nixon;
  r.ace_ranges = o.value("ace_ranges", 15);
  r.shift_bins = o.value("shift_bins", 10);
  r.bootstrap_iterations = 0;
  return r;
}

json model_json(const m::model_metrics& r) {
  json j = {{"acc", r.acc},           {"acc_norm", r.acc_norm}, {"accuracy", r.accuracy}, {"conf", r.conf},
            {"conf_correct", r.conf_correct}, {"conf_err", r.conf_err}, {"conf_true", r.conf_true},
            {"entropy", r.entropy},   {"entropy_bits", r.entropy_bits}, {"brier", r.brier}, {"nll", r.nll},
            {"ece", r.ece},           {"mce", r.mce},           {"rmsce", r.rmsce},       {"ace", r.ace},
            {"acc_stderr", r.acc_stderr}, {"acc_wilson_lo", r.acc_wilson.lower}, {"acc_wilson_hi", r.acc_wilson.upper}};
  std::vector<double> cnt, conf, acc;
  for (const auto& b : r.reliability) {
    cnt.push_back(static_cast<double>(b.count));
    conf.push_back(b.mean_conf);
    acc.push_back(b.accuracy);
  }
  j["rel_count"] = cnt;
  j["rel_conf"]  = conf;
  j["rel_acc"]   = acc;
  return j;
}

json paired_json(const m::paired_metrics& r) {
  json j = {{"jsd_mean", r.jsd_mean}, {"jsd_median", r.jsd_median}, {"js_distance_mean", r.js_distance_mean},
            {"js_distance_median", r.js_distance_median}, {"true_class_jsd", r.true_class_jsd},
            {"true_class_js_distance", r.true_class_js_distance}, {"kl_full_quant", r.kl_full_quant},
            {"kl_quant_full", r.kl_quant_full}, {"flip_rate", r.flip_rate},
            {"table", {r.both_correct, r.full_only, r.quant_only, r.both_wrong}},
            {"ttest_t", r.ttest_conf_true.t}, {"ttest_p", r.ttest_conf_true.p},
            {"wilcoxon_statistic", r.wilcoxon_conf_true.statistic}, {"wilcoxon_p", r.wilcoxon_conf_true.p},
            {"wilcoxon_exact", r.wilcoxon_conf_true.exact}, {"mcnemar_p", r.mcnemar.p}};
  std::vector<double> cnt, mc, sc, mt, st;
  for (const auto& b : r.conf_shift_by_bin) {
    cnt.push_back(static_cast<double>(b.count));
    mc.push_back(b.mean_conf_shift);
    sc.push_back(b.stderr_conf_shift);
    mt.push_back(b.mean_true_shift);
    st.push_back(b.stderr_true_shift);
  }
  j["shift_count"] = cnt;
  j["shift_mean_conf"] = mc;
  j["shift_se_conf"] = sc;
  j["shift_mean_true"] = mt;
  j["shift_se_true"] = st;
  return j;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s <cases.json> <results.json>\n", argv[0]);
    return 2;
  }
  try {
    std::ifstream in(argv[1]);
    const json cases = json::parse(in);
    const bool gpu   = !qprob::gpu_unavailable_reason().has_value();
    json out         = {{"gpu", gpu}, {"cases", json::array()}};
    for (const auto& c : cases.at("cases")) {
      const auto full  = read_scores(c, "loglik");
      const auto quant = read_scores(c, "loglik_quant");
      const auto opt   = read_options(c.at("options"));
      json r           = {{"name", c.at("name")}};
      r["host"]        = model_json(m::compute_model_metrics_reference(full.view(), opt));
      r["host_quant"]  = model_json(m::compute_model_metrics_reference(quant.view(), opt));
      r["host_paired"] = paired_json(m::compute_paired_metrics_reference(full.view(), quant.view(), opt));
      if (gpu) {
        qprob::stream st;
        const m::device_choice_scores_storage df(full.view(), st), dq(quant.view(), st);
        r["device"]        = model_json(m::compute_model_metrics(df.view(), opt, st));
        r["device_quant"]  = model_json(m::compute_model_metrics(dq.view(), opt, st));
        r["device_paired"] = paired_json(m::compute_paired_metrics(df.view(), dq.view(), opt, st));
      }
      out["cases"].push_back(r);
    }
    std::ofstream(argv[2]) << out.dump();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "metrics_check: %s\n", e.what());
    return 1;
  }
  return 0;
}
