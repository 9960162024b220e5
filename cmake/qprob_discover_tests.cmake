# SPDX-License-Identifier: Apache-2.0
# Run at build time (POST_BUILD) by qprob_add_test: asks a doctest executable for its test cases and writes a
# ctest file with one test per case, labelled and with skip code 77. Inputs (-D): EXE, OUT, PREFIX, LABELS
# (comma-separated), WORKDIR, TIMEOUT.
execute_process(
  COMMAND "${EXE}" --list-test-cases --no-version=true
  OUTPUT_VARIABLE listing
  ERROR_VARIABLE errors
  RESULT_VARIABLE status)
if(NOT status EQUAL 0)
  message(FATAL_ERROR "listing the test cases of ${EXE} failed (${status}):\n${listing}\n${errors}")
endif()
string(REPLACE "," ";" labels "${LABELS}")
string(REPLACE "\n" ";" lines "${listing}")
set(script "")
set(count 0)
foreach(line IN LISTS lines)
  if(line STREQUAL "" OR line MATCHES "^\\[doctest\\]" OR line MATCHES "^=+$")
    continue()
  endif()
  if(line MATCHES "[][*?]")
    message(FATAL_ERROR "test case name '${line}' in ${EXE} contains a doctest wildcard character ([, ], * or ?)")
  endif()
  # doctest filters split at commas; an escaped comma matches a literal one.
  string(REPLACE "," "\\," filter "${line}")
  string(APPEND script
    "add_test([==[${PREFIX}: ${line}]==] \"${EXE}\" [==[--test-case=${filter}]==])\n"
    "set_tests_properties([==[${PREFIX}: ${line}]==] PROPERTIES LABELS \"${labels}\" SKIP_RETURN_CODE 77"
    " WORKING_DIRECTORY \"${WORKDIR}\" TIMEOUT ${TIMEOUT})\n")
  math(EXPR count "${count} + 1")
endforeach()
if(count EQUAL 0)
  message(FATAL_ERROR "${EXE} lists no test cases")
endif()
file(WRITE "${OUT}" "${script}")
