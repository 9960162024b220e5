// SPDX-License-Identifier: Apache-2.0
// Driver of tests/torch/test_engine_parity.py: runs qprob's GPU engine on token ids given as JSON and writes
// what the Python side compares with transformers (float32 reference).
//
//   qprob_engine_check logits --model DIR --dtype f16|bf16|f32 --tokens IN.json --out OUT.bin
//       IN: {"sequences": [[id, ...], ...]}; OUT: little-endian float32, the (T_i, vocab) logits of every
//       sequence concatenated in order (positions start at 0 for each sequence; nothing is prepended)
//   qprob_engine_check score --model DIR --dtype f16|bf16|f32 --requests IN.json --out OUT.json [--no-share]
//       IN: {"requests": [{"context": [...], "continuation": [...]}, ...]} (the --write-requests format of
//       qprob-eval-<task>); OUT: {"scorer", "results": [{"loglik", "is_greedy", "token_logprobs"}, ...]}
// Outputs are written atomically. Exit status 0 on success, 1 with a message on any error, 2 for usage.
#include <qprob/engine/engine.hpp>
#include <qprob/io/atomic_file.hpp>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <string>
#include <vector>

namespace {

using qprob::engine::token_id;

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    throw qprob::format_error(path, "", "cannot open the file");
  }
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw qprob::format_error(path, "", std::string("not valid JSON: ") + e.what());
  }
}

std::vector<token_id> ids_of(const nlohmann::json& j, const std::string& file, const std::string& field) {
  if (!j.is_array()) {
    throw qprob::format_error(file, field, "expected an array of token ids");
  }
  std::vector<token_id> out;
  for (const auto& v : j) {
    if (!v.is_number_integer()) {
      throw qprob::format_error(file, field, "expected integer token ids, found " + v.dump());
    }
    out.push_back(v.get<token_id>());
  }
  return out;
}

int usage() {
  std::fprintf(stderr,
               "usage: qprob_engine_check logits --model DIR --dtype f16|bf16|f32 --tokens IN.json --out OUT.bin\n"
               "       qprob_engine_check score --model DIR --dtype f16|bf16|f32 --requests IN.json --out OUT.json [--no-share]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    return usage();
  }
  const std::string mode = argv[1];
  std::string model, dtype = "f16", tokens, requests, out;
  bool share = true;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value    = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--model") {
      model = value();
    } else if (a == "--dtype") {
      dtype = value();
    } else if (a == "--tokens") {
      tokens = value();
    } else if (a == "--requests") {
      requests = value();
    } else if (a == "--out") {
      out = value();
    } else if (a == "--no-share") {
      share = false;
    } else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return usage();
    }
  }
  if (model.empty() || out.empty() || !qprob::engine::parse_activation_type(dtype) || (mode == "logits" && tokens.empty()) ||
      (mode == "score" && requests.empty()) || (mode != "logits" && mode != "score")) {
    return usage();
  }
  try {
    qprob::engine::engine_options o;
    o.dtype  = qprob::engine::parse_activation_type(dtype);
    auto eng = qprob::engine::engine::from_directory(model, o);
    if (mode == "logits") {
      const auto j = read_json(tokens);
      if (!j.contains("sequences")) {
        throw qprob::format_error(tokens, "sequences", "missing");
      }
      std::string bytes;
      for (std::size_t s = 0; s < j["sequences"].size(); ++s) {
        const auto seq    = ids_of(j["sequences"][s], tokens, "sequences[" + std::to_string(s) + "]");
        const auto logits = eng.logits(seq);
        bytes.append(reinterpret_cast<const char*>(logits.data()), logits.size() * sizeof(float));
      }
      qprob::io::write_file_atomic(out, bytes);
      std::printf("%s: logits of %zu sequences (vocab %lld) -> %s\n", eng.name().c_str(), j["sequences"].size(),
                  static_cast<long long>(eng.config().vocab_size), out.c_str());
    } else {
      const auto j = read_json(requests);
      if (!j.contains("requests") || !j["requests"].is_array()) {
        throw qprob::format_error(requests, "requests", "missing or not an array");
      }
      std::vector<std::vector<token_id>> ctx, cont;
      for (std::size_t i = 0; i < j["requests"].size(); ++i) {
        const auto& r      = j["requests"][i];
        const auto where   = "requests[" + std::to_string(i) + "]";
        if (!r.contains("context") || !r.contains("continuation")) {
          throw qprob::format_error(requests, where, "needs \"context\" and \"continuation\"");
        }
        ctx.push_back(ids_of(r["context"], requests, where + ".context"));
        cont.push_back(ids_of(r["continuation"], requests, where + ".continuation"));
      }
      std::vector<qprob::engine::token_request> reqs;
      for (std::size_t i = 0; i < ctx.size(); ++i) {
        reqs.push_back({ctx[i], cont[i]});
      }
      const auto scores = eng.score(reqs, true, share);
      nlohmann::json o_json;
      o_json["scorer"] = eng.name();
      auto& rs         = o_json["results"] = nlohmann::json::array();
      for (const auto& s : scores) {
        rs.push_back({{"loglik", s.loglik}, {"is_greedy", s.is_greedy}, {"token_logprobs", s.token_logprobs}});
      }
      qprob::io::write_file_atomic(out, o_json.dump() + "\n");
      const auto st = eng.stats();
      std::printf("%s: %zu requests, %lld rows computed for %lld request tokens -> %s\n", eng.name().c_str(),
                  scores.size(), static_cast<long long>(st.rows_computed), static_cast<long long>(st.request_tokens),
                  out.c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qprob_engine_check: %s\n", e.what());
    return 1;
  }
  return 0;
}
