// SPDX-License-Identifier: Apache-2.0
// evaluate() on stories260K (the host reference scorer) and on a counting fake scorer: results are identical
// for batch sizes 1 and 7 and arrive in document/choice order; batches never exceed batch_size; the
// next-token mode agrees with the loglikelihood of the same token; a scorer without next-token support says
// so. Skips with the reason when shared/ is absent.
#include <qprob/eval/evaluate.hpp>
#include <qprob/eval/output.hpp>
#include <qprob/eval/reference_scorer.hpp>
#include <qprob/tasks/load.hpp>
#include <qprob/tokenizer/tokenizer.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "tasks_test_util.hpp"

namespace qe = qprob::eval;
namespace qt = qprob::tasks;

namespace {

/// A scorer whose answer is a function of the ids alone, recording the size of every batch.
class fake_scorer final : public qe::scorer {
public:
  std::string name() const override { return "fake"; }
  std::vector<qe::loglikelihood_result> score(std::span<const qe::encoded_request> batch) override {
    batches.push_back(batch.size());
    std::vector<qe::loglikelihood_result> out;
    for (const auto& r : batch) {
      double s = 0;
      for (const auto id : r.continuation) {
        s -= static_cast<double>(id) / 100.0;
      }
      out.push_back({s - static_cast<double>(r.context.size()) / 1000.0, r.continuation.size() == 1,
                     static_cast<std::int32_t>(r.continuation.size())});
    }
    return out;
  }
  std::vector<std::size_t> batches;
};

struct fixture {
  qprob::tokenizer tok;
  qt::task_data task;
};

std::optional<std::filesystem::path> stories_or_skip() {
  std::string reason;
  const auto m = qprob::test::shared_path("models/stories260K", &reason);
  if (!m) {
    MESSAGE(reason);
  }
  return m;
}

}  // namespace

TEST_CASE("evaluate: batch size 1 and 7 give identical results, in document and choice order") {
  const auto model = stories_or_skip();
  const auto data  = qprob::test::shared_data_or_skip("arc_easy");
  if (!model || !data) {
    return;
  }
  const auto tok = qprob::tokenizer::from_directory(*model);
  qt::task_options to;
  to.limit        = 12;  // includes documents with different choice counts? (ARC: mostly 4)
  const auto task = qt::load_task("arc_easy", *data, to);
  auto engine     = qe::reference_scorer::from_directory(*model);

  qe::eval_options one;
  one.batch_size = 1;
  one.limit      = 9;
  std::vector<std::pair<std::size_t, std::size_t>> calls;
  one.progress   = [&](std::size_t done, std::size_t total) { calls.emplace_back(done, total); };
  const auto a   = qe::evaluate(task, tok, engine, one);
  qe::eval_options seven;
  seven.batch_size = 7;
  seven.limit      = 9;
  const auto b     = qe::evaluate(task, tok, engine, seven);
  REQUIRE(a.docs.size() == 9);
  CHECK(a == b);
  CHECK(a.requests == 36);
  CHECK(calls.front() == std::pair<std::size_t, std::size_t>{0, 36});
  CHECK(calls.back() == std::pair<std::size_t, std::size_t>{36, 36});
  CHECK(calls.size() == 37);
  for (std::size_t i = 0; i < a.docs.size(); ++i) {
    CAPTURE(i);
    const auto& d = task.docs[i];
    REQUIRE(a.docs[i].choices.size() == d.choices.size());
    CHECK(a.docs[i].doc_id == d.doc_id);
    for (std::size_t c = 0; c < d.choices.size(); ++c) {
      // Each result is the reference loglikelihood of that very request.
      const auto enc = qprob::model::encode_request(tok, d.context, d.target_delimiter + d.choices[c]);
      const auto ll  = qprob::reference::loglikelihood(engine.model(), enc.context, enc.continuation);
      CHECK(a.docs[i].choices[c].loglik == ll.sum);
      CHECK(a.docs[i].choices[c].is_greedy == ll.is_greedy);
      CHECK(a.docs[i].choices[c].num_tokens == static_cast<std::int32_t>(enc.continuation.size()));
      CHECK(a.docs[i].choices[c].char_len == static_cast<std::int32_t>(d.choices[c].size()));  // ASCII here
    }
  }
  // The metrics input has one sample per document with the gold index.
  const auto s = qe::to_choice_scores(task, a);
  CHECK(s.gold.size() == 9);
  CHECK(s.offsets.back() == 36);
  CHECK(s.char_len.size() == 36);
  // The samples lines do not depend on the batch size either.
  for (std::size_t i = 0; i < a.docs.size(); ++i) {
    CHECK(qe::sample_line(task.docs[i], a.docs[i]) == qe::sample_line(task.docs[i], b.docs[i]));
  }
}

