# SPDX-License-Identifier: Apache-2.0
# Tests of the compare report (include/qprob/report), included from tests/unit/compare/CMakeLists.txt.
# Needs Cairo (libcairo2-dev, found with pkg-config); the browser test also needs the Debian `chromium` package
# at run time and is skipped (status 77) without it.
qprob_find_cairo()
if(NOT TARGET PkgConfig::QPROB_CAIRO)
  message(STATUS "qprob: compare report tests need Cairo (apt-get install libcairo2-dev); skipped")
  return()
endif()

qprob_add_test(compare_report AREA compare SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_report.cpp LIBS PkgConfig::QPROB_CAIRO)

add_executable(test_report_chromium ${CMAKE_CURRENT_LIST_DIR}/test_report_chromium.cpp)
target_link_libraries(test_report_chromium PRIVATE qprob::qprob PkgConfig::QPROB_CAIRO)
qprob_target_defaults(test_report_chromium)
add_test(NAME "compare/report: report.html renders in headless Chromium"
  COMMAND test_report_chromium ${CMAKE_CURRENT_BINARY_DIR}/report_chromium)
set_tests_properties("compare/report: report.html renders in headless Chromium" PROPERTIES
  LABELS "host;compare" SKIP_RETURN_CODE 77 TIMEOUT 300
  PASS_REGULAR_EXPRESSION "Result: PASSED" FAIL_REGULAR_EXPRESSION "Result: FAILED")
