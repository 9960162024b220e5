// SPDX-License-Identifier: Apache-2.0
#pragma once
// What the command-line drivers share: their exit statuses and, for the drivers that report a usage error as
// status 2, the parse-then-run wrapper (CLI11's --help exits 0; any exception from the job prints
// "error: <what>" and exits 1).
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>

namespace qprob_cli {

inline constexpr int exit_failed  = 1;
inline constexpr int exit_usage   = 2;
inline constexpr int exit_skipped = 77;  // ctest's SKIP_RETURN_CODE

/// Parses argv into `app`'s options, then returns run().
template <class Run>
int parse_and_run(CLI::App& app, int argc, char** argv, Run&& run) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : exit_usage;
  }
  try {
    return run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return exit_failed;
  }
}

}  // namespace qprob_cli
