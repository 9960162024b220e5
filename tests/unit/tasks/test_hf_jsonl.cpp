// SPDX-License-Identifier: Apache-2.0
// The Hugging Face `datasets` JSONL path of every task, on small hand-written fixtures that use each export's
// field names (docs/tasks.md lists them). Each checks the exact requests and the gold index.
#include <qprob/tasks/load.hpp>

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "tasks_test_util.hpp"

namespace qt  = qprob::tasks;
using strings = std::vector<std::string>;
using qt::request;
using qt::request_kind;

namespace {

qt::task_data load_hf(const std::string& task, const std::string& jsonl) {
  qprob::test::fixture_dir dir("hf");
  qt::task_options o;
  o.format = qt::data_format::hf_jsonl;
  o.file   = dir.write(task + ".jsonl", jsonl);
  return qt::load_task(task, dir.path(), o);
}

strings continuations(const qt::document& d) {
  strings out;
  for (const auto& r : d.requests()) {
    CHECK(r.context == d.context);
    out.push_back(r.continuation);
  }
  return out;
}

} // namespace

TEST_CASE("hf arc_easy: allenai/ai2_arc flat layout") {
  const auto t =
      load_hf("arc_easy",
              R"({"id": "Q1", "question": "Which is a gas?", "choices": {"text": ["ice", "steam", "rock"], )"
              R"("label": ["1", "2", "3"]}, "answerKey": "2"})"
              "\n");
  REQUIRE(t.docs.size() == 1);
  CHECK(t.docs[0].context == "Question: Which is a gas?\nAnswer:");
  CHECK(continuations(t.docs[0]) == strings{" ice", " steam", " rock"});
  CHECK(t.docs[0].gold == 1);
  CHECK(t.docs[0].labels == std::vector<int>{0, 1, 0});
}

TEST_CASE("hf boolq: super_glue integer labels") {
  const auto t = load_hf("boolq",
                         R"({"question": "is it", "passage": "T -- P.", "idx": 0, "label": 1})"
                         "\n"
                         R"({"question": "is it not", "passage": "T -- Q.", "idx": 1, "label": 0})"
                         "\n");
  REQUIRE(t.docs.size() == 2);
  CHECK(t.docs[0].context == "T -- P.\nQuestion: is it?\nAnswer:");
  CHECK(continuations(t.docs[0]) == strings{" no", " yes"});
  CHECK(t.docs[0].gold == 1);
  CHECK(t.docs[1].gold == 0);
}

TEST_CASE("hf hellaswag: Rowan/hellaswag raw fields go through lm-eval's process_docs") {
  const auto t = load_hf(
      "hellaswag",
      R"({"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow covering the window of a car, and a woman wearing winter clothes smiles.", "ctx_b": "then", "ctx": "", "endings": [", the man adds wax to the windshield and cuts it.", ", a person board a ski lift, while two men supporting the head of the person wearing winter clothes snow as the we girls sled.", ", the man puts on a christmas coat, knitted with netting.", ", the man continues removing the snow on his car."], "source_id": "x", "split": "val", "split_type": "indomain", "label": "3"})"
      "\n"
      R"({"activity_label": "Home and Garden", "ctx_a": "[header] How to grow a rose [title] Pick a spot.  [step] Roses need sun.", "ctx_b": "", "endings": ["[substeps] Water   them.", "a", "b", "c"], "label": 0})"
      "\n");
  REQUIRE(t.docs.size() == 2);
  CHECK(t.docs[0].context
        == "Removing ice from car: Then, the man writes over the snow covering the window of a car, and a "
           "woman wearing "
           "winter clothes smiles. Then");
  CHECK(continuations(t.docs[0])[3] == " , the man continues removing the snow on his car.");
  CHECK(t.docs[0].gold == 3);
  // " [title]" -> ". ", tags dropped, one pass of "  " -> " " ("spot.  [step] Roses" keeps two spaces:
  // ".  " + "" + " " is three spaces before the pass), and strip ran first, so a leading tag leaves a space.
  CHECK(t.docs[1].context == "Home and Garden: How to grow a rose. Pick a spot.  Roses need sun.");
  CHECK(t.docs[1].choices[0] == " Water  them.");
  CHECK(continuations(t.docs[1])[0] == "  Water  them.");
  CHECK(t.docs[1].gold == 0);
}

TEST_CASE("hf openbookqa: allenai/openbookqa main layout, answerKey lstrip") {
  const auto t =
      load_hf("openbookqa",
              R"({"id": "7-980", "question_stem": "The sun is responsible for", "choices": {"text": )"
              R"(["puppies learning new tricks", "plants sprouting, blooming and wilting"], "label": ["A", )"
              R"("B"]}, "answerKey": " B"})"
              "\n");
  REQUIRE(t.docs.size() == 1);
  CHECK(t.docs[0].context == "The sun is responsible for");
  CHECK(continuations(t.docs[0])
        == strings{" puppies learning new tricks", " plants sprouting, blooming and wilting"});
  CHECK(t.docs[0].gold == 1);
}

