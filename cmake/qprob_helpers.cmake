# SPDX-License-Identifier: Apache-2.0
# Helpers for in-tree targets: warnings, CUDA architectures, debug sync, and test registration with labels.
include_guard(GLOBAL)

# qprob_target_defaults(<target>): the flags every in-tree target gets. The INTERFACE target qprob::qprob
# sets none of these: consumers choose their own architectures and warnings.
function(qprob_target_defaults target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wshadow -Wnon-virtual-dtor>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra -Xcudafe=--display_error_number>)
  if(QPROB_WARNINGS_AS_ERRORS)
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CXX>:-Werror> $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings>)
  endif()
  if(QPROB_DEBUG_SYNC)
    target_compile_definitions(${target} PRIVATE QPROB_DEBUG_SYNC=1)
  endif()
  if(QPROB_ENABLE_CUDA)
    set_target_properties(${target} PROPERTIES CUDA_ARCHITECTURES "${QPROB_CUDA_ARCHITECTURES}")
  endif()
endfunction()

# qprob_add_test(<name> AREA <area> [GPU] SOURCES <files...> [LIBS <targets...>])
# One doctest executable `test_<name>`; every TEST_CASE becomes its own ctest entry named
# "<area>/<name>: <case>", labelled `host` or `gpu` plus <area>. GPU executables start with a device check
# (tests/main_gpu.cpp) that exits with 77, which ctest reports as *skipped*, printing the reason, on a
# machine without a usable GPU. Set QPROB_REQUIRE_GPU=1 to turn that skip into a failure (the GPU machine).
function(qprob_add_test name)
  cmake_parse_arguments(arg "GPU" "AREA" "SOURCES;LIBS" ${ARGN})
  if(NOT arg_AREA)
    message(FATAL_ERROR "qprob_add_test(${name}): AREA is required (core, policy, quant, metrics, ...)")
  endif()
  if(arg_GPU AND NOT QPROB_ENABLE_CUDA)
    return()  # a host-only build has no GPU tests to register
  endif()
  set(target test_${name})
  add_executable(${target} ${arg_SOURCES})
  if(arg_GPU)
    target_link_libraries(${target} PRIVATE qprob_test_main_gpu)
    set(kind gpu)
  else()
    target_link_libraries(${target} PRIVATE qprob_test_main_host)
    set(kind host)
  endif()
  target_link_libraries(${target} PRIVATE qprob::qprob qprob_test_support ${arg_LIBS})
  qprob_target_defaults(${target})
  # Discovery at build time: every TEST_CASE becomes a ctest entry (see qprob_discover_tests.cmake).
  set(tests_file "${CMAKE_CURRENT_BINARY_DIR}/${target}_tests.cmake")
  add_custom_command(TARGET ${target} POST_BUILD
    BYPRODUCTS "${tests_file}"
    COMMAND "${CMAKE_COMMAND}"
      -D "EXE=$<TARGET_FILE:${target}>"
      -D "OUT=${tests_file}"
      -D "PREFIX=${arg_AREA}/${name}"
      -D "LABELS=${kind},${arg_AREA}"
      -D "WORKDIR=${PROJECT_BINARY_DIR}"
      -D "TIMEOUT=900"
      -P "${PROJECT_SOURCE_DIR}/cmake/qprob_discover_tests.cmake"
    VERBATIM)
  set(include_file "${CMAKE_CURRENT_BINARY_DIR}/${target}_include.cmake")
  file(WRITE "${include_file}"
    "if(EXISTS \"${tests_file}\")\n"
    "  include(\"${tests_file}\")\n"
    "else()\n"
    "  add_test(${target}_NOT_BUILT ${target}_NOT_BUILT)\n"
    "endif()\n")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES "${include_file}")
endfunction()
