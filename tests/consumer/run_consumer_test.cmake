# SPDX-License-Identifier: Apache-2.0
# Installs qprob from the source tree into a scratch prefix, then configures and builds tests/consumer against
# it with find_package(qprob). Inputs (-D): QPROB_SOURCE_DIR, WORK_DIR, QPROB_ENABLE_CUDA, CUDA_ARCHITECTURES,
# GENERATOR, REQUIRE_TOKENIZER (whether qprob::tokenizer must be found too).
file(REMOVE_RECURSE "${WORK_DIR}")
set(prefix "${WORK_DIR}/prefix")
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT status EQUAL 0)
    message(FATAL_ERROR "command failed (${status}): ${ARGN}\n${out}\n${err}")
  endif()
endfunction()
# A minimal configure of qprob itself: only the INTERFACE target and its package files.
run(${CMAKE_COMMAND} -S "${QPROB_SOURCE_DIR}" -B "${WORK_DIR}/qprob-build" -G "${GENERATOR}"
    -DQPROB_BUILD_TESTS=OFF -DQPROB_BUILD_EXAMPLES=OFF -DQPROB_BUILD_KERNELS=OFF -DQPROB_ENABLE_HEADER_TESTS=OFF
    -DQPROB_ENABLE_CUDA=${QPROB_ENABLE_CUDA} -DQPROB_REQUIRE_TOKENIZER_DEPS=${REQUIRE_TOKENIZER}
    -DCMAKE_INSTALL_PREFIX=${prefix})
run(${CMAKE_COMMAND} --install "${WORK_DIR}/qprob-build")
run(${CMAKE_COMMAND} -S "${QPROB_SOURCE_DIR}/tests/consumer" -B "${WORK_DIR}/consumer-build" -G "${GENERATOR}"
    -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES})
run(${CMAKE_COMMAND} --build "${WORK_DIR}/consumer-build")
run("${WORK_DIR}/consumer-build/consumer_host")
if(REQUIRE_TOKENIZER AND NOT EXISTS "${WORK_DIR}/consumer-build/consumer_tokenizer")
  message(FATAL_ERROR "qprob::tokenizer was built but the downstream project did not get it")
endif()
message(STATUS "downstream project built against ${prefix}")
