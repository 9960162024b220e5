// SPDX-License-Identifier: Apache-2.0
#pragma once
// A hand-written results.json for the report tests: three tasks with round numbers, so every table cell can be
// checked by hand. arc_easy (4 choices): entropy_bits given, true-class JS distance given, Conf_true
// significant. boolq (2 choices, so ECE in table 1): entropy in nats only (H = entropy / ln 2), McNemar and
// the optional Conf t-test significant. hellaswag (4 choices): full Conf_err null (n/a), p = 0.0499 just
// significant, McNemar p = 0.05 exactly (not significant: p < alpha is strict), optional H t-test not
// significant.

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

namespace qprob::test {

inline const char* report_fixture_json = R"json({
  "model": {"name": "Llama-7B", "path": "models/llama-7b", "dtype": "float16"},
  "quantization": {"label": "+ GPTQ 4-bit g128", "method": "gptq", "bits": 4, "group_size": 128},
  "software": {"qprob": "0.1.0"},
  "metric_options": {"alpha": 0.05, "calibration_bins": 3, "shift_bins": 3},
  "tasks": {
    "hellaswag": {
      "n": 10042, "num_choices": 4,
      "full": {"acc": 0.5683, "acc_norm": 0.7, "ece": 0.343, "ace": 0.378, "conf": 0.968, "conf_err": null,
               "conf_true": 0.5683, "entropy": 0.0788, "entropy_bits": 0.1137, "brier": 0.6,
               "reliability": [{"lower": 0.5, "upper": 1.0, "count": 10042, "conf": 0.968, "acc": 0.5683}]},
      "quantized": {"acc": 0.5369, "acc_norm": 0.69, "ece": 0.35, "ace": 0.4, "conf": 0.9648, "conf_err": 0.9513,
               "conf_true": 0.5369, "entropy": 0.0846, "entropy_bits": 0.1221, "brier": 0.62,
               "reliability": [{"lower": 0.5, "upper": 1.0, "count": 10042, "conf": 0.9648, "acc": 0.5369}]},
      "paired": {"jsd": 0.004, "kl": 0.009, "flip_rate": 0.12, "js_distance": 0.1,
                 "ttest_conf_true": {"t": 1.96, "p": 0.0499}, "ttest_entropy": {"t": -1.2, "p": 0.2},
                 "mcnemar": {"p": 0.05},
                 "conf_shift_by_bin": [{"lower": 0.25, "upper": 0.625, "count": 0, "mean_conf_shift": null,
                                        "se_conf_shift": null, "mean_true_shift": null, "se_true_shift": null},
                                       {"lower": 0.625, "upper": 1.0, "count": 10042, "mean_conf_shift": -0.0032,
                                        "se_conf_shift": 0.0004, "mean_true_shift": -0.0314, "se_true_shift": 0.002}]}
    },
    "arc_easy": {
      "n": 2376, "num_choices": 4,
      "full": {"acc": 0.811, "acc_norm": 0.79, "ece": 0.05, "ace": 0.0794, "conf": 0.8845, "conf_err": 0.7544,
               "conf_true": 0.7682, "entropy": 0.2987, "entropy_bits": 0.4309, "brier": 0.28,
               "reliability": [{"lower": 0.0, "upper": 0.3333, "count": 10, "conf": 0.2, "acc": 0.3},
                               {"lower": 0.3333, "upper": 0.6667, "count": 0, "conf": null, "acc": null},
                               {"lower": 0.6667, "upper": 1.0, "count": 2366, "conf": 0.89, "acc": 0.81}]},
      "quantized": {"acc": 0.805, "acc_norm": 0.785, "ece": 0.06, "ace": 0.0821, "conf": 0.8815, "conf_err": 0.7561,
               "conf_true": 0.7576, "entropy": 0.3079, "entropy_bits": 0.4442, "brier": 0.29,
               "reliability": [{"lower": 0.0, "upper": 0.3333, "count": 12, "conf": 0.21, "acc": 0.25},
                               {"lower": 0.3333, "upper": 0.6667, "count": 30, "conf": 0.5, "acc": 0.4},
                               {"lower": 0.6667, "upper": 1.0, "count": 2334, "conf": 0.89, "acc": 0.81}]},
      "paired": {"jsd": 0.0123, "kl": 0.0251, "flip_rate": 0.041, "js_distance": 0.0712, "true_class_js_distance": 0.0333,
                 "ttest_conf_true": {"t": 5.12, "p": 3.2e-07}, "mcnemar": {"p": 0.21},
                 "conf_shift_by_bin": [{"lower": 0.25, "upper": 0.5, "count": 100, "mean_conf_shift": -0.02,
                                        "se_conf_shift": 0.004, "mean_true_shift": -0.015, "se_true_shift": 0.003},
                                       {"lower": 0.5, "upper": 0.75, "count": 0, "mean_conf_shift": null,
                                        "se_conf_shift": null, "mean_true_shift": null, "se_true_shift": null},
                                       {"lower": 0.75, "upper": 1.0, "count": 2276, "mean_conf_shift": -0.001,
                                        "se_conf_shift": 0.0005, "mean_true_shift": -0.01, "se_true_shift": 0.001}]}
    },
    "boolq": {
      "n": 3270, "num_choices": 2,
      "full": {"acc": 0.8361, "acc_norm": 0.8361, "ece": 0.3862, "ace": 0.3, "conf": 0.7621, "conf_err": 0.648,
               "conf_true": 0.7137, "entropy": 0.5, "brier": 0.3,
               "reliability": [{"lower": 0.5, "upper": 0.75, "count": 1000, "conf": 0.62, "acc": 0.7},
                               {"lower": 0.75, "upper": 1.0, "count": 2270, "conf": 0.83, "acc": 0.9}]},
      "quantized": {"acc": 0.8305, "acc_norm": 0.8305, "ece": 0.3878, "ace": 0.31, "conf": 0.7675, "conf_err": 0.6556,
               "conf_true": 0.7137, "entropy": 0.51, "brier": 0.31,
               "reliability": [{"lower": 0.5, "upper": 0.75, "count": 950, "conf": 0.63, "acc": 0.69},
                               {"lower": 0.75, "upper": 1.0, "count": 2320, "conf": 0.84, "acc": 0.89}]},
      "paired": {"jsd": 0.002, "kl": 0.0041, "flip_rate": 0.02, "js_distance": 0.045,
                 "ttest_conf_true": {"t": 0.67, "p": 0.5}, "ttest_conf": {"t": -3.0, "p": 0.0027},
                 "mcnemar": {"p": 0.001},
                 "conf_shift_by_bin": [{"lower": 0.5, "upper": 0.75, "count": 1000, "mean_conf_shift": 0.01,
                                        "se_conf_shift": 0.002, "mean_true_shift": 0.0, "se_true_shift": 0.001},
                                       {"lower": 0.75, "upper": 1.0, "count": 2270, "mean_conf_shift": 0.005,
                                        "se_conf_shift": 0.001, "mean_true_shift": 0.0, "se_true_shift": 0.0005}]}
    }
  }
})json";

/// The fixture parsed, for tests that edit it.
inline nlohmann::ordered_json report_fixture() { return nlohmann::ordered_json::parse(report_fixture_json); }

/// Writes `results` as <dir>/results.json (creating dir) and returns dir.
inline std::filesystem::path write_results(const std::filesystem::path& dir, const nlohmann::ordered_json& results) {
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "results.json") << results.dump(2);
  return dir;
}

}  // namespace qprob::test
