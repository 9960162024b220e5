// SPDX-License-Identifier: Apache-2.0
// doctest entry point of GPU test executables. Before running any test it checks for a usable CUDA device; on
// a machine without one it prints the reason and exits with 77, which ctest reports as "skipped"
// (SKIP_RETURN_CODE, see cmake/qprob_helpers.cmake). QPROB_REQUIRE_GPU=1 makes a missing GPU a failure, so that
// a broken GPU machine cannot pass by skipping everything. Listing tests (ctest discovery at build time)
// never touches the GPU.
#define DOCTEST_CONFIG_IMPLEMENT
#include <qprob/core/device.hpp>

#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace {
bool only_lists(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a.starts_with("--list") || a.starts_with("-l") || a == "--help" || a == "-h" || a.starts_with("--version")) {
      return true;
    }
  }
  return false;
}
}  // namespace

int main(int argc, char** argv) {
  if (!only_lists(argc, argv)) {
    if (const auto reason = qprob::gpu_unavailable_reason()) {
      const char* require = std::getenv("QPROB_REQUIRE_GPU");
      if (require != nullptr && std::string_view(require) == "1") {
        std::fprintf(stderr, "qprob-fail: QPROB_REQUIRE_GPU=1 but %s\n", reason->c_str());
        return 1;
      }
      std::printf("qprob-skip: %s\n", reason->c_str());
      return 77;
    }
  }
  doctest::Context context(argc, argv);
  return context.run();
}
