// SPDX-License-Identifier: Apache-2.0
#pragma once
// The whole library, kernels included: for translation units compiled by nvcc (.cu). Host-compiled code
// includes <qprob/host.hpp> (no CUDA) or <qprob/runtime.hpp> (CUDA runtime + prebuilt kernels) instead.

#if !defined(__CUDACC__)
#  error "<qprob/qprob.hpp> contains CUDA kernels and must be compiled by nvcc; from a host compiler include <qprob/host.hpp> or <qprob/runtime.hpp>"
#endif

#include <qprob/runtime.hpp>

#include <qprob/core/numeric.cuh>
#include <qprob/metrics/metrics.cuh>
#include <qprob/quant/gptq.cuh>
#include <qprob/quant/rtn.cuh>
