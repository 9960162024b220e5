// SPDX-License-Identifier: Apache-2.0
// Malformed inputs: each throws format_error naming the file, the line (or item) and the problem, and
// skip_malformed turns the same rows into a counted skip with the message kept.
#include <qprob/tasks/load.hpp>

#include <doctest/doctest.h>

#include <string>

#include "tasks_test_util.hpp"

namespace qt = qprob::tasks;
using qprob::test::check_format_error;
using qprob::test::fixture_dir;

namespace {

const std::string good_arc =
    R"({"id": "a", "question": {"stem": "s", "choices": [{"text": "x", "label": "A"}, {"text": "y", "label": "B"}]}, "answerKey": "B"})";

qt::task_data load_file(const std::string& task, const std::filesystem::path& file, qt::task_options o = {}) {
  o.file = file;
  return qt::load_task(task, file.parent_path(), o);
}

} // namespace

TEST_CASE("malformed: a bad JSON line names the file and line") {
  fixture_dir dir("bad");
  const auto p = dir.write("arc.jsonl", good_arc + "\n" + good_arc + "\n{\"id\": \"c\", \"question\": \n");
  check_format_error([&] { (void)load_file("arc_easy", p); }, {"arc.jsonl", "line 3", "invalid JSON"});
}

TEST_CASE("malformed: a JSON line that is not an object") {
  fixture_dir dir("bad");
  const auto p = dir.write("b.jsonl", "[1, 2]\n");
  check_format_error([&] { (void)load_file("boolq", p); }, {"b.jsonl", "line 1", "expected a JSON object"});
}

TEST_CASE("malformed: a missing field is named with its path") {
  fixture_dir dir("bad");
  const auto p = dir.write(
      "arc.jsonl", good_arc + "\n" + R"({"id": "b", "question": {"choices": []}, "answerKey": "A"})" + "\n");
  check_format_error([&] { (void)load_file("arc_easy", p); },
                     {"arc.jsonl", "line 2", "missing field \"question.stem\""});
}

TEST_CASE("malformed: a field of the wrong type") {
  fixture_dir dir("bad");
  const auto p = dir.write("b.jsonl",
                           R"({"question": 7, "passage": "p", "label": "true"})"
                           "\n");
  check_format_error([&] { (void)load_file("boolq", p); },
                     {"b.jsonl", "line 1", "\"question\" is not a string"});
}

TEST_CASE("malformed: an ARC answerKey that is not a choice label") {
  fixture_dir dir("bad");
  const auto p = dir.write(
      "arc.jsonl",
      R"({"id": "a", "question": {"stem": "s", "choices": [{"text": "x", "label": "A"}, {"text": "y", "label": "B"}]}, "answerKey": "E"})"
      "\n");
  check_format_error([&] { (void)load_file("arc_easy", p); },
                     {"arc.jsonl", "line 1", "answerKey \"E\" is not one of the choice labels [A, B]"});
}

TEST_CASE("malformed: a BoolQ label that is neither true nor false") {
  fixture_dir dir("bad");
  const auto p = dir.write("b.jsonl",
                           R"({"question": "q", "passage": "p", "label": "maybe"})"
                           "\n");
  check_format_error([&] { (void)load_file("boolq", p); },
                     {"b.jsonl", "line 1", "\"label\" must be true/false"});
}

TEST_CASE("malformed: a HellaSwag label out of range (HF and klosax)") {
  fixture_dir dir("bad");
  const auto p = dir.write(
      "h.jsonl",
      R"({"activity_label": "a", "ctx_a": "b", "ctx_b": "", "endings": ["1", "2", "3", "4"], "label": "4"})"
      "\n");
  qt::task_options hf;
  hf.format = qt::data_format::hf_jsonl;
  check_format_error([&] { (void)load_file("hellaswag", p, hf); },
                     {"h.jsonl", "line 1", "label 4 is out of range [0, 4)"});
  const auto k = dir.write("h.txt", "A: x. he\n1\na\nb\nc\nd\nB: y. she\n7\na\nb\nc\nd\n");
  check_format_error([&] { (void)load_file("hellaswag", k); },
                     {"h.txt", "line 8", "gold label must be 0, 1, 2 or 3"});
}

TEST_CASE("malformed: a truncated klosax HellaSwag file names the first line of the incomplete item") {
  fixture_dir dir("bad");
  const auto k = dir.write("h.txt", "A: x. he\n1\na\nb\nc\nd\nB: y\n2\n");
  check_format_error([&] { (void)load_file("hellaswag", k); }, {"h.txt", "line 7", "incomplete item"});
}

TEST_CASE("malformed: PIQA labels out of range or not line-aligned") {
  fixture_dir dir("bad");
  const std::string row = R"({"goal": "g", "sol1": "a", "sol2": "b"})"
                          "\n";
  const auto p          = dir.write("valid.jsonl", row + row);
  dir.write("valid-labels.lst", "0\n2\n");
  check_format_error([&] { (void)load_file("piqa", p); },
                     {"valid-labels.lst", "line 2", "label must be 0 or 1"});
  dir.write("valid-labels.lst", "0\n1\n1\n");
  check_format_error([&] { (void)load_file("piqa", p); }, {"valid-labels.lst", "3 labels", "2 rows"});
  dir.write("valid-labels.lst", "0\n");
  check_format_error([&] { (void)load_file("piqa", p); }, {"valid.jsonl", "line 2", "only 1 labels"});
}