TEST_CASE("hf piqa: label field in the row") {
  const auto t = load_hf("piqa",
                         R"({"goal": "g", "sol1": "a ", "sol2": "b", "label": 1})"
                         "\n");
  REQUIRE(t.docs.size() == 1);
  CHECK(t.docs[0].context == "Question: g\nAnswer:");
  CHECK(continuations(t.docs[0]) == strings{" a ", " b"});
  CHECK(t.docs[0].gold == 1);
}

TEST_CASE("hf storycloze_2016 and xstorycloze_en: story_cloze layout") {
  const std::string row =
      R"({"story_id": "s", "input_sentence_1": "A.", "input_sentence_2": "B.", "input_sentence_3": "C.", )"
      R"("input_sentence_4": "D.", "sentence_quiz1": "E1.", "sentence_quiz2": "E2.", "answer_right_ending": 1})"
      "\n";
  for (const std::string task : {"storycloze_2016", "xstorycloze_en"}) {
    CAPTURE(task);
    const auto t = load_hf(task, row);
    REQUIRE(t.docs.size() == 1);
    CHECK(t.docs[0].context == "A. B. C. D.");
    CHECK(continuations(t.docs[0]) == strings{" E1.", " E2."});
    CHECK(t.docs[0].gold == 0);
  }
}

TEST_CASE("hf truthfulqa: multiple_choice layout with choices and labels lists") {
  const std::string row =
      R"({"question": "Q?", "mc1_targets": {"choices": ["yes.", "no."], "labels": [1, 0]}, )"
      R"("mc2_targets": {"choices": ["yes.", "sure.", "no."], "labels": [1, 1, 0]}})"
      "\n";
  const auto mc1 = load_hf("truthfulqa_mc1", row);
  REQUIRE(mc1.docs.size() == 1);
  CHECK(mc1.docs[0].context == std::string(qt::truthfulqa_qa_primer) + "\n\nQ: Q?\nA:");
  CHECK(continuations(mc1.docs[0]) == strings{" yes.", " no."});
  const auto mc2 = load_hf("truthfulqa_mc2", row);
  CHECK(mc2.docs[0].choices == strings{"yes.", "sure.", "no."});
  CHECK(mc2.docs[0].labels == std::vector<int>{1, 1, 0});
  CHECK(mc2.docs[0].gold == 0);
}

TEST_CASE("hf poe tasks: boolq true/false and jigsaw toxicity rows") {
  const auto b = load_hf("poe_boolq_tf",
                         R"({"question": "is it", "passage": "p", "label": true})"
                         "\n");
  REQUIRE(b.docs.size() == 1);
  CHECK(b.docs[0].requests()
        == std::vector<request>{request{request_kind::next_token_vocab,
                                        0,
                                        0,
                                        "Respond with True or False only.\nis it\nAnswer:",
                                        "",
                                        {"False", "True"}}});
  CHECK(b.docs[0].gold == 1);
  const auto tox = load_hf("poe_toxicity",
                           R"({"comment_text": "you\nfool", "toxic": 1, "is_bad": true})"
                           "\n");
  REQUIRE(tox.docs.size() == 1);
  CHECK(tox.docs[0].context
        == "Given a sentence, respond with only 'True' if the sentence is toxic or else 'False'.\nSentence: "
           "'you "
           "fool'\nAnswer:");
  CHECK(tox.docs[0].gold == 1);
}

TEST_CASE("hf jsonl: blank lines are not rows, CRLF is accepted, limit stops early") {
  qprob::test::fixture_dir dir("hf");
  qt::task_options o;
  o.format     = qt::data_format::hf_jsonl;
  o.file       = dir.write("p.jsonl",
                     "\r\n{\"goal\": \"g1\", \"sol1\": \"a\", \"sol2\": \"b\", \"label\": 0}\r\n\n"
                           "{\"goal\": \"g2\", \"sol1\": \"a\", \"sol2\": \"b\", \"label\": 1}\r\n"
                           "this line is never read\n");
  o.limit      = 2;
  const auto t = qt::load_task("piqa", dir.path(), o);
  REQUIRE(t.docs.size() == 2);
  CHECK(t.docs[1].context == "Question: g2\nAnswer:");
  CHECK(t.docs[1].source.ends_with("p.jsonl:4"));
}

TEST_CASE("hf jsonl: a file is required and unknown tasks are rejected") {
  qt::task_options o;
  o.format = qt::data_format::hf_jsonl;
  CHECK_THROWS_AS((void)qt::load_task("arc_easy", "/nonexistent", o), qprob::invalid_argument);
  CHECK_THROWS_WITH_AS((void)qt::load_task("arc_challenge", "/nonexistent"),
                       doctest::Contains("unknown task \"arc_challenge\""),
                       qprob::invalid_argument);
}
