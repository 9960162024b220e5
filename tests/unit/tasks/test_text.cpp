// SPDX-License-Identifier: Apache-2.0
// Python-semantics string helpers: str.strip / capitalize / replace, re.sub(r"\[.*?\]", ""), lm-eval's
// HellaSwag preprocess and the klosax context split. Expected values were worked out by hand from the
// Python definitions (each case names the rule it pins).
#include <qprob/tasks/load.hpp>
#include <qprob/tasks/text.hpp>

#include <doctest/doctest.h>

#include <string>

namespace qt = qprob::tasks;

TEST_CASE("python_strip removes ASCII and Unicode whitespace at both ends only") {
  CHECK(qt::python_strip("  a b \t\n") == "a b");
  CHECK(qt::python_strip("") == "");
  CHECK(qt::python_strip(" \r\n\v\f") == "");
  CHECK(qt::python_strip("\xC2\xA0x\xE3\x80\x80") == "x");     // U+00A0 and U+3000 are Python spaces
  CHECK(qt::python_strip("\xE2\x80\x8Bx") == "\xE2\x80\x8Bx"); // U+200B is not (str.isspace is False)
  CHECK(qt::python_strip("x\xE2\x80\xA9") == "x");             // U+2029
  CHECK(qt::python_lstrip("  B ") == "B ");
}

TEST_CASE("python_replace is one left-to-right pass like str.replace") {
  CHECK(qt::python_replace("a   b", "  ", " ") == "a  b");
  CHECK(qt::python_replace("a    b", "  ", " ") == "a  b");
  CHECK(qt::python_replace("x [title]y [title]", " [title]", ". ") == "x. y. ");
  CHECK(qt::python_replace("none", "zz", "y") == "none");
}

TEST_CASE("python_capitalize_ascii upper-cases the first letter and lower-cases the rest") {
  CHECK(qt::python_capitalize_ascii("the lady") == "The lady");
  CHECK(qt::python_capitalize_ascii("he watched CNN") == "He watched cnn");
  CHECK(qt::python_capitalize_ascii("\" power dribble") == "\" power dribble");
  CHECK(qt::python_capitalize_ascii("") == "");
}

TEST_CASE("remove_bracketed matches re.sub of a lazy bracket span without newlines") {
  CHECK(qt::remove_bracketed("a [b] c [d]") == "a  c ");
  CHECK(qt::remove_bracketed("[a [b] c]") == " c]"); // lazy: "[a [b]" is the first match
  CHECK(qt::remove_bracketed("open [ never") == "open [ never");
  CHECK(qt::remove_bracketed("x [a\nb] y") == "x [a\nb] y"); // '.' does not match a newline
}

TEST_CASE("hellaswag_preprocess follows lm-eval utils.preprocess step by step") {
  // strip -> " [title]" to ". " -> drop [..] -> "  " to " ". strip runs first, so a leading tag leaves a
  // leading space (as in lm-eval: its WikiHow endings "[substeps] ..." become " ...").
  CHECK(qt::hellaswag_preprocess(" [header] How to x [title] Do y. [step] Z. ") == " How to x. Do y. Z.");
  CHECK(qt::hellaswag_preprocess("a   b") == "a  b");
  CHECK(qt::hellaswag_preprocess("is using wrap to wrap a pair of skis.")
        == "is using wrap to wrap a pair of skis.");
}

TEST_CASE("hellaswag_query rebuilds lm-eval's query from raw fields") {
  CHECK(qt::hellaswag_query("Roof shingle removal", "A man is sitting on a roof.", "he")
        == "Roof shingle removal: A man is sitting on a roof. He");
  CHECK(qt::hellaswag_query("Home and Garden", "[header] How to x [title] Do y.", "")
        == "Home and Garden: How to x. Do y.");
}

TEST_CASE("hellaswag_split_context takes a trailing lower-case fragment as ctx_b") {
  auto [a, b] =
      qt::hellaswag_split_context("A lady walks to a barbell. She bends down and grabs the pole. the lady");
  CHECK(a == "A lady walks to a barbell. She bends down and grabs the pole.");
  CHECK(b == "the lady");
  auto [a2, b2] = qt::hellaswag_split_context("Do this. Then that.");
  CHECK(a2 == "Do this. Then that.");
  CHECK(b2.empty());
  auto [a3, b3] = qt::hellaswag_split_context("a man walks");
  CHECK(a3.empty());
  CHECK(b3 == "a man walks");
  auto [a4, b4] = qt::hellaswag_split_context("It rains. 5 the guy"); // not a lower-case start: kept whole
  CHECK(a4 == "It rains. 5 the guy");
  CHECK(b4.empty());
}

TEST_CASE("collapse_whitespace joins lines with single spaces") {
  CHECK(qt::collapse_whitespace("2006\n\nAll tags  are off\t") == "2006 All tags are off");
  CHECK(qt::collapse_whitespace("  ") == "");
}
