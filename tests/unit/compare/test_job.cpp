// SPDX-License-Identifier: Apache-2.0
// The compare job (compare/job.hpp) on stories260K: a rerun reuses every phase with identical numbers; a
// truncated, altered or foreign cache file is ignored and recomputed; --quantized <out>/quantized reproduces
// the quantized evaluation; the saved checkpoint loads back and holds exactly the RTN codes of the model's
// weights; GPTQ's calibrated layers reconstruct their outputs better than RTN's; the host-only run_compare refuses
// --device cuda (that is compare/gpu_backend.hpp's); a tiny
// random BLOOM model (stories260K's tokenizer) runs end to end with its fused query_key_value; next-token
// (Price-of-Efficiency) tasks are scored, cached and paired.
#include <qprob/compare/job.hpp>

#include "io_test_util.hpp"
#include "support.hpp"
#include "tiny_models.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

struct shared_inputs {
  fs::path model, data;
};

std::optional<shared_inputs> shared() {
  std::string reason;
  const auto model = qprob::test::shared_path("models/stories260K", &reason);
  const auto data  = qprob::test::shared_path("data", &reason);
  if (!model || !data) {
    MESSAGE("skipped: ", reason);
    return std::nullopt;
  }
  return shared_inputs{*model, *data};
}

qprob::compare::compare_options small_job(const shared_inputs& s, const fs::path& out) {
  qprob::compare::compare_options o;
  o.model_dir          = s.model;
  o.data_dir           = s.data;
  o.out_dir            = out;
  o.tasks              = {"piqa", "boolq"};
  o.limit              = 4;
  o.batch_size         = 3;
  o.progress           = false;
  o.quant.method       = qprob::compare::quant_method::rtn;
  o.quant.policy       = {4, 128, true, false};
  o.log                = [](const std::string&) {};
  return o;
}

/// The numbers of a results document without the run block (timings, reuse flags) and the quantization
/// timing, for comparing runs.
qprob::compare::ojson numbers(qprob::compare::ojson doc) {
  doc.erase("run");
  doc["quantization"].erase("seconds");
  return doc;
}

std::vector<fs::path> cache_files(const fs::path& out) {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(out / "cache")) {
    if (e.path().filename().string().rfind("eval-", 0) == 0) {
      files.push_back(e.path());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void spit(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary | std::ios::trunc) << s; }

}  // namespace

TEST_CASE("compare: a rerun reuses every phase, gives the same numbers and leaves no temporary file") {
  const auto s = shared();
  if (!s) {
    return;
  }
  qprob::test::temp_dir tmp("compare_rerun");
  const auto o     = small_job(*s, tmp / "out");
  const auto first = qprob::compare::run_compare(o);
  CHECK(first.reused_full.empty());
  CHECK(first.reused_quantized.empty());
  CHECK_FALSE(first.reused_quantization);
  CHECK(cache_files(tmp / "out").size() == 4);  // 2 tasks x (full, quantized)
  const auto second = qprob::compare::run_compare(o);
  CHECK(second.reused_full == std::vector<std::string>{"piqa", "boolq"});
  CHECK(second.reused_quantized == std::vector<std::string>{"piqa", "boolq"});
  CHECK(second.reused_quantization);
  CHECK(numbers(second.document) == numbers(first.document));
  for (const auto& e : fs::recursive_directory_iterator(tmp / "out")) {
    CHECK_MESSAGE(e.path().filename().string().find(".tmp.") == std::string::npos, e.path().string());
  }
  // Another limit is another key: nothing is reused for the evaluations, the checkpoint is.
  auto o2  = o;
  o2.limit = 3;
  const auto third = qprob::compare::run_compare(o2);
  CHECK(third.reused_full.empty());
  CHECK(third.reused_quantization);
  CHECK(third.document["tasks"]["piqa"]["n"] == 3);
}

