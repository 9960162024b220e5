# SPDX-License-Identifier: Apache-2.0
# Finding qprob's third-party dependencies. Every failure names the Debian package that provides it, so a
# fresh machine is one apt-get away from building (tools/install-deps.sh installs them all).
include_guard(GLOBAL)

# qprob_require_package(<Package> APT <debian-package> [TARGET <imported-target>] [HEADER <relpath>]
#                       [VERSION <min>])
# find_package(<Package> CONFIG) first. Header-only packages may instead be found as a bare header in
# QPROB_EXTRA_INCLUDE_DIRS (the GPU machine has no nlohmann-json package; a copy of the Debian headers
# travels there, see docs/development.md), in which case an INTERFACE imported <imported-target> is made.
function(qprob_require_package package)
  cmake_parse_arguments(arg "" "APT;TARGET;HEADER;VERSION" "" ${ARGN})
  if(arg_TARGET AND TARGET ${arg_TARGET})
    return()
  endif()
  find_package(${package} ${arg_VERSION} CONFIG QUIET)
  if(${package}_FOUND)
    return()
  endif()
  if(arg_HEADER AND arg_TARGET)
    find_path(_qprob_${package}_dir ${arg_HEADER} HINTS ${QPROB_EXTRA_INCLUDE_DIRS} NO_CACHE)
    if(_qprob_${package}_dir)
      add_library(${arg_TARGET} INTERFACE IMPORTED GLOBAL)
      set_target_properties(${arg_TARGET} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_qprob_${package}_dir}")
      message(STATUS "qprob: ${package} found as a header in ${_qprob_${package}_dir}")
      return()
    endif()
  endif()
  message(FATAL_ERROR
    "qprob: ${package} was not found. On Debian/Ubuntu install it with:\n"
    "    apt-get install ${arg_APT}\n"
    "or run tools/install-deps.sh, which installs every build dependency.")
endfunction()

# Boost.Math is header-only; Debian's libboost-math-dev ships no CMake package of its own in every
# release, so BoostConfig (libboost-dev) is used and the headers are checked explicitly.
function(qprob_require_boost_math)
  if(TARGET Boost::headers)
    return()
  endif()
  find_package(Boost 1.74 QUIET CONFIG)
  if(NOT Boost_FOUND)
    find_package(Boost 1.74 QUIET)
  endif()
  if(NOT Boost_FOUND OR NOT TARGET Boost::headers)
    message(FATAL_ERROR
      "qprob: Boost (>= 1.74, headers) was not found. On Debian/Ubuntu install it with:\n"
      "    apt-get install libboost-dev libboost-math-dev")
  endif()
  get_target_property(_inc Boost::headers INTERFACE_INCLUDE_DIRECTORIES)
  find_path(_qprob_boost_math boost/math/distributions/students_t.hpp HINTS ${_inc} NO_CACHE)
  if(NOT _qprob_boost_math)
    message(FATAL_ERROR
      "qprob: Boost.Math headers were not found next to Boost (${_inc}). Install them with:\n"
      "    apt-get install libboost-math-dev")
  endif()
endfunction()

# The tokenizers (include/qprob/tokenizer) need PCRE2 (UTF + UCP regex), ICU (normalization, character
# properties) and SentencePiece, found through pkg-config. They are a separate INTERFACE target,
# qprob::tokenizer, so that code not tokenizing needs none of them. Sets QPROB_HAS_TOKENIZER in the caller.
macro(qprob_find_tokenizer_deps)
  find_package(PkgConfig QUIET)
  set(_qprob_tok_missing "")
  if(PkgConfig_FOUND)
    pkg_check_modules(QPROB_PCRE2 QUIET IMPORTED_TARGET GLOBAL libpcre2-8)
    pkg_check_modules(QPROB_ICU_UC QUIET IMPORTED_TARGET GLOBAL icu-uc)
    pkg_check_modules(QPROB_SENTENCEPIECE QUIET IMPORTED_TARGET GLOBAL sentencepiece)
    if(NOT QPROB_PCRE2_FOUND)
      list(APPEND _qprob_tok_missing "libpcre2-8 (apt: libpcre2-dev)")
    endif()
    if(NOT QPROB_ICU_UC_FOUND)
      list(APPEND _qprob_tok_missing "icu-uc (apt: libicu-dev)")
    endif()
    if(NOT QPROB_SENTENCEPIECE_FOUND)
      list(APPEND _qprob_tok_missing "sentencepiece (apt: libsentencepiece-dev)")
    endif()
  else()
    list(APPEND _qprob_tok_missing "pkg-config (apt: pkg-config)")
  endif()
  if(_qprob_tok_missing)
    string(REPLACE ";" ", " _qprob_tok_text "${_qprob_tok_missing}")
    if(QPROB_REQUIRE_TOKENIZER_DEPS)
      message(FATAL_ERROR "qprob: the tokenizers need ${_qprob_tok_text}. Install them (tools/install-deps.sh), "
                          "or configure with -DQPROB_REQUIRE_TOKENIZER_DEPS=OFF to build without qprob::tokenizer.")
    endif()
    message(STATUS "qprob: building without qprob::tokenizer (missing ${_qprob_tok_text})")
    set(QPROB_HAS_TOKENIZER OFF)
  else()
    set(QPROB_HAS_TOKENIZER ON)
  endif()
endmacro()

# Cairo (libcairo2-dev, through pkg-config) renders the report's PNG figures; optional: without it the report
# target and its tests are skipped with a message. Defines PkgConfig::QPROB_CAIRO when found.
function(qprob_find_cairo)
  if(TARGET PkgConfig::QPROB_CAIRO)
    return()
  endif()
  find_package(PkgConfig QUIET)
  if(PkgConfig_FOUND)
    pkg_check_modules(QPROB_CAIRO QUIET IMPORTED_TARGET GLOBAL cairo)
  endif()
endfunction()
