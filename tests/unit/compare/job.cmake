# SPDX-License-Identifier: Apache-2.0
# Tests of the compare job (include/qprob/compare: job, cache, CPU quantizer), included from CMakeLists.txt.
# compare_cpu_quantizer needs no shared data (tiny random BLOOM models, tests/unit/model/tiny_models.hpp);
# compare_job runs the job on stories260K (skipped with a message when ../shared is absent). The end-to-end CLI
# runs and the results.json schema check are registered in examples/CMakeLists.txt (20_compare).
qprob_add_test(compare_cpu_quantizer AREA compare SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_cpu_quantizer.cpp)
target_include_directories(test_compare_cpu_quantizer PRIVATE ${CMAKE_CURRENT_LIST_DIR}/../io ${CMAKE_CURRENT_LIST_DIR}/../model)
find_package(ZLIB)
if(TARGET qprob::tokenizer AND ZLIB_FOUND)
  qprob_add_test(compare_job AREA compare SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_job.cpp LIBS qprob::tokenizer ZLIB::ZLIB)
  target_include_directories(test_compare_job PRIVATE ${CMAKE_CURRENT_LIST_DIR}/../io ${CMAKE_CURRENT_LIST_DIR}/../model)
else()
  message(STATUS "qprob: compare_job tests need qprob::tokenizer and zlib; skipped")
endif()