TEST_CASE("compare: truncated, altered or foreign cache files are ignored and recomputed, never trusted") {
  const auto s = shared();
  if (!s) {
    return;
  }
  qprob::test::temp_dir tmp("compare_corrupt");
  auto o = small_job(*s, tmp / "out");
  std::vector<std::string> logs;
  o.log            = [&](const std::string& line) { logs.push_back(line); };
  const auto first = qprob::compare::run_compare(o);
  const auto files = cache_files(tmp / "out");
  REQUIRE(files.size() == 4);
  // 0: truncated (an interrupted writer without the atomic rename); 1: a log-likelihood altered with the JSON
  // still valid; 2: another file's contents under this name (foreign key); 3: left intact.
  const auto text0 = slurp(files[0]);
  spit(files[0], text0.substr(0, text0.size() / 2));
  auto text1       = slurp(files[1]);
  const auto pos   = text1.find("[-");
  REQUIRE(pos != std::string::npos);
  text1.replace(pos, 2, "[-1");  // -x.yz -> -1x.yz: still a number, no longer the stored one
  spit(files[1], text1);
  spit(files[2], slurp(files[3]));
  logs.clear();
  const auto second = qprob::compare::run_compare(o);
  CHECK(second.reused_full.size() + second.reused_quantized.size() == 1);
  CHECK(numbers(second.document) == numbers(first.document));
  std::string all;
  for (const auto& l : logs) {
    all += l + "\n";
  }
  INFO(all);
  CHECK(all.find("unreadable") != std::string::npos);
  CHECK(all.find("checksum mismatch") != std::string::npos);
  CHECK(all.find("key differs") != std::string::npos);
  // And the recomputed files are whole again: a third run reuses everything.
  const auto third = qprob::compare::run_compare(o);
  CHECK(third.reused_full.size() == 2);
  CHECK(third.reused_quantized.size() == 2);
}

TEST_CASE("compare: the saved checkpoint loads back with RTN's codes, and --quantized reproduces the evaluation") {
  const auto s = shared();
  if (!s) {
    return;
  }
  qprob::test::temp_dir tmp("compare_ckpt");
  const auto o     = small_job(*s, tmp / "out");
  const auto first = qprob::compare::run_compare(o);
  const auto ck    = qprob::quant::load_gptq_checkpoint(tmp / "out" / "quantized");
  const auto model = qprob::reference::reference_model::from_directory(s->model);
  const auto lins  = qprob::compare::block_linears(s->model);
  REQUIRE(ck.layers.size() == lins.size());
  for (const auto& bl : lins) {
    INFO(bl.name);
    const auto* l = ck.find_layer(bl.name);
    REQUIRE(l != nullptr);
    const auto& w  = model.linear_at(bl.layer, bl.role).w;
    const auto ref = qprob::reference::rtn_quantize<qprob::policies::int4_g128, double>(
        qprob::make_host_view(w.data(), bl.n, bl.k));
    CHECK(l->weight.qweight == ref.qweight);
    CHECK(l->weight.zeros == ref.zeros);
    CHECK(l->weight.scales.size() == ref.scales.size());
  }
  CHECK(first.document["quantization"]["method"] == "rtn");
  CHECK(first.document["quantization"]["quantized_layers"] == lins.size());

  auto o2          = o;
  o2.out_dir       = tmp / "loaded";
  o2.quantized_dir = tmp / "out" / "quantized";
  const auto again = qprob::compare::run_compare(o2);
  CHECK(again.document["quantization"]["method"] == "loaded");
  for (const char* task : {"piqa", "boolq"}) {
    CHECK(again.document["tasks"][task]["quantized"] == first.document["tasks"][task]["quantized"]);
    CHECK(again.document["tasks"][task]["paired"] == first.document["tasks"][task]["paired"]);
    CHECK(slurp(tmp / "loaded" / ("samples_" + std::string(task) + "_quantized.jsonl")) ==
          slurp(tmp / "out" / ("samples_" + std::string(task) + "_quantized.jsonl")));
  }
}

