// SPDX-License-Identifier: Apache-2.0
// qprob-report OUT_DIR: re-renders the report of a `qprob compare` run (tables, figures, report.html) from
// OUT_DIR/results.json; `qprob compare` calls the same qprob::report::write_report at the end of a run.
// Exit status: 0 on success ("Result: PASSED"), 1 when results.json is missing or malformed (the message names
// the file and the key), 2 on a usage error.
#include <qprob/report/report.hpp>

#include <cstdio>
#include <exception>
#include <string_view>

int main(int argc, char** argv) {
  if (argc != 2 || std::string_view(argv[1]) == "--help" || std::string_view(argv[1]) == "-h") {
    std::fprintf(stderr,
                 "usage: qprob-report OUT_DIR\n"
                 "  renders OUT_DIR/tables/*.{md,csv}, OUT_DIR/figures/*.{svg,png} and OUT_DIR/report.html\n"
                 "  from OUT_DIR/results.json (schema: docs/compare.md, \"Report inputs\")\n");
    return 2;
  }
  try {
    const auto written = qprob::report::write_report(argv[1]);
    for (const auto& f : written.files) {
      std::printf("wrote %s\n", f.c_str());
    }
    std::printf("Result: PASSED\n");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qprob-report: %s\n", e.what());
    std::printf("Result: FAILED\n");
    return 1;
  }
}
