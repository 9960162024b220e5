// SPDX-License-Identifier: Apache-2.0
// The RFC-4180 reader: quoting rules, line numbers of records, line ends, and one test per malformed input
// asserting that the message names the file, the line and the problem.
#include <qprob/tasks/csv.hpp>

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "tasks_test_util.hpp"

namespace qt  = qprob::tasks;
using strings = std::vector<std::string>;

TEST_CASE("csv: plain fields, LF and CRLF line ends, no trailing newline") {
  const auto r = qt::parse_csv("a,b,c\r\n1,2,3\n4,5,6", "x.csv");
  REQUIRE(r.size() == 3);
  CHECK(r[0].fields == strings{"a", "b", "c"});
  CHECK(r[1].fields == strings{"1", "2", "3"});
  CHECK(r[2].fields == strings{"4", "5", "6"});
  CHECK(r[2].line == 3);
}

TEST_CASE("csv: quoted fields with commas, doubled quotes and newlines") {
  const auto r = qt::parse_csv("id,text\n1,\"a, \"\"b\"\"\nc\"\n2,\"\"\n3,x\n", "x.csv");
  REQUIRE(r.size() == 4);
  CHECK(r[1].fields == strings{"1", "a, \"b\"\nc"});
  CHECK(r[1].line == 2);
  CHECK(r[2].fields == strings{"2", ""});
  CHECK(r[2].line == 4); // the record after a two-line field starts on line 4
  CHECK(r[3].line == 5);
}

TEST_CASE("csv: empty fields and a trailing delimiter") {
  const auto r = qt::parse_csv(",a,\n", "x.csv");
  REQUIRE(r.size() == 1);
  CHECK(r[0].fields == strings{"", "a", ""});
}

TEST_CASE("csv: blank lines are not records") {
  const auto r = qt::parse_csv("a\n\n\nb\n", "x.csv");
  REQUIRE(r.size() == 2);
  CHECK(r[1].fields == strings{"b"});
  CHECK(r[1].line == 4);
}

TEST_CASE("csv: TSV without quoting keeps quote characters") {
  const auto r = qt::parse_csv("a\t\"b c\"\td\n", "x.tsv", qt::csv_options{'\t', false});
  REQUIRE(r.size() == 1);
  CHECK(r[0].fields == strings{"a", "\"b c\"", "d"});
}

TEST_CASE("csv: an unbalanced quote names the line where the field opened") {
  qprob::test::check_format_error([] { (void)qt::parse_csv("a,b\n1,2\n3,\"open\n4,5\n", "bad.csv"); },
                                  {"bad.csv", "line 3", "never closed"});
}

TEST_CASE("csv: text after a closing quote is an error") {
  qprob::test::check_format_error([] { (void)qt::parse_csv("a\n\"x\"y\n", "bad.csv"); },
                                  {"bad.csv", "line 2", "after a closing quote"});
}

TEST_CASE("csv: a quote inside an unquoted field is an error") {
  qprob::test::check_format_error([] { (void)qt::parse_csv("a,b\nx,y\"z\n", "bad.csv"); },
                                  {"bad.csv", "line 2", "unquoted field"});
}

TEST_CASE("csv: a row with the wrong number of fields names its line and both counts") {
  qprob::test::fixture_dir dir("csv");
  const auto p = dir.write("short.csv", "a,b,c\n1,2,3\n4,5\n");
  qprob::test::check_format_error([&] { (void)qt::read_csv_table(p); },
                                  {"short.csv", "line 3", "expected 3 fields", "found 2"});
}

TEST_CASE("csv: a missing column and an empty file are named") {
  qprob::test::fixture_dir dir("csv");
  const auto p     = dir.write("t.csv", "\xEF\xBB\xBFid,text\n1,x\n");
  const auto table = qt::read_csv_table(p);
  CHECK(table.column("id") == 0); // the byte-order mark is not part of the name
  qprob::test::check_format_error([&] { (void)table.column("label"); },
                                  {"t.csv", "header", "missing column \"label\""});
  const auto e = dir.write("empty.csv", "");
  qprob::test::check_format_error([&] { (void)qt::read_csv_table(e); }, {"empty.csv", "empty"});
  qprob::test::check_format_error([&] { (void)qt::read_csv_table(dir.path() / "absent.csv"); },
                                  {"absent.csv", "cannot open"});
}