TEST_CASE("compare: GPTQ reconstructs layer 0's outputs on the calibration windows better than RTN") {
  const auto s = shared();
  if (!s) {
    return;
  }
  using R        = qprob::model::tensor_role;
  const auto tok = qprob::tokenizer::from_directory(s->model);
  qprob::quant::calibration_options co;
  co.source   = s->data / "wikitext2" / "wiki.test.raw";
  co.nsamples = 4;
  co.seqlen   = 32;
  const auto windows = qprob::quant::calibration_windows(co, tok);
  const auto full    = qprob::reference::reference_model::from_directory(s->model);
  const auto lins    = qprob::compare::block_linears(s->model);
  qprob::compare::quantize_settings qs;
  qs.policy = {4, 128, true, false};
  auto gptq = full;
  qs.method = qprob::compare::quant_method::gptq;
  std::size_t calls = 0;
  const auto res = qprob::compare::quantize_model(gptq, lins, qs, windows, [&](std::size_t, std::size_t) { ++calls; });
  CHECK(calls == lins.size() + 1);
  auto rtn  = full;
  qs.method = qprob::compare::quant_method::rtn;
  (void)qprob::compare::quantize_model(rtn, lins, qs, {});
  // Layer 0's inputs do not depend on quantization: compare || X (W - Wq)^T ||^2 over the windows.
  for (const R role : {R::q, R::k, R::v, R::gate, R::up}) {
    INFO(qprob::model::to_string(role));
    const auto& w  = full.linear_at(0, role);
    const auto& wg = gptq.linear_at(0, role).w;
    const auto& wr = rtn.linear_at(0, role).w;
    CHECK(wg != w.w);
    double err_g = 0, err_r = 0;
    for (const auto& win : windows) {
      (void)full.logits(win, [&](std::int64_t l, R slot, std::span<const double> x, std::int64_t rows) {
        if (l != 0 || slot != role) {
          return;
        }
        for (std::int64_t t = 0; t < rows; ++t) {
          for (std::int64_t o = 0; o < w.out; ++o) {
            double dg = 0, dr = 0;
            for (std::int64_t i = 0; i < w.in; ++i) {
              const auto xi = x[static_cast<std::size_t>(t * w.in + i)];
              const auto k  = static_cast<std::size_t>(o * w.in + i);
              dg += xi * (w.w[k] - wg[k]);
              dr += xi * (w.w[k] - wr[k]);
            }
            err_g += dg * dg;
            err_r += dr * dr;
          }
        }
      });
    }
    CHECK(err_g < err_r);
  }
  for (const auto& r : res.reports) {
    CHECK(std::isfinite(r.loss));
    CHECK(r.damp_percent >= 0.01);
  }
}

TEST_CASE("compare: the host run_compare refuses --device cuda, and desc_act with RTN, with a clear message") {
  const auto s = shared();
  if (!s) {
    return;
  }
  qprob::test::temp_dir tmp("compare_refuse");
  auto o   = small_job(*s, tmp / "out");
  o.device = "cuda";
  CHECK_THROWS_WITH_AS(qprob::compare::run_compare(o), doctest::Contains("--device cuda needs the GPU backend"),
                       qprob::invalid_argument);
  o.device              = "cpu";
  o.quant.policy.desc_act = true;
  CHECK_THROWS_WITH_AS(qprob::compare::run_compare(o), doctest::Contains("--desc-act needs --quant gptq"),
                       qprob::invalid_argument);
  o.quant.policy = {5, 128, true, false};
  CHECK_THROWS_AS(qprob::compare::run_compare(o), qprob::invalid_argument);
}

