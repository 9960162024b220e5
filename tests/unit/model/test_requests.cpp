// SPDX-License-Identifier: Apache-2.0
// lm-eval's request tokenization (model/requests.hpp) on the real stories260K / babyllama tokenizers: hand-written
// expected ids (taken from transformers 5.17's LlamaTokenizer through lm-eval's encode-pair rules, see
// tests/torch/make_golden_logits.py), the golden requests of tests/data/golden, and the end-to-end score.
#include <qprob/model/requests.hpp>
#include <qprob/reference/forward.hpp>

#include "support.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using ids = std::vector<qprob::tokenizer::id_type>;

TEST_CASE("trailing whitespace is counted like Python's str.rstrip") {
  using qprob::model::detail::trailing_whitespace_bytes;
  CHECK(trailing_whitespace_bytes("") == 0);
  CHECK(trailing_whitespace_bytes("abc") == 0);
  CHECK(trailing_whitespace_bytes("abc ") == 1);
  CHECK(trailing_whitespace_bytes("abc \t\n\r\v\f") == 6);
  CHECK(trailing_whitespace_bytes("   ") == 3);
  CHECK(trailing_whitespace_bytes("a\xC2\xA0") == 2);      // U+00A0 no-break space
  CHECK(trailing_whitespace_bytes("a\xE3\x80\x80 ") == 4);  // U+3000 ideographic space + space
  CHECK(trailing_whitespace_bytes("a\xE2\x80\x8B") == 0);   // U+200B zero-width space is not whitespace
  CHECK(trailing_whitespace_bytes("caf\xC3\xA9") == 0);    // é
  CHECK(trailing_whitespace_bytes("x\x1F") == 1);          // unit separator: isspace() in Python
}

