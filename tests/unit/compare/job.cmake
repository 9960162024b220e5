# SPDX-License-Identifier: Apache-2.0
# Tests of the compare job (include/qprob/compare: job, cache, CPU quantizer), included from CMakeLists.txt. They
# run the job on stories260K (skipped with a message when ../shared is absent). The end-to-end CLI runs and the
# results.json schema check are registered in examples/CMakeLists.txt (20_compare).
find_package(ZLIB)
if(TARGET qprob::tokenizer AND ZLIB_FOUND)
  qprob_add_test(compare_job AREA compare SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_job.cpp LIBS qprob::tokenizer ZLIB::ZLIB)
  target_include_directories(test_compare_job PRIVATE ${CMAKE_CURRENT_LIST_DIR}/../io)
else()
  message(STATUS "qprob: compare_job tests need qprob::tokenizer and zlib; skipped")
endif()