TEST_CASE("compare: a tiny BLOOM model runs end to end with GPTQ, its checkpoint holds the fused query_key_value") {
  const auto s = shared();
  if (!s) {
    return;
  }
  qprob::test::temp_dir tmp("compare_bloom");
  auto cfg          = qprob::test::tiny_config("bloom");
  cfg["vocab_size"] = 512;  // stories260K's tokenizer
  const auto model  = tmp / "bloom";
  qprob::test::write_model(model, cfg, qprob::test::tiny_weights(cfg, 5));
  for (const char* f : {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"}) {
    fs::copy_file(s->model / f, model / f);
  }
  auto o           = small_job(*s, tmp / "out");
  o.model_dir      = model;
  o.tasks          = {"piqa"};
  o.limit          = 3;
  o.quant.method   = qprob::compare::quant_method::gptq;
  o.calib.source   = s->data / "wikitext2" / "wiki.test.raw";
  o.calib.nsamples = 2;
  o.calib.seqlen   = 16;
  const auto first = qprob::compare::run_compare(o);
  const auto& doc  = first.document;
  CHECK(doc["model"]["family"] == "bloom");
  CHECK(doc["quantization"]["quantized_layers"] == 8);
  CHECK(doc["quantization"]["layers"][0]["name"] == "transformer.h.0.self_attention.query_key_value");
  CHECK(std::isfinite(doc["quantization"]["layers"][0]["gptq_loss"].get<double>()));
  const auto ck = qprob::quant::load_gptq_checkpoint(tmp / "out" / "quantized");
  const auto* l = ck.find_layer("transformer.h.1.self_attention.query_key_value");
  REQUIRE(l != nullptr);
  CHECK(l->role == qprob::model::tensor_role::qkv);
  CHECK(l->weight.n == 36);
  CHECK(doc["tasks"]["piqa"]["paired"]["kl"].get<double>() > 0);  // the quantized model differs

  // --quantized on the saved checkpoint reproduces the quantized evaluation exactly.
  auto o2          = o;
  o2.out_dir       = tmp / "loaded";
  o2.quantized_dir = tmp / "out" / "quantized";
  const auto again = qprob::compare::run_compare(o2);
  CHECK(again.document["tasks"]["piqa"]["quantized"] == doc["tasks"]["piqa"]["quantized"]);
  CHECK(again.document["tasks"]["piqa"]["paired"] == doc["tasks"]["piqa"]["paired"]);
}

TEST_CASE("compare: next-token tasks are scored over the vocabulary, paired, cached and summarized") {
  const auto s = shared();
  if (!s) {
    return;
  }
  qprob::test::temp_dir tmp("compare_next_token");
  auto o           = small_job(*s, tmp / "out");
  o.tasks          = {"poe_boolq_tf", "piqa"};
  o.limit          = 5;
  const auto first = qprob::compare::run_compare(o);
  const auto& t    = first.document["tasks"]["poe_boolq_tf"];
  CHECK(t["kind"] == "next_token_vocab");
  CHECK(first.document["tasks"]["piqa"]["kind"] == "loglikelihood");
  CHECK(t["vocab_size"] == 512);
  CHECK(t["answers"] == qprob::compare::ojson::array({"False", "True"}));
  CHECK_FALSE(t.contains("num_choices"));
  for (const char* which : {"full", "quantized"}) {
    INFO(which);
    const auto& m = t[which];
    CHECK(m["n"] == 5);
    for (const char* absent : {"conf_true", "brier", "nll", "acc_norm"}) {
      CHECK_FALSE(m.contains(absent));
    }
    // Per-model numbers agree with the per-document samples.
    std::ifstream in(tmp / "out" / ("samples_poe_boolq_tf_" + std::string(which) + ".jsonl"));
    double conf = 0, entropy = 0, correct = 0;
    int lines   = 0;
    for (std::string line; std::getline(in, line); ++lines) {
      const auto rec = nlohmann::json::parse(line);
      conf += rec["qprob"]["conf"].get<double>();
      entropy += rec["qprob"]["entropy"].get<double>();
      correct += rec["acc"].get<double>();
    }
    REQUIRE(lines == 5);
    CHECK(m["conf"].get<double>() == doctest::Approx(conf / 5).epsilon(1e-12));
    CHECK(m["entropy"].get<double>() == doctest::Approx(entropy / 5).epsilon(1e-12));
    CHECK(m["acc"].get<double>() == doctest::Approx(correct / 5));
    CHECK(m["entropy"].get<double>() > 0);
    CHECK(m["entropy"].get<double>() <= std::log(512.0));
  }
  const auto& p = t["paired"];
  CHECK(p["n"] == 5);
  CHECK(p["agreement"].get<double>() + p["flip_rate"].get<double>() == doctest::Approx(1.0));
  const auto& c = p["correctness"];
  CHECK(c["both_correct"].get<int>() + c["full_only"].get<int>() + c["quant_only"].get<int>() +
            c["both_wrong"].get<int>() == 5);
  CHECK(p["mean_conf_shift"].get<double>() ==
        doctest::Approx(t["quantized"]["conf"].get<double>() - t["full"]["conf"].get<double>()));
  CHECK(p["mcnemar"]["b"] == c["full_only"]);
  CHECK(p.contains("ttest_conf"));
  CHECK_FALSE(p.contains("jsd"));
  std::int64_t binned = 0;
  for (const auto& b : p["conf_shift_by_bin"]) {
    binned += b["count"].get<std::int64_t>();
  }
  CHECK(binned == 5);
  CHECK(qprob::compare::summary_table(first.document).find("poe_boolq_tf (nt)") != std::string::npos);

  // A rerun reuses the next-token evaluations (the cache keeps token, log-probability, entropy and text).
  const auto second = qprob::compare::run_compare(o);
  CHECK(second.reused_full == std::vector<std::string>{"poe_boolq_tf", "piqa"});
  CHECK(second.reused_quantized == std::vector<std::string>{"poe_boolq_tf", "piqa"});
  CHECK(numbers(second.document) == numbers(first.document));
}