TEST_CASE("lm-eval model input: left truncation to max_length + 1, last token dropped") {
  const qprob::model::encoded_request r{{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, {11, 12, 13}};
  const auto full = qprob::model::lm_eval_model_input(r, 100);
  CHECK(full.tokens == ids{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12});
  CHECK(full.continuation_rows == 3);
  const auto cut = qprob::model::lm_eval_model_input(r, 5);  // (all)[-6:][:-1]
  CHECK(cut.tokens == ids{8, 9, 10, 11, 12});
  CHECK(cut.continuation_rows == 3);
  CHECK_THROWS_AS(qprob::model::lm_eval_model_input(r, 2), qprob::invalid_argument);
}

TEST_CASE("encode_request on stories260K's tokenizer: hand-written cases") {
  std::string reason;
  const auto dir = qprob::test::shared_path("models/stories260K", &reason);
  if (!dir) {
    MESSAGE(reason);
    return;
  }
  const auto tok = qprob::tokenizer::from_directory(*dir);
  REQUIRE(tok.bos_id() == 1);

  SUBCASE("trailing space of the context moves to the continuation; BOS from the tokenizer config") {
    // transformers + lm-eval: context "Once upon a time", continuation " there was a girl."
    const auto r = qprob::model::encode_request(tok, "Once upon a time ", "there was a girl.");
    CHECK(r.context == ids{1, 403, 407, 261, 378});
    CHECK(r.continuation == ids{383, 286, 261, 298, 315, 421, 426});
    // Same as encoding the pair with the space already on the continuation side.
    CHECK(qprob::model::encode_request(tok, "Once upon a time", " there was a girl.") == r);
    // The context is encoded without its trailing space (SentencePiece would drop it anyway; byte-level BPE
    // would make it a token of its own, which is what the move prevents).
    CHECK(r.context == tok.encode("Once upon a time", true));
  }
  SUBCASE("empty context: the prefix token (BOS) is the context; the continuation has no BOS") {
    const auto r = qprob::model::encode_request(tok, "", "Once upon a time");
    CHECK(r.context == ids{1});
    CHECK(r.continuation == ids{403, 407, 261, 378});
    qprob::model::encode_options eos_prefix;
    eos_prefix.prefix_token_id = 2;
    CHECK(qprob::model::encode_request(tok, "", "Once upon a time", eos_prefix).context == ids{2});
  }
  SUBCASE("a context that already starts with the BOS string gets no second BOS") {
    const auto r = qprob::model::encode_request(tok, "<s>Once upon a time", " there");
    REQUIRE(!r.context.empty());
    CHECK(r.context == tok.encode("<s>Once upon a time", false));
    CHECK(std::count(r.context.begin(), r.context.end(), 1) <= 1);
  }
  SUBCASE("add_bos_token=false drops BOS; the split is whole[len(context):]") {
    qprob::model::encode_options no_bos;
    no_bos.add_bos_token = false;
    const auto r         = qprob::model::encode_request(tok, "Once upon a time ", "there was a girl.", no_bos);
    CHECK(r.context == ids{403, 407, 261, 378});
    CHECK(r.continuation == ids{383, 286, 261, 298, 315, 421, 426});
    auto whole = tok.encode("Once upon a time there was a girl.", true);
    ids joined = {1};
    joined.insert(joined.end(), r.context.begin(), r.context.end());
    joined.insert(joined.end(), r.continuation.begin(), r.continuation.end());
    CHECK(joined == whole);
  }
  SUBCASE("a whitespace-only context becomes BOS alone") {
    const auto r = qprob::model::encode_request(tok, "  ", "Once");
    CHECK(r.context == ids{1});
    const auto whole = tok.encode("  Once", true);
    CHECK(r.continuation == ids(whole.begin() + 1, whole.end()));
    qprob::model::encode_options no_bos;
    no_bos.add_bos_token = false;
    CHECK_THROWS_AS(qprob::model::encode_request(tok, "  ", "Once", no_bos), qprob::invalid_argument);
  }
}

TEST_CASE("encode_request reproduces transformers + lm-eval on the golden requests, and scores them") {
  std::string reason;
  const auto dir = qprob::test::shared_path("models/stories260K", &reason);
  if (!dir) {
    MESSAGE(reason);
    return;
  }
  const auto js = fs::path(QPROB_TEST_DATA_DIR) / "golden" / "stories260K_logits.json";
  if (!fs::exists(js)) {
    MESSAGE("golden file " << js.string() << " is missing: run tests/torch/make_golden_logits.py; skipping");
    return;
  }
  const auto tok  = qprob::tokenizer::from_directory(*dir);
  const auto m    = qprob::reference::reference_model::from_directory(*dir);
  const auto meta = nlohmann::json::parse(std::ifstream(js));
  std::size_t n   = 0;
  for (const auto& r : meta.at("requests")) {
    INFO(r.at("source").get<std::string>());
    const auto e = qprob::model::encode_request(tok, r.at("context").get<std::string>(),
                                                r.at("continuation").get<std::string>());
    CHECK(e.context == r.at("context_ids").get<ids>());
    CHECK(e.continuation == r.at("continuation_ids").get<ids>());
    // End to end: text -> lm-eval tokens -> reference score = transformers' score (1e-10, see
    // test_reference_forward.cpp for the tolerance).
    const auto ll     = qprob::reference::loglikelihood(m, e.context, e.continuation);
    const double want = r.at("sum").get<double>();
    CHECK(std::abs(ll.sum - want) <= 1e-10 * (1.0 + std::abs(want)));
    ++n;
  }
  CHECK(n == meta.at("requests").size());
  CHECK(n >= 10);
}

TEST_CASE("encode_request on the babyllama tokenizers: BOS present, context + continuation = whole") {
  for (const char* name : {"models/babyllama-tok105", "models/babyllama-tok361"}) {
    std::string reason;
    const auto dir = qprob::test::shared_path(name, &reason);
    if (!dir) {
      MESSAGE(reason);
      continue;
    }
    INFO(name);
    const auto tok = qprob::tokenizer::from_directory(*dir);
    REQUIRE(tok.bos_id());
    const auto r = qprob::model::encode_request(tok, "Question: What is the sun?\nAnswer:", " A star.");
    REQUIRE(!r.context.empty());
    CHECK(r.context.front() == *tok.bos_id());
    CHECK(!r.continuation.empty());
    ids joined = r.context;
    joined.insert(joined.end(), r.continuation.begin(), r.continuation.end());
    CHECK(joined == tok.encode("Question: What is the sun?\nAnswer: A star.", true));
  }
}