TEST_CASE("malformed: StoryCloze CSV with an unbalanced quote or a bad answer") {
  fixture_dir dir("bad");
  const std::string header =
      "InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,RandomFifthSentenceQuiz1,"
      "RandomFifthSentenceQuiz2,AnswerRightEnding\n";
  const auto p = dir.write("s.csv", header + "id,a,b,c,d,e,f,1\nid2,\"a,b,c,d,e,f,2\n");
  check_format_error([&] { (void)load_file("storycloze_2016", p); }, {"s.csv", "line 3", "never closed"});
  const auto q = dir.write("t.csv", header + "id,a,b,c,d,e,f,3\n");
  check_format_error([&] { (void)load_file("storycloze_2016", q); },
                     {"t.csv", "line 2", "AnswerRightEnding must be 1 or 2"});
  const auto r = dir.write(
      "u.jsonl",
      R"({"input_sentence_1": "a", "input_sentence_2": "b", "input_sentence_3": "c", "input_sentence_4": "d", "sentence_quiz1": "e", "sentence_quiz2": "f", "answer_right_ending": 0})"
      "\n");
  check_format_error([&] { (void)load_file("xstorycloze_en", r); },
                     {"u.jsonl", "line 1", "answer_right_ending must be 1 or 2"});
}

TEST_CASE("malformed: OpenBookQA choices without the (A)-(D) markers") {
  fixture_dir dir("bad");
  const auto p = dir.write("o.tsv",
                           "ID\tQuestion Stem\tChoices\tComplete Question\tAnswer Key\n"
                           "1\tq\t(A) x (B) y (C) z\tq (A) x\tA\n");
  check_format_error([&] { (void)load_file("openbookqa", p); }, {"o.tsv", "line 2", "no \"(D) \" marker"});
  const auto q = dir.write("k.tsv",
                           "ID\tQuestion Stem\tChoices\tComplete Question\tAnswer Key\n"
                           "1\tq\t(A) w (B) x (C) y (D) z\tq\tE\n");
  check_format_error([&] { (void)load_file("openbookqa", q); }, {"k.tsv", "line 2", "Answer Key \"E\""});
}

TEST_CASE("malformed: TruthfulQA targets whose first answer is not the true one") {
  fixture_dir dir("bad");
  const auto p = dir.write(
      "mc.json", R"([{"question": "q", "mc1_targets": {"a": 1, "b": 0}, "mc2_targets": {"a": 1, "b": 0}},
                                          {"question": "r", "mc1_targets": {"a": 0, "b": 1}, "mc2_targets": {"a": 1}}])");
  check_format_error([&] { (void)load_file("truthfulqa_mc1", p); },
                     {"mc.json", "item 1", "exactly one choice, the first"});
  check_format_error([&] { (void)load_file("truthfulqa_mc2", p); },
                     {"mc.json", "item 1", "at least 2 choices"});
  const auto q = dir.write("bad.json", "{\"not\": \"a list\"}");
  check_format_error([&] { (void)load_file("truthfulqa_mc1", q); }, {"bad.json", "JSON list"});
}

TEST_CASE("malformed: a Jigsaw label that is not binary") {
  fixture_dir dir("bad");
  const auto p = dir.write("j.csv", "id,comment_text,is_bad\n1,\"fine, thanks\",False\n2,hm,maybe\n");
  check_format_error([&] { (void)load_file("poe_toxicity", p); }, {"j.csv", "line 3", "\"is_bad\" must be"});
  qt::task_options o;
  o.toxicity_label = "toxic";
  check_format_error([&] { (void)load_file("poe_toxicity", p, o); },
                     {"j.csv", "header", "missing column \"toxic\""});
}

TEST_CASE("malformed: a missing file is a format_error naming it") {
  check_format_error([] { (void)qt::load_task("arc_easy", "/nonexistent-qprob-dir"); },
                     {"/nonexistent-qprob-dir/arc_easy/ARC-Easy-Test.jsonl", "cannot open"});
}

TEST_CASE("skip_malformed counts skipped rows, keeps their messages and numbers documents densely") {
  fixture_dir dir("bad");
  const auto p = dir.write("b.jsonl",
                           R"({"question": "q1", "passage": "p", "label": "true"})"
                           "\n"
                           R"({"question": "q2", "passage": "p"})"
                           "\n"
                           R"({"question": "q3", "passage": "p", "label": "false"})"
                           "\n"
                           R"({"question": "q4", "passage": "p", "label": 3})"
                           "\n");
  qt::task_options o;
  o.skip_malformed = true;
  const auto t     = load_file("boolq", p, o);
  REQUIRE(t.docs.size() == 2);
  CHECK(t.skipped == 2);
  REQUIRE(t.skip_messages.size() == 2);
  CHECK(t.skip_messages[0].find("line 2: missing field \"label\"") != std::string::npos);
  CHECK(t.skip_messages[1].find("line 4") != std::string::npos);
  CHECK(t.docs[1].doc_id == 1);
  CHECK(t.docs[1].source.ends_with("b.jsonl:3"));
  // Invalid JSON is not a row that can be skipped: the reader cannot know where the row ends.
  const auto q = dir.write("c.jsonl", "{\"question\": \n");
  check_format_error([&] { (void)load_file("boolq", q, o); }, {"c.jsonl", "line 1", "invalid JSON"});
}
