// SPDX-License-Identifier: Apache-2.0
#pragma once
// Helpers shared by qprob's tests: the seed every randomized test prints, the location of ../shared, and
// comparisons that report the first mismatches with their indices.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <random>
#include <string>

namespace qprob::test {

/// The seed of this test run: QPROB_TEST_SEED if set, else drawn fresh, so every run tries new inputs. Tests
/// put it in an INFO() so a failure prints it; rerun with QPROB_TEST_SEED=<seed> to reproduce.
std::uint64_t run_seed();

/// A generator seeded from run_seed() and a per-test salt (so tests do not share streams).
std::mt19937_64 make_rng(std::uint64_t salt);

/// The shared data folder (QPROB_SHARED_DIR, else the configured default) if it exists.
std::optional<std::filesystem::path> shared_dir();

/// A path under the shared folder if present; tests MESSAGE() the returned reason and return otherwise.
std::optional<std::filesystem::path> shared_path(const std::string& relative, std::string* reason);

}  // namespace qprob::test