TEST_CASE("evaluate: batches never exceed batch_size and cover every request once (fake scorer)") {
  const auto model = stories_or_skip();
  const auto data  = qprob::test::shared_data_or_skip("hellaswag");
  if (!model || !data) {
    return;
  }
  const auto tok = qprob::tokenizer::from_directory(*model);
  qt::task_options to;
  to.limit        = 5;
  const auto task = qt::load_task("hellaswag", *data, to);
  std::optional<qe::eval_result> first;
  for (const std::size_t bs : {1, 3, 7, 20, 64}) {
    CAPTURE(bs);
    fake_scorer f;
    qe::eval_options o;
    o.batch_size   = bs;
    const auto res = qe::evaluate(task, tok, f, o);
    std::size_t sum = 0;
    for (const auto n : f.batches) {
      CHECK(n <= bs);
      CHECK(n > 0);
      sum += n;
    }
    CHECK(sum == 20);
    CHECK(res.scorer == "fake");
    if (first) {
      CHECK(res == *first);
    } else {
      first = res;
    }
  }
  qe::eval_options zero;
  zero.batch_size = 0;
  fake_scorer f;
  CHECK_THROWS_AS((void)qe::evaluate(task, tok, f, zero), qprob::invalid_argument);
}

TEST_CASE("evaluate: a continuation longer than max_length is refused with the document named (as lm-eval asserts)") {
  const auto model = stories_or_skip();
  const auto data  = qprob::test::shared_data_or_skip("piqa");
  if (!model || !data) {
    return;
  }
  const auto tok = qprob::tokenizer::from_directory(*model);
  qt::task_options to;
  to.limit        = 3;
  const auto task = qt::load_task("piqa", *data, to);
  const auto reqs = qe::encode_task_requests(task, tok);  // no max_length: no check
  std::size_t longest = 0;
  for (const auto& r : reqs.loglikelihood) {
    longest = std::max(longest, r.continuation.size());
  }
  REQUIRE(longest > 2);
  const auto limit = static_cast<std::int64_t>(longest) - 1;
  // The scorer's max_length is what evaluate() checks against when the options name none.
  qe::reference_scorer engine(qprob::reference::reference_model::from_directory(*model), limit);
  try {
    (void)qe::evaluate(task, tok, engine);
    FAIL("evaluate accepted a continuation of ", longest, " tokens with max_length ", limit);
  } catch (const qprob::invalid_argument& e) {
    const std::string what = e.what();
    CAPTURE(what);
    CHECK(what.find("more than max_length=" + std::to_string(limit)) != std::string::npos);
    CHECK(what.find("--max-length") != std::string::npos);
    CHECK(what.find("piqa doc ") != std::string::npos);  // the first offending request, with its choice
    CHECK(what.find(" choice ") != std::string::npos);
  }
  qe::eval_options o;
  o.max_length = static_cast<std::int64_t>(longest);  // exactly the longest: accepted
  CHECK_NOTHROW((void)qe::encode_task_requests(task, tok, o));
  o.max_length = limit;
  CHECK_THROWS_WITH_AS((void)qe::encode_task_requests(task, tok, o), doctest::Contains("tokens, more than max_length"),
                       qprob::invalid_argument);
}

TEST_CASE("evaluate: next_token_vocab documents (Price of Efficiency)") {
  const auto model = stories_or_skip();
  const auto data  = qprob::test::shared_data_or_skip("boolq");
  if (!model || !data) {
    return;
  }
  const auto tok = qprob::tokenizer::from_directory(*model);
  qt::task_options to;
  to.limit        = 4;
  const auto task = qt::load_task("poe_boolq_tf", *data, to);
  SUBCASE("a scorer without next-token support says so") {
    fake_scorer f;
    try {
      (void)qe::evaluate(task, tok, f);
      FAIL("expected invalid_argument");
    } catch (const qprob::invalid_argument& e) {
      CHECK(std::string(e.what()).find("next_token_vocab requests (Price-of-Efficiency tasks) are not supported by this scorer") !=
            std::string::npos);
    }
  }
  SUBCASE("the reference scorer's greedy token has the loglikelihood it reports") {
    auto engine    = qe::reference_scorer::from_directory(*model);
    qe::eval_options o;
    o.batch_size   = 3;
    const auto res = qe::evaluate(task, tok, engine, o);
    REQUIRE(res.docs.size() == 4);
    for (std::size_t i = 0; i < 4; ++i) {
      CAPTURE(i);
      const auto& r  = res.docs[i];
      const auto ctx = tok.encode(task.docs[i].context, true);
      const std::vector<qe::token_id> cont{r.next.token};
      const auto ll  = qprob::reference::loglikelihood(engine.model(), ctx, cont);
      CHECK(ll.is_greedy);
      CHECK(r.next.logprob == doctest::Approx(ll.sum).epsilon(1e-12));
      CHECK(r.next.entropy >= 0.0);
      CHECK(r.next.entropy <= std::log(static_cast<double>(engine.model().vocab_size())) + 1e-12);
      CHECK(r.next_correct == qe::next_token_matches(r.next_text, task.docs[i].choices[task.docs[i].gold]));
    }
    const auto s = qe::summarize(task, res);
    CHECK(s.kind == qt::request_kind::next_token_vocab);
    CHECK(s.sum.n == 4);
    CHECK(s.sum.conf > 0.0);
    CHECK(std::isnan(s.sum.brier));
  }
  CHECK(qe::next_token_matches(" True", "True"));
  CHECK(qe::next_token_matches("TRUE\n", "true"));
  CHECK_FALSE(qe::next_token_matches("Tr", "True"));
}
