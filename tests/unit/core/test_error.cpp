// SPDX-License-Identifier: Apache-2.0
// Error types and checks: messages must name the offending values and where the check is.
#include <qprob/core/error.hpp>

#include <doctest/doctest.h>

#include <string>

namespace {
void needs_multiple(long k, long g) {
  QPROB_CHECK(k % g == 0, "k=", k, " is not a multiple of group_size=", g);
}
void needs_equal(int rows, int cols) { QPROB_CHECK_EQ(rows, cols, "square matrix required"); }
}  // namespace

TEST_CASE("QPROB_CHECK throws invalid_argument naming the values, the condition and the location") {
  CHECK_NOTHROW(needs_multiple(256, 128));
  try {
    needs_multiple(4100, 128);
    FAIL("expected an exception");
  } catch (const qprob::invalid_argument& e) {
    const std::string what = e.what();
    CHECK(what.find("k=4100 is not a multiple of group_size=128") != std::string::npos);
    CHECK(what.find("k % g == 0") != std::string::npos);
    CHECK(what.find("test_error.cpp:") != std::string::npos);
  }
}

TEST_CASE("QPROB_CHECK_EQ prints both operands and the extra message") {
  try {
    needs_equal(3, 4);
    FAIL("expected an exception");
  } catch (const qprob::invalid_argument& e) {
    const std::string what = e.what();
    CHECK(what.find("rows=3") != std::string::npos);
    CHECK(what.find("cols=4") != std::string::npos);
    CHECK(what.find("square matrix required") != std::string::npos);
  }
}

TEST_CASE("qprob errors share one base class and format_error names the file and the field") {
  const qprob::format_error e("model/config.json", "hidden_size", "expected a positive integer, got -3");
  CHECK(std::string(e.what()) == "model/config.json: hidden_size: expected a positive integer, got -3");
  CHECK(e.file() == "model/config.json");
  CHECK(e.field() == "hidden_size");
  CHECK_THROWS_AS(throw qprob::format_error("f", "", "x"), qprob::error);
  CHECK_THROWS_AS(throw qprob::invalid_argument("x"), qprob::error);
  CHECK(std::string(qprob::format_error("a.bin", "", "truncated").what()) == "a.bin: truncated");
}
