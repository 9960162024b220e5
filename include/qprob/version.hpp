// SPDX-License-Identifier: Apache-2.0
#pragma once
// Library version, kept in step with project(VERSION) in the top-level CMakeLists.txt (checked by a test).

#define QPROB_VERSION_MAJOR 0
#define QPROB_VERSION_MINOR 1
#define QPROB_VERSION_PATCH 0

namespace qprob {
inline constexpr int version_major = QPROB_VERSION_MAJOR;
inline constexpr int version_minor = QPROB_VERSION_MINOR;
inline constexpr int version_patch = QPROB_VERSION_PATCH;
inline constexpr const char* version_string = "0.1.0";
}  // namespace qprob
